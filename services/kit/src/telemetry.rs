//! Logs, traces and metrics. JSON logs to stderr (text when `RDM_LOG_FORMAT=text`),
//! OpenTelemetry OTLP export when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and a
//! Prometheus recorder rendered at `/metrics` on the process's internal
//! metrics port ([`crate::server::serve_metrics`]).
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

/// Bucket bounds of every `*_seconds` histogram: from a millisecond (a
/// cached read) to a minute (the default deadline).
const SECONDS_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The process's Prometheus recorder, installed on first use. Durations are
/// histograms (buckets sum across replicas; summaries do not).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &SECONDS_BUCKETS,
            )
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        process_metrics().describe();
        handle
    })
}

/// CPU seconds, resident memory, open file descriptors and the like
/// (`process_*`, as every Prometheus client library names them).
fn process_metrics() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// `GET /metrics`: the process's figures read now, then everything recorded.
pub async fn render_metrics() -> String {
    let handle = metrics_handle();
    process_metrics().collect();
    handle.render()
}

/// Puts `span`'s context into `headers` as `traceparent` (when traces are
/// exported; otherwise the header the caller set stays as it is).
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if OTEL_ON.get().is_none() {
        return;
    }
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut opentelemetry_http::HeaderInjector(headers))
    });
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
}

/// Who made a request, as the guard found (for the access log).
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant_id: String,
    pub user_id: String,
}

/// Middleware on every service and the gateway: a span per request (with
/// the request id, so every log line of the request carries it), the trace
/// context in the request's extensions, request metrics, and one access-log
/// line when the response is over: a stream's outcome is the `grpc-status`
/// of its trailers, so one that fails part-way counts as failed.
pub async fn observe(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let request_id: String = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(128)
        .collect();
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(|v| TraceParent(v.to_owned()));
    let traceparent = match traceparent {
        Some(t) => t,
        None => {
            // A new trace: the one the logs name is the one exported.
            let root = TraceParent::new_root();
            if let Ok(value) = root.0.parse() {
                req.headers_mut().insert("traceparent", value);
            }
            root
        }
    };
    // OpenTelemetry's semantic conventions: named by route or RPC, kind
    // SERVER, status set on errors (filled in when the response is known).
    let span = tracing::info_span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        rpc.system = tracing::field::Empty,
        rpc.service = tracing::field::Empty,
        rpc.method = tracing::field::Empty,
        url.path = %path,
        request_id = %request_id,
        traceparent = %traceparent.0,
    );
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
        traceparent
            .serving(next.run(req).instrument(span.clone()))
            .await
    };
    // A bounded set of labels: the route the gateway matched, or a known RPC;
    // any other path a stranger makes up is "other" (never the raw path).
    let route = match response.extensions().get::<Route>() {
        Some(Route(route)) => route.clone(),
        None if is_rpc(&path) => path,
        None => "other".to_owned(),
    };
    span.record("otel.name", route.as_str());
    if OTEL_ON.get().is_some() {
        // The exported span exists by now: rename it there too.
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.context().span().update_name(route.clone());
    }
    span.record("http.response.status_code", response.status().as_u16());
    match route.trim_start_matches('/').split_once('/') {
        Some((service, rpc)) if route.starts_with('/') => {
            span.record("rpc.system", "grpc");
            span.record("rpc.service", service);
            span.record("rpc.method", rpc);
        }
        _ => {
            span.record("http.route", route.as_str());
        }
    }
    let outcome = Outcome {
        route,
        method: method.to_string(),
        http_status: response.status().as_u16(),
        request_id,
        caller: response.extensions().get::<Caller>().cloned(),
        started,
        span,
    };
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let is_grpc = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/grpc"));
    match grpc_status {
        Some(status) => {
            outcome.record(&status);
            response
        }
        // The status comes in the trailers, after the stream.
        None if is_grpc => response.map(|body| {
            axum::body::Body::new(Observed {
                body,
                outcome: Some(outcome),
            })
        }),
        None => {
            outcome.record("0");
            response
        }
    }
}

/// What the metrics and the access log say of a finished request.
struct Outcome {
    route: String,
    method: String,
    http_status: u16,
    request_id: String,
    caller: Option<Caller>,
    started: Instant,
    span: tracing::Span,
}

impl Outcome {
    fn record(self, grpc_status: &str) {
        let elapsed = self.started.elapsed();
        let labels = [
            ("path", self.route.clone()),
            ("http_status", self.http_status.to_string()),
            ("grpc_status", grpc_status.to_owned()),
        ];
        metrics::counter!("rdm_requests_total", &labels).increment(1);
        metrics::histogram!("rdm_request_duration_seconds", &labels[..1])
            .record(elapsed.as_secs_f64());
        let (tenant_id, user_id) = self
            .caller
            .as_ref()
            .map_or(("", ""), |c| (c.tenant_id.as_str(), c.user_id.as_str()));
        // A server span's status is an error for HTTP 5xx and for the gRPC
        // codes the server is to blame for (semantic conventions).
        if self.http_status >= 500 || matches!(grpc_status, "2" | "4" | "12" | "13" | "14" | "15") {
            self.span.record("otel.status_code", "ERROR");
        }
        let _in = self.span.enter();
        // Server failures are errors; refusals and device failures warnings.
        let failed_server = self.http_status >= 500 && !matches!(self.http_status, 502..=504)
            || matches!(grpc_status, "2" | "13" | "15");
        let refused = self.http_status >= 400 || grpc_status != "0";
        macro_rules! access {
            ($level:ident) => {
                tracing::$level!(
                    target: "rdm::access",
                    method = %self.method,
                    route = %self.route,
                    http_status = self.http_status,
                    grpc_status,
                    duration_ms = elapsed.as_secs_f64() * 1e3,
                    request_id = %self.request_id,
                    tenant_id,
                    user_id,
                    "request"
                )
            };
        }
        if failed_server {
            access!(error);
        } else if refused {
            access!(warn);
        } else {
            access!(info);
        }
    }
}

/// A gRPC response body whose trailers say how the call ended.
struct Observed {
    body: axum::body::Body,
    outcome: Option<Outcome>,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    && let Some(outcome) = self.outcome.take()
                {
                    outcome.record(status);
                }
            }
            std::task::Poll::Ready(Some(Err(_))) => {
                if let Some(outcome) = self.outcome.take() {
                    outcome.record("2");
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(outcome) = self.outcome.take() {
                    outcome.record("0");
                }
            }
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Observed {
    /// A stream the client dropped before its end: cancelled.
    fn drop(&mut self) {
        if let Some(outcome) = self.outcome.take() {
            outcome.record("1");
        }
    }
}
