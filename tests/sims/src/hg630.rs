//! A Huawei HG630 router's web API (the ATP web server), written from
//! PEERS.md's "Huawei HG630 router": CSRF meta tokens on `/`, replies
//! wrapped in `while(1); /*...*/`, both password hash schemes, single-use
//! CSRF tokens chained on each write, a `SessionID_R3` cookie that expires
//! without heartbeats, lock-out after three failed logins, duplicate-login
//! and too-many-users refusals, the read endpoints with values that change
//! over time, and a reboot that takes the router down for a while.
//!
//! Where PEERS.md is silent this simulator decides, and says so here: a
//! request without a live session is answered 401 with
//! `{"errorCategory":"no_login"}`; a stale CSRF token at login is
//! `{"errorCategory":"csrf_err"}` and on a write `{"errcode":9003}`; a
//! rebooting router answers 503 to everything; the data endpoints' field
//! names beyond the DSL ones PEERS.md lists are this simulator's.
// Handlers answer early with the router's whole reply as their error.
#![allow(clippy::result_large_err)]
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How the router checks the password at login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `sha256(U + base64(hex(sha256(pw))) + P + T)`, hex.
    Current,
    /// `hex(sha256(pw))`.
    Legacy,
}

/// The router's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub username: String,
    pub password: String,
    pub scheme: Scheme,
    /// The heartbeat interval the router asks for.
    pub heartbeat_interval: Duration,
    /// How long a session lives after its last heartbeat (or login).
    pub session_ttl: Duration,
    /// How long three failed logins lock the user out.
    pub lockout: Duration,
    /// Sessions open at once.
    pub max_users: usize,
    /// How long a reboot takes.
    pub reboot_time: Duration,
    /// The serial number.
    pub serial: String,
    /// Added to every request's handling, as a router's slow CPU adds it.
    pub latency: Duration,
    /// Added to each login (hashing on a slow CPU).
    pub login_latency: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            username: "admin".into(),
            password: "router-password".into(),
            scheme: Scheme::Current,
            heartbeat_interval: Duration::from_millis(5000),
            session_ttl: Duration::from_secs(15),
            lockout: Duration::from_secs(60),
            max_users: 4,
            reboot_time: Duration::from_secs(3),
            serial: "2150083364F7K1000123".into(),
            latency: Duration::ZERO,
            login_latency: Duration::ZERO,
        }
    }
}

type Csrf = (String, String);

struct Session {
    csrf: Csrf,
    expires: Instant,
}

#[derive(Default)]
struct Counters {
    logins: u64,
    failed_logins: u64,
    logouts: u64,
    stale_tokens: u64,
    reboots: u64,
}

struct Router630 {
    config: Config,
    started: Instant,
    /// CSRF pairs handed out on `/`, each good for one login.
    page_tokens: HashSet<Csrf>,
    /// Every token ever issued: a token seen twice is a reuse.
    used: HashSet<String>,
    sessions: HashMap<String, Session>,
    failures: u32,
    locked_until: Option<Instant>,
    down_until: Option<Instant>,
    /// A write error code to answer the next writes with.
    failing_writes: Option<u32>,
    counters: Counters,
}

type Shared = Arc<Mutex<Router630>>;

/// A running simulator; stops when dropped.
pub struct Hg630Sim {
    pub addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hg630Sim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the router has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub logins: u64,
    pub failed_logins: u64,
    pub logouts: u64,
    /// CSRF tokens presented a second time, or never issued.
    pub stale_tokens: u64,
    pub reboots: u64,
    /// Sessions open now.
    pub open_sessions: usize,
}

impl Hg630Sim {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Seen {
        let mut r = self.state.lock().unwrap();
        let now = Instant::now();
        r.sessions.retain(|_, s| s.expires > now);
        Seen {
            logins: r.counters.logins,
            failed_logins: r.counters.failed_logins,
            logouts: r.counters.logouts,
            stale_tokens: r.counters.stale_tokens,
            reboots: r.counters.reboots,
            open_sessions: r.sessions.len(),
        }
    }

    /// Ends every session, as the router does when it forgets them.
    pub fn expire_sessions(&self) {
        self.state.lock().unwrap().sessions.clear();
    }

    /// Answers the next writes with this error code (None: succeed).
    pub fn fail_writes(&self, errcode: Option<u32>) {
        self.state.lock().unwrap().failing_writes = errcode;
    }
}

