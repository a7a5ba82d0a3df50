//! Sign-in and token checks, end to end through the gateway.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use rdm_kit::auth::{Claims, SigningKey};
use rdm_tests::{Store, TestMesh, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_stores!(
    login_issues_a_bearer_token_for_me,
    bad_credentials_are_one_401_whatever_was_wrong,
    forged_and_expired_tokens_are_rejected,
    roles_limit_what_a_user_may_call,
    disabled_and_deleted_users_cannot_sign_in,
    changes_to_a_user_end_their_tokens_at_once,
    logout_and_refresh_tokens,
    api_keys_work_where_tokens_do_and_stop_when_revoked,
);

/// A user `name` with `roles` in the demo tenant: (id, access token).
async fn demo_user(mesh: &TestMesh, admin: &str, name: &str, roles: &[&str]) -> (String, String) {
    let (status, user) = mesh
        .post(
            "/v1/users",
            admin,
            json!({"username": name, "password": "pass-word-1", "roles": roles}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let token = mesh.token("demo", name, "pass-word-1").await;
    (user["id"].as_str().unwrap().to_owned(), token)
}

fn revoked(status: StatusCode, body: &Value) -> bool {
    status == StatusCode::UNAUTHORIZED
        && body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("revoked"))
}

/// Disabling, deleting, demoting a user or changing their password ends the
/// tokens they hold on every service (here: the gateway, the inventory and
/// the SNMP service in one process), and deleting a tenant ends its users'.
async fn changes_to_a_user_end_their_tokens_at_once(mesh: TestMesh) {
    let admin = mesh.token("demo", "demo", "demo").await;
    let set = json!({"target": {"endpoint": {"host": "127.0.0.1", "port": 9, "version": "2c", "community": "c"}},
                     "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "s", "value": "x"}]});

    // A disabled operator can no longer run an SNMP SET.
    let (op_id, op) = demo_user(&mesh, &admin, "op", &["operator"]).await;
    let (status, _) = mesh.get("/v1/devices", &op).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = mesh
        .patch(
            &format!("/v1/users/{op_id}"),
            &admin,
            json!({"disabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = mesh.post("/v1/snmp/set", &op, set.clone()).await;
    assert!(revoked(status, &body), "{status} {body}");

    // A deleted viewer can no longer read devices.
    let (viewer_id, viewer) = demo_user(&mesh, &admin, "viewer", &["viewer"]).await;
    assert_eq!(
        mesh.delete(&format!("/v1/users/{viewer_id}"), &admin)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = mesh.get("/v1/devices", &viewer).await;
    assert!(revoked(status, &body), "{status} {body}");

    // An admin demoted to viewer cannot create an admin to keep access.
    let (boss_id, boss) = demo_user(&mesh, &admin, "boss", &["admin"]).await;
    let (status, _) = mesh
        .patch(
            &format!("/v1/users/{boss_id}"),
            &admin,
            json!({"roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = mesh
        .post(
            "/v1/users",
            &boss,
            json!({"username": "backdoor", "password": "pass-word-1", "roles": ["admin"]}),
        )
        .await;
    assert!(revoked(status, &body), "{status} {body}");
    // Signing in again gives what the user is now.
    let boss = mesh.token("demo", "boss", "pass-word-1").await;
    assert_eq!(
        mesh.get("/v1/me", &boss).await.1["roles"],
        json!(["viewer"])
    );

    // A new password ends the old sessions; the new password works.
    let (pw_id, old) = demo_user(&mesh, &admin, "pw", &["viewer"]).await;
    let (status, _) = mesh
        .patch(
            &format!("/v1/users/{pw_id}"),
            &admin,
            json!({"password": "new-pass-word"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = mesh.get("/v1/me", &old).await;
    assert!(revoked(status, &body), "{status} {body}");
    assert_eq!(
        mesh.login("demo", "pw", "new-pass-word").await.0,
        StatusCode::OK
    );
    // A change that takes nothing away keeps the sessions.
    let kept = mesh.token("demo", "pw", "new-pass-word").await;
    let (status, _) = mesh
        .patch(
            &format!("/v1/users/{pw_id}"),
            &admin,
            json!({"display_name": "P W"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mesh.get("/v1/me", &kept).await.0, StatusCode::OK);

    // A deleted tenant's tokens are refused (401, not a 500 on its rows).
    let (tenant_id, gone) = mesh.tenant_with_admin("gone").await;
    assert_eq!(mesh.get("/v1/devices", &gone).await.0, StatusCode::OK);
    let (_, key) = mesh
        .post(
            "/v1/api-keys",
            &gone,
            json!({"name": "k", "role": "viewer"}),
        )
        .await;
    let key = key["secret"].as_str().unwrap().to_owned();
    assert_eq!(mesh.get("/v1/devices", &key).await.0, StatusCode::OK);
    let platform = mesh.admin_token().await;
    assert_eq!(
        mesh.delete(&format!("/v1/tenants/{tenant_id}"), &platform)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = mesh
        .post("/v1/devices", &gone, json!({"name": "orphan"}))
        .await;
    assert!(revoked(status, &body), "{status} {body}");
}

/// Logout ends one session (not the user's others); a refresh token works
/// once and not after logout, and the token it gives carries current roles.
async fn logout_and_refresh_tokens(mesh: TestMesh) {
    let (_, first) = mesh.login("demo", "demo", "demo").await;
    let (_, second) = mesh.login("demo", "demo", "demo").await;
    let token = |b: &Value| b["access_token"].as_str().unwrap().to_owned();
    let refresh = |refresh_token: &str| {
        let body = json!({"refresh_token": refresh_token});
        mesh.call(reqwest::Method::POST, "/v1/auth/refresh", None, Some(body))
    };
    let refresh_of = |b: &Value| b["refresh_token"].as_str().unwrap().to_owned();

    let (status, renewed) = refresh(&refresh_of(&first)).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(mesh.get("/v1/me", &token(&renewed)).await.0, StatusCode::OK);
    // The spent refresh token does not work twice.
    let (status, body) = refresh(&refresh_of(&first)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    let (status, _) = mesh
        .post("/v1/auth/logout", &token(&renewed), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    for access in [token(&first), token(&renewed)] {
        let (status, body) = mesh.get("/v1/me", &access).await;
        assert!(revoked(status, &body), "{status} {body}");
    }
    let (status, _) = refresh(&refresh_of(&renewed)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a signed-out session cannot be renewed"
    );
    // The other session is untouched.
    assert_eq!(mesh.get("/v1/me", &token(&second)).await.0, StatusCode::OK);
    let (status, _) = refresh("rdm_rt_forged").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn login_issues_a_bearer_token_for_me(mesh: TestMesh) {
    let (status, body) = mesh.login("demo", "demo", "demo").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["refresh_expires_in"], 7 * 24 * 3600);
    assert!(
        body["refresh_token"]
            .as_str()
            .unwrap()
            .starts_with("rdm_rt_")
    );
    let token = body["access_token"].as_str().unwrap();
    let (status, me) = mesh.get("/v1/me", token).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["username"], "demo");
    assert_eq!(me["tenant_slug"], "demo");
    assert_eq!(me["roles"], json!(["admin"]));
    assert!(me["tenant_id"].as_str().is_some_and(|t| !t.is_empty()));

    // The tenant slug is case-insensitive; an unknown field is a 400 naming it.
    assert_eq!(mesh.login("DEMO", "demo", "demo").await.0, StatusCode::OK);
    let (status, body) = mesh
        .call(
            reqwest::Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"tenant": "demo", "userName": "demo", "password": "demo"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "userName is not a field (username is): {body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("userName"),
        "{body}"
    );

    // The published key verifies the token.
    let (status, jwks) = mesh
        .call(reqwest::Method::GET, "/.well-known/jwks.json", None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&["rdm"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .unwrap()
        .claims;
    assert_eq!(claims.tid, me["tenant_id"].as_str().unwrap());
    assert_eq!(claims.exp - claims.iat, 300);
}

async fn bad_credentials_are_one_401_whatever_was_wrong(mesh: TestMesh) {
    let wrong_password = mesh.login("demo", "demo", "nope").await;
    let unknown_user = mesh.login("demo", "mallory", "demo").await;
    let unknown_tenant = mesh.login("no-such-tenant", "demo", "demo").await;
    for (status, body) in [&wrong_password, &unknown_user, &unknown_tenant] {
        assert_eq!(*status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(
            body["detail"], wrong_password.1["detail"],
            "no tenant or user enumeration"
        );
        assert_eq!(body["code"], "UNAUTHENTICATED");
    }
    let (status, body) = mesh.login("demo", "", "demo").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["field"], "username");
}

fn forge(header: Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

async fn forged_and_expired_tokens_are_rejected(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let (_, other_tenant_token) = mesh.tenant_with_admin("other").await;
    let (_, me) = mesh.get("/v1/me", &token).await;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();

    // tid edited to another tenant, signature kept.
    let (_, other_me) = mesh.get("/v1/me", &other_tenant_token).await;
    claims["tid"] = other_me["tenant_id"].clone();
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        B64.encode(claims.to_string()),
        parts[2]
    );
    // alg: none, no signature.
    let none = forge(json!({"alg": "none", "typ": "JWT"}), &claims, "");
    // HS256 with the public key as the secret (the classic confusion attack).
    let hs256 = forge(json!({"alg": "HS256", "typ": "JWT"}), &claims, parts[2]);

    let now = jsonwebtoken::get_current_timestamp();
    let valid_claims = |exp: u64| Claims {
        sub: me["user_id"].as_str().unwrap().into(),
        tid: me["tenant_id"].as_str().unwrap().into(),
        roles: vec!["admin".into()],
        iat: now - 7200,
        exp,
        iss: "rdm".into(),
        aud: "rdm".into(),
        jti: "forged".into(),
        sid: String::new(),
    };
    // Signed with the real key but expired an hour ago.
    let expired = mesh.signing_key().sign(&valid_claims(now - 3600)).unwrap();
    // Valid claims signed by a key rdm never issued.
    let dir = tempfile::tempdir().unwrap();
    let stranger = SigningKey::load_or_create(&dir.path().join("k.pem"))
        .unwrap()
        .sign(&valid_claims(now + 600))
        .unwrap();

    for (what, bad) in [
        ("edited tid", &edited),
        ("alg none", &none),
        ("hs256", &hs256),
        ("expired", &expired),
        ("other key", &stranger),
        ("garbage", &"abc".to_owned()),
    ] {
        let (status, body) = mesh.get("/v1/me", bad).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["code"], "UNAUTHENTICATED", "{what}");
        assert_eq!(
            mesh.get("/v1/users", bad).await.0,
            StatusCode::UNAUTHORIZED,
            "{what}"
        );
    }
    assert!(
        mesh.get("/v1/me", &expired).await.1["detail"]
            .as_str()
            .unwrap()
            .contains("expired")
    );
    let (status, _) = mesh.call(reqwest::Method::GET, "/v1/me", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "no token at all");
    // The real token still works.
    assert_eq!(mesh.get("/v1/me", &token).await.0, StatusCode::OK);
}

async fn roles_limit_what_a_user_may_call(mesh: TestMesh) {
    let admin = mesh.token("demo", "demo", "demo").await;
    let (status, body) = mesh
        .post(
            "/v1/users",
            &admin,
            json!({"username": "vic", "password": "viewer-pass", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let viewer = mesh.token("demo", "vic", "viewer-pass").await;
    assert_eq!(mesh.get("/v1/me", &viewer).await.0, StatusCode::OK);
    let (status, body) = mesh.get("/v1/users", &viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");
    // A tenant admin is not a platform admin, and cannot make one.
    assert_eq!(
        mesh.get("/v1/tenants", &admin).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = mesh
        .post(
            "/v1/users",
            &admin,
            json!({"username": "eve", "password": "eve-password", "roles": ["platform-admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = mesh
        .post(
            "/v1/users",
            &admin,
            json!({"username": "eve", "password": "eve-password", "roles": ["root"]}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("roles")),
        "{body}"
    );
    assert_eq!(
        mesh.get("/v1/users?username_prefix=eve", &admin).await.1["users"],
        json!([]),
        "nothing stored"
    );
}

async fn disabled_and_deleted_users_cannot_sign_in(mesh: TestMesh) {
    let admin = mesh.token("demo", "demo", "demo").await;
    let (_, bob) = mesh
        .post(
            "/v1/users",
            &admin,
            json!({"username": "bob", "password": "bob-password", "roles": ["operator"]}),
        )
        .await;
    let bob_path = format!("/v1/users/{}", bob["id"].as_str().unwrap());
    mesh.token("demo", "bob", "bob-password").await;
    let (status, body) = mesh
        .patch(&bob_path, &admin, json!({"disabled": true}))
        .await;
    assert_eq!(
        (status, &body["disabled"]),
        (StatusCode::OK, &json!(true)),
        "{body}"
    );
    assert_eq!(
        mesh.login("demo", "bob", "bob-password").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(mesh.delete(&bob_path, &admin).await.0, StatusCode::OK);
    assert_eq!(mesh.get(&bob_path, &admin).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_lock_a_login_out_without_revealing_users() {
    let mesh = TestMesh::start_with(Store::Sqlite, |s| s.inventory.login_max_failures = 3).await;
    for _ in 0..3 {
        assert_eq!(
            mesh.login("demo", "demo", "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            mesh.login("demo", "ghost", "wrong").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let resp = mesh
        .http
        .post(mesh.url("/v1/auth/login"))
        .json(&json!({"tenant": "demo", "username": "demo", "password": "demo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "locked even with the right password"
    );
    let wait: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait > 0 && wait <= 300, "retry-after {wait}");
    let (status, body) = mesh.login("demo", "ghost", "wrong").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "an unknown user locks out the same way: {body}"
    );
    // Other users of the tenant are not affected.
    let admin = mesh.admin_token().await;
    assert!(!admin.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_all_count_towards_the_lockout() {
    for store in [Store::Sqlite, Store::Postgres] {
        let mesh = TestMesh::start_with(store, |s| s.inventory.login_max_failures = 5).await;
        let guesses = (0..5).map(|i| {
            let mesh = &mesh;
            async move { mesh.login("demo", "demo", &format!("guess-{i}")).await.0 }
        });
        let statuses = futures::future::join_all(guesses).await;
        assert!(
            statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
            "{statuses:?}"
        );
        let (status, body) = mesh.login("demo", "demo", "demo").await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{store:?}: five parallel failures lock the login: {body}"
        );
    }
}

/// Many parallel guesses at one user: each is counted before its password
/// is checked, so no more than the limit are checked at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_beyond_the_limit_are_refused_unchecked() {
    let mesh = TestMesh::start_with(Store::Sqlite, |s| s.inventory.login_max_failures = 5).await;
    let guesses = (0..60).map(|i| {
        let mesh = &mesh;
        async move { mesh.login("demo", "demo", &format!("guess-{i}")).await.0 }
    });
    let statuses = futures::future::join_all(guesses).await;
    let checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(checked + refused, 60, "{statuses:?}");
    assert!(
        checked <= 5,
        "{checked} passwords checked against a limit of 5"
    );
}

/// A client at another loopback address.
fn client_at(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn login_from(mesh: &TestMesh, ip: [u8; 4], password: &str) -> StatusCode {
    client_at(ip)
        .post(mesh.url("/v1/auth/login"))
        .json(&json!({"tenant": "demo", "username": "demo", "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Knowing a user name is not enough to lock its owner out: failures lock
/// the user from the address they came from; the user from everywhere only
/// for addresses that failed; a clean address still signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockouts_are_per_address_first() {
    let mesh = TestMesh::start_with(Store::Sqlite, |s| s.inventory.login_max_failures = 3).await;
    let attacker = [127, 0, 0, 2];
    for _ in 0..3 {
        assert_eq!(
            login_from(&mesh, attacker, "wrong").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&mesh, attacker, "demo").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        login_from(&mesh, [127, 0, 0, 3], "demo").await,
        StatusCode::OK
    );

    // Spread over addresses, the failures lock the user everywhere (4 x 3)...
    for last in 4..8 {
        for _ in 0..3 {
            login_from(&mesh, [127, 0, 0, last], "wrong").await;
        }
    }
    let fresh = [127, 0, 0, 20];
    assert_eq!(
        login_from(&mesh, fresh, "wrong").await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_from(&mesh, fresh, "demo").await,
        StatusCode::TOO_MANY_REQUESTS,
        "an address that failed for this user is refused"
    );
    // ...but not for an address with no failures: the owner gets in.
    assert_eq!(
        login_from(&mesh, [127, 0, 0, 21], "demo").await,
        StatusCode::OK
    );
}

/// 200 strangers signing in at once, each from its own address (so no
/// address lock-out stops them first) and for an unknown tenant (each costs
/// a hash): they wait for a few hashing turns instead of each holding
/// argon2's memory; those that cannot get a turn soon are told to come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_sign_ins_hash_a_few_at_a_time() {
    let mesh = TestMesh::start(Store::Sqlite).await;
    let before = rdm_tests::proc_status_kib("VmRSS:");
    let attempts = (0..200u32).map(|i| {
        let mesh = &mesh;
        async move {
            let resp = client_at([127, 0, 1, i as u8])
                .post(mesh.url("/v1/auth/login"))
                .json(&json!({"tenant": format!("nobody-{i}"), "username": "u", "password": "p"}))
                .send()
                .await
                .unwrap();
            let retry = resp.headers().contains_key("retry-after");
            (resp.status(), retry)
        }
    });
    let replies = futures::future::join_all(attempts).await;
    for (status, retry) in &replies {
        assert!(
            *status == StatusCode::UNAUTHORIZED
                || (*status == StatusCode::SERVICE_UNAVAILABLE && *retry),
            "{replies:?}"
        );
    }
    assert!(replies.iter().any(|(s, _)| *s == StatusCode::UNAUTHORIZED));
    // argon2 holds 19 MiB per hash: 200 at once would be 3.8 GiB.
    let peak = rdm_tests::proc_status_kib("VmHWM:");
    let grew_mib = peak.saturating_sub(before) / 1024;
    println!(
        "peak RSS grew {grew_mib} MiB over {} sign-ins",
        replies.len()
    );
    assert!(grew_mib < 400, "peak RSS grew {grew_mib} MiB");
}

/// An admin's API key: a role no higher than theirs, shown once, usable as
/// a bearer token on REST and gRPC (gateway and service ports), limited to
/// its networks, and refused once revoked.
async fn api_keys_work_where_tokens_do_and_stop_when_revoked(mesh: TestMesh) {
    let admin = mesh.token("demo", "demo", "demo").await;
    let (status, created) = mesh
        .post(
            "/v1/api-keys",
            &admin,
            json!({"name": "ci", "role": "operator"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let key = created["secret"].as_str().unwrap().to_owned();
    assert!(key.starts_with("rdm_"), "{key}");
    let id = created["api_key"]["id"].as_str().unwrap().to_owned();
    for (body, status) in [
        (
            json!({"name": "root", "role": "platform-admin"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "", "role": "viewer"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "old", "role": "viewer", "expire_time": "2020-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(
            mesh.post("/v1/api-keys", &admin, body.clone()).await.0,
            status,
            "{body}"
        );
    }
    let (_, viewer) = demo_user(&mesh, &admin, "keyless", &["viewer"]).await;
    let (status, _) = mesh
        .post(
            "/v1/api-keys",
            &viewer,
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // REST: what an operator may do, and no more.
    let (status, me) = mesh.get("/v1/me", &key).await;
    assert_eq!(
        (status, &me["roles"]),
        (StatusCode::OK, &json!(["operator"])),
        "{me}"
    );
    assert_eq!(mesh.get("/v1/devices", &key).await.0, StatusCode::OK);
    let (status, _) = mesh
        .post(
            "/v1/users",
            &key,
            json!({"username": "k", "password": "pass-word-1", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // gRPC, on the gateway port and on the services' own port.
    for addr in [mesh.gateway, mesh.inventory] {
        let channel = rdm_tests::wait_for(addr).await;
        let mut snmp = rdm_proto::snmp::snmp_service_client::SnmpServiceClient::new(channel);
        let mut req = tonic::Request::new(rdm_proto::snmp::GetRequest {
            target: Some(rdm_proto::snmp::Target {
                target: Some(rdm_proto::snmp::target::Target::DeviceId("missing".into())),
            }),
            oids: vec!["1.3.6.1.2.1.1.3.0".into()],
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        let status = snmp.get(req).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{addr}: {status:?}");
    }
    // Listed without its secret, with when it was last used.
    let (_, list) = mesh.get("/v1/api-keys", &admin).await;
    assert!(!list.to_string().contains(key.split('.').nth(1).unwrap()));
    assert_eq!(list["api_keys"][0]["id"], id.as_str());
    assert!(list["api_keys"][0]["last_used_time"].is_string(), "{list}");

    // Limited to a network: refused from elsewhere, accepted from there.
    let (_, narrow) = mesh
        .post(
            "/v1/api-keys",
            &admin,
            json!({"name": "narrow", "role": "viewer", "allowed_cidrs": ["127.0.0.5/32"]}),
        )
        .await;
    let narrow = narrow["secret"].as_str().unwrap();
    assert_eq!(mesh.get("/v1/me", narrow).await.0, StatusCode::UNAUTHORIZED);
    let from = |ip: [u8; 4]| {
        client_at(ip)
            .get(mesh.url("/v1/me"))
            .bearer_auth(narrow)
            .send()
    };
    assert_eq!(from([127, 0, 0, 5]).await.unwrap().status(), StatusCode::OK);

    // Revoked: refused at once.
    assert_eq!(
        mesh.delete(&format!("/v1/api-keys/{id}"), &admin).await.0,
        StatusCode::OK
    );
    let (status, body) = mesh.get("/v1/devices", &key).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (_, list) = mesh.get("/v1/api-keys", &admin).await;
    let revoked = list["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap();
    assert!(revoked["revoke_time"].is_string(), "{revoked}");
    // A forged key is one more 401.
    assert_eq!(
        mesh.get("/v1/me", &format!("rdm_{}.forged", "0".repeat(32)))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}
