//! rdm's TR-069 service: CPEs through an ACS's north-bound API (GenieACS
//! NBI). Every operation is an ACS task tagged with the caller's tenant and
//! user; `wait` has the ACS open a session with the CPE at once, `queue`
//! leaves the task for the CPE's next session. The NBI has no
//! authentication of its own, so rdm is what keeps tenants apart: tasks are
//! listed by their tenant tag, task ids are signed for the tenant, and a
//! tenant's ACS device query bounds every device it reaches.
mod acs;
mod builtin;
pub mod cwmp;
mod files;
pub mod soap;
pub mod store;
mod tree;
pub mod xsd;

use acs::{Acs, Outcome, Page};
use anyhow::Context as _;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use builtin::Builtin;
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    address::HttpClients,
    auth::SigningKey,
    mesh::{Context, Database, Spec, Started},
    server::CallDeadline,
    targets::{self, TargetRef},
};
use rdm_proto::{
    inventory::endpoint::Settings,
    tr069::{self as pb, target::Target as Which, tr069_service_server::Tr069Service},
};
use reqwest::Method;
use serde_json::{Value, json};
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "tr069";
/// How long `wait` waits for the CPE when the request names no timeout.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// The TR-069 service's own settings: rdm's own ACS.
#[derive(clap::Args, Clone, Debug, Default)]
#[group(id = "tr069")]
pub struct Args {
    /// Where rdm's own ACS listens for CPEs (CWMP over HTTP, one URL per
    /// tenant: /cwmp/{tenant_slug}); `rdm up` default 127.0.0.1:7547, none
    /// under `rdm serve` unless set. It needs the service's database.
    #[arg(long, env = "RDM_TR069_CWMP_LISTEN")]
    pub tr069_cwmp_listen: Option<SocketAddr>,
    /// The URL CPEs reach that listener at, behind any load balancer
    /// (download URLs start with it); http://<listen address> when not set.
    #[arg(long, env = "RDM_TR069_CWMP_URL")]
    pub tr069_cwmp_url: Option<String>,
    /// Where the files CPEs download are kept (shared by the replicas).
    #[arg(
        long,
        env = "RDM_TR069_FILES_DIR",
        default_value = "./rdm-data/tr069-files"
    )]
    pub tr069_files_dir: PathBuf,
    /// The largest file a tenant may upload, in MiB.
    #[arg(long, env = "RDM_TR069_FILE_LIMIT_MB", default_value_t = 256)]
    pub tr069_file_limit_mb: u64,
}

/// The TR-069 service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new("tr069", "rdm.tr069.v1", 50055, |args, context| {
    Box::pin(start(args, context))
})
.with_database();

async fn start(args: Args, context: Context) -> anyhow::Result<Started> {
    let clients = HttpClients::new(context.addresses.clone());
    let listen = args.tr069_cwmp_listen.or(context
        .all_in_one
        .then(|| SocketAddr::from(([127, 0, 0, 1], 7547))));
    let mut listeners = Vec::new();
    // rdm's own ACS needs a database; without one, only external ACSes.
    let builtin = match (&context.database, listen) {
        (Some(_), Some(addr)) => {
            let db = Database::migrated(&context, "tr069", &store::MIGRATIONS).await?;
            let socket = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for CPEs on {addr}"))?;
            let local = socket.local_addr()?;
            let acs = Arc::new(cwmp::Acs {
                db,
                inventory: context.resolver(DOMAIN),
                key: context.service_key.clone(),
                clients: clients.clone(),
                public_url: args
                    .tr069_cwmp_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{local}")),
                files_dir: args.tr069_files_dir.clone(),
                file_limit: args.tr069_file_limit_mb << 20,
                settled: Default::default(),
                found: Default::default(),
            });
            tokio::spawn(acs.clone().expire());
            let app = cwmp::router(acs.clone());
            let shutdown = context.shutdown.clone();
            tokio::spawn(async move {
                let served = axum::serve(socket, app)
                    .with_graceful_shutdown(shutdown.requested())
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the CWMP listener stopped");
                }
            });
            listeners.push(("tr069-cwmp", local));
            Some(acs)
        }
        (None, Some(addr)) if args.tr069_cwmp_listen.is_some() => {
            anyhow::bail!(
                "RDM_TR069_CWMP_LISTEN ({addr}) needs RDM_DATABASE_URL: rdm's ACS keeps its sessions and tasks there"
            )
        }
        _ => None,
    };
    let tr069 = Tr069 {
        inventory: context.resolver(DOMAIN),
        clients,
        ids: context.service_key.clone(),
        builtin: builtin.clone(),
    };
    let mut routes =
        tonic::service::Routes::new(pb::tr069_service_server::Tr069ServiceServer::new(tr069));
    if let Some(acs) = builtin {
        routes = routes.add_service(pb::tr069_file_service_server::Tr069FileServiceServer::new(
            files::Files(acs),
        ));
    }
    Ok(Started {
        router: rdm_kit::server::guarded(routes, context.guard()),
        listeners,
    })
}

