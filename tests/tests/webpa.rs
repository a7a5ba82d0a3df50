//! The WebPA service through the gateway (REST), against the tr1d1um
//! simulator (tests/sims), on SQLite and PostgreSQL.
use rdm_sims::webpa::{self, Credentials, WebpaSim};
use rdm_tests::{TestMesh, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The simulator's first device, and a second on the same server.
const GW1: &str = "mac:112233445566";
const GW2: &str = "mac:112233445567";

async fn sim() -> WebpaSim {
    webpa::start(
        ([127, 0, 0, 1], 0).into(),
        Credentials::default(),
        &[(GW1, "SN-1", "gateway one"), (GW2, "SN-2", "gateway two")],
    )
    .await
    .expect("the simulator starts")
}

/// An endpoint for `device_id` on `sim`, signing in with basic auth.
fn endpoint(sim: &WebpaSim, device_id: &str) -> Value {
    let c = Credentials::default();
    json!({"base_url": sim.base_url(), "device_id": device_id, "timeout_ms": 2000, "retries": 1,
           "auth": {"type": "basic", "username": c.basic.0, "password": c.basic.1}})
}

/// A device of the token's tenant with `endpoint` as its webpa endpoint.
async fn device(mesh: &TestMesh, token: &str, name: &str, endpoint: Value) -> String {
    let device = json!({"name": name, "serial": name});
    mesh.device_with_endpoint(token, device, "webpa", endpoint)
        .await
}

fn by_name<'a>(params: &'a Value, name: &str) -> &'a Value {
    params["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {params}"))
}

