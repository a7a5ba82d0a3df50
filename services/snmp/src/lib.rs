//! rdm's SNMP service: the gRPC face of the protocol engine. Targets are a
//! device of the caller's tenant or an inline endpoint, both resolved by
//! the inventory (see DESIGN.md, "Target resolution").
pub mod engine;
mod names;
mod targets;
pub mod traps;

pub use targets::Inventory;

use anyhow::Context as _;
use engine::{Engine, Op, error::SnmpError, oid::Oid, target::Target, value::Value};
use futures::{Stream, StreamExt};
use names::Namer;
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    mesh::{Context, Spec, Started},
    server::Guard,
};
use rdm_proto::snmp::{self as pb, snmp_service_server::SnmpService};
use std::{net::SocketAddr, pin::Pin, sync::Arc};
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "snmp";
const POLL_DEFAULT_CONCURRENCY: usize = 256;
const POLL_MAX_CONCURRENCY: usize = 4096;
const MAX_OIDS: usize = 128;

pub struct Config {
    pub engine: Arc<Engine>,
    pub inventory: Inventory,
    /// The catalog, naming what only a tenant's own MIB modules name.
    pub catalog: Option<rdm_kit::invoke::Backend>,
    /// Where watchers get traps: this process's listener, or the trap role's.
    pub traps: Traps,
}

/// Where WatchTraps is answered.
pub enum Traps {
    /// Traps received by this process.
    Here(traps::TrapHub),
    /// The replica that runs the trap listener (`RDM_SNMP_TRAPS_URL`):
    /// watchers of every other replica are relayed to it, as the caller.
    There(rdm_kit::invoke::Backend),
    None,
}

/// The SNMP service's own settings.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Args {
    /// UDP address traps and informs are received on (`rdm up` default:
    /// 127.0.0.1:10162; under `rdm serve` none is opened unless set).
    #[arg(long, env = "RDM_SNMP_TRAP_LISTEN")]
    pub snmp_trap_listen: Option<SocketAddr>,
    /// A replica without a trap listener relays WatchTraps to this one (the
    /// snmp-traps Deployment), so any number of replicas serve watchers.
    #[arg(long, env = "RDM_SNMP_TRAPS_URL")]
    pub snmp_traps_url: Option<String>,
    /// The catalog service, asked to name OIDs (and read OID names) that
    /// only a tenant's own MIB modules know (`rdm up`: this process's).
    #[arg(long = "snmp-catalog-url", env = "RDM_CATALOG_URL")]
    pub snmp_catalog_url: Option<String>,
}

/// The SNMP service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new("snmp", "rdm.snmp.v1", 50052, |args, context| {
    Box::pin(start(args, context))
});

async fn start(args: Args, context: Context) -> anyhow::Result<Started> {
    // The MIB modules replies are named with, loaded before the first reply.
    tokio::task::spawn_blocking(rdm_catalog::mibs::standard).await?;
    let inventory = Inventory(context.resolver(DOMAIN));
    let listen = args.snmp_trap_listen.or(context
        .all_in_one
        .then(|| SocketAddr::from(([127, 0, 0, 1], 10162))));
    let traps = match (listen, args.snmp_traps_url) {
        (Some(addr), _) => Traps::Here(
            traps::TrapHub::listen(addr, inventory.clone())
                .await
                .with_context(|| format!("cannot listen for SNMP traps on {addr}"))?,
        ),
        (None, Some(url)) => Traps::There(
            rdm_kit::invoke::remote(&url).with_context(|| format!("RDM_SNMP_TRAPS_URL {url}"))?,
        ),
        (None, None) => Traps::None,
    };
    let listeners = match &traps {
        Traps::Here(hub) => vec![("snmp-traps", hub.addr)],
        _ => Vec::new(),
    };
    let catalog = match args.snmp_catalog_url.or(context.mesh_url.clone()) {
        Some(url) => {
            Some(rdm_kit::invoke::remote(&url).with_context(|| format!("RDM_CATALOG_URL {url}"))?)
        }
        None => None,
    };
    let config = Config {
        engine: Default::default(),
        inventory,
        catalog,
        traps,
    };
    Ok(Started {
        router: service(config, context.guard()),
        listeners,
    })
}

pub fn service(config: Config, guard: Guard) -> axum::Router {
    let routes = tonic::service::Routes::new(pb::snmp_service_server::SnmpServiceServer::new(
        Snmp(Arc::new(config)),
    ));
    rdm_kit::server::guarded(routes, guard)
}

struct Snmp(Arc<Config>);

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

