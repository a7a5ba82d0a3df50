//! The rdm command as an operator runs it.
use rdm_tests::{PgDatabase, Process, SendJson, connect_pg, rdm_binary};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_generated_admin_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let first = Process::up(dir.path(), &[], &[]).await;
    let line = first
        .printed
        .iter()
        .find(|l| l.starts_with("created platform admin"))
        .unwrap_or_else(|| panic!("{:?}", first.printed));
    let password = line.split('"').nth(5).unwrap().to_owned();
    assert!(password.len() >= 20, "{line}");
    let login = reqwest::Client::new()
        .post(first.url("/v1/auth/login"))
        .json(&serde_json::json!({"tenant": "system", "username": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), reqwest::StatusCode::OK);
    // Password hashes and sealed secrets: readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o700);
    for file in [
        "inventory.db",
        "jwt-ed25519.pem",
        "secret.key",
        "service-ed25519.pem",
    ] {
        assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
    }
    drop(first);

    let again = Process::up(dir.path(), &[], &[]).await;
    assert!(
        again.printed.iter().all(|l| !l.contains("password \"")),
        "printed again: {:?}",
        again.printed
    );
    assert!(!again.printed.iter().any(|l| l.contains(&password)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_schema_and_the_app_role_and_can_run_again() {
    let pg = PgDatabase::create().await;
    for _ in 0..2 {
        let out = std::process::Command::new(rdm_binary())
            .arg("migrate")
            .env("RDM_DATABASE_ADMIN_URL", &pg.admin_url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut conn = connect_pg(&pg.admin_url).await;
    let forced: Vec<(String, bool, bool)> = sqlx::query_as(
        "select relname::text, relrowsecurity, relforcerowsecurity from pg_class \
         where relname in ('tenants', 'users') order by relname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        forced,
        vec![("tenants".into(), true, true), ("users".into(), true, true)]
    );
    let (bypass,): (bool,) =
        sqlx::query_as("select rolsuper or rolbypassrls from pg_roles where rolname = 'rdm_app'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!bypass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let secrets = ["log-community-4b1e", "log-authpass-93c0", "log-token-aa71"];
    let dir = tempfile::tempdir().unwrap();
    let rdm = Process::up(
        dir.path(),
        &["--demo"],
        &[
            ("RDM_ADMIN_PASSWORD", "log-admin-pw-5d2f".into()),
            ("RDM_LOG", "debug".into()),
            ("RDM_SHUTDOWN_DELAY_MS", "0".into()),
        ],
    )
    .await;
    let http = reqwest::Client::new();
    let base = rdm.url("");
    let login: serde_json::Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"tenant": "demo", "username": "demo", "password": "demo"}))
        .send_json()
        .await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    let device: serde_json::Value = http
        .post(format!("{base}/v1/devices"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "logged"}))
        .send_json()
        .await;
    let id = device["id"].as_str().unwrap();
    let endpoints = [
        (
            "snmp",
            serde_json::json!({"host": "127.0.0.1", "version": "2c", "community": secrets[0]}),
        ),
        (
            "hg630",
            serde_json::json!({"base_url": "http://127.0.0.1:9", "password": secrets[1]}),
        ),
        (
            "webpa",
            serde_json::json!({"base_url": "http://127.0.0.1:9", "auth": {"type": "bearer", "token": secrets[2]}}),
        ),
    ];
    for (protocol, body) in endpoints {
        let resp = http
            .put(format!("{base}/v1/devices/{id}/endpoints/{protocol}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
    }
    // A rejected one too: errors must not echo the secret either.
    let bad = serde_json::json!({"host": "127.0.0.1", "version": "9", "community": secrets[0]});
    let resp = http
        .put(format!("{base}/v1/devices/{id}/endpoints/snmp"))
        .bearer_auth(&token)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(!resp.text().await.unwrap().contains(secrets[0]));
    let file = format!(
        "{}\n",
        serde_json::json!({"name": "imported", "endpoints": {"snmp": {"host": "127.0.0.1", "version": "2c", "community": secrets[0]}}})
    );
    let resp = http
        .post(format!("{base}/v1/devices:import"))
        .bearer_auth(&token)
        .header("content-type", "application/x-ndjson")
        .body(file)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::OK);

    let (_, logs) = rdm.terminate(Duration::from_secs(15)).await;
    assert!(
        logs.contains("endpoint set") && logs.contains("devices imported"),
        "the run logged its work: {logs}"
    );
    for secret in secrets.iter().chain(&["log-admin-pw-5d2f", token.as_str()]) {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
    }
}
