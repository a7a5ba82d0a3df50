//! A tr1d1um-shaped XMiDT server (the WebPA device-config API) with a few
//! simulated devices, written from PEERS.md's "WebPA (XMiDT tr1d1um API)":
//! routes under `/api/v3` and `/api/v2`, Basic, Bearer and API-key sign-in,
//! the device `statusCode`s in the body (and as the HTTP status only for
//! 403 and 520–599), test-and-set headers, tables, and an
//! `X-WebPA-Transaction-Id` on every reply.
use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Devices that misbehave in one way each (their XMiDT ids).
pub const BUSY: &str = "mac:000000000530";
/// Answers "a previous request is in progress" (statusCode 202).
pub const IN_PROGRESS: &str = "mac:000000000202";
/// XMiDT waited for it and gave up: 504.
pub const TIMING_OUT: &str = "mac:000000000504";
/// Answers every request, but only after [`SLOW_DELAY`].
pub const SLOW: &str = "mac:00000000051a";
/// XMiDT itself is unavailable for this one: 503.
pub const UNAVAILABLE: &str = "mac:000000000503";
/// Not connected to XMiDT (any id the server does not know is offline too).
pub const OFFLINE: &str = "mac:000000000404";
/// How long [`SLOW`] takes to answer.
pub const SLOW_DELAY: Duration = Duration::from_millis(1500);

/// The credentials the server takes: any one of them.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub basic: (String, String),
    pub bearer: String,
    /// Header name and key.
    pub api_key: (String, String),
}

impl Default for Credentials {
    fn default() -> Self {
        Self {
            basic: ("rdm".into(), "xmidt-password".into()),
            bearer: "xmidt-token".into(),
            api_key: ("X-Xmidt-Key".into(), "xmidt-key".into()),
        }
    }
}

/// One parameter of a device.
#[derive(Clone, Debug)]
struct Param {
    value: String,
    data_type: u8,
    writable: bool,
    notify: u8,
}

#[derive(Debug, Default)]
struct Device {
    params: BTreeMap<String, Param>,
    /// Tables rows can be added to (names ending in `.`).
    tables: Vec<String>,
    /// Config requests (PATCH, POST, PUT, DELETE) the device received.
    writes: u64,
}

struct Sim {
    credentials: Credentials,
    devices: Mutex<HashMap<String, Device>>,
    transactions: AtomicU64,
    cids: AtomicU64,
}

