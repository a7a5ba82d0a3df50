//! Calls any RPC by name with encoded protobuf bytes, over a tonic channel or
//! a service's in-process router. The gateway's transcoder and (later) the
//! job runner use this with messages built from the descriptor set.
use bytes::{Buf, BufMut, Bytes};
use std::convert::Infallible;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
};
use tower::{BoxError, ServiceExt, util::BoxCloneSyncService};

/// Where a service's calls go: its in-process router (`rdm up`) or a
/// channel to its own Deployment.
pub type Backend = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    BackendError,
>;

/// A transport failure reaching a backend. A concrete type, not `BoxError`:
/// with a boxed trait object here rustc cannot prove the call futures `Send`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(BoxError);

/// A backend that calls `router` in-process, through the service's own
/// guard: the token is still verified by the service.
pub fn local(router: axum::Router) -> Backend {
    type Req = http::Request<tonic::body::Body>;
    let service = ServiceExt::<Req>::map_response(router, |r| r.map(tonic::body::Body::new));
    traced(BoxCloneSyncService::new(ServiceExt::<Req>::map_err(
        service,
        |e: Infallible| -> BackendError { match e {} },
    )))
}

/// A backend reached over gRPC (connects lazily, reconnects on its own).
pub fn remote(url: &str) -> anyhow::Result<Backend> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .connect_lazy();
    Ok(traced(BoxCloneSyncService::new(
        channel.map_err(|e| BackendError(e.into())),
    )))
}

/// Every call through `backend` in a CLIENT span (OpenTelemetry's
/// conventions: named by RPC, `rpc.*` attributes, error status), whose
/// context the call carries on as its `traceparent` when traces are
/// exported, so the callee's span is its child.
fn traced(backend: Backend) -> Backend {
    BoxCloneSyncService::new(tower::service_fn(
        move |mut req: http::Request<tonic::body::Body>| {
            let path = req.uri().path().to_owned();
            let (service, method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or_default();
            let span = tracing::info_span!(
                "call",
                otel.name = %path.trim_start_matches('/'),
                otel.kind = "client",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %method,
            );
            crate::telemetry::inject(&span, req.headers_mut());
            let call = backend.clone().oneshot(req);
            async move {
                use tracing::Instrument;
                let reply = call.instrument(span.clone()).await;
                let failed = match &reply {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .is_some_and(|s| s.as_bytes() != b"0"),
                    Err(_) => true,
                };
                if failed {
                    span.record("otel.status_code", "ERROR");
                }
                reply
            }
        },
    ))
}

/// Passes message bytes through unchanged.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

#[derive(Clone, Copy, Debug, Default)]
pub struct RawBytes;

impl Encoder for RawBytes {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawBytes {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

fn request(message: Bytes, metadata: MetadataMap) -> tonic::Request<Bytes> {
    let mut req = tonic::Request::new(message);
    *req.metadata_mut() = metadata;
    req
}

fn path(grpc_path: &str) -> Result<http::uri::PathAndQuery, Status> {
    grpc_path
        .parse()
        .map_err(|_| Status::internal(format!("bad rpc path {grpc_path}")))
}

async fn ready(backend: Backend) -> Result<tonic::client::Grpc<Backend>, Status> {
    let mut grpc = tonic::client::Grpc::new(backend);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("backend not ready: {e}")))?;
    Ok(grpc)
}

/// A unary call: `grpc_path` is `/pkg.Service/Method`.
pub async fn unary(
    backend: Backend,
    grpc_path: &str,
    message: Bytes,
    metadata: MetadataMap,
) -> Result<Bytes, Status> {
    let path = path(grpc_path)?;
    let reply = ready(backend)
        .await?
        .unary(request(message, metadata), path, RawCodec)
        .await?;
    Ok(reply.into_inner())
}

/// A server-streaming call.
pub async fn server_streaming(
    backend: Backend,
    grpc_path: &str,
    message: Bytes,
    metadata: MetadataMap,
) -> Result<tonic::Streaming<Bytes>, Status> {
    let path = path(grpc_path)?;
    let reply = ready(backend)
        .await?
        .server_streaming(request(message, metadata), path, RawCodec)
        .await?;
    Ok(reply.into_inner())
}

/// A client-streaming call: the messages as they come, one reply.
pub async fn client_streaming(
    backend: Backend,
    grpc_path: &str,
    messages: impl futures::Stream<Item = Bytes> + Send + 'static,
    metadata: MetadataMap,
) -> Result<Bytes, Status> {
    let path = path(grpc_path)?;
    let mut req = tonic::Request::new(messages);
    *req.metadata_mut() = metadata;
    let reply = ready(backend)
        .await?
        .client_streaming(req, path, RawCodec)
        .await?;
    Ok(reply.into_inner())
}