struct Tr069 {
    inventory: targets::Inventory,
    clients: HttpClients,
    /// Signs the task ids handed to a tenant.
    ids: Arc<SigningKey>,
    /// rdm's own ACS, when this process runs it.
    builtin: Option<Arc<cwmp::Acs>>,
}

/// Where a CPE's tasks go: an external ACS, or rdm's own.
enum Backend {
    Nbi(Acs),
    Builtin(Builtin),
}

impl Backend {
    async fn add_task(
        &self,
        acs_id: &str,
        task: &Value,
        wait: Option<Duration>,
    ) -> Result<Outcome> {
        match self {
            Backend::Nbi(acs) => acs.add_task(acs_id, task, wait).await,
            Backend::Builtin(b) => b.add_task(task, wait).await,
        }
    }

    async fn find(
        &self,
        collection: &str,
        query: &Value,
        projection: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Page> {
        match self {
            Backend::Nbi(acs) => acs.find(collection, query, projection, skip, limit).await,
            Backend::Builtin(b) => b.find(collection, query, projection, skip, limit).await,
        }
    }

    async fn get(&self, collection: &str, id: &str, projection: &str) -> Result<Option<Value>> {
        let query = json!({"_id": id});
        Ok(self
            .find(collection, &query, projection, 0, 1)
            .await?
            .items
            .into_iter()
            .next())
    }
}

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

/// Checks a request against the rules its proto states (a 400 naming the
/// field) and returns the caller.
fn checked<'r, T: prost::Message>(req: &'r Request<T>, name: &str) -> Result<&'r Principal> {
    rdm_kit::rules::checked(req, &format!("rdm.tr069.v1.{name}"))
}

/// A CPE as a request names it: its ACS, the ACS's id for it, and the
/// tenant's bound on which ACS devices it may reach.
struct Cpe {
    acs: Backend,
    acs_id: String,
    /// The device of the caller's tenant; empty for inline settings.
    device_id: String,
    /// The tenant's ACS device query; Null when it has none.
    scope: Value,
}

impl Cpe {
    /// `query` bounded by the tenant's ACS device query.
    fn scoped(&self, query: Value) -> Value {
        match &self.scope {
            Value::Null => query,
            scope => json!({"$and": [query, scope]}),
        }
    }

    /// NOT_FOUND unless the CPE is inside the tenant's ACS device query.
    async fn in_scope(&self) -> Result<()> {
        if self.scope.is_null() {
            return Ok(());
        }
        let query = self.scoped(json!({"_id": self.acs_id}));
        if self
            .acs
            .find("devices", &query, "_id", 0, 1)
            .await?
            .items
            .is_empty()
        {
            return Err(Error::not_found(format!(
                "the ACS device {:?} is outside this tenant's ACS device query",
                self.acs_id
            )));
        }
        Ok(())
    }
}

/// What a task's delivery came to.
struct Ran {
    /// DONE or QUEUED.
    status: &'static str,
    task_id: String,
}

fn target_ref(target: Option<&pb::Target>) -> Result<TargetRef> {
    match target.and_then(|t| t.target.as_ref()) {
        Some(Which::DeviceId(id)) => Ok(TargetRef::Device(id.clone())),
        Some(Which::Endpoint(e)) => Ok(TargetRef::Inline(Box::new(Settings::Tr069(e.clone())))),
        None => Err(Error::invalid(
            "target",
            "name a device_id or an inline endpoint",
        )),
    }
}