/// The kit's error for an engine failure: its kind decides the code.
pub fn device_error(e: SnmpError) -> Error {
    let code = match &e {
        SnmpError::Timeout { .. } => ErrorCode::DeviceTimeout,
        SnmpError::Unreachable { .. } => ErrorCode::DeviceUnreachable,
        SnmpError::Auth { .. } => ErrorCode::DeviceAuthRejected,
        SnmpError::Status { .. } | SnmpError::Protocol { .. } => ErrorCode::DeviceError,
        SnmpError::TooLarge { op, .. } => {
            let field = if *op == "set" { "varbinds" } else { "oids" };
            return Error::invalid(field, e.to_string());
        }
    };
    let mut out = Error::new(code, e.to_string());
    if let SnmpError::Status {
        status, index, oid, ..
    } = &e
    {
        out = out
            .with_meta("snmp_error_status", *status)
            .with_meta("error_index", index.to_string());
        if let Some(oid) = oid {
            out = out.with_meta("oid", oid.to_string());
        }
    }
    out
}

/// The OIDs a request names: at least one, at most [`MAX_OIDS`].
async fn oids(namer: &Namer, field: &str, texts: &[String]) -> Result<Vec<Oid>> {
    if texts.is_empty() {
        return Err(Error::invalid(field, "name at least one OID"));
    }
    if texts.len() > MAX_OIDS {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_OIDS} OIDs a request"),
        ));
    }
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    namer.oids(&texts, |i| format!("{field}[{i}]")).await
}

async fn set_values(namer: &Namer, varbinds: &[pb::VarBind]) -> Result<Vec<(Oid, Value)>> {
    if varbinds.is_empty() {
        return Err(Error::invalid(
            "varbinds",
            "name at least one variable to set",
        ));
    }
    if varbinds.len() > MAX_OIDS {
        return Err(Error::invalid(
            "varbinds",
            format!("at most {MAX_OIDS} variables a request"),
        ));
    }
    let texts: Vec<&str> = varbinds.iter().map(|vb| vb.oid.as_str()).collect();
    let oids = namer.oids(&texts, |i| format!("varbinds[{i}].oid")).await?;
    varbinds
        .iter()
        .zip(oids)
        .enumerate()
        .map(|(i, (vb, oid))| {
            let field = if vb.hex.is_empty() { "value" } else { "hex" };
            let value = Value::parse(&vb.r#type, &vb.value, &vb.hex).map_err(|e| {
                let field =
                    match e {
                        engine::value::BadValue::Type(_)
                        | engine::value::BadValue::NotSettable(_) => "type",
                        engine::value::BadValue::Value { .. }
                        | engine::value::BadValue::Mixed(_) => field,
                    };
                Error::invalid(format!("varbinds[{i}].{field}"), e.to_string())
            })?;
            Ok((oid, value))
        })
        .collect()
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn check_repetitions(requested: Option<u32>) -> Result<()> {
    if requested.is_some_and(|n| n > 1000) {
        return Err(Error::invalid("max_repetitions", "at most 1000"));
    }
    Ok(())
}

/// Refuses up front a target whose patience (every attempt's timeout, with
/// backoff and jitter) cannot fit in what is left of the call's deadline:
/// the caller would get DEADLINE_EXCEEDED instead of the device's answer.
fn check_patience<T>(req: &Request<T>, target: &Target) -> Result<()> {
    let Some(deadline) = rdm_kit::server::CallDeadline::of(req) else {
        return Ok(());
    };
    let patience = target.patience();
    if patience <= deadline.remaining() {
        return Ok(());
    }
    Err(Error::invalid(
        "timeout_ms",
        format!(
            "timeout_ms {} with {} retries can wait {:.1} s (each retry waits twice as long, +10%), longer than the call's {:.1} s deadline: lower timeout_ms or retries",
            target.timeout.as_millis(),
            target.retries,
            patience.as_secs_f64(),
            deadline.timeout.as_secs_f64()
        ),
    ))
}

/// Operations SNMPv1 does not have, refused before anything is sent.
fn check_v1(target: &Target, op: &Op, values: &[(Oid, Value)]) -> Result<()> {
    if target.version != engine::target::Version::V1 {
        return Ok(());
    }
    if matches!(op, Op::GetBulk { .. }) {
        return Err(Error::invalid(
            "target",
            "GETBULK is not in SNMPv1: use getnext, or version 2c or 3",
        ));
    }
    if let Some(i) = values
        .iter()
        .position(|(_, v)| matches!(v, Value::Counter64(_)))
    {
        return Err(Error::invalid(
            format!("varbinds[{i}].type"),
            "Counter64 is not in SNMPv1: use version 2c or 3",
        ));
    }
    Ok(())
}