async fn every_rpc_against_the_simulator(mesh: TestMesh) {
    let sim = sim().await;
    let token = mesh.token("demo", "demo", "demo").await;
    let id = device(&mesh, &token, "gw-1", endpoint(&sim, GW1)).await;
    let target = json!({"device_id": id});

    // Typed values, a partial path flattened in.
    let (status, got) = mesh
        .post(
            "/v1/webpa/get",
            &token,
            json!({"target": target, "names": ["Device.DeviceInfo.", "Device.WiFi.SSID.1.Enable"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        by_name(&got, "Device.DeviceInfo.SerialNumber"),
        &json!({"name": "Device.DeviceInfo.SerialNumber", "value": "SN-1", "data_type": "string"})
    );
    let typed = [
        ("Device.WiFi.SSID.1.Enable", json!(true), "boolean"),
        ("Device.DeviceInfo.UpTime", json!(86400), "unsignedInt"),
        (
            "Device.DeviceInfo.X_RDKCENTRAL-COM_BootCount",
            json!(-3),
            "int",
        ),
        (
            "Device.DeviceInfo.X_RDKCENTRAL-COM_Temperature",
            json!(41.5),
            "double",
        ),
        // Beyond 2^53: a string, every digit kept.
        (
            "Device.DeviceInfo.X_RDKCENTRAL-COM_BytesSent",
            json!("18446744073709551615"),
            "unsignedLong",
        ),
        (
            "Device.DeviceInfo.X_RDKCENTRAL-COM_Blob",
            json!("aGVsbG8="),
            "blob",
        ),
    ];
    for (name, value, data_type) in &typed {
        let p = by_name(&got, name);
        assert_eq!(
            (&p["value"], p["data_type"].as_str()),
            (value, Some(*data_type))
        );
    }
    assert!(
        got["transaction_id"].as_str().unwrap().starts_with("sim-"),
        "{got}"
    );

    // Typed values the other way; data types by name or number.
    let (status, set) = mesh
        .post(
            "/v1/webpa/set",
            &token,
            json!({"target": target, "parameters": [
                {"name": "Device.WiFi.SSID.1.Enable", "value": false, "data_type": "boolean"},
                {"name": "Device.WiFi.SSID.1.Channel", "value": 11, "data_type": "2"},
                {"name": "Device.WiFi.SSID.1.SSID", "value": "café", "data_type": "string"},
                {"name": "Device.DeviceInfo.X_RDKCENTRAL-COM_BootCount", "value": "-7", "data_type": "int"},
                {"name": "Device.DeviceInfo.X_RDKCENTRAL-COM_Blob", "value": "AAEC", "data_type": "blob"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{set}");
    assert_eq!(set["parameters"][1]["data_type"], "unsignedInt");
    for (name, value) in [
        ("Device.WiFi.SSID.1.Enable", "false"),
        ("Device.WiFi.SSID.1.Channel", "11"),
        ("Device.WiFi.SSID.1.SSID", "café"),
        ("Device.DeviceInfo.X_RDKCENTRAL-COM_BootCount", "-7"),
        ("Device.DeviceInfo.X_RDKCENTRAL-COM_Blob", "AAEC"),
    ] {
        assert_eq!(sim.value(GW1, name).as_deref(), Some(value), "{name}");
    }

    // Test-and-set: applied when the CID matches, refused with the current
    // one when it does not (and nothing changes).
    let tas = |old: &str, new: &str, ssid: &str| {
        json!({"target": target,
               "parameters": [{"name": "Device.WiFi.SSID.2.SSID", "value": ssid, "data_type": "string"}],
               "test_and_set": {"old_cid": old, "new_cid": new, "sync_cmc": "4"}})
    };
    let (status, body) = mesh
        .post("/v1/webpa/set", &token, tas("", "cid-a", "one"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["new_cid"], "cid-a");
    let (status, body) = mesh
        .post("/v1/webpa/set", &token, tas("cid-a", "cid-b", "two"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = mesh
        .post("/v1/webpa/set", &token, tas("cid-a", "cid-c", "three"))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        (&body["code"], &body["current_cid"], &body["webpa_status"]),
        (&json!("CONFLICT"), &json!("cid-b"), &json!("550"))
    );
    assert_eq!(
        sim.value(GW1, "Device.WiFi.SSID.2.SSID").as_deref(),
        Some("two")
    );
    assert_eq!(
        sim.value(GW1, "Device.DeviceInfo.Webpa.X_COMCAST-COM_CMC")
            .as_deref(),
        Some("4")
    );

    // Attributes.
    let (status, body) = mesh
        .post(
            "/v1/webpa/set-attributes",
            &token,
            json!({"target": target, "parameters": [{"name": "Device.WiFi.SSID.1.SSID", "attributes": {"notify": 1}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = mesh
        .post(
            "/v1/webpa/get-attributes",
            &token,
            json!({"target": target, "names": ["Device.WiFi.SSID.1.SSID", "Device.WiFi.SSID.2.SSID"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["parameters"],
        json!([{"name": "Device.WiFi.SSID.1.SSID", "attributes": {"notify": 1}},
               {"name": "Device.WiFi.SSID.2.SSID", "attributes": {"notify": 0}}])
    );

    // Tables: add, replace, delete.
    let table = "Device.NAT.PortMapping.";
    let (status, body) = mesh
        .post(
            "/v1/webpa/add-row",
            &token,
            json!({"target": target, "table": table, "values": {"Description": "ssh", "ExternalPort": "2222"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["row"], "Device.NAT.PortMapping.2.");
    assert_eq!(
        sim.value(GW1, "Device.NAT.PortMapping.2.ExternalPort")
            .as_deref(),
        Some("2222")
    );
    let (status, body) = mesh
        .post(
            "/v1/webpa/delete-row",
            &token,
            json!({"target": target, "row": "Device.NAT.PortMapping.1."}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(sim.value(GW1, "Device.NAT.PortMapping.1.Description"), None);
    let (status, body) = mesh
        .post(
            "/v1/webpa/replace-rows",
            &token,
            json!({"target": target, "table": table, "rows": [
                {"values": {"Description": "web", "ExternalPort": "80"}},
                {"values": {"Description": "mail", "ExternalPort": "25"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, rows) = mesh
        .post(
            "/v1/webpa/get",
            &token,
            json!({"target": target, "names": [table]}),
        )
        .await;
    let names: Vec<&str> = rows["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Device.NAT.PortMapping.1.Description",
            "Device.NAT.PortMapping.1.ExternalPort",
            "Device.NAT.PortMapping.2.Description",
            "Device.NAT.PortMapping.2.ExternalPort"
        ]
    );
    // Deleting a row that is gone is the device's 520.
    let (status, body) = mesh
        .post(
            "/v1/webpa/delete-row",
            &token,
            json!({"target": target, "row": "Device.NAT.PortMapping.9."}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}

async fn every_auth_scheme_and_wrong_credentials(mesh: TestMesh) {
    let sim = sim().await;
    let token = mesh.token("demo", "demo", "demo").await;
    let c = Credentials::default();
    let with_auth = |auth: Value| {
        let mut e = endpoint(&sim, GW2);
        e["auth"] = auth;
        e
    };
    let schemes = [
        (
            "basic",
            json!({"type": "basic", "username": c.basic.0, "password": c.basic.1}),
        ),
        ("bearer", json!({"type": "bearer", "token": c.bearer})),
        (
            "api_key",
            json!({"type": "api_key", "header": c.api_key.0, "key": c.api_key.1}),
        ),
    ];
    for (name, auth) in schemes {
        let id = device(&mesh, &token, &format!("gw-{name}"), with_auth(auth)).await;
        let (status, body) = mesh
            .post(
                "/v1/webpa/get",
                &token,
                json!({"target": {"device_id": id}, "names": ["Device.DeviceInfo.ModelName"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["parameters"][0]["value"], "gateway two", "{name}");
    }
    // A wrong key is XMiDT refusing rdm, not the caller: 502, the key never shown.
    let wrong =
        with_auth(json!({"type": "api_key", "header": c.api_key.0, "key": "wrong-key-123"}));
    let id = device(&mesh, &token, "gw-wrong", wrong.clone()).await;
    for target in [json!({"device_id": id}), json!({"endpoint": wrong})] {
        let (status, body) = mesh
            .post(
                "/v1/webpa/get",
                &token,
                json!({"target": target, "names": ["Device.DeviceInfo.ModelName"]}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["code"], "UPSTREAM_AUTH");
        assert!(!body.to_string().contains("wrong-key-123"), "{body}");
    }
    // No credentials at all.
    let (status, body) = mesh
        .post(
            "/v1/webpa/get",
            &token,
            json!({"target": {"endpoint": with_auth(json!({"type": "none"}))}, "names": ["Device.DeviceInfo.ModelName"]}),
        )
        .await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::BAD_GATEWAY, &json!("UPSTREAM_AUTH"))
    );
}

async fn device_targets_stay_in_their_tenant(mesh: TestMesh) {
    let sim = sim().await;
    let token = mesh.token("demo", "demo", "demo").await;
    let id = device(&mesh, &token, "gw-1", endpoint(&sim, GW1)).await;
    let get = |target: Value| json!({"target": target, "names": ["Device.DeviceInfo.ModelName"]});

    // Another tenant: the device is not found, and its loopback inline
    // endpoint is refused by the address policy (nothing allowed to it).
    let (other_id, other) = mesh.tenant_with_admin("other").await;
    let (status, body) = mesh
        .post("/v1/webpa/get", &other, get(json!({"device_id": id})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = mesh
        .post(
            "/v1/webpa/get",
            &other,
            get(json!({"endpoint": endpoint(&sim, GW1)})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["rule"], "loopback", "{body}");
    assert_eq!(body["field"], "target.endpoint.base_url", "{body}");
    // Allowed, it works.
    mesh.allow_targets(&other_id, &["127.0.0.0/8"]).await;
    let (status, body) = mesh
        .post(
            "/v1/webpa/get",
            &other,
            get(json!({"endpoint": endpoint(&sim, GW1)})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // rdm's own ports are refused whatever the tenant is allowed.
    let mut own = endpoint(&sim, GW1);
    own["base_url"] = json!(format!("http://{}", mesh.gateway));
    let (status, body) = mesh
        .post("/v1/webpa/get", &other, get(json!({"endpoint": own})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // A viewer reads but does not write.
    let admin = mesh.admin_token().await;
    let (status, body) = mesh
        .post(
            &format!("/v1/tenants/{other_id}/users"),
            &admin,
            json!({"username": "vera", "password": "vera-password", "roles": ["viewer"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let viewer = mesh.token("other", "vera", "vera-password").await;
    let inline = json!({"endpoint": endpoint(&sim, GW1)});
    let (status, _) = mesh
        .post("/v1/webpa/get", &viewer, get(inline.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    let writes = sim.writes(GW1);
    let (status, body) = mesh
        .post(
            "/v1/webpa/set",
            &viewer,
            json!({"target": inline, "parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "x", "data_type": "string"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(sim.writes(GW1), writes, "nothing was sent");
}

on_both_stores!(
    every_rpc_against_the_simulator,
    every_auth_scheme_and_wrong_credentials,
    device_targets_stay_in_their_tenant,
);

async fn demo() -> (TestMesh, String, WebpaSim) {
    let mesh = TestMesh::start(rdm_tests::Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    (mesh, token, sim().await)
}

/// A device on the simulator that misbehaves as `xmidt_id` does.
fn on(sim: &WebpaSim, xmidt_id: &str) -> Value {
    json!({"endpoint": endpoint(sim, xmidt_id)})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_status_code_keeps_its_meaning() {
    let (mesh, token, sim) = demo().await;
    let read = |target: Value, name: &str| json!({"target": target, "names": [name]});
    let write = |target: Value| json!({"target": target, "parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "x", "data_type": "string"}]});
    let cases = [
        (
            "busy (530)",
            read(on(&sim, webpa::BUSY), "Device.DeviceInfo.ModelName"),
            StatusCode::SERVICE_UNAVAILABLE,
            "DEVICE_BUSY",
        ),
        (
            "in progress (202 in a 200)",
            write(on(&sim, webpa::IN_PROGRESS)),
            StatusCode::SERVICE_UNAVAILABLE,
            "DEVICE_BUSY",
        ),
        (
            "XMiDT gave up (504)",
            read(on(&sim, webpa::TIMING_OUT), "Device.DeviceInfo.ModelName"),
            StatusCode::GATEWAY_TIMEOUT,
            "DEVICE_TIMEOUT",
        ),
        (
            "XMiDT unavailable (503)",
            read(on(&sim, webpa::UNAVAILABLE), "Device.DeviceInfo.ModelName"),
            StatusCode::SERVICE_UNAVAILABLE,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            "not connected (404)",
            read(on(&sim, webpa::OFFLINE), "Device.DeviceInfo.ModelName"),
            StatusCode::SERVICE_UNAVAILABLE,
            "DEVICE_OFFLINE",
        ),
        (
            "invalid name (520)",
            read(on(&sim, GW1), "Device.DeviceInfo.NoSuchThing"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "DEVICE_ERROR",
        ),
        (
            "wildcard on attributes (520)",
            read(on(&sim, GW1), "Device.DeviceInfo.NoSuchThing."),
            StatusCode::UNPROCESSABLE_ENTITY,
            "DEVICE_ERROR",
        ),
    ];
    for (what, body, status, code) in cases {
        let path = if body.get("parameters").is_some() {
            "/v1/webpa/set"
        } else {
            "/v1/webpa/get"
        };
        let (got, reply) = mesh.post(path, &token, body).await;
        assert_eq!(
            (got, reply["code"].as_str()),
            (status, Some(code)),
            "{what}: {reply}"
        );
        assert!(
            reply["transaction_id"]
                .as_str()
                .is_some_and(|t| t.starts_with("sim-")),
            "{what}: {reply}"
        );
    }
    // Busy says when to try again.
    let resp = mesh
        .http
        .post(mesh.url("/v1/webpa/get"))
        .bearer_auth(&token)
        .json(&read(on(&sim, webpa::BUSY), "Device.DeviceInfo.ModelName"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");

    // Not writable: the device's 520 names the parameter; nothing changed.
    let (status, body) = mesh
        .post(
            "/v1/webpa/set",
            &token,
            json!({"target": on(&sim, GW1), "parameters": [
                {"name": "Device.WiFi.SSID.1.SSID", "value": "changed", "data_type": "string"},
                {"name": "Device.DeviceInfo.SerialNumber", "value": "x", "data_type": "string"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        (&body["parameter"], &body["webpa_status"]),
        (&json!("Device.DeviceInfo.SerialNumber"), &json!("520"))
    );
    assert_eq!(
        sim.value(GW1, "Device.WiFi.SSID.1.SSID").as_deref(),
        Some("home")
    );

    // No XMiDT at all: nothing listens on the port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut gone = endpoint(&sim, GW1);
    gone["base_url"] = json!(format!("http://127.0.0.1:{port}"));
    let (status, body) = mesh
        .post(
            "/v1/webpa/get",
            &token,
            read(json!({"endpoint": gone}), "Device.DeviceInfo.ModelName"),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "UPSTREAM_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_do_not_fit_are_400s_before_sending() {
    let (mesh, token, sim) = demo().await;
    let set = |param: Value| json!({"target": on(&sim, GW1), "parameters": [param]});
    let cases = [
        (
            json!({"name": "Device.WiFi.SSID.1.Enable", "value": "maybe", "data_type": "boolean"}),
            "parameters[0].value",
            "is not a boolean",
        ),
        (
            json!({"name": "Device.WiFi.SSID.1.Channel", "value": -1, "data_type": "unsignedInt"}),
            "parameters[0].value",
            "is not a unsignedInt",
        ),
        (
            json!({"name": "Device.WiFi.SSID.1.Channel", "value": 1.5, "data_type": "int"}),
            "parameters[0].value",
            "whole number",
        ),
        (
            json!({"name": "Device.WiFi.SSID.1.SSID", "value": true, "data_type": "string"}),
            "parameters[0].value",
            "cannot be a boolean",
        ),
        (
            json!({"name": "Device.Time.CurrentLocalTime", "value": "noon", "data_type": "dateTime"}),
            "parameters[0].value",
            "is not a dateTime",
        ),
        (
            json!({"name": "Device.WiFi.SSID.1.SSID", "value": "x", "data_type": "integer"}),
            "parameters[0].data_type",
            "",
        ),
        (
            json!({"name": "Device.WiFi.SSID.1.SSID", "value": "x", "data_type": "11"}),
            "parameters[0].data_type",
            "",
        ),
        (
            json!({"name": "Device.WiFi.SSID.", "value": "x", "data_type": "string"}),
            "parameters[0].name",
            "partial paths",
        ),
        (
            json!({"name": "Device.WiFi.SSID.1.SSID", "value": "", "data_type": "string"}),
            "parameters[0].value",
            "empty",
        ),
        (
            json!({"name": "Device.Wi Fi", "value": "x", "data_type": "string"}),
            "parameters[0].name",
            "",
        ),
    ];
    for (param, field, says) in cases {
        let (status, body) = mesh.post("/v1/webpa/set", &token, set(param.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{param}: {body}");
        assert_eq!(body["field"], field, "{param}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(says),
            "{param}: {body}"
        );
    }
    for (path, body, field) in [
        (
            "/v1/webpa/get",
            json!({"target": on(&sim, GW1), "names": []}),
            "names",
        ),
        ("/v1/webpa/get", json!({"names": ["Device."]}), "target"),
        (
            "/v1/webpa/add-row",
            json!({"target": on(&sim, GW1), "table": "Device.NAT.PortMapping"}),
            "table",
        ),
        (
            "/v1/webpa/set",
            json!({"target": on(&sim, GW1), "parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "x"}],
                   "test_and_set": {"old_cid": "a"}}),
            "test_and_set.new_cid",
        ),
    ] {
        let (status, reply) = mesh.post(path, &token, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
        assert_eq!(reply["field"], field, "{body}: {reply}");
    }
    // validate: true checks each value against TR-181 first.
    for (param, field, code) in [
        (
            json!({"name": "Device.WiFi.SSID.1.SSID", "value": "x".repeat(33), "data_type": "string"}),
            "parameters[0].value",
            "too_long",
        ),
        (
            json!({"name": "Device.DeviceInfo.SerialNumber", "value": "x", "data_type": "string"}),
            "parameters[0].name",
            "read_only",
        ),
        (
            json!({"name": "Device.ManagementServer.PeriodicInformInterval", "value": 0, "data_type": "unsignedInt"}),
            "parameters[0].value",
            "out_of_range",
        ),
    ] {
        let mut body = set(param.clone());
        body["validate"] = json!(true);
        let (status, reply) = mesh.post("/v1/webpa/set", &token, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{param}: {reply}");
        assert_eq!(
            (&reply["field"], &reply["validation"]),
            (&json!(field), &json!(code)),
            "{reply}"
        );
    }
    assert_eq!(sim.writes(GW1), 0, "nothing reached the device");
    let ok = json!({"target": on(&sim, GW1), "validate": true,
                    "parameters": [{"name": "Device.WiFi.SSID.1.SSID", "value": "valid", "data_type": "string"}]});
    let (status, reply) = mesh.post("/v1/webpa/set", &token, ok).await;
    assert_eq!(status, StatusCode::OK, "a valid set goes through: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_accepted_and_timed_out_is_not_sent_again() {
    let (mesh, token, sim) = demo().await;
    let mut slow = endpoint(&sim, webpa::SLOW);
    slow["timeout_ms"] = json!(300);
    slow["retries"] = json!(3);
    let (status, body) = mesh
        .post(
            "/v1/webpa/set",
            &token,
            json!({"target": {"endpoint": slow.clone()}, "parameters": [
                {"name": "Device.WiFi.SSID.1.SSID", "value": "once", "data_type": "string"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["code"], "DEVICE_TIMEOUT");
    // The device applies it when its delay is over: once.
    for _ in 0..50 {
        if sim.value(webpa::SLOW, "Device.WiFi.SSID.1.SSID").as_deref() == Some("once") {
            break;
        }
        tokio::time::sleep(webpa::SLOW_DELAY / 10).await;
    }
    assert_eq!(
        sim.value(webpa::SLOW, "Device.WiFi.SSID.1.SSID").as_deref(),
        Some("once")
    );
    assert_eq!(sim.writes(webpa::SLOW), 1, "the set was sent once");

    // A busy device did nothing: a write is sent again, up to `retries`.
    let mut busy = endpoint(&sim, webpa::IN_PROGRESS);
    busy["retries"] = json!(2);
    let (status, _) = mesh
        .post(
            "/v1/webpa/set",
            &token,
            json!({"target": {"endpoint": busy}, "parameters": [
                {"name": "Device.WiFi.SSID.1.SSID", "value": "x", "data_type": "string"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        sim.writes(webpa::IN_PROGRESS),
        3,
        "one send and two retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_devices_answer_through_webpa() {
    let mesh = TestMesh::start_with_demo_devices(rdm_tests::Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    for name in ["demo-cpe-1", "demo-cpe-2"] {
        let (_, list) = mesh
            .get(&format!("/v1/devices?name_prefix={name}"), &token)
            .await;
        let id = list["devices"][0]["id"].as_str().unwrap();
        let (status, body) = mesh
            .post(
                "/v1/webpa/get",
                &token,
                json!({"target": {"device_id": id}, "names": ["Device.DeviceInfo.SerialNumber"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["parameters"][0]["value"], name);
    }
}

/// `rdm serve webpa` apart from the inventory and the gateway (the
/// Kubernetes shape): device targets work through the gateway, and the
/// process refuses its own port as a target, loopback allowed or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_webpa_as_its_own_process() {
    use rdm_tests::{SendJson, Split, admin_on_loopback};
    let split = Split::start(&[]).await;
    let webpa = split.serve("webpa", &[]).await;
    let gateway = split
        .serve(
            "gateway",
            &[("RDM_WEBPA_URL", format!("http://{}", webpa.addr))],
        )
        .await;
    let sim = sim().await;
    let http = reqwest::Client::new();
    let base = gateway.url("");
    let token = &admin_on_loopback(&http, &base).await;
    let device = http
        .post(format!("{base}/v1/devices"))
        .bearer_auth(token)
        .json(&json!({"name": "gw", "serial": GW1}))
        .send_json()
        .await;
    let id = device["id"].as_str().unwrap();
    let mut settings = endpoint(&sim, GW1);
    // The XMiDT id defaults to the device's serial.
    settings.as_object_mut().unwrap().remove("device_id");
    let put = http
        .put(format!("{base}/v1/devices/{id}/endpoints/webpa"))
        .bearer_auth(token)
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let got = http
        .post(format!("{base}/v1/webpa/get"))
        .bearer_auth(token)
        .json(&json!({"target": {"device_id": id}, "names": ["Device.DeviceInfo.SerialNumber"]}))
        .send_json()
        .await;
    assert_eq!(got["parameters"][0]["value"], "SN-1", "{got}");

    let mut own = endpoint(&sim, GW1);
    own["base_url"] = json!(format!("http://{}", webpa.addr));
    let refused = http
        .post(format!("{base}/v1/webpa/get"))
        .bearer_auth(token)
        .json(&json!({"target": {"endpoint": own}, "names": ["Device.DeviceInfo.SerialNumber"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("rdm's own listeners"),
        "{problem}"
    );
}
