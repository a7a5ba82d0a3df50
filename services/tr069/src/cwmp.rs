//! rdm's own ACS: CPEs call `POST /cwmp/{tenant_slug}` (CWMP over HTTP,
//! PEERS.md). A session opens with an authenticated Inform, answered with
//! an InformResponse and a cookie; the CPE's empty POSTs then take the
//! device's queued tasks one RPC per exchange, each answer or fault is
//! recorded against its task, and a 204 ends the session. Sessions and
//! tasks live in the database, so any replica may take a session's next
//! request. Downloads are served at `GET /files/{token}`, each token good
//! once.
use crate::{
    same,
    soap::{self, Answer, Envelope, Message, Param, Rpc},
    store::{self, CpeRow, SessionRow, TaskRow},
};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use digest_auth::{AuthContext, AuthorizationHeader, HttpMethod};
use rdm_kit::{
    Error, ErrorCode, Result,
    address::HttpClients,
    auth::SigningKey,
    client::Forward,
    db::{Db, Scope, TenantTx, now_millis},
    targets,
};
use rdm_proto::{
    inventory::{self as inv, device_service_client::DeviceServiceClient},
    tr069::Tr069Policy,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

/// The largest envelope a CPE may POST.
const MAX_BODY: usize = 8 << 20;
/// A session ends this long after its last exchange.
const SESSION_TTL: Duration = Duration::from_secs(30);
/// How long a Digest nonce is good.
const NONCE_TTL_S: u64 = 600;
const REALM: &str = "rdm";
const COOKIE: &str = "rdm_cwmp_session";
/// The user name rdm sets for connection requests.
pub const CR_USERNAME: &str = "rdm";
/// How long the inventory's answer for a CPE is used again: a changed
/// password or a deleted device takes this long to count.
const FOUND_TTL: Duration = Duration::from_secs(5);
/// The most answers kept.
const FOUND_MAX: usize = 100_000;
/// How long a download URL is good.
const DOWNLOAD_TTL: Duration = Duration::from_secs(3600);
const DEFAULT_INFORM_INTERVAL_S: u32 = 3600;

/// rdm's ACS, shared by its listener and the TR-069 API.
pub struct Acs {
    pub db: Db,
    pub inventory: targets::Inventory,
    pub key: Arc<SigningKey>,
    pub clients: HttpClients,
    /// The URL CPEs reach this listener at (download URLs start with it).
    pub public_url: String,
    pub files_dir: PathBuf,
    pub file_limit: u64,
    /// Woken when a task is done or faulted.
    pub settled: tokio::sync::Notify,
    /// The inventory's recent answers for known CPEs (tenant slug, CPE id).
    pub found: std::sync::Mutex<HashMap<(String, String), (Instant, inv::FindCpeResponse)>>,
}

/// The CPE listener's routes.
pub fn router(acs: Arc<Acs>) -> Router {
    Router::new()
        .route("/cwmp/{slug}", post(exchange))
        .route("/files/{token}", get(download))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(acs)
}

/// A tenant's rows, for the ACS (no user is calling).
pub(crate) fn tenant(tenant_id: &str) -> Scope<'_> {
    Scope::Tenant {
        tenant_id,
        user_id: "",
    }
}

fn refused(status: StatusCode, reason: &'static str, why: impl Into<String>) -> Response {
    metrics::counter!("rdm_tr069_cwmp_refused_total", "reason" => reason).increment(1);
    (status, why.into()).into_response()
}

fn soap_reply(status: StatusCode, ns: &str, id: Option<&str>, body: &str) -> Response {
    xml_reply(status, soap::envelope(ns, id, false, body))
}

fn xml_reply(status: StatusCode, xml: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        xml,
    )
        .into_response()
}

fn internal(e: Error) -> Response {
    tracing::warn!(error = %e.message, "cwmp exchange failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "the ACS failed; try again",
    )
        .into_response()
}

async fn exchange(
    State(acs): State<Arc<Acs>>,
    Path(slug): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "malformed",
            "the body is not UTF-8",
        );
    };
    let envelope = match text.trim() {
        "" => None,
        xml => match soap::parse(xml) {
            Ok(e) => Some(e),
            Err(why) => return refused(StatusCode::BAD_REQUEST, "malformed", why),
        },
    };
    let session = match cookie(&headers) {
        Some(id) => match acs.session(&id).await {
            Ok(s) => s,
            Err(e) => return internal(e),
        },
        None => None,
    };
    let outcome = match session {
        Some(s) => acs.in_session(s, envelope).await,
        None => acs.open(&slug, &headers, envelope).await,
    };
    outcome.unwrap_or_else(internal)
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .map(str::to_owned)
}

