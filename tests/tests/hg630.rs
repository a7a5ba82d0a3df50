//! The router-hg630 service through the gateway (REST), against the HG630
//! simulator (tests/sims), on SQLite and PostgreSQL.
use rdm_router_hg630::router::{Router, Scheme};
use rdm_sims::hg630::{self, Hg630Sim};
use rdm_tests::{TestMesh, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A router whose sessions need a heartbeat every 200 ms or die in a second.
fn config() -> hg630::Config {
    hg630::Config {
        heartbeat_interval: Duration::from_millis(200),
        session_ttl: Duration::from_secs(1),
        lockout: Duration::from_secs(2),
        reboot_time: Duration::from_millis(500),
        ..Default::default()
    }
}

async fn router(config: hg630::Config) -> Hg630Sim {
    hg630::start(([127, 0, 0, 1], 0).into(), config)
        .await
        .expect("the simulator starts")
}

fn endpoint(sim: &Hg630Sim, password: &str) -> Value {
    json!({"base_url": sim.base_url(), "username": "admin", "password": password,
           "timeout_ms": 2000})
}

/// A device of the token's tenant with `endpoint` as its hg630 endpoint:
/// the target naming it.
async fn device(mesh: &TestMesh, token: &str, name: &str, endpoint: Value) -> Value {
    let id = mesh
        .device_with_endpoint(token, json!({"name": name}), "hg630", endpoint)
        .await;
    json!({"device_id": id})
}

async fn call(mesh: &TestMesh, token: &str, rpc: &str, target: &Value) -> (StatusCode, Value) {
    mesh.post(
        &format!("/v1/hg630/{rpc}"),
        token,
        json!({"target": target}),
    )
    .await
}

async fn ok(mesh: &TestMesh, token: &str, rpc: &str, target: &Value) -> Value {
    let (status, body) = call(mesh, token, rpc, target).await;
    assert_eq!(status, StatusCode::OK, "{rpc}: {body}");
    body
}

async fn every_rpc_against_the_simulator(mesh: TestMesh) {
    let sim = router(config()).await;
    let token = mesh.token("demo", "demo", "demo").await;
    let target = device(&mesh, &token, "hg630-1", endpoint(&sim, "router-password")).await;

    let login = ok(&mesh, &token, "login", &target).await;
    assert_eq!(
        login,
        json!({"level": "USER_LEVEL_ADMIN", "is_first": false, "is_wizard": false, "signed_in_now": true})
    );
    let info = ok(&mesh, &token, "device-info", &target).await;
    assert_eq!(info["serial_number"], "2150083364F7K1000123");
    assert_eq!(info["device_name"], "HG630 V2");
    assert_eq!(info["other"]["ProductClass"], "HG630", "nothing is dropped");
    let dsl = ok(&mesh, &token, "dsl-info", &target).await;
    assert_eq!(
        (&dsl["status"], &dsl["status_text"], &dsl["modulation"]),
        (&json!("DSL_STATUS_UP"), &json!("Up"), &json!("VDSL2"))
    );
    let down = dsl["down_rate_kbps"].as_u64().unwrap();
    assert!((79_000..=79_900).contains(&down), "{dsl}");
    assert_eq!(dsl["down_max_rate_kbps"], 97512);
    assert_eq!(dsl["up_margin_db"], 8.2);
    assert_eq!(dsl["down_attenuation_db"], 14.5);
    assert_eq!(dsl["other"]["DataPath"], "Fast");
    let wan = ok(&mesh, &token, "wan-info", &target).await;
    assert_eq!(wan["connections"][0]["ipv4_address"], "203.0.113.7");
    assert_eq!(
        wan["connections"][0]["dns_servers"],
        json!(["198.51.100.1", "198.51.100.2"])
    );
    let hosts = ok(&mesh, &token, "hosts", &target).await;
    let active: Vec<bool> = hosts["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["active"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(active, [true, true, false], "{hosts}");
    let wlan = ok(&mesh, &token, "wlan", &target).await;
    assert_eq!(wlan["networks"][1]["ssid"], "home-guest");
    assert_eq!(wlan["radio"]["channel"], 6);
    assert_eq!(wlan["radio"]["other"]["WifiCountry"], "NL");
    let lan = ok(&mesh, &token, "lan-info", &target).await;
    assert_eq!(
        (&lan["ip_address"], &lan["dhcp_server_enabled"]),
        (&json!("192.168.1.1"), &json!(true))
    );
    let count = ok(&mesh, &token, "device-count", &target).await;
    assert_eq!(count, json!({"active": 2, "ethernet": 1, "wireless": 1}));
    let diagnosis = ok(&mesh, &token, "diagnose-internet", &target).await;
    assert_eq!(
        (&diagnosis["connected"], &diagnosis["result"]),
        (&json!(true), &json!("ok"))
    );
    let level = ok(&mesh, &token, "user-level", &target).await;
    assert_eq!(
        level,
        json!({"level": "USER_LEVEL_ADMIN", "is_admin": true})
    );
    assert_eq!(
        ok(&mesh, &token, "heartbeat", &target).await,
        json!({"interval_ms": 200})
    );
    // Heartbeats keep the session alive past the router's 1 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        ok(&mesh, &token, "is-logged-in", &target).await,
        json!({"logged_in": true})
    );
    assert_eq!(sim.seen().logins, 1, "one sign-in for all of it");

    assert_eq!(
        ok(&mesh, &token, "logout", &target).await,
        json!({"was_logged_in": true})
    );
    assert_eq!(
        ok(&mesh, &token, "is-logged-in", &target).await,
        json!({"logged_in": false})
    );
    let seen = sim.seen();
    assert_eq!((seen.logouts, seen.open_sessions), (1, 0));

    // Reboot: the router goes down, then needs a fresh session.
    ok(&mesh, &token, "reboot", &target).await;
    assert_eq!(sim.seen().reboots, 1);
    let (status, body) = call(&mesh, &token, "dsl-info", &target).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["code"], "DEVICE_UNREACHABLE");
    let up = until_ok(&mesh, &token, "dsl-info", &target).await;
    assert_eq!(up["status"], "DSL_STATUS_UP");
    assert_eq!(sim.seen().logins, 3);
    assert_eq!(sim.seen().stale_tokens, 0, "no CSRF token was spent twice");

    // Another tenant: not found, and a viewer cannot reboot.
    let (_, other) = mesh.tenant_with_admin("other").await;
    let (status, body) = call(&mesh, &other, "dsl-info", &target).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// Calls `rpc` until it succeeds (a rebooting router), at most 5 s.
async fn until_ok(mesh: &TestMesh, token: &str, rpc: &str, target: &Value) -> Value {
    let started = Instant::now();
    loop {
        let (status, body) = call(mesh, token, rpc, target).await;
        if status == StatusCode::OK {
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{rpc}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fifty_callers_share_one_session(mesh: TestMesh) {
    let sim = router(config()).await;
    let token = mesh.token("demo", "demo", "demo").await;
    let target = device(&mesh, &token, "hg630-1", endpoint(&sim, "router-password")).await;
    let calls = (0..50).map(|i| {
        let rpc = ["dsl-info", "hosts", "wan-info", "device-info", "wlan"][i % 5];
        call(&mesh, &token, rpc, &target)
    });
    for (status, body) in futures::future::join_all(calls).await {
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(sim.seen().logins, 1, "one sign-in for 50 callers");

    // Writes spend the CSRF token the previous one was given: ten at once
    // are taken in turn, and the router's write error keeps its code.
    sim.fail_writes(Some(9007));
    let reboots = (0..10).map(|_| call(&mesh, &token, "reboot", &target));
    for (status, body) in futures::future::join_all(reboots).await {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(
            (&body["code"], &body["errcode"]),
            (&json!("DEVICE_ERROR"), &json!("9007"))
        );
    }
    let seen = sim.seen();
    assert_eq!((seen.stale_tokens, seen.logins), (0, 1), "{seen:?}");
}

on_both_stores!(
    every_rpc_against_the_simulator,
    fifty_callers_share_one_session
);

async fn demo() -> (TestMesh, String) {
    let mesh = TestMesh::start(rdm_tests::Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    (mesh, token)
}

/// Signs in to `sim` directly, as another client of the router would.
fn outsider(sim: &Hg630Sim) -> Router {
    Router {
        http: reqwest::Client::new(),
        base: sim.base_url(),
        timeout: Duration::from_secs(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_signed_in_again() {
    let (mesh, token) = demo().await;
    let sim = router(config()).await;
    let target = device(&mesh, &token, "hg630-1", endpoint(&sim, "router-password")).await;
    ok(&mesh, &token, "dsl-info", &target).await;
    sim.expire_sessions();
    ok(&mesh, &token, "dsl-info", &target).await;
    assert_eq!(sim.seen().logins, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_and_a_lockout_are_not_retried() {
    let (mesh, token) = demo().await;
    let sim = router(config()).await;
    let wrong = device(
        &mesh,
        &token,
        "hg630-wrong",
        endpoint(&sim, "not-the-password"),
    )
    .await;
    for _ in 0..3 {
        let (status, body) = call(&mesh, &token, "dsl-info", &wrong).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(
            (&body["code"], &body["failure_count"]),
            (&json!("UPSTREAM_AUTH"), &json!("1"))
        );
        assert!(!body.to_string().contains("not-the-password"), "{body}");
    }
    assert_eq!(
        sim.seen().failed_logins,
        1,
        "a refused password is not tried again: the router would lock the user out"
    );

    // Someone else locks the user out; rdm waits it out without signing in.
    for _ in 0..2 {
        let refused = outsider(&sim)
            .login(Scheme::Current, "admin", "guess")
            .await
            .unwrap();
        assert!(refused.is_err());
    }
    let right = device(
        &mesh,
        &token,
        "hg630-right",
        endpoint(&sim, "router-password"),
    )
    .await;
    let (status, body) = call(&mesh, &token, "dsl-info", &right).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "DEVICE_LOCKED", "{body}");
    let attempts = sim.seen().failed_logins;
    let (status, body) = call(&mesh, &token, "dsl-info", &right).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &json!("DEVICE_LOCKED"))
    );
    assert_eq!(
        sim.seen().failed_logins,
        attempts,
        "no sign-in while locked"
    );
    assert_eq!(sim.seen().logins, 0);
    // Once the wait is over, it signs in.
    let dsl = until_ok(&mesh, &token, "dsl-info", &right).await;
    assert_eq!(dsl["status"], "DSL_STATUS_UP");
    assert_eq!(sim.seen().logins, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_in_use_elsewhere_is_busy_and_sigterm_signs_out() {
    let (mesh, token) = demo().await;
    let sim = router(hg630::Config {
        session_ttl: Duration::from_secs(30),
        ..config()
    })
    .await;
    let target = device(&mesh, &token, "hg630-1", endpoint(&sim, "router-password")).await;
    // Another client holds the user's session.
    outsider(&sim)
        .login(Scheme::Current, "admin", "router-password")
        .await
        .unwrap()
        .unwrap();
    let (status, body) = call(&mesh, &token, "dsl-info", &target).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "DEVICE_BUSY", "{body}");
    sim.expire_sessions();
    ok(&mesh, &token, "dsl-info", &target).await;
    assert_eq!(sim.seen().open_sessions, 1);

    // SIGTERM: rdm signs out of the router while it drains.
    mesh.stop();
    let started = Instant::now();
    while sim.seen().open_sessions > 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = sim.seen();
    assert_eq!((seen.open_sessions, seen.logouts), (0, 1), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_firmware_and_the_demo_router() {
    let (mesh, token) = demo().await;
    let sim = router(hg630::Config {
        scheme: hg630::Scheme::Legacy,
        ..config()
    })
    .await;
    let mut legacy = endpoint(&sim, "router-password");
    legacy["password_scheme"] = json!("legacy");
    let (status, body) = mesh
        .post(
            "/v1/hg630/device-count",
            &token,
            json!({"target": {"endpoint": legacy}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The current scheme against legacy firmware is a refused password.
    let (status, body) = mesh
        .post(
            "/v1/hg630/device-count",
            &token,
            json!({"target": {"endpoint": endpoint(&sim, "router-password")}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");

    let mesh = TestMesh::start_with_demo_devices(rdm_tests::Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    let (_, list) = mesh.get("/v1/devices?name_prefix=demo-hg630", &token).await;
    let target = json!({"device_id": list["devices"][0]["id"]});
    let info = ok(&mesh, &token, "device-info", &target).await;
    assert_eq!(info["device_name"], "HG630 V2");
}