impl Tr069 {
    /// The CPE a request names, reachable through its vetted client.
    async fn cpe<T>(&self, req: &Request<T>, target: TargetRef) -> Result<Cpe> {
        let p = Principal::of(req)?;
        let resolved = self.inventory.resolve(p, target).await?;
        let Some(Settings::Tr069(endpoint)) = resolved.endpoint.and_then(|e| e.settings) else {
            return Err(Error::internal(
                "reading a resolved endpoint",
                "no TR-069 settings",
            ));
        };
        if endpoint.acs() == "builtin" {
            let Some(acs) = &self.builtin else {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "the endpoint says acs: builtin, and this tr069 service runs no ACS of its own (RDM_TR069_CWMP_LISTEN and a database)",
                ));
            };
            if resolved.device_id.is_empty() {
                return Err(Error::invalid(
                    "target",
                    "rdm's own ACS knows its CPEs as devices: name a device_id",
                ));
            }
            return Ok(Cpe {
                acs: Backend::Builtin(Builtin {
                    acs: acs.clone(),
                    tenant_id: Principal::of(req)?.tenant_id.clone(),
                    device_id: resolved.device_id.clone(),
                    acs_id: endpoint.device_id().to_owned(),
                    allowed: resolved.allowed_target_cidrs,
                }),
                acs_id: endpoint.device_id().to_owned(),
                device_id: resolved.device_id,
                scope: Value::Null,
            });
        }
        let (_, http) = self
            .clients
            .for_target(endpoint.base_url(), &resolved.allowed_target_cidrs)
            .await?;
        let deadline = CallDeadline::of(req).map(|d| d.remaining());
        let query = resolved
            .tenant_settings
            .and_then(|s| s.tr069)
            .map(|t| t.acs_device_query)
            .unwrap_or_default();
        let scope = match query.as_str() {
            "" => Value::Null,
            q => serde_json::from_str(q)
                .map_err(|e| Error::internal("reading the tenant's ACS device query", e))?,
        };
        Ok(Cpe {
            acs: Backend::Nbi(Acs::new(http, &endpoint, deadline)),
            acs_id: endpoint.device_id().to_owned(),
            device_id: resolved.device_id,
            scope,
        })
    }

    /// The CPE of an operation's target; a CPE the ACS names nothing for is
    /// FAILED_PRECONDITION.
    async fn operation_cpe<T>(&self, req: &Request<T>, target: Option<&pb::Target>) -> Result<Cpe> {
        let cpe = self.cpe(req, target_ref(target)?).await?;
        if cpe.acs_id.is_empty() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                "the tr069 endpoint names no device_id (the ACS's OUI-ProductClass-Serial) and the device has no serial to use",
            ));
        }
        Ok(cpe)
    }

    /// Hands `task` to the ACS for the CPE, tagged with the caller, and
    /// waits for the CPE's session unless `mode` is queue. A fault is
    /// DEVICE_ERROR naming the task, which stays in the ACS.
    async fn run(
        &self,
        p: &Principal,
        cpe: &Cpe,
        mut task: Value,
        mode: &str,
        timeout_ms: u32,
    ) -> Result<Ran> {
        cpe.in_scope().await?;
        task["rdm_tenant"] = p.tenant_id.clone().into();
        task["rdm_user"] = p.user_id.clone().into();
        task["rdm_device"] = cpe.device_id.clone().into();
        let wait = (mode != "queue").then(|| match timeout_ms {
            0 => DEFAULT_WAIT,
            ms => Duration::from_millis(ms.into()),
        });
        let outcome = cpe.acs.add_task(&cpe.acs_id, &task, wait).await?;
        let command_id = outcome.task()["_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let task_id = self.task_id(p, &cpe.device_id, &command_id);
        tracing::info!(
            tenant_id = %p.tenant_id,
            task = task["name"].as_str().unwrap_or_default(),
            %command_id,
            "tr069 task"
        );
        let status = match outcome {
            Outcome::Done(_) => "DONE",
            Outcome::Queued(_) => "QUEUED",
            Outcome::Faulted(_) => {
                metrics::counter!("rdm_tr069_tasks_total", "status" => "FAULTED").increment(1);
                let fault = cpe
                    .acs
                    .get("faults", &format!("{}:task_{command_id}", cpe.acs_id), "")
                    .await?;
                return Err(fault_error(fault.as_ref(), &task_id));
            }
        };
        metrics::counter!("rdm_tr069_tasks_total", "status" => status).increment(1);
        Ok(Ran { status, task_id })
    }

    /// rdm's id for an ACS task of a device: the device, the ACS's id, and
    /// a MAC binding both to the tenant (so an id is only good in the
    /// tenant it was given to, and a made-up one is NOT_FOUND). Empty for
    /// an inline target.
    fn task_id(&self, p: &Principal, device_id: &str, command_id: &str) -> String {
        if device_id.is_empty() || command_id.is_empty() {
            return String::new();
        }
        format!(
            "{device_id}.{command_id}.{}",
            self.task_mac(p, device_id, command_id)
        )
    }

    fn task_mac(&self, p: &Principal, device_id: &str, command_id: &str) -> String {
        let data = format!("tr069 task\0{}\0{device_id}\0{command_id}", p.tenant_id);
        URL_SAFE_NO_PAD.encode(&self.ids.mac(data.as_bytes())[..12])
    }

    /// The device and ACS task an rdm task id names, if the id was given
    /// to the caller's tenant.
    fn parse_task_id(&self, p: &Principal, task_id: &str) -> Result<(String, String)> {
        let not_found = || Error::not_found(format!("task {task_id} not found"));
        // The device id has no dot, the MAC none either; the ACS's id sits between.
        let Some(((device, command), mac)) = task_id
            .rsplit_once('.')
            .and_then(|(rest, mac)| Some((rest.split_once('.')?, mac)))
        else {
            return Err(not_found());
        };
        let expected = self.task_mac(p, device, command);
        // A MAC is a secret until it matches.
        if device.is_empty() || command.is_empty() || !same(mac.as_bytes(), expected.as_bytes()) {
            return Err(not_found());
        }
        Ok((device.to_owned(), command.to_owned()))
    }

    /// A task of the caller's tenant by rdm id: the CPE, the ACS's id, and
    /// the task while the ACS holds it (None once the CPE ran it).
    async fn find_task<T>(
        &self,
        req: &Request<T>,
        task_id: &str,
    ) -> Result<(Cpe, String, Option<Value>)> {
        let p = Principal::of(req)?;
        let (device_id, command_id) = self.parse_task_id(p, task_id)?;
        let cpe = self.cpe(req, TargetRef::Device(device_id)).await?;
        let query = json!({"_id": command_id, "rdm_tenant": p.tenant_id});
        let task = cpe
            .acs
            .find("tasks", &query, "", 0, 1)
            .await?
            .items
            .into_iter()
            .next();
        Ok((cpe, command_id, task))
    }

    /// A task as rdm shows it, with its fault from `faults` (the device's).
    fn task_pb(&self, p: &Principal, cpe: &Cpe, task: &Value, faults: &[Value]) -> pb::Task {
        let command_id = task["_id"].as_str().unwrap_or_default();
        let channel = format!("task_{command_id}");
        let fault = faults
            .iter()
            .find(|f| f["channel"].as_str() == Some(channel.as_str()))
            .map(|f| self.fault_pb(p, cpe, f));
        let names = match task["name"].as_str().unwrap_or_default() {
            "getParameterValues" => task["parameterNames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect(),
            "setParameterValues" => task["parameterValues"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v[0].as_str().map(str::to_owned))
                .collect(),
            _ => task["objectName"]
                .as_str()
                .map(|n| vec![n.to_owned()])
                .unwrap_or_default(),
        };
        pb::Task {
            task_id: self.task_id(p, &cpe.device_id, command_id),
            command_id: command_id.to_owned(),
            device_id: cpe.device_id.clone(),
            name: task["name"].as_str().unwrap_or_default().to_owned(),
            status: match task["status"].as_str() {
                Some(status) => status.to_owned(),
                None if fault.is_some() => "FAULTED".to_owned(),
                None => "QUEUED".to_owned(),
            },
            transfer: transfer_pb(&task["transfer"]),
            create_time: tree::timestamp(&task["timestamp"]),
            user_id: task["rdm_user"].as_str().unwrap_or_default().to_owned(),
            fault,
            names,
        }
    }

    fn fault_pb(&self, p: &Principal, cpe: &Cpe, f: &Value) -> pb::Fault {
        let channel = f["channel"].as_str().unwrap_or_default();
        let task_id = channel
            .strip_prefix("task_")
            .map(|command| self.task_id(p, &cpe.device_id, command))
            .unwrap_or_default();
        let (cwmp_fault_code, message, parameter) = fault_detail(f);
        pb::Fault {
            fault_id: format!("{}.{channel}", cpe.device_id),
            device_id: cpe.device_id.clone(),
            channel: channel.to_owned(),
            code: f["code"].as_str().unwrap_or_default().to_owned(),
            cwmp_fault_code,
            message,
            parameter,
            retries: f["retries"].as_u64().unwrap_or(0).min(u32::MAX.into()) as u32,
            timestamp: tree::timestamp(&f["timestamp"]),
            task_id,
        }
    }

    /// The device's faults the caller may see: a task's fault only when
    /// the task is the tenant's.
    async fn faults(&self, cpe: &Cpe, tasks: &[Value]) -> Result<Vec<Value>> {
        let faults = cpe
            .acs
            .find("faults", &json!({"device": cpe.acs_id}), "", 0, 1000)
            .await?
            .items;
        Ok(faults
            .into_iter()
            .filter(|f| {
                match f["channel"]
                    .as_str()
                    .unwrap_or_default()
                    .strip_prefix("task_")
                {
                    Some(command) => tasks.iter().any(|t| t["_id"].as_str() == Some(command)),
                    None => true,
                }
            })
            .collect())
    }

    /// The tenant's pending tasks for the device.
    async fn tasks(&self, p: &Principal, cpe: &Cpe) -> Result<Vec<Value>> {
        let query = json!({"device": cpe.acs_id, "rdm_tenant": p.tenant_id});
        Ok(cpe.acs.find("tasks", &query, "", 0, 1000).await?.items)
    }

    /// The device's cached tree under the paths (ends with `.` for an
    /// object), read from the ACS without a session.
    async fn cached(&self, cpe: &Cpe, paths: &[&str]) -> Result<Value> {
        // An empty path is the whole tree: no projection.
        let projection = if paths.iter().any(|p| p.is_empty()) {
            String::new()
        } else {
            paths
                .iter()
                .map(|p| p.trim_end_matches('.'))
                .chain(["_id", "_lastInform", "_tags"])
                .collect::<Vec<_>>()
                .join(",")
        };
        let query = cpe.scoped(json!({"_id": cpe.acs_id}));
        cpe.acs
            .find("devices", &query, &projection, 0, 1)
            .await?
            .items
            .into_iter()
            .next()
            .ok_or_else(|| {
                Error::not_found(format!("the ACS has no device {:?}", cpe.acs_id))
                    .with_meta("acs_device_id", cpe.acs_id.clone())
            })
    }
}

/// A CPE fault as rdm reports it: DEVICE_ERROR with the CWMP code, the
/// fault string and the parameter, naming the task left in the ACS.
fn fault_error(fault: Option<&Value>, task_id: &str) -> Error {
    let (code, message, parameter) = fault.map(fault_detail).unwrap_or_default();
    let mut e = Error::new(
        ErrorCode::DeviceError,
        match (code, parameter.as_str()) {
            (0, _) => format!("the task faulted: {message}"),
            (c, "") => format!("the CPE refused the task: fault {c} {message}"),
            (c, param) => format!("the CPE refused the task: fault {c} {message} ({param})"),
        },
    )
    .with_meta("task_id", task_id);
    if code != 0 {
        e = e.with_meta("cwmp_fault_code", code.to_string());
    }
    if !parameter.is_empty() {
        e = e.with_meta("parameter", parameter);
    }
    e
}

/// A fault document's CWMP code (`cwmp.9005`, or the detail's faultCode),
/// fault string, and the parameter it names.
fn fault_detail(f: &Value) -> (u32, String, String) {
    let detail = &f["detail"];
    let per_param = &detail["setParameterValuesFault"][0];
    let code = f["code"]
        .as_str()
        .and_then(|c| c.strip_prefix("cwmp."))
        .or_else(|| per_param["faultCode"].as_str())
        .or_else(|| detail["faultCode"].as_str())
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let message = per_param["faultString"]
        .as_str()
        .or_else(|| detail["faultString"].as_str())
        .or_else(|| f["message"].as_str())
        .unwrap_or_default();
    let parameter = per_param["parameterName"]
        .as_str()
        .or_else(|| detail["parameterName"].as_str())
        .unwrap_or_default();
    (
        code,
        message.chars().take(512).collect(),
        parameter.to_owned(),
    )
}

/// The `value` of a set checked against its type: the wire triple.
fn set_triples(params: &[pb::Parameter]) -> Result<Vec<Value>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let xsd = xsd::full_name(&p.r#type).ok_or_else(|| {
                Error::invalid(
                    format!("parameters[{i}].type"),
                    format!("{:?} is not a TR-069 type", p.r#type),
                )
            })?;
            xsd::check(&p.value, xsd).map_err(|why| {
                Error::invalid(
                    format!("parameters[{i}].value"),
                    format!("{}: {why}", p.name),
                )
            })?;
            Ok(json!([p.name, p.value, xsd]))
        })
        .collect()
}

