//! rdm's own ACS: simulated CPEs (tests/sims, written from the CWMP facts)
//! calling `/cwmp/{tenant}`, and the same TR-069 API through the gateway,
//! on SQLite and PostgreSQL.
use rdm_sims::cwmp_cpe::{Cpe, CpeConfig};
use rdm_tests::{TestMesh, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

const BOOT_USER: &str = "cpe-boot";
const BOOT_PASSWORD: &str = "boot-secret-1";

fn acs_url(mesh: &TestMesh, slug: &str) -> String {
    format!("http://{}/cwmp/{slug}", mesh.cwmp)
}

/// The tenant's ACS settings: bootstrap credentials, and auto-registration
/// with a label when `register`.
async fn set_policy(mesh: &TestMesh, token: &str, register: bool) {
    let (status, got) = mesh
        .call(
            reqwest::Method::PUT,
            "/v1/settings",
            Some(token),
            Some(json!({"tr069": {
                "cwmp_username": BOOT_USER,
                "cwmp_password": BOOT_PASSWORD,
                "cwmp_auto_register_label": if register { "source=cwmp" } else { "" },
                "cwmp_periodic_inform_interval_s": 300
            }})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["tr069"]["cwmp_password_set"], true, "{got}");
    assert!(
        !got.to_string().contains(BOOT_PASSWORD),
        "the password is never shown: {got}"
    );
}

async fn cpe(mesh: &TestMesh, slug: &str, serial: &str, tune: impl FnOnce(&mut CpeConfig)) -> Cpe {
    let mut config = CpeConfig::new(&acs_url(mesh, slug), serial, BOOT_USER, BOOT_PASSWORD);
    tune(&mut config);
    Cpe::start(config).await.expect("the simulated CPE starts")
}

/// The tenant's devices labelled by auto-registration.
async fn registered(mesh: &TestMesh, token: &str) -> Vec<Value> {
    let (status, got) = mesh
        .get("/v1/devices?label_selector=source%3Dcwmp", token)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    got["devices"].as_array().cloned().unwrap_or_default()
}

async fn post(mesh: &TestMesh, path: &str, token: &str, body: Value) -> Value {
    let (status, got) = mesh.post(path, token, body).await;
    assert_eq!(status, StatusCode::OK, "{path}: {got}");
    got
}

/// The task's state until `done` says it has what the test waits for
/// (bounded: 10 s).
async fn task_until(
    mesh: &TestMesh,
    token: &str,
    task_id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..100 {
        let (status, got) = mesh.get(&format!("/v1/tr069/tasks/{task_id}"), token).await;
        assert_eq!(status, StatusCode::OK, "{got}");
        if done(&got["task"]) {
            return got["task"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("task {task_id} never got there");
}

async fn a_cpe_bootstraps_and_takes_every_rpc(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    set_policy(&mesh, &token, true).await;
    let sim = cpe(&mesh, "demo", "SN-0001", |_| {}).await;

    // Bootstrap: the CPE becomes a device, rdm sets its connection request
    // credentials and inform interval in the same session.
    sim.inform("").await.expect("the bootstrap session");
    let devices = registered(&mesh, &token).await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["name"], sim.acs_id());
    assert_eq!(devices[0]["serial"], "SN-0001");
    assert_eq!(devices[0]["model"], "SimGW");
    let id = devices[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        sim.param("Device.ManagementServer.PeriodicInformInterval")
            .as_deref(),
        Some("300")
    );
    assert_eq!(
        sim.param("Device.ManagementServer.ConnectionRequestUsername")
            .as_deref(),
        Some("rdm")
    );
    assert_eq!(sim.rpcs(), ["SetParameterValues"]);
    assert_eq!(
        sim.held(),
        0,
        "nothing of a user's waited for the bootstrap"
    );

    // The Inform's values answer without a session.
    let (status, cached) = mesh
        .get(
            &format!("/v1/tr069/devices/{id}/parameters?prefix=Device.DeviceInfo."),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cached}");
    assert_eq!(cached["acs_device_id"], sim.acs_id());
    assert!(
        cached["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Device.DeviceInfo.SoftwareVersion" && p["value"] == "1.0.0"),
        "{cached}"
    );

    // A read: connection request, then the RPC in the session it opened.
    let target = json!({"device_id": id});
    let got = post(
        &mesh,
        "/v1/tr069/get-parameter-values",
        &token,
        json!({"target": target, "names": ["Device.X_SIM_Stats.", "Device.WiFi.SSID.1.SSID"]}),
    )
    .await;
    assert_eq!(got["status"], "DONE", "{got}");
    // That session ran the user's task before any request of the CPE's.
    assert_eq!(sim.held(), 1, "the InformResponse said HoldRequests");
    let params = got["parameters"].as_array().unwrap();
    assert_eq!(params.len(), 11, "{got}");
    assert!(
        params.contains(
            &json!({"name": "Device.X_SIM_Stats.Counter7", "value": "7", "type": "xsd:unsignedInt"})
        ),
        "{got}"
    );

    // A write, applied on the CPE.
    let got = post(&mesh, "/v1/tr069/set-parameter-values", &token, json!({"target": target,
        "parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "rdm-wifi", "type": "xsd:string"}]})).await;
    assert_eq!(got["status"], "DONE", "{got}");
    assert_eq!(
        sim.param("Device.WiFi.SSID.1.SSID").as_deref(),
        Some("rdm-wifi")
    );

    // The CPE's faults, as the caller sees them.
    for (name, value, xsd, code) in [
        ("Device.DeviceInfo.UpTime", "5", "xsd:unsignedInt", "9008"),
        ("Device.NoSuch.Thing", "x", "xsd:string", "9005"),
        (
            "Device.WiFi.Radio.1.Channel",
            "eleven",
            "xsd:string",
            "9007",
        ),
    ] {
        let (status, got) = mesh
            .post(
                "/v1/tr069/set-parameter-values",
                &token,
                json!({"target": target,
                "parameters": [{"name": name, "value": value, "type": xsd}]}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{got}");
        assert_eq!(got["code"], "DEVICE_ERROR", "{got}");
        assert_eq!(got["cwmp_fault_code"], code, "{got}");
        assert_eq!(got["parameter"], name, "{got}");
    }
    let (status, faults) = mesh
        .get(&format!("/v1/tr069/faults?device_id={id}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{faults}");
    assert_eq!(faults["faults"].as_array().unwrap().len(), 3, "{faults}");

    // Names with writability, and objects added and deleted.
    let got = post(
        &mesh,
        "/v1/tr069/get-parameter-names",
        &token,
        json!({"target": target, "path": "Device.NAT.", "next_level": true}),
    )
    .await;
    assert_eq!(
        got["names"],
        json!([{"name": "Device.NAT.PortMapping.", "writable": true}]),
        "{got}"
    );
    let got = post(
        &mesh,
        "/v1/tr069/add-object",
        &token,
        json!({"target": target, "object_name": "Device.NAT.PortMapping."}),
    )
    .await;
    assert_eq!(
        (got["status"].as_str(), got["instance_number"].as_u64()),
        (Some("DONE"), Some(2)),
        "{got}"
    );
    assert_eq!(
        sim.param("Device.NAT.PortMapping.2.Enable").as_deref(),
        Some("false")
    );
    let got = post(
        &mesh,
        "/v1/tr069/delete-object",
        &token,
        json!({"target": target, "object_name": "Device.NAT.PortMapping.1."}),
    )
    .await;
    assert_eq!(got["status"], "DONE", "{got}");
    assert_eq!(sim.param("Device.NAT.PortMapping.1.Enable"), None);

    // Queued: delivered at the CPE's next periodic session.
    let got = post(&mesh, "/v1/tr069/set-parameter-values", &token, json!({"target": target, "mode": "queue",
        "parameters": [{"name": "Device.Time.NTPServer1", "value": "ntp.rdm.example", "type": "xsd:string"}]})).await;
    assert_eq!(got["status"], "QUEUED", "{got}");
    let task_id = got["task_id"].as_str().unwrap().to_owned();
    let (_, tasks) = mesh
        .get(&format!("/v1/tr069/tasks?device_id={id}"), &token)
        .await;
    assert!(
        tasks["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["task_id"] == task_id.as_str() && t["status"] == "QUEUED"),
        "{tasks}"
    );
    assert_eq!(
        sim.param("Device.Time.NTPServer1").as_deref(),
        Some("pool.ntp.org")
    );
    sim.inform("2 PERIODIC").await.expect("a periodic session");
    assert_eq!(
        sim.param("Device.Time.NTPServer1").as_deref(),
        Some("ntp.rdm.example")
    );
    let task = task_until(&mesh, &token, &task_id, |t| t["status"] == "DONE").await;
    assert_eq!(task["name"], "setParameterValues", "{task}");

    // Reboot: the CPE comes back with 1 BOOT and M Reboot.
    let sessions = sim.sessions();
    let got = post(&mesh, "/v1/tr069/reboot", &token, json!({"target": target})).await;
    assert_eq!(got["status"], "DONE", "{got}");
    for _ in 0..50 {
        if sim.sessions() >= sessions + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sim.sessions(),
        sessions + 2,
        "the reboot's session and the one after it"
    );
    let (_, device) = mesh
        .get(&format!("/v1/tr069/devices/{id}/parameters"), &token)
        .await;
    assert!(device["last_inform"].is_string(), "{device}");

    // Download: a file rdm stores, fetched once by the CPE, and its
    // TransferComplete recorded.
    let firmware: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let resp = mesh
        .http
        .put(mesh.url("/v1/tr069/files/fw-2.0.bin"))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(firmware.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let file: Value = resp.json().await.unwrap();
    assert_eq!(file["file"]["size"], "200000", "{file}");
    let got = post(
        &mesh,
        "/v1/tr069/download",
        &token,
        json!({"target": target,
        "file_type": "1 Firmware Upgrade Image", "file_name": "fw-2.0.bin"}),
    )
    .await;
    assert_eq!(got["status"], "DONE", "{got}");
    let task = task_until(&mesh, &token, got["task_id"].as_str().unwrap(), |t| {
        t["transfer"].is_object()
    })
    .await;
    assert_eq!(
        task["transfer"]["fault_code"].as_u64().unwrap_or(0),
        0,
        "{task}"
    );
    assert!(task["transfer"]["complete_time"].is_string(), "{task}");
    let downloaded = sim.downloaded();
    assert_eq!(downloaded.len(), 1, "{downloaded:?}");
    assert_eq!(downloaded[0].1, firmware.len());
    // The URL was good once.
    let again = reqwest::get(&downloaded[0].0).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let (_, files) = mesh.get("/v1/tr069/files", &token).await;
    assert_eq!(files["files"][0]["name"], "fw-2.0.bin", "{files}");
}

async fn cpes_are_authenticated_and_kept_apart(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    set_policy(&mesh, &token, false).await;

    // Auto-registration off: an unknown CPE with good credentials is refused.
    let stranger = cpe(&mesh, "demo", "SN-0100", |_| {}).await;
    let e = stranger.inform("").await.unwrap_err();
    assert!(e.contains("403"), "{e}");

    // A wrong password: 401, and nothing of the Inform stored.
    set_policy(&mesh, &token, true).await;
    let liar = cpe(&mesh, "demo", "SN-0101", |c| c.password = "wrong".into()).await;
    let e = liar.inform("").await.unwrap_err();
    assert!(e.contains("401"), "{e}");
    assert!(registered(&mesh, &token).await.is_empty());
    assert!(
        mesh.metrics_text()
            .await
            .contains("rdm_tr069_cwmp_auth_failures_total")
    );

    // Basic sent at once is taken too, on a TR-098 CPE.
    let a = cpe(&mesh, "demo", "SN-0200", |c| {
        c.preemptive_basic = true;
        c.tr098 = true;
    })
    .await;
    a.inform("").await.expect("a Basic CPE's session");
    assert_eq!(
        a.param("InternetGatewayDevice.ManagementServer.PeriodicInformInterval")
            .as_deref(),
        Some("300")
    );

    // Tenant B's CPE has the same id as A's: two devices, each its own.
    let (b_id, b_token) = mesh.tenant_with_admin("acme").await;
    mesh.allow_targets(&b_id, &["127.0.0.0/8"]).await;
    set_policy(&mesh, &b_token, true).await;
    let b = cpe(&mesh, "acme", "SN-0200", |c| {
        c.preemptive_basic = true;
        c.tr098 = true;
    })
    .await;
    b.set_param(
        "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID",
        "acme-wifi",
    );
    b.inform("").await.expect("tenant B's CPE");
    let a_devices = registered(&mesh, &token).await;
    let b_devices = registered(&mesh, &b_token).await;
    assert_eq!((a_devices.len(), b_devices.len()), (1, 1));
    assert_eq!(a_devices[0]["name"], b_devices[0]["name"]);
    let ssid = "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID";
    for (token, devices, want) in [
        (&token, &a_devices, "sim-wifi"),
        (&b_token, &b_devices, "acme-wifi"),
    ] {
        let got = post(
            &mesh,
            "/v1/tr069/get-parameter-values",
            token,
            json!({"target": {"device_id": devices[0]["id"]}, "names": [ssid]}),
        )
        .await;
        assert_eq!(got["parameters"][0]["value"], want, "{got}");
    }
    let (status, _) = mesh
        .get(
            &format!(
                "/v1/tr069/devices/{}/parameters",
                b_devices[0]["id"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A device made by hand with credentials of its own.
    let own = cpe(&mesh, "demo", "SN-0300", |c| {
        c.username = "cpe-300".into();
        c.password = "own-secret".into();
    })
    .await;
    mesh.device_with_endpoint(&token, json!({"name": "by-hand"}), "tr069",
        json!({"acs": "builtin", "device_id": own.acs_id(), "cpe_username": "cpe-300", "cpe_password": "own-secret"})).await;
    own.inform("")
        .await
        .expect("a CPE with its own credentials");
    assert_eq!(
        registered(&mesh, &token).await.len(),
        1,
        "it was not registered again"
    );

    // Malformed SOAP and an entity bomb: 400, and the ACS goes on.
    let http = reqwest::Client::new();
    let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]><lolz>&lol2;</lolz>"#;
    for body in ["<soap:Envelope", bomb, "<a/>"] {
        let resp = http
            .post(acs_url(&mesh, "demo"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    let resp = http
        .post(acs_url(&mesh, "demo"))
        .body(vec![b'x'; 9 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    a.inform("2 PERIODIC").await.expect("the ACS is still up");
}

on_both_stores!(
    a_cpe_bootstraps_and_takes_every_rpc,
    cpes_are_authenticated_and_kept_apart
);

/// Two replicas of the TR-069 service on one PostgreSQL database behind a
/// "load balancer": the CPE's POSTs alternate between the mesh's ACS and a
/// `rdm serve tr069` process, within one session, and the call through
/// the gateway still gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_session_alternately() {
    let mesh = TestMesh::start(rdm_tests::Store::Postgres).await;
    let pg = mesh.pg.as_ref().unwrap();
    let other = rdm_tests::spawn_serve(
        "tr069",
        &[
            ("RDM_DATABASE_URL", pg.app_url.clone()),
            ("RDM_INVENTORY_URL", format!("http://{}", mesh.inventory)),
            (
                "RDM_SERVICE_KEY_FILE",
                mesh.data_dir
                    .join("service-ed25519.pem")
                    .display()
                    .to_string(),
            ),
            ("RDM_TR069_CWMP_LISTEN", "127.0.0.1:0".into()),
        ],
    )
    .await;
    let replica = other
        .listener("tr069-cwmp")
        .expect("the second replica's ACS");
    let token = mesh.token("demo", "demo", "demo").await;
    set_policy(&mesh, &token, true).await;
    let sim = cpe(&mesh, "demo", "SN-0400", |c| {
        c.replicas = vec![format!("http://{replica}/cwmp/demo")];
    })
    .await;
    sim.inform("")
        .await
        .expect("a bootstrap session across both replicas");
    let id = registered(&mesh, &token).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = post(
        &mesh,
        "/v1/tr069/get-parameter-values",
        &token,
        json!({"target": {"device_id": id}, "names": ["Device.X_SIM_Stats.Counter3"]}),
    )
    .await;
    assert_eq!(got["status"], "DONE", "{got}");
    assert_eq!(got["parameters"][0]["value"], "3", "{got}");
    assert_eq!(sim.rpcs(), ["SetParameterValues", "GetParameterValues"]);
}