pub async fn start(addr: SocketAddr, config: Config) -> std::io::Result<Hg630Sim> {
    let state = Arc::new(Mutex::new(Router630 {
        config,
        started: Instant::now(),
        page_tokens: HashSet::new(),
        used: HashSet::new(),
        sessions: HashMap::new(),
        failures: 0,
        locked_until: None,
        down_until: None,
        failing_writes: None,
        counters: Counters::default(),
    }));
    let app = Router::new()
        .route("/", get(page))
        .route("/api/system/user_login", post(login))
        .route("/api/system/user_logout", post(logout))
        .route("/api/system/heartbeat", get(heartbeat))
        .route("/api/system/getuserlevel", get(user_level))
        .route("/api/service/reboot.cgi", post(reboot))
        .route("/api/{area}/{name}", get(read))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Hg630Sim { addr, state, task })
}

/// `len` random letters and digits.
fn token(len: usize) -> String {
    use rand::{Rng, distributions::Alphanumeric};
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn new_csrf(r: &mut Router630) -> Csrf {
    let pair = (token(31), token(31));
    r.used.insert(pair.1.clone());
    pair
}

/// A JSON reply as the router wraps it.
fn wrapped(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/javascript")],
        format!("while(1); /*{body}*/"),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    wrapped(StatusCode::OK, body)
}

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The login hash the router expects (PEERS.md).
pub fn login_hash(scheme: Scheme, user: &str, password: &str, csrf: (&str, &str)) -> String {
    use base64::Engine;
    let inner = hex_sha256(password.as_bytes());
    match scheme {
        Scheme::Legacy => inner,
        Scheme::Current => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(inner.as_bytes());
            hex_sha256(format!("{user}{b64}{}{}", csrf.0, csrf.1).as_bytes())
        }
    }
}

/// Waits the router's latency, then answers 503 while it reboots.
async fn arrive(state: &Shared) -> Option<Response> {
    let latency = state.lock().unwrap().config.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut r = state.lock().unwrap();
    match r.down_until {
        Some(until) if Instant::now() < until => {
            Some((StatusCode::SERVICE_UNAVAILABLE, "rebooting").into_response())
        }
        Some(_) => {
            r.down_until = None;
            None
        }
        None => None,
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    cookies
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == "SessionID_R3")
        .map(|(_, v)| v.to_owned())
}

/// The live session a request carries, or the 401 for it.
fn live(r: &mut Router630, headers: &HeaderMap) -> Result<String, Response> {
    let now = Instant::now();
    r.sessions.retain(|_, s| s.expires > now);
    match session_id(headers) {
        Some(id) if r.sessions.contains_key(&id) => Ok(id),
        _ => Err(wrapped(
            StatusCode::UNAUTHORIZED,
            json!({"errorCategory": "no_login"}),
        )),
    }
}

async fn page(State(state): State<Shared>) -> Response {
    if let Some(resp) = arrive(&state).await {
        return resp;
    }
    let mut r = state.lock().unwrap();
    let pair = new_csrf(&mut r);
    r.page_tokens.insert(pair.clone());
    let html = format!(
        "<!DOCTYPE html><html><head><title>HG630</title>\
         <meta name=\"csrf_param\" content=\"{}\"/>\
         <meta name=\"csrf_token\" content=\"{}\"/></head><body></body></html>",
        pair.0, pair.1
    );
    ([(header::CONTENT_TYPE, "text/html")], html).into_response()
}

fn csrf_of(body: &Value) -> Csrf {
    let c = &body["csrf"];
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (text("csrf_param"), text("csrf_token"))
}

