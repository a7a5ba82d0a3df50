//! The rdm command as an operator runs it.
use rdm_tests::{PgDatabase, connect_pg, free_port, rdm_binary};
use std::{process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts `rdm up` on a data dir; returns the child and what it printed
/// before saying it is up.
async fn up(dir: &std::path::Path, port: u16) -> (tokio::process::Child, Vec<String>) {
    let mut child = tokio::process::Command::new(rdm_binary())
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--inventory-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .env_remove("RDM_ADMIN_PASSWORD")
        .env("RDM_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.starts_with("rdm is up");
            printed.push(line);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(ready.is_ok(), "rdm up never said it is up: {printed:?}");
    (child, printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_prints_a_generated_admin_password_once() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut child, printed) = up(dir.path(), port).await;
    let line = printed
        .iter()
        .find(|l| l.starts_with("created platform admin"))
        .unwrap_or_else(|| panic!("{printed:?}"));
    let password = line.split('"').nth(5).unwrap().to_owned();
    assert!(password.len() >= 20, "{line}");
    let login = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/auth/login"))
        .json(&serde_json::json!({"tenant": "system", "username": "admin", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), reqwest::StatusCode::OK);
    child.kill().await.unwrap();

    let (mut child, printed) = up(dir.path(), port).await;
    assert!(
        printed.iter().all(|l| !l.contains("password \"")),
        "printed again: {printed:?}"
    );
    assert!(!printed.iter().any(|l| l.contains(&password)));
    child.kill().await.unwrap();
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
    let port = free_port();
    let child = tokio::process::Command::new(rdm_binary())
        .args([
            "up",
            "--demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--inventory-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RDM_ADMIN_PASSWORD", "log-admin-pw-5d2f")
        .env("RDM_LOG", "debug")
        .env("RDM_SHUTDOWN_DELAY_MS", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let mut login = None;
    for _ in 0..200 {
        let sent = http
            .post(format!("{base}/v1/auth/login"))
            .json(&serde_json::json!({"tenant": "demo", "username": "demo", "password": "demo"}))
            .send()
            .await;
        if let Ok(resp) = sent {
            login = Some(resp.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = login.expect("rdm up answers")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let device: serde_json::Value = http
        .post(format!("{base}/v1/devices"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"name": "logged"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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

    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("exits")
        .unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        logs.contains("endpoint set") && logs.contains("devices imported"),
        "the run logged its work: {logs}"
    );
    for secret in secrets.iter().chain(&["log-admin-pw-5d2f", token.as_str()]) {
        assert!(!logs.contains(secret), "{secret} appeared in the logs");
    }
}