/// The max-repetitions asked for, else the endpoint's.
fn repetitions(requested: Option<u32>, target: &Target) -> u32 {
    requested.unwrap_or(target.max_repetitions)
}

impl Snmp {
    /// A GET, GETNEXT or GETBULK of `oids` on the request's target; `op`
    /// gets the max-repetitions to use (GETBULK only).
    async fn read<T>(
        &self,
        req: &Request<T>,
        target: Option<&pb::Target>,
        oids_text: &[String],
        max_repetitions: Option<u32>,
        op: impl FnOnce(u32) -> Op,
    ) -> Result<Vec<pb::VarBind>, Status> {
        let p = Principal::of(req).map_err(err)?;
        let namer = self.namer(p);
        let oids = oids(&namer, "oids", oids_text).await.map_err(err)?;
        check_repetitions(max_repetitions).map_err(err)?;
        let target = self
            .0
            .inventory
            .resolve(p, target)
            .await
            .map_err(err)?
            .target;
        let op = op(repetitions(max_repetitions, &target));
        check_v1(&target, &op, &[]).map_err(err)?;
        check_patience(req, &target).map_err(err)?;
        let found = self
            .0
            .engine
            .request(&target, op, &engine::nulls(&oids))
            .await
            .map_err(|e| err(device_error(e)))?;
        Ok(namer.varbinds(found).await)
    }

    fn namer(&self, p: &Principal) -> Namer {
        Namer::new(self.0.catalog.as_ref(), p)
    }
}

