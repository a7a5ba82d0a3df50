//! Server bootstrap shared by every service and the gateway: health
//! (`grpc.health.v1`), reflection (v1 and v1alpha) on every
//! port, per-connection concurrency limits with load shedding, timeouts,
//! connection age, and graceful shutdown: on SIGTERM health turns
//! NOT_SERVING, the port keeps serving for `shutdown_delay` so load
//! balancers notice, then drains in-flight calls until `drain_timeout`.
use crate::{
    auth::{ACTOR_HEADER, AccessTable, ActorVerifier, ApiKeys, Verifier, bearer_token, is_api_key},
    error::Error,
    telemetry,
};
use axum::{
    extract::{Request, State},
    middleware::{Next, from_fn, from_fn_with_state},
    response::Response,
    routing::get,
};
use std::time::Duration;
use tokio::{net::TcpListener, sync::watch};
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// Settings of every listening port.
#[derive(clap::Args, Clone, Debug)]
pub struct ServerArgs {
    /// After SIGTERM: how long health says NOT_SERVING while still serving.
    #[arg(long, env = "RDM_SHUTDOWN_DELAY_MS", default_value_t = 1000)]
    pub shutdown_delay_ms: u64,
    /// After that: how long in-flight calls may take before the process exits.
    #[arg(long, env = "RDM_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Longest time a unary call may take before it fails with DEADLINE_EXCEEDED.
    #[arg(long, env = "RDM_REQUEST_TIMEOUT_MS", default_value_t = 60_000)]
    pub request_timeout_ms: u64,
    /// Concurrent calls per connection; more are shed with UNAVAILABLE.
    #[arg(long, env = "RDM_CONCURRENCY_LIMIT", default_value_t = 512)]
    pub concurrency_limit: usize,
    /// Connections are closed (gracefully) after this many seconds, so
    /// clients re-balance across replicas.
    #[arg(long, env = "RDM_MAX_CONNECTION_AGE_S", default_value_t = 900)]
    pub max_connection_age_s: u64,
    /// Where Prometheus scrapes `/metrics`: an internal port, never the
    /// public one (`rdm up`: 127.0.0.1:9464; `rdm serve`: 0.0.0.0:9464).
    #[arg(long, env = "RDM_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Default for ServerArgs {
    fn default() -> Self {
        Self {
            shutdown_delay_ms: 1000,
            drain_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            concurrency_limit: 512,
            max_connection_age_s: 900,
            metrics_listen: None,
        }
    }
}

/// A shutdown request, shared by every server of the process.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side of a `Shutdown`.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Triggered by SIGTERM or Ctrl-C.
    pub fn on_signals() -> Shutdown {
        let (trigger, shutdown) = Self::new();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                match signal(SignalKind::terminate()) {
                    Ok(mut term) => {
                        tokio::select! { _ = term.recv() => {}, _ = ctrl_c => {} }
                    }
                    Err(_) => {
                        let _ = ctrl_c.await;
                    }
                }
            }
            #[cfg(not(unix))]
            let _ = ctrl_c.await;
            tracing::info!("shutdown requested");
            trigger.trigger();
        });
        shutdown
    }

    pub async fn requested(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// What the auth guard needs: the access rules and the token verifier.
#[derive(Clone)]
pub struct Guard {
    pub access: AccessTable,
    pub verifier: Verifier,
    /// Trusted service keys, on services with internal RPCs (the inventory).
    pub actors: Option<ActorVerifier>,
    /// Exchanges API keys for access tokens (services other than the inventory).
    pub api_keys: Option<ApiKeys>,
    /// Where the calls that change something are recorded.
    pub audit: Option<crate::audit::Sink>,
}

async fn guard(State(guard): State<Guard>, mut req: Request, next: Next) -> Response {
    if let Some(api_keys) = &guard.api_keys
        && let Err(err) = exchange_api_key(api_keys, &mut req).await
    {
        return grpc_error(err);
    }
    // Owned, so no borrow of the (non-Sync) request lives across the await.
    let (authorization, actor) = {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        (
            header(http::header::AUTHORIZATION.as_str()),
            header(ACTOR_HEADER),
        )
    };
    let (authorization, actor) = (authorization.as_deref(), actor.as_deref());
    match guard.access.authorize(
        &guard.verifier,
        req.uri().path(),
        authorization,
        guard.actors.as_ref().map(|a| (a, actor)),
    ) {
        Ok(Some(principal)) => {
            let caller = telemetry::Caller {
                tenant_id: principal.tenant_id.clone(),
                user_id: principal.user_id.clone(),
            };
            req.extensions_mut().insert(principal);
            let mut response = next.run(req).await;
            response.extensions_mut().insert(caller);
            response
        }
        Ok(None) => next.run(req).await,
        Err(err) => grpc_error(err),
    }
}

/// Replaces an API key in the Authorization header by the access token it
/// is exchanged for, checked against the client's address: the one the
/// gateway passed on, else this connection's peer.
pub async fn exchange_api_key(api_keys: &ApiKeys, req: &mut Request) -> Result<(), Error> {
    let key = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .filter(|t| is_api_key(t))
        .map(str::to_owned);
    let Some(key) = key else { return Ok(()) };
    let client = req
        .headers()
        .get(CLIENT_IP_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| peer_ip(req.extensions()));
    let token = api_keys.exchange(&key, client.as_deref()).await?;
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|e| Error::internal("an exchanged token", e))?;
    req.headers_mut().insert(http::header::AUTHORIZATION, value);
    Ok(())
}

