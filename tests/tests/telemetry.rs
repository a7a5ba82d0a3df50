//! Traces leave the process over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is
//! set, and continue the caller's W3C trace context.
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use rdm_tests::{ADMIN_PASSWORD, free_port, rdm_binary};
use std::time::Duration;
use tokio::sync::mpsc;

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector_in_the_callers_trace() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = tokio::process::Command::new(rdm_binary())
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--inventory-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("RDM_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RDM_SHUTDOWN_DELAY_MS", "0")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let url = format!("http://127.0.0.1:{port}/v1/me");
    let mut answered = false;
    for _ in 0..200 {
        let sent = http
            .get(&url)
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .send()
            .await;
        if sent.is_ok_and(|r| r.status() == reqwest::StatusCode::UNAUTHORIZED) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answered, "rdm up did not answer on {url}");

    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(export) = rx.recv().await {
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.clone())
                    .map(|v| format!("{v:?}"));
                for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                    let id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    if id == trace_id {
                        return service;
                    }
                }
            }
        }
        None
    })
    .await;
    let _ = child.start_kill();
    let service = found.expect("no span of our trace reached the collector within 20 s");
    assert!(
        service.is_some_and(|s| s.contains("rdm")),
        "spans carry service.name rdm"
    );
}
