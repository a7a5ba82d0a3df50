//! The identity-mellophone service and sign-in through Mellophone, through
//! the gateway (REST), against the Mellophone simulator (tests/sims), on
//! SQLite and PostgreSQL.
use rdm_sims::mellophone::{self, Forced, MellophoneSim};
use rdm_tests::{Store, TestMesh, on_both_stores};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// A server with ann (may change others' passwords; login rule: admin), bob
/// (group support: viewer) and carol (no group: no role).
async fn server() -> MellophoneSim {
    let users = vec![
        mellophone::user(&[
            ("sid", "s-ann"),
            ("login", "ann"),
            ("pwd", "ann-pw"),
            ("name", "Ann"),
            ("email", "ann@example.com"),
            ("groups", "netops"),
            ("admin", "true"),
        ]),
        mellophone::user(&[
            ("sid", "s-bob"),
            ("login", "bob"),
            ("pwd", "bob-pw"),
            ("phone", "+31 20 000"),
            ("groups", "support"),
            ("dept", "helpdesk"),
        ]),
        mellophone::user(&[("sid", "s-carol"), ("login", "carol"), ("pwd", "carol-pw")]),
    ];
    mellophone::start(
        ([127, 0, 0, 1], 0).into(),
        mellophone::Config::with_users(users),
    )
    .await
    .expect("the simulator starts")
}

fn settings(sim: &MellophoneSim) -> Value {
    json!({"mellophone": {
        "base_url": sim.base_url(),
        "settings_token": "settings-secret",
        "user_manage_token": "manage-secret",
        "timeout_ms": 2000,
        "sign_in": true,
        "roles": [
            {"group": "support", "role": "viewer"},
            {"group": "netops", "role": "operator"},
            {"login": "ann", "role": "admin"}
        ]
    }})
}

async fn put_settings(mesh: &TestMesh, token: &str, body: Value) -> (StatusCode, Value) {
    mesh.call(
        Method::PUT,
        "/v1/settings/identity-provider",
        Some(token),
        Some(body),
    )
    .await
}

async fn put_ok(mesh: &TestMesh, token: &str, body: Value) -> Value {
    let (status, reply) = put_settings(mesh, token, body).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    reply
}

/// A tenant (admin alice, local) whose identity provider is `sim`.
async fn tenant(mesh: &TestMesh, slug: &str, sim: &MellophoneSim) -> String {
    let (id, token) = mesh.tenant_with_admin(slug).await;
    mesh.allow_targets(&id, &["127.0.0.0/8"]).await;
    put_ok(mesh, &token, settings(sim)).await;
    token
}

async fn call(mesh: &TestMesh, token: &str, rpc: &str, body: Value) -> (StatusCode, Value) {
    mesh.post(&format!("/v1/mellophone/{rpc}"), token, body)
        .await
}

async fn ok(mesh: &TestMesh, token: &str, rpc: &str, body: Value) -> Value {
    let (status, reply) = call(mesh, token, rpc, body).await;
    assert_eq!(status, StatusCode::OK, "{rpc}: {reply}");
    reply
}

async fn signed_in(mesh: &TestMesh, token: &str, session: &str) -> Value {
    ok(
        mesh,
        token,
        "is-authenticated",
        json!({"session_id": session}),
    )
    .await
}

