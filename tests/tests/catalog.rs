//! The catalog service's MIBs through the gateway (REST), with the standard
//! set of real IETF modules (net-snmp's copies), on SQLite and PostgreSQL.
use rdm_tests::{TestMesh, on_both_stores};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn get(mesh: &TestMesh, token: &str, path: &str) -> Value {
    let (status, body) = mesh.get(path, token).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

async fn browse_search_and_translate(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;

    let modules = get(&mesh, &token, "/v1/mibs/modules").await;
    let if_mib = modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "IF-MIB")
        .expect("IF-MIB is standard")
        .clone();
    assert_eq!(
        (&if_mib["standard"], &if_mib["language"]),
        (&json!(true), &json!("SMIv2"))
    );
    assert!(if_mib["object_count"].as_i64().unwrap() > 50, "{if_mib}");
    assert!(
        if_mib["imports"]
            .as_array()
            .unwrap()
            .contains(&json!("SNMPv2-SMI"))
    );

    let module = get(&mesh, &token, "/v1/mibs/modules/IF-MIB").await;
    let objects: Vec<&str> = module["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(objects.contains(&"ifDescr") && objects.contains(&"ifHCInOctets"));
    assert!(
        module["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "linkDown"),
        "{}",
        module["notifications"]
    );
    let tcs = module["textual_conventions"].as_array().unwrap();
    let index = tcs.iter().find(|t| t["name"] == "InterfaceIndex").unwrap();
    assert_eq!(index["base_type"], "Integer32", "{index}");
    let (status, e) = mesh.get("/v1/mibs/modules/NO-SUCH-MIB", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");

    // Objects by name, qualified name or OID, resolved to the base type.
    let status =
        get(&mesh, &token, "/v1/mibs/objects/IF-MIB::ifOperStatus").await["object"].clone();
    assert_eq!(
        (
            &status["oid"],
            &status["kind"],
            &status["access"],
            &status["table"]
        ),
        (
            &json!("1.3.6.1.2.1.2.2.1.8"),
            &json!("column"),
            &json!("read-only"),
            &json!("ifTable")
        )
    );
    assert_eq!(
        status["syntax"]["enums"][0],
        json!({"label": "up", "value": 1})
    );
    assert_eq!(
        status["index"],
        json!([{"name": "ifIndex", "implied": false}])
    );
    let descr = get(&mesh, &token, "/v1/mibs/objects/1.3.6.1.2.1.1.1").await["object"].clone();
    assert_eq!(
        (&descr["name"], &descr["module"]),
        (&json!("sysDescr"), &json!("SNMPv2-MIB"))
    );
    assert_eq!(descr["syntax"]["base_type"], "OCTET STRING", "{descr}");
    assert_eq!(descr["syntax"]["sizes"], json!(["0..255"]));
    assert!(
        descr["description"]
            .as_str()
            .unwrap()
            .contains("textual description"),
        "{descr}"
    );
    let timeout = get(&mesh, &token, "/v1/mibs/objects/ipReasmTimeout").await["object"].clone();
    assert_eq!(
        (&timeout["units"], &timeout["kind"]),
        (&json!("seconds"), &json!("scalar"))
    );
    let (status, _) = mesh.get("/v1/mibs/objects/noSuchThing", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The tree, paged.
    let tree = get(
        &mesh,
        &token,
        "/v1/mibs/tree?root=1.3.6.1.2.1.2.2.1&page_size=5",
    )
    .await;
    assert_eq!(tree["node"]["name"], "ifEntry");
    let first: Vec<&str> = tree["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(first, ["ifIndex", "ifDescr", "ifType", "ifMtu", "ifSpeed"]);
    let token2 = tree["next_page_token"].as_str().unwrap();
    let next = get(
        &mesh,
        &token,
        &format!("/v1/mibs/tree?root=ifEntry&page_size=5&page_token={token2}"),
    )
    .await;
    assert_eq!(next["children"][0]["name"], "ifPhysAddress");
    let all = get(&mesh, &token, "/v1/mibs/tree?root=ifEntry&page_size=-1").await;
    assert_eq!(
        all["children"].as_array().unwrap().len(),
        22,
        "a page size below 1 is the default"
    );

    // Search: exact name first, then prefixes, names that contain it,
    // descriptions.
    let hits = get(&mesh, &token, "/v1/mibs/search?q=ifdescr").await["hits"].clone();
    assert_eq!(
        (&hits[0]["node"]["name"], &hits[0]["matched"]),
        (&json!("ifDescr"), &json!("name"))
    );
    let by_oid =
        get(&mesh, &token, "/v1/mibs/search?q=1.3.6.1.2.1.6&page_size=3").await["hits"].clone();
    assert_eq!(by_oid[0]["node"]["name"], "tcp", "{by_oid}");
    let words =
        get(&mesh, &token, "/v1/mibs/search?q=timeout%20retransmitting").await["hits"].clone();
    assert!(
        words
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["node"]["name"] == "tcpRtoAlgorithm"),
        "{words}"
    );

    // Translation both ways, with table indexes decoded.
    let (status, t) = mesh
        .post(
            "/v1/mibs:translate",
            &token,
            json!({"queries": ["1.3.6.1.2.1.2.2.1.2.3", "sysDescr.0", "IF-MIB::ifDescr.7",
                               "1.3.6.1.2.1.4.20.1.2.192.168.1.1", "NOPE-MIB::x", "1.3.6.1.4.1.99999.1"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{t}");
    let t = &t["translations"];
    assert_eq!(t[0]["name"], "IF-MIB::ifDescr.3");
    assert_eq!(t[0]["index"], json!([{"name": "ifIndex", "value": "3"}]));
    assert_eq!(t[1]["oid"], "1.3.6.1.2.1.1.1.0");
    assert_eq!(t[2]["oid"], "1.3.6.1.2.1.2.2.1.2.7");
    assert_eq!(t[3]["name"], "IP-MIB::ipAdEntIfIndex.192.168.1.1");
    assert_eq!(
        t[3]["index"][0],
        json!({"name": "ipAdEntAddr", "value": "192.168.1.1"})
    );
    assert!(
        t[4]["error"].as_str().unwrap().contains("NOPE-MIB"),
        "{}",
        t[4]
    );
    assert_eq!(t[5]["name"], "SNMPv2-SMI::enterprises.99999.1", "{}", t[5]);

    // Bad requests name their field.
    let (status, e) = mesh
        .post("/v1/mibs:translate", &token, json!({"queries": []}))
        .await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::BAD_REQUEST, &json!("queries")),
        "{e}"
    );
}

async fn data_models_browsed_searched_and_checked(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;
    let models = get(&mesh, &token, "/v1/datamodels").await;
    assert_eq!(
        models["models"][0],
        json!({
            "name": "Device:2.16",
            "standard": true,
            "object_count": 724,
            "parameter_count": 5872,
            "command_count": 0,
            "event_count": 0,
            "spec": "urn:broadband-forum-org:tr-181-2-16-0-cwmp"
        })
    );

    // The tree: a table shown as {i}, its children and parameters.
    let wifi = get(
        &mesh,
        &token,
        "/v1/datamodels/Device:2/tree?path=Device.WiFi.",
    )
    .await;
    let children: Vec<&str> = wifi["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert!(
        children.contains(&"Device.WiFi.SSID.{i}.") && children.contains(&"Device.WiFi.Radio.{i}."),
        "{children:?}"
    );
    assert!(
        !children
            .iter()
            .any(|c| c.starts_with("Device.WiFi.SSID.{i}.Stats")),
        "only direct children"
    );
    let ssid = get(
        &mesh,
        &token,
        "/v1/datamodels/Device:2.16/tree?path=Device.WiFi.SSID.3",
    )
    .await;
    assert_eq!(
        (&ssid["object"]["path"], &ssid["object"]["multi_instance"]),
        (&json!("Device.WiFi.SSID.{i}."), &json!(true))
    );
    assert!(
        ssid["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "SSID")
    );

    let p = get(
        &mesh,
        &token,
        "/v1/datamodels/Device:2/parameters/Device.ManagementServer.PeriodicInformInterval",
    )
    .await["parameter"]
        .clone();
    assert_eq!(
        (&p["writable"], &p["syntax"]["base_type"]),
        (&json!(true), &json!("unsignedInt")),
        "{p}"
    );
    assert_eq!(p["syntax"]["ranges"], json!([{"min": "1", "max": ""}]));
    assert_eq!(p["syntax"]["units"], "seconds");
    let (status, _) = mesh
        .get("/v1/datamodels/Device:2/parameters/Device.Nope.X", &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = mesh
        .get("/v1/datamodels/InternetGatewayDevice:1/tree", &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let hits = get(&mesh, &token, "/v1/datamodels/search?q=ssid&page_size=5").await["hits"].clone();
    assert_eq!(
        (&hits[0]["kind"], &hits[0]["matched"]),
        (&json!("object"), &json!("name")),
        "{hits}"
    );
    assert_eq!(hits[0]["path"], "Device.WiFi.SSID.{i}.");

    // Validation: every failure kind, instance numbers matched to {i}.
    let sets = json!({"sets": [
        {"path": "Device.WiFi.SSID.1.SSID", "value": "cafe"},
        {"path": "Device.WiFi.SSID.1.Nope", "value": "x"},
        {"path": "Device.DeviceInfo.SerialNumber", "value": "x"},
        {"path": "Device.WiFi.SSID.2.Enable", "value": "yes"},
        {"path": "Device.ManagementServer.PeriodicInformInterval", "value": "0"},
        {"path": "Device.WiFi.SSID.1.SSID", "value": "x".repeat(33)},
        {"path": "Device.IP.Diagnostics.IPPing.DiagnosticsState", "value": "Go"},
        {"path": "Device.Ethernet.Link.1.MACAddress", "value": "00:11:22"}
    ]});
    let (status, checked) = mesh.post("/v1/datamodels/validate", &token, sets).await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    let codes: Vec<&str> = checked["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "",
            "unknown_path",
            "read_only",
            "wrong_type",
            "out_of_range",
            "too_long",
            "not_in_enumeration",
            "pattern_mismatch"
        ]
    );
    assert_eq!(checked["results"][0]["ok"], true);
    assert!(
        checked["results"][5]["reason"]
            .as_str()
            .unwrap()
            .contains("at most 32"),
        "{}",
        checked["results"][5]
    );
}

/// A .tar.gz of `members`; a name is written into the header as given
/// (the tar crate refuses `..`, an attacker's tool does not).
fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, data) in members {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// Posts a file to /v1/mibs and waits (at most 10 s) for its parse.
async fn upload(mesh: &TestMesh, token: &str, filename: &str, data: Vec<u8>) -> Value {
    let reply: Value = mesh
        .http
        .post(mesh.url(&format!("/v1/mibs?filename={filename}")))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(data)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = reply["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"))
        .to_owned();
    assert_eq!(reply["status"], "parsing", "{reply}");
    for _ in 0..200 {
        let upload = get(mesh, token, &format!("/v1/mibs/uploads/{id}")).await;
        if upload["status"] != "parsing" {
            return upload;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("upload {id} still parsing after 10 s");
}

fn module_names(modules: &Value) -> Vec<String> {
    modules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

const UCD_SNMP_MIB: &[u8] = include_bytes!("../data/mibs/UCD-SNMP-MIB.txt");
const UCD_DISKIO_MIB: &[u8] = include_bytes!("../data/mibs/UCD-DISKIO-MIB.txt");

async fn tenant_modules_uploaded_resolved_and_deleted(mesh: TestMesh) {
    let token = mesh.token("demo", "demo", "demo").await;

    // A module whose import is missing: added, the import named.
    let first = upload(&mesh, &token, "UCD-DISKIO-MIB.txt", UCD_DISKIO_MIB.to_vec()).await;
    assert_eq!(
        (&first["status"], &first["added"]),
        (&json!("done"), &json!(["UCD-DISKIO-MIB"])),
        "{first}"
    );
    assert_eq!(
        first["missing_imports"],
        json!([{"module": "UCD-DISKIO-MIB", "from": "UCD-SNMP-MIB", "symbols": ["ucdExperimental"]}])
    );
    // Parsed by a job of the uploader's; parsing it again changes nothing.
    let job_id = first["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{first}"));
    let mut job = Value::Null;
    for _ in 0..100 {
        // The upload is done when the parse is; the job's end is written after.
        job = get(&mesh, &token, &format!("/v1/jobs/{job_id}")).await;
        if job["status"] != "JOB_STATUS_RUNNING" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (&job["method"], &job["status"]),
        (
            &json!("rdm.catalog.v1.MibService/ParseMibUpload"),
            &json!("JOB_STATUS_SUCCEEDED")
        ),
        "{job}"
    );
    let (status, parsed) = mesh
        .post(
            &format!("/v1/mibs/uploads/{}:parse", first["id"].as_str().unwrap()),
            &token,
            json!({}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{parsed}");
    assert_eq!(parsed, first);
    // The import, as a .tar.gz: the module resolves.
    let second = upload(
        &mesh,
        &token,
        "ucd.tar.gz",
        tar_gz(&[("mibs/UCD-SNMP-MIB.txt", UCD_SNMP_MIB)]),
    )
    .await;
    assert_eq!(second["added"], json!(["UCD-SNMP-MIB"]), "{second}");
    let again = upload(&mesh, &token, "UCD-DISKIO-MIB.txt", UCD_DISKIO_MIB.to_vec()).await;
    assert_eq!(again["missing_imports"], json!([]), "{again}");
    let names = module_names(&get(&mesh, &token, "/v1/mibs/modules").await);
    assert!(
        names.contains(&"UCD-SNMP-MIB".to_owned()) && names.contains(&"IF-MIB".to_owned()),
        "{names:?}"
    );
    let table = get(
        &mesh,
        &token,
        "/v1/mibs/objects/UCD-DISKIO-MIB::diskIOTable",
    )
    .await["object"]
        .clone();
    assert_eq!(table["oid"], "1.3.6.1.4.1.2021.13.15.1", "{table}");
    let (_, t) = mesh
        .post(
            "/v1/mibs:translate",
            &token,
            json!({"queries": ["1.3.6.1.4.1.2021.13.15.1.1.2.3"]}),
        )
        .await;
    assert_eq!(
        t["translations"][0]["name"], "UCD-DISKIO-MIB::diskIODevice.3",
        "{t}"
    );

    // Another tenant sees none of it.
    let (_, other) = mesh.tenant_with_admin("other").await;
    let names = module_names(&get(&mesh, &other, "/v1/mibs/modules").await);
    assert!(!names.iter().any(|n| n.starts_with("UCD-")), "{names:?}");
    let (_, t) = mesh
        .post(
            "/v1/mibs:translate",
            &other,
            json!({"queries": ["1.3.6.1.4.1.2021.13.15.1.1.2.3"]}),
        )
        .await;
    assert_eq!(
        t["translations"][0]["name"], "SNMPv2-SMI::enterprises.2021.13.15.1.1.2.3",
        "{t}"
    );
    let id = first["id"].as_str().unwrap();
    let (status, _) = mesh.get(&format!("/v1/mibs/uploads/{id}"), &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's upload");

    // Bombs, archives in archives and paths leaving the archive: refused
    // whole, nothing stored.
    let bomb = tar_gz(&[("big.txt", &vec![b' '; 40 << 20])]);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    for (name, data, says) in [
        ("bomb.tar.gz", bomb, "more than 32 MiB"),
        (
            "nested.tgz",
            tar_gz(&[("inner.tar.gz", &tar_gz(&[("A.txt", b"x")]))]),
            "archive inside",
        ),
        (
            "escape.tar.gz",
            tar_gz(&[("../../etc/UCD-X.txt", UCD_SNMP_MIB)]),
            "leaves the archive",
        ),
    ] {
        let failed = upload(&mesh, &token, name, data).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert!(failed["error"].as_str().unwrap().contains(says), "{failed}");
    }
    let (_, modules) = mesh.get("/v1/mibs/modules", &token).await;
    assert_eq!(
        module_names(&modules)
            .iter()
            .filter(|n| n.starts_with("UCD-"))
            .count(),
        2
    );
    let junk = upload(&mesh, &token, "notes.txt", b"just some notes".to_vec()).await;
    assert!(
        junk["failed"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no module"),
        "{junk}"
    );

    // Deleting an imported module is refused, naming who imports it.
    let (status, e) = mesh.delete("/v1/mibs/modules/UCD-SNMP-MIB", &token).await;
    assert_eq!(
        (status, &e["dependents"]),
        (StatusCode::CONFLICT, &json!("UCD-DISKIO-MIB")),
        "{e}"
    );
    let (status, e) = mesh.delete("/v1/mibs/modules/IF-MIB", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("standard"), "{e}");
    let (status, done) = mesh
        .delete("/v1/mibs/modules/UCD-SNMP-MIB?force=true", &token)
        .await;
    assert_eq!(
        (status, &done["dependents"]),
        (StatusCode::OK, &json!(["UCD-DISKIO-MIB"])),
        "{done}"
    );
    let (status, _) = mesh
        .get("/v1/mibs/objects/UCD-SNMP-MIB::ucdavis", &token)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Posts an XML document to /v1/datamodels.
async fn import(mesh: &TestMesh, token: &str, xml: Vec<u8>) -> (StatusCode, Value) {
    let reply = mesh
        .http
        .post(mesh.url("/v1/datamodels"))
        .bearer_auth(token)
        .header("content-type", "application/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    (reply.status(), reply.json().await.unwrap())
}

fn data_file(path: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// `(name, standard)` of each model the caller sees.
async fn model_list(mesh: &TestMesh, token: &str) -> Vec<(String, bool)> {
    let models = get(mesh, token, "/v1/datamodels").await;
    models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["standard"] == true,
            )
        })
        .collect()
}

async fn tenant_data_models_imported_browsed_and_deleted(mesh: TestMesh) {
    let (_, token) = mesh.tenant_with_admin("models-a").await;
    let (_, other) = mesh.tenant_with_admin("models-b").await;

    // The BBF's real TR-181 document, imported as the tenant's own: the
    // counts are the file's (the standard model is the same file).
    let (status, tr181) = import(
        &mesh,
        &token,
        data_file("../services/catalog/datamodels/tr-181-2-16-0-cwmp-full.xml"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tr181}");
    assert_eq!(
        (
            &tr181["models"][0]["name"],
            &tr181["models"][0]["standard"],
            &tr181["models"][0]["object_count"],
            &tr181["models"][0]["parameter_count"]
        ),
        (
            &json!("Device:2.16"),
            &json!(false),
            &json!(724),
            &json!(5872)
        ),
        "{tr181}"
    );
    // Its own copy stands in for the standard one, for this tenant only.
    assert_eq!(
        model_list(&mesh, &token).await,
        [("Device:2.16".into(), false)]
    );
    assert_eq!(
        model_list(&mesh, &other).await,
        [("Device:2.16".into(), true)]
    );

    // A USP model: commands with their arguments, events.
    let (status, usp) = import(
        &mesh,
        &token,
        data_file("data/datamodels/usp-device-2-17.xml"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{usp}");
    assert_eq!(
        (
            &usp["models"][0]["name"],
            &usp["models"][0]["command_count"],
            &usp["models"][0]["event_count"]
        ),
        (&json!("Device:2.17"), &json!(3), &json!(2)),
        "{usp}"
    );
    // Device:2 is now the newest the tenant has.
    let root = get(&mesh, &token, "/v1/datamodels/Device:2/tree?path=Device.").await;
    let names = |list: &Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&root["commands"]),
        ["Reboot()", "FactoryReset()"],
        "{root}"
    );
    assert_eq!(names(&root["events"]), ["Boot!"]);
    let ping = get(
        &mesh,
        &token,
        "/v1/datamodels/Device:2.17/parameters/Device.IP.Diagnostics.IPPing()",
    )
    .await["command"]
        .clone();
    assert_eq!(ping["async"], true, "{ping}");
    assert_eq!(names(&ping["input"]), ["Host", "NumberOfRepetitions"]);
    assert_eq!(
        names(&ping["output"]),
        ["Status", "IPAddressUsed", "Result.{i}.RoundTripTime"]
    );
    // An argument's type resolved through the document's named data type.
    assert_eq!(
        (
            &ping["output"][1]["syntax"]["data_type"],
            &ping["output"][1]["syntax"]["max_length"]
        ),
        (&json!("IPAddress"), &json!("45")),
        "{ping}"
    );
    let associated = get(
        &mesh,
        &token,
        "/v1/datamodels/Device:2.17/parameters/Device.WiFi.SSID.2.Associated!",
    )
    .await["event"]
        .clone();
    assert_eq!(
        names(&associated["arguments"]),
        ["MACAddress"],
        "{associated}"
    );
    let hits = get(
        &mesh,
        &token,
        "/v1/datamodels/search?q=ipping&model=Device:2.17",
    )
    .await;
    assert_eq!(
        (&hits["hits"][0]["kind"], &hits["hits"][0]["path"]),
        (&json!("command"), &json!("Device.IP.Diagnostics.IPPing()")),
        "{hits}"
    );
    // Validation against the model named: 2.17 has no SerialNumber.
    let (status, checked) = mesh
        .post(
            "/v1/datamodels/validate",
            &token,
            json!({"model": "Device:2.17", "sets": [
                {"path": "Device.WiFi.SSID.1.SSID", "value": "cafe"},
                {"path": "Device.DeviceInfo.SerialNumber", "value": "x"}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(
        (&checked["results"][0]["ok"], &checked["results"][1]["code"]),
        (&json!(true), &json!("unknown_path"))
    );

    // TR-098.
    let (status, igd) = import(&mesh, &token, data_file("data/datamodels/tr-098-1-14.xml")).await;
    assert_eq!(status, StatusCode::OK, "{igd}");
    let (status, checked) = mesh
        .post(
            "/v1/datamodels/validate",
            &token,
            json!({"model": "InternetGatewayDevice:1", "sets": [
                {"path": "InternetGatewayDevice.LANDevice.1.WLANConfiguration.2.BeaconType", "value": "WEP"},
                {"path": "InternetGatewayDevice.ManagementServer.PeriodicInformInterval", "value": "300"}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{checked}");
    assert_eq!(
        (&checked["results"][0]["code"], &checked["results"][1]["ok"]),
        (&json!("not_in_enumeration"), &json!(true)),
        "{checked}"
    );
    let lan = get(
        &mesh,
        &token,
        "/v1/datamodels/InternetGatewayDevice:1/tree?path=InternetGatewayDevice.LANDevice.1.",
    )
    .await;
    assert_eq!(
        lan["objects"][0]["path"],
        "InternetGatewayDevice.LANDevice.{i}.WLANConfiguration.{i}."
    );

    // Another tenant sees none of them.
    for path in [
        "/v1/datamodels/InternetGatewayDevice:1/tree",
        "/v1/datamodels/Device:2.17/tree",
    ] {
        let (status, body) = mesh.get(path, &other).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, _) = mesh.delete("/v1/datamodels/Device:2.17", &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Hostile or wrong documents: a clear 400 naming the file, nothing kept.
    let before = model_list(&mesh, &token).await;
    let laughs = br#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><document><model name="X:1">&c;</model></document>"#;
    let external = br#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><document><model name="X:1">&x;</model></document>"#;
    for (what, body) in [
        ("billion laughs", laughs.to_vec()),
        ("external entity", external.to_vec()),
        ("not XML", b"{\"model\": 1}".to_vec()),
        ("no model", b"<document/>".to_vec()),
        (
            "bad model name",
            br#"<document><model name="../x"/></document>"#.to_vec(),
        ),
        (
            "truncated",
            b"<document><model name=\"X:1\"><object".to_vec(),
        ),
        ("not UTF-8", b"<document>\xff\xfe</document>".to_vec()),
    ] {
        let (status, body) = import(&mesh, &token, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["field"], "file", "{what}: {body}");
    }
    assert_eq!(model_list(&mesh, &token).await, before);

    // Deleting its copy of Device:2.16 brings the standard one back; the
    // standard one itself cannot be deleted.
    let (status, body) = mesh.delete("/v1/datamodels/Device:2.16", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let after = model_list(&mesh, &token).await;
    assert!(after.contains(&("Device:2.16".into(), true)), "{after:?}");
    let (status, body) = mesh.delete("/v1/datamodels/Device:2.16", &token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["detail"].as_str().unwrap().contains("standard model"),
        "{body}"
    );
}

on_both_stores!(
    browse_search_and_translate,
    data_models_browsed_searched_and_checked,
    tenant_modules_uploaded_resolved_and_deleted,
    tenant_data_models_imported_browsed_and_deleted
);

/// `rdm serve catalog` apart from the inventory and the gateway (the
/// Kubernetes shape): it migrates its tables with the owner's URL, keeps a
/// tenant's upload in PostgreSQL, and serves it back through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_catalog_as_its_own_process() {
    use rdm_tests::{SendJson, Split, admin_on_loopback};
    let split = Split::start(&[]).await;
    let database = [
        ("RDM_DATABASE_URL", split.pg.app_url.clone()),
        ("RDM_DATABASE_ADMIN_URL", split.pg.admin_url.clone()),
    ];
    let catalog = split.serve("catalog", &database).await;
    let url = format!("http://{}", catalog.addr);
    let gateway = split.serve("gateway", &[("RDM_CATALOG_URL", url)]).await;
    let http = reqwest::Client::new();
    let base = gateway.url("");
    let token = admin_on_loopback(&http, &base).await;
    let upload = http
        .post(format!("{base}/v1/mibs?filename=UCD-SNMP-MIB.txt"))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(UCD_SNMP_MIB.to_vec())
        .send_json()
        .await;
    let id = upload["id"].as_str().unwrap_or_else(|| panic!("{upload}"));
    let mut done = Value::Null;
    for _ in 0..200 {
        done = http
            .get(format!("{base}/v1/mibs/uploads/{id}"))
            .bearer_auth(&token)
            .send_json()
            .await;
        if done["status"] != "parsing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(done["added"], json!(["UCD-SNMP-MIB"]), "{done}");
    // No jobs service given: parsed in the catalog's own process.
    assert_eq!(done["job_id"], "", "{done}");
    let object = http
        .get(format!("{base}/v1/mibs/objects/UCD-SNMP-MIB::memTotalReal"))
        .bearer_auth(&token)
        .send_json()
        .await;
    assert_eq!(object["object"]["oid"], "1.3.6.1.4.1.2021.4.5", "{object}");
}
