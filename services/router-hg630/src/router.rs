//! One HG630 router's web API (PEERS.md): the CSRF meta tokens of its
//! front page, the `while(1); /*...*/` wrapper, the login hash, and what
//! each reply means.
use base64::Engine;
use rdm_kit::{Error, ErrorCode, Result};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::{sync::LazyLock, time::Duration};

/// A CSRF pair: (csrf_param, csrf_token). Each is good for one request.
pub type Csrf = (String, String);

/// How the firmware hashes the password at login.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Current,
    Legacy,
}

/// The login hash (PEERS.md): current firmware hashes the user, the base64
/// of the password's SHA-256 hex and the CSRF pair; older firmware the
/// password alone.
pub fn login_hash(scheme: Scheme, user: &str, password: &str, csrf: &Csrf) -> String {
    let inner = hex::encode(Sha256::digest(password.as_bytes()));
    match scheme {
        Scheme::Legacy => inner,
        Scheme::Current => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(inner.as_bytes());
            hex::encode(Sha256::digest(
                format!("{user}{b64}{}{}", csrf.0, csrf.1).as_bytes(),
            ))
        }
    }
}

/// What a successful login says.
#[derive(Clone, Debug, Default)]
pub struct LoggedIn {
    pub cookie: String,
    pub csrf: Csrf,
    pub level: i32,
    pub is_first: bool,
    pub is_wizard: bool,
}

/// A login the router refused, by its `errorCategory`.
#[derive(Clone, Debug)]
pub enum Refused {
    /// Wrong user or password; the router's failure count.
    Password(u64),
    /// Locked out for this long.
    Locked(Duration),
    /// The user is signed in elsewhere, or too many users are.
    Busy(String),
    /// Anything else (a stale token, an unknown category).
    Other(String),
}

/// The router's HTTP API.
#[derive(Clone)]
pub struct Router {
    pub http: reqwest::Client,
    pub base: String,
    pub timeout: Duration,
}

/// The longest reply read.
const MAX_REPLY: usize = 4 << 20;

static META: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r#"<meta\s+name="(csrf_param|csrf_token)"\s+content="([^"]*)""#)
        .expect("the meta pattern compiles")
});

