//! Logs, traces and metrics. JSON logs to stderr (text when `RDM_LOG_FORMAT=text`),
//! OpenTelemetry OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and a
//! Prometheus recorder rendered at `/metrics` on every port.
use axum::{extract::Request, middleware::Next, response::Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use std::{sync::OnceLock, time::Instant};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

/// Set once by `init` when spans are exported: only then is the incoming
/// trace context worth extracting.
static OTEL_ON: OnceLock<bool> = OnceLock::new();

/// Logging and tracing settings of every command that serves.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TelemetryArgs {
    /// Log filter: a level (`debug`) or per-module directives
    /// (`rdm_gateway=debug,info`).
    #[arg(long = "log", env = "RDM_LOG", default_value = "info")]
    pub log: String,
    /// `json` (one object a line) or `text` for humans.
    #[arg(long, env = "RDM_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
    /// An OpenTelemetry collector (OTLP/gRPC, `http://HOST:4317`); when set,
    /// spans are exported to it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Sets up logging and tracing for the process; call once from `main`.
/// Returns the tracer provider so `main` can flush it on exit.
pub fn init(
    service_name: &str,
    args: &TelemetryArgs,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|e| {
        eprintln!(
            "RDM_LOG {:?} is not a log filter ({e}); logging at info",
            args.log
        );
        EnvFilter::new("info")
    });
    let otel = args.otlp_endpoint.as_ref().and_then(|endpoint| {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build();
        let exporter = match exporter {
            Ok(e) => e,
            Err(e) => {
                eprintln!("otlp exporter not started: {e}");
                return None;
            }
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        Some(
            opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    });
    let otel_layer = otel
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("rdm")));
    let text = args.log_format == "text";
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let _ = if text {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    if otel.is_some() {
        let _ = OTEL_ON.set(true);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    otel
}

/// The process's Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `GET /metrics`.
pub async fn render_metrics() -> String {
    metrics_handle().render()
}

/// A W3C trace context header as received, or a new one, forwarded to every
/// service a request reaches.
#[derive(Clone, Debug)]
pub struct TraceParent(pub String);

tokio::task_local! {
    /// The trace context of the request this task is serving (set by
    /// [`observe`]): calls to other services carry it on.
    static CURRENT: TraceParent;
}

impl TraceParent {
    /// The trace context of the request being served, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `work` as serving a request of this trace.
    pub async fn serving<F: Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }

    pub fn new_root() -> Self {
        let trace = uuid::Uuid::new_v4().simple().to_string();
        let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
        Self(format!("00-{trace}-{span}-01"))
    }
}

/// The route a response answered (`GET /v1/devices/{device_id}`), set by
/// the gateway's transcoder, for metric labels.
#[derive(Clone, Debug)]
pub struct Route(pub String);

/// Whether `path` is an RPC of the descriptor set (or health, reflection).
fn is_rpc(path: &str) -> bool {
    let Some((service, method)) = path.trim_start_matches('/').split_once('/') else {
        return false;
    };
    rdm_proto::descriptor_pool()
        .get_service_by_name(service)
        .is_some_and(|s| s.methods().any(|m| m.name() == method))
        || service.starts_with("grpc.health.v1.")
        || service.starts_with("grpc.reflection.")
        || path == "/metrics"
}

/// Middleware on every service and the gateway: a span per request, the
/// trace context in the request's extensions, and request metrics.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(|v| TraceParent(v.to_owned()))
        .unwrap_or_else(TraceParent::new_root);
    let span = tracing::info_span!("request", method = %req.method(), path = %path, traceparent = %traceparent.0);
    if OTEL_ON.get().is_some() {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&opentelemetry_http::HeaderExtractor(req.headers()))
        });
        let _ = span.set_parent(parent);
    }
    req.extensions_mut().insert(traceparent.clone());
    let response = {
        use tracing::Instrument;
        traceparent.serving(next.run(req).instrument(span)).await
    };
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_owned();
    // A bounded set of labels: the route the gateway matched, or a known RPC;
    // any other path a stranger makes up is "other" (never the raw path).
    let route = match response.extensions().get::<Route>() {
        Some(Route(route)) => route.clone(),
        None if is_rpc(&path) => path,
        None => "other".to_owned(),
    };
    let labels = [
        ("path", route),
        ("http_status", response.status().as_u16().to_string()),
        ("grpc_status", grpc_status),
    ];
    metrics::counter!("rdm_requests_total", &labels).increment(1);
    metrics::histogram!("rdm_request_duration_seconds", &labels[..1])
        .record(started.elapsed().as_secs_f64());
    response
}
