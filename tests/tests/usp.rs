//! The USP service through the gateway (REST), on SQLite and PostgreSQL:
//! rdm as the controller of a simulated agent over the real Mosquitto
//! broker (127.0.0.1:1883; `./test.sh` starts it).
use rdm_sims::usp_agent::{self, UspAgent};
use rdm_tests::{NdJson, TestMesh, on_both_stores};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// An agent on the broker with names no other test uses.
async fn agent() -> UspAgent {
    let run = uuid::Uuid::new_v4().simple().to_string();
    usp_agent::start(
        "127.0.0.1",
        1883,
        &format!("os::012345-{}", &run[..12]),
        &format!("usp/agent/{run}"),
        &format!("usp/controller/{run}"),
        "self::rdm",
    )
    .await
    .expect("the simulated agent subscribes (is Mosquitto running on 127.0.0.1:1883?)")
}

fn mqtt_endpoint(endpoint_id: &str, topic: &str, timeout_ms: u32) -> Value {
    json!({"transport": "mqtt", "endpoint_id": endpoint_id, "timeout_ms": timeout_ms,
           "mqtt": {"broker_url": "mqtt://127.0.0.1:1883", "agent_topic": topic}})
}

/// A device of the token's tenant with `endpoint` as its usp endpoint.
async fn device(mesh: &TestMesh, token: &str, name: &str, endpoint: Value) -> String {
    let device = json!({"name": name, "serial": name});
    mesh.device_with_endpoint(token, device, "usp", endpoint)
        .await
}

/// A Get of `Device.` from device `id`'s agent that fails with `status`
/// and `code`; the problem.
async fn get_fails(
    mesh: &TestMesh,
    token: &str,
    id: &str,
    status: StatusCode,
    code: &str,
) -> Value {
    let get = json!({"target": {"device_id": id}, "paths": ["Device."]});
    let (got, e) = mesh.post("/v1/usp/get", token, get).await;
    assert_eq!((got, e["code"].as_str()), (status, Some(code)), "{e}");
    e
}

async fn ok(mesh: &TestMesh, token: &str, path: &str, body: Value) -> Value {
    let (status, reply) = mesh.post(path, token, body).await;
    assert_eq!(status, StatusCode::OK, "{path}: {reply}");
    reply
}