/// An object path as a GenieACS task names it (no trailing dot).
fn object(name: &str) -> &str {
    name.trim_end_matches('.')
}

/// A page token: how many devices the earlier pages held.
fn skip_of(token: &str) -> Result<u64> {
    match token {
        "" => Ok(0),
        t => t
            .parse()
            .map_err(|_| Error::invalid("page_token", "not a token this call returned")),
    }
}

/// Unwraps an operation's outcome into its reply fields.
macro_rules! op_reply {
    ($ty:ident, $ran:expr $(, $field:ident: $value:expr)*) => {{
        let ran = $ran;
        Ok(Response::new(pb::$ty {
            status: ran.status.to_owned(),
            task_id: ran.task_id,
            $($field: $value,)*
        }))
    }};
}

#[tonic::async_trait]
impl Tr069Service for Tr069 {
    async fn get_parameter_values(
        &self,
        req: Request<pb::GetParameterValuesRequest>,
    ) -> Result<Response<pb::GetParameterValuesResponse>, Status> {
        let p = checked(&req, "GetParameterValuesRequest").map_err(err)?;
        let r = req.get_ref();
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        let task = json!({"name": "getParameterValues", "parameterNames": r.names});
        let ran = self
            .run(p, &cpe, task, &r.mode, r.timeout_ms)
            .await
            .map_err(err)?;
        let mut parameters = Vec::new();
        if ran.status == "DONE" {
            let names: Vec<&str> = r.names.iter().map(String::as_str).collect();
            let doc = self.cached(&cpe, &names).await.map_err(err)?;
            parameters = tree::leaves(&doc)
                .into_iter()
                .filter(|leaf| names.iter().any(|n| tree::under(&leaf.name, n)))
                .map(|leaf| pb::Parameter {
                    name: leaf.name,
                    value: leaf.value,
                    r#type: leaf.xsd_type,
                })
                .collect();
        }
        op_reply!(GetParameterValuesResponse, ran, parameters: parameters)
    }