/// The address of the connection a request came on (what the server accepted).
pub fn peer_ip(extensions: &http::Extensions) -> Option<String> {
    extensions
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .map(|a| a.ip().to_canonical().to_string())
}

/// When the call in hand must have answered (in the request's
/// extensions, for handlers that wait on devices).
#[derive(Clone, Copy, Debug)]
pub struct CallDeadline {
    pub at: tokio::time::Instant,
    /// The whole allowance, for messages.
    pub timeout: Duration,
}

impl CallDeadline {
    /// Refuses to start what cannot be cut once started (a commit: its
    /// result would land after the caller was told the call failed) when
    /// less than a quarter of the allowance, or 50 ms, is left.
    pub fn check_room(deadline: Option<Self>, what: &str) -> crate::Result<()> {
        let Some(d) = deadline else {
            return Ok(());
        };
        if d.remaining() >= (d.timeout / 4).max(Duration::from_millis(50)) {
            return Ok(());
        }
        Err(crate::Error::new(
            crate::ErrorCode::DeadlineExceeded,
            format!(
                "the call's {} ms deadline was nearly over before {what}: nothing was stored",
                d.timeout.as_millis()
            ),
        ))
    }

    /// The call's deadline: the deadline middleware's, or else the
    /// caller's `grpc-timeout` (a call made in-process, as the gateway
    /// makes them under `rdm up`).
    pub fn of<T>(req: &tonic::Request<T>) -> Option<Self> {
        req.extensions().get::<Self>().copied().or_else(|| {
            let timeout = req
                .metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .and_then(grpc_timeout)?;
            Some(Self {
                at: tokio::time::Instant::now() + timeout,
                timeout,
            })
        })
    }

    /// The `grpc-timeout` value that passes what is left on.
    pub fn header(&self) -> String {
        format!("{}m", self.remaining().as_millis())
    }

    /// What is left of it.
    pub fn remaining(&self) -> Duration {
        self.at
            .saturating_duration_since(tokio::time::Instant::now())
    }
}

/// Ends a call that has not answered by its deadline: the server's request
/// timeout, or the caller's `grpc-timeout` when that is sooner. A gRPC
/// caller gets DEADLINE_EXCEEDED, anyone else problem+json with 504.
/// (Streams are bounded only until their first reply.)
async fn deadline(State(timeout): State<Duration>, mut req: Request, next: Next) -> Response {
    let timeout = req
        .headers()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
        .map_or(timeout, |asked| asked.min(timeout));
    req.extensions_mut().insert(CallDeadline {
        at: tokio::time::Instant::now() + timeout,
        timeout,
    });
    let grpc = is_grpc(req.headers());
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            let err = Error::new(
                crate::ErrorCode::DeadlineExceeded,
                format!(
                    "the call took longer than its {} ms deadline",
                    timeout.as_millis()
                ),
            );
            if grpc {
                grpc_error(err)
            } else {
                problem(&err, request_id.as_deref())
            }
        }
    }
}

