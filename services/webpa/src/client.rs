//! One device's config API on an XMiDT server (tr1d1um, PEERS.md): the
//! requests, sign-in, retries, and what each reply means.
use rdm_kit::{Error, ErrorCode, Result};
use rdm_proto::{rdm::api::v1::HttpAuth, webpa::WebpaEndpoint};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// A reply the device accepted: its body and XMiDT's transaction id.
pub struct Reply {
    pub body: Value,
    pub transaction_id: String,
}

/// Whether a request may be sent again after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// A read: again after any failure that may pass.
    Read,
    /// A write: again only when it surely did nothing (no connection was
    /// made, or the device said it was busy and applied nothing).
    Write,
}

/// One device behind one XMiDT server.
pub struct Device {
    http: reqwest::Client,
    /// `{base}/api/v3/device/{id}/config`.
    config_url: String,
    auth: Option<HttpAuth>,
    timeout: Duration,
    retries: u32,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
/// The longest reply body read (a large partial path's values).
const MAX_REPLY: usize = 16 << 20;

impl Device {
    /// `http` is a client vetted for the endpoint's base URL; `deadline`
    /// what is left of the call's.
    pub fn new(
        http: reqwest::Client,
        endpoint: &WebpaEndpoint,
        device_id: &str,
        deadline: Option<Duration>,
    ) -> Self {
        let base = endpoint.base_url().trim_end_matches('/');
        let api = if base.ends_with("/api/v2") || base.ends_with("/api/v3") {
            base.to_owned()
        } else {
            format!("{base}/api/v3")
        };
        let timeout = match endpoint.timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(ms.into()),
        };
        Self {
            http,
            config_url: format!("{api}/device/{}/config", path_segment(device_id)),
            auth: endpoint.auth.clone(),
            timeout: deadline.map_or(timeout, |d| d.min(timeout)),
            retries: endpoint.retries.unwrap_or(DEFAULT_RETRIES),
        }
    }