    async fn set_parameter_values(
        &self,
        req: Request<pb::SetParameterValuesRequest>,
    ) -> Result<Response<pb::SetParameterValuesResponse>, Status> {
        let p = checked(&req, "SetParameterValuesRequest").map_err(err)?;
        let r = req.get_ref();
        let triples = set_triples(&r.parameters).map_err(err)?;
        if r.validate {
            rdm_catalog::datamodel::check_sets(
                r.parameters
                    .iter()
                    .map(|p| (p.name.as_str(), p.value.as_str())),
            )
            .map_err(err)?;
        }
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        let mut task = json!({"name": "setParameterValues", "parameterValues": triples});
        if !r.parameter_key.is_empty() {
            task["parameterKey"] = r.parameter_key.clone().into();
        }
        op_reply!(
            SetParameterValuesResponse,
            self.run(p, &cpe, task, &r.mode, r.timeout_ms)
                .await
                .map_err(err)?
        )
    }

    async fn get_parameter_names(
        &self,
        req: Request<pb::GetParameterNamesRequest>,
    ) -> Result<Response<pb::GetParameterNamesResponse>, Status> {
        let p = checked(&req, "GetParameterNamesRequest").map_err(err)?;
        let r = req.get_ref();
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        let task = json!({"name": "refreshObject", "objectName": object(&r.path)});
        let ran = self
            .run(p, &cpe, task, &r.mode, r.timeout_ms)
            .await
            .map_err(err)?;
        let mut names = Vec::new();
        if ran.status == "DONE" {
            let doc = self.cached(&cpe, &[&r.path]).await.map_err(err)?;
            names = tree::names(&doc)
                .into_iter()
                // A partial path's names under it; a parameter's itself.
                .filter(|(name, _)| {
                    tree::under(name, &r.path) && (name != &r.path || !r.path.ends_with('.'))
                })
                .filter(|(name, _)| !r.next_level || tree::is_child(name, &r.path))
                .map(|(name, writable)| pb::ParameterName { name, writable })
                .collect();
        }
        op_reply!(GetParameterNamesResponse, ran, names: names)
    }

