//! Simulated TR-069 CPEs (a fleet of them), written from the CWMP facts in
//! PEERS.md: each holds a TR-181 (`Device.`) or TR-098
//! (`InternetGatewayDevice.`) tree, opens sessions with an Inform (HTTP
//! Basic sent at once, or Digest after the ACS's challenge), runs the
//! ACS's RPCs one per exchange with the CWMP faults (9005 unknown name,
//! 9007 bad value, 9008 not writable), answers connection requests with
//! Digest auth, fetches Downloads and reports TransferComplete, and comes
//! back after a Reboot with `1 BOOT` and `M Reboot`.
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use md5::{Digest, Md5};
use roxmltree::{Document, Node};
use std::{
    collections::BTreeMap,
    fmt::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";

/// How a simulated CPE is made.
#[derive(Clone, Debug)]
pub struct CpeConfig {
    /// The ACS URL, such as http://127.0.0.1:7547/cwmp/acme.
    pub acs_url: String,
    pub oui: String,
    pub product_class: String,
    pub serial: String,
    pub username: String,
    pub password: String,
    /// Send Basic credentials on the first POST instead of waiting for a
    /// challenge.
    pub preemptive_basic: bool,
    /// An InternetGatewayDevice (TR-098) tree instead of Device (TR-181).
    pub tr098: bool,
    /// The CWMP version it speaks (0-4).
    pub cwmp_minor: u8,
    /// More URLs of the same ACS (its other replicas): the POSTs go round
    /// them and `acs_url`, as a load balancer would send them.
    pub replicas: Vec<String>,
}

impl CpeConfig {
    pub fn new(acs_url: &str, serial: &str, username: &str, password: &str) -> Self {
        Self {
            acs_url: acs_url.to_owned(),
            oui: "00D09E".into(),
            product_class: "SimGW".into(),
            serial: serial.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            preemptive_basic: false,
            tr098: false,
            cwmp_minor: 2,
            replicas: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    value: String,
    xsd: &'static str,
    writable: bool,
}

struct Inner {
    tree: BTreeMap<String, Entry>,
    /// Writable multi-instance objects and the parameters a new instance gets.
    tables: BTreeMap<String, Vec<(&'static str, &'static str, &'static str)>>,
    /// Work after the session: a reboot, a download.
    after: Vec<After>,
    /// TransferCompletes to report: (key, fault code, start, end).
    transfers: Vec<(String, u32, String, String)>,
    /// Events for the next session (`M Reboot` with its key, ...).
    events: Vec<(String, String)>,
    /// Every RPC name received, in order.
    rpcs: Vec<String>,
    sessions: u32,
    /// Sessions whose InformResponse said HoldRequests.
    held: u32,
    downloaded: Vec<(String, usize)>,
    nonce: String,
}

#[derive(Clone, Debug)]
enum After {
    Reboot(String),
    Download { key: String, url: String },
}

/// A simulated CPE.
#[derive(Clone)]
pub struct Cpe {
    pub config: CpeConfig,
    inner: Arc<Mutex<Inner>>,
    http: reqwest::Client,
    /// Where it takes connection requests.
    pub cr_addr: SocketAddr,
    /// One session at a time.
    busy: Arc<tokio::sync::Mutex<()>>,
    /// POSTs sent, for going round the replicas.
    posts: Arc<std::sync::atomic::AtomicUsize>,
}

fn entry(value: &str, xsd: &'static str, writable: bool) -> Entry {
    Entry {
        value: value.to_owned(),
        xsd,
        writable,
    }
}

impl Cpe {
    /// A CPE with its connection request listener started.
    pub async fn start(config: CpeConfig) -> std::io::Result<Cpe> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let cr_addr = listener.local_addr()?;
        let root = if config.tr098 {
            "InternetGatewayDevice."
        } else {
            "Device."
        };
        let mut tree = BTreeMap::new();
        let mut put = |name: &str, value: &str, xsd, writable| {
            tree.insert(format!("{root}{name}"), entry(value, xsd, writable));
        };
        put("DeviceInfo.Manufacturer", "SimCo", "xsd:string", false);
        put(
            "DeviceInfo.ManufacturerOUI",
            &config.oui,
            "xsd:string",
            false,
        );
        put(
            "DeviceInfo.ProductClass",
            &config.product_class,
            "xsd:string",
            false,
        );
        put(
            "DeviceInfo.SerialNumber",
            &config.serial,
            "xsd:string",
            false,
        );
        put("DeviceInfo.SoftwareVersion", "1.0.0", "xsd:string", false);
        put("DeviceInfo.HardwareVersion", "rev-a", "xsd:string", false);
        put("DeviceInfo.UpTime", "100", "xsd:unsignedInt", false);
        put("ManagementServer.URL", &config.acs_url, "xsd:string", true);
        put(
            "ManagementServer.ConnectionRequestURL",
            &format!("http://{cr_addr}/cr"),
            "xsd:string",
            false,
        );
        put(
            "ManagementServer.ConnectionRequestUsername",
            "",
            "xsd:string",
            true,
        );
        put(
            "ManagementServer.ConnectionRequestPassword",
            "",
            "xsd:string",
            true,
        );
        put(
            "ManagementServer.PeriodicInformEnable",
            "false",
            "xsd:boolean",
            true,
        );
        put(
            "ManagementServer.PeriodicInformInterval",
            "86400",
            "xsd:unsignedInt",
            true,
        );
        put("ManagementServer.ParameterKey", "", "xsd:string", false);
        let mut tables = BTreeMap::new();
        if config.tr098 {
            let wlan = "LANDevice.1.WLANConfiguration.1.";
            put(&format!("{wlan}SSID"), "sim-wifi", "xsd:string", true);
            put(&format!("{wlan}Enable"), "true", "xsd:boolean", true);
            put(&format!("{wlan}Channel"), "6", "xsd:unsignedInt", true);
        } else {
            put("WiFi.SSID.1.SSID", "sim-wifi", "xsd:string", true);
            put("WiFi.SSID.1.Enable", "true", "xsd:boolean", true);
            put("WiFi.Radio.1.Channel", "6", "xsd:unsignedInt", true);
            put("Time.NTPServer1", "pool.ntp.org", "xsd:string", true);
            put("NAT.PortMapping.1.Enable", "true", "xsd:boolean", true);
            put(
                "NAT.PortMapping.1.ExternalPort",
                "8080",
                "xsd:unsignedInt",
                true,
            );
            put(
                "NAT.PortMapping.1.InternalClient",
                "192.168.1.10",
                "xsd:string",
                true,
            );
            tables.insert(
                format!("{root}NAT.PortMapping."),
                vec![
                    ("Enable", "false", "xsd:boolean"),
                    ("ExternalPort", "0", "xsd:unsignedInt"),
                    ("InternalClient", "", "xsd:string"),
                ],
            );
        }
        for i in 1..=10 {
            put(
                &format!("X_SIM_Stats.Counter{i}"),
                &i.to_string(),
                "xsd:unsignedInt",
                false,
            );
        }
        let cpe = Cpe {
            config,
            inner: Arc::new(Mutex::new(Inner {
                tree,
                tables,
                after: Vec::new(),
                transfers: Vec::new(),
                events: vec![
                    ("0 BOOTSTRAP".into(), String::new()),
                    ("1 BOOT".into(), String::new()),
                ],
                rpcs: Vec::new(),
                sessions: 0,
                held: 0,
                downloaded: Vec::new(),
                nonce: String::new(),
            })),
            http: reqwest::Client::new(),
            cr_addr,
            busy: Arc::default(),
            posts: Arc::default(),
        };
        let app = Router::new()
            .route("/cr", get(connection_request))
            .with_state(cpe.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(cpe)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn root(&self) -> &'static str {
        if self.config.tr098 {
            "InternetGatewayDevice."
        } else {
            "Device."
        }
    }

    /// A parameter's value now.
    pub fn param(&self, name: &str) -> Option<String> {
        self.lock().tree.get(name).map(|e| e.value.clone())
    }

    /// Changes a parameter as the CPE itself would (a user on its web UI).
    pub fn set_param(&self, name: &str, value: &str) {
        if let Some(e) = self.lock().tree.get_mut(name) {
            e.value = value.to_owned();
        }
    }

    /// The RPCs the ACS sent, in order.
    pub fn rpcs(&self) -> Vec<String> {
        self.lock().rpcs.clone()
    }

    pub fn sessions(&self) -> u32 {
        self.lock().sessions
    }

    /// The files it downloaded: URL and size.
    pub fn downloaded(&self) -> Vec<(String, usize)> {
        self.lock().downloaded.clone()
    }

    /// Its ACS id, as an ACS names it.
    pub fn acs_id(&self) -> String {
        format!(
            "{}-{}-{}",
            self.config.oui, self.config.product_class, self.config.serial
        )
    }

    /// Runs sessions as a CPE does: the pending events (BOOTSTRAP at
    /// first) plus `event`, then what the session left to do (a reboot, a
    /// download) with their own sessions. Errors are the ACS's HTTP
    /// answers it could not go on from.
    pub async fn inform(&self, event: &str) -> Result<(), String> {
        let _one = self.busy.lock().await;
        {
            let mut inner = self.lock();
            if !event.is_empty() && !inner.events.iter().any(|(e, _)| e == event) {
                inner.events.push((event.to_owned(), String::new()));
            }
        }
        self.session().await?;
        // What the session asked for happens after it, each followed by a
        // session of its own (bounded: a CPE does not loop forever).
        for _ in 0..4 {
            let after = std::mem::take(&mut self.lock().after);
            if after.is_empty() {
                break;
            }
            for a in after {
                self.carry_out(a).await;
            }
            self.session().await?;
        }
        Ok(())
    }

    async fn carry_out(&self, after: After) {
        match after {
            After::Reboot(key) => {
                let mut inner = self.lock();
                inner.events = vec![("1 BOOT".into(), String::new()), ("M Reboot".into(), key)];
            }
            After::Download { key, url } => {
                let start = now();
                let fault = match self.http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(body) => {
                            self.lock().downloaded.push((url, body.len()));
                            0
                        }
                        Err(_) => 9010,
                    },
                    _ => 9010,
                };
                let mut inner = self.lock();
                inner.transfers.push((key.clone(), fault, start, now()));
                inner.events = vec![
                    ("1 BOOT".into(), String::new()),
                    ("7 TRANSFER COMPLETE".into(), String::new()),
                    ("M Download".into(), key),
                ];
            }
        }
    }

    fn ns(&self) -> String {
        format!("urn:dslforum-org:cwmp-1-{}", self.config.cwmp_minor)
    }

    /// One session: Inform, TransferCompletes, then the ACS's RPCs until
    /// it answers 204.
    async fn session(&self) -> Result<(), String> {
        let mut cookie = None;
        let mut auth = self.config.preemptive_basic.then(|| {
            use base64::Engine;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", self.config.username, self.config.password))
            )
        });
        let inform = self.inform_body();
        let mut reply = self.post(&inform, &cookie, auth.as_deref()).await?;
        if reply.0 == StatusCode::UNAUTHORIZED {
            auth = Some(self.digest(&reply.1)?);
            reply = self.post(&inform, &cookie, auth.as_deref()).await?;
        }
        if reply.0 != StatusCode::OK {
            return Err(format!("the Inform was answered {}: {}", reply.0, reply.2));
        }
        if !reply.2.contains("InformResponse") {
            return Err(format!("not an InformResponse: {}", reply.2));
        }
        cookie = reply.3.clone();
        let bootstrap = {
            let mut inner = self.lock();
            inner.sessions += 1;
            let bootstrap = inner.events.iter().any(|(e, _)| e == "0 BOOTSTRAP");
            inner.events.clear();
            bootstrap
        };
        if held(&reply.2) {
            // HoldRequests: no requests of its own in this session; its
            // TransferCompletes wait for the next one.
            self.lock().held += 1;
        } else {
            if bootstrap {
                let body = self.envelope("<cwmp:GetRPCMethods/>");
                let r = self.post(&body, &cookie, auth.as_deref()).await?;
                if !r.2.contains("GetRPCMethodsResponse")
                    || !r.2.contains("<string>Inform</string>")
                {
                    return Err(format!("GetRPCMethods was answered {}: {}", r.0, r.2));
                }
            }
            self.transfer_completes(&cookie, auth.as_deref()).await?;
        }
        let mut body = String::new();
        // Bounded: a session of a simulated CPE takes at most 100 RPCs.
        for _ in 0..100 {
            let r = self.post(&body, &cookie, auth.as_deref()).await?;
            match r.0 {
                StatusCode::NO_CONTENT => return Ok(()),
                StatusCode::OK => body = self.answer(&r.2),
                status => return Err(format!("the ACS answered {status}: {}", r.2)),
            }
        }
        Err("the ACS sent more than 100 RPCs in one session".into())
    }

    /// Reports the transfers done since the last session it could.
    async fn transfer_completes(
        &self,
        cookie: &Option<String>,
        auth: Option<&str>,
    ) -> Result<(), String> {
        let transfers = std::mem::take(&mut self.lock().transfers);
        for (key, fault, start, end) in transfers {
            let body = self.envelope(&format!(
                "<cwmp:TransferComplete><CommandKey>{key}</CommandKey><FaultStruct><FaultCode>{fault}</FaultCode>\
                 <FaultString>{}</FaultString></FaultStruct><StartTime>{start}</StartTime><CompleteTime>{end}</CompleteTime></cwmp:TransferComplete>",
                if fault == 0 { "" } else { "Download failure" }
            ));
            let r = self.post(&body, cookie, auth).await?;
            if !r.2.contains("TransferCompleteResponse") {
                return Err(format!("TransferComplete was answered {}: {}", r.0, r.2));
            }
        }
        Ok(())
    }

    /// Sessions in which the ACS said HoldRequests.
    pub fn held(&self) -> u32 {
        self.lock().held
    }

    async fn post(
        &self,
        body: &str,
        cookie: &Option<String>,
        auth: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, String, Option<String>), String> {
        let n = self
            .posts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = match n % (self.config.replicas.len() + 1) {
            0 => &self.config.acs_url,
            i => &self.config.replicas[i - 1],
        };
        let mut req = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "text/xml; charset=utf-8")
            .body(body.to_owned());
        if let Some(c) = cookie {
            req = req.header(header::COOKIE, c);
        }
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = req.send().await.map_err(|e| format!("POST failed: {e}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let set = headers
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_owned);
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading a reply: {e}"))?;
        Ok((status, headers, text, set.or_else(|| cookie.clone())))
    }

    /// The Authorization for a Digest challenge.
    fn digest(&self, headers: &HeaderMap) -> Result<String, String> {
        let challenge = headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("Digest"))
            .ok_or("401 without a Digest challenge")?;
        let mut prompt = digest_auth::parse(challenge).map_err(|e| e.to_string())?;
        let uri = reqwest::Url::parse(&self.config.acs_url)
            .map_err(|e| e.to_string())?
            .path()
            .to_owned();
        let context = digest_auth::AuthContext::new_post(
            self.config.username.as_str(),
            self.config.password.as_str(),
            uri.as_str(),
            None::<&[u8]>,
        );
        Ok(prompt
            .respond(&context)
            .map_err(|e| e.to_string())?
            .to_header_string())
    }

    fn envelope(&self, body: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"{SOAP_ENV}\" \
             xmlns:soap-enc=\"http://schemas.xmlsoap.org/soap/encoding/\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
             xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:cwmp=\"{}\">\
             <soap:Header><cwmp:ID soap:mustUnderstand=\"1\">{}</cwmp:ID></soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>",
            self.ns(),
            rand::random::<u32>()
        )
    }

    fn inform_body(&self) -> String {
        let inner = self.lock();
        let root = self.root();
        let mut events = String::new();
        for (code, key) in &inner.events {
            let _ = write!(
                events,
                "<EventStruct><EventCode>{code}</EventCode><CommandKey>{}</CommandKey></EventStruct>",
                esc(key)
            );
        }
        let mut params = String::new();
        let names = [
            "DeviceInfo.HardwareVersion",
            "DeviceInfo.SoftwareVersion",
            "ManagementServer.ConnectionRequestURL",
            "ManagementServer.ParameterKey",
        ];
        for n in names {
            let name = format!("{root}{n}");
            if let Some(e) = inner.tree.get(&name) {
                let _ = write!(
                    params,
                    "<ParameterValueStruct><Name>{name}</Name><Value xsi:type=\"{}\">{}</Value></ParameterValueStruct>",
                    e.xsd,
                    esc(&e.value)
                );
            }
        }
        drop(inner);
        self.envelope(&format!(
            "<cwmp:Inform><DeviceId><Manufacturer>SimCo</Manufacturer><OUI>{}</OUI><ProductClass>{}</ProductClass>\
             <SerialNumber>{}</SerialNumber></DeviceId><Event soap-enc:arrayType=\"cwmp:EventStruct[{}]\">{events}</Event>\
             <MaxEnvelopes>1</MaxEnvelopes><CurrentTime>{}</CurrentTime><RetryCount>0</RetryCount>\
             <ParameterList soap-enc:arrayType=\"cwmp:ParameterValueStruct[{}]\">{params}</ParameterList></cwmp:Inform>",
            esc(&self.config.oui),
            esc(&self.config.product_class),
            esc(&self.config.serial),
            self.lock().events.len(),
            now(),
            names.len()
        ))
    }

    /// Runs the ACS's RPC: the body of the next POST (a response or a
    /// fault).
    fn answer(&self, xml: &str) -> String {
        let Ok(doc) = Document::parse(xml) else {
            return self.fault(8003, "cannot read", &[]);
        };
        let Some(call) = doc.descendants().find(|n| {
            n.is_element()
                && n.parent_element()
                    .is_some_and(|p| p.has_tag_name((SOAP_ENV, "Body")))
        }) else {
            return self.fault(9003, "no RPC", &[]);
        };
        let method = call.tag_name().name().to_owned();
        self.lock().rpcs.push(method.clone());
        let result = match method.as_str() {
            "GetParameterValues" => self.get_values(call),
            "SetParameterValues" => self.set_values(call),
            "GetParameterNames" => self.get_names(call),
            "AddObject" => self.add_object(call),
            "DeleteObject" => self.delete_object(call),
            "Reboot" => {
                self.lock()
                    .after
                    .push(After::Reboot(text(call, "CommandKey")));
                Ok("<cwmp:RebootResponse/>".into())
            }
            "FactoryReset" => Ok("<cwmp:FactoryResetResponse/>".into()),
            "Download" => {
                self.lock().after.push(After::Download {
                    key: text(call, "CommandKey"),
                    url: text(call, "URL"),
                });
                Ok("<cwmp:DownloadResponse><Status>1</Status><StartTime>0001-01-01T00:00:00Z</StartTime>\
                    <CompleteTime>0001-01-01T00:00:00Z</CompleteTime></cwmp:DownloadResponse>"
                    .into())
            }
            _ => Err((9000, format!("method {method} not supported"), Vec::new())),
        };
        match result {
            Ok(body) => self.envelope(&body),
            Err((code, why, params)) => self.fault(code, &why, &params),
        }
    }

    fn fault(&self, code: u32, why: &str, params: &[(String, u32, String)]) -> String {
        let mut detail = format!(
            "<FaultCode>{code}</FaultCode><FaultString>{}</FaultString>",
            esc(why)
        );
        for (name, c, s) in params {
            let _ = write!(
                detail,
                "<SetParameterValuesFault><ParameterName>{}</ParameterName><FaultCode>{c}</FaultCode><FaultString>{}</FaultString></SetParameterValuesFault>",
                esc(name),
                esc(s)
            );
        }
        self.envelope(&format!(
            "<soap:Fault><faultcode>Client</faultcode><faultstring>CWMP fault</faultstring><detail><cwmp:Fault>{detail}</cwmp:Fault></detail></soap:Fault>"
        ))
    }

    fn get_values(&self, call: Node) -> Answer {
        let inner = self.lock();
        let mut out = String::new();
        let mut n = 0;
        for name in strings(call, "ParameterNames") {
            let matched: Vec<_> = inner
                .tree
                .iter()
                .filter(|(k, _)| {
                    **k == name || (name.ends_with('.') || name.is_empty()) && k.starts_with(&name)
                })
                .collect();
            if matched.is_empty() {
                return Err((9005, format!("Invalid parameter name {name}"), Vec::new()));
            }
            for (k, e) in matched {
                n += 1;
                let value = if k.ends_with("ConnectionRequestPassword") {
                    ""
                } else {
                    &e.value
                };
                let _ = write!(
                    out,
                    "<ParameterValueStruct><Name>{k}</Name><Value xsi:type=\"{}\">{}</Value></ParameterValueStruct>",
                    e.xsd,
                    esc(value)
                );
            }
        }
        Ok(format!(
            "<cwmp:GetParameterValuesResponse><ParameterList soap-enc:arrayType=\"cwmp:ParameterValueStruct[{n}]\">{out}</ParameterList></cwmp:GetParameterValuesResponse>"
        ))
    }

    fn set_values(&self, call: Node) -> Answer {
        let mut inner = self.lock();
        let mut sets = Vec::new();
        let mut faults = Vec::new();
        for p in children(call, "ParameterList") {
            let name = text(p, "Name");
            let value = text(p, "Value");
            match inner.tree.get(&name) {
                None => faults.push((name, 9005, "Invalid parameter name".into())),
                Some(e) if !e.writable => {
                    faults.push((name, 9008, "Attempt to set a non-writable parameter".into()))
                }
                Some(e) if !valid(e.xsd, &value) => {
                    faults.push((name, 9007, "Invalid parameter value".into()))
                }
                Some(_) => sets.push((name, value)),
            }
        }
        if !faults.is_empty() {
            return Err((9003, "Invalid arguments".into(), faults));
        }
        for (name, value) in sets {
            if let Some(e) = inner.tree.get_mut(&name) {
                e.value = value;
            }
        }
        let key = format!("{}ManagementServer.ParameterKey", self.root());
        if let Some(e) = inner.tree.get_mut(&key) {
            e.value = text(call, "ParameterKey");
        }
        Ok(
            "<cwmp:SetParameterValuesResponse><Status>0</Status></cwmp:SetParameterValuesResponse>"
                .into(),
        )
    }

    fn get_names(&self, call: Node) -> Answer {
        let path = text(call, "ParameterPath");
        let next_level = matches!(text(call, "NextLevel").as_str(), "1" | "true");
        let inner = self.lock();
        let mut names: BTreeMap<String, bool> = BTreeMap::new();
        for (name, e) in &inner.tree {
            if !name.starts_with(&path) {
                continue;
            }
            // Every object on the way down, then the parameter.
            let mut at = 0;
            while let Some(dot) = name[at..].find('.') {
                at += dot + 1;
                let object = &name[..at];
                let writable = inner.tables.contains_key(object);
                names.entry(object.to_owned()).or_insert(writable);
            }
            names.insert(name.clone(), e.writable);
        }
        if names.is_empty()
            || (!path.is_empty() && !path.ends_with('.') && !inner.tree.contains_key(&path))
        {
            return Err((9005, format!("Invalid parameter name {path}"), Vec::new()));
        }
        let listed: Vec<_> = names
            .into_iter()
            .filter(|(n, _)| n.starts_with(&path) && *n != path)
            .filter(|(n, _)| !next_level || !n[path.len()..].trim_end_matches('.').contains('.'))
            .collect();
        let mut out = String::new();
        for (n, w) in &listed {
            let _ = write!(
                out,
                "<ParameterInfoStruct><Name>{n}</Name><Writable>{}</Writable></ParameterInfoStruct>",
                u8::from(*w)
            );
        }
        Ok(format!(
            "<cwmp:GetParameterNamesResponse><ParameterList soap-enc:arrayType=\"cwmp:ParameterInfoStruct[{}]\">{out}</ParameterList></cwmp:GetParameterNamesResponse>",
            listed.len()
        ))
    }

    fn add_object(&self, call: Node) -> Answer {
        let name = text(call, "ObjectName");
        let mut inner = self.lock();
        let Some(template) = inner.tables.get(&name).cloned() else {
            return Err((9005, format!("Invalid parameter name {name}"), Vec::new()));
        };
        let next = inner
            .tree
            .keys()
            .filter_map(|k| {
                k.strip_prefix(&name)?
                    .split('.')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(0)
            + 1;
        for (field, value, xsd) in template {
            inner
                .tree
                .insert(format!("{name}{next}.{field}"), entry(value, xsd, true));
        }
        Ok(format!(
            "<cwmp:AddObjectResponse><InstanceNumber>{next}</InstanceNumber><Status>0</Status></cwmp:AddObjectResponse>"
        ))
    }

    fn delete_object(&self, call: Node) -> Answer {
        let name = text(call, "ObjectName");
        let mut inner = self.lock();
        let table = name
            .trim_end_matches('.')
            .rsplit_once('.')
            .map(|(t, _)| format!("{t}."))
            .unwrap_or_default();
        let before = inner.tree.len();
        if inner.tables.contains_key(&table) {
            inner.tree.retain(|k, _| !k.starts_with(&name));
        }
        if inner.tree.len() == before {
            return Err((9005, format!("Invalid parameter name {name}"), Vec::new()));
        }
        Ok("<cwmp:DeleteObjectResponse><Status>0</Status></cwmp:DeleteObjectResponse>".into())
    }
}

type Answer = Result<String, (u32, String, Vec<(String, u32, String)>)>;

/// Whether an ACS message's header says HoldRequests true.
fn held(xml: &str) -> bool {
    Document::parse(xml).is_ok_and(|doc| {
        doc.descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "HoldRequests")
            .and_then(|n| n.text())
            .is_some_and(|t| matches!(t.trim(), "1" | "true"))
    })
}

