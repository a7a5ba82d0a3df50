//! An ACS with the GenieACS north-bound API's shape, written from PEERS.md's
//! "TR-069 via an ACS north-bound API": CPEs with TR-181 (`Device.`) or
//! TR-098 (`InternetGatewayDevice.`) trees, online or offline; tasks that an
//! online CPE runs at once when a connection request is asked for (200) and
//! that wait for the CPE's next session otherwise (202, what became of the
//! task in the reason phrase); the devices, tasks, faults and files
//! collections with MongoDB-style queries and the `total` header; CWMP
//! faults for bad names (9005), bad values (9007) and read-only parameters
//! (9008); HTTP Basic on the API (the proxy a deployment puts in front);
//! and a down mode and a slow CPE for the error tests.
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde_json::{Map, Value, json};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// A CPE that takes [`SLOW_SESSION`] to run its tasks.
pub const SLOW_SERIAL: &str = "SLOW0001";
/// How long the slow CPE's session takes.
pub const SLOW_SESSION: Duration = Duration::from_millis(1500);

/// Which data model a CPE's tree follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// TR-181: `Device.`
    Tr181,
    /// TR-098: `InternetGatewayDevice.`
    Tr098,
}

/// A CPE to put in the ACS.
#[derive(Clone, Debug)]
pub struct CpeSpec {
    pub oui: String,
    pub product_class: String,
    pub serial: String,
    pub model: Model,
    pub online: bool,
    pub tags: Vec<String>,
}

impl CpeSpec {
    pub fn new(product_class: &str, serial: &str, model: Model, online: bool) -> Self {
        Self {
            oui: "202BC1".into(),
            product_class: product_class.into(),
            serial: serial.into(),
            model,
            online,
            tags: Vec::new(),
        }
    }

    pub fn tagged(mut self, tag: &str) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// The id GenieACS gives it: OUI-ProductClass-Serial, every character
    /// outside `[A-Za-z0-9_]` of each part `%XX`-escaped.
    pub fn id(&self) -> String {
        [&self.oui, &self.product_class, &self.serial]
            .iter()
            .map(|part| escape(part))
            .collect::<Vec<_>>()
            .join("-")
    }
}

