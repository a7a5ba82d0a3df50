//! The TR-069 service through the gateway (REST), against the ACS simulator
//! (tests/sims, GenieACS NBI shape), on SQLite and PostgreSQL.
use rdm_sims::acs::{self, AcsSim, CpeSpec, Model};
use rdm_tests::{TestMesh, on_both_stores};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A TR-181 CPE that is online, a TR-098 one, one that is offline, and a
/// tagged one for the tenant-query tests.
fn cpes() -> [CpeSpec; 4] {
    [
        CpeSpec::new("BM632w", "CPE0001", Model::Tr181, true).tagged("ams"),
        CpeSpec::new("IGD-HG8245", "CPE0002", Model::Tr098, true),
        CpeSpec::new("BM632w", "CPE0003", Model::Tr181, false),
        CpeSpec::new("BM632w", "CPE0004", Model::Tr181, true).tagged("tenant-b"),
    ]
}

async fn sim() -> AcsSim {
    acs::start(([127, 0, 0, 1], 0).into(), &cpes())
        .await
        .expect("the simulator starts")
}

/// An endpoint for the ACS's device `acs_id`.
fn endpoint(sim: &AcsSim, acs_id: &str) -> Value {
    let (user, password) = acs::credentials();
    json!({"base_url": sim.base_url(), "device_id": acs_id, "timeout_ms": 3000, "retries": 1,
           "auth": {"type": "basic", "username": user, "password": password}})
}

/// A device of the token's tenant with `endpoint` as its tr069 endpoint.
async fn device(mesh: &TestMesh, token: &str, name: &str, endpoint: Value) -> String {
    mesh.device_with_endpoint(token, json!({"name": name}), "tr069", endpoint)
        .await
}