    async fn add_object(
        &self,
        req: Request<pb::AddObjectRequest>,
    ) -> Result<Response<pb::AddObjectResponse>, Status> {
        let p = checked(&req, "AddObjectRequest").map_err(err)?;
        let r = req.get_ref();
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        // The new instance is the one the ACS's tree did not have before.
        let before = self
            .cached(&cpe, &[&r.object_name])
            .await
            .map(|doc| tree::instances(&doc, &r.object_name))
            .map_err(err)?;
        let task = json!({"name": "addObject", "objectName": object(&r.object_name)});
        let ran = self
            .run(p, &cpe, task, &r.mode, r.timeout_ms)
            .await
            .map_err(err)?;
        let mut instance_number = 0;
        if ran.status == "DONE" {
            let doc = self.cached(&cpe, &[&r.object_name]).await.map_err(err)?;
            instance_number = tree::instances(&doc, &r.object_name)
                .into_iter()
                .filter(|i| !before.contains(i))
                .max()
                .unwrap_or(0);
        }
        op_reply!(AddObjectResponse, ran, instance_number: instance_number)
    }

    async fn delete_object(
        &self,
        req: Request<pb::DeleteObjectRequest>,
    ) -> Result<Response<pb::DeleteObjectResponse>, Status> {
        let p = checked(&req, "DeleteObjectRequest").map_err(err)?;
        let r = req.get_ref();
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        let task = json!({"name": "deleteObject", "objectName": object(&r.object_name)});
        op_reply!(
            DeleteObjectResponse,
            self.run(p, &cpe, task, &r.mode, r.timeout_ms)
                .await
                .map_err(err)?
        )
    }

    async fn refresh_object(
        &self,
        req: Request<pb::RefreshObjectRequest>,
    ) -> Result<Response<pb::RefreshObjectResponse>, Status> {
        let p = checked(&req, "RefreshObjectRequest").map_err(err)?;
        let r = req.get_ref();
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        let task = json!({"name": "refreshObject", "objectName": object(&r.object_name)});
        op_reply!(
            RefreshObjectResponse,
            self.run(p, &cpe, task, &r.mode, r.timeout_ms)
                .await
                .map_err(err)?
        )
    }

    async fn reboot(
        &self,
        req: Request<pb::RebootRequest>,
    ) -> Result<Response<pb::RebootResponse>, Status> {
        let p = checked(&req, "RebootRequest").map_err(err)?;
        let r = req.get_ref();
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        let task = json!({"name": "reboot"});
        op_reply!(
            RebootResponse,
            self.run(p, &cpe, task, &r.mode, r.timeout_ms)
                .await
                .map_err(err)?
        )
    }

    async fn factory_reset(
        &self,
        req: Request<pb::FactoryResetRequest>,
    ) -> Result<Response<pb::FactoryResetResponse>, Status> {
        let p = checked(&req, "FactoryResetRequest").map_err(err)?;
        let r = req.get_ref();
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        let task = json!({"name": "factoryReset"});
        op_reply!(
            FactoryResetResponse,
            self.run(p, &cpe, task, &r.mode, r.timeout_ms)
                .await
                .map_err(err)?
        )
    }

