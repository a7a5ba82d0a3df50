//! The SNMP service against a real net-snmp agent, through the gateway (REST)
//! and gRPC, with the net-snmp tools as the oracle.
use futures::StreamExt;
use rdm_tests::{NdJson, SendJson, Store, TestMesh, snmpd};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

async fn demo() -> (TestMesh, String) {
    snmpd::ensure();
    let mesh = TestMesh::start(Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    (mesh, token)
}

fn community(version: &str, community: &str) -> Value {
    json!({"host": "127.0.0.1", "port": snmpd::PORT, "version": version, "community": community,
           "timeout_ms": 1000, "retries": 1})
}

/// Inline settings as the gRPC API takes them.
fn snmp_settings(json: &Value) -> rdm_proto::snmp::SnmpEndpoint {
    match rdm_kit::endpoint::typed("snmp", json.as_object().unwrap()).unwrap() {
        rdm_proto::inventory::endpoint::Settings::Snmp(s) => s,
        other => panic!("{other:?}"),
    }
}

fn user(index: usize) -> Value {
    let (name, auth, auth_pass, privacy, priv_pass) = snmpd::USERS[index];
    json!({"host": "127.0.0.1", "port": snmpd::PORT, "version": "3", "username": name,
           "security_level": "authPriv", "auth_protocol": auth, "auth_password": auth_pass,
           "priv_protocol": privacy, "priv_password": priv_pass})
}

/// Every endpoint kind the agent serves: v1, v2c and each v3 user.
fn every_endpoint() -> Vec<(String, Value)> {
    let mut all = vec![
        ("v1".to_owned(), community("1", "public")),
        ("v2c".to_owned(), community("2c", "public")),
    ];
    for (i, u) in snmpd::USERS.iter().enumerate() {
        all.push((format!("v3 {} {}/{}", u.0, u.1, u.3), user(i)));
    }
    all
}

/// The value net-snmp's snmpget prints for `oid` (text after "STRING: ").
fn snmpget_string(oid: &str) -> String {
    let out = snmpd::tool(
        "snmpget",
        &["-v2c", "-c", "public", "-On", "-Oqv", snmpd::ADDR, oid],
    );
    out.trim().trim_matches('"').to_owned()
}

/// The streamed messages of a REST walk or poll (NDJSON).
async fn stream(mesh: &TestMesh, path: &str, token: &str, body: Value) -> (StatusCode, Vec<Value>) {
    let resp = mesh
        .http
        .post(mesh.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    if status != StatusCode::OK {
        return (
            status,
            vec![serde_json::from_str(&text).unwrap_or(Value::Null)],
        );
    }
    (
        status,
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

fn varbinds_of(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .flat_map(|m| m["varbinds"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_on_every_version() {
    let (mesh, token) = demo().await;
    let sys_descr = snmpget_string("1.3.6.1.2.1.1.1.0");
    for (name, endpoint) in every_endpoint() {
        let target = json!({"endpoint": endpoint});
        let (status, body) = mesh
            .post(
                "/v1/snmp/get",
                &token,
                json!({"target": target, "oids": ["1.3.6.1.2.1.1.1.0", ".1.3.6.1.2.1.1.99.0"]}),
            )
            .await;
        if name == "v1" {
            // v1 has no exceptions: one missing variable fails the request.
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
            assert_eq!(
                body["detail"],
                "snmp get on 127.0.0.1:11161 failed: noSuchName at varbind 2 (1.3.6.1.2.1.1.99.0)"
            );
        } else {
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            let vbs = body["varbinds"].as_array().unwrap();
            assert_eq!(
                vbs[0],
                json!({"oid": "1.3.6.1.2.1.1.1.0", "type": "OCTET STRING", "value": sys_descr, "hex": "",
                       "name": "SNMPv2-MIB::sysDescr.0", "label": ""}),
                "{name}"
            );
            assert_eq!(
                vbs[1]["type"], "noSuchObject",
                "{name}: exceptions are values"
            );
        }

        let (status, body) = mesh
            .post(
                "/v1/snmp/getnext",
                &token,
                json!({"target": target, "oids": ["1.3.6.1.2.1.1.1.0"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(body["varbinds"][0]["oid"], "1.3.6.1.2.1.1.2.0", "{name}");
        assert_eq!(body["varbinds"][0]["type"], "OBJECT IDENTIFIER", "{name}");

        let (status, body) = mesh
            .post(
                "/v1/snmp/getbulk",
                &token,
                json!({"target": target, "oids": ["1.3.6.1.2.1.1"], "max_repetitions": 5}),
            )
            .await;
        if name == "v1" {
            // Refused before anything is sent.
            assert_eq!(
                (status, body["field"].as_str()),
                (StatusCode::BAD_REQUEST, Some("target")),
                "{body}"
            );
        } else {
            assert_eq!(status, StatusCode::OK, "{name}: {body}");
            let oids: Vec<&str> = body["varbinds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["oid"].as_str().unwrap())
                .collect();
            assert_eq!(
                oids,
                [
                    "1.3.6.1.2.1.1.1.0",
                    "1.3.6.1.2.1.1.2.0",
                    "1.3.6.1.2.1.1.3.0",
                    "1.3.6.1.2.1.1.4.0",
                    "1.3.6.1.2.1.1.5.0"
                ],
                "{name}"
            );
        }

        let (status, messages) = stream(
            &mesh,
            "/v1/snmp/walk",
            &token,
            json!({"target": target, "oid": "1.3.6.1.2.1.1.9.1.2", "max_repetitions": 3}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{name}: {messages:?}");
        let walked = varbinds_of(&messages);
        let expected = snmpd::tool(
            "snmpwalk",
            &[
                "-v2c",
                "-c",
                "public",
                "-On",
                snmpd::ADDR,
                "1.3.6.1.2.1.1.9.1.2",
            ],
        );
        assert_eq!(
            walked.len(),
            expected.lines().count(),
            "{name}: {walked:?} vs {expected}"
        );
        assert!(
            walked.iter().all(|v| v["type"] == "OBJECT IDENTIFIER"),
            "{name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_auth_errors_or_timeouts() {
    let (mesh, token) = demo().await;
    let mut wrong_auth = user(1);
    wrong_auth["auth_password"] = json!("not-the-password");
    let (status, body) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": {"endpoint": wrong_auth}, "oids": ["1.3.6.1.2.1.1.1.0"]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "DEVICE_AUTH_REJECTED");
    assert!(
        body["detail"].as_str().unwrap().contains("wrong digest"),
        "{body}"
    );
    assert!(
        !body.to_string().contains("not-the-password"),
        "a reply never holds a secret"
    );

    let mut unknown = user(1);
    unknown["username"] = json!("nosuchuser");
    let (status, body) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": {"endpoint": unknown}, "oids": ["1.3.6.1.2.1.1.1.0"]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("unknown user"),
        "{body}"
    );

    // A wrong community gets no answer at all: a timeout after every attempt.
    let mut wrong = community("2c", "not-a-community");
    wrong["timeout_ms"] = json!(150);
    wrong["retries"] = json!(1);
    let started = Instant::now();
    let (status, body) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": {"endpoint": wrong}, "oids": ["1.3.6.1.2.1.1.1.0"]}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["code"], "DEVICE_TIMEOUT");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("after 2 attempts"),
        "{body}"
    );
    assert!(!body.to_string().contains("not-a-community"));
    // 150 ms, then 300 ms (+-10%) for the retry.
    assert!(
        took >= Duration::from_millis(400),
        "gave up after {took:?}, before both attempts' time"
    );
    assert!(took < Duration::from_millis(2000), "took {took:?}");
}

/// Datagrams waiting on a socket, each read once.
fn datagrams(socket: &std::net::UdpSocket) -> usize {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 65_536];
    let mut n = 0;
    while socket.recv(&mut buf).is_ok() {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_ports_and_black_holes_time_out() {
    let (mesh, token) = demo().await;
    // A port nothing listens on, and one that reads and never answers.
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let target = |port: u16| json!({"endpoint": {"host": "127.0.0.1", "port": port, "version": "2c", "community": "public", "timeout_ms": 100, "retries": 2}});
    for port in [closed, hole.local_addr().unwrap().port()] {
        let (status, body) = mesh
            .post(
                "/v1/snmp/get",
                &token,
                json!({"target": target(port), "oids": ["1.3.6.1.2.1.1.1.0"]}),
            )
            .await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "port {port}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("after 3 attempts"),
            "{body}"
        );
    }
    assert_eq!(datagrams(&hole), 3, "one request and two retries");

    // A walk of an agent that never answers costs one round of attempts
    // (it used to try a second round with smaller requests).
    let (status, messages) = stream(
        &mesh,
        "/v1/snmp/walk",
        &token,
        json!({"target": target(hole.local_addr().unwrap().port()), "oid": "1.3.6.1.2.1.1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        messages.last().unwrap()["error"]["code"],
        "DEVICE_TIMEOUT",
        "{messages:?}"
    );
    assert_eq!(datagrams(&hole), 3, "one round of attempts: {messages:?}");

    // An IPv6 host may be written in brackets, as in a URL.
    let hole6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    for host in ["[::1]", "::1"] {
        let endpoint = json!({"endpoint": {"host": host, "port": hole6.local_addr().unwrap().port(), "version": "2c",
            "community": "public", "timeout_ms": 100, "retries": 0}});
        let (status, body) = mesh
            .post(
                "/v1/snmp/get",
                &token,
                json!({"target": endpoint, "oids": ["1.3.6.1.2.1.1.1.0"]}),
            )
            .await;
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{host}: {body}");
        assert_eq!(datagrams(&hole6), 1, "{host}: sent to ::1");
    }
}

/// Walks that net-snmp's snmpwalk answers: a leaf (its value, by a GET), a
/// subtree with nothing in it (noSuchObject), and the whole tree from `iso`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_of_a_leaf_an_empty_subtree_and_the_whole_tree() {
    let (mesh, token) = demo().await;
    let walk = |oid: &str| json!({"target": {"endpoint": community("2c", "public")}, "oid": oid});
    let leaf = "1.3.6.1.2.1.1.1.0";
    let (status, messages) = stream(&mesh, "/v1/snmp/walk", &token, walk(leaf)).await;
    assert_eq!(status, StatusCode::OK);
    let vbs = varbinds_of(&messages);
    assert_eq!(vbs.len(), 1, "{messages:?}");
    assert_eq!(
        (vbs[0]["oid"].as_str(), vbs[0]["value"].as_str()),
        (Some(leaf), Some(snmpget_string(leaf).as_str())),
        "{messages:?}"
    );
    let (_, messages) = stream(&mesh, "/v1/snmp/walk", &token, walk("1.3.6.1.2.1.1.99")).await;
    let vbs = varbinds_of(&messages);
    assert_eq!(
        (vbs.len(), vbs[0]["type"].as_str()),
        (1, Some("noSuchObject")),
        "{messages:?}"
    );
    // UCD-SNMP-MIB's laLoadFloat.1 is an Opaque-wrapped float: its number.
    let load = "1.3.6.1.4.1.2021.10.1.6.1";
    let (status, body) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": {"endpoint": community("2c", "public")}, "oids": [load]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let vb = &body["varbinds"][0];
    assert_eq!(vb["type"], "Opaque", "{body}");
    assert!(
        vb["value"].as_str().unwrap().parse::<f32>().is_ok(),
        "{body}"
    );
    assert!(vb["hex"].as_str().unwrap().starts_with("9f7804"), "{body}");
    let net_snmp = snmpd::tool(
        "snmpget",
        &["-v2c", "-c", "public", "-On", snmpd::ADDR, load],
    );
    assert!(net_snmp.contains("Opaque: Float:"), "{net_snmp}");
    // GETBULK with max-repetitions 0 sends 0: only the non-repeaters come
    // back (RFC 3416 4.2.3), as snmpbulkget -Cr0 shows.
    let (status, body) = mesh
        .post(
            "/v1/snmp/getbulk",
            &token,
            json!({"target": {"endpoint": community("2c", "public")}, "non_repeaters": 1, "max_repetitions": 0,
                   "oids": ["1.3.6.1.2.1.1.1", "1.3.6.1.2.1.2"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let oids: Vec<&str> = body["varbinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["oid"].as_str().unwrap())
        .collect();
    assert_eq!(oids, [leaf], "{body}");
    // From the top arc: the first variable is the one after 1.0, as
    // snmpgetnext finds it.
    let first = snmpd::tool(
        "snmpgetnext",
        &["-v2c", "-c", "public", "-On", "-Oq", snmpd::ADDR, ".1.0"],
    );
    let first = first
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('.');
    for root in ["iso", ".1"] {
        let (status, messages) = stream(&mesh, "/v1/snmp/walk", &token, walk(root)).await;
        assert_eq!(status, StatusCode::OK, "{root}");
        let vbs = varbinds_of(&messages);
        assert_eq!(vbs[0]["oid"], first, "{root}");
        assert!(vbs.len() > 100, "{root}: {} variables", vbs.len());
    }
}

/// What cannot work is refused before anything is sent: patience longer
/// than the call's deadline, GETBULK or Counter64 on SNMPv1, a request
/// larger than a datagram.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_work_are_400s_before_sending() {
    let (mesh, token) = demo().await;
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    let endpoint = |version: &str, timeout_ms: u32, retries: u32| {
        json!({"endpoint": {"host": "127.0.0.1", "port": port, "version": version, "community": "private",
            "timeout_ms": timeout_ms, "retries": retries}})
    };
    let oids = ["1.3.6.1.2.1.1.1.0"];
    // 25 s + 50 s + 100 s (+10%) cannot finish within the 60 s deadline.
    let cases = [
        (
            "/v1/snmp/get",
            json!({"target": endpoint("2c", 25_000, 2), "oids": oids}),
            "timeout_ms",
        ),
        (
            "/v1/snmp/getbulk",
            json!({"target": endpoint("1", 100, 0), "oids": oids}),
            "target",
        ),
        (
            "/v1/snmp/set",
            json!({"target": endpoint("1", 100, 0), "varbinds": [{"oid": "1.3.6.1.2.1.1.4.0", "type": "Counter64", "value": "1"}]}),
            "varbinds[0].type",
        ),
        // More than one datagram holds.
        (
            "/v1/snmp/set",
            json!({"target": endpoint("2c", 100, 0), "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "s", "value": "a".repeat(70_000)}]}),
            "varbinds",
        ),
    ];
    for (path, body, field) in cases {
        let resp = mesh
            .http
            .post(mesh.url(path))
            .bearer_auth(&token)
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let problem: Value = resp.json().await.unwrap();
        assert_eq!(problem["field"], field, "{path}: {problem}");
    }
    assert_eq!(datagrams(&hole), 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_what_get_reads_and_read_only_access_is_refused() {
    let (mesh, token) = demo().await;
    let location = "1.3.6.1.2.1.1.6.0";
    let mut rw: Vec<(String, Value)> = vec![
        ("v2c".into(), community("2c", "private")),
        ("v1".into(), community("1", "private")),
    ];
    rw.extend((0..snmpd::USERS.len()).map(|i| (format!("v3 {}", snmpd::USERS[i].0), user(i))));
    for (name, endpoint) in rw {
        let value = format!("rack {name}");
        let (status, body) = mesh
            .post("/v1/snmp/set", &token, json!({"target": {"endpoint": endpoint}, "varbinds": [{"oid": location, "type": "OCTET STRING", "value": value}]}))
            .await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
        assert_eq!(
            snmpget_string(location),
            value,
            "{name}: net-snmp reads the new value"
        );
        let (_, body) = mesh
            .post(
                "/v1/snmp/get",
                &token,
                json!({"target": {"endpoint": community("2c", "public")}, "oids": [location]}),
            )
            .await;
        assert_eq!(body["varbinds"][0]["value"], value.as_str(), "{name}");
    }
    // Bytes may be sent as hex (sysLocation takes only printable ones).
    let (status, body) = mesh
        .post("/v1/snmp/set", &token, json!({"target": {"endpoint": community("2c", "private")}, "varbinds": [{"oid": location, "type": "OCTET STRING", "hex": "72 6f 6f 6d 20 31"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(snmpget_string(location), "room 1");
    // snmpset's letters as snmpset means them: x hex digits, d decimal bytes.
    for (letter, value, stored) in [
        ("x", "72 6f 6f 6d 20 32", "room 2"),
        ("d", "114.111.111.109.32.51", "room 3"),
    ] {
        let (status, body) = mesh
            .post("/v1/snmp/set", &token, json!({"target": {"endpoint": community("2c", "private")}, "varbinds": [{"oid": location, "type": letter, "value": value}]}))
            .await;
        assert_eq!(status, StatusCode::OK, "{letter}: {body}");
        assert_eq!(snmpget_string(location), stored, "type {letter}");
    }
    let (status, body) = mesh
        .post("/v1/snmp/set", &token, json!({"target": {"endpoint": community("2c", "private")}, "varbinds": [{"oid": location, "type": "OCTET STRING", "hex": "00ff10"}]}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["detail"],
        "snmp set on 127.0.0.1:11161 failed: wrongValue at varbind 1 (1.3.6.1.2.1.1.6.0)"
    );

    let (status, body) = mesh
        .post("/v1/snmp/set", &token, json!({"target": {"endpoint": community("2c", "public")}, "varbinds": [{"oid": location, "type": "s", "value": "nope"}]}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "DEVICE_ERROR");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("noAccess at varbind 1 (1.3.6.1.2.1.1.6.0)"),
        "{body}"
    );
    let (status, body) = mesh
        .post("/v1/snmp/set", &token, json!({"target": {"endpoint": community("2c", "private")}, "varbinds": [{"oid": "1.3.6.1.2.1.1.1.0", "type": "INTEGER", "value": "5"}]}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("at varbind 1"),
        "{body}"
    );
}

/// `snmpwalk -On -Oe` output as (oid, type, value) with the value as net-snmp prints it.
fn parse_snmpwalk(out: &str) -> Vec<(String, String, String)> {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for line in out.lines() {
        match line.split_once(" = ") {
            // snmpwalk's closing line for the end of the agent's view (v2c),
            // or its note that v1's noSuchName ended the walk.
            Some((_, rest)) if rest.starts_with("No more variables") => {}
            None if line == "End of MIB" => {}
            Some((oid, rest)) if oid.starts_with('.') => {
                let (kind, value) = rest.split_once(": ").unwrap_or((rest, ""));
                rows.push((oid[1..].to_owned(), kind.to_owned(), value.to_owned()));
            }
            // A string value that spans lines.
            _ => {
                let last = rows.last_mut().expect("a continuation follows a row");
                last.2.push('\n');
                last.2.push_str(line);
            }
        }
    }
    rows
}

/// Our reply's value as net-snmp prints it, for the types whose values do
/// not move between two walks.
fn as_net_snmp(vb: &Value) -> Option<(&'static str, String)> {
    let value = vb["value"].as_str().unwrap();
    Some(match vb["type"].as_str().unwrap() {
        "OCTET STRING" if !vb["hex"].as_str().unwrap().is_empty() => {
            let bytes = hex_bytes(vb["hex"].as_str().unwrap());
            (
                "Hex-STRING",
                bytes.iter().map(|b| format!("{b:02X} ")).collect(),
            )
        }
        "OCTET STRING" if value.is_empty() => ("\"\"", String::new()),
        "OCTET STRING" => ("STRING", format!("\"{value}\"")),
        "INTEGER" => ("INTEGER", value.to_owned()),
        "OBJECT IDENTIFIER" => ("OID", format!(".{value}")),
        "IpAddress" => ("IpAddress", value.to_owned()),
        _ => return None,
    })
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_walk_matches_snmpwalk() {
    let (mesh, token) = demo().await;
    let mut serial = community("2c", "public");
    serial["max_in_flight"] = json!(1);
    // Split into parts walked side by side (3 in flight, the default) on
    // v1, v2c and v3, and serially.
    for (name, endpoint, tool_version) in [
        ("v2c", community("2c", "public"), "-v2c"),
        ("v1", community("1", "public"), "-v1"),
        ("v3", user(1), "-v2c"),
        ("v2c serial", serial, "-v2c"),
    ] {
        let (status, messages) = stream(
            &mesh,
            "/v1/snmp/walk",
            &token,
            json!({"target": {"endpoint": endpoint}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{messages:?}");
        let ours = varbinds_of(&messages);
        let theirs = parse_snmpwalk(&snmpd::tool(
            "snmpwalk",
            &[
                tool_version,
                "-c",
                "public",
                "-On",
                "-Oe",
                snmpd::ADDR,
                "1.3.6.1",
            ],
        ));
        // Tables of live sockets, processes, counters and net-snmp's own
        // caches change between two walks; the Set test writes sysLocation.
        let volatile = |oid: &str| {
            [
                "1.3.6.1.2.1.1.6.",
                "1.3.6.1.4.1.8072.1.5.",
                "1.3.6.1.2.1.4.",
                "1.3.6.1.2.1.6.",
                "1.3.6.1.2.1.7.",
                "1.3.6.1.2.1.25.",
                "1.3.6.1.2.1.31.",
                "1.3.6.1.4.1.2021.",
                "1.3.6.1.2.1.88.",
                "1.3.6.1.6.3.10.2.1.3.",
            ]
            .iter()
            .any(|p| oid.starts_with(p))
        };
        let our_oids: Vec<&str> = ours
            .iter()
            .map(|v| v["oid"].as_str().unwrap())
            .filter(|o| !volatile(o))
            .collect();
        let their_oids: Vec<&str> = theirs
            .iter()
            .map(|r| r.0.as_str())
            .filter(|o| !volatile(o))
            .collect();
        assert!(
            their_oids.len() > 1000,
            "the agent serves a real tree ({} OIDs)",
            their_oids.len()
        );
        if let Some(i) = (0..our_oids.len().max(their_oids.len()))
            .find(|&i| our_oids.get(i) != their_oids.get(i))
        {
            panic!(
                "{name}: first difference at {i}: ours {:?}, snmpwalk {:?}",
                &our_oids[i.saturating_sub(2)..(i + 3).min(our_oids.len())],
                &their_oids[i.saturating_sub(2)..(i + 3).min(their_oids.len())]
            );
        }
        let theirs: Vec<_> = theirs.iter().filter(|r| !volatile(&r.0)).collect();
        let ours: Vec<_> = ours
            .iter()
            .filter(|v| !volatile(v["oid"].as_str().unwrap()))
            .collect();
        let mut compared = 0;
        for (vb, (oid, kind, value)) in ours.iter().zip(&theirs) {
            if let Some((our_kind, our_value)) = as_net_snmp(vb) {
                if our_kind == "\"\"" {
                    assert_eq!(kind, "\"\"", "{name} {oid}");
                } else if our_kind == "Hex-STRING" {
                    // net-snmp wraps hex at 16 bytes a line.
                    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
                    assert_eq!(
                        (our_kind, words(&our_value)),
                        (kind.as_str(), words(value)),
                        "{name} {oid}"
                    );
                } else {
                    assert_eq!(
                        (our_kind, our_value.trim_end()),
                        (kind.as_str(), value.trim_end()),
                        "{name} {oid}"
                    );
                }
                compared += 1;
            }
        }
        assert!(compared > 500, "{name}: compared {compared} values");
    }
}

/// The MIB catalog names what snmpd answers: every object of the standard
/// modules in a walk of MIB-2 has its name (a column's index decoded), the
/// name translates back to the OID, enumerated INTEGERs carry their label,
/// and requests may name OIDs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_name_every_object_the_standard_modules_define() {
    let (mesh, token) = demo().await;
    let target = json!({"endpoint": community("2c", "public")});
    let (status, messages) = stream(
        &mesh,
        "/v1/snmp/walk",
        &token,
        json!({"target": target, "oid": "mib-2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{messages:?}");
    let vbs = varbinds_of(&messages);
    assert!(vbs.len() > 100, "{} varbinds", vbs.len());
    // The subtrees the standard modules define objects in: system,
    // interfaces, tcp, udp, snmp, ifMIB.
    let covered = [
        "1.3.6.1.2.1.1.",
        "1.3.6.1.2.1.2.",
        "1.3.6.1.2.1.6.",
        "1.3.6.1.2.1.7.",
        "1.3.6.1.2.1.11.",
        "1.3.6.1.2.1.31.1.",
    ];
    let groups = [
        "mib-2",
        "system",
        "interfaces",
        "tcp",
        "udp",
        "snmp",
        "ifMIB",
        "ifMIBObjects",
    ];
    let names: Vec<String> = vbs
        .iter()
        .map(|vb| vb["name"].as_str().unwrap().to_owned())
        .collect();
    // The names back to OIDs, a thousand a call (snmpd's connection
    // tables grow with the suite's traffic).
    let mut back = Vec::new();
    for chunk in names.chunks(1000) {
        let (status, reply) = mesh
            .post("/v1/mibs:translate", &token, json!({"queries": chunk}))
            .await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        back.extend(reply["translations"].as_array().unwrap().iter().cloned());
    }
    let mut named = 0;
    for (vb, t) in vbs.iter().zip(&back) {
        assert_eq!(
            t["oid"], vb["oid"],
            "{} names {}: {t}",
            vb["name"], vb["oid"]
        );
        let oid = vb["oid"].as_str().unwrap();
        if covered.iter().any(|c| oid.starts_with(c)) {
            let object = t["object"].as_str().unwrap();
            assert!(
                !groups.contains(&object),
                "{oid} is named only by its group: {}",
                vb["name"]
            );
            named += 1;
        }
    }
    assert!(named > 50, "{named} objects of the standard modules");
    let status = vbs
        .iter()
        .find(|vb| vb["oid"] == "1.3.6.1.2.1.2.2.1.8.1")
        .expect("ifOperStatus.1");
    assert_eq!(status["name"], "IF-MIB::ifOperStatus.1");
    assert!(
        ["up(1)", "down(2)"].contains(&status["label"].as_str().unwrap()),
        "{status}"
    );
    let tcp = vbs
        .iter()
        .find(|vb| {
            vb["oid"]
                .as_str()
                .unwrap()
                .starts_with("1.3.6.1.2.1.6.13.1.1.")
        })
        .expect("a tcpConnState");
    assert!(
        tcp["name"]
            .as_str()
            .unwrap()
            .starts_with("TCP-MIB::tcpConnState."),
        "{tcp}"
    );

    // Names in requests: a get, a walk of a named subtree, a set.
    let (status, body) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": target, "oids": ["sysDescr.0", "IF-MIB::ifDescr.1"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["varbinds"][0]["oid"], "1.3.6.1.2.1.1.1.0");
    assert_eq!(body["varbinds"][1]["oid"], "1.3.6.1.2.1.2.2.1.2.1");
    let (status, messages) = stream(
        &mesh,
        "/v1/snmp/walk",
        &token,
        json!({"target": target, "oid": "SNMPv2-MIB::system"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        varbinds_of(&messages)
            .iter()
            .all(|vb| vb["oid"].as_str().unwrap().starts_with("1.3.6.1.2.1.1."))
    );
    let (status, e) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": target, "oids": ["sysDescr.0", "NOPE-MIB::thing.0"]}),
        )
        .await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::BAD_REQUEST, &json!("oids[1]")),
        "{e}"
    );
}

/// How many TranslateOids calls the catalog has answered.
async fn translations_asked(mesh: &TestMesh) -> u64 {
    mesh.metrics_text()
        .await
        .lines()
        .filter(|l| l.starts_with("rdm_requests_total{") && l.contains("MibService/TranslateOids"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A tenant's own MIB module (net-snmp's UCD-SNMP-MIB, which snmpd
/// serves) names its replies and its requests; another tenant still sees
/// the standard names only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_mib_modules_name_its_snmp_replies() {
    let (mesh, demo_token) = demo().await;
    let (tenant_id, token) = mesh.tenant_with_admin("ucd").await;
    mesh.allow_targets(&tenant_id, &["127.0.0.1/32"]).await;
    let target = json!({"endpoint": community("2c", "public")});
    let get = |token: String, oids: Value| {
        let (mesh, target) = (&mesh, target.clone());
        async move {
            mesh.post(
                "/v1/snmp/get",
                &token,
                json!({"target": target, "oids": oids}),
            )
            .await
        }
    };
    // Before the upload: the standard modules name only enterprises.
    let (status, before) = get(token.clone(), json!(["1.3.6.1.4.1.2021.4.5.0"])).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(
        before["varbinds"][0]["name"],
        "SNMPv2-SMI::enterprises.2021.4.5.0"
    );
    let (status, e) = get(token.clone(), json!(["UCD-SNMP-MIB::memTotalReal.0"])).await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::BAD_REQUEST, &json!("oids[0]")),
        "{e}"
    );
    // A walk in batches of 5 asks the catalog once: its answer says the
    // tenant has no modules of its own, and the other batches do not ask.
    let asked = translations_asked(&mesh).await;
    let (status, messages) = stream(
        &mesh,
        "/v1/snmp/walk",
        &token,
        json!({"target": target, "oid": "1.3.6.1.4.1.2021.4", "max_repetitions": 5}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{messages:?}");
    assert!(messages.len() > 2, "{messages:?}");
    assert_eq!(translations_asked(&mesh).await, asked + 1);

    let reply: Value = mesh
        .http
        .post(mesh.url("/v1/mibs?filename=UCD-SNMP-MIB.txt"))
        .bearer_auth(&token)
        .body(include_bytes!("../data/mibs/UCD-SNMP-MIB.txt").to_vec())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let upload = format!("/v1/mibs/uploads/{}", reply["id"].as_str().unwrap());
    let mut done = Value::Null;
    for _ in 0..200 {
        done = mesh.get(&upload, &token).await.1;
        if done["status"] != "parsing" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(done["added"], json!(["UCD-SNMP-MIB"]), "{done}");

    // A name only the tenant's module knows, in a request and in replies,
    // an enumerated INTEGER labelled by it.
    let (status, body) = get(
        token.clone(),
        json!([
            "UCD-SNMP-MIB::memTotalReal.0",
            "sysDescr.0",
            "memSwapError.0"
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let vbs = &body["varbinds"];
    assert_eq!(
        (&vbs[0]["oid"], &vbs[0]["name"]),
        (
            &json!("1.3.6.1.4.1.2021.4.5.0"),
            &json!("UCD-SNMP-MIB::memTotalReal.0")
        ),
        "{body}"
    );
    assert_eq!(vbs[1]["name"], "SNMPv2-MIB::sysDescr.0");
    assert_eq!(vbs[2]["name"], "UCD-SNMP-MIB::memSwapError.0");
    assert!(
        ["noError(0)", "error(1)"].contains(&vbs[2]["label"].as_str().unwrap()),
        "{body}"
    );
    // A walk of the subtree, by its name: every row of laTable named.
    let (status, messages) = stream(
        &mesh,
        "/v1/snmp/walk",
        &token,
        json!({"target": target, "oid": "UCD-SNMP-MIB::laTable"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{messages:?}");
    let walked = varbinds_of(&messages);
    assert!(walked.len() >= 3, "{walked:?}");
    assert!(
        walked
            .iter()
            .all(|vb| vb["name"].as_str().unwrap().starts_with("UCD-SNMP-MIB::la")),
        "{walked:?}"
    );

    // The demo tenant has no such module.
    let (status, before) = get(demo_token.clone(), json!(["1.3.6.1.4.1.2021.4.5.0"])).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(
        before["varbinds"][0]["name"],
        "SNMPv2-SMI::enterprises.2021.4.5.0"
    );
    let (status, e) = get(demo_token, json!(["UCD-SNMP-MIB::memTotalReal.0"])).await;
    assert_eq!(
        (status, &e["field"]),
        (StatusCode::BAD_REQUEST, &json!("oids[0]")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oids_values_and_targets_are_400s_naming_the_field() {
    let (mesh, token) = demo().await;
    let target = json!({"endpoint": community("2c", "public")});
    let cases = [
        (
            "/v1/snmp/get",
            json!({"target": target, "oids": ["1.3.x"]}),
            "oids[0]",
        ),
        (
            "/v1/snmp/get",
            json!({"target": target, "oids": []}),
            "oids",
        ),
        ("/v1/snmp/get", json!({"oids": ["1.3.6"]}), "target"),
        (
            "/v1/snmp/get",
            json!({"target": {"endpoint": {"host": "127.0.0.1", "version": "4c", "community": "x"}}, "oids": ["1.3.6"]}),
            "target.endpoint.version",
        ),
        (
            "/v1/snmp/get",
            json!({"target": {"endpoint": {"host": "127.0.0.1", "port": 70000, "version": "2c", "community": "x"}}, "oids": ["1.3.6"]}),
            "target.endpoint.port",
        ),
        (
            "/v1/snmp/get",
            json!({"target": {"endpoint": {"host": "127.0.0.1", "version": "3", "username": "u", "security_level": "authPriv", "auth_protocol": "SHA", "auth_password": "authpass123", "priv_protocol": "AES"}}, "oids": ["1.3.6"]}),
            "target.endpoint.priv_password",
        ),
        (
            "/v1/snmp/set",
            json!({"target": target, "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "INTEGER", "value": "ten"}]}),
            "varbinds[0].value",
        ),
        (
            "/v1/snmp/set",
            json!({"target": target, "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "Float", "value": "1"}]}),
            "varbinds[0].type",
        ),
        (
            "/v1/snmp/set",
            json!({"target": target, "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "IpAddress", "value": "10.1"}]}),
            "varbinds[0].value",
        ),
        (
            "/v1/snmp/set",
            json!({"target": target, "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "OCTET STRING", "hex": "xyz"}]}),
            "varbinds[0].hex",
        ),
        (
            "/v1/snmp/set",
            json!({"target": target, "varbinds": [{"oid": "x", "type": "INTEGER", "value": "1"}]}),
            "varbinds[0].oid",
        ),
        (
            "/v1/snmp/walk",
            json!({"target": target, "oid": "1..3"}),
            "oid",
        ),
        (
            "/v1/snmp/poll",
            json!({"targets": [], "oids": ["1.3.6.1.2.1.1.3.0"]}),
            "targets",
        ),
    ];
    for (path, body, field) in cases {
        let (status, reply) = if path.ends_with("walk") || path.ends_with("poll") {
            let (s, mut m) = stream(&mesh, path, &token, body.clone()).await;
            (s, m.remove(0))
        } else {
            mesh.post(path, &token, body.clone()).await
        };
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {reply}");
        assert_eq!(reply["field"], field, "{path} {body}: {reply}");
    }
    // An address the platform denies and the tenant was not given
    // (the demo has loopback): refused before anything is sent.
    let (status, reply) = mesh
        .post("/v1/snmp/get", &token, json!({"target": {"endpoint": {"host": "169.254.169.254", "version": "2c", "community": "public"}}, "oids": ["1.3.6.1.2.1.1.1.0"]}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert_eq!(reply["rule"], "link-local (cloud metadata)", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_targets_resolve_in_the_callers_tenant_only() {
    let (mesh, token) = demo().await;
    let (status, device) = mesh
        .post(
            "/v1/devices",
            &token,
            json!({"name": "agent-1", "address": "127.0.0.1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{device}");
    let id = device["id"].as_str().unwrap();
    let mut endpoint = user(2);
    endpoint.as_object_mut().unwrap().remove("host");
    let (status, body) = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{id}/endpoints/snmp"),
            Some(&token),
            Some(endpoint),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = mesh
        .post(
            "/v1/snmp/get",
            &token,
            json!({"target": {"device_id": id}, "oids": ["1.3.6.1.2.1.1.5.0"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["varbinds"][0]["value"],
        snmpget_string("1.3.6.1.2.1.1.5.0")
    );

    // Another tenant cannot use it, nor learn that it exists.
    let (_, other) = mesh.tenant_with_admin("other").await;
    let (status, body) = mesh
        .post(
            "/v1/snmp/get",
            &other,
            json!({"target": {"device_id": id}, "oids": ["1.3.6.1.2.1.1.5.0"]}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = mesh.post("/v1/snmp/get", &other, json!({"target": {"device_id": "00000000-0000-0000-0000-000000000000"}, "oids": ["1.3.6.1.2.1.1.5.0"]})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // Poll: one result per target, errors included, over gRPC too.
    let targets = json!([{"device_id": id}, {"endpoint": community("2c", "public")}, {"endpoint": {"host": "127.0.0.1", "port": 9, "version": "2c", "community": "public", "timeout_ms": 50, "retries": 0}}, {"device_id": "missing"}]);
    let (status, results) = stream(
        &mesh,
        "/v1/snmp/poll",
        &token,
        json!({"targets": targets, "oids": ["1.3.6.1.2.1.1.3.0"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{results:?}");
    let mut by_index: Vec<(u64, Value)> = results
        .iter()
        .map(|r| (r["index"].as_u64().unwrap_or(0), r.clone()))
        .collect();
    by_index.sort_by_key(|r| r.0);
    assert_eq!(by_index.len(), 4, "{results:?}");
    assert_eq!(by_index[0].1["device_id"], id);
    assert_eq!(by_index[0].1["values"]["varbinds"][0]["type"], "TimeTicks");
    assert_eq!(
        by_index[1].1["values"]["varbinds"][0]["oid"],
        "1.3.6.1.2.1.1.3.0"
    );
    assert_eq!(by_index[2].1["error"]["code"], "DEVICE_TIMEOUT");
    assert_eq!(by_index[3].1["error"]["code"], "NOT_FOUND");

    // Another tenant polling this device learns only that it is not found.
    let (_, other) = mesh.tenant_with_admin("poller").await;
    let (status, results) = stream(
        &mesh,
        "/v1/snmp/poll",
        &other,
        json!({"targets": [{"device_id": id}], "oids": ["1.3.6.1.2.1.1.3.0"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{results:?}");
    assert_eq!(results[0]["error"]["code"], "NOT_FOUND", "{results:?}");
    assert!(results[0].get("values").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walks_stream_over_grpc() {
    use rdm_proto::snmp::{Target, WalkRequest, snmp_service_client::SnmpServiceClient, target};
    let (mesh, token) = demo().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.gateway))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = SnmpServiceClient::new(channel);
    let endpoint = snmp_settings(&community("2c", "public"));
    let mut req = tonic::Request::new(WalkRequest {
        target: Some(Target {
            target: Some(target::Target::Endpoint(endpoint)),
        }),
        oid: "1.3.6.1.2.1.1".into(),
        max_repetitions: 4,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = client.walk(req).await.unwrap().into_inner();
    let mut oids = Vec::new();
    while let Some(batch) = stream.next().await {
        oids.extend(batch.unwrap().varbinds.into_iter().map(|v| v.oid));
    }
    let expected = snmpd::tool(
        "snmpwalk",
        &[
            "-v2c",
            "-c",
            "public",
            "-On",
            "-Oqn",
            snmpd::ADDR,
            "1.3.6.1.2.1.1",
        ],
    );
    let expected: Vec<String> = expected
        .lines()
        .filter(|l| l.starts_with('.'))
        .map(|l| l[1..].split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(oids, expected);
}

/// SNMP scaled out: one replica listens for traps (the snmp-traps
/// Deployment); another, with no listener, relays its watchers there, so a
/// watcher reaches the trap whichever replica the gateway picked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_any_replica_get_the_trap_roles_traps() {
    use rdm_tests::{Split, admin_on_loopback};
    snmpd::ensure();
    let split = Split::start(&[]).await;
    let trap_role = split
        .serve("snmp", &[("RDM_SNMP_TRAP_LISTEN", "127.0.0.1:0".into())])
        .await;
    let trap_port = trap_role
        .printed
        .iter()
        .find_map(|l| l.split("snmp-traps on ").nth(1))
        .unwrap_or_else(|| panic!("no trap address in {:?}", trap_role.printed))
        .trim()
        .to_owned();
    let replica = split
        .serve(
            "snmp",
            &[("RDM_SNMP_TRAPS_URL", format!("http://{}", trap_role.addr))],
        )
        .await;
    let gateway = split
        .serve(
            "gateway",
            &[("RDM_SNMP_URL", format!("http://{}", replica.addr))],
        )
        .await;
    let http = reqwest::Client::new();
    let base = gateway.url("");
    let token = &admin_on_loopback(&http, &base).await;
    let device = http
        .post(format!("{base}/v1/devices"))
        .bearer_auth(token)
        .json(&json!({"name": "trapper", "address": "127.0.0.1"}))
        .send_json()
        .await;
    let id = device["id"].as_str().unwrap_or_else(|| panic!("{device}"));
    let put = http
        .put(format!("{base}/v1/devices/{id}/endpoints/snmp"))
        .bearer_auth(token)
        .json(&json!({"version": "2c", "community": "public", "port": snmpd::PORT}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let mut lines = NdJson::get(&http, &format!("{base}/v1/snmp/traps"), token).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    snmpd::tool(
        "snmptrap",
        &[
            "-v2c",
            "-c",
            "public",
            &trap_port,
            "42",
            "1.3.6.1.6.3.1.1.5.3",
            "1.3.6.1.2.1.2.2.1.1.2",
            "i",
            "2",
        ],
    );
    let got = lines.next(1).await;
    assert_eq!(got[0]["device_id"], id, "{got:?}");
}

/// A walk whose agent never answers fails after its headers went out (in
/// the trailers): the metrics count it as failed, and the access log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_part_way_counts_as_failed() {
    use rdm_proto::snmp::{Target, WalkRequest, snmp_service_client::SnmpServiceClient, target};
    let (mesh, token) = demo().await;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut endpoint = community("2c", "public");
    endpoint["port"] = json!(silent.local_addr().unwrap().port());
    endpoint["timeout_ms"] = json!(100);
    endpoint["retries"] = json!(0);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.inventory))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut req = tonic::Request::new(WalkRequest {
        target: Some(Target {
            target: Some(target::Target::Endpoint(snmp_settings(&endpoint))),
        }),
        oid: "1.3.6.1.2.1.1".into(),
        max_repetitions: 4,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let mut stream = SnmpServiceClient::new(channel)
        .walk(req)
        .await
        .expect("the stream starts")
        .into_inner();
    let failed = loop {
        match stream.next().await {
            Some(Ok(_)) => continue,
            Some(Err(status)) => break status,
            None => panic!("the walk of a silent agent ended without an error"),
        }
    };
    assert_eq!(failed.code(), tonic::Code::DeadlineExceeded, "{failed:?}");
    let metrics = mesh.metrics_text().await;
    let walks: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("rdm_requests_total{") && l.contains("SnmpService/Walk"))
        .collect();
    assert!(
        walks.iter().any(|l| l.contains("grpc_status=\"4\"")),
        "{walks:?}"
    );
    assert!(
        !walks.iter().any(|l| l.contains("grpc_status=\"0\"")),
        "{walks:?}"
    );
    // The protocol's own count says why.
    assert!(
        metrics.lines().any(|l| l.starts_with("rdm_snmp_requests_total{")
            && l.contains("outcome=\"timeout\"")),
        "{metrics}"
    );
}

/// A `GET /v1/snmp/traps` stream, registered by the time this returns.
async fn watch_traps(mesh: &TestMesh, token: &str) -> NdJson {
    let lines = NdJson::get(&mesh.http, &mesh.url("/v1/snmp/traps"), token).await;
    // The watch is registered once its reply started; send after that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_and_informs_reach_the_devices_tenant() {
    let (mesh, token) = demo().await;
    let device_id = device_with_endpoint(
        &mesh,
        &token,
        "sender",
        json!({"version": "2c", "community": "public"}),
    )
    .await;
    let mut lines = watch_traps(&mesh, &token).await;
    let dest = mesh.traps.to_string();
    snmpd::tool(
        "snmptrap",
        &[
            "-v2c",
            "-c",
            "public",
            &dest,
            "42",
            "1.3.6.1.6.3.1.1.5.3",
            "1.3.6.1.2.1.2.2.1.1.2",
            "i",
            "2",
        ],
    );
    snmpd::tool(
        "snmptrap",
        &[
            "-v1",
            "-c",
            "public",
            &dest,
            "1.3.6.1.4.1.8072",
            "10.20.30.40",
            "6",
            "17",
            "99",
            "1.3.6.1.2.1.1.5.0",
            "s",
            "v1-trap",
        ],
    );
    // snmpinform waits for our acknowledgement: it fails if none comes.
    snmpd::tool(
        "snmpinform",
        &[
            "-v2c",
            "-c",
            "public",
            "-t",
            "10",
            "-r",
            "0",
            &dest,
            "7",
            "1.3.6.1.6.3.1.1.5.4",
            "1.3.6.1.2.1.2.2.1.1.2",
            "i",
            "2",
        ],
    );
    let got = lines.next(3).await;
    assert!(
        got.iter().all(|t| t["device_id"] == device_id.as_str()),
        "{got:?}"
    );
    assert_eq!(
        (
            got[0]["version"].as_str(),
            got[0]["kind"].as_str(),
            got[0]["trap_oid"].as_str(),
            got[0]["uptime"].as_str()
        ),
        (
            Some("2c"),
            Some("trap"),
            Some("1.3.6.1.6.3.1.1.5.3"),
            Some("42")
        )
    );
    assert_eq!(
        (got[1]["version"].as_str(), got[1]["trap_oid"].as_str()),
        (Some("1"), Some("1.3.6.1.4.1.8072.0.17"))
    );
    // RFC 3584 3.1: the v2 form, and the v1 header's fields kept.
    assert_eq!(
        (
            got[1]["agent_address"].as_str(),
            got[1]["enterprise"].as_str(),
            got[1]["generic_trap"].as_i64(),
            got[1]["specific_trap"].as_i64()
        ),
        (
            Some("10.20.30.40"),
            Some("1.3.6.1.4.1.8072"),
            Some(6),
            Some(17)
        ),
        "{}",
        got[1]
    );
    let v1: Vec<(&str, &str)> = got[1]["varbinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|vb| (vb["oid"].as_str().unwrap(), vb["value"].as_str().unwrap()))
        .collect();
    assert_eq!(
        v1,
        [
            ("1.3.6.1.2.1.1.3.0", "99"),
            ("1.3.6.1.6.3.1.1.4.1.0", "1.3.6.1.4.1.8072.0.17"),
            ("1.3.6.1.2.1.1.5.0", "v1-trap"),
            ("1.3.6.1.6.3.18.1.3.0", "10.20.30.40"),
            ("1.3.6.1.6.3.1.1.4.3.0", "1.3.6.1.4.1.8072")
        ]
    );
    assert_eq!(
        (got[2]["kind"].as_str(), got[2]["trap_oid"].as_str()),
        (Some("inform"), Some("1.3.6.1.6.3.1.1.5.4"))
    );

    // A trap with a community the device does not have is not its device's:
    // the next one, with the right community, is the next one delivered.
    // Another tenant with a device at the same address but another community
    // sees only its own device's traps.
    let (other_id, other) = mesh.tenant_with_admin("other").await;
    mesh.allow_targets(&other_id, &["127.0.0.0/8"]).await;
    let other_device = device_with_endpoint(
        &mesh,
        &other,
        "lookalike",
        json!({"version": "2c", "community": "other-community"}),
    )
    .await;
    let mut other_lines = watch_traps(&mesh, &other).await;
    for (community, uptime) in [("guess", "43"), ("public", "44"), ("other-community", "45")] {
        snmpd::tool(
            "snmptrap",
            &[
                "-v2c",
                "-c",
                community,
                &dest,
                uptime,
                "1.3.6.1.6.3.1.1.5.3",
            ],
        );
    }
    let mine = lines.next(1).await;
    assert_eq!(
        (mine[0]["uptime"].as_str(), mine[0]["device_id"].as_str()),
        (Some("44"), Some(device_id.as_str())),
        "the wrong community was dropped: {mine:?}"
    );
    let theirs = other_lines.next(1).await;
    assert_eq!(
        (
            theirs[0]["uptime"].as_str(),
            theirs[0]["device_id"].as_str()
        ),
        (Some("45"), Some(other_device.as_str())),
        "the other tenant got only its own device's trap: {theirs:?}"
    );
}

/// A device at 127.0.0.1 in the tenant of `token`, with `endpoint` as its SNMP endpoint.
async fn device_with_endpoint(mesh: &TestMesh, token: &str, name: &str, endpoint: Value) -> String {
    let (status, body) = mesh
        .post(
            "/v1/devices",
            token,
            json!({"name": name, "address": "127.0.0.1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body) = mesh
        .call(
            reqwest::Method::PUT,
            &format!("/v1/devices/{id}/endpoints/snmp"),
            Some(token),
            Some(endpoint),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

/// A v3 notification as net-snmp sends it: `snmpinform` (which waits for
/// the acknowledgement, without retrying) or `snmptrap`, as
/// `snmpd::USERS[user]` with these passwords, `extra` options first.
fn send_v3(
    tool: &str,
    user: usize,
    (auth_pass, priv_pass): (&str, &str),
    extra: &[&str],
    dest: &str,
    uptime: &str,
    trap_oid: &str,
) -> std::process::Output {
    let (name, auth, _, privacy, _) = snmpd::USERS[user];
    let mut args = vec![
        "-v3", "-l", "authPriv", "-u", name, "-a", auth, "-A", auth_pass, "-x", privacy, "-X",
        priv_pass,
    ];
    if tool == "snmpinform" {
        args.extend(["-t", "10", "-r", "0"]);
    }
    args.extend(extra);
    args.extend([dest, uptime, trap_oid, "1.3.6.1.2.1.2.2.1.1.2", "i", "2"]);
    snmpd::tool_output(tool, &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_informs_are_acknowledged_with_the_devices_own_credentials() {
    let (mesh, token) = demo().await;
    let device_id = device_with_endpoint(&mesh, &token, "v3-sender", user(2)).await;
    // Another tenant has a device at the same address, with other credentials.
    let (other_id, other) = mesh.tenant_with_admin("other").await;
    mesh.allow_targets(&other_id, &["127.0.0.0/8"]).await;
    device_with_endpoint(&mesh, &other, "lookalike", user(1)).await;
    let mut lines = watch_traps(&mesh, &token).await;
    let mut other_lines = watch_traps(&mesh, &other).await;

    let dest = mesh.traps.to_string();
    let (_, _, auth_pass, _, priv_pass) = snmpd::USERS[2];
    let inform = |auth_pass: &str, priv_pass: &str, uptime: &str| {
        let passwords = (auth_pass, priv_pass);
        send_v3(
            "snmpinform",
            2,
            passwords,
            &[],
            &dest,
            uptime,
            "1.3.6.1.6.3.1.1.5.4",
        )
    };
    // snmpinform exits 0 only once our acknowledgement decrypted and
    // verified. It does not retry (so an inform is delivered once) and waits
    // long, for a loaded test machine.
    let ok = inform(auth_pass, priv_pass, "11");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let got = lines.next(1).await;
    assert_eq!(
        (
            got[0]["device_id"].as_str(),
            got[0]["version"].as_str(),
            got[0]["kind"].as_str(),
            got[0]["trap_oid"].as_str(),
            got[0]["uptime"].as_str(),
        ),
        (
            Some(device_id.as_str()),
            Some("3"),
            Some("inform"),
            Some("1.3.6.1.6.3.1.1.5.4"),
            Some("11")
        ),
        "{got:?}"
    );

    // A v3 trap, sent with the device's own engine id (it is authoritative
    // for traps), verified with the same credentials localized to it.
    let own_engine = ["-e", "0x80001f8880aabbccddeeff"];
    let passwords = (auth_pass, priv_pass);
    let trap = send_v3(
        "snmptrap",
        2,
        passwords,
        &own_engine,
        &dest,
        "13",
        "1.3.6.1.6.3.1.1.5.3",
    );
    assert!(
        trap.status.success(),
        "{}",
        String::from_utf8_lossy(&trap.stderr)
    );
    let got = lines.next(1).await;
    assert_eq!(
        (
            got[0]["device_id"].as_str(),
            got[0]["version"].as_str(),
            got[0]["kind"].as_str(),
            got[0]["uptime"].as_str(),
        ),
        (
            Some(device_id.as_str()),
            Some("3"),
            Some("trap"),
            Some("13")
        ),
        "{got:?}"
    );

    // A device created after the watcher opened, with other credentials at
    // the same address: its informs are verified with its own at once.
    let later = device_with_endpoint(&mesh, &token, "v3-later", user(0)).await;
    let (_, _, auth_pass0, _, priv_pass0) = snmpd::USERS[0];
    let passwords = (auth_pass0, priv_pass0);
    let ok = send_v3(
        "snmpinform",
        0,
        passwords,
        &[],
        &dest,
        "14",
        "1.3.6.1.6.3.1.1.5.4",
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let got = lines.next(1).await;
    assert_eq!(
        (got[0]["device_id"].as_str(), got[0]["uptime"].as_str()),
        (Some(later.as_str()), Some("14")),
        "{got:?}"
    );

    // A wrong auth password is refused with a report: snmpinform says so,
    // and nobody is told of the inform.
    let wrong = inform("not-the-password", priv_pass, "12");
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr).to_lowercase();
    assert!(said.contains("authentication failure"), "{said}");
    let seen = lines.next_within(Duration::from_millis(500)).await;
    assert!(seen.is_none(), "a forged inform was delivered: {seen:?}");
    // The other tenant, whose device shares the address, saw neither.
    let seen = other_lines.next_within(Duration::from_millis(200)).await;
    assert!(seen.is_none(), "another tenant received {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_devices_answer_through_rdm() {
    let mesh = TestMesh::start_with_demo_devices(Store::Sqlite).await;
    let token = mesh.token("demo", "demo", "demo").await;
    let (status, body) = mesh.get("/v1/devices?name_prefix=demo-cpe-", &token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let devices = body["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{body}");
    for device in devices {
        let (id, name) = (
            device["id"].as_str().unwrap(),
            device["name"].as_str().unwrap(),
        );
        assert_eq!(device["protocols"], json!(["snmp", "webpa"]));
        let target = json!({"device_id": id});
        let (status, body) = mesh
            .post(
                "/v1/snmp/get",
                &token,
                json!({"target": target, "oids": ["1.3.6.1.2.1.1.5.0"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["varbinds"][0]["value"], name,
            "each device is its own agent"
        );
        let (status, messages) = stream(
            &mesh,
            "/v1/snmp/walk",
            &token,
            json!({"target": target, "oid": "1.3.6.1.2.1.2.2.1.2"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{messages:?}");
        let names: Vec<Value> = varbinds_of(&messages)
            .iter()
            .map(|v| v["value"].clone())
            .collect();
        assert_eq!(names, [json!("lo"), json!("wan0"), json!("lan0")]);
        let set = json!({"target": target, "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "OCTET STRING", "value": "moved"}]});
        let (status, body) = mesh.post("/v1/snmp/set", &token, set).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, body) = mesh
            .post(
                "/v1/snmp/get",
                &token,
                json!({"target": target, "oids": ["1.3.6.1.2.1.1.6.0"]}),
            )
            .await;
        assert_eq!(body["varbinds"][0]["value"], "moved");
        // A zero-width space is held, so it is shown as hex, not as text
        // that looks like "rack4" (net-snmp's sysLocation refuses it).
        let hidden = "rack\u{200B}4";
        let set = json!({"target": target, "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "s", "value": hidden}]});
        let (status, body) = mesh.post("/v1/snmp/set", &token, set).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, body) = mesh
            .post(
                "/v1/snmp/get",
                &token,
                json!({"target": target, "oids": ["1.3.6.1.2.1.1.6.0"]}),
            )
            .await;
        assert_eq!(
            (
                body["varbinds"][0]["value"].as_str(),
                body["varbinds"][0]["hex"].as_str()
            ),
            (Some(""), Some(hex::encode(hidden).as_str())),
            "{body}"
        );
    }
}

/// The Kubernetes shape: inventory, SNMP service and gateway as three
/// processes on PostgreSQL. A poll goes gateway -> snmp -> inventory
/// (ResolveTargets, with an actor token the inventory trusts) -> the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_snmp_as_its_own_process() {
    use rdm_tests::{Split, admin_on_loopback};
    snmpd::ensure();
    let split = Split::start(&[]).await;
    let snmp = split.serve("snmp", &[]).await;
    let gateway = split
        .serve(
            "gateway",
            &[("RDM_SNMP_URL", format!("http://{}", snmp.addr))],
        )
        .await;

    let http = reqwest::Client::new();
    let base = gateway.url("");
    // The agent is on loopback, which the platform denies unless allowed.
    let token = &admin_on_loopback(&http, &base).await;
    let device: Value = http
        .post(format!("{base}/v1/devices"))
        .bearer_auth(token)
        .json(&json!({"name": "agent", "address": "127.0.0.1"}))
        .send_json()
        .await;
    let id = device["id"].as_str().unwrap_or_else(|| panic!("{device}"));
    let put = http
        .put(format!("{base}/v1/devices/{id}/endpoints/snmp"))
        .bearer_auth(token)
        .json(&json!({"version": "2c", "community": "public", "port": snmpd::PORT}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let polled = http
        .post(format!("{base}/v1/snmp/poll"))
        .bearer_auth(token)
        .json(&json!({"targets": [{"device_id": id}, {"device_id": "missing"}], "oids": ["1.3.6.1.2.1.1.3.0"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(polled.status(), StatusCode::OK);
    let mut results: Vec<Value> = polled
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    results.sort_by_key(|r| r["index"].as_u64().unwrap_or(0));
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(
        results[0]["values"]["varbinds"][0]["type"], "TimeTicks",
        "{results:?}"
    );
    assert_eq!(results[1]["error"]["code"], "NOT_FOUND", "{results:?}");

    // A write through the SNMP process reaches the audit trail (sent to the
    // inventory, acting for the caller), with the agent's refusal.
    let set = http
        .post(format!("{base}/v1/snmp/set"))
        .bearer_auth(token)
        .json(&json!({"target": {"device_id": id}, "varbinds": [{"oid": "1.3.6.1.2.1.1.6.0", "type": "s", "value": "audited"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let mut audited = Value::Null;
    for _ in 0..100 {
        audited = http
            .get(format!(
                "{base}/v1/audit?filter.method_prefix=/rdm.snmp.v1.SnmpService/Set"
            ))
            .bearer_auth(token)
            .send_json()
            .await;
        if audited["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(audited["events"][0]["outcome"], "DEVICE_ERROR", "{audited}");
    // Recorded once: the internal call that carried it is not an event.
    let all = http
        .get(format!(
            "{base}/v1/audit?filter.method_prefix=/rdm.inventory.v1.AuditService"
        ))
        .bearer_auth(token)
        .send_json()
        .await;
    assert_eq!(all["events"].as_array().map(Vec::len), Some(0), "{all}");
    assert_eq!(audited["events"][0]["target"], id, "{audited}");

    // A user disabled through the gateway is refused by the SNMP process
    // too, which learns it from the inventory's list of revoked sessions.
    let (status, _) = http
        .post(format!("{base}/v1/users"))
        .bearer_auth(token)
        .json(&json!({"username": "op", "password": "pass-word-1", "roles": ["operator"]}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let op: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"tenant": "system", "username": "op", "password": "pass-word-1"}))
        .send_json()
        .await;
    let op = op["access_token"].as_str().unwrap().to_owned();
    let mut snmp_port = rdm_proto::snmp::snmp_service_client::SnmpServiceClient::new(
        rdm_tests::wait_for(snmp.addr).await,
    );
    let get = || {
        let mut req = tonic::Request::new(rdm_proto::snmp::GetRequest {
            target: Some(rdm_proto::snmp::Target {
                target: Some(rdm_proto::snmp::target::Target::DeviceId(id.to_owned())),
            }),
            oids: vec!["1.3.6.1.2.1.1.3.0".into()],
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {op}").parse().unwrap());
        req
    };
    assert!(snmp_port.get(get()).await.is_ok());
    // What every process apart from the inventory runs: a copy of its list.
    let copy = rdm_kit::auth::Revocations::default();
    copy.follow(
        rdm_kit::invoke::remote(&format!("http://{}", split.inventory.addr)).unwrap(),
        Duration::from_millis(200),
    );
    let claims = op.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, claims).unwrap(),
    )
    .unwrap();
    let sid = claims["sid"].as_str().unwrap().to_owned();
    let users: Value = http
        .get(format!("{base}/v1/users?username_prefix=op"))
        .bearer_auth(token)
        .send_json()
        .await;
    let op_id = users["users"][0]["id"].as_str().unwrap();
    let disabled = http
        .patch(format!("{base}/v1/users/{op_id}"))
        .bearer_auth(token)
        .json(&json!({"disabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.status(), StatusCode::OK);
    let since = std::time::Instant::now();
    let refused = loop {
        match snmp_port.get(get()).await {
            Err(s) if s.code() == tonic::Code::Unauthenticated => break s,
            _ if since.elapsed() > Duration::from_secs(10) => panic!("still accepted after 10 s"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(refused.message().contains("revoked"), "{refused:?}");
    let now = jsonwebtoken::get_current_timestamp;
    while !copy.is_revoked(&sid, now()) {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "not listed after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "a following process knew of the revocation after {:?}",
        since.elapsed()
    );
}
