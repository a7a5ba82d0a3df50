//! The jobs service through the gateway, on SQLite and PostgreSQL: jobs of
//! real RPCs against the real snmpd, fan-out, events, results, cancel,
//! schedules, tenancy; and on PostgreSQL, workers in processes of their
//! own: killed with SIGKILL mid-job, and sharing one queue.
use rdm_tests::{Process, Store, TestMesh, on_both_stores, snmpd};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

const WALK: &str = "rdm.snmp.v1.SnmpService/Walk";
const GET: &str = "rdm.snmp.v1.SnmpService/Get";
const SET: &str = "rdm.snmp.v1.SnmpService/Set";

/// A tenant whose admin may target loopback, and a device on snmpd.
async fn tenant(mesh: &TestMesh, slug: &str) -> (String, String, String) {
    snmpd::ensure();
    let (tenant_id, token) = mesh.tenant_with_admin(slug).await;
    mesh.allow_targets(&tenant_id, &["127.0.0.0/8"]).await;
    let device = snmp_device(mesh, &token, "agent", snmpd::PORT, json!({})).await;
    (tenant_id, token, device)
}

async fn snmp_device(mesh: &TestMesh, token: &str, name: &str, port: u16, labels: Value) -> String {
    mesh.device_with_endpoint(
        token,
        json!({"name": name, "labels": labels}),
        "snmp",
        json!({"host": "127.0.0.1", "port": port, "version": "2c", "community": "public",
               "timeout_ms": 300, "retries": 0}),
    )
    .await
}

async fn submit(mesh: &TestMesh, token: &str, job: Value) -> Value {
    let (status, body) = mesh.post("/v1/jobs", token, job).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// The job once it has finished (within `within`).
async fn finished(mesh: &TestMesh, token: &str, id: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, job) = mesh.get(&format!("/v1/jobs/{id}"), token).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if !matches!(
            job["status"].as_str(),
            Some("JOB_STATUS_QUEUED" | "JOB_STATUS_RUNNING")
        ) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not finish within {within:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job once it is running.
async fn running(mesh: &TestMesh, token: &str, id: &str) -> Value {
    let mut job = Value::Null;
    for _ in 0..200 {
        job = mesh.get(&format!("/v1/jobs/{id}"), token).await.1;
        if job["status"] == "JOB_STATUS_RUNNING" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} never ran: {job}");
}

/// Server-Sent Events as (id, event, data), until the stream ends.
async fn sse(
    mesh: &TestMesh,
    token: &str,
    path: &str,
    last_event_id: Option<&str>,
) -> Vec<(String, String, Value)> {
    let mut req = mesh
        .http
        .get(mesh.url(path))
        .bearer_auth(token)
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = tokio::time::timeout(Duration::from_secs(30), resp.text())
        .await
        .expect("the event stream ends with the job")
        .unwrap();
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|frame| {
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .unwrap_or_default()
                    .to_owned()
            };
            let data = serde_json::from_str(&field("data")).unwrap();
            (field("id"), field("event"), data)
        })
        .collect()
}