#[tonic::async_trait]
impl SnmpService for Snmp {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.get_ref();
        let varbinds = self
            .read(&req, r.target.as_ref(), &r.oids, None, |_| Op::Get)
            .await?;
        Ok(Response::new(pb::GetResponse { varbinds }))
    }

    async fn get_next(
        &self,
        req: Request<pb::GetNextRequest>,
    ) -> Result<Response<pb::GetNextResponse>, Status> {
        let r = req.get_ref();
        let varbinds = self
            .read(&req, r.target.as_ref(), &r.oids, None, |_| Op::GetNext)
            .await?;
        Ok(Response::new(pb::GetNextResponse { varbinds }))
    }

    async fn get_bulk(
        &self,
        req: Request<pb::GetBulkRequest>,
    ) -> Result<Response<pb::GetBulkResponse>, Status> {
        let r = req.get_ref();
        let op = |max_repetitions| Op::GetBulk {
            non_repeaters: r.non_repeaters,
            max_repetitions,
        };
        let varbinds = self
            .read(&req, r.target.as_ref(), &r.oids, r.max_repetitions, op)
            .await?;
        Ok(Response::new(pb::GetBulkResponse { varbinds }))
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let namer = self.namer(p);
        let values = set_values(&namer, &r.varbinds).await.map_err(err)?;
        let target = self
            .0
            .inventory
            .resolve(p, r.target.as_ref())
            .await
            .map_err(err)?;
        check_v1(&target.target, &Op::Set, &values).map_err(err)?;
        check_patience(&req, &target.target).map_err(err)?;
        let done = self
            .0
            .engine
            .set(&target.target, &values)
            .await
            .map_err(|e| err(device_error(e)))?;
        tracing::info!(addr = %target.target.addr, device_id = %target.device_id, varbinds = values.len(), "snmp set");
        Ok(Response::new(pb::SetResponse {
            varbinds: namer.varbinds(done).await,
        }))
    }

    type WalkStream = Stream_<pb::WalkResponse>;

    async fn walk(
        &self,
        req: Request<pb::WalkRequest>,
    ) -> Result<Response<Self::WalkStream>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let root = if r.oid.is_empty() {
            "1.3.6.1".to_owned()
        } else {
            r.oid.clone()
        };
        let namer = self.namer(p);
        let root = match Oid::walk_root(&root) {
            Ok(root) => root,
            Err(_) => namer
                .oids(&[root.as_str()], |_| "oid".to_owned())
                .await
                .map_err(err)?
                .remove(0),
        };
        // 0 asks for the default: a walk needs at least one a request.
        let max_repetitions = Some(r.max_repetitions).filter(|n| *n > 0);
        check_repetitions(max_repetitions).map_err(err)?;
        let target = self
            .0
            .inventory
            .resolve(p, r.target.as_ref())
            .await
            .map_err(err)?;
        check_patience(&req, &target.target).map_err(err)?;
        let reps = repetitions(max_repetitions, &target.target);
        let walk = engine::walk::walk(self.0.engine.clone(), target.target, root, reps).then(
            move |batch| {
                let namer = namer.clone();
                async move {
                    match batch {
                        Ok(vbs) => Ok(pb::WalkResponse {
                            varbinds: namer.varbinds(vbs).await,
                        }),
                        Err(e) => Err(err(device_error(e))),
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(walk)))
    }

    type PollStream = Stream_<pb::PollResponse>;

    async fn poll(
        &self,
        req: Request<pb::PollRequest>,
    ) -> Result<Response<Self::PollStream>, Status> {
        let p = Principal::of(&req).map_err(err)?.clone();
        let namer = self.namer(&p);
        let r = req.into_inner();
        let oids = oids(&namer, "oids", &r.oids).await.map_err(err)?;
        if r.targets.is_empty() {
            return Err(err(Error::invalid("targets", "name at least one target")));
        }
        let concurrency = match r.concurrency as usize {
            0 => POLL_DEFAULT_CONCURRENCY,
            n if n <= POLL_MAX_CONCURRENCY => n,
            _ => {
                return Err(err(Error::invalid(
                    "concurrency",
                    format!("at most {POLL_MAX_CONCURRENCY}"),
                )));
            }
        };
        // Devices are resolved up front, all in one call to the inventory;
        // inline targets each when their turn comes.
        let device_ids: Vec<String> = r
            .targets
            .iter()
            .filter_map(|t| match &t.target {
                Some(pb::target::Target::DeviceId(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        let mut devices = self
            .0
            .inventory
            .devices(&p, &device_ids)
            .await
            .map_err(err)?
            .into_iter();
        let jobs: Vec<_> = r
            .targets
            .into_iter()
            .enumerate()
            .map(|(index, target)| {
                let device = match &target.target {
                    Some(pb::target::Target::DeviceId(id)) => {
                        let resolved = devices.next().unwrap_or_else(|| {
                            Err(Error::internal("resolving devices", "a result is missing"))
                        });
                        Some((id.clone(), resolved))
                    }
                    _ => None,
                };
                (index, target, device)
            })
            .collect();
        let config = self.0.clone();
        // The stream runs after this handler returned: the targets it
        // resolves carry this request's trace all the same.
        let trace = rdm_kit::telemetry::TraceParent::current()
            .unwrap_or_else(rdm_kit::telemetry::TraceParent::new_root);
        let polls = futures::stream::iter(jobs)
            .map(move |(index, target, device)| {
                let (config, p, oids, namer) =
                    (config.clone(), p.clone(), oids.clone(), namer.clone());
                trace.clone().serving(async move {
                    let (device_id, resolved) = match device {
                        Some((id, Ok(reply))) => (id, targets::from_device(reply)),
                        Some((id, Err(e))) => (id, Err(e)),
                        None => (
                            String::new(),
                            config.inventory.resolve(&p, Some(&target)).await,
                        ),
                    };
                    let result = match resolved {
                        Ok(t) => match config.engine.get(&t.target, &oids).await {
                            Ok(vbs) => Ok(namer.varbinds(vbs).await),
                            Err(e) => Err(device_error(e)),
                        },
                        Err(e) => Err(e),
                    };
                    Ok(pb::PollResponse {
                        index: index as u32,
                        device_id,
                        result: Some(match result {
                            Ok(varbinds) => {
                                pb::poll_response::Result::Values(pb::PollVarBinds { varbinds })
                            }
                            Err(e) => pb::poll_response::Result::Error(pb::PollError {
                                code: e.code.reason().to_owned(),
                                message: e.message,
                            }),
                        }),
                    })
                })
            })
            .buffer_unordered(concurrency);
        Ok(Response::new(Box::pin(polls)))
    }

    type WatchTrapsStream = Stream_<pb::WatchTrapsResponse>;

    async fn watch_traps(
        &self,
        req: Request<pb::WatchTrapsRequest>,
    ) -> Result<Response<Self::WatchTrapsStream>, Status> {
        let p = Principal::of(&req).map_err(err)?.clone();
        match &self.0.traps {
            Traps::Here(hub) => {
                let stream = hub.watch(p).await.map_err(err)?;
                Ok(Response::new(Box::pin(stream.map(Ok))))
            }
            Traps::There(backend) => {
                // The caller's own token and trace go on: the trap role
                // checks them as this replica did.
                let mut client = pb::snmp_service_client::SnmpServiceClient::with_interceptor(
                    backend.clone(),
                    rdm_kit::client::Forward::of(&req),
                );
                let stream = client
                    .watch_traps(pb::WatchTrapsRequest {})
                    .await?
                    .into_inner();
                Ok(Response::new(Box::pin(stream)))
            }
            Traps::None => Err(err(Error::new(
                ErrorCode::FailedPrecondition,
                "no trap listener is configured (set RDM_SNMP_TRAP_LISTEN, or RDM_SNMP_TRAPS_URL to the replica that has one)",
            ))),
        }
    }
}
