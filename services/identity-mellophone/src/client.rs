//! A Mellophone server's HTTP API (PEERS.md, "Mellophone auth server"): one
//! request per call, its refusals as rdm errors that keep their meaning, its
//! XML read with no DTD, no entities and a size limit. The inventory uses it
//! too, to check a password when a tenant signs in through Mellophone.
use rdm_kit::{Error, ErrorCode, Result};
use rdm_proto::mellophone as pb;
use reqwest::Method;
use std::{collections::HashMap, time::Duration};

/// The largest reply rdm reads.
pub const MAX_REPLY: usize = 4 << 20;
/// Elements and attributes rdm parses in one reply.
const MAX_NODES: u32 = 200_000;
/// How much of a refusal's text an error quotes.
const MAX_REASON: usize = 512;

/// One tenant's Mellophone server, reached through a vetted client.
pub struct Server {
    /// Connects only to the addresses the address policy allowed.
    pub http: reqwest::Client,
    /// The base URL (`http://idp:8082/mellophone`).
    pub base: url::Url,
    pub timeout: Duration,
}

/// A server token a call sends, by the settings field that holds it.
pub struct Token<'a> {
    pub field: &'static str,
    pub value: &'a str,
}

impl Token<'_> {
    /// The token of `field`, or FAILED_PRECONDITION naming it (the seed's
    /// MissingTokenError).
    pub fn of<'a>(field: &'static str, value: &'a str) -> Result<Token<'a>> {
        if value.is_empty() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the tenant's Mellophone settings have no {field}: an admin sets it with PUT /v1/settings/identity-provider"
                ),
            )
            .with_meta("field", format!("identity_provider.mellophone.{field}"))
            .with_meta("mellophone_error", "missing_token"));
        }
        Ok(Token { field, value })
    }
}

/// A request to one of the server's endpoints.
pub struct Call<'a> {
    pub method: Method,
    /// Path segments under the base URL (`["user", sid]`).
    pub path: &'a [&'a str],
    /// Query parameters; empty values are left out.
    pub query: &'a [(&'a str, &'a str)],
    pub token: Option<Token<'a>>,
    /// The body and its media type.
    pub body: Option<(&'static str, String)>,
}

impl<'a> Call<'a> {
    pub fn get(path: &'a [&'a str], query: &'a [(&'a str, &'a str)]) -> Self {
        Self {
            method: Method::GET,
            path,
            query,
            token: None,
            body: None,
        }
    }
}

impl Server {
    /// Sends `call`; the reply's text on a 2xx, the mapped error otherwise.
    pub async fn send(&self, call: Call<'_>) -> Result<String> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| Error::invalid("base_url", "a Mellophone URL has a path"))?
            .pop_if_empty()
            .extend(call.path);
        {
            let mut query = url.query_pairs_mut();
            if let Some(token) = &call.token {
                query.append_pair("token", token.value);
            }
            for (name, value) in call.query.iter().filter(|(_, v)| !v.is_empty()) {
                query.append_pair(name, value);
            }
        }
        let endpoint = call.path.first().copied().unwrap_or_default();
        let mut req = self.http.request(call.method, url).timeout(self.timeout);
        if let Some((media_type, body)) = call.body {
            req = req.header("content-type", media_type).body(body);
        }
        let outcome = async {
            let resp = req.send().await.map_err(transport)?;
            let status = resp.status();
            let body = rdm_kit::http::body_limited(resp, MAX_REPLY)
                .await
                .map_err(transport)?
                .ok_or_else(|| unreadable(format!("the reply is larger than {MAX_REPLY} bytes")))?;
            let text = String::from_utf8_lossy(&body).into_owned();
            if status.is_success() {
                Ok(text)
            } else {
                Err(refused(status.as_u16(), &text, call.token.is_some()))
            }
        }
        .await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(e) => e
                .metadata
                .get("mellophone_error")
                .map_or("error", String::as_str),
        };
        metrics::counter!("rdm_mellophone_requests_total", "endpoint" => endpoint.to_owned(), "outcome" => label.to_owned())
            .increment(1);
        outcome
    }
}

fn transport(e: reqwest::Error) -> Error {
    // reqwest's message without the URL: it carries the query (passwords,
    // tokens).
    let e = e.without_url();
    if e.is_timeout() {
        Error::new(
            ErrorCode::DeviceTimeout,
            format!("Mellophone did not answer in time: {e}"),
        )
        .with_meta("mellophone_error", "timeout")
    } else {
        Error::new(
            ErrorCode::DeviceUnreachable,
            format!("Mellophone could not be reached: {e}"),
        )
        .with_meta("mellophone_error", "transport")
    }
}

