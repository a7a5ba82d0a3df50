//! The audit trail: every state-changing call (any RPC not marked
//! NO_SIDE_EFFECTS) made by a signed-in caller is recorded when it ends:
//! when, who (user or API key), from where, which method, which target, a
//! summary of the request with secrets redacted, and the outcome. The
//! middleware runs inside each service's guard, so calls through the gateway
//! and straight to a service's port are both recorded; a sink stores them
//! (the inventory's database, directly or over its internal RPC).
use crate::{Principal, server::CLIENT_IP_HEADER};
use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use prost_reflect::{DynamicMessage, MethodDescriptor};
use serde_json::Value;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// One recorded call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditEvent {
    /// A UUIDv7 taken when the call arrived: events sort in call order.
    pub id: String,
    /// When the call arrived, Unix milliseconds.
    pub time_ms: i64,
    pub tenant_id: String,
    /// The user id, or `key:<id>` for an API key.
    pub actor: String,
    pub client_ip: String,
    /// `/rdm.snmp.v1.SnmpService/Set`.
    pub method: String,
    /// The device (or user, tenant, key) the call was about, when it names one.
    pub target: String,
    /// The request as JSON, secrets redacted, cut at `SUMMARY_MAX` bytes.
    pub summary: String,
    /// `OK`, or the error's reason (`PERMISSION_DENIED`, `DEVICE_TIMEOUT`...).
    pub outcome: String,
    pub request_id: String,
}

/// Where audit events go; `record` must not block.
pub trait AuditSink: Send + Sync {
    /// Records `event`, a call `caller` made.
    fn record(&self, caller: &Principal, event: AuditEvent);
}

/// Sends events to the inventory (`AuditService/RecordAuditEvent`), acting
/// for the caller: what a protocol service in its own process uses.
pub struct RemoteAudit {
    pub service: &'static str,
    pub inventory: crate::invoke::Backend,
    pub service_key: Arc<crate::auth::SigningKey>,
}

impl AuditSink for RemoteAudit {
    fn record(&self, caller: &Principal, e: AuditEvent) {
        use rdm_proto::inventory::{
            RecordAuditEventRequest, audit_service_client::AuditServiceClient,
        };
        let forward =
            match crate::client::Forward::acting(self.service, &self.service_key, caller, None) {
                Ok(f) => f,
                Err(err) => {
                    tracing::error!(error = %err.message, "audit event not sent");
                    return;
                }
            };
        let mut client = AuditServiceClient::with_interceptor(self.inventory.clone(), forward);
        tokio::spawn(async move {
            let sent = client
                .record_audit_event(RecordAuditEventRequest {
                    id: e.id,
                    time_ms: e.time_ms,
                    method: e.method.clone(),
                    target: e.target,
                    summary: e.summary,
                    outcome: e.outcome,
                    client_ip: e.client_ip,
                    request_id: e.request_id,
                })
                .await;
            if let Err(status) = sent {
                tracing::error!(error = %status.message(), method = %e.method, "audit event not stored");
            }
        });
    }
}

pub type Sink = Arc<dyn AuditSink>;

/// Requests larger than this are summarized by their size alone.
const BODY_MAX: usize = 64 * 1024;
const SUMMARY_MAX: usize = 2048;

/// Field names whose values never reach the audit trail.
const SECRET_FIELDS: &[&str] = &[
    "password",
    "community",
    "auth_password",
    "priv_password",
    "token",
    "key",
    "secret",
    "refresh_token",
    "api_key",
    "data",
];

/// Middleware recording the calls that change something (inside the guard:
/// the caller is known).
pub async fn record(State(sink): State<Sink>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let Some(method) = changing_method(&path) else {
        return next.run(req).await;
    };
    let Some(principal) = req.extensions().get::<Principal>().cloned() else {
        return next.run(req).await; // public calls (sign-in) have no actor
    };
    // In a block: no borrow of the (non-Sync) request may live across an await.
    let (client_ip, request_id) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let client_ip = header(CLIENT_IP_HEADER)
            .or_else(|| crate::server::peer_ip(req.extensions()))
            .unwrap_or_default();
        (client_ip, header("x-request-id").unwrap_or_default())
    };
    let (parts, mut body) = req.into_parts();
    // Read up to BODY_MAX to summarize; a larger body is passed on unread.
    let mut head = bytes::BytesMut::new();
    let mut complete = false;
    while head.len() < BODY_MAX {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            Some(Err(e)) => {
                return crate::server::grpc_error(crate::Error::new(
                    crate::ErrorCode::InvalidArgument,
                    format!("reading the request: {e}"),
                ));
            }
            None => {
                complete = true;
                break;
            }
        }
    }
    let head = head.freeze();
    let (target, summary) = if complete {
        describe(&method, &head)
    } else {
        (
            String::new(),
            format!("(a request of more than {BODY_MAX} bytes)"),
        )
    };
    let body = if complete {
        Body::from(head)
    } else {
        let first = futures::stream::once(async move { Ok::<_, axum::Error>(head) });
        Body::from_stream(futures::StreamExt::chain(first, body.into_data_stream()))
    };
    let event = AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        time_ms: crate::db::now_millis(),
        tenant_id: principal.tenant_id.clone(),
        actor: principal.user_id.clone(),
        client_ip,
        method: path,
        target,
        summary,
        outcome: String::new(),
        request_id,
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    match status_of(response.headers()) {
        Some(outcome) => {
            sink.record(&principal, AuditEvent { outcome, ..event });
            response
        }
        // The status comes in the trailers, after the body.
        None => response.map(|body| {
            Body::new(Watched {
                inner: body,
                event: Some(event),
                caller: principal,
                sink,
            })
        }),
    }
}

