//! Traces leave the process over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is
//! set, and continue the caller's W3C trace context.
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use rdm_tests::{ADMIN_PASSWORD, Process};
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

/// An OTLP receiver on a port of its own: its address and what it receives.
async fn collector() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector_in_the_callers_trace() {
    let (collector, mut rx) = collector().await;

    let dir = tempfile::tempdir().unwrap();
    let rdm = Process::up(
        dir.path(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("RDM_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("RDM_SHUTDOWN_DELAY_MS", "0".into()),
            // Spans are exported at the level the log filter lets through.
            ("RDM_LOG", "info".into()),
        ],
    )
    .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let answered = reqwest::Client::new()
        .get(rdm.url("/v1/me"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), reqwest::StatusCode::UNAUTHORIZED);

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
                    if id == trace_id && span.name == "GET /v1/me" {
                        // Semantic conventions: kind SERVER, the route.
                        assert_eq!(span.kind, 2, "SERVER: {span:?}");
                        let route = span
                            .attributes
                            .iter()
                            .find(|a| a.key == "http.route")
                            .and_then(|a| a.value.clone())
                            .map(|v| format!("{v:?}"));
                        assert!(route.is_some_and(|r| r.contains("GET /v1/me")), "{span:?}");
                        return service;
                    }
                }
            }
        }
        None
    })
    .await;
    let service = found.expect("no span of our trace reached the collector within 20 s");
    assert!(
        service.is_some_and(|s| s.contains("rdm")),
        "spans carry service.name rdm"
    );

    // A caller that sent no traceparent: the trace its log lines name is
    // the one exported.
    let answered = reqwest::Client::new()
        .get(rdm.url("/v1/me"))
        .header("x-request-id", "no-parent-1")
        .send()
        .await
        .unwrap();
    assert_eq!(answered.status(), reqwest::StatusCode::UNAUTHORIZED);
    let (_, printed) = rdm.terminate(Duration::from_secs(10)).await;
    let logged: String = printed
        .lines()
        .filter(|l| l.contains("no-parent-1") && l.contains("rdm::access"))
        .find_map(|l| {
            let traceparent = l.split("\"traceparent\":\"").nth(1)?;
            Some(traceparent.split('-').nth(1)?.to_owned())
        })
        .unwrap_or_else(|| panic!("no access line with a traceparent: {printed}"));
    let exported = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(export) = rx.recv().await {
            for span in export
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                let id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                if id == logged {
                    return true;
                }
            }
        }
        false
    })
    .await;
    assert_eq!(
        exported,
        Ok(true),
        "trace {logged} was logged, not exported"
    );
}

/// One access-log line per request at its level (route template, status,
/// duration, tenant, user, never a secret), and the request id the client
/// got in every line of the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_an_access_line_with_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let rdm = Process::up(
        dir.path(),
        &["--demo"],
        &[
            ("RDM_ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("RDM_SHUTDOWN_DELAY_MS", "0".into()),
            ("RDM_LOG", "info".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let login: serde_json::Value = http
        .post(rdm.url("/v1/auth/login"))
        .json(&serde_json::json!({"tenant": "demo", "username": "demo", "password": "demo"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let missing = http
        .get(rdm.url("/v1/devices/01234567-no-such-device"))
        .bearer_auth(token)
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), reqwest::StatusCode::NOT_FOUND);
    assert_eq!(missing.headers()["x-request-id"], "trace-me-123");
    let (_, printed) = rdm.terminate(Duration::from_secs(10)).await;
    let lines: Vec<serde_json::Value> = printed
        .lines()
        .filter(|l| l.contains("trace-me-123"))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "rdm::access")
        .collect();
    // The gateway's line, and the inventory's (the call went on in-process).
    let gateway = access
        .iter()
        .find(|l| l["fields"]["route"] == "GET /v1/devices/{device_id}")
        .unwrap_or_else(|| panic!("no gateway access line in {lines:#?}"));
    assert_eq!(gateway["level"], "WARN", "{gateway}");
    assert_eq!(gateway["fields"]["http_status"], 404, "{gateway}");
    assert_eq!(gateway["fields"]["request_id"], "trace-me-123");
    assert!(gateway["fields"]["duration_ms"].as_f64().is_some());
    let service = access
        .iter()
        .find(|l| l["fields"]["route"] == "/rdm.inventory.v1.DeviceService/GetDevice")
        .unwrap_or_else(|| panic!("no inventory access line in {lines:#?}"));
    assert_eq!(service["fields"]["grpc_status"], "5", "{service}");
    assert!(
        !service["fields"]["tenant_id"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            && !service["fields"]["user_id"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
        "{service}"
    );
    assert!(!printed.contains(token), "the token is never logged");
}

/// In the Kubernetes shape (gateway, snmp and inventory each their own
/// process), one trace runs from the gateway through snmp to the
/// inventory: every hop exports its span under the caller's trace id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_the_gateway_through_snmp_to_the_inventory() {
    use rdm_tests::{Split, admin_on_loopback};
    let (collector, mut rx) = collector().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("RDM_LOG", "info".into()),
        ("RDM_SHUTDOWN_DELAY_MS", "0".into()),
    ];
    let split = Split::start(&otel).await;
    let snmp = split.serve("snmp", &otel).await;
    let mut gateway_env = otel.to_vec();
    gateway_env.push(("RDM_SNMP_URL", format!("http://{}", snmp.addr)));
    let gateway = split.serve("gateway", &gateway_env).await;
    let http = reqwest::Client::new();
    let token = &admin_on_loopback(&http, &gateway.url("")).await;
    // A device target: snmp resolves it at the inventory (it does not
    // exist, which is a 404 after the whole round).
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let resp = http
        .post(gateway.url("/v1/snmp/get"))
        .bearer_auth(token)
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .json(&serde_json::json!({"target": {"device_id": "no-such-device"}, "oids": ["1.3.6.1.2.1.1.5.0"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
    let mut seen = std::collections::BTreeSet::new();
    let mut clients = std::collections::BTreeSet::new();
    let wanted = ["rdm-gateway", "rdm-snmp", "rdm-inventory"];
    let _ = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(export) = rx.recv().await {
            for resource in &export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "service.name")
                    .and_then(|a| a.value.clone())
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                for span in resource.scope_spans.iter().flat_map(|s| &s.spans) {
                    let id: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    if id == trace_id
                        && let Some(name) = wanted.iter().find(|w| service.contains(*w))
                    {
                        seen.insert(*name);
                        // CLIENT spans: the calls each hop made.
                        if span.kind == 3 {
                            clients.insert(span.name.clone());
                        }
                    }
                }
            }
            if seen.len() == wanted.len() && clients.len() >= 2 {
                return;
            }
        }
    })
    .await;
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["rdm-gateway", "rdm-inventory", "rdm-snmp"],
        "each hop exports a span of the caller's trace"
    );
    assert!(
        clients.contains("rdm.snmp.v1.SnmpService/Get")
            && clients.contains("rdm.inventory.v1.DeviceService/ResolveTarget"),
        "the gateway's call to snmp and snmp's to the inventory are CLIENT spans: {clients:?}"
    );
}