fn unreadable(why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::UpstreamUnavailable,
        format!("Mellophone's reply could not be read: {why}"),
    )
    .with_meta("mellophone_error", "parse")
}

/// A refusal as an rdm error. A 403's plain-text reason says which logic
/// error it is; with a server token sent, a permission refusal is the
/// token's (rdm's credentials), not the caller's.
pub fn refused(status: u16, text: &str, with_token: bool) -> Error {
    let reason: String = text.trim().chars().take(MAX_REASON).collect();
    let lower = reason.to_lowercase();
    let (code, kind) = match status {
        400 => (ErrorCode::DeviceError, "bad_request"),
        401 => (ErrorCode::UpstreamAuth, "unauthorized"),
        403 if lower.contains("lock") => (ErrorCode::DeviceLocked, "locked_out"),
        403 if with_token => (ErrorCode::UpstreamAuth, "bad_token"),
        403 if lower.contains("session") => (ErrorCode::NotFound, "bad_session"),
        403 if ["credential", "password", "login"]
            .iter()
            .any(|w| lower.contains(w)) =>
        {
            (ErrorCode::DeviceAuthRejected, "bad_credentials")
        }
        403 => (ErrorCode::PermissionDenied, "permission_denied"),
        404 => (ErrorCode::NotFound, "not_found"),
        500..=599 => (ErrorCode::UpstreamUnavailable, "server_error"),
        _ => (ErrorCode::DeviceError, "http_error"),
    };
    let said = if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    };
    Error::new(code, format!("Mellophone answered {status}{said}"))
        .with_meta("mellophone_error", kind)
        .with_meta("mellophone_status", status.to_string())
        .with_meta("reason", reason)
}

/// Parses a reply as XML: no DTD (so no entities to expand), a node limit.
fn document(text: &str) -> Result<roxmltree::Document<'_>> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    roxmltree::Document::parse_with_options(text, options).map_err(unreadable)
}

/// Every attribute of an element, by name.
fn attributes(node: roxmltree::Node) -> HashMap<String, String> {
    node.attributes()
        .map(|a| (a.name().to_owned(), a.value().to_owned()))
        .collect()
}

fn user_of(node: roxmltree::Node) -> pb::User {
    let mut attributes = attributes(node);
    let mut take = |name: &str| attributes.remove(name).unwrap_or_default();
    pb::User {
        sid: take("sid"),
        login: take("login"),
        name: take("name"),
        email: take("email"),
        phone: take("phone"),
        attributes,
    }
}

/// A `<user .../>` reply; None when the reply is empty (checkname's "not
/// found").
pub fn user(text: &str) -> Result<Option<pb::User>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let doc = document(text)?;
    let root = doc.root_element();
    if !root.has_tag_name("user") {
        return Err(unreadable(format!(
            "expected <user>, got <{}>",
            root.tag_name().name()
        )));
    }
    Ok(Some(user_of(root)))
}

/// A `<providers><provider .../>...</providers>` reply.
pub fn providers(text: &str) -> Result<Vec<pb::Provider>> {
    let doc = document(text)?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("provider"))
        .map(|n| {
            let mut attributes = attributes(n);
            let mut take = |name: &str| attributes.remove(name).unwrap_or_default();
            pb::Provider {
                id: take("id"),
                r#type: take("type"),
                url: take("url"),
                attributes,
            }
        })
        .collect())
}

/// getuserlist's reply: `<users pid="..">` blocks, one per provider, at the
/// top or under one wrapping element.
pub fn user_lists(text: &str) -> Result<Vec<pb::ProviderUsers>> {
    // Several top-level blocks are not one XML document: wrap them.
    let wrapped = format!("<rdm-users>{}</rdm-users>", strip_declaration(text));
    let doc = document(&wrapped)?;
    Ok(doc
        .descendants()
        .filter(|n| n.has_tag_name("users"))
        .map(|block| pb::ProviderUsers {
            pid: block.attribute("pid").unwrap_or_default().to_owned(),
            users: block
                .children()
                .filter(|n| n.has_tag_name("user"))
                .map(user_of)
                .collect(),
        })
        .collect())
}

/// The text without a leading `<?xml ...?>` declaration.
fn strip_declaration(text: &str) -> &str {
    let t = text.trim_start();
    match t
        .strip_prefix("<?xml")
        .and_then(|rest| rest.split_once("?>"))
    {
        Some((_, rest)) => rest,
        None => t,
    }
}