async fn login(State(state): State<Shared>, Json(body): Json<Value>) -> Response {
    if let Some(resp) = arrive(&state).await {
        return resp;
    }
    let login_latency = state.lock().unwrap().config.login_latency;
    if !login_latency.is_zero() {
        tokio::time::sleep(login_latency).await;
    }
    let mut r = state.lock().unwrap();
    let csrf = csrf_of(&body);
    if !r.page_tokens.remove(&csrf) {
        r.counters.stale_tokens += 1;
        return ok(json!({"errorCategory": "csrf_err"}));
    }
    let now = Instant::now();
    if let Some(until) = r.locked_until.filter(|u| *u > now) {
        let wait = (until - now).as_secs().max(1);
        return ok(json!({"errorCategory": "Three_time_err", "waitTime": wait}));
    }
    let user = body["data"]["UserName"].as_str().unwrap_or_default();
    let given = body["data"]["Password"].as_str().unwrap_or_default();
    let c = &r.config;
    let expected = login_hash(c.scheme, &c.username, &c.password, (&csrf.0, &csrf.1));
    if user != c.username || given != expected {
        r.failures += 1;
        r.counters.failed_logins += 1;
        if r.failures >= 3 {
            r.failures = 0;
            let lockout = r.config.lockout;
            r.locked_until = Some(now + lockout);
            return ok(
                json!({"errorCategory": "Three_time_err", "waitTime": lockout.as_secs().max(1)}),
            );
        }
        return ok(json!({"errorCategory": "user_pass_err", "count": r.failures}));
    }
    r.failures = 0;
    r.sessions.retain(|_, s| s.expires > now);
    // One user, one session: a second login while the first lives is refused.
    if !r.sessions.is_empty() {
        let category = if r.sessions.len() >= r.config.max_users {
            "Too_Many_user"
        } else {
            "Duplicate_login"
        };
        return ok(json!({"errorCategory": category}));
    }
    let id = token(48);
    let next = new_csrf(&mut r);
    let expires = now + r.config.session_ttl;
    r.sessions.insert(
        id.clone(),
        Session {
            csrf: next.clone(),
            expires,
        },
    );
    r.counters.logins += 1;
    let mut resp = ok(
        json!({"csrf_param": next.0, "csrf_token": next.1, "errorCategory": "ok",
                             "IsFirst": false, "level": 2, "IsWizard": false}),
    );
    resp.headers_mut().insert(
        header::SET_COOKIE,
        format!("SessionID_R3={id}; path=/; HttpOnly")
            .parse()
            .expect("a cookie header"),
    );
    resp
}

/// Checks a write's CSRF pair against the session's, and issues the next.
fn exchange(r: &mut Router630, id: &str, body: &Value) -> Result<Csrf, Response> {
    let given = csrf_of(body);
    let current = r.sessions.get(id).map(|s| s.csrf.clone());
    if current.as_ref() != Some(&given) {
        r.counters.stale_tokens += 1;
        return Err(ok(json!({"errcode": 9003})));
    }
    let next = new_csrf(r);
    if let Some(s) = r.sessions.get_mut(id) {
        s.csrf = next.clone();
    }
    Ok(next)
}

/// Answers a request on a live session (after the router's latency and
/// its reboot; 401 without one): `work` gets the router and the session.
async fn on_session(
    state: &Shared,
    headers: &HeaderMap,
    work: impl FnOnce(&mut Router630, String) -> Response,
) -> Response {
    if let Some(resp) = arrive(state).await {
        return resp;
    }
    let mut r = state.lock().unwrap();
    match live(&mut r, headers) {
        Ok(id) => work(&mut r, id),
        Err(resp) => resp,
    }
}

/// The same for a write: its CSRF pair checked, and the next one issued.
async fn on_write(
    state: &Shared,
    headers: &HeaderMap,
    body: &Value,
    work: impl FnOnce(&mut Router630, String, Csrf) -> Response,
) -> Response {
    on_session(state, headers, |r, id| match exchange(r, &id, body) {
        Ok(next) => work(r, id, next),
        Err(resp) => resp,
    })
    .await
}

async fn logout(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    on_write(&state, &headers, &body, |r, id, _| {
        r.sessions.remove(&id);
        r.counters.logouts += 1;
        ok(json!({"errcode": 0}))
    })
    .await
}

async fn heartbeat(State(state): State<Shared>, headers: HeaderMap) -> Response {
    on_session(&state, &headers, |r, id| {
        let (ttl, interval) = (r.config.session_ttl, r.config.heartbeat_interval);
        if let Some(s) = r.sessions.get_mut(&id) {
            s.expires = Instant::now() + ttl;
        }
        ok(json!({"interval": interval.as_millis().to_string()}))
    })
    .await
}

async fn user_level(State(state): State<Shared>, headers: HeaderMap) -> Response {
    on_session(&state, &headers, |_, _| ok(json!({"isadmin": true}))).await
}

async fn reboot(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    on_write(&state, &headers, &body, |r, _, next| {
        if let Some(code) = r.failing_writes {
            return ok(json!({"errcode": code, "csrf_param": next.0, "csrf_token": next.1}));
        }
        r.counters.reboots += 1;
        r.sessions.clear();
        r.down_until = Some(Instant::now() + r.config.reboot_time);
        r.started = Instant::now() + r.config.reboot_time;
        ok(json!({"errcode": 0, "csrf_param": next.0, "csrf_token": next.1}))
    })
    .await
}