/// A `grpc-timeout` header value: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The client's address as the gateway saw it, on calls it forwards (it
/// replaces any value a client sent). Only the gateway should reach the
/// services' ports (loopback under `rdm up`, NetworkPolicy on Kubernetes).
pub const CLIENT_IP_HEADER: &str = "x-rdm-client-ip";

/// Whether a request is gRPC (rather than REST, metrics or a browser).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// An error as an `application/problem+json` response (RFC 9457), with the
/// HTTP headers its metadata calls for.
pub fn problem(err: &Error, request_id: Option<&str>) -> Response {
    use axum::response::IntoResponse;
    use http::{HeaderValue, StatusCode, header};
    let status =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, err.problem(request_id).to_string()).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    for (key, name) in [
        ("retry_after_s", header::RETRY_AFTER),
        ("allow", header::ALLOW),
    ] {
        if let Some(value) = err
            .metadata
            .get(key)
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// An error as a trailers-only gRPC response.
pub fn grpc_error(err: Error) -> Response {
    tonic::Status::from(err).into_http()
}

/// A service's gRPC routes behind the auth guard and request telemetry: what
/// its port serves and what the gateway calls in-process under `rdm up`.
pub fn guarded(routes: Routes, guard_state: Guard) -> axum::Router {
    let mut router = routes.into_axum_router();
    // Inside the guard: the caller is known when a call is recorded.
    if let Some(sink) = guard_state.audit.clone() {
        router = router.layer(from_fn_with_state(sink, crate::audit::record));
    }
    router
        .layer(from_fn_with_state(guard_state, guard))
        .layer(from_fn(telemetry::observe))
}

/// Serves `/metrics` (the whole process's) on `listener` until `shutdown`.
pub async fn serve_metrics(listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
    telemetry::metrics_handle();
    let app = axum::Router::new().route("/metrics", get(telemetry::render_metrics));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.requested())
        .await?;
    Ok(())
}

/// Serves `router` on `listener` with health and reflection added, until
/// `shutdown`. `services` are the gRPC service names health
/// reports on (the empty name, the whole server, is always reported).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    services: &[String],
    args: &ServerArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    telemetry::metrics_handle(); // record from the first request on
    let (health, health_service) = tonic_health::server::health_reporter();
    let names: Vec<String> = std::iter::once(String::new())
        .chain(services.iter().cloned())
        .collect();
    for name in &names {
        health
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rdm_proto::DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let router = router.layer(from_fn_with_state(timeout, deadline));
    let routes = Routes::from(router)
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);

    let delay = Duration::from_millis(args.shutdown_delay_ms);
    let drain_timeout = Duration::from_millis(args.drain_timeout_ms);
    let addr = listener.local_addr()?;
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.requested().await;
            for name in &names {
                health
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            tracing::info!(%addr, delay_ms = delay.as_millis() as u64, "not serving; draining soon");
            tokio::time::sleep(delay).await;
        }
    };
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .concurrency_limit_per_connection(args.concurrency_limit)
        .load_shed(true)
        .max_connection_age(Duration::from_secs(args.max_connection_age_s))
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        );
    let deadline = async move {
        shutdown.requested().await;
        tokio::time::sleep(delay + drain_timeout).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!(%addr, "drain deadline passed; closing remaining calls"),
    }
    tracing::info!(%addr, "stopped");
    Ok(())
}

/// The gRPC service names of one proto package (`rdm.inventory.v1`), for health.
pub fn service_names(package: &str) -> Vec<String> {
    rdm_proto::descriptor_pool()
        .services()
        .filter(|s| s.package_name() == package)
        .map(|s| s.full_name().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(grpc_timeout("150m"), Some(Duration::from_millis(150)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "10", "10x", "-1S", "99999999999999999999H"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