async fn every_operation_against_the_simulator(mesh: TestMesh) {
    let sim = server().await;
    let token = tenant(&mesh, "acme", &sim).await;

    // The settings as an admin reads them: tokens held, never shown.
    let (status, shown) = mesh.get("/v1/settings/identity-provider", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["mellophone"]["settings_token_set"], true, "{shown}");
    assert_eq!(shown["mellophone"]["user_manage_token_set"], true);
    assert!(!shown.to_string().contains("secret"), "{shown}");

    // Sessions: a generated id, the user behind it, every attribute kept.
    let bob = ok(
        &mesh,
        &token,
        "login",
        json!({"login": "bob", "password": "bob-pw"}),
    )
    .await;
    let session = bob["session_id"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32, "{bob}");
    let me = signed_in(&mesh, &token, &session).await;
    assert_eq!(me["authenticated"], true);
    assert_eq!(
        (
            &me["user"]["sid"],
            &me["user"]["login"],
            &me["user"]["phone"]
        ),
        (&json!("s-bob"), &json!("bob"), &json!("+31 20 000"))
    );
    assert_eq!(me["user"]["attributes"]["dept"], "helpdesk", "{me}");
    let nobody = signed_in(&mesh, &token, "no-such-session").await;
    assert_eq!(
        (&nobody["authenticated"], &nobody["reason"]),
        (&json!(false), &json!("bad session"))
    );

    // Credentials and names.
    let user = ok(
        &mesh,
        &token,
        "check-credentials",
        json!({"login": "ann", "password": "ann-pw"}),
    )
    .await;
    assert_eq!(user["user"]["email"], "ann@example.com");
    let (status, e) = call(
        &mesh,
        &token,
        "check-credentials",
        json!({"login": "ann", "password": "nope"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    assert_eq!(
        (&e["code"], &e["mellophone_error"], &e["reason"]),
        (
            &json!("DEVICE_AUTH_REJECTED"),
            &json!("bad_credentials"),
            &json!("bad credentials")
        )
    );
    assert!(
        !e.to_string().contains("nope"),
        "the password is not echoed: {e}"
    );
    let found = ok(
        &mesh,
        &token,
        "check-name",
        json!({"session_id": session, "name": "ann"}),
    )
    .await;
    assert_eq!(
        (&found["found"], &found["user"]["sid"]),
        (&json!(true), &json!("s-ann"))
    );
    let missing = ok(
        &mesh,
        &token,
        "check-name",
        json!({"session_id": session, "name": "zed"}),
    )
    .await;
    assert_eq!(missing["found"], false);

    // State moves with a new session id; the old id is gone.
    ok(
        &mesh,
        &token,
        "set-state",
        json!({"session_id": session, "state": "<page n=\"3\"/>"}),
    )
    .await;
    ok(
        &mesh,
        &token,
        "change-app-session-id",
        json!({"old_session_id": session, "new_session_id": "bob-2"}),
    )
    .await;
    let state = ok(&mesh, &token, "get-state", json!({"session_id": "bob-2"})).await;
    assert_eq!(state["state"], "<page n=\"3\"/>");
    let (status, e) = call(&mesh, &token, "get-state", json!({"session_id": session})).await;
    assert_eq!(
        (status, &e["mellophone_error"]),
        (StatusCode::NOT_FOUND, &json!("bad_session")),
        "{e}"
    );

    // Passwords: one's own, and another's only from a session allowed to.
    ok(
        &mesh,
        &token,
        "change-password",
        json!({"session_id": "bob-2", "old_password": "bob-pw", "new_password": "bob-pw2"}),
    )
    .await;
    ok(
        &mesh,
        &token,
        "check-credentials",
        json!({"login": "bob", "password": "bob-pw2"}),
    )
    .await;
    let (status, e) = call(
        &mesh,
        &token,
        "change-user-password",
        json!({"session_id": "bob-2", "username": "carol", "new_password": "x"}),
    )
    .await;
    assert_eq!(
        (status, &e["code"]),
        (StatusCode::FORBIDDEN, &json!("PERMISSION_DENIED")),
        "{e}"
    );
    let ann = ok(&mesh, &token, "login", json!({"login": "ann", "password": "ann-pw", "session_id": "ann-1", "group": "main", "ip": "10.0.0.5"})).await;
    assert_eq!(ann["session_id"], "ann-1");
    ok(
        &mesh,
        &token,
        "change-user-password",
        json!({"session_id": "ann-1", "username": "carol", "new_password": "carol-pw2"}),
    )
    .await;
    assert_eq!(sim.user("carol").unwrap()["pwd"], "carol-pw2");

    // Groups, providers, users.
    let groups = ok(&mesh, &token, "import-groups-providers", json!({})).await;
    assert_eq!(groups["groups"], json!(["main"]));
    let providers = ok(
        &mesh,
        &token,
        "provider-list",
        json!({"login": "ann", "password": "ann-pw"}),
    )
    .await;
    assert_eq!(
        (
            &providers["providers"][0]["id"],
            &providers["providers"][0]["type"],
            &providers["providers"][0]["attributes"]["groups"]
        ),
        (&json!("ldap1"), &json!("ldap"), &json!("main")),
        "{providers}"
    );
    let users = ok(&mesh, &token, "user-list", json!({"group": "main"})).await;
    let logins: Vec<&str> = users["providers"][0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["login"].as_str().unwrap())
        .collect();
    assert_eq!(logins, ["ann", "bob", "carol"], "{users}");
    assert_eq!(users["providers"][0]["pid"], "ldap1");

    // Settings and user management, with the tenant's tokens.
    ok(
        &mesh,
        &token,
        "set-settings",
        json!({"lockout_time_minutes": 1, "login_attempts_allowed": 3}),
    )
    .await;
    assert_eq!(sim.lockout_policy(), (3, Duration::from_secs(60)));
    ok(
        &mesh,
        &token,
        "create-user",
        json!({"user": {"sid": "s-dave", "login": "dave", "password": "dave-pw",
        "name": "Dave & Co", "attributes": {"groups": "netops"}}}),
    )
    .await;
    assert_eq!(sim.user("dave").unwrap()["name"], "Dave & Co");
    ok(
        &mesh,
        &token,
        "update-user",
        json!({"sid": "s-dave", "user": {"email": "dave@example.com"}}),
    )
    .await;
    assert_eq!(sim.user("dave").unwrap()["email"], "dave@example.com");
    ok(
        &mesh,
        &token,
        "login",
        json!({"login": "dave", "password": "dave-pw", "session_id": "dave-1"}),
    )
    .await;
    ok(&mesh, &token, "delete-user", json!({"sid": "s-dave"})).await;
    assert!(sim.user("dave").is_none());
    assert_eq!(
        signed_in(&mesh, &token, "dave-1").await["authenticated"],
        false,
        "a deleted user's sessions end"
    );
    let (status, e) = call(&mesh, &token, "delete-user", json!({"sid": "s-dave"})).await;
    assert_eq!(
        (status, &e["mellophone_error"]),
        (StatusCode::NOT_FOUND, &json!("not_found")),
        "{e}"
    );

    // Logout ends the user's linked sessions.
    ok(
        &mesh,
        &token,
        "login",
        json!({"login": "ann", "password": "ann-pw", "session_id": "ann-2"}),
    )
    .await;
    ok(&mesh, &token, "logout", json!({"session_id": "ann-1"})).await;
    assert_eq!(
        signed_in(&mesh, &token, "ann-2").await["authenticated"],
        false
    );
    assert_eq!(
        signed_in(&mesh, &token, "bob-2").await["authenticated"],
        true
    );
    // The audit trail has every change, and none of the passwords or tokens.
    let mut events = Value::Null;
    for _ in 0..50 {
        events = mesh.get("/v1/audit?page_size=100", &token).await.1;
        let recorded = events.to_string();
        if recorded.contains("ChangeUserPassword") && recorded.contains("UpdateIdentityProvider") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded = events.to_string();
    assert!(
        recorded.contains("/rdm.mellophone.v1.MellophoneService/ChangePassword"),
        "{recorded}"
    );
    for secret in [
        "bob-pw",
        "carol-pw2",
        "dave-pw",
        "settings-secret",
        "manage-secret",
    ] {
        assert!(
            !recorded.contains(secret),
            "{secret} in the audit trail: {recorded}"
        );
    }
}

async fn sign_in_through_mellophone(mesh: TestMesh) {
    let sim = server().await;
    let admin = tenant(&mesh, "acme", &sim).await;

    // Roles from the mapping: a login rule, a group rule.
    let ann = mesh.token("acme", "ann", "ann-pw").await;
    let (_, me) = mesh.get("/v1/me", &ann).await;
    assert_eq!(
        (&me["username"], &me["roles"]),
        (&json!("ann"), &json!(["admin"])),
        "{me}"
    );
    let bob = mesh.token("acme", "bob", "bob-pw").await;
    let (_, me) = mesh.get("/v1/me", &bob).await;
    assert_eq!(me["roles"], json!(["viewer"]));
    let (status, _) = mesh.get("/v1/devices", &bob).await;
    assert_eq!(status, StatusCode::OK, "a viewer reads");
    let (status, _) = call(
        &mesh,
        &bob,
        "create-user",
        json!({"user": {"sid": "x", "login": "x"}}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer manages no users");
    // The tenant's users show who signed in through Mellophone.
    let (_, users) = mesh.get("/v1/users", &admin).await;
    assert_eq!(users["users"].as_array().map(Vec::len), Some(3), "{users}");

    // A wrong password, an unmapped user; the local admin still signs in.
    let (status, e) = mesh.login("acme", "bob", "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{e}");
    let (status, e) = mesh.login("acme", "carol", "carol-pw").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("no rdm role"), "{e}");
    mesh.token("acme", "alice", "alice-password").await;

    // Mellophone's own lock-out is passed on as a lock-out.
    ok(
        &mesh,
        &admin,
        "set-settings",
        json!({"lockout_time_minutes": 10, "login_attempts_allowed": 2}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            mesh.login("acme", "ann", "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, e) = mesh.login("acme", "ann", "ann-pw").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{e}");
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("locked this user out"),
        "{e}"
    );

    // Mellophone failing or unreachable: 503, not a wrong password, and
    // not counted against the user.
    sim.force(Some(Forced::Status(502, "Bad Gateway".into())));
    for _ in 0..8 {
        let (status, e) = mesh.login("acme", "bob", "bob-pw").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    }
    sim.force(None);
    mesh.token("acme", "bob", "bob-pw").await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut unreachable = settings(&sim);
    unreachable["mellophone"]["base_url"] =
        json!(format!("http://{}/m", closed.local_addr().unwrap()));
    drop(closed);
    put_ok(&mesh, &admin, unreachable).await;
    let (status, e) = mesh.login("acme", "bob", "bob-pw").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("identity provider"),
        "{e}"
    );

    // Another tenant sees nothing of acme's provider, and cannot use it.
    let (_, other) = mesh.tenant_with_admin("other").await;
    let (status, shown) = mesh.get("/v1/settings/identity-provider", &other).await;
    assert_eq!((status, shown), (StatusCode::OK, json!({})));
    let (status, e) = call(
        &mesh,
        &other,
        "login",
        json!({"login": "bob", "password": "bob-pw"}),
    )
    .await;
    assert_eq!(
        (status, &e["code"]),
        (StatusCode::CONFLICT, &json!("FAILED_PRECONDITION")),
        "{e}"
    );
    assert_eq!(
        mesh.login("other", "bob", "bob-pw").await.0,
        StatusCode::UNAUTHORIZED
    );
}

on_both_stores!(
    every_operation_against_the_simulator,
    sign_in_through_mellophone
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failure_keeps_its_meaning() {
    let mesh = TestMesh::start(Store::Sqlite).await;
    let sim = server().await;
    let (id, token) = mesh.tenant_with_admin("acme").await;
    mesh.allow_targets(&id, &["127.0.0.0/8"]).await;
    let (status, e) = call(
        &mesh,
        &token,
        "is-authenticated",
        json!({"session_id": "s"}),
    )
    .await;
    assert_eq!(
        (status, &e["code"]),
        (StatusCode::CONFLICT, &json!("FAILED_PRECONDITION")),
        "no server: {e}"
    );

    // A token left out: named; a token that is wrong: rdm's, not the caller's.
    let mut no_tokens = settings(&sim);
    no_tokens["mellophone"]
        .as_object_mut()
        .unwrap()
        .remove("user_manage_token");
    no_tokens["mellophone"]["settings_token"] = json!("wrong");
    put_ok(&mesh, &token, no_tokens).await;
    let (status, e) = call(&mesh, &token, "user-list", json!({"group": "main"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert_eq!(
        e["field"], "identity_provider.mellophone.user_manage_token",
        "{e}"
    );
    let (status, e) = call(
        &mesh,
        &token,
        "set-settings",
        json!({"lockout_time_minutes": 1, "login_attempts_allowed": 1}),
    )
    .await;
    assert_eq!(
        (status, &e["code"], &e["mellophone_error"]),
        (
            StatusCode::BAD_GATEWAY,
            &json!("UPSTREAM_AUTH"),
            &json!("bad_token")
        ),
        "{e}"
    );
    assert!(
        !e.to_string().contains("wrong"),
        "the token is not shown: {e}"
    );
    // A token left out of a PUT is kept; `_set: false` forgets it.
    let mut kept = settings(&sim);
    kept["mellophone"]
        .as_object_mut()
        .unwrap()
        .remove("user_manage_token");
    put_ok(&mesh, &token, settings(&sim)).await;
    put_ok(&mesh, &token, kept.clone()).await;
    ok(&mesh, &token, "user-list", json!({"group": "main"})).await;
    kept["mellophone"]["user_manage_token_set"] = json!(false);
    let shown = put_ok(&mesh, &token, kept).await;
    assert_eq!(
        shown["mellophone"]["user_manage_token_set"], false,
        "{shown}"
    );

    // Lock-out after five failures.
    for _ in 0..5 {
        call(
            &mesh,
            &token,
            "check-credentials",
            json!({"login": "bob", "password": "x"}),
        )
        .await;
    }
    let (status, e) = call(
        &mesh,
        &token,
        "check-credentials",
        json!({"login": "bob", "password": "bob-pw"}),
    )
    .await;
    assert_eq!(
        (status, &e["code"], &e["mellophone_error"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &json!("DEVICE_LOCKED"),
            &json!("locked_out")
        ),
        "{e}"
    );

    // Mellophone's HTTP errors, each its own.
    for (code, text, want_status, want_kind) in [
        (
            400,
            "bad request",
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_request",
        ),
        (401, "", StatusCode::BAD_GATEWAY, "unauthorized"),
        (404, "Not Found", StatusCode::NOT_FOUND, "not_found"),
        (
            500,
            "java.lang.NullPointerException",
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
        ),
    ] {
        sim.force(Some(Forced::Status(code, text.into())));
        let (status, e) = call(&mesh, &token, "get-state", json!({"session_id": "s"})).await;
        assert_eq!(
            (status, &e["mellophone_error"]),
            (want_status, &json!(want_kind)),
            "{code}: {e}"
        );
        assert_eq!(e["mellophone_status"], code.to_string());
    }

    // Hostile replies: a parse error each, and the service stays up.
    let laughs = format!(
        "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\">{}]><user login=\"&lol9;\"/>",
        (1..10)
            .map(|i| format!(
                "<!ENTITY lol{i} \"{}\">",
                format!(
                    "&lol{};",
                    if i == 1 {
                        String::new()
                    } else {
                        (i - 1).to_string()
                    }
                )
                .repeat(10)
            ))
            .collect::<String>()
    );
    let external = "<?xml version=\"1.0\"?><!DOCTYPE u [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><user login=\"&x;\"/>".to_owned();
    for forced in [
        Forced::Body(laughs),
        Forced::Body(external),
        Forced::Body("<user login=".into()),
        Forced::Huge(100 << 20),
    ] {
        sim.force(Some(forced.clone()));
        let (status, e) = call(
            &mesh,
            &token,
            "check-credentials",
            json!({"login": "ann", "password": "ann-pw"}),
        )
        .await;
        assert_eq!(
            (status, &e["mellophone_error"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("parse")),
            "{forced:?}: {e}"
        );
    }
    sim.force(None);
    ok(
        &mesh,
        &token,
        "check-credentials",
        json!({"login": "ann", "password": "ann-pw"}),
    )
    .await;

    // No connection, no answer in time.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}/mellophone", closed.local_addr().unwrap());
    drop(closed);
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/mellophone", silent.local_addr().unwrap());
    for (url, want_status, want_kind) in [
        (closed_url, StatusCode::BAD_GATEWAY, "transport"),
        (silent_url, StatusCode::GATEWAY_TIMEOUT, "timeout"),
    ] {
        put_ok(
            &mesh,
            &token,
            json!({"mellophone": {"base_url": url, "timeout_ms": 300}}),
        )
        .await;
        let (status, e) = call(&mesh, &token, "logout", json!({"session_id": "s"})).await;
        assert_eq!(
            (status, &e["mellophone_error"]),
            (want_status, &json!(want_kind)),
            "{e}"
        );
    }
    drop(silent);

    // Settings the tenant may not have: bad rules, a refused address.
    let (status, e) = put_settings(
        &mesh,
        &token,
        json!({"mellophone": {"base_url": "http://127.0.0.1:1/m", "roles": [{"role": "viewer"}]}}),
    )
    .await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::BAD_REQUEST, &json!("mellophone.roles[0]")),
        "{e}"
    );
    let (status, e) = put_settings(
        &mesh,
        &token,
        json!({"mellophone": {"base_url": "http://169.254.169.254/m"}}),
    )
    .await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::FORBIDDEN, &json!("mellophone.base_url")),
        "{e}"
    );
}

/// `rdm serve identity-mellophone` apart from the inventory and the gateway
/// (the Kubernetes shape): the service opens the tenant's settings at the
/// inventory, and the inventory signs users in through Mellophone itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_identity_mellophone_as_its_own_process() {
    use rdm_tests::{SendJson, Split, admin_on_loopback};
    let split = Split::start(&[]).await;
    let service = split.serve("identity-mellophone", &[]).await;
    let url = format!("http://{}", service.addr);
    let gateway = split
        .serve("gateway", &[("RDM_IDENTITY_MELLOPHONE_URL", url)])
        .await;
    let sim = server().await;
    let http = reqwest::Client::new();
    let base = gateway.url("");
    let admin = admin_on_loopback(&http, &base).await;
    let put = http
        .put(format!("{base}/v1/settings/identity-provider"))
        .bearer_auth(&admin)
        .json(&settings(&sim))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let login = http
        .post(format!("{base}/v1/mellophone/login"))
        .bearer_auth(&admin)
        .json(&json!({"login": "bob", "password": "bob-pw", "session_id": "b1"}))
        .send_json()
        .await;
    assert_eq!(login["session_id"], "b1");
    let me = http
        .post(format!("{base}/v1/mellophone/is-authenticated"))
        .bearer_auth(&admin)
        .json(&json!({"session_id": "b1"}))
        .send_json()
        .await;
    assert_eq!(me["user"]["login"], "bob", "{me}");
    // A Mellophone user of the platform's own tenant gets the mapped role,
    // never more; the platform admin still signs in locally.
    let signed = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"tenant": "system", "username": "ann", "password": "ann-pw"}))
        .send_json()
        .await;
    let me = http
        .get(format!("{base}/v1/me"))
        .bearer_auth(signed["access_token"].as_str().unwrap())
        .send_json()
        .await;
    assert_eq!(me["roles"], json!(["admin"]), "{me}");
    admin_on_loopback(&http, &base).await;
}

/// `rdm up --demo`: tenant mellophone-demo signs its users in through the
/// demo's Mellophone server, each with the role its rules give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tenant_signs_in_through_mellophone() {
    let mesh = TestMesh::start_with_demo_devices(Store::Sqlite).await;
    for (user, role) in [("alice", "admin"), ("bob", "viewer")] {
        let token = mesh
            .token("mellophone-demo", user, &format!("{user}-pw"))
            .await;
        let (_, me) = mesh.get("/v1/me", &token).await;
        assert_eq!(me["roles"], json!([role]), "{user}: {me}");
    }
    let (status, _) = mesh.login("mellophone-demo", "carol", "carol-pw").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "carol has no group, so no role"
    );
    mesh.token("mellophone-demo", "admin", "demo").await;
}