async fn walk_job_with_events_and_results(mesh: TestMesh) {
    let (_, token, device) = tenant(&mesh, "acme").await;
    let job = submit(
        &mesh,
        &token,
        json!({"method": WALK, "request": {"target": {"device_id": device}, "oid": "1.3.6.1.2.1.1"}}),
    )
    .await;
    assert_eq!(job["status"], "JOB_STATUS_QUEUED");
    let id = job["id"].as_str().unwrap().to_owned();

    // From the first event: in order, ending with the job.
    let events = sse(&mesh, &token, &format!("/v1/jobs/{id}/events"), Some("0")).await;
    let ids: Vec<i64> = events
        .iter()
        .map(|(id, _, _)| id.parse().unwrap())
        .collect();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "{events:?}"
    );
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds[..2], ["queued", "started"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"finished"));
    let at = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(
        at("progress") < at("item") && at("item") < at("device_finished"),
        "{kinds:?}"
    );
    let items: Vec<i64> = events
        .iter()
        .map(|(_, _, e)| {
            e["progress"]["items"]
                .as_str()
                .unwrap_or("0")
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        items.windows(2).all(|w| w[0] <= w[1]),
        "progress goes forward: {items:?}"
    );
    assert_eq!(events.last().unwrap().2["status"], "JOB_STATUS_SUCCEEDED");

    // What the same walk answers directly, item for item.
    let direct = rdm_tests::NdJson::of(
        mesh.http
            .post(mesh.url("/v1/snmp/walk"))
            .bearer_auth(&token)
            .json(&json!({"target": {"device_id": device}, "oid": "1.3.6.1.2.1.1"}))
            .send()
            .await
            .unwrap(),
    );
    let direct = collect(direct).await;
    let job = finished(&mesh, &token, &id, Duration::from_secs(10)).await;
    assert_eq!(job["attempts"], 1);

    let varbinds = |items: &[Value]| -> Vec<Value> {
        items
            .iter()
            .flat_map(|i| i["varbinds"].as_array().cloned().unwrap_or_default())
            .map(|v| v["oid"].clone())
            .collect()
    };
    // Pages of the stored results, then the same as NDJSON.
    let mut paged = Vec::new();
    let mut token_param = String::new();
    loop {
        let (status, page) = mesh
            .get(
                &format!("/v1/jobs/{id}/results?page_size=1&page_token={token_param}"),
                &token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        paged.extend(
            page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["item"].clone()),
        );
        token_param = page["next_page_token"].as_str().unwrap().to_owned();
        if token_param.is_empty() {
            break;
        }
    }
    assert_eq!(varbinds(&paged), varbinds(&direct));
    assert_eq!(job["progress"]["items"], paged.len().to_string(), "{job}");
    let streamed = collect(
        rdm_tests::NdJson::get(
            &mesh.http,
            &mesh.url(&format!("/v1/jobs/{id}/results:stream")),
            &token,
        )
        .await,
    )
    .await;
    assert_eq!(
        varbinds(
            &streamed
                .iter()
                .map(|r| r["item"].clone())
                .collect::<Vec<_>>()
        ),
        varbinds(&direct)
    );

    // A watcher that comes late gets the state, and the stream ends.
    let late = sse(&mesh, &token, &format!("/v1/jobs/{id}/events"), None).await;
    assert_eq!(late.len(), 1, "{late:?}");
    assert_eq!(
        (late[0].1.as_str(), &late[0].2["status"]),
        ("state", &json!("JOB_STATUS_SUCCEEDED"))
    );
    // Resuming after an event gives the rest.
    let rest = sse(
        &mesh,
        &token,
        &format!("/v1/jobs/{id}/events"),
        Some(&(ids.len() - 2).to_string()),
    )
    .await;
    assert_eq!(rest.len(), 2);

    // Listed, filtered.
    let (_, list) = mesh
        .get(
            &format!("/v1/jobs?method={WALK}&status=JOB_STATUS_SUCCEEDED"),
            &token,
        )
        .await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    let (_, none) = mesh.get(&format!("/v1/jobs?method={GET}"), &token).await;
    assert!(none["jobs"].as_array().unwrap().is_empty(), "{none}");

    // Another tenant sees, cancels and streams nothing of it.
    let (_, other) = mesh.tenant_with_admin("other").await;
    for path in [
        format!("/v1/jobs/{id}"),
        format!("/v1/jobs/{id}/results"),
        format!("/v1/jobs/{id}/events"),
    ] {
        let (status, body) = mesh.get(&path, &other).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = mesh
        .post(&format!("/v1/jobs/{id}:cancel"), &other, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = mesh.get("/v1/jobs", &other).await;
    assert!(theirs["jobs"].as_array().unwrap().is_empty(), "{theirs}");
}

async fn collect(mut stream: rdm_tests::NdJson) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = stream.next_within_or_end(Duration::from_secs(10)).await {
        out.push(v);
    }
    out
}

async fn submissions_checked_and_idempotent(mesh: TestMesh) {
    let (_, token, device) = tenant(&mesh, "acme").await;
    for (job, field) in [
        (
            json!({"method": "rdm.snmp.v1.SnmpService/Nope", "request": {}}),
            "method",
        ),
        (
            json!({"method": "rdm.inventory.v1.DeviceService/ResolveTarget", "request": {}}),
            "method",
        ),
        (
            json!({"method": WALK, "request": {"target": {"device_id": device}, "oid": 5, "nope": 1}}),
            "request",
        ),
        (
            json!({"method": WALK, "request": {"oid": "1.3"}}),
            "request.target",
        ),
        (
            json!({"method": WALK, "request": {"oid": "1.3"}, "targets": {"label_selector": "a=b"}, "priority": -1}),
            "priority",
        ),
        (
            json!({"method": "rdm.inventory.v1.TenantService/ListTenants", "request": {}, "targets": {"device_ids": ["x"]}}),
            "targets",
        ),
    ] {
        let (status, body) = mesh.post("/v1/jobs", &token, job.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{job}: {body}");
        assert_eq!(body["field"], field, "{job}: {body}");
    }
    // A viewer cannot submit what needs an operator.
    let (status, _) = mesh
        .post(
            "/v1/users",
            &token,
            json!({"username": "vic", "password": "vic-password", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let viewer = mesh.token("acme", "vic", "vic-password").await;
    let set = json!({"method": SET, "request": {"target": {"device_id": device},
        "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "OCTET STRING", "value": "x"}]}});
    let (status, body) = mesh.post("/v1/jobs", &viewer, set).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // The same key: the same job.
    let job = json!({"method": GET, "idempotency_key": "k1",
        "request": {"target": {"device_id": device}, "oids": ["1.3.6.1.2.1.1.5.0"]}});
    let first = submit(&mesh, &token, job.clone()).await;
    let again = submit(&mesh, &token, job).await;
    assert_eq!(first["id"], again["id"]);
    let (_, list) = mesh.get("/v1/jobs", &token).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);

    // Any REST call as a job: Prefer: respond-async.
    let resp = mesh
        .http
        .post(mesh.url("/v1/snmp/get"))
        .bearer_auth(&token)
        .header("prefer", "respond-async")
        .json(&json!({"target": {"device_id": device}, "oids": ["1.3.6.1.2.1.1.5.0"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(resp.headers()["preference-applied"], "respond-async");
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = resp.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/jobs/{}", accepted["id"].as_str().unwrap())
    );
    assert_eq!(accepted["method"], GET);
    let id = accepted["id"].as_str().unwrap();
    let job = finished(&mesh, &token, id, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "JOB_STATUS_SUCCEEDED", "{job}");
    let (_, results) = mesh.get(&format!("{location}/results"), &token).await;
    let name = snmpd::tool(
        "snmpget",
        &[
            "-v2c",
            "-c",
            "public",
            "-Oqv",
            snmpd::ADDR,
            "1.3.6.1.2.1.1.5.0",
        ],
    );
    assert_eq!(
        results["results"][0]["item"]["varbinds"][0]["value"],
        name.trim().trim_matches('"'),
        "{results}"
    );
}

async fn fan_out_with_one_device_unreachable(mesh: TestMesh) {
    let (_, token, _) = tenant(&mesh, "acme").await;
    // A port nobody answers on.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let mut dead = String::new();
    for i in 0..20 {
        let port = if i == 7 { silent_port } else { snmpd::PORT };
        let id = snmp_device(
            &mesh,
            &token,
            &format!("ams-{i}"),
            port,
            json!({"site": "ams"}),
        )
        .await;
        if i == 7 {
            dead = id;
        }
    }
    snmp_device(
        &mesh,
        &token,
        "elsewhere",
        snmpd::PORT,
        json!({"site": "fra"}),
    )
    .await;
    let job = submit(
        &mesh,
        &token,
        json!({"method": GET, "request": {"oids": ["1.3.6.1.2.1.1.3.0"]},
               "targets": {"label_selector": "site=ams"}, "concurrency": 5, "max_attempts": 2}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let job = finished(&mesh, &token, id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "JOB_STATUS_PARTIALLY_SUCCEEDED", "{job}");
    assert_eq!(job["progress"]["devices_total"], 20);
    assert_eq!(job["progress"]["devices_done"], 20);
    assert_eq!(job["progress"]["devices_failed"], 1);
    assert_eq!(job["error"]["kind"], "DEVICE_TIMEOUT", "{job}");
    let (_, results) = mesh
        .get(&format!("/v1/jobs/{id}/results?page_size=100"), &token)
        .await;
    let results = results["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 20);
    let failed: Vec<&Value> = results
        .iter()
        .filter(|r| r["error"]["kind"].is_string())
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["device_id"], dead.as_str());
    assert!(
        results
            .iter()
            .filter(|r| r["item"].is_object())
            .all(|r| r["item"]["varbinds"][0]["type"] == "TimeTicks")
    );
    // The unreachable device was tried twice, with a retry event between.
    let (_, only) = mesh
        .get(&format!("/v1/jobs/{id}/results?device_id={dead}"), &token)
        .await;
    assert_eq!(only["results"].as_array().unwrap().len(), 1);
    let events = sse(&mesh, &token, &format!("/v1/jobs/{id}/events"), Some("0")).await;
    let retries: Vec<&Value> = events
        .iter()
        .filter(|(_, k, _)| k == "retry")
        .map(|(_, _, e)| e)
        .collect();
    assert_eq!(retries.len(), 1, "{retries:?}");
    assert_eq!(retries[0]["device_id"], dead.as_str());
    assert_eq!(retries[0]["data"]["attempt"], 1);
    drop(silent);
}

async fn cancel_running_and_queued(mesh: TestMesh) {
    let (_, token, _) = tenant(&mesh, "acme").await;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let slow = mesh
        .device_with_endpoint(
            &token,
            json!({"name": "slow"}),
            "snmp",
            json!({"host": "127.0.0.1", "port": port, "version": "2c", "community": "public", "timeout_ms": 30000, "retries": 0}),
        )
        .await;
    // A walk that would wait 30 s for its first answer.
    let job = submit(
        &mesh,
        &token,
        json!({"method": WALK, "request": {"target": {"device_id": slow}, "oid": "1.3.6"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    running(&mesh, &token, id).await;
    let (status, body) = mesh
        .post(&format!("/v1/jobs/{id}:cancel"), &token, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["cancel_requested"], true);
    // Stopped long before the device's 30 s.
    let job = finished(&mesh, &token, id, Duration::from_secs(15)).await;
    assert_eq!(job["status"], "JOB_STATUS_CANCELLED", "{job}");

    // A queued job never starts.
    let later = (chrono_like_now() + 3600).to_string();
    let job = submit(
        &mesh,
        &token,
        json!({"method": WALK, "request": {"target": {"device_id": slow}, "oid": "1.3.6"}, "run_after": rfc3339(later.parse().unwrap())}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let (status, body) = mesh
        .post(&format!("/v1/jobs/{id}:cancel"), &token, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "JOB_STATUS_CANCELLED");
    assert!(body["start_time"].is_null(), "{body}");
    let events = sse(&mesh, &token, &format!("/v1/jobs/{id}/events"), Some("0")).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["queued", "finished"]);
    // Cancelling a finished job again is harmless; a succeeded one cannot be.
    let (status, _) = mesh
        .post(&format!("/v1/jobs/{id}:cancel"), &token, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    drop(silent);
}

fn chrono_like_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Seconds since the epoch as RFC 3339 (UTC), as proto JSON takes times.
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn writes_run_with_the_role_the_user_has_now(mesh: TestMesh) {
    let (_, token, device) = tenant(&mesh, "acme").await;
    let (status, op) = mesh
        .post(
            "/v1/users",
            &token,
            json!({"username": "olga", "password": "olga-password", "roles": ["operator"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let operator = mesh.token("acme", "olga", "olga-password").await;
    let set = |at: i64| {
        json!({"method": SET, "run_after": rfc3339(at), "request": {"target": {"device_id": device},
        "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "OCTET STRING", "value": "jobs test"}]}})
    };
    let job = submit(&mesh, &operator, set(chrono_like_now() + 2)).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["max_attempts"], 1, "a write runs once unless asked");
    // Demoted before it runs.
    let (status, body) = mesh
        .patch(
            &format!("/v1/users/{}", op["id"].as_str().unwrap()),
            &token,
            json!({"roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = finished(&mesh, &token, id, Duration::from_secs(15)).await;
    assert_eq!(job["status"], "JOB_STATUS_FAILED", "{job}");
    assert_eq!(job["error"]["kind"], "PERMISSION_DENIED", "{job}");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{job}"
    );
}

async fn schedules_fire_ordinary_jobs(mesh: TestMesh) {
    let (_, token, device) = tenant(&mesh, "acme").await;
    let (status, body) = mesh
        .post(
            "/v1/schedules",
            &token,
            json!({"name": "uptime", "cron": "not cron", "job": {"method": GET}}),
        )
        .await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::BAD_REQUEST, &json!("cron")),
        "{body}"
    );
    let (status, body) = mesh
        .post("/v1/schedules", &token, json!({"name": "uptime", "cron": "* * * * *", "time_zone": "Mars/Base", "job": {"method": GET}}))
        .await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::BAD_REQUEST, &json!("time_zone")),
        "{body}"
    );
    let (status, schedule) = mesh
        .post(
            "/v1/schedules",
            &token,
            json!({"name": "uptime", "cron": "* * * * * *", "time_zone": "Europe/Amsterdam",
                   "job": {"method": GET, "request": {"target": {"device_id": device}, "oids": ["1.3.6.1.2.1.1.3.0"]}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{schedule}");
    let sid = schedule["id"].as_str().unwrap();
    let fired = fired_jobs(&mesh, &token, sid, 3).await;
    let (status, paused) = mesh
        .post(&format!("/v1/schedules/{sid}:pause"), &token, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    let keys = firing_times(&fired);
    assert!(
        keys.windows(2).all(|w| w[1] - w[0] == 1000),
        "one job a second: {keys:?}"
    );
    let id = fired[0]["id"].as_str().unwrap();
    let job = finished(&mesh, &token, id, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "JOB_STATUS_SUCCEEDED", "{job}");
    let (status, _) = mesh.delete(&format!("/v1/schedules/{sid}"), &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = mesh.get(&format!("/v1/schedules/{sid}"), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The firing times (ms) in the keys of a schedule's jobs, in order.
fn firing_times(jobs: &[Value]) -> Vec<i64> {
    let mut times: Vec<i64> = jobs
        .iter()
        .map(|j| {
            let key = j["idempotency_key"].as_str().unwrap();
            key.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    times.sort();
    times
}

/// The jobs a schedule fired, newest first, once there are at least `n`.
async fn fired_jobs(mesh: &TestMesh, token: &str, schedule: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let (_, list) = mesh
            .get(
                &format!("/v1/jobs?schedule_id={schedule}&page_size=1000"),
                token,
            )
            .await;
        let jobs = list["jobs"].as_array().unwrap().clone();
        if jobs.len() >= n {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("schedule {schedule} did not fire {n} times");
}

on_both_stores!(
    walk_job_with_events_and_results,
    submissions_checked_and_idempotent,
    fan_out_with_one_device_unreachable,
    cancel_running_and_queued,
    writes_run_with_the_role_the_user_has_now,
    schedules_fire_ordinary_jobs,
);

/// A UDP port in front of snmpd that drops every request until told to
/// pass them on (a device that answers only after a while).
struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start() -> Self {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(snmpd::ADDR).await.unwrap();
        let port = front.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(false));
        let pass = open.clone();
        let task = tokio::spawn(async move {
            let (mut a, mut b) = ([0u8; 65536], [0u8; 65536]);
            let mut client: Option<SocketAddr> = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut a) => {
                        if pass.load(Ordering::SeqCst) {
                            client = Some(from);
                            let _ = back.send(&a[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut b) => {
                        if let Some(to) = client {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                }
            }
        });
        Self { port, open, task }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mesh on PostgreSQL without workers of its own, and `rdm serve jobs`
/// processes reaching it.
async fn mesh_without_workers() -> TestMesh {
    TestMesh::start_with(Store::Postgres, |s| {
        let mut flags = rdm::EPHEMERAL_SERVICE_LISTENERS.to_vec();
        flags.extend(["--jobs-workers", "0", "--jobs-lease-s", "2"]);
        s.services = rdm::service_settings(&flags).unwrap();
    })
    .await
}

async fn serve_jobs(mesh: &TestMesh, extra: &[(&str, String)]) -> Process {
    let pg = mesh.pg.as_ref().unwrap();
    let mut env = vec![
        ("RDM_DATABASE_URL", pg.app_url.clone()),
        ("RDM_INVENTORY_URL", format!("http://{}", mesh.inventory)),
        ("RDM_JOBS_MESH_URL", format!("http://{}", mesh.inventory)),
        (
            "RDM_SERVICE_KEY_FILE",
            mesh.data_dir
                .join("service-ed25519.pem")
                .display()
                .to_string(),
        ),
        ("RDM_JOBS_LEASE_S", "2".into()),
    ];
    env.extend_from_slice(extra);
    rdm_tests::spawn_serve("jobs", &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_reads_run_again_and_its_writes_are_interrupted() {
    let mesh = mesh_without_workers().await;
    let (_, token, _) = tenant(&mesh, "acme").await;
    let relay = Relay::start().await;
    let device = mesh
        .device_with_endpoint(
            &token,
            json!({"name": "late"}),
            "snmp",
            json!({"host": "127.0.0.1", "port": relay.port, "version": "2c", "community": "private", "timeout_ms": 30000, "retries": 0}),
        )
        .await;
    let mut worker = serve_jobs(&mesh, &[]).await;
    let read = submit(&mesh, &token, json!({"method": GET, "request": {"target": {"device_id": device}, "oids": ["1.3.6.1.2.1.1.5.0"]}})).await;
    let write = submit(&mesh, &token, json!({"method": SET, "request": {"target": {"device_id": device},
        "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "OCTET STRING", "value": "rdm jobs test"}]}})).await;
    let (read, write) = (read["id"].as_str().unwrap(), write["id"].as_str().unwrap());
    running(&mesh, &token, read).await;
    running(&mesh, &token, write).await;
    worker.child.start_kill().unwrap();
    worker.child.wait().await.unwrap();
    relay.open.store(true, Ordering::SeqCst);
    let _second = serve_jobs(&mesh, &[]).await;
    let job = finished(&mesh, &token, read, Duration::from_secs(40)).await;
    assert_eq!(job["status"], "JOB_STATUS_SUCCEEDED", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    let job = finished(&mesh, &token, write, Duration::from_secs(40)).await;
    assert_eq!(job["status"], "JOB_STATUS_INTERRUPTED", "{job}");
    assert_eq!(job["error"]["kind"], "WORKER_LOST", "{job}");
    // The SET was never sent again: sysLocation is not the job's value.
    let location = snmpd::tool(
        "snmpget",
        &[
            "-v2c",
            "-c",
            "public",
            "-Oqv",
            snmpd::ADDR,
            "1.3.6.1.2.1.1.6.0",
        ],
    );
    assert_ne!(location.trim().trim_matches('"'), "rdm jobs test");
    let events = sse(&mesh, &token, &format!("/v1/jobs/{read}/events"), Some("0")).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "started").count(),
        2,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"retry"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_run_each_of_1000_jobs_once_and_fire_each_second_once() {
    let mesh = TestMesh::start(Store::Postgres).await;
    let (_, token) = mesh.tenant_with_admin("acme").await;
    let _other = serve_jobs(&mesh, &[]).await;
    // A job that can run only once: the second CreateDevice of a name is a 409.
    let mut ids = Vec::new();
    for i in 0..1000 {
        let job = submit(
            &mesh,
            &token,
            json!({"method": "rdm.inventory.v1.DeviceService/CreateDevice",
            "request": {"name": format!("d{i:04}")}}),
        )
        .await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let job = finished(&mesh, &token, id, Duration::from_secs(120)).await;
        assert_eq!(job["status"], "JOB_STATUS_SUCCEEDED", "{job}");
        assert_eq!(job["attempts"], 1, "{job}");
    }
    let (_, devices) = mesh.get("/v1/devices?page_size=1000", &token).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1000);

    // A schedule firing every second, both replicas looking: once a second.
    let (status, schedule) = mesh
        .post("/v1/schedules", &token, json!({"name": "tick", "cron": "* * * * * *",
            "job": {"method": "rdm.inventory.v1.DeviceService/ListDevices", "request": {"page_size": 1}}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{schedule}");
    let sid = schedule["id"].as_str().unwrap();
    let fired = fired_jobs(&mesh, &token, sid, 5).await;
    let keys = firing_times(&fired);
    assert!(
        keys.windows(2).all(|w| w[1] - w[0] == 1000),
        "one firing a second, none twice: {keys:?}"
    );
}
