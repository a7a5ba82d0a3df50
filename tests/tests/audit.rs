//! The audit trail: every call that changes something, recorded per tenant
//! with who, from where, what (secrets redacted) and how it ended.
use rdm_tests::{TestMesh, connect_pg, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_stores!(changes_are_recorded_with_secrets_redacted);

async fn changes_are_recorded_with_secrets_redacted(mesh: TestMesh) {
    let admin = mesh.token("demo", "demo", "demo").await;
    let me = mesh.get("/v1/me", &admin).await.1;
    let (status, user) = mesh
        .post(
            "/v1/users",
            &admin,
            json!({"username": "audited", "password": "audit-pass-word", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let (_, device) = mesh
        .post("/v1/devices", &admin, json!({"name": "audited-cpe"}))
        .await;
    let device_id = device["id"].as_str().unwrap();
    let secret = "audit-secret-community";
    let (status, _) = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{device_id}/endpoints/snmp"),
            Some(&admin),
            Some(json!({"host": "127.0.0.1", "version": "2c", "community": secret})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // A protocol write that fails: recorded with its outcome.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (status, _) = mesh
        .post(
            "/v1/snmp/set",
            &admin,
            json!({"target": {"endpoint": {"host": "127.0.0.1", "port": port, "version": "2c", "community": secret, "timeout_ms": 50, "retries": 0}},
                   "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "s", "value": "rack 9"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    // A refused change is recorded too; reads are not.
    let (status, _) = mesh.post("/v1/devices", &admin, json!({"name": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    mesh.get("/v1/devices", &admin).await;

    let events = wait_for_events(&mesh, &admin, 5).await;
    let methods: Vec<&str> = events
        .iter()
        .map(|e| e["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "/rdm.inventory.v1.DeviceService/CreateDevice",
            "/rdm.snmp.v1.SnmpService/Set",
            "/rdm.inventory.v1.DeviceService/PutEndpoint",
            "/rdm.inventory.v1.DeviceService/CreateDevice",
            "/rdm.inventory.v1.UserService/CreateUser",
        ],
        "newest first, reads left out: {events:?}"
    );
    let outcomes: Vec<&str> = events
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["INVALID_ARGUMENT", "DEVICE_TIMEOUT", "OK", "OK", "OK"]
    );
    for e in &events {
        assert_eq!(e["actor"], me["user_id"], "{e}");
        assert_eq!(e["client_ip"], "127.0.0.1", "{e}");
        assert!(e["time"].is_string() && e["request_id"].is_string(), "{e}");
    }
    assert_eq!(events[2]["target"], device_id);
    assert_eq!(events[4]["target"], "", "{}", events[4]);
    let all = serde_json::to_string(&events).unwrap();
    assert!(
        !all.contains(secret) && !all.contains("audit-pass-word"),
        "{all}"
    );
    assert!(
        events[2]["summary"]
            .as_str()
            .unwrap()
            .contains("(redacted)"),
        "{}",
        events[2]
    );
    assert!(events[4]["summary"].as_str().unwrap().contains("audited"));

    // Filters and paging.
    let (_, snmp) = mesh
        .get("/v1/audit?filter.method_prefix=/rdm.snmp.v1.", &admin)
        .await;
    assert_eq!(snmp["events"].as_array().unwrap().len(), 1, "{snmp}");
    let (_, first) = mesh.get("/v1/audit?page_size=2", &admin).await;
    let token = first["next_page_token"].as_str().unwrap();
    let (_, second) = mesh
        .get(&format!("/v1/audit?page_size=2&page_token={token}"), &admin)
        .await;
    assert_eq!(second["events"][0]["id"], events[2]["id"]);
    // Export, as NDJSON.
    let export = mesh
        .http
        .get(mesh.url("/v1/audit:export"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(export.lines().count(), 5, "{export}");

    // Admins only; another tenant sees none of it.
    let viewer = mesh.token("demo", "audited", "audit-pass-word").await;
    assert_eq!(
        mesh.get("/v1/audit", &viewer).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, other) = mesh.tenant_with_admin("audit-other").await;
    let (status, theirs) = mesh.get("/v1/audit", &other).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!theirs.to_string().contains("audited-cpe"), "{theirs}");

    // On PostgreSQL the app role can add rows, not change or remove them.
    if let Some(pg) = &mesh.pg {
        let mut conn = connect_pg(&pg.app_url).await;
        for sql in [
            "update audit_events set outcome = 'OK'",
            "delete from audit_events",
        ] {
            let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
            assert!(
                err.to_string().contains("permission denied"),
                "{sql}: {err}"
            );
        }
    }
}

/// The tenant's events once at least `n` are stored (they are written off
/// the caller's path), newest first.
async fn wait_for_events(mesh: &TestMesh, token: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (status, body) = mesh.get("/v1/audit", token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let events = body["events"].as_array().cloned().unwrap_or_default();
        if events.len() >= n {
            return events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, body) = mesh.get("/v1/audit", token).await;
    panic!("fewer than {n} audit events after 5 s: {body}");
}