/// A user as the XML create and update send: `<user sid login pwd .../>`.
pub fn user_xml(user: &pb::UserInput) -> Result<String> {
    let mut out = String::from("<user");
    let known = [
        ("sid", &user.sid),
        ("login", &user.login),
        ("pwd", &user.password),
        ("name", &user.name),
        ("email", &user.email),
        ("phone", &user.phone),
    ];
    let mut extra: Vec<_> = user.attributes.iter().collect();
    extra.sort();
    for (name, _) in &extra {
        if !xml_name(name) || known.iter().any(|(k, _)| k == name) {
            return Err(Error::invalid(
                format!("user.attributes.{name}"),
                "an attribute name is an XML name (letters, digits, _ - .) other than the fields'",
            ));
        }
    }
    for (name, value) in known
        .into_iter()
        .chain(extra.iter().map(|(k, v)| (k.as_str(), *v)))
    {
        if value.is_empty() {
            continue;
        }
        out.push(' ');
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '&' => out.push_str("&amp;"),
                '<' => out.push_str("&lt;"),
                '>' => out.push_str("&gt;"),
                '"' => out.push_str("&quot;"),
                '\n' => out.push_str("&#10;"),
                '\r' => out.push_str("&#13;"),
                '\t' => out.push_str("&#9;"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push_str("/>");
    Ok(out)
}

fn xml_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_keeps_every_attribute() {
        let u = user(r#"<?xml version="1.0"?><user sid="s1" login="ann" name="Ann" email="a@x" phone="1" dept="ops" groups="eng,ops"/>"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            (u.sid.as_str(), u.login.as_str(), u.name.as_str()),
            ("s1", "ann", "Ann")
        );
        assert_eq!(u.attributes.get("dept").map(String::as_str), Some("ops"));
        assert_eq!(
            u.attributes.get("groups").map(String::as_str),
            Some("eng,ops")
        );
        assert_eq!(user("  ").unwrap(), None);
    }

    #[test]
    fn hostile_xml_is_refused() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><user login="&lol2;"/>"#;
        let external = r#"<?xml version="1.0"?><!DOCTYPE u [<!ENTITY x SYSTEM "file:///etc/passwd">]><user login="&x;"/>"#;
        for xml in [laughs, external, "<user", "<other/>"] {
            let e = user(xml).unwrap_err();
            assert_eq!(e.metadata["mellophone_error"], "parse", "{xml}");
        }
        let many = format!(
            "<users pid=\"p\">{}</users>",
            "<user/>".repeat(MAX_NODES as usize)
        );
        assert_eq!(
            user_lists(&many).unwrap_err().metadata["mellophone_error"],
            "parse"
        );
    }

    #[test]
    fn user_lists_read_one_block_per_provider() {
        let xml = r#"<users pid="p1"><user sid="1" login="a"/></users><users pid="p2"><user sid="2" login="b"/><user sid="3" login="c"/></users>"#;
        let lists = user_lists(xml).unwrap();
        assert_eq!(lists.len(), 2);
        assert_eq!(lists[1].pid, "p2");
        assert_eq!(lists[1].users[1].login, "c");
    }

    #[test]
    fn refusals_keep_their_meaning() {
        let kind =
            |status, text, token| refused(status, text, token).metadata["mellophone_error"].clone();
        assert_eq!(kind(403, "bad session", false), "bad_session");
        assert_eq!(kind(403, "bad credentials", false), "bad_credentials");
        assert_eq!(kind(403, "user ann is locked out", false), "locked_out");
        assert_eq!(kind(403, "permission denied", false), "permission_denied");
        assert_eq!(kind(403, "permission denied", true), "bad_token");
        assert_eq!(kind(400, "", false), "bad_request");
        assert_eq!(kind(404, "", false), "not_found");
        assert_eq!(kind(502, "", false), "server_error");
        assert_eq!(refused(403, "bad session", false).code, ErrorCode::NotFound);
    }

    #[test]
    fn user_xml_escapes_and_refuses_bad_names() {
        let mut input = pb::UserInput {
            sid: "s".into(),
            login: "a\"b<&".into(),
            ..Default::default()
        };
        input.attributes.insert("dept".into(), "x".into());
        let xml = user_xml(&input).unwrap();
        assert_eq!(xml, r#"<user sid="s" login="a&quot;b&lt;&amp;" dept="x"/>"#);
        assert_eq!(user(&xml).unwrap().unwrap().login, "a\"b<&");
        input.attributes.insert("bad name".into(), "x".into());
        assert!(user_xml(&input).is_err());
    }
}