async fn every_request_through_the_gateway(mesh: TestMesh) {
    let (tenant, token) = mesh.tenant_with_admin("usp-a").await;
    mesh.allow_targets(&tenant, &["127.0.0.1/32"]).await;
    let agent = agent().await;
    let id = device(
        &mesh,
        &token,
        "agent-1",
        mqtt_endpoint(&agent.endpoint_id, &agent.topic, 5000),
    )
    .await;
    let target = json!({"device_id": id});

    let got = ok(
        &mesh,
        &token,
        "/v1/usp/get",
        json!({"target": target, "paths": ["Device.DeviceInfo.", "Device.WiFi.SSID.*.SSID", "Device.Nope."]}),
    )
    .await;
    let r = &got["req_path_results"];
    assert_eq!(
        r[0]["resolved_path_results"][0]["resolved_path"], "Device.DeviceInfo.",
        "{got}"
    );
    assert_eq!(
        r[0]["resolved_path_results"][0]["result_params"]["Manufacturer"],
        "rdm-sim"
    );
    assert_eq!(
        r[1]["resolved_path_results"].as_array().unwrap().len(),
        2,
        "{got}"
    );
    assert_eq!(r[2]["err_code"], 7026);

    // A required read-only parameter: USP Error 7004 with its param_err,
    // as DEVICE_ERROR; nothing written.
    let set = |allow_partial: bool, objs: Value| json!({"target": target, "allow_partial": allow_partial, "update_objs": objs});
    let (status, e) = mesh
        .post(
            "/v1/usp/set",
            &token,
            set(
                false,
                json!([{"obj_path": "Device.WiFi.SSID.1.", "param_settings": [
                {"param": "SSID", "value": "cafe", "required": true},
                {"param": "Status", "value": "Down", "required": true}]}]),
            ),
        )
        .await;
    assert_eq!(
        (status, &e["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("DEVICE_ERROR")),
        "{e}"
    );
    assert_eq!(e["usp_err_code"], "7004", "{e}");
    let param_errs: Value = serde_json::from_str(e["param_errs"].as_str().unwrap()).unwrap();
    assert_eq!(
        (&param_errs[0]["param_path"], &param_errs[0]["err_code"]),
        (&json!("Device.WiFi.SSID.1.Status"), &json!(7013))
    );
    assert_eq!(
        agent.value("Device.WiFi.SSID.1.SSID").as_deref(),
        Some("home")
    );
    // allow_partial: that object fails with 7021, the other is written.
    let done = ok(
        &mesh,
        &token,
        "/v1/usp/set",
        set(true, json!([
            {"obj_path": "Device.WiFi.SSID.[Alias==\"home\"].", "param_settings": [{"param": "SSID", "value": "cafe", "required": true}]},
            {"obj_path": "Device.WiFi.SSID.2.", "param_settings": [{"param": "Status", "value": "Down", "required": true}]}])),
    )
    .await;
    let results = &done["updated_obj_results"];
    assert_eq!(
        results[0]["oper_status"]["oper_success"]["updated_inst_results"][0]["affected_path"],
        "Device.WiFi.SSID.1.",
        "{done}"
    );
    assert_eq!(
        results[1]["oper_status"]["oper_failure"]["err_code"], 7021,
        "{done}"
    );
    assert_eq!(
        agent.value("Device.WiFi.SSID.1.SSID").as_deref(),
        Some("cafe")
    );

    // Add, GetInstances, Delete.
    let added = ok(
        &mesh,
        &token,
        "/v1/usp/add",
        json!({"target": target, "create_objs": [{"obj_path": "Device.WiFi.SSID.",
               "param_settings": [{"param": "Alias", "value": "lab", "required": true}]}]}),
    )
    .await;
    let success = &added["created_obj_results"][0]["oper_status"]["oper_success"];
    assert_eq!(
        (
            &success["instantiated_path"],
            &success["unique_keys"]["Alias"]
        ),
        (&json!("Device.WiFi.SSID.3."), &json!("lab")),
        "{added}"
    );
    let listed = ok(
        &mesh,
        &token,
        "/v1/usp/get-instances",
        json!({"target": target, "obj_paths": ["Device.WiFi.SSID."], "first_level_only": true}),
    )
    .await;
    assert_eq!(
        listed["req_path_results"][0]["curr_insts"]
            .as_array()
            .unwrap()
            .len(),
        3,
        "{listed}"
    );
    let deleted = ok(
        &mesh,
        &token,
        "/v1/usp/delete",
        json!({"target": target, "obj_paths": ["Device.WiFi.SSID.3."]}),
    )
    .await;
    assert_eq!(
        deleted["deleted_obj_results"][0]["oper_status"]["oper_success"]["affected_paths"],
        json!(["Device.WiFi.SSID.3."])
    );
    assert_eq!(agent.value("Device.WiFi.SSID.3.Alias"), None);

    // GetSupportedDM: the whole tree under Device.WiFi., and Device.'s own
    // level with its commands and events.
    let dm = ok(
        &mesh,
        &token,
        "/v1/usp/get-supported-dm",
        json!({"target": target, "obj_paths": ["Device.WiFi.", "Device."], "first_level_only": true,
               "return_params": true, "return_commands": true, "return_events": true, "return_unique_key_sets": true}),
    )
    .await;
    let objects = |i: usize| -> Vec<Value> {
        dm["req_obj_results"][i]["supported_objs"]
            .as_array()
            .unwrap()
            .clone()
    };
    let ssid = objects(0)
        .into_iter()
        .find(|o| o["supported_obj_path"] == "Device.WiFi.SSID.{i}.")
        .unwrap_or_else(|| panic!("{dm}"));
    assert_eq!(ssid["is_multi_instance"], true);
    assert_eq!(ssid["unique_key_sets"][0]["key_names"], json!(["Alias"]));
    let status = ssid["supported_params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["param_name"] == "Status")
        .unwrap();
    assert_eq!(status["access"], "PARAM_READ_ONLY", "{status}");
    let root = objects(1);
    assert_eq!(
        root[0]["supported_commands"][0]["command_name"], "Reboot()",
        "{dm}"
    );
    assert_eq!(
        root[0]["supported_events"][0]["arg_names"],
        json!(["CommandKey", "Cause"])
    );
    assert!(
        !root
            .iter()
            .any(|o| o["supported_obj_path"] == "Device.WiFi.SSID.{i}."),
        "first_level_only: {dm}"
    );

    // Operate and GetSupportedProtocol.
    let rebooted = ok(
        &mesh,
        &token,
        "/v1/usp/operate",
        json!({"target": target, "command": "Device.Reboot()", "command_key": "rdm-test"}),
    )
    .await;
    assert_eq!(
        rebooted["operation_results"][0]["executed_command"], "Device.Reboot()",
        "{rebooted}"
    );
    assert_eq!(agent.reboots(), 1);
    let proto = ok(
        &mesh,
        &token,
        "/v1/usp/get-supported-protocol",
        json!({"target": target}),
    )
    .await;
    assert_eq!(proto["agent_supported_protocol_versions"], "1.3,1.4");
    let metrics = mesh.metrics_text().await;
    assert!(
        metrics.contains(r#"rdm_usp_requests_total{msg="SET",outcome="answered"}"#),
        "{metrics}"
    );

    // Another tenant cannot address the agent through this device.
    let (_, other) = mesh.tenant_with_admin("usp-b").await;
    let (status, _) = mesh
        .post(
            "/v1/usp/get",
            &other,
            json!({"target": target, "paths": ["Device."]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nor point a device of its own at the loopback broker: the address
    // policy refuses it (loopback is allowed to the first tenant only).
    let (status, body) = mesh
        .post(
            "/v1/devices",
            &other,
            json!({"name": "agent-b", "serial": "agent-b"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, e) = mesh
        .call(
            Method::PUT,
            &format!("/v1/devices/{}/endpoints/usp", body["id"].as_str().unwrap()),
            Some(&other),
            Some(mqtt_endpoint(&agent.endpoint_id, &agent.topic, 1000)),
        )
        .await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::FORBIDDEN, &json!("mqtt.broker_url")),
        "{e}"
    );
}

async fn absent_agents_and_other_transports(mesh: TestMesh) {
    let (tenant, token) = mesh.tenant_with_admin("usp-c").await;
    mesh.allow_targets(&tenant, &["127.0.0.1/32"]).await;
    // Nobody answers on this topic: 504 within the endpoint's timeout.
    let nobody = device(
        &mesh,
        &token,
        "gone",
        mqtt_endpoint("os::012345-GONE", "usp/agent/gone", 300),
    )
    .await;
    get_fails(
        &mesh,
        &token,
        &nobody,
        StatusCode::GATEWAY_TIMEOUT,
        "DEVICE_TIMEOUT",
    )
    .await;
    // An agent that says it is disconnecting (a DisconnectRecord) is 503
    // DEVICE_OFFLINE at once, not after its 60 s timeout; back (its
    // MQTTConnectRecord), it answers again.
    let leaving = agent().await;
    let mut endpoint = notifying_endpoint(&leaving);
    endpoint["timeout_ms"] = json!(60000);
    let id = device(&mesh, &token, "leaving", endpoint).await;
    let get = json!({"target": {"device_id": id}, "paths": ["Device.DeviceInfo.SerialNumber"]});
    ok(&mesh, &token, "/v1/usp/get", get.clone()).await;
    let (eid, topic, controller) = (
        leaving.endpoint_id.clone(),
        leaving.topic.clone(),
        leaving.controller_topic.clone(),
    );
    leaving.shut_down().await;
    let offline = StatusCode::SERVICE_UNAVAILABLE;
    let e = get_fails(&mesh, &token, &id, offline, "DEVICE_OFFLINE").await;
    assert!(
        e["detail"].as_str().unwrap().contains("disconnecting"),
        "{e}"
    );
    let _back = usp_agent::start("127.0.0.1", 1883, &eid, &topic, &controller, "self::rdm")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, reply) = mesh.post("/v1/usp/get", &token, get.clone()).await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {status}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // One whose connection is lost without a goodbye: its broker sends its
    // Will, a DisconnectRecord, and it is DEVICE_OFFLINE too.
    let lost = agent().await;
    let id = device(&mesh, &token, "lost", notifying_endpoint(&lost)).await;
    let get = json!({"target": {"device_id": id}, "paths": ["Device.DeviceInfo.SerialNumber"]});
    ok(&mesh, &token, "/v1/usp/get", get.clone()).await;
    drop(lost);
    // (A Get sent before the Will arrives waits out the 5 s timeout.)
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, e) = mesh.post("/v1/usp/get", &token, get.clone()).await;
        if e["code"] == "DEVICE_OFFLINE" {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                e["detail"].as_str().unwrap().contains("connection lost"),
                "{e}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {status}: {e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The seed's "controller" transport: refused, saying how to switch.
    // The device had MQTT settings with a broker password: the PUT without
    // `mqtt` forgets them, the password with them.
    let mut with_password = mqtt_endpoint("os::012345-OLD", "usp/agent/old", 300);
    with_password["mqtt"]["password"] = json!("broker-secret");
    let old = device(&mesh, &token, "old", with_password).await;
    let path = format!("/v1/devices/{old}/endpoints/usp");
    let (status, stored) = mesh
        .call(
            Method::PUT,
            &path,
            Some(&token),
            Some(json!({"transport": "controller", "base_url": "http://127.0.0.1:9"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    let (status, stored) = mesh.get(&path, &token).await;
    assert_eq!(status, StatusCode::OK, "{stored}");
    assert_eq!(stored["usp"].get("mqtt"), None, "{stored}");
    assert!(!stored.to_string().contains("broker-secret"), "{stored}");
    let (status, e) = mesh
        .post(
            "/v1/usp/get",
            &token,
            json!({"target": {"device_id": old}, "paths": ["Device."]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("transport mqtt"),
        "{e}"
    );
    // A malformed request is a 400 naming the field, before any agent.
    let (status, e) = mesh
        .post(
            "/v1/usp/get",
            &token,
            json!({"target": {"device_id": nobody}, "paths": []}),
        )
        .await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::BAD_REQUEST, &json!("paths")),
        "{e}"
    );
}

/// The endpoint of `agent`, with its controller topic (where its
/// notifications go) as the device's.
fn notifying_endpoint(agent: &UspAgent) -> Value {
    let mut endpoint = mqtt_endpoint(&agent.endpoint_id, &agent.topic, 5000);
    endpoint["mqtt"]["controller_topic"] = json!(agent.controller_topic);
    endpoint
}

/// Asserts that `agent` answers a Get of its serial number through the
/// gateway, addressed as `target`.
async fn answers(mesh: &TestMesh, token: &str, target: Value, agent: &UspAgent) {
    let get = json!({"target": target, "paths": ["Device.DeviceInfo.SerialNumber"]});
    let got = ok(mesh, token, "/v1/usp/get", get).await;
    assert_eq!(
        got["req_path_results"][0]["resolved_path_results"][0]["result_params"]["SerialNumber"]
            .as_str(),
        agent.endpoint_id.rsplit('-').next(),
        "{got}"
    );
}

/// The subscription ids of the NotifyResps `agent` got, once there is one
/// (within 5 s: rdm answers after storing the notification).
async fn acknowledged(agent: &UspAgent) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while agent.acknowledged().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.acknowledged()
}

/// The tenant's notification stream (from `replay_minutes` ago), open by
/// the time this returns.
async fn watch(mesh: &TestMesh, token: &str, replay_minutes: u32) -> NdJson {
    let url = mesh.url(&format!(
        "/v1/usp/notifications?replay_minutes={replay_minutes}"
    ));
    NdJson::get(&mesh.http, &url, token).await
}

async fn subscriptions_bring_notifications_to_their_tenant(mesh: TestMesh) {
    let (tenant, token) = mesh.tenant_with_admin("usp-n").await;
    let (other, other_token) = mesh.tenant_with_admin("usp-o").await;
    for t in [&tenant, &other] {
        mesh.allow_targets(t, &["127.0.0.1/32"]).await;
    }
    let (agent, theirs) = (agent().await, agent().await);
    let id = device(&mesh, &token, "agent-n", notifying_endpoint(&agent)).await;
    let their_id = device(&mesh, &other_token, "agent-o", notifying_endpoint(&theirs)).await;
    let target = json!({"device_id": id});
    let mut lines = watch(&mesh, &token, 0).await;
    let mut their_lines = watch(&mesh, &other_token, 0).await;

    // Subscriptions are instances of the agent's Subscription table, under
    // the IDs rdm gave them.
    let subscribe = |notif_type: &str, refs: Value, retry: bool| json!({"target": target, "notif_type": notif_type, "reference_list": refs, "notif_retry": retry});
    let value_change = &ok(
        &mesh,
        &token,
        "/v1/usp/subscriptions",
        subscribe("ValueChange", json!(["Device.WiFi.SSID.*.SSID"]), true),
    )
    .await["subscription"];
    let sub_id = value_change["id"].as_str().unwrap().to_owned();
    assert_eq!(
        value_change["obj_path"], "Device.LocalAgent.Subscription.1.",
        "{value_change}"
    );
    assert_eq!(value_change["device_id"], id);
    assert_eq!(
        agent
            .value("Device.LocalAgent.Subscription.1.ID")
            .as_deref(),
        Some(sub_id.as_str())
    );
    assert_eq!(
        agent
            .value("Device.LocalAgent.Subscription.1.Enable")
            .as_deref(),
        Some("true")
    );
    assert_eq!(
        agent
            .value("Device.LocalAgent.Subscription.1.NotifType")
            .as_deref(),
        Some("ValueChange")
    );
    for (kind, path) in [
        ("OperationComplete", "Device.IP.Diagnostics.IPPing()"),
        ("ObjectCreation", "Device.WiFi.SSID."),
        ("Event", "Device.Boot!"),
    ] {
        ok(
            &mesh,
            &token,
            "/v1/usp/subscriptions",
            subscribe(kind, json!([path]), false),
        )
        .await;
    }
    // The other tenant can neither subscribe to this agent nor unsubscribe
    // what this tenant made.
    let (status, e) = mesh
        .post(
            "/v1/usp/subscriptions",
            &other_token,
            subscribe("ValueChange", json!(["Device."]), false),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, e) = mesh
        .delete(&format!("/v1/usp/subscriptions/{sub_id}"), &other_token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    // An agent is addressed by its device or by its endpoint id, by the
    // tenant whose device names it only.
    let by_agent = json!({"endpoint_id": agent.endpoint_id});
    answers(&mesh, &token, by_agent.clone(), &agent).await;
    let get = json!({"target": by_agent, "paths": ["Device."]});
    let (status, e) = mesh.post("/v1/usp/get", &other_token, get).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    let (status, e) = mesh
        .post(
            "/v1/usp/get",
            &token,
            json!({"target": {}, "paths": ["Device."]}),
        )
        .await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::BAD_REQUEST, &json!("target")),
        "{e}"
    );
    // Nor claim the agent for a device of its own: an agent belongs to one
    // device.
    let (status, e) = mesh
        .call(
            Method::PUT,
            &format!("/v1/devices/{their_id}/endpoints/usp"),
            Some(&other_token),
            Some(notifying_endpoint(&agent)),
        )
        .await;
    assert_eq!(
        (status, &e["code"], &e["field"]),
        (
            StatusCode::CONFLICT,
            &json!("ALREADY_EXISTS"),
            &json!("usp.endpoint_id")
        ),
        "{e}"
    );
    assert!(!e.to_string().contains(&tenant), "{e}");

    // A Set brings a ValueChange, answered (NotifRetry) with a NotifyResp.
    let set = json!({"target": target, "update_objs": [{"obj_path": "Device.WiFi.SSID.1.",
        "param_settings": [{"param": "SSID", "value": "watched", "required": true}]}]});
    ok(&mesh, &token, "/v1/usp/set", set).await;
    let n = &lines.next(1).await[0];
    assert_eq!(
        (&n["device_id"], &n["endpoint_id"]),
        (&json!(id), &json!(agent.endpoint_id)),
        "{n}"
    );
    assert_eq!(n["notify"]["subscription_id"], sub_id, "{n}");
    assert_eq!(
        n["notify"]["value_change"],
        json!({"param_path": "Device.WiFi.SSID.1.SSID", "param_value": "watched"}),
        "{n}"
    );
    assert_eq!(acknowledged(&agent).await, std::slice::from_ref(&sub_id));

    // An async command answers with its request object; its result comes
    // as OperationComplete.
    let operated = ok(
        &mesh,
        &token,
        "/v1/usp/operate",
        json!({"target": target,
        "command": "Device.IP.Diagnostics.IPPing()", "command_key": "ping-1",
        "input_args": {"Host": "192.0.2.1", "NumberOfRepetitions": "4"}}),
    )
    .await;
    assert_eq!(
        operated["operation_results"][0]["req_obj_path"], "Device.LocalAgent.Request.1.",
        "{operated}"
    );
    let n = &lines.next(1).await[0];
    let done = &n["notify"]["oper_complete"];
    assert_eq!(
        (&done["command_name"], &done["command_key"]),
        (&json!("IPPing()"), &json!("ping-1")),
        "{n}"
    );
    assert_eq!(
        done["req_output_args"]["output_args"]["SuccessCount"], "4",
        "{n}"
    );
    // Reboot() then Boot!; an Add, then its ObjectCreation.
    ok(
        &mesh,
        &token,
        "/v1/usp/operate",
        json!({"target": target, "command": "Device.Reboot()", "command_key": "r1"}),
    )
    .await;
    let n = &lines.next(1).await[0];
    assert_eq!(n["notify"]["event"]["event_name"], "Boot!", "{n}");
    assert_eq!(
        n["notify"]["event"]["params"],
        json!({"Cause": "RemoteReboot", "CommandKey": "r1"})
    );
    let added = ok(
        &mesh,
        &token,
        "/v1/usp/add",
        json!({"target": target, "create_objs": [{"obj_path": "Device.WiFi.SSID.",
        "param_settings": [{"param": "Alias", "value": "seen", "required": true}]}]}),
    )
    .await;
    let n = &lines.next(1).await[0];
    assert_eq!(
        n["notify"]["obj_creation"]["obj_path"],
        added["created_obj_results"][0]["oper_status"]["oper_success"]["instantiated_path"],
        "{n}"
    );
    assert_eq!(
        n["notify"]["obj_creation"]["unique_keys"],
        json!({"Alias": "seen"})
    );

    // The other tenant's stream got only what its own agent sent.
    let their_sub = ok(
        &mesh,
        &other_token,
        "/v1/usp/subscriptions",
        json!({"target": {"device_id": their_id},
        "notif_type": "ValueChange", "reference_list": ["Device.DeviceInfo.ProvisioningCode"]}),
    )
    .await["subscription"]
        .clone();
    ok(
        &mesh,
        &other_token,
        "/v1/usp/set",
        json!({"target": {"device_id": their_id}, "update_objs": [{"obj_path": "Device.DeviceInfo.",
        "param_settings": [{"param": "ProvisioningCode", "value": "theirs", "required": true}]}]}),
    )
    .await;
    let n = &their_lines.next(1).await[0];
    assert_eq!(n["notify"]["subscription_id"], their_sub["id"], "{n}");
    assert_eq!(n["device_id"], their_id);

    // A watcher that comes late asks for the last minutes: the four, in
    // order, and only this tenant's.
    let mut late = watch(&mesh, &token, 5).await;
    let replayed = late.next(4).await;
    let kinds: Vec<&str> = replayed
        .iter()
        .map(|n| {
            ["value_change", "oper_complete", "event", "obj_creation"]
                .into_iter()
                .find(|k| n["notify"].get(k).is_some())
                .unwrap()
        })
        .collect();
    assert_eq!(
        kinds,
        ["value_change", "oper_complete", "event", "obj_creation"],
        "{replayed:?}"
    );
    let sequences: Vec<i64> = replayed
        .iter()
        .map(|n| n["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");

    // The lists: each tenant its own.
    let (_, mine) = mesh.get("/v1/usp/subscriptions", &token).await;
    assert_eq!(mine["subscriptions"].as_array().unwrap().len(), 4, "{mine}");
    let (_, listed) = mesh
        .get(
            &format!("/v1/usp/subscriptions?device_id={their_id}"),
            &other_token,
        )
        .await;
    assert_eq!(
        listed["subscriptions"][0]["id"], their_sub["id"],
        "{listed}"
    );
    assert_eq!(
        listed["subscriptions"].as_array().unwrap().len(),
        1,
        "{listed}"
    );

    // Unsubscribed: gone from the agent and from the list; the next Set
    // brings nothing, the next Add its ObjectCreation.
    let (status, e) = mesh
        .delete(&format!("/v1/usp/subscriptions/{sub_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    assert_eq!(agent.value("Device.LocalAgent.Subscription.1.ID"), None);
    let (status, _) = mesh
        .delete(&format!("/v1/usp/subscriptions/{sub_id}"), &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    ok(
        &mesh,
        &token,
        "/v1/usp/set",
        json!({"target": target, "update_objs": [{"obj_path": "Device.WiFi.SSID.1.",
        "param_settings": [{"param": "SSID", "value": "unwatched", "required": true}]}]}),
    )
    .await;
    ok(&mesh, &token, "/v1/usp/add", json!({"target": target, "create_objs": [{"obj_path": "Device.WiFi.SSID.", "param_settings": []}]})).await;
    let n = &lines.next(1).await[0];
    assert!(n["notify"].get("obj_creation").is_some(), "{n}");
    let metrics = mesh.metrics_text().await;
    assert!(
        metrics.contains(r#"rdm_usp_notifications_total{type="ValueChange"}"#),
        "{metrics}"
    );
    // Past the retention they go, every tenant's (the service prunes in the
    // platform's scope each minute): a late watcher gets none.
    let db = mesh.database().await;
    let mut tx = db.begin_write(rdm_kit::db::Scope::Platform).await.unwrap();
    let future = rdm_kit::db::now_millis() + 60_000;
    let pruned = rdm_usp::store::prune_notifications(&mut tx, future)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(pruned, 6, "this tenant's five and the other's one");
    let mut late = watch(&mesh, &token, 5).await;
    assert_eq!(late.next_within(Duration::from_millis(300)).await, None);
}

/// A WebSocket connection to rdm's `/usp` as an agent would open it,
/// with or without the v1.usp subprotocol.
async fn raw_socket(
    mesh: &TestMesh,
    eid: &str,
    subprotocol: bool,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tokio_tungstenite::tungstenite::Error,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/usp?eid={eid}", mesh.usp_websocket);
    let mut request = url.into_client_request().unwrap();
    if subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", "v1.usp".parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn every_request_over_websocket(mesh: TestMesh) {
    let (tenant, token) = mesh.tenant_with_admin("usp-ws").await;
    mesh.allow_targets(&tenant, &["127.0.0.1/32"]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    // An agent that connects to rdm, and one that rdm connects to.
    let url = format!("ws://{}/usp", mesh.usp_websocket);
    let inbound = usp_agent::connect_websocket(&url, &format!("os::012345-WSIN{}", &run[..8]))
        .await
        .expect("the agent connects to rdm's /usp");
    let server = usp_agent::serve_websocket(&format!("os::012345-WSOUT{}", &run[..8]))
        .await
        .unwrap();
    let endpoint = |agent: &UspAgent, url: &str| json!({"transport": "websocket", "endpoint_id": agent.endpoint_id, "websocket_url": url, "timeout_ms": 5000});
    let in_id = device(&mesh, &token, "ws-in", endpoint(&inbound, "")).await;
    let out_id = device(
        &mesh,
        &token,
        "ws-out",
        endpoint(&server, &server.websocket_url),
    )
    .await;
    let mut lines = watch(&mesh, &token, 0).await;
    for (id, agent) in [(&in_id, &inbound), (&out_id, &server)] {
        let target = json!({"device_id": id});
        answers(&mesh, &token, target.clone(), agent).await;
        let sub = ok(&mesh, &token, "/v1/usp/subscriptions", json!({"target": target,
            "notif_type": "ValueChange", "reference_list": ["Device.WiFi.SSID.*.SSID"], "notif_retry": true})).await["subscription"].clone();
        ok(
            &mesh,
            &token,
            "/v1/usp/set",
            json!({"target": target, "update_objs": [{"obj_path": "Device.WiFi.SSID.1.",
            "param_settings": [{"param": "SSID", "value": "over-ws", "required": true}]}]}),
        )
        .await;
        assert_eq!(
            agent.value("Device.WiFi.SSID.1.SSID").as_deref(),
            Some("over-ws")
        );
        let n = &lines.next(1).await[0];
        assert_eq!(
            (&n["device_id"], &n["notify"]["subscription_id"]),
            (&json!(id), &sub["id"]),
            "{n}"
        );
        let added = ok(&mesh, &token, "/v1/usp/add", json!({"target": target,
            "create_objs": [{"obj_path": "Device.WiFi.SSID.", "param_settings": [{"param": "Alias", "value": "ws", "required": true}]}]})).await;
        let path =
            &added["created_obj_results"][0]["oper_status"]["oper_success"]["instantiated_path"];
        let listed = ok(
            &mesh,
            &token,
            "/v1/usp/get-instances",
            json!({"target": target, "obj_paths": ["Device.WiFi.SSID."]}),
        )
        .await;
        assert_eq!(
            listed["req_path_results"][0]["curr_insts"]
                .as_array()
                .unwrap()
                .len(),
            3,
            "{listed}"
        );
        ok(
            &mesh,
            &token,
            "/v1/usp/delete",
            json!({"target": target, "obj_paths": [path]}),
        )
        .await;
        ok(
            &mesh,
            &token,
            "/v1/usp/operate",
            json!({"target": target, "command": "Device.Reboot()"}),
        )
        .await;
        assert_eq!(agent.reboots(), 1);
        let dm = ok(&mesh, &token, "/v1/usp/get-supported-dm",
            json!({"target": target, "obj_paths": ["Device.IP.Diagnostics."], "return_commands": true})).await;
        assert_eq!(
            dm["req_obj_results"][0]["supported_objs"][0]["supported_commands"][0]["command_type"],
            "CMD_ASYNC",
            "{dm}"
        );
        let versions = ok(
            &mesh,
            &token,
            "/v1/usp/get-supported-protocol",
            json!({"target": target}),
        )
        .await;
        assert_eq!(versions["agent_supported_protocol_versions"], "1.3,1.4");
        assert_eq!(
            acknowledged(agent).await,
            [sub["id"].as_str().unwrap()],
            "the NotifyResp went back on the socket"
        );
    }

    // An agent that is not connected: 503 DEVICE_OFFLINE at once, not a
    // wait for the timeout; a server that is not there, the same.
    let absent = device(
        &mesh,
        &token,
        "ws-absent",
        json!({"transport": "websocket",
        "endpoint_id": "os::012345-NEVER", "timeout_ms": 60000}),
    )
    .await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("ws://{}/", closed.local_addr().unwrap());
    drop(closed);
    let refused = device(
        &mesh,
        &token,
        "ws-refused",
        json!({"transport": "websocket",
        "endpoint_id": "os::012345-REFUSED", "websocket_url": closed_url, "timeout_ms": 60000}),
    )
    .await;
    // A subscription the agent never took is not kept.
    let (status, e) = mesh
        .post(
            "/v1/usp/subscriptions",
            &token,
            json!({"target": {"device_id": absent},
            "notif_type": "ValueChange", "reference_list": ["Device."]}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
    let (_, listed) = mesh
        .get(&format!("/v1/usp/subscriptions?device_id={absent}"), &token)
        .await;
    assert_eq!(listed["subscriptions"], json!([]), "{listed}");
    for id in [absent, refused] {
        get_fails(
            &mesh,
            &token,
            &id,
            StatusCode::SERVICE_UNAVAILABLE,
            "DEVICE_OFFLINE",
        )
        .await;
    }

    // Without the subprotocol the handshake is refused; a frame that is not
    // a Record closes the connection with 1003, and rdm goes on.
    assert!(raw_socket(&mesh, "os::012345-RAW", false).await.is_err());
    let mut socket = raw_socket(&mesh, "os::012345-RAW", true).await.unwrap();
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    socket
        .send(Message::Binary(b"not a USP record".to_vec().into()))
        .await
        .unwrap();
    let closing = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("rdm answers the bad frame");
    match closing {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1003),
        other => panic!("not a close 1003: {other:?}"),
    }
    ok(
        &mesh,
        &token,
        "/v1/usp/get",
        json!({"target": {"device_id": in_id}, "paths": ["Device.DeviceInfo.Manufacturer"]}),
    )
    .await;
}

/// An agent on MQTT 3.1.1: requests and its replies name their reply
/// topics after `/reply-to=`, notifications and NotifyResps too.
async fn an_mqtt_3_1_1_agent(mesh: TestMesh) {
    let (tenant, token) = mesh.tenant_with_admin("usp-311").await;
    mesh.allow_targets(&tenant, &["127.0.0.1/32"]).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let agent = usp_agent::start_mqtt311(
        "127.0.0.1",
        1883,
        &format!("os::012345-V311{}", &run[..8]),
        &format!("usp/agent/{run}"),
        &format!("usp/controller/{run}"),
    )
    .await
    .expect("the 3.1.1 agent subscribes");
    let mut endpoint = notifying_endpoint(&agent);
    endpoint["mqtt"]["version"] = json!("3.1.1");
    let id = device(&mesh, &token, "agent-311", endpoint).await;
    let target = json!({"device_id": id});
    answers(&mesh, &token, target.clone(), &agent).await;
    let mut lines = watch(&mesh, &token, 0).await;
    let sub = ok(&mesh, &token, "/v1/usp/subscriptions", json!({"target": target,
        "notif_type": "ValueChange", "reference_list": ["Device.WiFi.SSID.1.SSID"], "notif_retry": true})).await;
    ok(
        &mesh,
        &token,
        "/v1/usp/set",
        json!({"target": target, "update_objs": [{"obj_path": "Device.WiFi.SSID.1.",
        "param_settings": [{"param": "SSID", "value": "v311", "required": true}]}]}),
    )
    .await;
    let n = &lines.next(1).await[0];
    assert_eq!(
        n["notify"]["subscription_id"], sub["subscription"]["id"],
        "{n}"
    );
    assert_eq!(
        acknowledged(&agent).await,
        [sub["subscription"]["id"].as_str().unwrap()],
        "the NotifyResp reached the 3.1.1 agent"
    );
}

/// Nobody signs in on the WebSocket port: what strangers may hold there
/// is bounded (here one connection); one more is closed at once, and the
/// room comes back when a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_connections_are_bounded() {
    let mesh = TestMesh::start_with(rdm_tests::Store::Sqlite, |s| {
        let flags = [
            &rdm::EPHEMERAL_SERVICE_LISTENERS[..],
            &["--usp-websocket-max", "1"],
        ];
        s.services = rdm::service_settings(&flags.concat()).unwrap();
    })
    .await;
    let first = raw_socket(&mesh, "os::012345-FIRST", true).await.unwrap();
    assert!(raw_socket(&mesh, "os::012345-SECOND", true).await.is_err());
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while raw_socket(&mesh, "os::012345-THIRD", true).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = mesh.metrics_text().await;
    assert!(
        metrics.contains("rdm_usp_websockets_refused_total"),
        "{metrics}"
    );
}

/// Waits (up to 10 s) for `agent` to get the NotifyResp to its
/// OnBoardRequest (no subscription id); whether it did.
async fn welcomed(agent: &UspAgent, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if agent.acknowledged().iter().any(String::is_empty) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The tenant's devices with the label `onboarded=usp`, by name.
async fn onboarded(mesh: &TestMesh, token: &str) -> Vec<Value> {
    let (status, list) = mesh
        .get("/v1/devices?label_selector=onboarded%3Dusp", token)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["devices"].as_array().cloned().unwrap_or_default()
}

/// Auto-registration: an admin turns it on and gets a secret topic and
/// path; agents announcing themselves there (OnBoardRequest) become devices
/// of that tenant only, made as that admin, and answer requests at once,
/// over MQTT (on rdm's own broker) and WebSocket. A wrong secret, or an
/// admin demoted since, registers nothing.
async fn agents_register_themselves(mesh: TestMesh) {
    let (_, alice) = mesh.tenant_with_admin("usp-onboard").await;
    let (_, other) = mesh.tenant_with_admin("usp-onboard-b").await;
    let (status, e) = mesh.get("/v1/usp/auto-registration", &alice).await;
    assert_eq!(
        (status, e["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NOT_FOUND")),
        "{e}"
    );
    let put = |label: &str| json!({"label": label});
    let (status, e) = mesh
        .call(
            Method::PUT,
            "/v1/usp/auto-registration",
            Some(&alice),
            Some(put("no label")),
        )
        .await;
    assert_eq!(
        (status, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("label")),
        "{e}"
    );
    // Operators cannot turn it on.
    let (status, bob) = mesh
        .post(
            "/v1/users",
            &alice,
            json!({"username": "bob", "password": "pass-word-1", "roles": ["admin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{bob}");
    let (status, _) = mesh
        .post(
            "/v1/users",
            &alice,
            json!({"username": "olga", "password": "pass-word-1", "roles": ["operator"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let olga = mesh.token("usp-onboard", "olga", "pass-word-1").await;
    let (status, _) = mesh
        .call(
            Method::PUT,
            "/v1/usp/auto-registration",
            Some(&olga),
            Some(put("onboarded=usp")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, on) = mesh
        .call(
            Method::PUT,
            "/v1/usp/auto-registration",
            Some(&alice),
            Some(put("onboarded=usp")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{on}");
    let on = &on["auto_registration"];
    let topic = on["mqtt_topic"].as_str().unwrap().to_owned();
    let path = on["websocket_path"].as_str().unwrap().to_owned();
    assert!(topic.starts_with("usp/controller/rdm/onboard/"), "{on}");
    assert!(path.starts_with("/usp/onboard/"), "{on}");
    // The secret is shown when made, not after.
    let (status, shown) = mesh.get("/v1/usp/auto-registration", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            &shown["auto_registration"]["label"],
            &shown["auto_registration"]["mqtt_topic"]
        ),
        (&json!("onboarded=usp"), &json!("")),
        "{shown}"
    );

    // Over MQTT: the agent announces itself on the tenant's topic.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let eid = format!("os::00D09E-{}", &run[..12]);
    let agent = usp_agent::start_announcing(
        "127.0.0.1",
        1883,
        &eid,
        &format!("usp/agent/{run}"),
        &topic,
        "self::rdm",
    )
    .await
    .expect("the agent subscribes");
    assert!(
        welcomed(&agent, Duration::from_secs(10)).await,
        "no NotifyResp to the OnBoardRequest"
    );
    let devices = onboarded(&mesh, &alice).await;
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(
        (
            &devices[0]["name"],
            &devices[0]["model"],
            &devices[0]["manufacturer"]
        ),
        (&json!(eid), &json!("RDM-SIM"), &json!("00D09E")),
    );
    answers(&mesh, &alice, json!({"endpoint_id": eid}), &agent).await;
    // Only for its tenant.
    assert!(onboarded(&mesh, &other).await.is_empty());
    let get = json!({"target": {"endpoint_id": eid}, "paths": ["Device."]});
    let (status, _) = mesh.post("/v1/usp/get", &other, get).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Over WebSocket; announcing again (a reboot, a reconnect) makes no
    // second device.
    let url = format!("ws://{}{path}", mesh.usp_websocket);
    let ws_eid = format!("os::00D09E-ws{}", &run[..10]);
    for _ in 0..2 {
        let ws = usp_agent::connect_websocket_announcing(&url, &ws_eid, "self::rdm")
            .await
            .expect("the agent connects");
        assert!(welcomed(&ws, Duration::from_secs(10)).await);
        answers(&mesh, &alice, json!({"endpoint_id": ws_eid}), &ws).await;
    }
    let devices = onboarded(&mesh, &alice).await;
    assert_eq!(devices.len(), 2, "{devices:?}");

    // A wrong secret registers nothing (and is not answered).
    let wrong = format!("ws://{}/usp/onboard/{}", mesh.usp_websocket, "0".repeat(32));
    let stranger =
        usp_agent::connect_websocket_announcing(&wrong, "os::00D09E-stranger", "self::rdm")
            .await
            .expect("the agent connects");
    assert!(!welcomed(&stranger, Duration::from_millis(1500)).await);

    // Bob turns it on (a new secret); once demoted, his topic registers
    // nobody: devices are made with the roles their admin has now.
    let bob_token = mesh.token("usp-onboard", "bob", "pass-word-1").await;
    let body = json!({"label": "onboarded=usp", "new_secret": true});
    let (status, on) = mesh
        .call(
            Method::PUT,
            "/v1/usp/auto-registration",
            Some(&bob_token),
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{on}");
    let new_path = on["auto_registration"]["websocket_path"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_path, path);
    let old = usp_agent::connect_websocket_announcing(&url, "os::00D09E-old-secret", "self::rdm")
        .await
        .expect("the agent connects");
    assert!(
        !welcomed(&old, Duration::from_millis(1500)).await,
        "the old secret still registers"
    );
    let bob_id = bob["id"].as_str().unwrap();
    let (status, _) = mesh
        .patch(
            &format!("/v1/users/{bob_id}"),
            &alice,
            json!({"roles": ["operator"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let url = format!("ws://{}{new_path}", mesh.usp_websocket);
    let late = usp_agent::connect_websocket_announcing(&url, "os::00D09E-late", "self::rdm")
        .await
        .expect("the agent connects");
    assert!(!welcomed(&late, Duration::from_millis(1500)).await);
    assert_eq!(onboarded(&mesh, &alice).await.len(), 2);

    let (status, _) = mesh.delete("/v1/usp/auto-registration", &alice).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = mesh.get("/v1/usp/auto-registration", &alice).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A test mesh with rdm's own broker (for auto-registration over MQTT).
async fn with_own_broker(store: rdm_tests::Store) -> TestMesh {
    TestMesh::start_with(store, |s| {
        let mut flags = rdm::EPHEMERAL_SERVICE_LISTENERS.to_vec();
        flags.extend(["--usp-mqtt-url", "mqtt://127.0.0.1:1883"]);
        s.services = rdm::service_settings(&flags).expect("service flags parse");
    })
    .await
}

/// A CA, and certificates it signed, in files for rdm and Mosquitto.
struct Pki {
    dir: tempfile::TempDir,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rdm test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        };
        std::fs::write(pki.path("ca.pem"), pki.issuer.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A certificate with `sans` (host names, or `urn:` URIs), in
    /// `<name>.pem` and `<name>.key`; the certificate and its key.
    fn issue(
        &self,
        name: &str,
        sans: &[&str],
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        for san in sans {
            params
                .subject_alt_names
                .push(match san.strip_prefix("urn:") {
                    Some(_) => rcgen::SanType::URI(san.to_string().try_into().unwrap()),
                    None => rcgen::SanType::DnsName(san.to_string().try_into().unwrap()),
                });
        }
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (cert.der().clone(), der)
    }

    /// A client trusting this CA, showing `cert` when given.
    fn client(
        &self,
        cert: Option<(
            rustls::pki_types::CertificateDer<'static>,
            rustls::pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        std::sync::Arc::new(match cert {
            Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
            None => builder.with_no_client_auth(),
        })
    }
}

/// A Mosquitto of the test's own: plain MQTT on one port (for the
/// simulated agents), TLS with the `broker` certificate on another (for
/// rdm); stopped when dropped.
struct TlsBroker {
    plain: u16,
    tls: u16,
    _child: tokio::process::Child,
}

async fn tls_broker(pki: &Pki) -> TlsBroker {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (plain, tls) = (free(), free());
    let config = format!(
        "listener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nallow_anonymous true\n",
        pki.path("ca.pem"),
        pki.path("broker.pem"),
        pki.path("broker.key"),
    );
    std::fs::write(pki.path("mosquitto.conf"), config).unwrap();
    let child = tokio::process::Command::new("mosquitto")
        .args(["-c", &pki.path("mosquitto.conf")])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mosquitto runs (./test.sh installs it)");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", tls))
            .await
            .is_ok()
        {
            return TlsBroker {
                plain,
                tls,
                _child: child,
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the TLS Mosquitto did not listen within 5 s");
}

/// TLS on every MTP: rdm connects to an `mqtts://` broker and a `wss://`
/// agent, checking their certificates for the URL's host name (the
/// address connected to is the one the policy vetted); agents connect to
/// rdm over `wss://` with client certificates, each taken only for the
/// endpoint id its certificate names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_mtp() {
    let pki = Pki::new();
    let (server_cert, server_key) = pki.issue("broker", &["localhost"]);
    let flags = [
        "--usp-tls-ca-file",
        &pki.path("ca.pem"),
        "--usp-websocket-tls-cert",
        &pki.path("broker.pem"),
        "--usp-websocket-tls-key",
        &pki.path("broker.key"),
        "--usp-websocket-client-ca",
        &pki.path("ca.pem"),
    ]
    .map(str::to_owned);
    let mesh = TestMesh::start_with(rdm_tests::Store::Sqlite, |s| {
        let mut all: Vec<String> = rdm::EPHEMERAL_SERVICE_LISTENERS.map(str::to_owned).to_vec();
        all.extend(flags);
        s.services = rdm::service_settings(&all).expect("service flags parse");
    })
    .await;
    let (tenant, token) = mesh.tenant_with_admin("usp-tls").await;
    mesh.allow_targets(&tenant, &["127.0.0.1/32"]).await;

    // mqtts://: the agent on the broker's plain port, rdm on its TLS port.
    let broker = tls_broker(&pki).await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let eid = format!("os::012345-{}", &run[..12]);
    let topic = format!("usp/agent/{run}");
    let agent = usp_agent::start(
        "127.0.0.1",
        broker.plain,
        &eid,
        &topic,
        "usp/controller/rdm",
        "self::rdm",
    )
    .await
    .expect("the agent subscribes");
    let endpoint = |broker_url: String| {
        json!({"transport": "mqtt", "endpoint_id": eid, "timeout_ms": 3000,
        "mqtt": {"broker_url": broker_url, "agent_topic": topic}})
    };
    let id = device(
        &mesh,
        &token,
        "tls-mqtt",
        endpoint(format!("mqtts://localhost:{}", broker.tls)),
    )
    .await;
    answers(&mesh, &token, json!({"device_id": id}), &agent).await;
    // The same broker by its address: its certificate does not name it.
    let (status, e) = mesh
        .call(
            Method::PUT,
            &format!("/v1/devices/{id}/endpoints/usp"),
            Some(&token),
            Some(endpoint(format!("mqtts://127.0.0.1:{}", broker.tls))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{e}");
    let e = get_fails(
        &mesh,
        &token,
        &id,
        StatusCode::SERVICE_UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
    )
    .await;
    assert!(
        e["detail"]
            .as_str()
            .unwrap()
            .contains("certificate not valid for name"),
        "{e}"
    );

    // wss:// to an agent's own server.
    let ws_eid = format!("os::012345-ws{}", &run[..10]);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![server_cert], server_key)
        .unwrap();
    let served = usp_agent::serve_websocket_tls(&ws_eid, std::sync::Arc::new(server))
        .await
        .unwrap();
    let endpoint = json!({"transport": "websocket", "endpoint_id": ws_eid, "websocket_url": served.websocket_url});
    let id = device(&mesh, &token, "tls-ws-server", endpoint).await;
    answers(&mesh, &token, json!({"device_id": id}), &served).await;

    // wss:// to rdm, with a client certificate naming the agent.
    let in_eid = format!("os::012345-in{}", &run[..10]);
    let endpoint = json!({"transport": "websocket", "endpoint_id": in_eid});
    device(&mesh, &token, "tls-ws-client", endpoint).await;
    let url = format!("wss://localhost:{}/usp", mesh.usp_websocket.port());
    let named = pki.issue("agent", &[&format!("urn:bbf:usp:id:{in_eid}")]);
    let client = pki.client(Some(named));
    let agent = usp_agent::connect_websocket_tls(&url, &in_eid, client.clone())
        .await
        .expect("an agent with its certificate connects");
    answers(&mesh, &token, json!({"endpoint_id": in_eid}), &agent).await;
    // Its certificate does not make it another agent, and no certificate
    // gets nobody in.
    let e = usp_agent::connect_websocket_tls(&url, &eid, client)
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("403"), "{e}");
    assert!(
        usp_agent::connect_websocket_tls(&url, &in_eid, pki.client(None))
            .await
            .is_err()
    );
}

mod auto_registration {
    use rdm_tests::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        super::agents_register_themselves(super::with_own_broker(Store::Sqlite).await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        super::agents_register_themselves(super::with_own_broker(Store::Postgres).await).await
    }
}

on_both_stores!(
    every_request_through_the_gateway,
    an_mqtt_3_1_1_agent,
    absent_agents_and_other_transports,
    subscriptions_bring_notifications_to_their_tenant,
    every_request_over_websocket
);

/// Two `rdm serve usp` replicas (the Kubernetes shape) controlling the
/// same agent at once: each has its own reply topic on the broker, so each
/// gets its own replies, through a gateway of its own. Both take the
/// agent's notifications on the controller topic; each is stored once, and
/// a watcher of either replica sees it. An agent on WebSocket connects to
/// one replica: requests reaching the other are relayed to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_usp_replicas_share_the_agents() {
    use rdm_tests::{SendJson, Split, admin_on_loopback};
    let split = Split::start(&[]).await;
    let agent = agent().await;
    let settings = [
        ("RDM_DATABASE_URL", split.pg.app_url.clone()),
        ("RDM_DATABASE_ADMIN_URL", split.pg.admin_url.clone()),
        ("RDM_USP_CONTROLLER_TOPIC", agent.controller_topic.clone()),
        ("RDM_USP_WEBSOCKET_LISTEN", "127.0.0.1:0".into()),
    ];
    let mut bases = Vec::new();
    let mut processes = Vec::new();
    for _ in 0..2 {
        let usp = split.serve("usp", &settings).await;
        let gateway = split
            .serve(
                "gateway",
                &[("RDM_USP_URL", format!("http://{}", usp.addr))],
            )
            .await;
        bases.push(gateway.url(""));
        processes.push((usp, gateway));
    }
    let http = reqwest::Client::new();
    let token = admin_on_loopback(&http, &bases[0]).await;
    let device = http
        .post(format!("{}/v1/devices", bases[0]))
        .bearer_auth(&token)
        .json(&json!({"name": "shared-agent"}))
        .send_json()
        .await;
    let id = device["id"].as_str().unwrap_or_else(|| panic!("{device}"));
    let put = http
        .put(format!("{}/v1/devices/{id}/endpoints/usp", bases[0]))
        .bearer_auth(&token)
        .json(&mqtt_endpoint(&agent.endpoint_id, &agent.topic, 5000))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    // Ten Gets at once through each replica.
    let calls = (0..20).map(|i| {
        let (http, base, token) = (http.clone(), bases[i % 2].clone(), token.clone());
        let body =
            json!({"target": {"device_id": id}, "paths": ["Device.DeviceInfo.SerialNumber"]});
        async move {
            http.post(format!("{base}/v1/usp/get"))
                .bearer_auth(&token)
                .json(&body)
                .send_json()
                .await
        }
    });
    for reply in futures::future::join_all(calls).await {
        let serial = &reply["req_path_results"][0]["resolved_path_results"][0]["result_params"]["SerialNumber"];
        assert_eq!(
            serial.as_str(),
            agent.endpoint_id.rsplit('-').next(),
            "{reply}"
        );
    }

    // Subscribed through one replica, changed through the other: the
    // watcher of either sees the ValueChange once.
    let post = |base: &str, path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send_json()
    };
    let sub = post(&bases[0], "/v1/usp/subscriptions", json!({"target": {"device_id": id},
        "notif_type": "ValueChange", "reference_list": ["Device.WiFi.SSID.1.SSID"], "notif_retry": true})).await["subscription"].clone();
    let mut watchers = Vec::new();
    for base in &bases {
        watchers.push(NdJson::get(&http, &format!("{base}/v1/usp/notifications"), &token).await);
    }
    post(
        &bases[1],
        "/v1/usp/set",
        json!({"target": {"device_id": id}, "update_objs": [{"obj_path": "Device.WiFi.SSID.1.",
        "param_settings": [{"param": "SSID", "value": "replicated", "required": true}]}]}),
    )
    .await;
    for lines in &mut watchers {
        let n = &lines.next(1).await[0];
        assert_eq!(n["notify"]["subscription_id"], sub["id"], "{n}");
        assert_eq!(
            n["notify"]["value_change"]["param_value"], "replicated",
            "{n}"
        );
    }
    let mut late = NdJson::get(
        &http,
        &format!("{}/v1/usp/notifications?replay_minutes=5", bases[1]),
        &token,
    )
    .await;
    assert_eq!(
        late.next(1).await[0]["notify"]["subscription_id"],
        sub["id"]
    );
    let again = late.next_within(Duration::from_millis(1500)).await;
    assert_eq!(again, None, "stored twice");

    // A WebSocket agent held by the first replica answers through both.
    let listener = processes[0]
        .0
        .listener("usp-websocket")
        .expect("a WebSocket listener");
    let ws_agent = usp_agent::connect_websocket(
        &format!("ws://{listener}/usp"),
        &format!(
            "os::012345-WSRELAY{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        ),
    )
    .await
    .unwrap();
    let ws_device = http
        .post(format!("{}/v1/devices", bases[0]))
        .bearer_auth(&token)
        .json(&json!({"name": "ws-agent"}))
        .send_json()
        .await;
    let ws_id = ws_device["id"].as_str().unwrap().to_owned();
    let put = http
        .put(format!("{}/v1/devices/{ws_id}/endpoints/usp", bases[0]))
        .bearer_auth(&token)
        .json(&json!({"transport": "websocket", "endpoint_id": ws_agent.endpoint_id, "timeout_ms": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let serial = ws_agent.endpoint_id.rsplit('-').next().unwrap();
    for base in &bases {
        let reply = post(
            base,
            "/v1/usp/get",
            json!({"target": {"device_id": ws_id},
            "paths": ["Device.DeviceInfo.SerialNumber"]}),
        )
        .await;
        assert_eq!(
            reply["req_path_results"][0]["resolved_path_results"][0]["result_params"]["SerialNumber"],
            serial,
            "{base}: {reply}"
        );
    }
    // Gone: both say DEVICE_OFFLINE.
    drop(ws_agent);
    for base in &bases {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let code = loop {
            let reply = http
                .post(format!("{base}/v1/usp/get"))
                .bearer_auth(&token)
                .json(&json!({"target": {"device_id": ws_id}, "paths": ["Device."]}))
                .send()
                .await
                .unwrap();
            let (status, body): (StatusCode, Value) = (reply.status(), reply.json().await.unwrap());
            if status != StatusCode::OK || tokio::time::Instant::now() > deadline {
                break (status, body["code"].clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            code,
            (StatusCode::SERVICE_UNAVAILABLE, json!("DEVICE_OFFLINE")),
            "{base}"
        );
    }

    // Both replicas go and a new one comes up: it reaches the subscribed
    // agent's broker at start (as the user who subscribed), so what the
    // device changes on its own is stored before any request is made.
    for (usp, _) in &mut processes {
        usp.child.kill().await.unwrap();
    }
    let usp = split.serve("usp", &settings).await;
    let gateway = split
        .serve(
            "gateway",
            &[("RDM_USP_URL", format!("http://{}", usp.addr))],
        )
        .await;
    let url = format!("{}/v1/usp/notifications", gateway.url(""));
    let mut watcher = NdJson::get(&http, &url, &token).await;
    let mut seen = None;
    for i in 0..30 {
        agent.change("Device.WiFi.SSID.1.SSID", &format!("restarted-{i}"));
        seen = watcher.next_within(Duration::from_millis(300)).await;
        if seen.is_some() {
            break;
        }
    }
    let n = seen.expect("the new replica took no notification");
    assert_eq!(n["notify"]["subscription_id"], sub["id"], "{n}");
}
