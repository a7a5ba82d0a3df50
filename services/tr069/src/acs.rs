//! One ACS's north-bound API (GenieACS NBI shape, PEERS.md): tasks for a
//! CPE, the device, task and fault collections, what each reply means, and
//! which requests may go again.
use rdm_kit::{Error, ErrorCode, Result};
use rdm_proto::{rdm::api::v1::HttpAuth, tr069::Tr069Endpoint};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
/// The longest reply read (a device's whole parameter tree).
const MAX_REPLY: usize = 32 << 20;

/// What became of a task the ACS accepted.
pub enum Outcome {
    /// The CPE ran it in the session the connection request opened.
    Done(Value),
    /// The ACS holds it for the CPE's next session.
    Queued(Value),
    /// The CPE (or the ACS) faulted it; the task stays in the ACS.
    Faulted(Value),
}

impl Outcome {
    pub fn task(&self) -> &Value {
        match self {
            Outcome::Done(t) | Outcome::Queued(t) | Outcome::Faulted(t) => t,
        }
    }
}

/// A page of a collection, with the ACS's count of all matches.
pub struct Page {
    pub items: Vec<Value>,
    pub total: u64,
}

/// Whether a request may be sent again after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// A read: again after any failure that may pass.
    Read,
    /// A write: again only when the ACS surely did not take it.
    Write,
}

/// One ACS, signed in as its endpoint says.
pub struct Acs {
    http: reqwest::Client,
    base: String,
    auth: Option<HttpAuth>,
    timeout: Duration,
    retries: u32,
}

/// A reply the ACS gave: status, reason phrase and body.
struct Reply {
    status: StatusCode,
    reason: String,
    body: Vec<u8>,
    /// A collection's `total` header: every match, on every page.
    total: Option<u64>,
}

impl Acs {
    /// `http` is a client vetted for the endpoint's base URL; `deadline`
    /// what is left of the call's.
    pub fn new(
        http: reqwest::Client,
        endpoint: &Tr069Endpoint,
        deadline: Option<Duration>,
    ) -> Self {
        let timeout = match endpoint.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms.into()),
        };
        Self {
            http,
            base: endpoint.base_url().trim_end_matches('/').to_owned(),
            auth: endpoint.auth.clone(),
            timeout: deadline.map_or(timeout, |d| d.min(timeout)),
            retries: endpoint.retries.unwrap_or(DEFAULT_RETRIES),
        }
    }

    /// Adds a task for the CPE `acs_id`. With `wait`, the ACS sends a
    /// connection request and waits that long for the CPE's session.
    pub async fn add_task(
        &self,
        acs_id: &str,
        task: &Value,
        wait: Option<Duration>,
    ) -> Result<Outcome> {
        let path = format!("/devices/{}/tasks", segment(acs_id));
        let query = match wait {
            Some(w) => vec![
                ("connection_request", String::new()),
                ("timeout", w.as_millis().to_string()),
            ],
            None => Vec::new(),
        };
        let reply = self
            .send(Method::POST, &path, &query, Some(task), Resend::Write, wait)
            .await
            .map_err(|e| match e.metadata.get("sent").map(String::as_str) {
                Some("no") => e,
                _ => Error {
                    message: format!("{} (the task may be queued: ListTasks shows it)", e.message),
                    ..e
                },
            })?;
        match reply.status {
            StatusCode::OK => Ok(Outcome::Done(json(&reply)?)),
            StatusCode::ACCEPTED if reply.reason.eq_ignore_ascii_case("Task faulted") => {
                Ok(Outcome::Faulted(json(&reply)?))
            }
            StatusCode::ACCEPTED => Ok(Outcome::Queued(json(&reply)?)),
            StatusCode::NOT_FOUND => Err(Error::not_found(format!(
                "the ACS has no device {acs_id:?}: check the endpoint's device_id"
            ))
            .with_meta("acs_device_id", acs_id)),
            _ => Err(failure(&reply)),
        }
    }

    /// `GET /{collection}?query=...`: a page of matches with the total.
    pub async fn find(
        &self,
        collection: &str,
        query: &Value,
        projection: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Page> {
        let mut params = vec![("query", query.to_string())];
        if !projection.is_empty() {
            params.push(("projection", projection.to_owned()));
        }
        if skip > 0 {
            params.push(("skip", skip.to_string()));
        }
        params.push(("limit", limit.to_string()));
        let path = format!("/{collection}");
        let reply = self
            .send(Method::GET, &path, &params, None, Resend::Read, None)
            .await?;
        if !reply.status.is_success() {
            return Err(failure(&reply));
        }
        let items = match json(&reply)? {
            Value::Array(items) => items,
            _ => return Err(lying("a collection that is not a JSON array")),
        };
        let total = reply.total.unwrap_or(items.len() as u64 + skip);
        Ok(Page { items, total })
    }

    /// `DELETE` or `POST` on a path; a 404 is NOT_FOUND saying `missing`.
    pub async fn call(&self, method: Method, path: &str, missing: &str) -> Result<()> {
        let reply = self
            .send(method, path, &[], None, Resend::Write, None)
            .await?;
        match reply.status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(Error::not_found(missing)),
            StatusCode::SERVICE_UNAVAILABLE if text(&reply).contains("in session") => {
                Err(Error::new(
                    ErrorCode::DeviceBusy,
                    "the CPE is in session with the ACS: try again when it is over",
                )
                .with_meta("retry_after_s", "5"))
            }
            _ => Err(failure(&reply)),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        resend: Resend,
        wait: Option<Duration>,
    ) -> Result<Reply> {
        let url = format!("{}{path}", self.base);
        // The ACS's own wait comes on top of the time its reply may take.
        let timeout = self.timeout + wait.unwrap_or_default();
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .timeout(timeout)
                .query(query);
            req = rdm_kit::http::authorize(req, self.auth.as_ref());
            if let Some(body) = body {
                req = req.json(body);
            }
            let outcome = match req.send().await {
                Ok(resp) => read(resp).await,
                Err(e) => Err(transport(e)),
            };
            let again = attempt < self.retries
                && match (&outcome, resend) {
                    (Ok(reply), Resend::Read) => reply.status.is_server_error(),
                    (Ok(reply), Resend::Write) => untaken(reply.status),
                    (Err(_), Resend::Read) => true,
                    (Err(e), Resend::Write) => e.metadata.get("sent").is_some_and(|s| s == "no"),
                };
            if !again {
                let label = match &outcome {
                    Ok(r) if r.status.is_success() => "ok",
                    Ok(r) if matches!(r.status.as_u16(), 401 | 403) => "auth_failure",
                    Ok(r) if r.status.is_client_error() => "refused",
                    Ok(_) => "unavailable",
                    Err(_) => "unreachable",
                };
                metrics::counter!("rdm_tr069_acs_requests_total", "outcome" => label).increment(1);
                if label != "ok" {
                    tracing::info!(%method, path, outcome = label, "acs request failed");
                }
                return outcome;
            }
            attempt += 1;
            // 100 ms, 200 ms, 400 ms ... capped at 2 s.
            let backoff = Duration::from_millis(100 << attempt.min(5)).min(Duration::from_secs(2));
            tokio::time::sleep(backoff).await;
        }
    }
}