fn escape(part: &str) -> String {
    part.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Param {
    value: String,
    xsd: &'static str,
    writable: bool,
    timestamp: String,
}

#[derive(Debug)]
struct Cpe {
    spec: CpeSpec,
    params: BTreeMap<String, Param>,
    /// Multi-instance objects instances can be added to (`X.Y.`).
    tables: BTreeSet<String>,
    last_inform: String,
    /// Tasks this CPE ran, by name.
    ran: Vec<String>,
}

#[derive(Default)]
struct Store {
    cpes: BTreeMap<String, Cpe>,
    /// Pending tasks in the order they were added.
    tasks: Vec<Value>,
    faults: BTreeMap<String, Value>,
    files: BTreeMap<String, Value>,
    next_id: u64,
}

struct Sim {
    credentials: (String, String),
    state: Mutex<Store>,
    down: Mutex<bool>,
}

/// A running ACS; stops when dropped.
pub struct AcsSim {
    pub addr: SocketAddr,
    sim: Arc<Sim>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AcsSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The NBI's Basic credentials in the simulator (the proxy's).
pub fn credentials() -> (String, String) {
    ("acs-admin".into(), "acs-password".into())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl AcsSim {
    /// The NBI's base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Brings a CPE on or off line. Coming on line, it opens a session and
    /// runs the tasks the ACS holds for it, as a real CPE's periodic
    /// Inform would.
    pub fn set_online(&self, id: &str, online: bool) {
        let mut state = self.sim.state.lock().unwrap();
        if let Some(cpe) = state.cpes.get_mut(id) {
            cpe.spec.online = online;
        }
        if online {
            session(&mut state, id);
        }
    }

    /// Every request answers 503, as an ACS whose database is gone does.
    pub fn set_down(&self, down: bool) {
        *self.sim.down.lock().unwrap() = down;
    }

    /// A parameter's value as the CPE holds it.
    pub fn value(&self, id: &str, name: &str) -> Option<String> {
        let state = self.sim.state.lock().unwrap();
        Some(state.cpes.get(id)?.params.get(name)?.value.clone())
    }

    /// The tasks a CPE ran, by name, in order.
    pub fn ran(&self, id: &str) -> Vec<String> {
        let state = self.sim.state.lock().unwrap();
        state
            .cpes
            .get(id)
            .map(|c| c.ran.clone())
            .unwrap_or_default()
    }

    /// Every pending task, as the ACS stores it.
    pub fn pending(&self) -> Vec<Value> {
        self.sim.state.lock().unwrap().tasks.clone()
    }
}

/// Starts the ACS on `addr` with `cpes` and a firmware file
/// (`firmware-2.0.bin`) to download.
pub async fn start(addr: SocketAddr, cpes: &[CpeSpec]) -> std::io::Result<AcsSim> {
    let mut state = Store::default();
    for spec in cpes {
        state.cpes.insert(spec.id(), cpe(spec.clone()));
    }
    state.files.insert(
        "firmware-2.0.bin".into(),
        json!({"_id": "firmware-2.0.bin", "metadata": {"fileType": "1 Firmware Upgrade Image", "version": "2.0"}, "length": 4096}),
    );
    let sim = Arc::new(Sim {
        credentials: credentials(),
        state: Mutex::new(state),
        down: Mutex::new(false),
    });
    let app = Router::new()
        .route("/devices/{id}/tasks", post(add_task))
        .route("/tasks/{id}", delete(delete_task))
        .route("/tasks/{id}/retry", post(retry_task))
        .route("/faults/{id}", delete(delete_fault))
        .route("/{collection}", get(find))
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(AcsSim { addr, sim, task })
}

fn cpe(spec: CpeSpec) -> Cpe {
    let t = now();
    let mut params = BTreeMap::new();
    let mut add = |name: String, value: &str, xsd: &'static str, writable: bool| {
        params.insert(
            name,
            Param {
                value: value.into(),
                xsd,
                writable,
                timestamp: t.clone(),
            },
        );
    };
    let root = match spec.model {
        Model::Tr181 => "Device",
        Model::Tr098 => "InternetGatewayDevice",
    };
    let info = format!("{root}.DeviceInfo");
    add(format!("{info}.Manufacturer"), "rdm", "xsd:string", false);
    add(
        format!("{info}.ManufacturerOUI"),
        &spec.oui,
        "xsd:string",
        false,
    );
    add(
        format!("{info}.ProductClass"),
        &spec.product_class,
        "xsd:string",
        false,
    );
    add(
        format!("{info}.SerialNumber"),
        &spec.serial,
        "xsd:string",
        false,
    );
    add(
        format!("{info}.SoftwareVersion"),
        "1.0",
        "xsd:string",
        false,
    );
    add(format!("{info}.UpTime"), "3600", "xsd:unsignedInt", false);
    add(
        format!("{root}.ManagementServer.PeriodicInformInterval"),
        "300",
        "xsd:unsignedInt",
        true,
    );
    add(
        format!("{root}.ManagementServer.PeriodicInformEnable"),
        "true",
        "xsd:boolean",
        true,
    );
    add(
        format!("{root}.Time.NTPServer1"),
        "pool.ntp.org",
        "xsd:string",
        true,
    );
    let mut tables = BTreeSet::new();
    match spec.model {
        Model::Tr181 => {
            for (i, ssid) in [(1, "home"), (2, "home-guest")] {
                add(
                    format!("Device.WiFi.SSID.{i}.SSID"),
                    ssid,
                    "xsd:string",
                    true,
                );
                add(
                    format!("Device.WiFi.SSID.{i}.Enable"),
                    "true",
                    "xsd:boolean",
                    true,
                );
            }
            add(
                "Device.NAT.PortMapping.1.Enable".into(),
                "true",
                "xsd:boolean",
                true,
            );
            add(
                "Device.NAT.PortMapping.1.ExternalPort".into(),
                "8080",
                "xsd:unsignedInt",
                true,
            );
            add(
                "Device.NAT.PortMapping.1.Description".into(),
                "web server",
                "xsd:string",
                true,
            );
            tables.insert("Device.NAT.PortMapping.".to_owned());
        }
        Model::Tr098 => {
            let lan = "InternetGatewayDevice.LANDevice.1.WLANConfiguration.1";
            add(format!("{lan}.SSID"), "home", "xsd:string", true);
            add(format!("{lan}.Enable"), "true", "xsd:boolean", true);
            let wan = "InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANIPConnection.1";
            add(
                format!("{wan}.PortMapping.1.PortMappingEnabled"),
                "true",
                "xsd:boolean",
                true,
            );
            add(
                format!("{wan}.PortMapping.1.ExternalPort"),
                "8080",
                "xsd:unsignedInt",
                true,
            );
            tables.insert(format!("{wan}.PortMapping."));
        }
    }
    Cpe {
        spec,
        params,
        tables,
        last_inform: t,
        ran: Vec::new(),
    }
}

/// A response with a reason phrase of its own, as GenieACS sends it.
fn with_reason(status: StatusCode, reason: &'static str, body: Value) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(reason.as_bytes()));
    resp
}

fn text(status: StatusCode, body: &str) -> Response {
    (status, body.to_owned()).into_response()
}

/// Sign-in and the down mode; None: go on.
fn gate(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    use base64::Engine;
    if *sim.down.lock().unwrap() {
        return Some(text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"));
    }
    let expected = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", sim.credentials.0, sim.credentials.1));
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "));
    if given != Some(expected.as_str()) {
        return Some(text(StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    None
}

async fn add_task(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(resp) = gate(&sim, &headers) {
        return resp;
    }
    let Ok(Value::Object(mut task)) = serde_json::from_slice::<Value>(&body) else {
        return text(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let (task_id, online, slow) = {
        let mut state = sim.state.lock().unwrap();
        let Some(cpe) = state.cpes.get(&id) else {
            return text(StatusCode::NOT_FOUND, "No such device");
        };
        let online = cpe.spec.online;
        let slow = cpe.spec.serial == SLOW_SERIAL;
        state.next_id += 1;
        let task_id = format!("{:024x}", state.next_id);
        task.insert("_id".into(), task_id.clone().into());
        task.insert("device".into(), id.clone().into());
        task.insert("timestamp".into(), now().into());
        state.tasks.push(Value::Object(task.clone()));
        (task_id, online, slow)
    };
    let stored = Value::Object(task);
    if !query.contains_key("connection_request") || !online {
        return with_reason(
            StatusCode::ACCEPTED,
            "Task queued but not processed",
            stored,
        );
    }
    let timeout = query
        .get("timeout")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(3), Duration::from_millis);
    if slow {
        if SLOW_SESSION > timeout {
            tokio::time::sleep(timeout).await;
            return with_reason(
                StatusCode::ACCEPTED,
                "Task queued but not processed",
                stored,
            );
        }
        tokio::time::sleep(SLOW_SESSION).await;
    }
    let mut state = sim.state.lock().unwrap();
    session(&mut state, &id);
    match state.faults.contains_key(&format!("{id}:task_{task_id}")) {
        true => with_reason(StatusCode::ACCEPTED, "Task faulted", stored),
        false => (StatusCode::OK, Json(stored)).into_response(),
    }
}

/// A CPE's session: runs its pending tasks in order; a faulted one stays,
/// with its fault.
fn session(state: &mut Store, id: &str) {
    let Store {
        cpes,
        tasks,
        faults,
        files,
        ..
    } = state;
    let Some(cpe) = cpes.get_mut(id) else {
        return;
    };
    cpe.last_inform = now();
    let mut kept = Vec::new();
    for task in std::mem::take(tasks) {
        let task_id = task["_id"].as_str().unwrap_or_default().to_owned();
        let fault_id = format!("{id}:task_{task_id}");
        if task["device"] != *id || faults.contains_key(&fault_id) {
            kept.push(task);
            continue;
        }
        match run(cpe, &task, files) {
            Ok(()) => cpe
                .ran
                .push(task["name"].as_str().unwrap_or_default().to_owned()),
            Err(fault) => {
                let mut fault = fault;
                fault["_id"] = fault_id.clone().into();
                fault["device"] = id.into();
                fault["channel"] = format!("task_{task_id}").into();
                fault["timestamp"] = now().into();
                fault["retries"] = 0.into();
                faults.insert(fault_id, fault);
                kept.push(task);
            }
        }
    }
    *tasks = kept;
}

fn cwmp_fault(code: u32, string: &str, parameter: Option<&str>) -> Value {
    let mut detail = json!({"faultCode": code.to_string(), "faultString": string});
    if let Some(name) = parameter {
        detail["setParameterValuesFault"] =
            json!([{"parameterName": name, "faultCode": code.to_string(), "faultString": string}]);
    }
    json!({"code": format!("cwmp.{code}"), "message": string, "detail": detail})
}

/// Runs one task on a CPE: Err is the fault document's body.
fn run(cpe: &mut Cpe, task: &Value, files: &BTreeMap<String, Value>) -> Result<(), Value> {
    let object = task["objectName"].as_str().unwrap_or_default();
    let object = format!("{}.", object.trim_end_matches('.'));
    let exists = |cpe: &Cpe, path: &str| {
        cpe.params
            .keys()
            .any(|n| n == path || (path.ends_with('.') && n.starts_with(path)))
    };
    match task["name"].as_str().unwrap_or_default() {
        "getParameterValues" => {
            let t = now();
            for name in task["parameterNames"].as_array().into_iter().flatten() {
                let name = name.as_str().unwrap_or_default();
                if !exists(cpe, name) {
                    return Err(cwmp_fault(
                        9005,
                        &format!("Invalid parameter name: {name}"),
                        None,
                    ));
                }
                for (n, p) in cpe.params.iter_mut() {
                    if n == name || (name.ends_with('.') && n.starts_with(name)) {
                        p.timestamp = t.clone();
                    }
                }
            }
        }
        "setParameterValues" => {
            let values = task["parameterValues"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // Checked first: a SetParameterValues is applied whole or not at all.
            for v in &values {
                let (name, value, xsd) = (
                    v[0].as_str().unwrap_or_default(),
                    &v[1],
                    v[2].as_str().unwrap_or("xsd:string"),
                );
                let Some(p) = cpe.params.get(name) else {
                    return Err(cwmp_fault(9005, "Invalid parameter name", Some(name)));
                };
                if !p.writable {
                    return Err(cwmp_fault(
                        9008,
                        "Attempt to set a non-writable parameter",
                        Some(name),
                    ));
                }
                if !valid(&lexical(value), p.xsd) || (xsd != p.xsd && xsd != "xsd:string") {
                    return Err(cwmp_fault(9007, "Invalid parameter value", Some(name)));
                }
            }
            let t = now();
            for v in &values {
                let p = cpe
                    .params
                    .get_mut(v[0].as_str().unwrap_or_default())
                    .expect("checked");
                p.value = lexical(&v[1]);
                p.timestamp = t.clone();
            }
        }
        "refreshObject" => {
            if !exists(cpe, &object) && !exists(cpe, object.trim_end_matches('.')) {
                return Err(cwmp_fault(
                    9005,
                    &format!("Invalid parameter name: {object}"),
                    None,
                ));
            }
        }
        "addObject" => {
            if !cpe.tables.contains(&object) {
                return Err(cwmp_fault(
                    9005,
                    &format!("Invalid parameter name: {object}"),
                    None,
                ));
            }
            let instances: BTreeSet<u32> = cpe
                .params
                .keys()
                .filter_map(|n| n.strip_prefix(&object)?.split('.').next()?.parse().ok())
                .collect();
            let next = instances.last().map_or(1, |i| i + 1);
            let template: Vec<(String, Param)> = cpe
                .params
                .iter()
                .filter_map(|(n, p)| {
                    let rest = n.strip_prefix(&object)?;
                    let (instance, field) = rest.split_once('.')?;
                    (instance.parse() == Ok(*instances.first()?))
                        .then(|| (field.to_owned(), p.clone()))
                })
                .collect();
            for (field, mut p) in template {
                p.value = match p.xsd {
                    "xsd:boolean" => "false".into(),
                    "xsd:unsignedInt" | "xsd:int" => "0".into(),
                    _ => String::new(),
                };
                p.timestamp = now();
                cpe.params.insert(format!("{object}{next}.{field}"), p);
            }
        }
        "deleteObject" => {
            let table = object
                .trim_end_matches('.')
                .rsplit_once('.')
                .map(|(t, _)| format!("{t}."));
            if !table.is_some_and(|t| cpe.tables.contains(&t)) || !exists(cpe, &object) {
                return Err(cwmp_fault(
                    9005,
                    &format!("Invalid parameter name: {object}"),
                    None,
                ));
            }
            cpe.params.retain(|n, _| !n.starts_with(&object));
        }
        // Recorded in `ran`, like every task the CPE runs.
        "reboot" | "factoryReset" => {}
        "download" => {
            let file = task["fileName"].as_str().unwrap_or_default();
            if !files.contains_key(file) {
                return Err(cwmp_fault(9016, "Unable to access the file", None));
            }
        }
        other => {
            return Err(json!({"code": "8000", "message": format!("unknown task {other}")}));
        }
    }
    Ok(())
}

/// A value's text as TR-069 carries it.
fn lexical(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn valid(value: &str, xsd: &str) -> bool {
    match xsd {
        "xsd:boolean" => matches!(value, "true" | "false" | "1" | "0"),
        "xsd:unsignedInt" => value.parse::<u32>().is_ok(),
        "xsd:int" => value.parse::<i32>().is_ok(),
        _ => true,
    }
}

async fn delete_task(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = gate(&sim, &headers) {
        return resp;
    }
    let mut state = sim.state.lock().unwrap();
    let before = state.tasks.len();
    state.tasks.retain(|t| t["_id"] != *id);
    if state.tasks.len() == before {
        return text(StatusCode::NOT_FOUND, "Task not found");
    }
    clear_faults_of_task(&mut state, &id);
    StatusCode::OK.into_response()
}

/// A task's fault goes when the task is deleted or retried.
fn clear_faults_of_task(state: &mut Store, id: &str) {
    let channel = format!("task_{id}");
    state.faults.retain(|_, f| f["channel"] != *channel);
}

async fn retry_task(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = gate(&sim, &headers) {
        return resp;
    }
    let mut state = sim.state.lock().unwrap();
    if !state.tasks.iter().any(|t| t["_id"] == *id) {
        return text(StatusCode::NOT_FOUND, "Task not found");
    }
    clear_faults_of_task(&mut state, &id);
    StatusCode::OK.into_response()
}

async fn delete_fault(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = gate(&sim, &headers) {
        return resp;
    }
    match sim.state.lock().unwrap().faults.remove(&id) {
        Some(_) => StatusCode::OK.into_response(),
        None => text(StatusCode::NOT_FOUND, "Fault not found"),
    }
}

async fn find(
    State(sim): State<Arc<Sim>>,
    Path(collection): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = gate(&sim, &headers) {
        return resp;
    }
    let query = match params
        .get("query")
        .map(|q| serde_json::from_str::<Value>(q))
    {
        None => json!({}),
        Some(Ok(q @ Value::Object(_))) => q,
        Some(_) => return text(StatusCode::BAD_REQUEST, "Invalid query"),
    };
    let number = |name: &str| params.get(name).and_then(|v| v.parse::<usize>().ok());
    let (skip, limit) = (
        number("skip").unwrap_or(0),
        number("limit").unwrap_or(usize::MAX),
    );
    let docs: Vec<Value> = {
        let state = sim.state.lock().unwrap();
        match collection.as_str() {
            "devices" => state.cpes.values().map(document).collect(),
            "tasks" => state.tasks.clone(),
            "faults" => state.faults.values().cloned().collect(),
            "files" => state.files.values().cloned().collect(),
            "presets" => Vec::new(),
            _ => return text(StatusCode::NOT_FOUND, "Not found"),
        }
    };
    let mut matched = Vec::new();
    for doc in docs {
        match matches(&doc, &query) {
            Ok(true) => matched.push(doc),
            Ok(false) => {}
            Err(why) => return text(StatusCode::BAD_REQUEST, &why),
        }
    }
    let total = matched.len();
    let projection: Vec<&str> = params
        .get("projection")
        .map(|p| p.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let page: Vec<Value> = matched
        .into_iter()
        .skip(skip)
        .take(limit)
        .map(|doc| project(doc, &projection))
        .collect();
    let mut resp = Json(page).into_response();
    resp.headers_mut()
        .insert("total", total.to_string().parse().expect("a number"));
    resp
}

/// A CPE as the devices collection stores it: a tree.
fn document(cpe: &Cpe) -> Value {
    let mut root = Map::new();
    for (name, p) in &cpe.params {
        let parts: Vec<&str> = name.split('.').collect();
        let mut node = &mut root;
        let mut path = String::new();
        for part in &parts[..parts.len() - 1] {
            path.push_str(part);
            path.push('.');
            let writable = cpe.tables.contains(&path)
                || cpe.tables.iter().any(|t| {
                    path.strip_prefix(t.as_str())
                        .is_some_and(|rest| rest.trim_end_matches('.').parse::<u32>().is_ok())
                });
            let child = node
                .entry(part.to_string())
                .or_insert_with(|| json!({"_object": true, "_writable": writable}));
            node = child.as_object_mut().expect("an object node");
        }
        let value = match p.xsd {
            "xsd:boolean" => json!(p.value == "true" || p.value == "1"),
            "xsd:unsignedInt" | "xsd:int" => {
                p.value.parse::<i64>().map_or(json!(p.value), |n| json!(n))
            }
            _ => json!(p.value),
        };
        node.insert(
            parts[parts.len() - 1].to_owned(),
            json!({"_value": value, "_type": p.xsd, "_timestamp": p.timestamp, "_writable": p.writable}),
        );
    }
    root.insert("_id".into(), cpe.spec.id().into());
    root.insert(
        "_deviceId".into(),
        json!({"_Manufacturer": "rdm", "_OUI": cpe.spec.oui, "_ProductClass": cpe.spec.product_class, "_SerialNumber": cpe.spec.serial}),
    );
    root.insert("_lastInform".into(), cpe.last_inform.clone().into());
    root.insert("_tags".into(), json!(cpe.spec.tags));
    Value::Object(root)
}

/// A document cut down to the projection's paths (and `_id`).
fn project(doc: Value, paths: &[&str]) -> Value {
    if paths.is_empty() {
        return doc;
    }
    let mut out = Map::new();
    out.insert("_id".into(), doc["_id"].clone());
    for path in paths {
        let parts: Vec<&str> = path.split('.').collect();
        let mut source = &doc;
        for part in &parts {
            source = &source[*part];
        }
        if source.is_null() {
            continue;
        }
        let mut node = &mut out;
        for part in &parts[..parts.len() - 1] {
            node = node
                .entry(part.to_string())
                .or_insert_with(|| json!({"_object": true}))
                .as_object_mut()
                .expect("an object node");
        }
        node.insert(parts[parts.len() - 1].to_owned(), source.clone());
    }
    Value::Object(out)
}

/// Whether a document matches a MongoDB-style query: field equality
/// (dotted paths, an array field matching any element, a parameter by its
/// `_value`), `$and`, `$or`, `$in`, `$ne`.
fn matches(doc: &Value, query: &Value) -> Result<bool, String> {
    let Some(fields) = query.as_object() else {
        return Err("a query is a JSON object".into());
    };
    for (key, want) in fields {
        let ok = match key.as_str() {
            "$and" | "$or" => {
                let parts = want.as_array().ok_or(format!("{key} takes an array"))?;
                let results = parts
                    .iter()
                    .map(|q| matches(doc, q))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    results.iter().all(|r| *r)
                } else {
                    results.iter().any(|r| *r)
                }
            }
            k if k.starts_with('$') => return Err(format!("unknown operator {k}")),
            path => {
                let mut have = doc;
                for part in path.split('.') {
                    have = &have[part];
                }
                if let Some(v) = have.get("_value") {
                    have = v;
                }
                compare(have, want)?
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn compare(have: &Value, want: &Value) -> Result<bool, String> {
    let equal = |w: &Value| match have {
        Value::Array(items) => items.contains(w),
        h => h == w,
    };
    match want {
        Value::Object(ops) if ops.keys().all(|k| k.starts_with('$')) && !ops.is_empty() => {
            for (op, arg) in ops {
                let ok = match op.as_str() {
                    "$in" => arg
                        .as_array()
                        .ok_or("$in takes an array")?
                        .iter()
                        .any(equal),
                    "$ne" => !equal(arg),
                    other => return Err(format!("unknown operator {other}")),
                };
                if !ok {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        w => Ok(equal(w)),
    }
}