/// Whether `value` is a lexical value of the xsd type.
fn valid(xsd: &str, value: &str) -> bool {
    match xsd {
        "xsd:boolean" => matches!(value, "true" | "false" | "0" | "1"),
        "xsd:unsignedInt" => value.parse::<u32>().is_ok(),
        "xsd:int" => value.parse::<i32>().is_ok(),
        _ => true,
    }
}

fn children<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Vec<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .map(|l| l.children().filter(Node::is_element).collect())
        .unwrap_or_default()
}

fn strings(n: Node, name: &str) -> Vec<String> {
    children(n, name)
        .into_iter()
        .map(|c| c.text().unwrap_or_default().trim().to_owned())
        .collect()
}

fn text(n: Node, name: &str) -> String {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
        .and_then(|c| c.text())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// `GET /cr`: a connection request, with Digest auth (RFC 2617) against the
/// credentials the ACS set; a good one starts a session.
async fn connection_request(State(cpe): State<Cpe>, headers: HeaderMap) -> impl IntoResponse {
    let root = cpe.root();
    let user = cpe
        .param(&format!("{root}ManagementServer.ConnectionRequestUsername"))
        .unwrap_or_default();
    let pass = cpe
        .param(&format!("{root}ManagementServer.ConnectionRequestPassword"))
        .unwrap_or_default();
    let nonce = cpe.lock().nonce.clone();
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Digest "))
        .map(digest_fields);
    let good = match given {
        Some(f) if !user.is_empty() && !nonce.is_empty() => {
            let get = |k: &str| f.get(k).cloned().unwrap_or_default();
            let ha1 = md5_hex(&format!("{user}:sim:{pass}"));
            let ha2 = md5_hex(&format!("GET:{}", get("uri")));
            let expected = md5_hex(&format!(
                "{ha1}:{nonce}:{}:{}:{}:{ha2}",
                get("nc"),
                get("cnonce"),
                get("qop")
            ));
            get("username") == user && get("nonce") == nonce && get("response") == expected
        }
        _ => false,
    };
    if !good {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        cpe.lock().nonce = nonce.clone();
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!("Digest realm=\"sim\", qop=\"auth\", nonce=\"{nonce}\""),
            )],
        )
            .into_response();
    }
    let session = cpe.clone();
    tokio::spawn(async move {
        if let Err(e) = session.inform("6 CONNECTION REQUEST").await {
            tracing::info!(error = %e, "a simulated CPE's session failed");
        }
    });
    StatusCode::OK.into_response()
}

/// `a="b", c=d` as a map.
fn digest_fields(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_owned();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.insert(key, value.to_owned());
        rest = next.trim_start_matches(',').trim();
    }
    out
}