    async fn download(
        &self,
        req: Request<pb::DownloadRequest>,
    ) -> Result<Response<pb::DownloadResponse>, Status> {
        let p = checked(&req, "DownloadRequest").map_err(err)?;
        let r = req.get_ref();
        match (r.file_name.is_empty(), r.url.is_empty()) {
            (true, true) | (false, false) => {
                return Err(err(Error::invalid(
                    "file_name",
                    "name a file the ACS serves (file_name) or a url, one of them",
                )));
            }
            (true, false) if self.builtin.is_some() => {}
            (true, false) => {
                return Err(err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "this ACS (GenieACS NBI) serves the files it sends itself: upload the file to the ACS and name it in file_name",
                )
                .with_meta("field", "url")));
            }
            (false, true) => {}
        }
        let cpe = self
            .operation_cpe(&req, r.target.as_ref())
            .await
            .map_err(err)?;
        if !r.url.is_empty() && matches!(cpe.acs, Backend::Nbi(_)) {
            return Err(err(Error::new(
                ErrorCode::FailedPrecondition,
                "this ACS (GenieACS NBI) serves the files it sends itself: upload the file to the ACS and name it in file_name",
            )
            .with_meta("field", "url")));
        }
        if r.url.is_empty()
            && cpe
                .acs
                .get("files", &r.file_name, "_id")
                .await
                .map_err(err)?
                .is_none()
        {
            return Err(err(Error::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "the ACS has no file {:?}: upload it to the ACS first",
                    r.file_name
                ),
            )
            .with_meta("field", "file_name")));
        }
        let mut task =
            json!({"name": "download", "fileType": r.file_type, "fileName": r.file_name});
        if !r.url.is_empty() {
            task["url"] = r.url.clone().into();
        }
        if !r.target_file_name.is_empty() {
            task["targetFileName"] = r.target_file_name.clone().into();
        }
        op_reply!(
            DownloadResponse,
            self.run(p, &cpe, task, &r.mode, r.timeout_ms)
                .await
                .map_err(err)?
        )
    }

    async fn get_device(
        &self,
        req: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::GetDeviceResponse>, Status> {
        checked(&req, "GetDeviceRequest").map_err(err)?;
        let r = req.get_ref();
        let target = TargetRef::Device(r.device_id.clone());
        let cpe = self.cpe(&req, target).await.map_err(err)?;
        let doc = self.cached(&cpe, &[&r.prefix]).await.map_err(err)?;
        let parameters = tree::leaves(&doc)
            .into_iter()
            .filter(|leaf| leaf.name.starts_with(&r.prefix))
            .map(|leaf| pb::CachedParameter {
                name: leaf.name,
                value: leaf.value,
                r#type: leaf.xsd_type,
                timestamp: leaf.timestamp,
                writable: leaf.writable,
            })
            .collect();
        Ok(Response::new(pb::GetDeviceResponse {
            acs_device_id: cpe.acs_id,
            last_inform: tree::timestamp(&doc["_lastInform"]),
            tags: tree::tags(&doc),
            parameters,
        }))
    }

    async fn list_acs_devices(
        &self,
        req: Request<pb::ListAcsDevicesRequest>,
    ) -> Result<Response<pb::ListAcsDevicesResponse>, Status> {
        checked(&req, "ListAcsDevicesRequest").map_err(err)?;
        let r = req.get_ref();
        let query = match r.query.trim() {
            "" => json!({}),
            q => match serde_json::from_str(q) {
                Ok(Value::Object(o)) => Value::Object(o),
                _ => {
                    return Err(err(Error::invalid(
                        "query",
                        "a query is a JSON object, such as {\"_tags\":\"ams\"}",
                    )));
                }
            },
        };
        let skip = skip_of(&r.page_token).map_err(err)?;
        let size = match r.page_size {
            n if n <= 0 => 100,
            n => n.min(1000) as u64,
        };
        let cpe = self
            .cpe(&req, target_ref(r.target.as_ref()).map_err(err)?)
            .await
            .map_err(err)?;
        let page = cpe
            .acs
            .find(
                "devices",
                &cpe.scoped(query),
                "_id,_deviceId,_lastInform,_tags",
                skip,
                size,
            )
            .await
            .map_err(|e| match e.code {
                ErrorCode::InvalidArgument => e.with_meta("field", "query"),
                _ => e,
            })
            .map_err(err)?;
        let seen = skip + page.items.len() as u64;
        let devices = page
            .items
            .iter()
            .map(|d| {
                let id = &d["_deviceId"];
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                pb::AcsDevice {
                    acs_device_id: text(&d["_id"]),
                    manufacturer: text(&id["_Manufacturer"]),
                    oui: text(&id["_OUI"]),
                    product_class: text(&id["_ProductClass"]),
                    serial_number: text(&id["_SerialNumber"]),
                    last_inform: tree::timestamp(&d["_lastInform"]),
                    tags: tree::tags(d),
                }
            })
            .collect();
        Ok(Response::new(pb::ListAcsDevicesResponse {
            devices,
            next_page_token: if seen < page.total && !page.items.is_empty() {
                seen.to_string()
            } else {
                String::new()
            },
            total_size: page.total,
        }))
    }

    async fn list_tasks(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let p = checked(&req, "ListTasksRequest").map_err(err)?;
        let target = TargetRef::Device(req.get_ref().device_id.clone());
        let cpe = self.cpe(&req, target).await.map_err(err)?;
        let tasks = self.tasks(p, &cpe).await.map_err(err)?;
        let faults = self.faults(&cpe, &tasks).await.map_err(err)?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks
                .iter()
                .map(|t| self.task_pb(p, &cpe, t, &faults))
                .collect(),
        }))
    }

    async fn get_task(
        &self,
        req: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::GetTaskResponse>, Status> {
        let p = checked(&req, "GetTaskRequest").map_err(err)?;
        let task_id = &req.get_ref().task_id;
        let (cpe, command_id, task) = self.find_task(&req, task_id).await.map_err(err)?;
        let task = match task {
            Some(task) => {
                let faults = self
                    .faults(&cpe, std::slice::from_ref(&task))
                    .await
                    .map_err(err)?;
                self.task_pb(p, &cpe, &task, &faults)
            }
            // The ACS lets go of a task once the CPE has run it.
            None => pb::Task {
                task_id: task_id.clone(),
                command_id,
                device_id: cpe.device_id,
                status: "DONE".into(),
                ..Default::default()
            },
        };
        Ok(Response::new(pb::GetTaskResponse { task: Some(task) }))
    }

    async fn retry_task(
        &self,
        req: Request<pb::RetryTaskRequest>,
    ) -> Result<Response<pb::RetryTaskResponse>, Status> {
        let p = checked(&req, "RetryTaskRequest").map_err(err)?;
        let task_id = &req.get_ref().task_id;
        let (cpe, command_id, task) = self.find_task(&req, task_id).await.map_err(err)?;
        let Some(task) = task else {
            return Err(err(done_already(task_id)));
        };
        let missing = format!("task {task_id} not found");
        match &cpe.acs {
            Backend::Nbi(acs) => {
                let path = format!("/tasks/{}/retry", acs::segment(&command_id));
                acs.call(Method::POST, &path, &missing).await
            }
            Backend::Builtin(b) => b.retry_task(&command_id, &missing).await,
        }
        .map_err(err)?;
        Ok(Response::new(pb::RetryTaskResponse {
            task: Some(self.task_pb(p, &cpe, &task, &[])),
        }))
    }

    async fn delete_task(
        &self,
        req: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<pb::DeleteTaskResponse>, Status> {
        checked(&req, "DeleteTaskRequest").map_err(err)?;
        let task_id = &req.get_ref().task_id;
        let (cpe, command_id, task) = self.find_task(&req, task_id).await.map_err(err)?;
        if task.is_none() {
            return Err(err(done_already(task_id)));
        }
        let missing = format!("task {task_id} not found");
        match &cpe.acs {
            Backend::Nbi(acs) => {
                let path = format!("/tasks/{}", acs::segment(&command_id));
                acs.call(Method::DELETE, &path, &missing).await
            }
            Backend::Builtin(b) => b.delete_task(&command_id, &missing).await,
        }
        .map_err(err)?;
        Ok(Response::new(pb::DeleteTaskResponse {}))
    }

    async fn list_faults(
        &self,
        req: Request<pb::ListFaultsRequest>,
    ) -> Result<Response<pb::ListFaultsResponse>, Status> {
        let p = checked(&req, "ListFaultsRequest").map_err(err)?;
        let target = TargetRef::Device(req.get_ref().device_id.clone());
        let cpe = self.cpe(&req, target).await.map_err(err)?;
        let tasks = self.tasks(p, &cpe).await.map_err(err)?;
        let faults = self.faults(&cpe, &tasks).await.map_err(err)?;
        Ok(Response::new(pb::ListFaultsResponse {
            faults: faults.iter().map(|f| self.fault_pb(p, &cpe, f)).collect(),
        }))
    }

    async fn delete_fault(
        &self,
        req: Request<pb::DeleteFaultRequest>,
    ) -> Result<Response<pb::DeleteFaultResponse>, Status> {
        let p = checked(&req, "DeleteFaultRequest").map_err(err)?;
        let fault_id = &req.get_ref().fault_id;
        let not_found = || err(Error::not_found(format!("fault {fault_id} not found")));
        let Some((device_id, channel)) = fault_id.split_once('.') else {
            return Err(not_found());
        };
        let cpe = self
            .cpe(&req, TargetRef::Device(device_id.to_owned()))
            .await
            .map_err(err)?;
        // A task's fault is the tenant's to clear only if the task is.
        if let Some(command) = channel.strip_prefix("task_") {
            let query = json!({"_id": command, "rdm_tenant": p.tenant_id});
            let mine = cpe
                .acs
                .find("tasks", &query, "_id", 0, 1)
                .await
                .map_err(err)?;
            if mine.items.is_empty() {
                return Err(not_found());
            }
        }
        let missing = format!("fault {fault_id} not found");
        match (&cpe.acs, channel.strip_prefix("task_")) {
            (Backend::Nbi(acs), _) => {
                let path = format!(
                    "/faults/{}",
                    acs::segment(&format!("{}:{channel}", cpe.acs_id))
                );
                acs.call(Method::DELETE, &path, &missing).await
            }
            // rdm's ACS faults tasks only: the fault goes with its task.
            (Backend::Builtin(b), Some(command)) => b.delete_task(command, &missing).await,
            (Backend::Builtin(_), None) => Err(Error::not_found(missing)),
        }
        .map_err(err)?;
        Ok(Response::new(pb::DeleteFaultResponse {}))
    }
}

/// Compares secrets in constant time.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A Download's transfer as a task document records it.
fn transfer_pb(t: &Value) -> Option<pb::Transfer> {
    t.is_object().then(|| pb::Transfer {
        start_time: tree::timestamp(&t["start_time"]),
        complete_time: tree::timestamp(&t["complete_time"]),
        fault_code: t["fault_code"].as_u64().unwrap_or(0) as u32,
        fault_string: t["fault_string"].as_str().unwrap_or_default().to_owned(),
    })
}

fn done_already(task_id: &str) -> Error {
    Error::new(
        ErrorCode::FailedPrecondition,
        format!("task {task_id} is no longer pending: the CPE has run it"),
    )
}