/// A running simulator; stops when dropped.
pub struct WebpaSim {
    pub addr: SocketAddr,
    sim: Arc<Sim>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebpaSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebpaSim {
    /// The server's base URL (`http://127.0.0.1:port`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Config writes the device `id` received, applied or not.
    pub fn writes(&self, id: &str) -> u64 {
        self.sim
            .devices
            .lock()
            .unwrap()
            .get(id)
            .map_or(0, |d| d.writes)
    }

    /// A parameter's value as the device holds it.
    pub fn value(&self, id: &str, name: &str) -> Option<String> {
        let devices = self.sim.devices.lock().unwrap();
        Some(devices.get(id)?.params.get(name)?.value.clone())
    }
}

/// A home gateway's TR-181 tree: `serial` is its serial number.
fn gateway(serial: &str, model: &str) -> Device {
    let mut params = BTreeMap::new();
    let mut add = |name: &str, value: &str, data_type: u8, writable: bool| {
        params.insert(
            name.to_owned(),
            Param {
                value: value.to_owned(),
                data_type,
                writable,
                notify: 0,
            },
        );
    };
    add("Device.DeviceInfo.Manufacturer", "rdm", 0, false);
    add("Device.DeviceInfo.ModelName", model, 0, false);
    add("Device.DeviceInfo.SerialNumber", serial, 0, false);
    add("Device.DeviceInfo.SoftwareVersion", "1.4.2", 0, false);
    add("Device.DeviceInfo.UpTime", "86400", 2, false);
    add(
        "Device.DeviceInfo.X_RDKCENTRAL-COM_BootCount",
        "-3",
        1,
        true,
    );
    add(
        "Device.DeviceInfo.X_RDKCENTRAL-COM_BytesSent",
        "18446744073709551615",
        7,
        false,
    );
    add(
        "Device.DeviceInfo.X_RDKCENTRAL-COM_Temperature",
        "41.5",
        9,
        false,
    );
    add(
        "Device.DeviceInfo.X_RDKCENTRAL-COM_Blob",
        "aGVsbG8=",
        12,
        true,
    );
    add("Device.DeviceInfo.Webpa.X_COMCAST-COM_CID", "0", 0, false);
    add("Device.DeviceInfo.Webpa.X_COMCAST-COM_CMC", "0", 2, false);
    add(
        "Device.Time.CurrentLocalTime",
        "2026-11-30T06:00:00Z",
        4,
        false,
    );
    add("Device.Time.Enable", "true", 3, true);
    for (i, ssid, enabled) in [(1, "home", "true"), (2, "home-guest", "false")] {
        add(&format!("Device.WiFi.SSID.{i}.Enable"), enabled, 3, true);
        add(&format!("Device.WiFi.SSID.{i}.SSID"), ssid, 0, true);
        add(&format!("Device.WiFi.SSID.{i}.Channel"), "6", 2, true);
    }
    add(
        "Device.NAT.PortMapping.1.Description",
        "web server",
        0,
        true,
    );
    add("Device.NAT.PortMapping.1.ExternalPort", "8080", 2, true);
    Device {
        params,
        tables: vec!["Device.NAT.PortMapping.".into()],
        writes: 0,
    }
}

/// Starts the server on `addr` with `devices` (XMiDT id, serial, model)
/// plus the misbehaving ones.
pub async fn start(
    addr: SocketAddr,
    credentials: Credentials,
    devices: &[(&str, &str, &str)],
) -> std::io::Result<WebpaSim> {
    let mut all = HashMap::new();
    for (id, serial, model) in devices {
        all.insert((*id).to_owned(), gateway(serial, model));
    }
    for id in [BUSY, IN_PROGRESS, TIMING_OUT, SLOW, UNAVAILABLE] {
        all.insert(id.to_owned(), gateway(id, "misbehaving gateway"));
    }
    let sim = Arc::new(Sim {
        credentials,
        devices: Mutex::new(all),
        transactions: AtomicU64::new(0),
        cids: AtomicU64::new(0),
    });
    let config = get(get_config).patch(patch_config);
    let rows = axum::routing::post(add_row)
        .put(replace_rows)
        .delete(delete_row);
    let app = Router::new()
        .route("/api/{version}/device/{id}/config", config)
        .route("/api/{version}/device/{id}/config/{name}", rows)
        .with_state(sim.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(WebpaSim { addr, sim, task })
}

/// A reply with the transaction id every tr1d1um reply carries. The HTTP
/// status is the device's `statusCode` only for 403 and 520–599.
fn reply(sim: &Sim, body: Value) -> Response {
    let code = body["statusCode"].as_u64().unwrap_or(200) as u16;
    let status = match code {
        403 | 520..=599 => StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        _ => StatusCode::OK,
    };
    with_id(sim, status, body)
}

fn with_id(sim: &Sim, status: StatusCode, body: Value) -> Response {
    let id = sim.transactions.fetch_add(1, Ordering::Relaxed);
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        "X-WebPA-Transaction-Id",
        format!("sim-{id:08}").parse().expect("a header value"),
    );
    resp
}

/// tr1d1um's own errors: `{"message"}` with its HTTP status.
fn own_error(sim: &Sim, status: StatusCode, message: &str) -> Response {
    with_id(sim, status, json!({"message": message}))
}

fn failure(sim: &Sim, code: u16, message: &str) -> Response {
    reply(sim, json!({"message": message, "statusCode": code}))
}

/// Sign-in, then the device's own way of misbehaving; None: go on.
async fn gate(sim: &Sim, headers: &HeaderMap, id: &str, write: bool) -> Option<Response> {
    if !signed_in(&sim.credentials, headers) {
        return Some(own_error(sim, StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    match sim.devices.lock().unwrap().get_mut(id) {
        None => return Some(own_error(sim, StatusCode::NOT_FOUND, "device not found")),
        Some(device) if write => device.writes += 1,
        Some(_) => {}
    }
    match id {
        BUSY => Some(failure(sim, 530, "WiFi is busy, try again")),
        IN_PROGRESS => Some(failure(sim, 202, "Previous request is in progress")),
        TIMING_OUT => Some(own_error(
            sim,
            StatusCode::GATEWAY_TIMEOUT,
            "device did not respond in time",
        )),
        UNAVAILABLE => Some(own_error(
            sim,
            StatusCode::SERVICE_UNAVAILABLE,
            "XMiDT is unreachable",
        )),
        SLOW => {
            tokio::time::sleep(SLOW_DELAY).await;
            None
        }
        _ => None,
    }
}

fn signed_in(c: &Credentials, headers: &HeaderMap) -> bool {
    use base64::Engine;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header(&c.api_key.0) == Some(c.api_key.1.as_str()) {
        return true;
    }
    let Some(auth) = header("authorization") else {
        return false;
    };
    if let Some(token) = auth.strip_prefix("Bearer ") {
        return token == c.bearer;
    }
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", c.basic.0, c.basic.1).as_bytes());
    auth.strip_prefix("Basic ") == Some(basic.as_str())
}

async fn get_config(
    State(sim): State<Arc<Sim>>,
    Path((_, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = gate(&sim, &headers, &id, false).await {
        return resp;
    }
    let Some(names) = query.get("names").filter(|n| !n.is_empty()) else {
        return own_error(&sim, StatusCode::BAD_REQUEST, "names parameter is required");
    };
    let attributes = query.get("attributes").is_some_and(|a| a == "notify");
    let devices = sim.devices.lock().unwrap();
    let device = &devices[&id];
    let mut out = Vec::new();
    for name in names.split(',') {
        if name.ends_with('.') {
            let found: Vec<Value> = device
                .params
                .range(name.to_owned()..)
                .take_while(|(n, _)| n.starts_with(name))
                .map(|(n, p)| json!({"name": n, "value": p.value, "dataType": p.data_type}))
                .collect();
            if found.is_empty() || attributes {
                return failure(&sim, 520, &format!("Invalid parameter name: {name}"));
            }
            out.push(json!({"name": name, "value": found, "dataType": 11,
                            "parameterCount": found.len(), "message": "Success"}));
            continue;
        }
        let Some(p) = device.params.get(name) else {
            return reply(
                &sim,
                json!({"parameters": [{"name": name, "message": "Invalid parameter name"}], "statusCode": 520}),
            );
        };
        out.push(if attributes {
            json!({"name": name, "attributes": {"notify": p.notify}})
        } else {
            json!({"name": name, "value": p.value, "dataType": p.data_type,
                   "parameterCount": 1, "message": "Success"})
        });
    }
    reply(&sim, json!({"parameters": out, "statusCode": 200}))
}

async fn patch_config(
    State(sim): State<Arc<Sim>>,
    Path((_, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    // A device applies a request it received even when the caller has hung
    // up by the time it is done: the work runs on a task of its own.
    tokio::spawn(apply_patch(sim, id, headers, body))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn apply_patch(
    sim: Arc<Sim>,
    id: String,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (new_cid, old_cid, cmc) = (
        header("X-Webpa-Sync-New-Cid"),
        header("X-Webpa-Sync-Old-Cid"),
        header("X-Webpa-Sync-Cmc"),
    );
    if old_cid.is_some() && new_cid.is_none() {
        return own_error(
            &sim,
            StatusCode::BAD_REQUEST,
            "X-Webpa-Sync-Old-Cid needs X-Webpa-Sync-New-Cid",
        );
    }
    let params = body
        .as_ref()
        .and_then(|b| b["parameters"].as_array().cloned())
        .unwrap_or_default();
    if params.is_empty() {
        return own_error(&sim, StatusCode::BAD_REQUEST, "parameters are required");
    }
    for p in &params {
        if p.get("value").is_some() && p.get("dataType").is_none() {
            return own_error(&sim, StatusCode::BAD_REQUEST, "dataType is required");
        }
    }
    if let Some(resp) = gate(&sim, &headers, &id, true).await {
        return resp;
    }
    let mut devices = sim.devices.lock().unwrap();
    let device = devices.get_mut(&id).expect("gate found the device");
    // Attributes only: set notify.
    if params.iter().all(|p| p.get("value").is_none()) {
        for p in &params {
            let name = p["name"].as_str().unwrap_or_default();
            let Some(param) = device.params.get_mut(name) else {
                return failure(&sim, 520, &format!("Invalid parameter name: {name}"));
            };
            param.notify = p["attributes"]["notify"].as_u64().unwrap_or(0).min(1) as u8;
        }
        return reply(&sim, json!({"message": "Success", "statusCode": 200}));
    }
    if new_cid.is_some() {
        let current = &device.params["Device.DeviceInfo.Webpa.X_COMCAST-COM_CID"].value;
        if old_cid.as_ref().is_some_and(|old| old != current) {
            return failure(&sim, 550, "CID test failed");
        }
        if cmc.as_ref().is_some_and(|c| c.parse::<u32>().is_err()) {
            return failure(&sim, 551, "CMC test failed");
        }
    }
    // Atomic: every parameter is checked before any is applied.
    for p in &params {
        let name = p["name"].as_str().unwrap_or_default();
        let value = p["value"].as_str().unwrap_or_default();
        if name.ends_with('.') {
            return failure(&sim, 552, "Wildcard is not supported");
        }
        if value.is_empty() {
            return failure(&sim, 552, "Empty value");
        }
        match device.params.get(name) {
            None => {
                return reply(
                    &sim,
                    json!({"parameters": [{"name": name, "message": "Invalid parameter name"}], "statusCode": 520}),
                );
            }
            Some(param) if !param.writable => {
                return reply(
                    &sim,
                    json!({"parameters": [{"name": name, "message": "Parameter is not writable"}], "statusCode": 520}),
                );
            }
            Some(param) if p["dataType"].as_u64() != Some(param.data_type.into()) => {
                return reply(
                    &sim,
                    json!({"parameters": [{"name": name, "message": "Invalid data type"}], "statusCode": 520}),
                );
            }
            Some(_) => {}
        }
    }
    let mut done = Vec::new();
    for p in &params {
        let name = p["name"].as_str().unwrap_or_default();
        if let Some(param) = device.params.get_mut(name) {
            param.value = p["value"].as_str().unwrap_or_default().to_owned();
        }
        done.push(json!({"name": name, "message": "Success"}));
    }
    // The configuration id changes on every set.
    let cid =
        new_cid.unwrap_or_else(|| format!("cid-{}", sim.cids.fetch_add(1, Ordering::Relaxed)));
    set(device, "Device.DeviceInfo.Webpa.X_COMCAST-COM_CID", cid);
    if let Some(cmc) = cmc {
        set(device, "Device.DeviceInfo.Webpa.X_COMCAST-COM_CMC", cmc);
    }
    reply(&sim, json!({"parameters": done, "statusCode": 200}))
}

fn set(device: &mut Device, name: &str, value: String) {
    if let Some(p) = device.params.get_mut(name) {
        p.value = value;
    }
}

/// Row numbers of `table` in use.
fn rows(device: &Device, table: &str) -> Vec<u32> {
    let mut found: Vec<u32> = device
        .params
        .keys()
        .filter_map(|n| n.strip_prefix(table)?.split('.').next()?.parse().ok())
        .collect();
    found.dedup();
    found
}

fn insert_row(
    device: &mut Device,
    table: &str,
    index: u32,
    columns: &serde_json::Map<String, Value>,
) {
    for (column, value) in columns {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        device.params.insert(
            format!("{table}{index}.{column}"),
            Param {
                value,
                data_type: 0,
                writable: true,
                notify: 0,
            },
        );
    }
}

/// Checks a table request; the device and table, or the reply.
async fn table_request(
    sim: &Sim,
    headers: &HeaderMap,
    id: &str,
    table: &str,
) -> Result<(), Response> {
    if let Some(resp) = gate(sim, headers, id, true).await {
        return Err(resp);
    }
    let devices = sim.devices.lock().unwrap();
    if !devices[id].tables.iter().any(|t| t == table) {
        return Err(failure(sim, 520, &format!("Invalid table name: {table}")));
    }
    Ok(())
}

async fn add_row(
    State(sim): State<Arc<Sim>>,
    Path((_, id, table)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(Value::Object(columns))) =
        body.filter(|b| b.as_object().is_some_and(|o| !o.is_empty()))
    else {
        return own_error(
            &sim,
            StatusCode::BAD_REQUEST,
            "a row's columns are required",
        );
    };
    if let Err(resp) = table_request(&sim, &headers, &id, &table).await {
        return resp;
    }
    let mut devices = sim.devices.lock().unwrap();
    let device = devices.get_mut(&id).expect("checked");
    let index = rows(device, &table).into_iter().max().unwrap_or(0) + 1;
    insert_row(device, &table, index, &columns);
    reply(
        &sim,
        json!({"row": format!("{table}{index}."), "message": "Success", "statusCode": 201}),
    )
}

async fn replace_rows(
    State(sim): State<Arc<Sim>>,
    Path((_, id, table)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(Value::Object(given))) = body else {
        return own_error(&sim, StatusCode::BAD_REQUEST, "rows are required");
    };
    if let Err(resp) = table_request(&sim, &headers, &id, &table).await {
        return resp;
    }
    let mut devices = sim.devices.lock().unwrap();
    let device = devices.get_mut(&id).expect("checked");
    device.params.retain(|n, _| !n.starts_with(&table));
    for (index, columns) in &given {
        let (Ok(index), Value::Object(columns)) = (index.parse::<u32>(), columns) else {
            return failure(&sim, 520, "rows are numbered objects");
        };
        insert_row(device, &table, index, columns);
    }
    reply(&sim, json!({"message": "Success", "statusCode": 200}))
}

async fn delete_row(
    State(sim): State<Arc<Sim>>,
    Path((_, id, row)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(resp) = gate(&sim, &headers, &id, true).await {
        return resp;
    }
    let mut devices = sim.devices.lock().unwrap();
    let device = devices.get_mut(&id).expect("gate found the device");
    let before = device.params.len();
    device.params.retain(|n, _| !n.starts_with(&row));
    if device.params.len() == before {
        return failure(&sim, 520, &format!("Invalid row name: {row}"));
    }
    reply(&sim, json!({"message": "Success", "statusCode": 200}))
}