    /// Sends a request to `config_url` + `suffix` and reads what it means:
    /// Ok for a reply the device accepted, the mapped error otherwise.
    pub async fn send(
        &self,
        method: Method,
        suffix: &str,
        query: &[(&str, String)],
        headers: &[(&str, String)],
        body: Option<&Value>,
        resend: Resend,
    ) -> Result<Reply> {
        let url = format!("{}{suffix}", self.config_url);
        let mut attempt = 0;
        loop {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .timeout(self.timeout)
                .query(query);
            for (name, value) in headers {
                req = req.header(*name, value);
            }
            req = rdm_kit::http::authorize(req, self.auth.as_ref());
            if let Some(body) = body {
                req = req.json(body);
            }
            let outcome = match req.send().await {
                Ok(resp) => read(resp).await,
                Err(e) => Err(transport(e)),
            };
            let again = match &outcome {
                Ok(_) => false,
                Err(e) => attempt < self.retries && resends(e, resend),
            };
            if !again {
                let label = outcome_label(&outcome);
                metrics::counter!("rdm_webpa_requests_total", "outcome" => label).increment(1);
                match &outcome {
                    Ok(reply) => {
                        tracing::debug!(%method, transaction_id = %reply.transaction_id, "webpa request")
                    }
                    Err(e) => tracing::info!(
                        %method,
                        outcome = label,
                        transaction_id = e.metadata.get("transaction_id").map_or("", String::as_str),
                        error = %e.message,
                        "webpa request failed"
                    ),
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

/// A device id as one URL path segment (`mac:112233445566` stays as it is).
fn path_segment(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes())
        .collect::<String>()
        .replace("%3A", ":")
}

/// Whether a failed request may go again.
fn resends(e: &Error, resend: Resend) -> bool {
    let nothing_done = e.metadata.get("sent").is_some_and(|s| s == "no")
        || matches!(e.code, ErrorCode::DeviceBusy);
    match resend {
        Resend::Write => nothing_done,
        Resend::Read => {
            nothing_done
                || matches!(
                    e.code,
                    ErrorCode::DeviceTimeout | ErrorCode::UpstreamUnavailable
                )
        }
    }
}

fn outcome_label(outcome: &Result<Reply>) -> &'static str {
    match outcome {
        Ok(_) => "ok",
        Err(e) => match e.code {
            ErrorCode::DeviceTimeout => "timeout",
            ErrorCode::UpstreamAuth => "auth_failure",
            ErrorCode::DeviceOffline => "offline",
            ErrorCode::DeviceBusy => "busy",
            ErrorCode::UpstreamUnavailable => "unavailable",
            ErrorCode::Conflict => "conflict",
            _ => "device_error",
        },
    }
}

/// A request that got no reply.
fn transport(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        return Error::new(
            ErrorCode::DeviceTimeout,
            "XMiDT did not answer in time (the request may have reached the device)",
        );
    }
    let sent = if e.is_connect() { "no" } else { "unknown" };
    // reqwest's message, never the URL (it can carry a key in its query).
    let e = e.without_url();
    Error::new(
        ErrorCode::UpstreamUnavailable,
        format!("cannot reach XMiDT: {e}"),
    )
    .with_meta("sent", sent)
}

/// What a reply means: XMiDT's own status, then the device's `statusCode`
/// (in the body, also when the HTTP status is 200).
async fn read(resp: reqwest::Response) -> Result<Reply> {
    let status = resp.status();
    let transaction_id = resp
        .headers()
        .get("x-webpa-transaction-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = read_limited(resp).await?;
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let tagged = |e: Error| {
        let e = e.with_meta("http_status", status.as_u16().to_string());
        match transaction_id.as_str() {
            "" => e,
            id => e.with_meta("transaction_id", id),
        }
    };
    let message = body["message"]
        .as_str()
        .map(|m| m.chars().take(512).collect::<String>())
        .unwrap_or_default();
    let device_code = body["statusCode"].as_u64().map(|c| c as u16);
    let upstream = |code, what: &str| {
        let detail = if message.is_empty() {
            String::new()
        } else {
            format!(": {message}")
        };
        Err(tagged(Error::new(code, format!("{what}{detail}"))))
    };
    match (status, device_code) {
        (StatusCode::UNAUTHORIZED, _) | (StatusCode::FORBIDDEN, None) => upstream(
            ErrorCode::UpstreamAuth,
            &format!("XMiDT refused rdm's credentials ({status}): check the endpoint's auth"),
        ),
        (StatusCode::NOT_FOUND, _) => upstream(
            ErrorCode::DeviceOffline,
            "the device is not connected to XMiDT",
        ),
        (StatusCode::GATEWAY_TIMEOUT, _) => upstream(
            ErrorCode::DeviceTimeout,
            "the device did not answer XMiDT in time",
        ),
        (StatusCode::BAD_REQUEST, _) => upstream(
            ErrorCode::InvalidArgument,
            "XMiDT refused the request as invalid",
        ),
        (s, None) if s.is_success() => upstream(
            ErrorCode::UpstreamUnavailable,
            "XMiDT's reply carries no statusCode",
        ),
        (s, None) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => upstream(
            ErrorCode::UpstreamUnavailable,
            &format!("XMiDT is unavailable ({s})"),
        ),
        (s, None) => upstream(
            ErrorCode::UpstreamUnavailable,
            &format!("XMiDT answered {s}"),
        ),
        (_, Some(200 | 201)) => Ok(Reply {
            body,
            transaction_id,
        }),
        (_, Some(code)) => Err(tagged(device_status(code, &message, &body))),
    }
}

/// The device's own failure `statusCode`, with the parameter it names.
fn device_status(code: u16, message: &str, body: &Value) -> Error {
    let failed = body["parameters"].as_array().and_then(|ps| {
        ps.iter().find(|p| {
            p["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty() && m != "Success")
        })
    });
    let message = match (message, failed) {
        ("", Some(p)) => p["message"].as_str().unwrap_or_default(),
        (m, _) => m,
    };
    let (kind, what) = match code {
        202 => (
            ErrorCode::DeviceBusy,
            "a previous request is still in progress",
        ),
        530 => (ErrorCode::DeviceBusy, "the device is busy"),
        550 => (ErrorCode::Conflict, "the CID test failed"),
        551 => (ErrorCode::Conflict, "the CMC test failed"),
        552 => (ErrorCode::DeviceError, "the atomic set failed"),
        _ => (ErrorCode::DeviceError, "the device reported a failure"),
    };
    let mut e = Error::new(kind, format!("{what} (statusCode {code}): {message}"))
        .with_meta("webpa_status", code.to_string());
    if kind == ErrorCode::DeviceBusy {
        e = e.with_meta("retry_after_s", "1");
    }
    if let Some(name) = failed.and_then(|p| p["name"].as_str()) {
        e = e.with_meta("parameter", name);
    }
    e
}

async fn read_limited(resp: reqwest::Response) -> Result<Vec<u8>> {
    rdm_kit::http::body_limited(resp, MAX_REPLY)
        .await
        .map_err(transport)?
        .ok_or_else(|| {
            Error::new(
                ErrorCode::DeviceError,
                format!("XMiDT's reply is larger than {} MiB", MAX_REPLY >> 20),
            )
        })
}