/// Values that drift a little with time, as a live line's do.
fn drift(base: u64, spread: u64, seconds: u64) -> u64 {
    base + (seconds * 7919 + 13) % (spread + 1)
}

async fn read(
    State(state): State<Shared>,
    axum::extract::Path((area, name)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    on_session(&state, &headers, |r, _| data(r, &area, &name)).await
}

/// The read endpoints' replies.
fn data(r: &Router630, area: &str, name: &str) -> Response {
    let up = Instant::now()
        .checked_duration_since(r.started)
        .unwrap_or_default()
        .as_secs();
    let body = match (area, name) {
        ("system", "deviceinfo") => json!({
            "DeviceName": "HG630 V2", "SerialNumber": r.config.serial, "ManufacturerOUI": "00E0FC",
            "SoftwareVersion": "V100R001C55B025", "HardwareVersion": "VER.B", "UpTime": up,
            "ProductClass": "HG630"}),
        ("ntwk", "dslinfo") => json!({
            "Status": "Up", "Modulation": "VDSL2", "DataPath": "Fast",
            "DownCurrRate": drift(79_000, 900, up), "UpCurrRate": drift(19_500, 400, up),
            "DownMaxRate": 97_512, "UpMaxRate": 31_240,
            "DownMargin": format!("{:.1}", 6.0 + (up % 10) as f64 / 10.0), "UpMargin": "8.2",
            "DownAttenuation": "14.5", "UpAttenuation": "9.8", "ShowtimeStart": up}),
        ("ntwk", "wan") => json!([{
            "Name": "INTERNET_R_VID_7", "Status": "Connected", "ConnectionType": "IP_Routed",
            "IPv4Addr": "203.0.113.7", "IPv4Gateway": "203.0.113.1",
            "IPv4DnsServers": "198.51.100.1,198.51.100.2", "Uptime": up, "MACAddr": "00:e0:fc:12:34:56"}]),
        ("system", "HostInfo") => json!([
            {"HostName": "laptop", "IPAddress": "192.168.1.20", "MACAddress": "3c:22:fb:00:00:01",
             "Active": true, "InterfaceType": "802.11", "LeaseTimeRemaining": 86_000 - up % 86_000},
            {"HostName": "nas", "IPAddress": "192.168.1.5", "MACAddress": "00:11:32:00:00:02",
             "Active": true, "InterfaceType": "Ethernet", "LeaseTimeRemaining": 70_000},
            {"HostName": "phone", "IPAddress": "192.168.1.31", "MACAddress": "f0:18:98:00:00:03",
             "Active": false, "InterfaceType": "802.11", "LeaseTimeRemaining": 0}]),
        ("ntwk", "WlanBasic") => json!([
            {"WifiSsid": "home", "WifiEnable": true, "BeaconType": "WPA2-PSK", "WifiHideBroadcast": false},
            {"WifiSsid": "home-guest", "WifiEnable": false, "BeaconType": "WPA2-PSK", "WifiHideBroadcast": false}]),
        ("ntwk", "wlanradio") => json!({
            "WifiEnable": true, "WifiChannel": 6, "WifiAutoChannel": true, "WifiMode": "b/g/n",
            "WifiTransmitPower": 100, "WifiCountry": "NL"}),
        ("system", "device_count") => {
            json!({"ActiveDeviceNumbers": 2, "LanActiveNumber": 1, "WlanActiveNumber": 1})
        }
        ("ntwk", "lan_info") => json!({
            "IPInterfaceIPAddress": "192.168.1.1", "IPInterfaceSubnetMask": "255.255.255.0",
            "DHCPServerEnable": true, "MinAddress": "192.168.1.2", "MaxAddress": "192.168.1.254",
            "DHCPLeaseTime": 86400}),
        ("system", "diagnose_internet") => {
            json!({"ConnectionStatus": "Connected", "DiagnoseResult": "ok", "ErrReason": ""})
        }
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    ok(body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peers_md_test_vector() {
        let hash = super::login_hash(
            super::Scheme::Current,
            "admin",
            "admin",
            (
                "cAMCImb7xhEn6T8eL9cGjIiB4FsfzK0",
                "cl3pAw9VujxiX392oWWObKxqNqVxaOd",
            ),
        );
        assert_eq!(
            hash,
            "e71937a7bfcf970ad7172a3c0702c0d3f68b7c85c60309804d567354fc431222"
        );
    }
}