/// The method of a gRPC path when it can change state and is a caller's
/// call: internal RPCs (a service recording an event, resolving a target)
/// are the mesh's plumbing, audited as the call that caused them.
fn changing_method(path: &str) -> Option<MethodDescriptor> {
    static ACCESS: std::sync::LazyLock<crate::auth::AccessTable> = std::sync::LazyLock::new(|| {
        crate::auth::AccessTable::from_pool(rdm_proto::descriptor_pool())
    });
    if ACCESS.get(path).is_some_and(crate::auth::Access::internal) {
        return None;
    }
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    let method = rdm_proto::descriptor_pool()
        .get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)?;
    let read_only = method
        .method_descriptor_proto()
        .options
        .as_ref()
        .and_then(|o| o.idempotency_level)
        == Some(prost_types::method_options::IdempotencyLevel::NoSideEffects as i32);
    (!read_only).then_some(method)
}

/// The call's target and a redacted summary, from the gRPC request frame.
fn describe(method: &MethodDescriptor, frame: &Bytes) -> (String, String) {
    let message = frame
        .get(5..)
        .and_then(|b| DynamicMessage::decode(method.input(), b).ok());
    let Some(message) = message else {
        return (String::new(), format!("({} bytes)", frame.len()));
    };
    let options = prost_reflect::SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .unwrap_or(Value::Null);
    redact(&mut json);
    let target = ["device_id", "user_id", "tenant_id", "api_key_id"]
        .iter()
        .find_map(|k| {
            json.get(k)
                .or_else(|| json.get("target").and_then(|t| t.get(k)))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut summary = json.to_string();
    if summary.len() > SUMMARY_MAX {
        let mut cut = SUMMARY_MAX;
        while !summary.is_char_boundary(cut) {
            cut -= 1;
        }
        summary.truncate(cut);
        summary.push_str("...");
    }
    (target, summary)
}

/// Replaces every secret-named value, at any depth, by "(redacted)".
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let snake = key.to_ascii_lowercase();
                let named = SECRET_FIELDS
                    .iter()
                    .any(|s| snake == *s || snake.replace('_', "") == s.replace('_', ""));
                // `old_password`, `user_manage_token`, `newPassword`, ...
                let suffixed = ["password", "token", "secret"]
                    .iter()
                    .any(|s| snake.ends_with(s));
                if named || suffixed {
                    *v = Value::from("(redacted)");
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `OK` or the error's reason, from `grpc-status` (and its ErrorInfo).
fn status_of(headers: &http::HeaderMap) -> Option<String> {
    let code = headers.get("grpc-status")?.to_str().ok()?;
    if code == "0" {
        return Some("OK".into());
    }
    let status = tonic::Status::from_header_map(headers)?;
    Some(crate::Error::from_status(&status).code.reason().to_owned())
}

/// A response body that records the event when the trailers pass.
struct Watched {
    inner: Body,
    event: Option<AuditEvent>,
    caller: Principal,
    sink: Sink,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let outcome = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().and_then(status_of),
            Poll::Ready(Some(Err(_))) => Some("UNAVAILABLE".into()),
            Poll::Ready(None) => Some("OK".into()),
            Poll::Pending => None,
        };
        if let Some(outcome) = outcome
            && let Some(event) = self.event.take()
        {
            self.sink
                .record(&self.caller, AuditEvent { outcome, ..event });
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Dropped before the end: the caller went away mid-call.
        if let Some(event) = self.event.take() {
            self.sink.record(
                &self.caller,
                AuditEvent {
                    outcome: "CANCELLED".into(),
                    ..event
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = serde_json::json!({
            "device_id": "d1",
            "config": {"community": "public", "auth": {"type": "basic", "password": "p"}, "authPassword": "x"},
            "users": [{"password": "q", "username": "u"}],
            "old_password": "o", "newPassword": "n", "user_manage_token": "t"
        });
        redact(&mut v);
        let text = v.to_string();
        for secret in [
            "public", "\"p\"", "\"x\"", "\"q\"", "\"o\"", "\"n\"", "\"t\"",
        ] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(
            text.contains("\"username\":\"u\"") && text.contains("basic"),
            "{text}"
        );
    }

    #[test]
    fn only_state_changing_rpcs_are_recorded() {
        assert!(changing_method("/rdm.snmp.v1.SnmpService/Set").is_some());
        assert!(changing_method("/rdm.inventory.v1.DeviceService/CreateDevice").is_some());
        assert!(changing_method("/rdm.snmp.v1.SnmpService/Get").is_none());
        assert!(changing_method("/rdm.inventory.v1.DeviceService/ListDevices").is_none());
        assert!(changing_method("/grpc.health.v1.Health/Check").is_none());
        assert!(changing_method("/rdm.inventory.v1.AuditService/RecordAuditEvent").is_none());
    }
}
