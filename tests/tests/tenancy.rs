//! Tenants are walled off from each other on every endpoint, and on
//! PostgreSQL by row-level security as well as by the queries.
use rdm_tests::{Store, TestMesh, connect_pg, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_stores!(
    a_tenant_cannot_see_or_touch_another_tenants_users,
    platform_admin_manages_tenants,
    lists_paginate_and_filter,
);

async fn a_tenant_cannot_see_or_touch_another_tenants_users(mesh: TestMesh) {
    let (_, a) = mesh.tenant_with_admin("tenant-a").await;
    let (_, b) = mesh.tenant_with_admin("tenant-b").await;
    let (status, bob) = mesh.post("/v1/users", &b, json!({"username": "bob", "password": "bob-password", "roles": ["viewer"], "display_name": "Bob"})).await;
    assert_eq!(status, StatusCode::OK, "{bob}");
    let bob_id = bob["id"].as_str().unwrap();
    let bob_path = format!("/v1/users/{bob_id}");

    // Every route answers A as if B's user did not exist.
    assert_eq!(mesh.get(&bob_path, &a).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        mesh.patch(&bob_path, &a, json!({"display_name": "pwned"}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        mesh.patch(&bob_path, &a, json!({"password": "new-password"}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(mesh.delete(&bob_path, &a).await.0, StatusCode::NOT_FOUND);
    let (_, listed) = mesh.get("/v1/users?page_size=1000", &a).await;
    let names: Vec<&str> = listed["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice"], "A lists only its own users");
    let export = mesh
        .http
        .get(mesh.url("/v1/users:export"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !export.contains(bob_id) && export.contains("alice"),
        "{export}"
    );
    // Tenant administration is not theirs.
    let (_, b_me) = mesh.get("/v1/me", &b).await;
    let b_tenant = b_me["tenant_id"].as_str().unwrap();
    assert_eq!(
        mesh.get(&format!("/v1/tenants/{b_tenant}"), &a).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        mesh.delete(&format!("/v1/tenants/{b_tenant}"), &a).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        mesh.post(
            &format!("/v1/tenants/{b_tenant}/users"),
            &a,
            json!({"username": "x", "password": "xxxxxxxx", "roles": ["admin"]})
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // A body or query naming B's tenant does not move A into it.
    let (status, body) = mesh.post("/v1/users", &a, json!({"username": "sneaky", "password": "sneaky-pass", "roles": ["viewer"], "tenant_id": b_tenant})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        mesh.get(&format!("/v1/users?tenant_id={b_tenant}"), &a)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // B's user is untouched and still signs in.
    let (status, still) = mesh.get(&bob_path, &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(still["display_name"], "Bob");
    mesh.token("tenant-b", "bob", "bob-password").await;
    // The same user name may exist in both tenants.
    assert_eq!(
        mesh.post(
            "/v1/users",
            &a,
            json!({"username": "bob", "password": "other-bob-pw", "roles": ["viewer"]})
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        mesh.login("tenant-a", "bob", "bob-password").await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn platform_admin_manages_tenants(mesh: TestMesh) {
    let admin = mesh.admin_token().await;
    let (status, acme) = mesh
        .post(
            "/v1/tenants",
            &admin,
            json!({"slug": "acme", "display_name": "Acme"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{acme}");
    assert_eq!(
        (acme["slug"].as_str(), acme["display_name"].as_str()),
        (Some("acme"), Some("Acme"))
    );
    let id = acme["id"].as_str().unwrap();
    let (status, dup) = mesh
        .post("/v1/tenants", &admin, json!({"slug": "acme"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{dup}");
    let (status, bad) = mesh
        .post("/v1/tenants", &admin, json!({"slug": "Not A Slug"}))
        .await;
    assert_eq!(
        (status, bad["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("slug"))
    );

    let (status, renamed) = mesh
        .patch(
            &format!("/v1/tenants/{id}"),
            &admin,
            json!({"displayName": "Acme Corp"}),
        )
        .await;
    assert_eq!(
        (status, renamed["display_name"].as_str()),
        (StatusCode::OK, Some("Acme Corp")),
        "{renamed}"
    );
    let (status, got) = mesh.get(&format!("/v1/tenants/{id}"), &admin).await;
    assert_eq!(
        (status, got["display_name"].as_str()),
        (StatusCode::OK, Some("Acme Corp"))
    );

    let (status, user) = mesh
        .post(
            &format!("/v1/tenants/{id}/users"),
            &admin,
            json!({"username": "alice", "password": "alice-password", "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    assert_eq!(user["tenant_id"], id);
    let alice = mesh.token("acme", "alice", "alice-password").await;
    assert_eq!(mesh.get("/v1/me", &alice).await.1["tenant_slug"], "acme");
    // platform-admin exists only in the system tenant.
    let (status, body) = mesh
        .post(
            &format!("/v1/tenants/{id}/users"),
            &admin,
            json!({"username": "boss", "password": "boss-password", "roles": ["platform-admin"]}),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("roles"))
    );

    // Deleting a tenant deletes its users; the system tenant stays.
    assert_eq!(
        mesh.delete(&format!("/v1/tenants/{id}"), &admin).await.0,
        StatusCode::OK
    );
    assert_eq!(
        mesh.get(&format!("/v1/tenants/{id}"), &admin).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        mesh.login("acme", "alice", "alice-password").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        mesh.get("/v1/me", &alice).await.0,
        StatusCode::UNAUTHORIZED,
        "token of a deleted user"
    );
    let (_, me) = mesh.get("/v1/me", &admin).await;
    let (status, body) = mesh
        .delete(
            &format!("/v1/tenants/{}", me["tenant_id"].as_str().unwrap()),
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

async fn lists_paginate_and_filter(mesh: TestMesh) {
    let admin = mesh.admin_token().await;
    for i in 0..5 {
        assert_eq!(
            mesh.post("/v1/tenants", &admin, json!({"slug": format!("page-{i}")}))
                .await
                .0,
            StatusCode::OK
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let (status, page) = mesh
            .get(
                &format!("/v1/tenants?page_size=2&slug_prefix=page-&page_token={token}"),
                &admin,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let tenants = page["tenants"].as_array().unwrap();
        assert!(tenants.len() <= 2);
        seen.extend(
            tenants
                .iter()
                .map(|t| t["slug"].as_str().unwrap().to_owned()),
        );
        token = page["next_page_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["page-0", "page-1", "page-2", "page-3", "page-4"]);

    let demo = mesh.token("demo", "demo", "demo").await;
    for (name, role) in [
        ("op1", "operator"),
        ("op2", "operator"),
        ("view1", "viewer"),
    ] {
        mesh.post(
            "/v1/users",
            &demo,
            json!({"username": name, "password": "password-1", "roles": [role]}),
        )
        .await;
    }
    let names = |v: Value| -> Vec<String> {
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["username"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(mesh.get("/v1/users?role=operator", &demo).await.1),
        ["op1", "op2"]
    );
    assert_eq!(
        names(mesh.get("/v1/users?username_prefix=view", &demo).await.1),
        ["view1"]
    );
    // Not base64url: refused. (Any base64url token is a key to go on from.)
    let (status, body) = mesh.get("/v1/users?page_token=not%20ours!", &demo).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("page_token"))
    );
    let (status, body) = mesh.get("/v1/users?page_size=5000", &demo).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("page_size"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_row_level_security_hides_rows_without_a_tenant() {
    let mesh = TestMesh::start(Store::Postgres).await;
    let (a_id, _) = mesh.tenant_with_admin("rls-a").await;
    mesh.tenant_with_admin("rls-b").await;
    let pg = mesh.pg.as_ref().unwrap();

    // As the owner the rows are there...
    let mut owner = connect_pg(&pg.admin_url).await;
    let (users,): (i64,) = sqlx::query_as("select count(*) from users")
        .fetch_one(&mut owner)
        .await
        .unwrap();
    assert!(users >= 3, "system admin, demo, two alices: {users}");

    // ...as the app role with no tenant set, none are.
    let mut app = connect_pg(&pg.app_url).await;
    let (role, bypass): (String, bool) =
        sqlx::query_as("select current_user::text, rolbypassrls or rolsuper from pg_roles where rolname = current_user")
            .fetch_one(&mut app)
            .await
            .unwrap();
    assert_eq!((role.as_str(), bypass), ("rdm_app", false));
    for table in ["users", "tenants"] {
        let (n,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
                .fetch_one(&mut app)
                .await
                .unwrap();
        assert_eq!(n, 0, "{table} without app.tenant_id");
    }
    // With tenant A set, a query without any WHERE sees A's rows only.
    use sqlx::Connection;
    let mut tx = app.begin().await.unwrap();
    sqlx::query("select set_config('app.tenant_id', $1, true)")
        .bind(&a_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let tenants: Vec<(String,)> = sqlx::query_as("select tenant_id from users")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(tenants, vec![(a_id.clone(),)]);
    let updated = sqlx::query("update users set display_name = 'x'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        updated.rows_affected(),
        1,
        "an unscoped update touches only A"
    );
    tx.rollback().await.unwrap();

    // The services refuse to run as a role that bypasses RLS.
    let err = rdm_kit::db::Db::connect(&pg.admin_url, 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
}
