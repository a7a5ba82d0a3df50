//! Devices, endpoints and bulk import/export, end to end through the gateway.
use rdm_tests::{TestMesh, connect_pg, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};

on_both_stores!(
    devices_are_created_filtered_paged_updated_and_deleted,
    endpoint_secrets_are_write_only_and_sealed_at_rest,
    bad_endpoints_and_devices_are_400s_that_store_nothing,
    another_tenants_devices_are_not_found_anywhere,
    import_is_all_or_nothing_and_export_round_trips,
    key_rotation_reseals_every_secret_while_serving,
);

async fn create(mesh: &TestMesh, token: &str, body: Value) -> Value {
    let (status, device) = mesh.post("/v1/devices", token, body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body} -> {device}");
    device
}

fn names(list: &Value) -> Vec<String> {
    let mut names: Vec<String> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

async fn devices_are_created_filtered_paged_updated_and_deleted(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let cpe = create(
        &mesh,
        &token,
        json!({"name": "cpe-1", "serial": "S1", "manufacturer": "Huawei", "model": "HG630", "address": "127.0.0.1",
               "labels": {"site": "ams", "env": "prod"}, "notes": "lab"}),
    )
    .await;
    assert_eq!(
        (cpe["serial"].as_str(), cpe["labels"]["site"].as_str()),
        (Some("S1"), Some("ams"))
    );
    assert_eq!(cpe["protocols"], json!([]));
    create(
        &mesh,
        &token,
        json!({"name": "cpe-2", "labels": {"site": "fra", "env": "prod", "rack": "r1"}}),
    )
    .await;
    create(
        &mesh,
        &token,
        json!({"name": "olt-1", "labels": {"site": "ams"}}),
    )
    .await;
    let id = cpe["id"].as_str().unwrap();
    let (status, _) = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{id}/endpoints/snmp"),
            Some(&token),
            Some(json!({"version": "2c", "community": "public"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    for (query, want) in [
        ("label_selector=site%3Dams", vec!["cpe-1", "olt-1"]),
        ("label_selector=site!%3Dams", vec!["cpe-2"]),
        ("label_selector=env%3Dprod,rack", vec!["cpe-2"]),
        ("label_selector=!env", vec!["olt-1"]),
        ("name_prefix=cpe", vec!["cpe-1", "cpe-2"]),
        ("protocol=snmp", vec!["cpe-1"]),
        ("protocol=snmp&label_selector=site%3Dfra", vec![]),
    ] {
        let (status, list) = mesh.get(&format!("/v1/devices?{query}"), &token).await;
        assert_eq!(status, StatusCode::OK, "{query}: {list}");
        assert_eq!(names(&list), want, "{query}");
    }
    let (_, one) = mesh.get("/v1/devices?protocol=snmp", &token).await;
    assert_eq!(one["devices"][0]["protocols"], json!(["snmp"]));

    let (_, first) = mesh.get("/v1/devices?page_size=2", &token).await;
    let next = first["next_page_token"].as_str().unwrap();
    let (_, second) = mesh
        .get(
            &format!("/v1/devices?page_size=2&page_token={next}"),
            &token,
        )
        .await;
    assert_eq!(
        first["devices"].as_array().unwrap().len() + second["devices"].as_array().unwrap().len(),
        3
    );
    assert_eq!(second["next_page_token"], "");

    let (status, updated) = mesh
        .patch(
            &format!("/v1/devices/{id}"),
            &token,
            json!({"firmware": "2.0", "labels": {"site": "lon"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        (updated["firmware"].as_str(), updated["serial"].as_str()),
        (Some("2.0"), Some("S1"))
    );
    assert_eq!(
        updated["labels"],
        json!({"site": "lon"}),
        "labels are replaced as a whole"
    );
    let (status, dup) = mesh
        .patch(
            &format!("/v1/devices/{id}"),
            &token,
            json!({"name": "cpe-2"}),
        )
        .await;
    assert_eq!(
        (status, dup["field"].as_str()),
        (StatusCode::CONFLICT, Some("name")),
        "{dup}"
    );

    assert_eq!(
        mesh.delete(&format!("/v1/devices/{id}"), &token).await.0,
        StatusCode::OK
    );
    assert_eq!(
        mesh.get(&format!("/v1/devices/{id}"), &token).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        mesh.get(&format!("/v1/devices/{id}/endpoints/snmp"), &token)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

const SECRETS: [&str; 3] = ["authpass-9f3a1c", "privpass-77d2e0", "bearer-tok-51aa"];

async fn endpoint_secrets_are_write_only_and_sealed_at_rest(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let device = create(
        &mesh,
        &token,
        json!({"name": "secretive", "address": "10.0.0.1"}),
    )
    .await;
    let id = device["id"].as_str().unwrap();
    let snmp = format!("/v1/devices/{id}/endpoints/snmp");
    let v3 = json!({"version": "3", "username": "snmpuser", "auth_protocol": "SHA", "auth_password": SECRETS[0],
        "priv_protocol": "AES", "priv_password": SECRETS[1], "port": 161, "timeout_ms": 5000, "retries": 3});
    let (status, put) = mesh
        .call(reqwest::Method::PUT, &snmp, Some(&token), Some(v3))
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(put["snmp"]["auth_password_set"], true);
    assert_eq!(put["snmp"]["priv_password_set"], true);
    assert!(put["snmp"].get("auth_password").is_none(), "{put}");
    assert_eq!(
        (
            put["snmp"]["timeout_ms"].as_i64(),
            put["snmp"]["security_level"].as_str()
        ),
        (Some(5000), Some("authPriv"))
    );
    let webpa = json!({"base_url": "http://127.0.0.1:9003", "device_id": "mac:112233445566", "auth": {"type": "bearer", "token": SECRETS[2]}});
    let (status, put) = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{id}/endpoints/webpa"),
            Some(&token),
            Some(webpa),
        )
        .await;
    assert_eq!(
        (status, &put["webpa"]["auth"]["token_set"]),
        (StatusCode::OK, &json!(true)),
        "{put}"
    );

    // Secrets left out keep their value; a changed port does not lose them.
    let (status, again) = mesh
        .call(reqwest::Method::PUT, &snmp, Some(&token), Some(json!({"version": "3", "username": "snmpuser", "auth_protocol": "SHA", "priv_protocol": "AES", "port": 1161})))
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (
            again["snmp"]["port"].as_i64(),
            &again["snmp"]["priv_password_set"]
        ),
        (Some(1161), &json!(true))
    );

    // Moving to v2c: the stored v3 passwords must be forgotten explicitly.
    let v2c = json!({"version": "2c", "community": "c2", "auth_password_set": false, "priv_password_set": false});
    let (status, body) = mesh
        .call(reqwest::Method::PUT, &snmp, Some(&token), Some(v2c))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["snmp"].get("auth_password_set"), None, "{body}");
    let (status, body) = mesh
        .call(
            reqwest::Method::PUT,
            &snmp,
            Some(&token),
            Some(json!({"version": "3", "username": "u"})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("community")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("community_set"),
        "{body}"
    );
    let v3 = json!({"version": "3", "username": "snmpuser", "community_set": false, "auth_protocol": "SHA", "auth_password": SECRETS[0], "priv_protocol": "AES", "priv_password": SECRETS[1]});
    assert_eq!(
        mesh.call(reqwest::Method::PUT, &snmp, Some(&token), Some(v3))
            .await
            .0,
        StatusCode::OK
    );

    // No reply anywhere carries a secret.
    let mut replies = vec![
        mesh.get(&snmp, &token).await.1.to_string(),
        mesh.get(&format!("/v1/devices/{id}"), &token)
            .await
            .1
            .to_string(),
        mesh.get("/v1/devices", &token).await.1.to_string(),
    ];
    for format in ["jsonl", "csv"] {
        let export = mesh
            .http
            .get(mesh.url(&format!("/v1/devices:export?format={format}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        replies.push(export.text().await.unwrap());
    }
    for reply in &replies {
        for secret in SECRETS {
            assert!(!reply.contains(secret), "{secret} leaked in {reply}");
        }
    }
    assert!(replies[3].contains("auth_password_set"), "{}", replies[3]);

    // At rest: not in any row as plaintext.
    let rows = match &mesh.pg {
        Some(pg) => {
            let mut conn = connect_pg(&pg.admin_url).await;
            let rows: Vec<(String, String)> =
                sqlx::query_as("select config, secrets from endpoints")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            rows.into_iter()
                .map(|(c, s)| format!("{c}{s}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        None => {
            // The SQLite files themselves, WAL included.
            let mut bytes = Vec::new();
            for entry in std::fs::read_dir(&mesh.data_dir).unwrap() {
                let path = entry.unwrap().path();
                if path
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("inventory.db")
                {
                    bytes.extend(std::fs::read(path).unwrap());
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
    };
    assert!(rows.contains("snmpuser"), "the rows were read");
    for secret in SECRETS {
        assert!(!rows.contains(secret), "{secret} stored in plaintext");
    }
}

async fn bad_endpoints_and_devices_are_400s_that_store_nothing(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let device = create(&mesh, &token, json!({"name": "target"})).await;
    let id = device["id"].as_str().unwrap();
    let cases = [
        (
            "snmp",
            json!({"host": "10.0.0.1:161", "version": "2c", "community": "c"}),
            "host",
        ),
        (
            "snmp",
            json!({"host": "10.0.0.1", "port": 70000, "version": "2c", "community": "c"}),
            "port",
        ),
        (
            "snmp",
            json!({"host": "10.0.0.1", "version": "5", "community": "c"}),
            "version",
        ),
        (
            "snmp",
            json!({"host": "10.0.0.1", "version": "3", "username": "u", "security_level": "authPriv", "auth_protocol": "SHA", "auth_password": "authpass1", "priv_protocol": "AES"}),
            "priv_password",
        ),
        ("snmp", json!({"version": "2c", "community": "c"}), "host"),
        ("webpa", json!({"base_url": "not a url"}), "base_url"),
        (
            "tr069",
            json!({"base_url": "http://acs:7557", "auth": {"type": "basic", "username": "u"}}),
            "auth.password",
        ),
        (
            "hg630",
            json!({"base_url": "http://192.168.1.1", "password_scheme": "weird", "password": "x"}),
            "password_scheme",
        ),
        (
            "snmp",
            json!({"host": "10.0.0.1", "version": "2c", "community": "c".repeat(5000)}),
            "community",
        ),
    ];
    for (protocol, body, field) in cases {
        let (status, problem) = mesh
            .call(
                reqwest::Method::PUT,
                &format!("/v1/devices/{id}/endpoints/{protocol}"),
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{protocol} {body}: {problem}"
        );
        if field == "community" {
            assert!(
                problem["detail"].as_str().unwrap().contains("at most 4096"),
                "{problem}"
            );
        }
    }
    // A protocol rdm does not speak: no such route to PUT, a 400 to read.
    let telnet = format!("/v1/devices/{id}/endpoints/telnet");
    let put = mesh
        .call(reqwest::Method::PUT, &telnet, Some(&token), Some(json!({})))
        .await;
    assert_eq!(put.0, StatusCode::METHOD_NOT_ALLOWED, "{}", put.1);
    let (status, problem) = mesh.get(&telnet, &token).await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("protocol")),
        "{problem}"
    );
    let (_, device_now) = mesh.get(&format!("/v1/devices/{id}"), &token).await;
    assert_eq!(device_now["protocols"], json!([]), "no endpoint was stored");

    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (body, field) in [
        (json!({"name": "x", "labels": many}), "labels"),
        (
            json!({"name": "x", "labels": {"a".repeat(64): "v"}}),
            "labels",
        ),
        (
            json!({"name": "x", "labels": {"k": "v".repeat(300)}}),
            "labels",
        ),
        (
            json!({"name": "x", "address": "no spaces allowed"}),
            "address",
        ),
        (json!({"name": ""}), "name"),
        // Names that do not show what they hold.
        (json!({"name": "cpe\u{202E}1-gnp"}), "name"),
        (json!({"name": "cpe\u{200B}1"}), "name"),
        (
            json!({"name": "x", "labels": {"site": "ams\u{2066}"}}),
            "labels",
        ),
    ] {
        let (status, problem) = mesh.post("/v1/devices", &token, body.clone()).await;
        assert_eq!(
            (status, problem["field"].as_str()),
            (StatusCode::BAD_REQUEST, Some(field)),
            "{body}: {problem}"
        );
    }
    let (_, list) = mesh.get("/v1/devices", &token).await;
    assert_eq!(names(&list), ["target"]);
    let (status, problem) = mesh
        .get("/v1/devices?label_selector=bad%20key%3D1", &token)
        .await;
    assert_eq!(
        (status, problem["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("label_selector"))
    );
}

async fn another_tenants_devices_are_not_found_anywhere(mesh: TestMesh) {
    let (_, a) = mesh.tenant_with_admin("dev-a").await;
    let (_, b) = mesh.tenant_with_admin("dev-b").await;
    let theirs = create(
        &mesh,
        &b,
        json!({"name": "b-router", "labels": {"owner": "b"}}),
    )
    .await;
    let id = theirs["id"].as_str().unwrap();
    let endpoint = format!("/v1/devices/{id}/endpoints/snmp");
    assert_eq!(
        mesh.call(
            reqwest::Method::PUT,
            &endpoint,
            Some(&b),
            Some(json!({"host": "10.9.9.9", "version": "2c", "community": "b-secret"}))
        )
        .await
        .0,
        StatusCode::OK
    );

    let path = format!("/v1/devices/{id}");
    assert_eq!(mesh.get(&path, &a).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        mesh.patch(&path, &a, json!({"notes": "mine now"})).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(mesh.delete(&path, &a).await.0, StatusCode::NOT_FOUND);
    assert_eq!(mesh.get(&endpoint, &a).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        mesh.call(
            reqwest::Method::PUT,
            &endpoint,
            Some(&a),
            Some(json!({"host": "10.0.0.1", "version": "2c", "community": "x"}))
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(mesh.delete(&endpoint, &a).await.0, StatusCode::NOT_FOUND);
    for query in [
        "",
        "?label_selector=owner%3Db",
        "?protocol=snmp",
        "?name_prefix=b-",
    ] {
        assert_eq!(
            names(&mesh.get(&format!("/v1/devices{query}"), &a).await.1),
            Vec::<String>::new(),
            "{query}"
        );
    }
    let export = mesh
        .http
        .get(mesh.url("/v1/devices:export"))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!export.contains("b-router"), "{export}");

    // An import by A lands in A, even with B's names and ids in it.
    let file = format!("{{\"id\": \"{id}\", \"name\": \"b-router\"}}\n");
    let resp = mesh
        .http
        .post(mesh.url("/v1/devices:import"))
        .bearer_auth(&a)
        .header("content-type", "application/x-ndjson")
        .body(file)
        .send()
        .await
        .unwrap();
    let report: Value = resp.json().await.unwrap();
    assert_eq!(report["imported"], 1, "{report}");
    let (_, still) = mesh.get(&path, &b).await;
    assert_eq!(
        (still["name"].as_str(), still["labels"]["owner"].as_str()),
        (Some("b-router"), Some("b"))
    );
    assert_eq!(names(&mesh.get("/v1/devices", &b).await.1), ["b-router"]);
    let (_, a_list) = mesh.get("/v1/devices", &a).await;
    assert_ne!(
        a_list["devices"][0]["id"], id,
        "the import made a new device"
    );
}

async fn import(mesh: &TestMesh, token: &str, content_type: &str, file: String) -> Value {
    let resp = mesh
        .http
        .post(mesh.url("/v1/devices:import"))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(file)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn import_is_all_or_nothing_and_export_round_trips(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let snmp = json!({"host": "127.0.0.1", "port": 11161, "version": "2c", "community": "import-secret-1"});
    let good = |name: &str| {
        json!({"name": name, "labels": {"batch": "1"}, "endpoints": {"snmp": snmp}}).to_string()
    };
    let bad_file = [
        good("imp-1"),
        json!({"name": "imp-2", "endpoints": {"snmp": {"host": "127.0.0.1", "version": "2c"}}})
            .to_string(),
        good("imp-3"),
        "{not json".to_owned(),
        json!({"name": "imp-1"}).to_string(),
        json!({"name": "imp-6", "colour": "red"}).to_string(),
    ]
    .join("\n");
    let report = import(&mesh, &token, "application/x-ndjson", bad_file).await;
    assert_eq!(report["imported"], 0, "{report}");
    let errors: Vec<(i64, String)> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["line"].as_i64().unwrap(),
                e["field"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (2, "endpoints.snmp.community".into()),
            (4, String::new()),
            (5, "name".into()),
            (6, "colour".into())
        ],
        "{report}"
    );
    assert_eq!(
        names(&mesh.get("/v1/devices", &token).await.1),
        Vec::<String>::new(),
        "nothing stored"
    );

    // The older backend's credential JSON, exactly as it stored it, goes
    // through the import's translation (README: "From the older backend").
    let seed = json!({"name": "imp-seed", "address": "127.0.0.1", "endpoints": {"snmp": {"version": "3",
        "username": "snmpuser", "auth_protocol": "SHA", "auth_password": "authpass123", "priv_protocol": "AES",
        "priv_password": "privpass456", "port": 161, "timeout": 5.0, "retries": 3}}});
    let file = (1..=3)
        .map(|i| good(&format!("imp-{i}")))
        .chain([seed.to_string()])
        .collect::<Vec<_>>()
        .join("\n");
    let report = import(&mesh, &token, "application/x-ndjson", file).await;
    assert_eq!(
        (report["imported"].as_i64(), &report["errors"]),
        (Some(4), &json!([])),
        "{report}"
    );
    let (_, list) = mesh.get("/v1/devices?name_prefix=imp-seed", &token).await;
    let seed_id = list["devices"][0]["id"].as_str().unwrap();
    let (_, endpoint) = mesh
        .get(&format!("/v1/devices/{seed_id}/endpoints/snmp"), &token)
        .await;
    assert_eq!(
        (
            endpoint["snmp"]["timeout_ms"].as_i64(),
            endpoint["snmp"]["retries"].as_i64(),
            endpoint["snmp"]["security_level"].as_str(),
            &endpoint["snmp"]["priv_password_set"]
        ),
        (Some(5000), Some(3), Some("authPriv"), &json!(true)),
        "{endpoint}"
    );
    let csv = "name,serial,labels,snmp\ncsv-1,C1,site=ams;rack=r2,\"{\"\"host\"\":\"\"127.0.0.1\"\",\"\"version\"\":\"\"2c\"\",\"\"community\"\":\"\"x\"\"}\"\ncsv-2,C2,,\n";
    let report = import(&mesh, &token, "text/csv", csv.to_owned()).await;
    assert_eq!(report["imported"], 2, "{report}");
    // A header rdm cannot read is the whole file's fault: a 400.
    let resp = mesh
        .http
        .post(mesh.url("/v1/devices:import"))
        .bearer_auth(&token)
        .header("content-type", "text/csv")
        .body("name,colour\ncsv-3,red\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "file", "{problem}");
    let (_, list) = mesh
        .get("/v1/devices?label_selector=rack%3Dr2&protocol=snmp", &token)
        .await;
    assert_eq!(names(&list), ["csv-1"]);

    let resp = mesh
        .http
        .get(mesh.url("/v1/devices:export"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = resp
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    let imp1 = lines.iter().find(|l| l["name"] == "imp-1").unwrap();
    assert_eq!(imp1["endpoints"]["snmp"]["community_set"], true);
    assert_eq!(imp1["labels"]["batch"], "1");
    let resp = mesh
        .http
        .get(mesh.url("/v1/devices:export?format=csv"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/csv");
    let csv_out = resp.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(csv_out.as_bytes());
    assert_eq!(
        reader.headers().unwrap().iter().take(3).collect::<Vec<_>>(),
        ["name", "serial", "manufacturer"]
    );
    assert_eq!(reader.records().count(), 6);
    assert!(!csv_out.contains("import-secret-1"));

    // Both exports re-import as they are, into another tenant: the devices
    // and settings come across; secrets never left, so using an endpoint
    // that needs one says to PUT it again.
    let ndjson_out = lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let (other_id, other) = mesh.tenant_with_admin("reimport-ndjson").await;
    mesh.allow_targets(&other_id, &["127.0.0.0/8"]).await;
    let report = import(&mesh, &other, "application/x-ndjson", ndjson_out).await;
    assert_eq!(
        (report["imported"].as_i64(), &report["errors"]),
        (Some(6), &json!([])),
        "{report}"
    );
    let (other_csv_id, other_csv) = mesh.tenant_with_admin("reimport-csv").await;
    mesh.allow_targets(&other_csv_id, &["127.0.0.0/8"]).await;
    let report = import(&mesh, &other_csv, "text/csv", csv_out).await;
    assert_eq!(
        (report["imported"].as_i64(), &report["errors"]),
        (Some(6), &json!([])),
        "{report}"
    );
    let (_, list) = mesh.get("/v1/devices?name_prefix=imp-1", &other).await;
    let id = list["devices"][0]["id"].as_str().unwrap();
    let (_, endpoint) = mesh
        .get(&format!("/v1/devices/{id}/endpoints/snmp"), &other)
        .await;
    assert_eq!(endpoint["snmp"]["version"], "2c", "{endpoint}");
    assert!(
        endpoint["snmp"].get("community_set").is_none(),
        "{endpoint}"
    );
    let (status, problem) = mesh
        .post(
            "/v1/snmp/get",
            &other,
            json!({"target": {"device_id": id}, "oids": ["1.3.6.1.2.1.1.1.0"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("PUT them again"),
        "{problem}"
    );
}

/// Every endpoint row: (tenant, device, protocol, secrets JSON).
async fn endpoint_rows(mesh: &TestMesh) -> Vec<(String, String, String, String)> {
    let sql = "select tenant_id, device_id, protocol, secrets from endpoints order by device_id, protocol";
    match &mesh.pg {
        Some(pg) => sqlx::query_as(sql)
            .fetch_all(&mut connect_pg(&pg.admin_url).await)
            .await
            .unwrap(),
        None => {
            use sqlx::Connection;
            let url = format!("sqlite:{}", mesh.data_dir.join("inventory.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
        }
    }
}

async fn key_rotation_reseals_every_secret_while_serving(mesh: TestMesh) {
    use rdm_kit::secrets::{Keyring, read_key_file};
    let token = mesh.token("demo", "demo", "demo").await;
    let device = create(
        &mesh,
        &token,
        json!({"name": "rotating", "address": "127.0.0.1"}),
    )
    .await;
    let id = device["id"].as_str().unwrap();
    let put = |protocol: &str, body: Value| {
        let path = format!("/v1/devices/{id}/endpoints/{protocol}");
        let (mesh, token) = (&mesh, &token);
        async move {
            mesh.call(reqwest::Method::PUT, &path, Some(token), Some(body))
                .await
                .0
        }
    };
    let v3 = json!({"version": "3", "username": "u", "auth_protocol": "SHA", "auth_password": SECRETS[0], "priv_protocol": "AES", "priv_password": SECRETS[1]});
    assert_eq!(put("snmp", v3).await, StatusCode::OK);
    let webpa = json!({"base_url": "http://127.0.0.1:9003", "auth": {"type": "bearer", "token": SECRETS[2]}});
    assert_eq!(put("webpa", webpa).await, StatusCode::OK);

    let key_file = mesh.data_dir.join("secret.key");
    let old_key = read_key_file(&key_file).unwrap().remove(0);
    let database = rdm::DatabaseArgs {
        database_url: mesh.pg.as_ref().map(|p| p.app_url.clone()),
        ..Default::default()
    };
    let report = rdm::rotate_secret_key(&database, &Default::default(), &mesh.data_dir, true)
        .await
        .unwrap();
    assert!(report.starts_with("re-sealed 3 secrets"), "{report}");
    // The rotation is in the platform's audit trail.
    let admin = mesh.admin_token().await;
    let (_, trail) = mesh
        .get("/v1/audit?filter.method_prefix=rdm%20rotate", &admin)
        .await;
    assert_eq!(
        trail["events"][0]["method"], "rdm rotate-secret-key",
        "{trail}"
    );
    assert!(
        trail["events"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("\"resealed\":3"),
        "{trail}"
    );
    assert_eq!(
        read_key_file(&key_file).unwrap().len(),
        1,
        "old key retired"
    );

    let new_ring = Keyring::load_or_create(&key_file).unwrap();
    let old_ring = Keyring::from_base64(&[old_key]).unwrap();
    let mut opened = Vec::new();
    for (tenant, device, protocol, secrets) in endpoint_rows(&mesh).await {
        let secrets: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&secrets).unwrap();
        for (name, sealed) in secrets {
            let place = format!("{tenant}/{device}/{protocol}/{name}");
            opened.push(
                new_ring
                    .open(&sealed, &place)
                    .expect("opens with the new key"),
            );
            assert!(
                old_ring.open(&sealed, &place).is_err(),
                "the old key no longer opens {name}"
            );
        }
    }
    opened.sort();
    let mut want = SECRETS.map(String::from).to_vec();
    want.sort();
    assert_eq!(opened, want, "every secret survived the rotation");

    // The running mesh picked the new key up: what it seals now is under it.
    assert_eq!(
        put(
            "hg630",
            json!({"base_url": "http://127.0.0.1:9080", "password": "router-pw-1"})
        )
        .await,
        StatusCode::OK
    );
    let rows = endpoint_rows(&mesh).await;
    let (_, _, _, hg630) = rows.iter().find(|r| r.2 == "hg630").unwrap();
    let sealed: std::collections::BTreeMap<String, String> = serde_json::from_str(hg630).unwrap();
    assert!(new_ring.is_current(&sealed["password"]));
}