/// What the CPE's credentials came to.
#[derive(Debug, PartialEq)]
enum Verdict {
    Good,
    /// None sent: challenge.
    Missing,
    Wrong,
}

impl Acs {
    /// A session by its cookie, unless it expired.
    async fn session(&self, id: &str) -> Result<Option<SessionRow>> {
        let mut tx = self.db.begin(Scope::Platform).await?;
        let s = store::session(&mut tx, id).await?;
        Ok(s.filter(|s| s.expire_time > now_millis()))
    }

    /// The inventory's answer for a CPE of a tenant's ACS URL (a device's
    /// kept for a few seconds: a CPE's session asks once, its next
    /// session soon after).
    async fn find_cpe(&self, req: inv::FindCpeRequest) -> Result<inv::FindCpeResponse> {
        let key = (req.tenant_slug.clone(), req.acs_device_id.clone());
        let cache = || self.found.lock().unwrap_or_else(|e| e.into_inner());
        if !req.register
            && let Some((at, found)) = cache().get(&key)
            && at.elapsed() < FOUND_TTL
        {
            return Ok(found.clone());
        }
        let forward = Forward::service("tr069", &self.key, "", "cwmp")?;
        let mut client =
            DeviceServiceClient::with_interceptor(self.inventory.backend.clone(), forward);
        let found = client
            .find_cpe(req)
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        if !found.device_id.is_empty() {
            let mut cache = cache();
            if cache.len() >= FOUND_MAX {
                cache.retain(|_, (at, _)| at.elapsed() < FOUND_TTL);
            }
            if cache.len() < FOUND_MAX {
                cache.insert(key, (Instant::now(), found.clone()));
            }
        }
        Ok(found)
    }

    /// A request outside a session: it must be an Inform from a CPE whose
    /// credentials are good; the session opens.
    async fn open(
        &self,
        slug: &str,
        headers: &HeaderMap,
        envelope: Option<Envelope>,
    ) -> Result<Response> {
        let Some(Envelope {
            ns,
            id,
            message: Message::Inform(inform),
        }) = envelope
        else {
            return Ok(refused(
                StatusCode::BAD_REQUEST,
                "no_inform",
                "a CWMP session begins with an Inform",
            ));
        };
        let acs_id = inform.device.acs_id();
        let lookup = |register| inv::FindCpeRequest {
            tenant_slug: slug.to_owned(),
            acs_device_id: acs_id.clone(),
            register,
            manufacturer: inform.device.manufacturer.clone(),
            oui: inform.device.oui.clone(),
            product_class: inform.device.product_class.clone(),
            serial_number: inform.device.serial_number.clone(),
        };
        let found = match self.find_cpe(lookup(false)).await {
            Ok(f) => f,
            Err(e) if e.code == ErrorCode::NotFound => {
                return Ok(refused(
                    StatusCode::NOT_FOUND,
                    "unknown_tenant",
                    "no such ACS URL",
                ));
            }
            Err(e) => return Err(e),
        };
        let policy = found.policy.clone().unwrap_or_default();
        // The device's own credentials, else the tenant's bootstrap ones.
        let own = found
            .endpoint
            .as_ref()
            .filter(|e| !e.cpe_username().is_empty())
            .map(|e| (e.cpe_username().to_owned(), e.cpe_password().to_owned()));
        let bootstrap = own.is_none();
        let (user, password) = own.unwrap_or_else(|| {
            (
                policy.cwmp_username.clone(),
                policy.cwmp_password().to_owned(),
            )
        });
        if user.is_empty() {
            return Ok(refused(
                StatusCode::UNAUTHORIZED,
                "no_credentials",
                "this CPE has no credentials for rdm's ACS",
            ));
        }
        match self.verify(headers, &user, &password) {
            Verdict::Good => {}
            Verdict::Missing => return Ok(self.challenge(false)),
            Verdict::Wrong => {
                metrics::counter!("rdm_tr069_cwmp_auth_failures_total").increment(1);
                tracing::info!(%slug, cpe = %acs_id, "a CPE's credentials were refused");
                return Ok(self.challenge(true));
            }
        }
        let mut device_id = found.device_id.clone();
        if device_id.is_empty() {
            if !bootstrap || policy.cwmp_auto_register_label.is_empty() {
                return Ok(refused(
                    StatusCode::FORBIDDEN,
                    "unknown_cpe",
                    format!("no device of this tenant is CPE {acs_id}"),
                ));
            }
            device_id = self.find_cpe(lookup(true)).await?.device_id;
            metrics::counter!("rdm_tr069_cwmp_registrations_total").increment(1);
        }
        let (session, hold) = self
            .inform(&found.tenant_id, &device_id, &acs_id, &ns, &inform, &policy)
            .await?;
        let response = soap::envelope(&ns, id.as_deref(), hold, soap::INFORM_RESPONSE);
        let mut reply = xml_reply(StatusCode::OK, response);
        if let Ok(v) = HeaderValue::from_str(&format!(
            "{COOKIE}={}; Path=/cwmp/{slug}; HttpOnly",
            session.id
        )) {
            reply.headers_mut().insert(header::SET_COOKIE, v);
        }
        metrics::counter!("rdm_tr069_cwmp_sessions_total").increment(1);
        Ok(reply)
    }