impl Router {
    async fn send(
        &self,
        method: Method,
        path: &str,
        cookie: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Option<String>, String)> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        if let Some(cookie) = cookie {
            req = req.header(header::COOKIE, format!("SessionID_R3={cookie}"));
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let mut resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let set_cookie = resp
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| {
                let (name, rest) = c.split_once('=')?;
                (name.trim() == "SessionID_R3")
                    .then(|| rest.split(';').next().unwrap_or_default().to_owned())
            });
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if bytes.len() + chunk.len() > MAX_REPLY {
                return Err(Error::new(
                    ErrorCode::DeviceError,
                    "the router's reply is larger than 4 MiB",
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_server_error() {
            return Err(Error::new(
                ErrorCode::DeviceUnreachable,
                format!("the router answered {status} (rebooting or overloaded)"),
            ));
        }
        Ok((
            status,
            set_cookie,
            String::from_utf8_lossy(&bytes).into_owned(),
        ))
    }

    /// A fresh CSRF pair from the front page's meta tags.
    pub async fn page_csrf(&self) -> Result<Csrf> {
        let (_, _, html) = self.send(Method::GET, "/", None, None).await?;
        let mut param = None;
        let mut token = None;
        for m in META.captures_iter(&html) {
            match &m[1] {
                "csrf_param" => param = Some(m[2].to_owned()),
                _ => token = Some(m[2].to_owned()),
            }
        }
        match (param, token) {
            (Some(p), Some(t)) => Ok((p, t)),
            _ => Err(Error::new(
                ErrorCode::DeviceError,
                "the router's front page has no CSRF tokens: is this an HG630?",
            )),
        }
    }

    /// Logs in as `user`; `Ok(Err(..))` is a refusal the router gave.
    pub async fn login(
        &self,
        scheme: Scheme,
        user: &str,
        password: &str,
    ) -> Result<std::result::Result<LoggedIn, Refused>> {
        let csrf = self.page_csrf().await?;
        let hash = login_hash(scheme, user, password, &csrf);
        let body = json!({"csrf": {"csrf_param": csrf.0, "csrf_token": csrf.1},
                          "data": {"UserName": user, "Password": hash}});
        let (_, cookie, text) = self
            .send(Method::POST, "/api/system/user_login", None, Some(&body))
            .await?;
        let reply = unwrap_json(&text)?;
        let category = reply["errorCategory"].as_str().unwrap_or_default();
        Ok(match category {
            "ok" => {
                let cookie = cookie.ok_or_else(|| {
                    Error::new(
                        ErrorCode::DeviceError,
                        "the router accepted the login but set no session cookie",
                    )
                })?;
                Ok(LoggedIn {
                    cookie,
                    csrf: csrf_of(&reply).unwrap_or_default(),
                    level: reply["level"].as_i64().unwrap_or(0) as i32,
                    is_first: reply["IsFirst"].as_bool().unwrap_or(false),
                    is_wizard: reply["IsWizard"].as_bool().unwrap_or(false),
                })
            }
            "user_pass_err" => Err(Refused::Password(reply["count"].as_u64().unwrap_or(0))),
            "Three_time_err" | "Three_time_err_multi" => {
                let default = if category == "Three_time_err" {
                    60
                } else {
                    300
                };
                let wait = reply["waitTime"].as_u64().unwrap_or(default);
                Err(Refused::Locked(Duration::from_secs(wait.max(1))))
            }
            "Duplicate_login" | "Too_Many_user" => Err(Refused::Busy(category.to_owned())),
            other => Err(Refused::Other(other.chars().take(64).collect())),
        })
    }

    /// A read on a session: the reply, or None when the router no longer
    /// knows the session.
    pub async fn read(&self, path: &str, cookie: &str) -> Result<Option<Value>> {
        let (status, _, text) = self.send(Method::GET, path, Some(cookie), None).await?;
        let reply = unwrap_json(&text);
        if signed_out(status, reply.as_ref().ok()) {
            return Ok(None);
        }
        if status == StatusCode::NOT_FOUND {
            return Err(Error::new(
                ErrorCode::DeviceError,
                format!("the router has no {path} (another model or firmware?)"),
            ));
        }
        reply.map(Some)
    }

    /// A write on a session with its current CSRF pair: the router's reply
    /// (carrying the next pair), or None when it no longer knows the session.
    pub async fn write(
        &self,
        path: &str,
        cookie: &str,
        csrf: &Csrf,
        data: Option<Value>,
    ) -> Result<Option<Value>> {
        let mut body = json!({"csrf": {"csrf_param": csrf.0, "csrf_token": csrf.1}});
        if let Some(data) = data {
            body["data"] = data;
        }
        let (status, _, text) = self
            .send(Method::POST, path, Some(cookie), Some(&body))
            .await?;
        let reply = unwrap_json(&text);
        if signed_out(status, reply.as_ref().ok()) {
            return Ok(None);
        }
        reply.map(Some)
    }
}

/// The next CSRF pair a reply carries.
pub fn csrf_of(reply: &Value) -> Option<Csrf> {
    Some((
        reply["csrf_param"].as_str()?.to_owned(),
        reply["csrf_token"].as_str()?.to_owned(),
    ))
}

/// Whether a reply says the session is gone.
fn signed_out(status: StatusCode, reply: Option<&Value>) -> bool {
    status == StatusCode::UNAUTHORIZED
        || reply.is_some_and(|r| r["errorCategory"].as_str() == Some("no_login"))
}

/// The JSON inside the router's `while(1); /*...*/` wrapper (or bare JSON).
pub fn unwrap_json(text: &str) -> Result<Value> {
    let t = text.trim();
    let inner = t
        .strip_prefix("while(1);")
        .map(str::trim_start)
        .and_then(|t| t.strip_prefix("/*"))
        .and_then(|t| t.strip_suffix("*/"))
        .unwrap_or(t);
    serde_json::from_str(inner).map_err(|_| {
        Error::new(
            ErrorCode::DeviceError,
            format!(
                "the router's reply is not JSON: {:?}",
                t.chars().take(80).collect::<String>()
            ),
        )
    })
}

fn transport(e: reqwest::Error) -> Error {
    let code = if e.is_timeout() {
        ErrorCode::DeviceTimeout
    } else {
        ErrorCode::DeviceUnreachable
    };
    Error::new(code, format!("the router: {}", e.without_url()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_md_test_vector() {
        let csrf = (
            "cAMCImb7xhEn6T8eL9cGjIiB4FsfzK0".to_owned(),
            "cl3pAw9VujxiX392oWWObKxqNqVxaOd".to_owned(),
        );
        assert_eq!(
            login_hash(Scheme::Current, "admin", "admin", &csrf),
            "e71937a7bfcf970ad7172a3c0702c0d3f68b7c85c60309804d567354fc431222"
        );
        // Legacy firmware: the password's SHA-256 alone.
        assert_eq!(
            login_hash(Scheme::Legacy, "admin", "admin", &csrf),
            "8c6976e5b5410415bde908bd4dee15dfb167a9c873fc4bb8a81f6f2ab448a918"
        );
    }

    #[test]
    fn replies_are_unwrapped() {
        assert_eq!(
            unwrap_json("while(1); /*{\"a\":1}*/").unwrap(),
            json!({"a": 1})
        );
        assert_eq!(unwrap_json("{\"a\":2}").unwrap(), json!({"a": 2}));
        assert!(unwrap_json("while(1); /*{broken*/").is_err());
    }
}
