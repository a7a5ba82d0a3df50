//! Calls from one service to another: the caller's token and trace context
//! go along, so the callee verifies the same principal and the trace goes on.
use crate::{auth::Principal, telemetry::TraceParent};
use tonic::{metadata::MetadataValue, service::Interceptor};

/// Adds `authorization` and `traceparent` to every outgoing call.
#[derive(Clone)]
pub struct Forward {
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    traceparent: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Forward {
    pub fn new(principal: Option<&Principal>, trace: Option<&TraceParent>) -> Self {
        Self {
            authorization: principal.and_then(|p| format!("Bearer {}", p.bearer()).parse().ok()),
            traceparent: trace.and_then(|t| t.0.parse().ok()),
        }
    }

    /// For the handler of `request`: its principal and trace context.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self::new(request.extensions().get(), request.extensions().get())
    }
}

impl Interceptor for Forward {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.authorization {
            request.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(v) = &self.traceparent {
            request.metadata_mut().insert("traceparent", v.clone());
        }
        Ok(request)
    }
}