    /// Checks the Authorization header against the credentials.
    fn verify(&self, headers: &HeaderMap, user: &str, password: &str) -> Verdict {
        let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Verdict::Missing;
        };
        let good = if let Some(basic) = auth.strip_prefix("Basic ") {
            base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .is_some_and(|pair| same(pair.as_bytes(), format!("{user}:{password}").as_bytes()))
        } else if let Some(digest) = auth.strip_prefix("Digest ") {
            match AuthorizationHeader::parse(digest) {
                Ok(given) if given.username == user && self.nonce_good(&given.nonce) => {
                    let mut expected = given.clone();
                    let context = AuthContext::new_with_method(
                        user,
                        password,
                        given.uri.as_str(),
                        None::<&[u8]>,
                        HttpMethod::POST,
                    );
                    expected.digest(&context);
                    same(expected.response.as_bytes(), given.response.as_bytes())
                }
                _ => false,
            }
        } else {
            false
        };
        if good { Verdict::Good } else { Verdict::Wrong }
    }

    /// A 401 offering Digest (and Basic, for CPEs that only do that).
    fn challenge(&self, wrong: bool) -> Response {
        let digest = format!(
            "Digest realm=\"{REALM}\", qop=\"auth\", algorithm=MD5, nonce=\"{}\"",
            self.nonce()
        );
        let mut reply = (
            StatusCode::UNAUTHORIZED,
            if wrong {
                "the credentials are wrong"
            } else {
                "credentials are required"
            },
        )
            .into_response();
        for value in [digest, format!("Basic realm=\"{REALM}\"")] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                reply.headers_mut().append(header::WWW_AUTHENTICATE, v);
            }
        }
        reply
    }

    /// A nonce any replica can check: its time and a MAC of it.
    fn nonce(&self) -> String {
        let now = now_millis() / 1000;
        format!("{now:x}.{}", self.nonce_mac(now))
    }

    fn nonce_mac(&self, time: i64) -> String {
        URL_SAFE_NO_PAD.encode(&self.key.mac(format!("cwmp nonce\0{time}").as_bytes())[..12])
    }

    fn nonce_good(&self, nonce: &str) -> bool {
        let Some((time, mac)) = nonce.split_once('.') else {
            return false;
        };
        let Ok(time) = i64::from_str_radix(time, 16) else {
            return false;
        };
        let age = now_millis() / 1000 - time;
        (0..NONCE_TTL_S as i64).contains(&age)
            && same(mac.as_bytes(), self.nonce_mac(time).as_bytes())
    }

    /// Stores what an authenticated Inform says and opens the session;
    /// whether the CPE is to hold its own requests (it came for a
    /// connection request and a user's tasks wait: they run first).
    async fn inform(
        &self,
        tenant_id: &str,
        device_id: &str,
        acs_id: &str,
        ns: &str,
        inform: &soap::Inform,
        policy: &Tr069Policy,
    ) -> Result<(SessionRow, bool)> {
        let now = now_millis();
        let mut tx = self.db.begin_write(tenant(tenant_id)).await?;
        let before = store::cpe(&mut tx, tenant_id, device_id).await?;
        let param = |suffix: &str| {
            inform
                .params
                .iter()
                .find(|p| p.name.ends_with(suffix))
                .map(|p| p.value.clone())
        };
        let root = inform
            .params
            .iter()
            .find_map(|p| p.name.split_once('.').map(|(r, _)| format!("{r}.")))
            .or_else(|| before.as_ref().map(|b| b.root.clone()))
            .unwrap_or_else(|| "Device.".into());
        let events: Vec<&str> = inform
            .events
            .iter()
            .map(|(code, _)| code.as_str())
            .collect();
        let bootstrap = events.contains(&"0 BOOTSTRAP");
        let row = CpeRow {
            tenant_id: tenant_id.to_owned(),
            device_id: device_id.to_owned(),
            acs_id: acs_id.to_owned(),
            manufacturer: inform.device.manufacturer.clone(),
            oui: inform.device.oui.clone(),
            product_class: inform.device.product_class.clone(),
            serial_number: inform.device.serial_number.clone(),
            cr_url: param(".ManagementServer.ConnectionRequestURL")
                .or_else(|| before.as_ref().map(|b| b.cr_url.clone()))
                .unwrap_or_default(),
            root,
            bootstrapped: match &before {
                Some(b) if !bootstrap => b.bootstrapped,
                _ => 0,
            },
            last_inform: now,
            last_events: events.join(","),
        };
        store::put_cpe(&mut tx, &row).await?;
        // One session per CPE: a new Inform ends any other.
        store::end_sessions_of(&mut tx, tenant_id, device_id).await?;
        store::put_values(&mut tx, tenant_id, device_id, &inform.params, now).await?;
        let pending = store::pending_tasks(&mut tx, tenant_id, device_id).await?;
        let hold = events.contains(&"6 CONNECTION REQUEST")
            && pending
                .iter()
                .any(|t| !t.user_id.is_empty() && t.status == "QUEUED");
        if row.bootstrapped == 0 && !pending.iter().any(|t| t.user_id.is_empty()) {
            let interval = match policy.cwmp_periodic_inform_interval_s {
                0 => DEFAULT_INFORM_INTERVAL_S,
                s => s,
            };
            let task = new_task(
                tenant_id,
                device_id,
                "",
                json!({"name": "bootstrap", "interval": interval}),
            );
            store::insert_task(&mut tx, &task).await?;
        }
        let session = SessionRow {
            id: random_id(),
            tenant_id: tenant_id.to_owned(),
            device_id: device_id.to_owned(),
            ns: ns.to_owned(),
            task_id: String::new(),
            expire_time: now + SESSION_TTL.as_millis() as i64,
        };
        store::put_session(&mut tx, &session).await?;
        tx.commit().await?;
        tracing::debug!(%tenant_id, %device_id, events = %row.last_events, "cwmp inform");
        Ok((session, hold))
    }

    /// A request inside a session.
    async fn in_session(&self, s: SessionRow, envelope: Option<Envelope>) -> Result<Response> {
        let (id, message) = match envelope {
            Some(e) => (e.id, Some(e.message)),
            None => (None, None),
        };
        let id = id.as_deref();
        match message {
            None => {}
            Some(Message::Inform(_)) => {
                return Ok(soap_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &s.ns,
                    id,
                    &soap::acs_fault(8003, "an Inform was already received in this session"),
                ));
            }
            Some(Message::GetRpcMethods) => {
                return Ok(soap_reply(StatusCode::OK, &s.ns, id, &soap::rpc_methods()));
            }
            Some(Message::TransferComplete(t)) => {
                self.transfer_complete(&s, t).await?;
                return Ok(soap_reply(
                    StatusCode::OK,
                    &s.ns,
                    id,
                    soap::TRANSFER_COMPLETE_RESPONSE,
                ));
            }
            Some(Message::Other(method)) => {
                return Ok(soap_reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &s.ns,
                    id,
                    &soap::acs_fault(8000, &format!("rdm's ACS does not take {method}")),
                ));
            }
            Some(Message::Answer(a)) => return self.answered(s, Ok(a)).await,
            Some(Message::Fault(f)) => return self.answered(s, Err(f)).await,
        }
        let mut tx = self.db.begin_write(tenant(&s.tenant_id)).await?;
        let reply = self.next(&mut tx, s).await?;
        tx.commit().await?;
        Ok(reply)
    }

    /// The CPE's answer recorded and the next RPC chosen, in one
    /// transaction.
    async fn answered(
        &self,
        s: SessionRow,
        answer: std::result::Result<Answer, soap::Fault>,
    ) -> Result<Response> {
        let mut tx = self.db.begin_write(tenant(&s.tenant_id)).await?;
        let settled = self.record(&mut tx, &s, answer).await?;
        let reply = self.next(&mut tx, s).await?;
        tx.commit().await?;
        if let Some(status) = settled {
            metrics::counter!("rdm_tr069_cwmp_tasks_total", "status" => status).increment(1);
            self.settled.notify_waiters();
        }
        Ok(reply)
    }

    /// The next queued task's RPC, or 204 and the session's end.
    async fn next(&self, tx: &mut TenantTx, mut s: SessionRow) -> Result<Response> {
        let now = now_millis();
        loop {
            let Some(mut task) = store::next_task(tx, &s.tenant_id, &s.device_id).await? else {
                store::delete_session(tx, &s.id).await?;
                return Ok(StatusCode::NO_CONTENT.into_response());
            };
            task.update_time = now;
            match self.rpc_for(tx, &task, now).await? {
                Ok(rpc) => {
                    task.status = "RUNNING".into();
                    task.session_id = s.id.clone();
                    store::update_task(tx, &task).await?;
                    s.task_id = task.id.clone();
                    s.expire_time = now + SESSION_TTL.as_millis() as i64;
                    store::put_session(tx, &s).await?;
                    return Ok(soap_reply(
                        StatusCode::OK,
                        &s.ns,
                        Some(&task.id),
                        &soap::request(&rpc),
                    ));
                }
                Err(why) => {
                    task.status = "FAULTED".into();
                    task.fault = fault_doc(&task.id, 8002, &why, &[], now).to_string();
                    store::update_task(tx, &task).await?;
                    self.settled.notify_waiters();
                }
            }
        }
    }

    /// The RPC a task sends now, or why it cannot be sent.
    async fn rpc_for(
        &self,
        tx: &mut TenantTx,
        task: &TaskRow,
        now: i64,
    ) -> Result<std::result::Result<Rpc, String>> {
        let t: Value = serde_json::from_str(&task.task)
            .map_err(|e| Error::internal("reading a stored task", e))?;
        let text = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
        let object = |k: &str| match t[k].as_str().unwrap_or_default() {
            "" => String::new(),
            name => format!("{name}."),
        };
        Ok(Ok(match text("name").as_str() {
            "getParameterValues" => Rpc::GetParameterValues(strings(&t["parameterNames"])),
            "setParameterValues" => Rpc::SetParameterValues {
                params: triples(&t["parameterValues"]),
                key: text("parameterKey"),
            },
            "refreshObject" if task.step == 0 => Rpc::GetParameterNames {
                path: object("objectName"),
                next_level: false,
            },
            "refreshObject" => Rpc::GetParameterValues(vec![object("objectName")]),
            "addObject" => Rpc::AddObject {
                name: object("objectName"),
                key: task.id.clone(),
            },
            "deleteObject" => Rpc::DeleteObject {
                name: object("objectName"),
                key: task.id.clone(),
            },
            "reboot" => Rpc::Reboot {
                key: task.id.clone(),
            },
            "factoryReset" => Rpc::FactoryReset,
            "download" => {
                let (url, size) = match text("url").as_str() {
                    "" => {
                        let name = text("fileName");
                        let Some(file) = store::file(tx, &task.tenant_id, &name).await? else {
                            return Ok(Err(format!("rdm has no file {name:?} any more")));
                        };
                        let token = random_id() + &random_id();
                        store::insert_download(
                            tx,
                            &store::DownloadRow {
                                token_hash: hex::encode(Sha256::digest(token.as_bytes())),
                                tenant_id: task.tenant_id.clone(),
                                file_name: name,
                                task_id: task.id.clone(),
                                used: 0,
                                expire_time: now + DOWNLOAD_TTL.as_millis() as i64,
                            },
                        )
                        .await?;
                        (
                            format!("{}/files/{token}", self.public_url.trim_end_matches('/')),
                            file.size.max(0) as u64,
                        )
                    }
                    url => (url.to_owned(), 0),
                };
                Rpc::Download {
                    key: task.id.clone(),
                    file_type: text("fileType"),
                    url,
                    size,
                    target_file_name: text("targetFileName"),
                }
            }
            "bootstrap" => {
                let Some(cpe) = store::cpe(tx, &task.tenant_id, &task.device_id).await? else {
                    return Ok(Err("the CPE is gone".into()));
                };
                let ms = format!("{}ManagementServer.", cpe.root);
                let param = |name: &str, value: String, xsd: &str| Param {
                    name: format!("{ms}{name}"),
                    value,
                    xsd_type: xsd.into(),
                };
                Rpc::SetParameterValues {
                    params: vec![
                        param(
                            "ConnectionRequestUsername",
                            CR_USERNAME.into(),
                            "xsd:string",
                        ),
                        param(
                            "ConnectionRequestPassword",
                            self.cr_password(&task.tenant_id, &task.device_id),
                            "xsd:string",
                        ),
                        param("PeriodicInformEnable", "true".into(), "xsd:boolean"),
                        param(
                            "PeriodicInformInterval",
                            t["interval"].as_u64().unwrap_or(3600).to_string(),
                            "xsd:unsignedInt",
                        ),
                    ],
                    key: "rdm-bootstrap".into(),
                }
            }
            other => return Ok(Err(format!("rdm's ACS has no task {other:?}"))),
        }))
    }

    /// Records the CPE's answer (or fault) to the session's task: the
    /// task's status when it is done or faulted.
    async fn record(
        &self,
        tx: &mut TenantTx,
        s: &SessionRow,
        answer: std::result::Result<Answer, soap::Fault>,
    ) -> Result<Option<String>> {
        let now = now_millis();
        let Some(mut task) = store::task(tx, &s.tenant_id, &s.task_id).await? else {
            return Ok(None);
        };
        if task.status != "RUNNING" || task.session_id != s.id {
            return Ok(None);
        }
        let t: Value = serde_json::from_str(&task.task)
            .map_err(|e| Error::internal("reading a stored task", e))?;
        let (tenant_id, device_id) = (&s.tenant_id, &s.device_id);
        let name = t["name"].as_str().unwrap_or_default();
        let object = t["objectName"].as_str().unwrap_or_default();
        let prefix = match object {
            "" => String::new(),
            o => format!("{o}."),
        };
        task.update_time = now;
        task.session_id.clear();
        task.status = "DONE".into();
        match (name, answer) {
            (_, Err(f)) => {
                task.status = "FAULTED".into();
                task.fault = fault_doc(&task.id, f.code, &f.string, &f.params, now).to_string();
            }
            ("getParameterValues", Ok(Answer::Values(values))) => {
                store::put_values(tx, tenant_id, device_id, &values, now).await?;
            }
            ("refreshObject", Ok(Answer::Names(names))) if task.step == 0 => {
                store::forget_under(tx, tenant_id, device_id, &prefix).await?;
                store::put_names(tx, tenant_id, device_id, &names, now).await?;
                task.status = "QUEUED".into();
                task.step = 1;
            }
            ("refreshObject", Ok(Answer::Values(values))) => {
                store::put_values(tx, tenant_id, device_id, &values, now).await?;
            }
            ("setParameterValues", Ok(Answer::Done { .. })) => {
                let set = triples(&t["parameterValues"]);
                store::put_values(tx, tenant_id, device_id, &set, now).await?;
            }
            // Its password is not cached: it is derived when needed.
            ("bootstrap", Ok(Answer::Done { .. })) => {
                store::set_bootstrapped(tx, tenant_id, device_id).await?;
            }
            ("addObject", Ok(Answer::AddObject { instance })) => {
                let added = (format!("{prefix}{instance}."), true);
                store::put_names(tx, tenant_id, device_id, &[added], now).await?;
            }
            ("deleteObject", Ok(Answer::Done { .. })) => {
                store::forget_under(tx, tenant_id, device_id, &prefix).await?;
            }
            ("reboot" | "factoryReset", Ok(Answer::Done { .. })) => {}
            ("download", Ok(Answer::Done { status })) => {
                if status == 0 {
                    task.transfer = json!({"fault_code": 0}).to_string();
                }
            }
            (name, Ok(other)) => {
                task.status = "FAULTED".into();
                let why = format!("the CPE answered {name} with {}", answer_name(&other));
                task.fault = fault_doc(&task.id, 8002, &why, &[], now).to_string();
            }
        }
        store::update_task(tx, &task).await?;
        Ok((task.status != "QUEUED").then_some(task.status))
    }

    /// A Download's end as the CPE reports it (its CommandKey is the task).
    async fn transfer_complete(&self, s: &SessionRow, t: soap::TransferComplete) -> Result<()> {
        let now = now_millis();
        let mut tx = self.db.begin_write(tenant(&s.tenant_id)).await?;
        let Some(mut task) = store::task(&mut tx, &s.tenant_id, &t.command_key).await? else {
            tracing::info!(tenant_id = %s.tenant_id, key = %t.command_key, "a TransferComplete for no task of rdm's");
            return Ok(());
        };
        if task.device_id != s.device_id {
            return Ok(());
        }
        task.transfer = json!({
            "start_time": t.start_time,
            "complete_time": t.complete_time,
            "fault_code": t.fault_code,
            "fault_string": t.fault_string,
        })
        .to_string();
        if t.fault_code != 0 {
            task.status = "FAULTED".into();
            task.fault = fault_doc(&task.id, t.fault_code, &t.fault_string, &[], now).to_string();
        }
        task.update_time = now;
        store::update_task(&mut tx, &task).await?;
        tx.commit().await?;
        self.settled.notify_waiters();
        Ok(())
    }

    /// The password rdm sets for a CPE's connection requests: derived from
    /// the mesh's key, so it is stored nowhere.
    pub fn cr_password(&self, tenant_id: &str, device_id: &str) -> String {
        let mac = self
            .key
            .mac(format!("cwmp connection request\0{tenant_id}\0{device_id}").as_bytes());
        URL_SAFE_NO_PAD.encode(&mac[..18])
    }

    /// Asks the CPE to open a session now: an HTTP GET to the URL it
    /// reported, through the address policy, with Digest auth.
    pub async fn connection_request(&self, cpe: &CpeRow, allowed: &[String]) -> Result<()> {
        let unreachable = |why: String| {
            Error::new(
                ErrorCode::DeviceUnreachable,
                format!("connection request to the CPE failed: {why}"),
            )
        };
        if cpe.cr_url.is_empty() {
            return Err(unreachable(
                "the CPE has reported no ConnectionRequestURL".into(),
            ));
        }
        let (url, http) = self.clients.for_target(&cpe.cr_url, allowed).await?;
        let send = |auth: Option<String>| {
            let mut req = http.get(url.clone()).timeout(Duration::from_secs(5));
            if let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            req.send()
        };
        let first = send(None)
            .await
            .map_err(|e| unreachable(e.without_url().to_string()))?;
        let reply = if first.status() == StatusCode::UNAUTHORIZED {
            let challenge = first
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|v| v.starts_with("Digest"))
                .ok_or_else(|| unreachable("the CPE offered no Digest challenge".into()))?;
            let mut prompt = digest_auth::parse(challenge)
                .map_err(|e| unreachable(format!("a challenge rdm cannot read: {e}")))?;
            let password = self.cr_password(&cpe.tenant_id, &cpe.device_id);
            let path = match url.query() {
                Some(q) => format!("{}?{q}", url.path()),
                None => url.path().to_owned(),
            };
            let context = AuthContext::new(CR_USERNAME, password.as_str(), path.as_str());
            let answer = prompt
                .respond(&context)
                .map_err(|e| unreachable(format!("a challenge rdm cannot answer: {e}")))?;
            send(Some(answer.to_header_string()))
                .await
                .map_err(|e| unreachable(e.without_url().to_string()))?
        } else {
            first
        };
        match reply.status() {
            StatusCode::OK | StatusCode::NO_CONTENT => Ok(()),
            status => Err(unreachable(format!("the CPE answered {status}"))),
        }
    }

    /// Waits until the task is done or faulted, at most `wait`.
    pub async fn settled(
        &self,
        tenant_id: &str,
        id: &str,
        wait: Duration,
    ) -> Result<Option<TaskRow>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.settled.notified();
            let mut tx = self.db.begin(tenant(tenant_id)).await?;
            let task = store::task(&mut tx, tenant_id, id).await?;
            drop(tx);
            match task {
                Some(t) if t.status == "DONE" || t.status == "FAULTED" => return Ok(Some(t)),
                None => return Ok(None),
                Some(_) if tokio::time::Instant::now() >= deadline => return Ok(None),
                Some(_) => {}
            }
            // Another replica's session is seen by polling.
            let _ = tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
                notified,
            )
            .await;
        }
    }

    /// Ends expired sessions now and then (their tasks in flight queued
    /// again).
    pub async fn expire(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let run = async {
                let mut tx = self.db.begin_write(Scope::Platform).await?;
                let n = store::expire_sessions(&mut tx, now_millis()).await?;
                tx.commit().await?;
                Ok::<_, Error>(n)
            };
            match run.await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "cwmp sessions expired"),
                Err(e) => tracing::warn!(error = %e.message, "expiring cwmp sessions"),
            }
        }
    }
}

