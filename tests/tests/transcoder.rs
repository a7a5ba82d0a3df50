//! The gateway's REST side: how paths, queries and bodies map onto RPCs,
//! streaming, errors, limits, CORS and the documents it serves.
use rdm_tests::{SendJson, Store, TestMesh};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn demo() -> (TestMesh, String) {
    let mesh = TestMesh::start_with(Store::Sqlite, |s| {
        s.gateway.body_limit = 64 * 1024;
        s.gateway.cors_origins = vec!["http://localhost:5173".into()];
    })
    .await;
    let token = mesh.token("demo", "demo", "demo").await;
    (mesh, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_query_and_body_fill_the_request() {
    let (mesh, token) = demo().await;
    // lowerCamelCase and snake_case on input; snake_case on output.
    let (status, carol) = mesh
        .post("/v1/users", &token, json!({"username": "carol", "password": "carol-pass", "roles": ["operator"], "displayName": "Carol"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{carol}");
    assert_eq!(carol["display_name"], "Carol");
    assert!(carol.get("displayName").is_none());
    let id = carol["id"].as_str().unwrap();
    // Path variable.
    let (status, got) = mesh.get(&format!("/v1/users/{id}"), &token).await;
    assert_eq!(
        (status, got["username"].as_str()),
        (StatusCode::OK, Some("carol"))
    );
    // Query parameters, repeated and typed.
    let (status, list) = mesh
        .get("/v1/users?usernamePrefix=car&page_size=10", &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["users"].as_array().unwrap().len(), 1);
    // PATCH changes only what the body names.
    let (status, patched) = mesh
        .patch(
            &format!("/v1/users/{id}"),
            &token,
            json!({"display_name": "Caroline"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(
        (patched["display_name"].as_str(), &patched["roles"]),
        (Some("Caroline"), &json!(["operator"]))
    );
    let (_, patched) = mesh
        .patch(
            &format!("/v1/users/{id}"),
            &token,
            json!({"roles": ["viewer", "operator"]}),
        )
        .await;
    assert_eq!(
        (patched["display_name"].as_str(), &patched["roles"]),
        (Some("Caroline"), &json!(["viewer", "operator"]))
    );
    mesh.token("demo", "carol", "carol-pass").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400s_that_name_the_field() {
    let (mesh, token) = demo().await;
    let cases: [(Method, &str, Option<&str>, &str); 9] = [
        (Method::GET, "/v1/users?page_size=abc", None, "page_size"),
        // A call that takes a body needs one ({} for "nothing").
        (Method::POST, "/v1/users", None, "body"),
        (Method::PATCH, "/v1/users/any", Some(" \n"), "body"),
        (
            Method::GET,
            "/v1/users?no_such_param=1",
            None,
            "no_such_param",
        ),
        (
            Method::POST,
            "/v1/users",
            Some(r#"{"username": "x", "password": ["a"]}"#),
            "password",
        ),
        (
            Method::POST,
            "/v1/users",
            Some(r#"{"username": "x", "bogus": 1}"#),
            "body",
        ),
        (Method::POST, "/v1/users", Some(r#"{"username": "#), "body"),
        (Method::POST, "/v1/users", Some("[1, 2]"), "body"),
        (
            Method::POST,
            "/v1/users",
            Some(r#"{"username": "x y", "password": "long-enough", "roles": ["viewer"]}"#),
            "username",
        ),
    ];
    for (method, path, body, field) in cases {
        let mut req = mesh
            .http
            .request(method, mesh.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json");
        if let Some(body) = body {
            req = req.body(body.to_owned());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path} {body:?}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["field"], field, "{path} {body:?}: {problem}");
        assert_eq!(problem["status"], 400);
        assert!(!problem["detail"].as_str().unwrap().is_empty());
    }
    let (_, list) = mesh.get("/v1/users", &token).await;
    assert_eq!(
        list["users"].as_array().unwrap().len(),
        1,
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_huge_bodies() {
    let (mesh, token) = demo().await;
    let (status, body) = mesh.get("/v1/nothing-here", &token).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND"))
    );
    let resp = mesh
        .http
        .put(mesh.url("/v1/users"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.headers()["allow"].to_str().unwrap().contains("GET"));
    let huge = json!({"username": "big", "password": "x".repeat(100 * 1024), "roles": ["viewer"]});
    let (status, body) = mesh.post("/v1/users", &token, huge).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("PAYLOAD_TOO_LARGE")),
        "{body}"
    );
    // Also when the client streams it without a length.
    let chunks = futures::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let resp = mesh
        .http
        .post(mesh.url("/v1/users"))
        .bearer_auth(&token)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let (_, list) = mesh.get("/v1/users", &token).await;
    assert_eq!(
        list["users"].as_array().unwrap().len(),
        1,
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streams_are_ndjson_or_sse() {
    let (mesh, token) = demo().await;
    for name in ["u1", "u2", "u3"] {
        mesh.post(
            "/v1/users",
            &token,
            json!({"username": name, "password": "password-1", "roles": ["viewer"]}),
        )
        .await;
    }
    let resp = mesh
        .http
        .get(mesh.url("/v1/users:export"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let text = resp.text().await.unwrap();
    let names: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["username"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["demo", "u1", "u2", "u3"]);

    let resp = mesh
        .http
        .get(mesh.url("/v1/users:export?username_prefix=u"))
        .bearer_auth(&token)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 3, "{text}");
    for event in events {
        let data = event
            .strip_prefix("event: message\ndata: ")
            .unwrap_or_else(|| panic!("{event}"));
        assert!(
            serde_json::from_str::<Value>(data).unwrap()["username"]
                .as_str()
                .unwrap()
                .starts_with('u')
        );
    }
    // A stream that fails before its first item is an ordinary problem reply.
    let viewer_less = mesh
        .http
        .get(mesh.url("/v1/users:export"))
        .send()
        .await
        .unwrap();
    assert_eq!(viewer_less.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_request_ids_docs_and_metrics() {
    let (mesh, token) = demo().await;
    let preflight = mesh
        .http
        .request(Method::OPTIONS, mesh.url("/v1/me"))
        .header("origin", "http://localhost:5173")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let foreign = mesh
        .http
        .get(mesh.url("/v1/me"))
        .header("origin", "http://evil.example")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(
        foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let resp = mesh
        .http
        .get(mesh.url("/v1/me"))
        .bearer_auth(&token)
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-42");
    let resp = mesh.http.get(mesh.url("/v1/nope")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["request_id"], generated.as_str());

    let docs = mesh
        .http
        .get(mesh.url("/docs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(docs.contains("swagger-ui-bundle.js") && docs.contains("/openapi.json"));
    let js = mesh
        .http
        .get(mesh.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        js.status(),
        StatusCode::OK,
        "Swagger UI is served from the binary"
    );
    let openapi: Value = mesh.http.get(mesh.url("/openapi.json")).send_json().await;
    assert_eq!(openapi["openapi"], "3.1.0");
    assert_eq!(
        openapi["paths"]["/v1/users/{user_id}"]["patch"]["operationId"],
        "UserService_UpdateUser"
    );
    assert_eq!(
        openapi["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );

    // Metrics are on the internal port only: histograms, process figures.
    let public = mesh.http.get(mesh.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    let metrics = mesh.metrics_text().await;
    assert!(metrics.contains("rdm_requests_total"), "{metrics}");
    assert!(
        metrics.contains("rdm_request_duration_seconds_bucket{"),
        "durations are histograms: {metrics}"
    );
    for figure in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(metrics.contains(figure), "{figure}: {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdm_openapi_prints_what_the_gateway_serves() {
    let mesh = TestMesh::start(Store::Sqlite).await;
    let served: Value = mesh.http.get(mesh.url("/openapi.json")).send_json().await;
    let out = std::process::Command::new(rdm_tests::rdm_binary())
        .arg("openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, served);
    // Every operation: a unique <Service>_<Method> id and problem+json errors.
    let mut ids = std::collections::HashSet::new();
    for (path, ops) in printed["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "duplicate {id}");
            assert!(id.contains("Service_"), "{id}");
            for code in ["400", "401", "403", "404", "500"] {
                assert!(
                    op["responses"][code]["$ref"].as_str().is_some(),
                    "{method} {path} lacks {code}"
                );
            }
        }
    }
    assert!(ids.len() >= 15, "{ids:?}");
}

/// A call past the request deadline is a 504 problem (REST) or
/// DEADLINE_EXCEEDED (gRPC), not an empty 200 in gRPC's clothes; a device
/// call whose own patience cannot fit the deadline is a 400 up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_is_a_504_problem() {
    let mesh = TestMesh::start_with(Store::Sqlite, |s| s.server.request_timeout_ms = 300).await;
    let token = mesh.token("demo", "demo", "demo").await;
    // Importing 70,000 devices takes far longer than 300 ms (20,000 once
    // fitted in a fast run); 3.6 MB stays under the inventory's 4 MiB
    // message limit.
    let file: String = (0..70_000)
        .map(|i| format!("{{\"name\":\"slow-{i}\",\"labels\":{{\"batch\":\"deadline\"}}}}\n"))
        .collect();
    let resp = mesh
        .http
        .post(mesh.url("/v1/devices:import"))
        .bearer_auth(&token)
        .header("x-request-id", "deadline-1")
        .header("content-type", "application/x-ndjson")
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "DEADLINE_EXCEEDED", "{problem}");
    assert_eq!(problem["request_id"], "deadline-1");
    // The gateway's deadline, or the inventory refusing to commit so late.
    assert!(
        problem["detail"].as_str().unwrap().contains(" ms deadline"),
        "{problem}"
    );
    let (_, list) = mesh
        .get("/v1/devices?label_selector=batch%3Ddeadline", &token)
        .await;
    assert_eq!(list["devices"], json!([]), "the cut import stored nothing");

    // gRPC through the gateway port: the status (the caller would wait longer).
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", mesh.gateway))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = rdm_proto::inventory::device_service_client::DeviceServiceClient::new(channel);
    let mut request = tonic::Request::new(rdm_proto::inventory::ImportDevicesRequest {
        file: Some(rdm_proto::google::api::HttpBody {
            content_type: "application/x-ndjson".into(),
            data: file.into_bytes(),
            extensions: Vec::new(),
        }),
    });
    request.set_timeout(std::time::Duration::from_secs(5));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = client.import_devices(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");

    // An SNMP get that could wait 5 s on a silent agent: refused at once,
    // naming the setting to lower.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let (status, problem) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": {"endpoint": {"host": "127.0.0.1", "port": port, "version": "2c", "community": "public", "timeout_ms": 5000}},
                   "oids": ["1.3.6.1.2.1.1.1.0"]}),
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("timeout_ms")),
        "{problem}"
    );
    drop(silent);
}

/// What anyone can send without signing in (made-up paths, made-up ids,
/// huge headers, garbage on the trap port) is answered and forgotten: the
/// metrics keep one label per route, and memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_make_rdm_grow() {
    let mesh = TestMesh::start(Store::Sqlite).await;
    let warm = mesh.http.get(mesh.url("/v1/me")).send().await.unwrap();
    assert_eq!(warm.status(), StatusCode::UNAUTHORIZED);
    let before = rdm_tests::proc_status_kib("VmRSS:");
    let ids: Vec<String> = (0..4000)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    for chunk in ids.chunks(100) {
        let sent = chunk.iter().enumerate().map(|(i, id)| {
            let url = if i % 2 == 0 {
                mesh.url(&format!("/v1/devices/{id}"))
            } else {
                mesh.url(&format!("/{id}/x"))
            };
            let http = mesh.http.clone();
            async move { http.get(url).send().await.unwrap().status() }
        });
        for status in futures::future::join_all(sent).await {
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND,
                "{status}"
            );
        }
    }
    // Headers past hyper's limits are refused, not buffered.
    for _ in 0..50 {
        let sent = mesh
            .http
            .get(mesh.url("/v1/me"))
            .header("x-big", "a".repeat(512 * 1024))
            .send()
            .await;
        // 431, or the connection closed while still sending: never read in full.
        assert!(sent.map_or(true, |r| r.status()
            == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    // Garbage and fake v3 headers on the trap port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..5000u32 {
        let datagram: Vec<u8> = if i % 2 == 0 {
            i.to_be_bytes().repeat(64)
        } else {
            // A v3 message header with random bytes after it.
            [
                &[0x30u8, 0x82, 0x01, 0x00, 0x02, 0x01, 0x03][..],
                &[0x55; 250][..],
            ]
            .concat()
        };
        udp.send_to(&datagram, mesh.traps).await.unwrap();
    }
    let metrics = mesh.metrics_text().await;
    assert!(
        ids.iter().all(|id| !metrics.contains(id.as_str())),
        "a made-up path became a label"
    );
    assert!(metrics.contains("path=\"other\""), "{metrics}");
    assert!(
        metrics.contains("path=\"GET /v1/devices/{device_id}\""),
        "{metrics}"
    );
    let grew_mib = rdm_tests::proc_status_kib("VmRSS:").saturating_sub(before) / 1024;
    println!("RSS grew {grew_mib} MiB over 4000 made-up requests, 50 huge headers, 5000 datagrams");
    assert!(grew_mib < 64, "RSS grew {grew_mib} MiB");
}

/// What a client can send that once became a 500 is now a 4xx naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_a_client_sends_is_a_500() {
    let (mesh, token) = demo().await;
    let selector: Vec<String> = (0..1000).map(|i| format!("k{i}=v")).collect();
    let (status, problem) = mesh
        .get(
            &format!("/v1/devices?label_selector={}", selector.join(",")),
            &token,
        )
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("label_selector")),
        "{problem}"
    );

    let (_, device) = mesh
        .post("/v1/devices", &token, json!({"name": "deep"}))
        .await;
    let mut deep = json!({"a": 1});
    for _ in 0..45 {
        deep = json!({"x": deep});
    }
    let (status, problem) = mesh
        .call(
            Method::PUT,
            &format!(
                "/v1/devices/{}/endpoints/snmp",
                device["id"].as_str().unwrap()
            ),
            Some(&token),
            Some(json!({"version": "2c", "community": "c", "deep": deep})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("nests deeper"),
        "{problem}"
    );

    let import = |content_type: &'static str, body: &'static str| {
        mesh.http
            .post(mesh.url("/v1/devices:import"))
            .bearer_auth(&token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let wrong = import("application/json", "{\"name\": \"x\"}")
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let empty = import("text/csv", "").await.unwrap();
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
}