async fn every_rpc_against_the_simulator(mesh: TestMesh) {
    let sim = sim().await;
    let [cpe1, cpe2, ..] = cpes();
    let token = mesh.token("demo", "demo", "demo").await;
    let id = device(&mesh, &token, "cpe-1", endpoint(&sim, &cpe1.id())).await;
    let target = json!({"device_id": id});

    // Values read in a session, a partial path flattened in.
    let (status, got) = mesh
        .post(
            "/v1/tr069/get-parameter-values",
            &token,
            json!({"target": target, "names": ["Device.DeviceInfo.", "Device.WiFi.SSID.1.Enable"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["status"], "DONE", "{got}");
    assert!(got["task_id"].as_str().unwrap().starts_with(&id), "{got}");
    let params = got["parameters"].as_array().unwrap();
    assert!(params.contains(&json!({"name": "Device.DeviceInfo.SerialNumber", "value": "CPE0001", "type": "xsd:string"})), "{got}");
    assert!(
        params.contains(
            &json!({"name": "Device.WiFi.SSID.1.Enable", "value": "true", "type": "xsd:boolean"})
        ),
        "{got}"
    );
    assert_eq!(params.len(), 7, "six under DeviceInfo and one more: {got}");

    // A set, applied on the CPE.
    let (status, set) = mesh
        .post(
            "/v1/tr069/set-parameter-values",
            &token,
            json!({"target": target, "parameter_key": "rdm-1", "parameters": [
                {"name": "Device.WiFi.SSID.1.SSID", "value": "rdm-wifi", "type": "xsd:string"},
                {"name": "Device.ManagementServer.PeriodicInformInterval", "value": "600", "type": "unsignedInt"}]}),
        )
        .await;
    assert_eq!(
        (status, set["status"].as_str()),
        (StatusCode::OK, Some("DONE")),
        "{set}"
    );
    assert_eq!(
        sim.value(&cpe1.id(), "Device.WiFi.SSID.1.SSID").as_deref(),
        Some("rdm-wifi")
    );
    assert_eq!(
        sim.value(&cpe1.id(), "Device.ManagementServer.PeriodicInformInterval")
            .as_deref(),
        Some("600")
    );

    // Names: the next level only, objects ending in `.`.
    let (status, got) = mesh
        .post(
            "/v1/tr069/get-parameter-names",
            &token,
            json!({"target": target, "path": "Device.WiFi.SSID.1.", "next_level": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        got["names"],
        json!([{"name": "Device.WiFi.SSID.1.Enable", "writable": true},
               {"name": "Device.WiFi.SSID.1.SSID", "writable": true}])
    );

    // A new instance, named, then deleted.
    let (status, added) = mesh
        .post(
            "/v1/tr069/add-object",
            &token,
            json!({"target": target, "object_name": "Device.NAT.PortMapping."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{added}");
    assert_eq!(added["instance_number"], 2, "{added}");
    assert!(
        sim.value(&cpe1.id(), "Device.NAT.PortMapping.2.ExternalPort")
            .is_some()
    );
    let (status, body) = mesh
        .post(
            "/v1/tr069/delete-object",
            &token,
            json!({"target": target, "object_name": "Device.NAT.PortMapping.2."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        sim.value(&cpe1.id(), "Device.NAT.PortMapping.2.ExternalPort")
            .is_none()
    );

    for (path, body) in [
        (
            "refresh-object",
            json!({"target": target, "object_name": "Device.WiFi."}),
        ),
        ("reboot", json!({"target": target})),
        ("factory-reset", json!({"target": target})),
        (
            "download",
            json!({"target": target, "file_type": "1 Firmware Upgrade Image", "file_name": "firmware-2.0.bin"}),
        ),
    ] {
        let (status, got) = mesh.post(&format!("/v1/tr069/{path}"), &token, body).await;
        assert_eq!(
            (status, got["status"].as_str()),
            (StatusCode::OK, Some("DONE")),
            "{path}: {got}"
        );
    }
    assert_eq!(
        sim.ran(&cpe1.id())[5..],
        ["refreshObject", "reboot", "factoryReset", "download"]
    );
    // A URL through an ACS that serves its files itself, or a file it lacks.
    for (body, field) in [
        (json!({"url": "http://files.example.net/fw.bin"}), "url"),
        (json!({"file_name": "nope.bin"}), "file_name"),
    ] {
        let mut body = body;
        body["target"] = target.clone();
        body["file_type"] = json!("1 Firmware Upgrade Image");
        let (status, got) = mesh.post("/v1/tr069/download", &token, body).await;
        assert_eq!(status, StatusCode::CONFLICT, "{got}");
        assert_eq!(
            (got["code"].as_str(), got["field"].as_str()),
            (Some("FAILED_PRECONDITION"), Some(field)),
            "{got}"
        );
    }

    // The ACS's cached tree, under a prefix, without a session.
    let (status, cached) = mesh
        .get(
            &format!("/v1/tr069/devices/{id}/parameters?prefix=Device.WiFi.SSID.1."),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cached}");
    assert_eq!(cached["acs_device_id"], cpe1.id());
    assert_eq!(cached["tags"], json!(["ams"]));
    let ssid = &cached["parameters"][1];
    assert_eq!(
        (&ssid["name"], &ssid["value"], &ssid["writable"]),
        (
            &json!("Device.WiFi.SSID.1.SSID"),
            &json!("rdm-wifi"),
            &json!(true)
        ),
        "{cached}"
    );
    assert!(
        ssid["timestamp"].as_str().unwrap().starts_with("20"),
        "{cached}"
    );

    // A TR-098 CPE, as an inline target.
    let (status, got) = mesh
        .post(
            "/v1/tr069/get-parameter-values",
            &token,
            json!({"target": {"endpoint": endpoint(&sim, &cpe2.id())}, "names": ["InternetGatewayDevice.LANDevice.1.WLANConfiguration.1.SSID"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["parameters"][0]["value"], "home", "{got}");
    assert_eq!(
        got["task_id"], "",
        "an inline target's task cannot be followed"
    );

    // The ACS's devices for import: a query, pages.
    let (status, page) = mesh
        .post(
            "/v1/tr069/acs-devices:search",
            &token,
            json!({"target": {"endpoint": endpoint(&sim, "")}, "page_size": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        (
            page["total_size"].as_str(),
            page["devices"].as_array().unwrap().len()
        ),
        (Some("4"), 3),
        "{page}"
    );
    assert_eq!(page["devices"][0]["serial_number"], "CPE0001", "{page}");
    let (status, rest) = mesh
        .get(
            &format!(
                "/v1/tr069/acs-devices?target.device_id={id}&page_token={}",
                page["next_page_token"].as_str().unwrap()
            ),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rest}");
    assert_eq!(rest["devices"][0]["oui"], "202BC1", "{rest}");
    assert_eq!(rest["next_page_token"], "", "the last page: {rest}");
    let query = r#"{"_deviceId._ProductClass":"IGD-HG8245"}"#;
    let (status, found) = mesh
        .post(
            "/v1/tr069/acs-devices:search",
            &token,
            json!({"target": {"device_id": id}, "query": query}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["devices"][0]["acs_device_id"], cpe2.id(), "{found}");
    let (status, bad) = mesh
        .post(
            "/v1/tr069/acs-devices:search",
            &token,
            json!({"target": {"device_id": id}, "query": "{\"$where\": 1}"}),
        )
        .await;
    assert_eq!(
        (status, bad["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("query")),
        "{bad}"
    );
}

async fn wait_queue_and_an_offline_cpe(mesh: TestMesh) {
    let sim = sim().await;
    let [cpe1, _, offline, _] = cpes();
    let token = mesh.token("demo", "demo", "demo").await;
    let id = device(&mesh, &token, "cpe-1", endpoint(&sim, &cpe1.id())).await;
    let off = device(&mesh, &token, "cpe-3", endpoint(&sim, &offline.id())).await;
    let read = |device: &str, mode: &str| json!({"target": {"device_id": device}, "names": ["Device.DeviceInfo.SoftwareVersion"], "mode": mode, "timeout_ms": 500});

    // queue: back at once, the task listed with who asked for it.
    let (status, queued) = mesh
        .post("/v1/tr069/get-parameter-values", &token, read(&id, "queue"))
        .await;
    assert_eq!(
        (status, queued["status"].as_str()),
        (StatusCode::OK, Some("QUEUED")),
        "{queued}"
    );
    assert_eq!(queued["parameters"], json!([]), "{queued}");
    let task_id = queued["task_id"].as_str().unwrap().to_owned();
    let (status, tasks) = mesh
        .get(&format!("/v1/tr069/tasks?device_id={id}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{tasks}");
    let task = &tasks["tasks"][0];
    assert_eq!(task["task_id"], task_id, "{tasks}");
    assert_eq!(task["status"], "QUEUED");
    assert_eq!(task["name"], "getParameterValues");
    assert_eq!(task["names"], json!(["Device.DeviceInfo.SoftwareVersion"]));
    assert!(!task["user_id"].as_str().unwrap().is_empty(), "{task}");
    assert!(!task["command_id"].as_str().unwrap().is_empty(), "{task}");
    // Withdrawn: gone from the list, and not pending any more.
    let (status, body) = mesh
        .delete(&format!("/v1/tr069/tasks/{task_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, tasks) = mesh
        .get(&format!("/v1/tr069/tasks?device_id={id}"), &token)
        .await;
    assert_eq!(tasks["tasks"], json!([]), "{tasks}");

    // wait, but the CPE is offline: QUEUED, never an error hiding the task.
    let (status, waited) = mesh
        .post("/v1/tr069/get-parameter-values", &token, read(&off, "wait"))
        .await;
    assert_eq!(
        (status, waited["status"].as_str()),
        (StatusCode::OK, Some("QUEUED")),
        "{waited}"
    );
    let task_id = waited["task_id"].as_str().unwrap();
    let (status, got) = mesh
        .get(&format!("/v1/tr069/tasks/{task_id}"), &token)
        .await;
    assert_eq!(
        (status, got["task"]["status"].as_str()),
        (StatusCode::OK, Some("QUEUED")),
        "{got}"
    );
    // It comes online: its session runs the task, GetTask says DONE.
    sim.set_online(&offline.id(), true);
    assert_eq!(sim.ran(&offline.id()), ["getParameterValues"]);
    let (status, got) = mesh
        .get(&format!("/v1/tr069/tasks/{task_id}"), &token)
        .await;
    assert_eq!(
        (status, &got["task"]["status"]),
        (StatusCode::OK, &json!("DONE")),
        "{got}"
    );
    assert_eq!(got["task"]["device_id"], off);
    // A done task cannot be withdrawn; a made-up id is not found.
    let (status, body) = mesh
        .delete(&format!("/v1/tr069/tasks/{task_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // The id's last character changed (to one it is not): a token that was never issued.
    let last = if task_id.ends_with('x') { 'y' } else { 'x' };
    let forged = format!("{}{last}", &task_id[..task_id.len() - 1]);
    let (status, body) = mesh.get(&format!("/v1/tr069/tasks/{forged}"), &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn faults_keep_their_meaning(mesh: TestMesh) {
    let sim = sim().await;
    let [cpe1, ..] = cpes();
    let token = mesh.token("demo", "demo", "demo").await;
    let id = device(&mesh, &token, "cpe-1", endpoint(&sim, &cpe1.id())).await;
    let target = json!({"device_id": id});
    let set = |name: &str, value: &str, t: &str| json!({"target": target, "parameters": [{"name": name, "value": value, "type": t}]});
    let cases = [
        (
            "/v1/tr069/get-parameter-values",
            json!({"target": target, "names": ["Device.Nope."]}),
            9005,
            "",
        ),
        (
            "/v1/tr069/set-parameter-values",
            set("Device.Nope", "1", "xsd:string"),
            9005,
            "Device.Nope",
        ),
        // A value the type allows but the CPE's parameter does not take.
        (
            "/v1/tr069/set-parameter-values",
            set("Device.WiFi.SSID.1.Enable", "maybe", "xsd:string"),
            9007,
            "Device.WiFi.SSID.1.Enable",
        ),
        (
            "/v1/tr069/set-parameter-values",
            set("Device.DeviceInfo.SerialNumber", "x", "xsd:string"),
            9008,
            "Device.DeviceInfo.SerialNumber",
        ),
    ];
    let mut task_ids = Vec::new();
    for (path, body, code, parameter) in cases {
        let (status, got) = mesh.post(path, &token, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{got}");
        assert_eq!(got["code"], "DEVICE_ERROR", "{got}");
        assert_eq!(got["cwmp_fault_code"], code.to_string(), "{got}");
        assert_eq!(
            got["parameter"].as_str().unwrap_or_default(),
            parameter,
            "{got}"
        );
        task_ids.push(got["task_id"].as_str().unwrap().to_owned());
    }
    // Each faulted task stays in the ACS with its fault.
    let (status, faults) = mesh
        .get(&format!("/v1/tr069/faults?device_id={id}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{faults}");
    let faults = faults["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 4, "{faults:?}");
    assert_eq!(faults[3]["cwmp_fault_code"], 9008);
    assert_eq!(faults[3]["code"], "cwmp.9008");
    assert_eq!(faults[3]["task_id"], task_ids[3]);
    // With validate: true the same sets are refused before the ACS sees
    // them, by the TR-181 data model.
    for (name, value, field, code) in [
        ("Device.Nope", "1", "parameters[0].name", "unknown_path"),
        (
            "Device.WiFi.SSID.1.Enable",
            "maybe",
            "parameters[0].value",
            "wrong_type",
        ),
        (
            "Device.DeviceInfo.SerialNumber",
            "x",
            "parameters[0].name",
            "read_only",
        ),
    ] {
        let mut body = set(name, value, "xsd:string");
        body["validate"] = json!(true);
        let (status, got) = mesh
            .post("/v1/tr069/set-parameter-values", &token, body)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{got}");
        assert_eq!(
            (&got["field"], &got["validation"]),
            (&json!(field), &json!(code)),
            "{got}"
        );
    }
    let (_, after) = mesh
        .get(&format!("/v1/tr069/faults?device_id={id}"), &token)
        .await;
    assert_eq!(
        after["faults"].as_array().unwrap().len(),
        4,
        "no new task reached the ACS"
    );
    let (_, got) = mesh
        .get(&format!("/v1/tr069/tasks/{}", task_ids[0]), &token)
        .await;
    assert_eq!(got["task"]["status"], "FAULTED", "{got}");
    assert_eq!(got["task"]["fault"]["cwmp_fault_code"], 9005, "{got}");
    // Retried: the fault is cleared, the task queued again.
    let (status, got) = mesh
        .post(
            &format!("/v1/tr069/tasks/{}:retry", task_ids[0]),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let (_, got) = mesh
        .get(&format!("/v1/tr069/tasks/{}", task_ids[0]), &token)
        .await;
    assert_eq!(got["task"]["status"], "QUEUED", "{got}");
    // A fault cleared by id.
    let fault_id = faults[3]["fault_id"].as_str().unwrap();
    let (status, body) = mesh
        .delete(&format!("/v1/tr069/faults/{fault_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, left) = mesh
        .get(&format!("/v1/tr069/faults?device_id={id}"), &token)
        .await;
    assert_eq!(left["faults"].as_array().unwrap().len(), 2, "{left}");

    // A device the ACS does not know: 404 naming the ACS's id.
    let unknown = device(&mesh, &token, "ghost", endpoint(&sim, "202BC1-Nope-0")).await;
    let (status, got) = mesh
        .post(
            "/v1/tr069/reboot",
            &token,
            json!({"target": {"device_id": unknown}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{got}");
    assert_eq!(got["acs_device_id"], "202BC1-Nope-0", "{got}");
}

async fn tenants_stay_apart_on_a_shared_acs(mesh: TestMesh) {
    let sim = sim().await;
    let [cpe1, _, _, cpe4] = cpes();
    let token = mesh.token("demo", "demo", "demo").await;
    let a_device = device(&mesh, &token, "cpe-1", endpoint(&sim, &cpe1.id())).await;
    let (status, queued) = mesh
        .post(
            "/v1/tr069/reboot",
            &token,
            json!({"target": {"device_id": a_device}, "mode": "queue"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{queued}");
    let a_task = queued["task_id"].as_str().unwrap();

    // Tenant B registers the same CPE on the same ACS: A's task is not its.
    let (b_id, b) = mesh.tenant_with_admin("tenant-b").await;
    mesh.allow_targets(&b_id, &["127.0.0.0/8"]).await;
    let b_device = device(&mesh, &b, "cpe-1", endpoint(&sim, &cpe1.id())).await;
    let (status, tasks) = mesh
        .get(&format!("/v1/tr069/tasks?device_id={b_device}"), &b)
        .await;
    assert_eq!(
        (status, &tasks["tasks"]),
        (StatusCode::OK, &json!([])),
        "{tasks}"
    );
    let (status, body) = mesh.get(&format!("/v1/tr069/tasks/{a_task}"), &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = mesh.delete(&format!("/v1/tr069/tasks/{a_task}"), &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Even A's task id with B's device in it.
    let swapped = a_task.replacen(&a_device, &b_device, 1);
    let (status, body) = mesh.get(&format!("/v1/tr069/tasks/{swapped}"), &b).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(sim.pending().len(), 1, "A's task is still there");

    // B's admin bounds B to its tagged CPEs: the list shows only those, and
    // the untagged CPE is not found to any operation.
    let (status, settings) = mesh
        .call(
            Method::PUT,
            "/v1/settings",
            Some(&b),
            Some(json!({"tr069": {"acs_device_query": "{\"_tags\":\"tenant-b\"}"}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{settings}");
    let (status, list) = mesh
        .get(
            &format!("/v1/tr069/acs-devices?target.device_id={b_device}"),
            &b,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["acs_device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [cpe4.id()], "{list}");
    let (status, body) = mesh
        .post(
            "/v1/tr069/reboot",
            &b,
            json!({"target": {"device_id": b_device}}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = mesh
        .get(&format!("/v1/tr069/devices/{b_device}/parameters"), &b)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        sim.ran(&cpe1.id()),
        Vec::<String>::new(),
        "B reached nothing"
    );
    // A is not bound by B's query.
    let (status, list) = mesh
        .get(
            &format!("/v1/tr069/acs-devices?target.device_id={a_device}"),
            &token,
        )
        .await;
    assert_eq!(
        (status, list["total_size"].as_str()),
        (StatusCode::OK, Some("4")),
        "{list}"
    );

    // Only an admin sets the query, and it must be a JSON object.
    let admin = mesh.admin_token().await;
    let (status, body) = mesh
        .post(
            &format!("/v1/tenants/{b_id}/users"),
            &admin,
            json!({"username": "otto", "password": "otto-password", "roles": ["operator"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let operator = mesh.token("tenant-b", "otto", "otto-password").await;
    let open = json!({"tr069": {"acs_device_query": ""}});
    let (status, _) = mesh
        .call(Method::PUT, "/v1/settings", Some(&operator), Some(open))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, got) = mesh.get("/v1/settings", &operator).await;
    assert_eq!(
        got["tr069"]["acs_device_query"], "{\"_tags\":\"tenant-b\"}",
        "{status} {got}"
    );
    let bad = json!({"tr069": {"acs_device_query": "[\"tenant-b\"]"}});
    let (status, body) = mesh
        .call(Method::PUT, "/v1/settings", Some(&b), Some(bad))
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("tr069.acs_device_query")),
        "{body}"
    );
}

on_both_stores!(
    every_rpc_against_the_simulator,
    wait_queue_and_an_offline_cpe,
    faults_keep_their_meaning,
    tenants_stay_apart_on_a_shared_acs,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acs_down_refusing_or_slow_and_values_of_the_wrong_type() {
    let mesh = TestMesh::start(rdm_tests::Store::Sqlite).await;
    let sim = sim().await;
    let [cpe1, ..] = cpes();
    let token = mesh.token("demo", "demo", "demo").await;
    let id = device(&mesh, &token, "cpe-1", endpoint(&sim, &cpe1.id())).await;
    let target = json!({"device_id": id});

    // A value that does not fit its type never reaches the ACS.
    for (value, t) in [
        ("yes", "xsd:boolean"),
        ("-1", "xsd:unsignedInt"),
        ("31/01/2026", "dateTime"),
    ] {
        let (status, body) = mesh
            .post(
                "/v1/tr069/set-parameter-values",
                &token,
                json!({"target": target, "parameters": [{"name": "Device.WiFi.SSID.1.Enable", "value": value, "type": t}]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["field"], "parameters[0].value", "{body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("Device.WiFi.SSID.1.Enable"),
            "{body}"
        );
    }
    assert!(
        sim.pending().is_empty() && sim.ran(&cpe1.id()).is_empty(),
        "nothing was sent"
    );

    // Wrong ACS credentials: 502 UPSTREAM_AUTH, never a 401 for the caller.
    let mut wrong = endpoint(&sim, &cpe1.id());
    wrong["auth"]["password"] = json!("wrong");
    let (status, body) = mesh
        .post(
            "/v1/tr069/reboot",
            &token,
            json!({"target": {"endpoint": wrong}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("UPSTREAM_AUTH")),
        "{body}"
    );

    // A CPE slower than the wait: QUEUED once the wait is over.
    let slow = CpeSpec::new("BM632w", acs::SLOW_SERIAL, Model::Tr181, true);
    let slow_sim = acs::start(([127, 0, 0, 1], 0).into(), std::slice::from_ref(&slow))
        .await
        .unwrap();
    let (status, body) = mesh
        .post(
            "/v1/tr069/reboot",
            &token,
            json!({"target": {"endpoint": endpoint(&slow_sim, &slow.id())}, "timeout_ms": 200}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("QUEUED")),
        "{body}"
    );

    // The ACS down: 503 UPSTREAM_UNAVAILABLE within the endpoint's timeout.
    sim.set_down(true);
    let (status, body) = mesh
        .post("/v1/tr069/reboot", &token, json!({"target": target}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("UPSTREAM_UNAVAILABLE")
        ),
        "{body}"
    );
    let (status, body) = mesh
        .get(&format!("/v1/tr069/devices/{id}/parameters"), &token)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // Nobody listening at all.
    drop(sim);
    let (status, body) = mesh
        .post("/v1/tr069/reboot", &token, json!({"target": target}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("UPSTREAM_UNAVAILABLE")
        ),
        "{body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("cannot reach the ACS"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_cpes_answer_through_tr069() {
    let mesh = TestMesh::start_with_demo_devices(rdm_tests::Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    let (status, list) = mesh.get("/v1/devices?page_size=100", &token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let id = |name: &str| {
        list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {list}"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (status, got) = mesh
        .post(
            "/v1/tr069/get-parameter-values",
            &token,
            json!({"target": {"device_id": id("demo-tr069-1")}, "names": ["Device.DeviceInfo.SoftwareVersion"]}),
        )
        .await;
    assert_eq!(
        (status, &got["parameters"][0]["value"]),
        (StatusCode::OK, &json!("1.0")),
        "{got}"
    );
    let (status, got) = mesh
        .post(
            "/v1/tr069/reboot",
            &token,
            json!({"target": {"device_id": id("demo-tr069-3")}, "timeout_ms": 300}),
        )
        .await;
    assert_eq!(
        (status, got["status"].as_str()),
        (StatusCode::OK, Some("QUEUED")),
        "the offline one: {got}"
    );
}