/// A new queued task.
pub fn new_task(tenant_id: &str, device_id: &str, user_id: &str, task: Value) -> TaskRow {
    let now = now_millis();
    TaskRow {
        id: random_id(),
        tenant_id: tenant_id.to_owned(),
        device_id: device_id.to_owned(),
        user_id: user_id.to_owned(),
        task: task.to_string(),
        status: "QUEUED".into(),
        create_time: now,
        update_time: now,
        ..Default::default()
    }
}

/// 128 random bits, hex.
pub fn random_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// A fault as the task documents carry it (GenieACS's shape, which the
/// service's fault reporting reads).
fn fault_doc(
    task_id: &str,
    code: u32,
    string: &str,
    params: &[(String, u32, String)],
    now: i64,
) -> Value {
    // A set refused for one parameter reports that parameter's code (9008
    // rather than the envelope's 9003), as the service's faults do.
    let shown = params.first().map_or(code, |(_, c, _)| *c);
    json!({
        "channel": format!("task_{task_id}"),
        "code": format!("cwmp.{shown}"),
        "message": string,
        "detail": {
            "faultCode": code.to_string(),
            "faultString": string,
            "setParameterValuesFault": params.iter().map(|(name, code, string)| json!({
                "parameterName": name, "faultCode": code.to_string(), "faultString": string
            })).collect::<Vec<_>>(),
        },
        "retries": 0,
        "timestamp": crate::builtin::iso(now),
    })
}