/// An ACS device id as one path segment: GenieACS ids already hold `%XX`
/// escapes, so the id is escaped once more (`%2D` becomes `%252D`).
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Statuses that say the ACS did not take the request.
fn untaken(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503)
}

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body)
        .chars()
        .take(512)
        .collect::<String>()
        .trim()
        .to_owned()
}

fn json(reply: &Reply) -> Result<Value> {
    serde_json::from_slice(&reply.body).map_err(|_| lying("a reply that is not JSON"))
}

fn lying(what: &str) -> Error {
    Error::new(
        ErrorCode::UpstreamUnavailable,
        format!("the ACS sent {what}"),
    )
}

/// What a refused request means.
fn failure(reply: &Reply) -> Error {
    let status = reply.status;
    let detail = match (text(reply), reply.reason.as_str()) {
        (t, _) if !t.is_empty() => format!(": {t}"),
        (_, r) if !r.is_empty() => format!(": {r}"),
        _ => String::new(),
    };
    let e = match status.as_u16() {
        401 | 403 => Error::new(
            ErrorCode::UpstreamAuth,
            format!("the ACS refused rdm's credentials ({status}): check the endpoint's auth"),
        ),
        400 => Error::new(
            ErrorCode::InvalidArgument,
            format!("the ACS refused the request as invalid{detail}"),
        ),
        404 => Error::not_found(format!("the ACS has no such object{detail}")),
        _ => Error::new(
            ErrorCode::UpstreamUnavailable,
            format!("the ACS is unavailable ({status}){detail}"),
        ),
    };
    e.with_meta("http_status", status.as_u16().to_string())
}

/// A request that got no reply.
fn transport(e: reqwest::Error) -> Error {
    let sent = if e.is_connect() { "no" } else { "unknown" };
    let what = if e.is_timeout() {
        "the ACS did not answer in time".to_owned()
    } else {
        // reqwest's message, never the URL.
        format!("cannot reach the ACS: {}", e.without_url())
    };
    Error::new(ErrorCode::UpstreamUnavailable, what).with_meta("sent", sent)
}

async fn read(resp: reqwest::Response) -> Result<Reply> {
    let status = resp.status();
    // GenieACS says what became of a task in the reason phrase alone.
    let reason = resp
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .and_then(|r| std::str::from_utf8(r.as_bytes()).ok())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or_default())
        .to_owned();
    let total = resp
        .headers()
        .get("total")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = rdm_kit::http::body_limited(resp, MAX_REPLY)
        .await
        .map_err(transport)?
        .ok_or_else(|| lying(&format!("a reply larger than {} MiB", MAX_REPLY >> 20)))?;
    Ok(Reply {
        status,
        reason,
        body,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_escaped_once_more_in_a_path() {
        assert_eq!(segment("202BC1-BM632w-000001"), "202BC1%2DBM632w%2D000001");
        assert_eq!(
            segment("001122-Router%2D1-SN1"),
            "001122%2DRouter%252D1%2DSN1"
        );
    }
}