fn answer_name(a: &Answer) -> &'static str {
    match a {
        Answer::Values(_) => "parameter values",
        Answer::Names(_) => "parameter names",
        Answer::AddObject { .. } => "an added object",
        Answer::Done { .. } => "a status",
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// `[[name, value, type], ...]` as parameters.
fn triples(v: &Value) -> Vec<Param> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| Param {
            name: t[0].as_str().unwrap_or_default().to_owned(),
            value: t[1].as_str().unwrap_or_default().to_owned(),
            xsd_type: t[2].as_str().unwrap_or("xsd:string").to_owned(),
        })
        .collect()
}

/// `GET /files/{token}`: the file a download token names, once.
async fn download(State(acs): State<Arc<Acs>>, Path(token): Path<String>) -> Response {
    let run = async {
        let hash = hex::encode(Sha256::digest(token.as_bytes()));
        let mut tx = acs.db.begin_write(Scope::Platform).await?;
        let spent = store::spend_download(&mut tx, &hash, now_millis()).await?;
        tx.commit().await?;
        let Some(d) = spent else {
            return Ok(None);
        };
        let mut tx = acs.db.begin(tenant(&d.tenant_id)).await?;
        let file = store::file(&mut tx, &d.tenant_id, &d.file_name).await?;
        Ok::<_, Error>(file)
    };
    let file = match run.await {
        Ok(Some(f)) => f,
        Ok(None) => {
            return refused(
                StatusCode::NOT_FOUND,
                "download_token",
                "this download URL is used, expired or unknown",
            );
        }
        Err(e) => return internal(e),
    };
    match tokio::fs::File::open(acs.files_dir.join(&file.path)).await {
        Ok(f) => (
            [
                (header::CONTENT_TYPE, file.content_type.clone()),
                (header::CONTENT_LENGTH, file.size.to_string()),
            ],
            Body::from_stream(tokio_util::io::ReaderStream::new(f)),
        )
            .into_response(),
        Err(e) => internal(Error::internal("opening a stored file", e)),
    }
}
