//! rdm's USP service: rdm as a USP (TR-369) controller. Each request is a
//! USP Msg in a Record sent to the agent a device's `usp` endpoint names:
//! over MQTT ([`mqtt`]), through a connection per distinct broker (vetted
//! by the address policy, shared by every agent on it), or over the
//! agent's WebSocket ([`websocket`]), held by this replica or relayed to
//! the one holding it. What comes back goes through one [`inbox`]: the
//! reply's body in USP's own structures, and the notifications of the
//! subscriptions made through rdm, kept per tenant in the database
//! ([`notifications`]).
pub mod inbox;
pub mod mqtt;
pub mod notifications;
pub mod onboarding;
pub mod record;
pub mod store;
pub mod tls;
pub mod websocket;

use anyhow::Context as _;
use inbox::{Inbox, RequestError};
use mqtt::{Broker, BrokerSettings};
use notifications::Notifications;
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    address::AddressPolicy,
    client::Forward,
    db::{Scope, TenantTx, now_millis, page, timestamp},
    invoke::Backend,
    mesh::{Context, Database, Spec, Started},
    server::CallDeadline,
    targets::{self, TargetRef},
};
use rdm_proto::{
    inventory::endpoint::Settings,
    usp_msg::{self as msg, request::ReqType as Q, response::RespType as R},
    usp_v1::UspEndpoint,
    usp_v1::{self as pb, usp_service_server::UspService},
};
use std::{
    collections::{HashMap, hash_map::Entry},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tonic::{Request, Response, Status};
use websocket::{Dial, Sockets};

pub const DOMAIN: &str = "usp";
/// The agent's table of subscriptions.
const SUBSCRIPTIONS: &str = "Device.LocalAgent.Subscription.";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The USP service's own settings.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "usp")]
pub struct Args {
    /// rdm's USP endpoint id as a controller: agents address their replies
    /// (and Records' to_id) to it.
    #[arg(long, env = "RDM_USP_ENDPOINT_ID", default_value = "self::rdm")]
    pub usp_endpoint_id: String,
    /// The MQTT topic agents send notifications to (their
    /// Device.LocalAgent.Controller.{i}.MTP.{i}.MQTT.Topic), on every
    /// broker rdm connects to; a device's own controller_topic replaces it.
    #[arg(
        long,
        env = "RDM_USP_CONTROLLER_TOPIC",
        default_value = "usp/controller/rdm"
    )]
    pub usp_controller_topic: String,
    /// rdm's own MQTT broker (mqtt://host:port): connected at start, where
    /// agents of tenants with auto-registration announce themselves, and
    /// the broker of every usp endpoint that names none (the devices made
    /// for such agents). The operator's, not a tenant's: the address policy
    /// does not vet it.
    #[arg(long, env = "RDM_USP_MQTT_URL")]
    pub usp_mqtt_url: Option<String>,
    /// The TCP address agents connect to over WebSocket (`GET /usp?eid=`,
    /// subprotocol v1.usp); `rdm up` default 127.0.0.1:10180, none under
    /// `rdm serve` unless set.
    #[arg(long, env = "RDM_USP_WEBSOCKET_LISTEN")]
    pub usp_websocket_listen: Option<SocketAddr>,
    /// A PEM file of CAs rdm trusts besides the public ones, for `mqtts://`
    /// brokers and `wss://` agents.
    #[arg(long, env = "RDM_USP_TLS_CA_FILE")]
    pub usp_tls_ca_file: Option<std::path::PathBuf>,
    /// rdm's certificate chain (PEM) for agents' WebSockets: with it (and
    /// its key) the listener speaks TLS only (wss://).
    #[arg(
        long,
        env = "RDM_USP_WEBSOCKET_TLS_CERT",
        requires = "usp_websocket_tls_key"
    )]
    pub usp_websocket_tls_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `RDM_USP_WEBSOCKET_TLS_CERT`.
    #[arg(
        long,
        env = "RDM_USP_WEBSOCKET_TLS_KEY",
        requires = "usp_websocket_tls_cert"
    )]
    pub usp_websocket_tls_key: Option<std::path::PathBuf>,
    /// The CAs (PEM) of agents' client certificates: with it every agent
    /// connecting over WebSocket needs one, and is taken only for an
    /// endpoint id its certificate names (subjectAltName URI
    /// `urn:bbf:usp:id:<id>`).
    #[arg(
        long,
        env = "RDM_USP_WEBSOCKET_CLIENT_CA",
        requires = "usp_websocket_tls_cert"
    )]
    pub usp_websocket_client_ca: Option<std::path::PathBuf>,
    /// The most WebSocket connections (and handshakes) held at once.
    #[arg(long, env = "RDM_USP_WEBSOCKET_MAX", default_value_t = 20_000)]
    pub usp_websocket_max: usize,
    /// This replica's gRPC URL as the other replicas reach it
    /// (`http://<pod ip>:50058`): the agents whose WebSocket it holds are
    /// recorded under it, and requests for them that reach another
    /// replica are relayed here. Default: the listener's address, when it
    /// is a specific one.
    #[arg(long, env = "RDM_USP_ADVERTISE_URL")]
    pub usp_advertise_url: Option<String>,
    /// How long notifications are kept for watchers that come late.
    #[arg(
        long,
        env = "RDM_USP_NOTIFICATION_RETENTION_MINUTES",
        default_value_t = 60
    )]
    pub usp_notification_retention_minutes: u32,
}

/// The USP service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new("usp", "rdm.usp.v1", 50058, |args, context| {
    Box::pin(start(args, context))
})
.with_database();

async fn start(args: Args, context: Context) -> anyhow::Result<Started> {
    let db = Database::migrated(&context, "usp", &store::MIGRATIONS).await?;
    let onboarding = onboarding::Onboarding {
        db: db.clone(),
        inventory: context.resolver(DOMAIN),
        verifier: context.verifier.clone(),
        own_broker: args.usp_mqtt_url.is_some(),
        controller_topic: args.usp_controller_topic.clone(),
        logged: Default::default(),
    };
    let notifications = Arc::new(Notifications {
        db,
        retention: Duration::from_secs(u64::from(args.usp_notification_retention_minutes) * 60),
        stored: tokio::sync::watch::channel(0).0,
        logged: Default::default(),
        onboarding,
    });
    let (inbound, received) = tokio::sync::mpsc::channel(1024);
    tokio::spawn(notifications.clone().run(received));
    tokio::spawn(notifications.clone().prune());
    let inbox = Arc::new(Inbox::new(args.usp_endpoint_id, inbound));
    // Where agents' WebSockets are held, for the other replicas: this
    // replica's URL (none under `rdm up`: one process holds them all).
    let registry = args
        .usp_advertise_url
        .clone()
        .or(context.own_url.clone())
        .map(|url| websocket::Registry {
            db: notifications.db.clone(),
            url,
        });
    let tls = tls::Tls::new(args.usp_tls_ca_file.as_deref()).context("RDM_USP_TLS_CA_FILE")?;
    let sockets = Sockets::new(inbox.clone(), registry, tls.client());
    let server_tls = match (&args.usp_websocket_tls_cert, &args.usp_websocket_tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::server(cert, key, args.usp_websocket_client_ca.as_deref())
                .context("the WebSocket listener's TLS settings")?,
        ),
        _ => None,
    };
    let listen = args.usp_websocket_listen.or(context
        .all_in_one
        .then(|| SocketAddr::from(([127, 0, 0, 1], 10180))));
    let mut listeners = Vec::new();
    if let Some(addr) = listen {
        let local = sockets
            .listen(
                addr,
                args.usp_websocket_max,
                server_tls,
                args.usp_websocket_client_ca.is_some(),
            )
            .await
            .with_context(|| format!("cannot listen for USP agents' WebSockets on {addr}"))?;
        listeners.push(("usp-websocket", local));
    }
    let usp = Usp(Arc::new(Controller {
        inventory: context.resolver(DOMAIN),
        service_key: context.service_key.clone(),
        peers: Mutex::default(),
        addresses: context.addresses.clone(),
        controller_topic: args.usp_controller_topic,
        // Each replica has reply topics of its own.
        replica: uuid::Uuid::new_v4().simple().to_string(),
        brokers: Mutex::default(),
        inbox,
        sockets,
        notifications,
        own_broker: args.usp_mqtt_url,
        tls,
    }));
    // rdm's own broker, at once: agents announce themselves there.
    if usp.0.own_broker.is_some() {
        let endpoint = UspEndpoint::default();
        usp.0
            .broker(&endpoint, &[])
            .await
            .map_err(|e| anyhow::anyhow!("RDM_USP_MQTT_URL: {e}"))?;
    }
    tokio::spawn(usp.0.clone().reach_subscribed(context.verifier.clone()));
    // Relay is internal: the actor tokens of this service's other replicas.
    let mut guard = context.guard();
    guard.actors = Some(rdm_kit::auth::ActorVerifier::new(&[context
        .service_key
        .public_jwk()
        .clone()])?);
    let routes = tonic::service::Routes::new(pb::usp_service_server::UspServiceServer::new(usp));
    Ok(Started {
        router: rdm_kit::server::guarded(routes, guard),
        listeners,
    })
}

/// One broker connection: where, as whom, and which topic replies come on
/// (no Debug: it holds the broker password).
#[derive(Clone, Hash, PartialEq, Eq)]
struct BrokerKey {
    addr: SocketAddr,
    /// The host name its certificate must have (mqtts://), else none.
    tls_name: Option<String>,
    client_id: String,
    username: Option<String>,
    password: Option<String>,
    topic: String,
}

struct Controller {
    inventory: targets::Inventory,
    service_key: Arc<rdm_kit::auth::SigningKey>,
    /// The other replicas this one relays to, by URL.
    peers: Mutex<HashMap<String, Backend>>,
    addresses: AddressPolicy,
    controller_topic: String,
    replica: String,
    brokers: Mutex<HashMap<BrokerKey, Arc<Broker>>>,
    /// Where every MTP connection hands what it receives.
    inbox: Arc<Inbox>,
    sockets: Arc<Sockets>,
    notifications: Arc<Notifications>,
    /// `RDM_USP_MQTT_URL`: the broker of endpoints that name none (the
    /// operator's, not a tenant's: the address policy does not vet it).
    own_broker: Option<String>,
    tls: tls::Tls,
}

#[derive(Clone)]
struct Usp(Arc<Controller>);

/// An agent as a request reaches it.
struct Agent {
    device_id: String,
    endpoint_id: String,
    route: Route,
    timeout: Duration,
}

/// The MTP a request goes over.
enum Route {
    /// The broker's connection, the agent's topic, and whether the agent
    /// speaks MQTT 3.1.1.
    Mqtt {
        broker: Arc<Broker>,
        topic: String,
        v311: bool,
    },
    /// The agent's WebSocket connection (rdm connects to the agent's
    /// server first when it has one and is not connected).
    Socket(Option<Dial>),
    /// Another replica, which holds the agent's WebSocket, as the caller.
    Relay(Backend, Forward),
}

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

/// Scheme, host and port of a URL rdm connects to: `schemes` are the ones
/// it takes, each with its default port.
fn host_port(field: &str, url: &str, schemes: &[(&str, u16)]) -> Result<(String, String, u16)> {
    let parsed: url::Url = url
        .parse()
        .map_err(|_| Error::invalid(field, "not a URL"))?;
    let Some((_, default_port)) = schemes.iter().find(|(s, _)| *s == parsed.scheme()) else {
        let taken: Vec<String> = schemes.iter().map(|(s, _)| format!("{s}://")).collect();
        return Err(Error::new(
            ErrorCode::FailedPrecondition,
            format!(
                "rdm connects with {}, not {}://",
                taken.join(", "),
                parsed.scheme()
            ),
        )
        .with_meta("field", field));
    };
    let host = parsed
        .host_str()
        .ok_or_else(|| Error::invalid(field, "names no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((
        parsed.scheme().to_owned(),
        host,
        parsed.port().unwrap_or(*default_port),
    ))
}

impl Controller {
    /// The agent a request's target names, and how it is reached.
    async fn agent<T>(&self, req: &Request<T>, target: Option<&pb::Target>) -> Result<Agent> {
        let p = Principal::of(req)?;
        use pb::target::Target as T;
        let target = match target.and_then(|t| t.target.clone()) {
            Some(T::DeviceId(id)) => TargetRef::Device(id),
            Some(T::EndpointId(agent)) => TargetRef::UspAgent(agent),
            None => {
                return Err(Error::invalid(
                    "target",
                    "name a device_id or the agent's endpoint_id",
                ));
            }
        };
        let (device_id, endpoint, route) = self.reach(p, target).await?;
        Ok(Agent {
            device_id,
            endpoint_id: endpoint.endpoint_id().to_owned(),
            route,
            timeout: self.timeout(req, endpoint.timeout_ms),
        })
    }

    /// The device `target` names for `p`, its usp endpoint, and the route
    /// to its agent (a broker's connection is made on first use).
    async fn reach(
        &self,
        p: &Principal,
        target: TargetRef,
    ) -> Result<(String, UspEndpoint, Route)> {
        let resolved = self.inventory.resolve(p, target).await?;
        let Some(Settings::Usp(endpoint)) = resolved.endpoint.and_then(|e| e.settings) else {
            return Err(Error::internal(
                "reading a resolved endpoint",
                "no USP settings",
            ));
        };
        let allowed: Vec<ipnet::IpNet> = resolved
            .allowed_target_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let route = match endpoint.transport() {
            "mqtt" => self.broker(&endpoint, &allowed).await?,
            "websocket" => Route::Socket(match endpoint.websocket_url() {
                "" => {
                    if let Some(url) = self.sockets.elsewhere(endpoint.endpoint_id()).await? {
                        let forward = Forward::acting(DOMAIN, &self.service_key, p, None)?;
                        let route = Route::Relay(self.peer(&url)?, forward);
                        return Ok((resolved.device_id, endpoint, route));
                    }
                    None
                }
                url => {
                    let field = "usp.websocket_url";
                    let (_, host, port) = host_port(field, url, &[("ws", 80), ("wss", 443)])?;
                    let addr = self.addresses.resolve(&host, port, &allowed).await?;
                    Some(Dial {
                        url: url.to_owned(),
                        addr,
                    })
                }
            }),
            other => {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "the device's usp endpoint says transport {other} (another controller's HTTP API): rdm is the USP controller itself now; set transport mqtt (the agent's endpoint_id, broker and topic) or websocket (its endpoint_id)"
                    ),
                ));
            }
        };
        Ok((resolved.device_id, endpoint, route))
    }

    /// Reaches, at start, the brokers of the agents with subscriptions (as
    /// a user who made one), so their notifications are taken before any
    /// request; what fails (the inventory not up yet) is tried again every
    /// 10 s, six times at most.
    async fn reach_subscribed(self: Arc<Self>, verifier: rdm_kit::auth::Verifier) {
        let mut left = {
            let listed = async {
                let mut tx = self
                    .notifications
                    .db
                    .begin(rdm_kit::db::Scope::Platform)
                    .await?;
                store::subscribed_devices(&mut tx).await
            };
            match listed.await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list the subscribed USP agents");
                    return;
                }
            }
        };
        for _ in 0..6 {
            let mut failed = Vec::new();
            for (tenant_id, device_id, user_id) in left {
                let reached = async {
                    let p = self.inventory.user(&verifier, &tenant_id, &user_id).await?;
                    self.reach(&p, TargetRef::Device(device_id.clone())).await
                };
                if let Err(e) = reached.await {
                    tracing::info!(%tenant_id, %device_id, error = %e, "cannot reach a subscribed USP agent yet");
                    failed.push((tenant_id, device_id, user_id));
                }
            }
            if failed.is_empty() {
                return;
            }
            left = failed;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    /// How long a request waits for its reply: the endpoint's timeout (30 s
    /// when 0), within the call's deadline.
    fn timeout<T>(&self, req: &Request<T>, timeout_ms: u32) -> Duration {
        let timeout = match timeout_ms {
            0 => DEFAULT_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        CallDeadline::of(req).map_or(timeout, |d| timeout.min(d.remaining()))
    }

    /// The channel to another replica of the service.
    fn peer(&self, url: &str) -> Result<Backend> {
        let mut peers = self.peers.lock().unwrap();
        if let Some(backend) = peers.get(url) {
            return Ok(backend.clone());
        }
        let backend =
            rdm_kit::invoke::remote(url).map_err(|e| Error::internal("a replica's URL", e))?;
        peers.insert(url.to_owned(), backend.clone());
        Ok(backend)
    }

    /// The connection to the broker of an MQTT endpoint (made on first use).
    async fn broker(&self, endpoint: &UspEndpoint, allowed: &[ipnet::IpNet]) -> Result<Route> {
        let mqtt = endpoint.mqtt.clone().unwrap_or_default();
        let field = "usp.mqtt.broker_url";
        // No broker named: rdm's own.
        let own = mqtt.broker_url().is_empty();
        let url = match (mqtt.broker_url(), &self.own_broker) {
            ("", Some(own)) => own.as_str(),
            ("", None) => {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    "the endpoint names no broker and rdm has none of its own (RDM_USP_MQTT_URL): set usp.mqtt.broker_url",
                )
                .with_meta("field", field));
            }
            (url, _) => url,
        };
        let schemes = [
            ("mqtt", 1883),
            ("tcp", 1883),
            ("mqtts", 8883),
            ("ssl", 8883),
        ];
        let (scheme, host, port) = host_port(field, url, &schemes)?;
        let tls_name = matches!(scheme.as_str(), "mqtts" | "ssl").then(|| host.clone());
        for (field, topic) in [
            ("usp.mqtt.agent_topic", mqtt.agent_topic()),
            ("usp.mqtt.controller_topic", mqtt.controller_topic()),
        ] {
            if topic.contains(['+', '#']) {
                return Err(Error::invalid(
                    field,
                    "a topic to publish or reply on, not a filter: no + or #",
                ));
            }
        }
        let addr = match own {
            // As the operator configured it: not a tenant's address.
            true => tokio::net::lookup_host((host.as_str(), port))
                .await
                .ok()
                .and_then(|mut found| found.next())
                .ok_or_else(|| {
                    Error::new(
                        ErrorCode::UpstreamUnavailable,
                        format!("cannot resolve the host of rdm's MQTT broker, {host}"),
                    )
                })?,
            false => self.addresses.resolve(&host, port, allowed).await?,
        };
        let key = BrokerKey {
            addr,
            tls_name,
            client_id: mqtt.client_id().to_owned(),
            username: mqtt.username.clone().filter(|u| !u.is_empty()),
            password: mqtt.password.clone().filter(|p| !p.is_empty()),
            topic: match mqtt.controller_topic() {
                "" => format!("usp/controller/rdm-{}", self.replica),
                topic => topic.to_owned(),
            },
        };
        // A connection per distinct broker; its TLS settings made once.
        let broker = match self.brokers.lock().unwrap().entry(key) {
            Entry::Occupied(held) => held.get().clone(),
            Entry::Vacant(new) => {
                let key = new.key();
                let tls = match &key.tls_name {
                    Some(name) => Some(
                        self.tls
                            .client_for(name)
                            .map_err(|why| Error::invalid(field, why))?,
                    ),
                    None => None,
                };
                let settings = BrokerSettings {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    client_id: key.client_id.clone(),
                    username: key.username.clone(),
                    password: key.password.clone(),
                    endpoint_id: self.inbox.endpoint_id.clone(),
                    topic: key.topic.clone(),
                    notify_topic: match mqtt.controller_topic() {
                        "" => self.controller_topic.clone(),
                        topic => topic.to_owned(),
                    },
                    tls,
                    own,
                };
                let broker = Arc::new(Broker::connect(settings, self.inbox.clone()));
                new.insert(broker).clone()
            }
        };
        Ok(Route::Mqtt {
            broker,
            topic: mqtt.agent_topic().to_owned(),
            v311: mqtt.version() == "3.1.1",
        })
    }

    /// Sends one request to the agent; the response it answered, or the
    /// USP Error (and any failure to get an answer) as rdm's error.
    async fn call(&self, agent: &Agent, body: msg::request::ReqType) -> Result<R> {
        let msg_type = msg_type(&body);
        let name = msg_type.as_str_name();
        let request = record::request(&self.inbox.msg_id(), msg_type, body);
        let (id, timeout) = (agent.endpoint_id.as_str(), agent.timeout);
        let reply = match &agent.route {
            Route::Mqtt {
                broker,
                topic,
                v311,
            } => {
                let reply = broker.request(id, topic, *v311, request, timeout).await;
                exchanged(id, name, reply)?
            }
            Route::Socket(dial) => {
                let reply = self
                    .sockets
                    .request(id, dial.as_ref(), request, timeout)
                    .await;
                exchanged(id, name, reply)?
            }
            Route::Relay(peer, forward) => {
                let mut client = pb::usp_service_client::UspServiceClient::with_interceptor(
                    peer.clone(),
                    forward.clone(),
                );
                let mut relayed = tonic::Request::new(pb::RelayRequest {
                    endpoint_id: id.to_owned(),
                    msg: prost::Message::encode_to_vec(&request),
                    timeout_ms: timeout.as_millis() as u32,
                });
                relayed.set_timeout(timeout + Duration::from_secs(1));
                let reply = client
                    .relay(relayed)
                    .await
                    .map_err(|s| Error::from_status(&s))?;
                prost::Message::decode(reply.into_inner().msg.as_slice())
                    .map_err(|e| Error::internal("a relayed reply", e))?
            }
        };
        match reply.body.and_then(|b| b.msg_body) {
            Some(msg::body::MsgBody::Response(msg::Response { resp_type: Some(r) })) => Ok(r),
            Some(msg::body::MsgBody::Error(e)) => Err(usp_error(id, e)),
            _ => Err(Error::new(
                ErrorCode::DeviceError,
                format!("USP agent {id} answered the {name} with no response in it"),
            )),
        }
    }
}

/// An MTP's answer to a request (counted by its outcome), failures as
/// rdm's errors.
fn exchanged(
    id: &str,
    name: &'static str,
    reply: std::result::Result<msg::Msg, RequestError>,
) -> Result<msg::Msg> {
    let outcome = match &reply {
        Ok(_) => "answered",
        Err(RequestError::Timeout(_)) => "timeout",
        Err(RequestError::Transport(_)) => "transport",
        Err(RequestError::Offline(_)) => "offline",
    };
    metrics::counter!("rdm_usp_requests_total", "msg" => name, "outcome" => outcome).increment(1);
    reply.map_err(|e| match e {
        RequestError::Timeout(t) => Error::new(
            ErrorCode::DeviceTimeout,
            format!("no reply from USP agent {id} within {} ms", t.as_millis()),
        ),
        RequestError::Transport(why) => Error::new(ErrorCode::UpstreamUnavailable, why),
        RequestError::Offline(why) => Error::new(ErrorCode::DeviceOffline, why),
    })
}

/// A USP Error message as rdm's DEVICE_ERROR: its code, message and each
/// parameter's error in the metadata.
fn usp_error(agent: &str, e: msg::Error) -> Error {
    let param_errs: Vec<serde_json::Value> = e
        .param_errs
        .iter()
        .map(|p| {
            serde_json::json!({
                "param_path": p.param_path,
                "err_code": p.err_code,
                "err_msg": p.err_msg,
            })
        })
        .collect();
    let mut out = Error::new(
        ErrorCode::DeviceError,
        format!(
            "USP agent {agent} answered Error {}: {}",
            e.err_code, e.err_msg
        ),
    )
    .with_meta("usp_err_code", e.err_code.to_string())
    .with_meta("err_msg", e.err_msg);
    if !param_errs.is_empty() {
        out = out.with_meta(
            "param_errs",
            serde_json::Value::from(param_errs).to_string(),
        );
    }
    out
}

impl Controller {
    /// A transaction of `p`'s tenant, for writing when `write`.
    async fn tx(&self, p: &Principal, write: bool) -> Result<TenantTx> {
        let db = &self.notifications.db;
        let scope = Scope::of(p);
        if write {
            db.begin_write(scope).await
        } else {
            db.begin(scope).await
        }
    }

    /// The tenant's subscription `id`, or NOT_FOUND.
    async fn subscription(&self, p: &Principal, id: &str) -> Result<pb::Subscription> {
        let mut tx = self.tx(p, false).await?;
        store::subscription_by_id(&mut tx, &p.tenant_id, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no subscription {id}")))
    }

    /// Makes `sub` on its agent: the instance's path.
    async fn add_subscription(
        &self,
        agent: &Agent,
        sub: &pb::Subscription,
        persistent: bool,
    ) -> Result<String> {
        let settings = [
            ("Enable", "true".to_owned()),
            ("ID", sub.id.clone()),
            ("NotifType", sub.notif_type.clone()),
            ("ReferenceList", sub.reference_list.join(",")),
            ("NotifRetry", sub.notif_retry.to_string()),
            ("Persistent", persistent.to_string()),
        ];
        let add = Q::Add(msg::Add {
            allow_partial: false,
            create_objs: vec![msg::add::CreateObject {
                obj_path: SUBSCRIPTIONS.into(),
                param_settings: settings
                    .into_iter()
                    .map(|(param, value)| msg::add::CreateParamSetting {
                        param: param.into(),
                        value,
                        required: true,
                    })
                    .collect(),
            }],
        });
        use msg::add_resp::created_object_result::operation_status::OperStatus;
        let answer = self.call(agent, add).await?;
        let outcome = match &answer {
            R::AddResp(a) => a
                .created_obj_results
                .first()
                .and_then(|r| r.oper_status.as_ref()?.oper_status.as_ref())
                .map(|s| match s {
                    OperStatus::OperSuccess(s) => Ok(s.instantiated_path.clone()),
                    OperStatus::OperFailure(f) => Err((f.err_code, f.err_msg.clone())),
                }),
            _ => None,
        };
        one_outcome(&agent.endpoint_id, &answer, outcome)
    }

    /// Deletes `sub` from its agent (by its ID: the instance number may
    /// have changed).
    async fn delete_subscription(&self, agent: &Agent, sub: &pb::Subscription) -> Result<()> {
        use msg::delete_resp::deleted_object_result::operation_status::OperStatus;
        let delete = Q::Delete(msg::Delete {
            allow_partial: false,
            obj_paths: vec![format!("{SUBSCRIPTIONS}[ID==\"{}\"].", sub.id)],
        });
        let answer = self.call(agent, delete).await?;
        let outcome = match &answer {
            R::DeleteResp(d) => d
                .deleted_obj_results
                .first()
                .and_then(|r| r.oper_status.as_ref()?.oper_status.as_ref())
                .map(|s| match s {
                    OperStatus::OperSuccess(_) => Ok(()),
                    OperStatus::OperFailure(f) => Err((f.err_code, f.err_msg.clone())),
                }),
            _ => None,
        };
        one_outcome(&agent.endpoint_id, &answer, outcome)
    }
}

/// What became of the one object a request named: its success, or its
/// failure (code, message) as a USP Error of `agent`'s; None: the answer
/// was not the response to the request.
fn one_outcome<T>(
    agent: &str,
    answer: &R,
    outcome: Option<std::result::Result<T, (u32, String)>>,
) -> Result<T> {
    match outcome {
        Some(Ok(done)) => Ok(done),
        Some(Err((err_code, err_msg))) => Err(usp_error(
            agent,
            msg::Error {
                err_code,
                err_msg,
                param_errs: Vec::new(),
            },
        )),
        None => Err(wrong_answer(answer)),
    }
}

/// An agent's answer of the wrong kind.
fn wrong_answer(answer: &R) -> Error {
    Error::new(
        ErrorCode::DeviceError,
        format!(
            "the USP agent answered with a {}, not the response to the request",
            resp_name(answer)
        ),
    )
}

impl Usp {
    /// One USP request for an RPC: the request checked against its proto's
    /// rules (a 400 naming the field), `body` sent to the target's agent,
    /// and `pick` taking the response it should answer with (anything else
    /// is DEVICE_ERROR).
    async fn one<T: prost::Message, Out>(
        &self,
        req: &Request<T>,
        message: &str,
        target: Option<&pb::Target>,
        body: Q,
        pick: impl FnOnce(R) -> Option<Out>,
    ) -> Result<Response<Out>, Status> {
        let run = async {
            rdm_kit::rules::checked(req, &format!("rdm.usp.v1.{message}"))?;
            let agent = self.0.agent(req, target).await?;
            let answer = self.0.call(&agent, body).await?;
            let wrong = wrong_answer(&answer);
            pick(answer).ok_or(wrong)
        };
        run.await.map(Response::new).map_err(err)
    }
}

/// A response's USP name.
fn resp_name(r: &R) -> &'static str {
    match r {
        R::GetResp(_) => "GetResp",
        R::GetSupportedDmResp(_) => "GetSupportedDMResp",
        R::GetInstancesResp(_) => "GetInstancesResp",
        R::SetResp(_) => "SetResp",
        R::AddResp(_) => "AddResp",
        R::DeleteResp(_) => "DeleteResp",
        R::OperateResp(_) => "OperateResp",
        R::NotifyResp(_) => "NotifyResp",
        R::GetSupportedProtocolResp(_) => "GetSupportedProtocolResp",
        R::RegisterResp(_) => "RegisterResp",
        R::DeregisterResp(_) => "DeregisterResp",
    }
}

/// The Msg type of a request.
fn msg_type(body: &msg::request::ReqType) -> msg::header::MsgType {
    use msg::{header::MsgType as T, request::ReqType as Q};
    match body {
        Q::Get(_) => T::Get,
        Q::GetSupportedDm(_) => T::GetSupportedDm,
        Q::GetInstances(_) => T::GetInstances,
        Q::Set(_) => T::Set,
        Q::Add(_) => T::Add,
        Q::Delete(_) => T::Delete,
        Q::Operate(_) => T::Operate,
        Q::Notify(_) => T::Notify,
        Q::GetSupportedProtocol(_) => T::GetSupportedProto,
        Q::Register(_) => T::Register,
        Q::Deregister(_) => T::Deregister,
    }
}

#[tonic::async_trait]
impl UspService for Usp {
    async fn get(&self, req: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let r = req.get_ref();
        let body = Q::Get(msg::Get {
            param_paths: r.paths.clone(),
            max_depth: r.max_depth,
        });
        self.one(&req, "GetRequest", r.target.as_ref(), body, |a| match a {
            R::GetResp(g) => Some(pb::GetResponse {
                req_path_results: g.req_path_results,
            }),
            _ => None,
        })
        .await
    }

    async fn set(&self, req: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let r = req.get_ref();
        if r.validate {
            let settings = r.update_objs.iter().enumerate().flat_map(|(i, u)| {
                u.param_settings.iter().enumerate().map(move |(j, s)| {
                    (
                        format!("update_objs[{i}].param_settings[{j}]"),
                        format!("{}{}", u.obj_path, s.param),
                        s.value.as_str(),
                    )
                })
            });
            rdm_catalog::datamodel::check_fields(settings, "param").map_err(err)?;
        }
        let body = Q::Set(msg::Set {
            allow_partial: r.allow_partial,
            update_objs: r.update_objs.clone(),
        });
        self.one(&req, "SetRequest", r.target.as_ref(), body, |a| match a {
            R::SetResp(s) => Some(pb::SetResponse {
                updated_obj_results: s.updated_obj_results,
            }),
            _ => None,
        })
        .await
    }

    async fn add(&self, req: Request<pb::AddRequest>) -> Result<Response<pb::AddResponse>, Status> {
        let r = req.get_ref();
        let body = Q::Add(msg::Add {
            allow_partial: r.allow_partial,
            create_objs: r.create_objs.clone(),
        });
        self.one(&req, "AddRequest", r.target.as_ref(), body, |a| match a {
            R::AddResp(s) => Some(pb::AddResponse {
                created_obj_results: s.created_obj_results,
            }),
            _ => None,
        })
        .await
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let r = req.get_ref();
        let body = Q::Delete(msg::Delete {
            allow_partial: r.allow_partial,
            obj_paths: r.obj_paths.clone(),
        });
        self.one(
            &req,
            "DeleteRequest",
            r.target.as_ref(),
            body,
            |a| match a {
                R::DeleteResp(s) => Some(pb::DeleteResponse {
                    deleted_obj_results: s.deleted_obj_results,
                }),
                _ => None,
            },
        )
        .await
    }

    async fn operate(
        &self,
        req: Request<pb::OperateRequest>,
    ) -> Result<Response<pb::OperateResponse>, Status> {
        let r = req.get_ref();
        let body = Q::Operate(msg::Operate {
            command: r.command.clone(),
            command_key: r.command_key.clone(),
            // The caller waits for the answer: the agent must send one.
            send_resp: true,
            input_args: r.input_args.clone(),
        });
        self.one(
            &req,
            "OperateRequest",
            r.target.as_ref(),
            body,
            |a| match a {
                R::OperateResp(s) => Some(pb::OperateResponse {
                    operation_results: s.operation_results,
                }),
                _ => None,
            },
        )
        .await
    }

    async fn get_supported_dm(
        &self,
        req: Request<pb::GetSupportedDmRequest>,
    ) -> Result<Response<pb::GetSupportedDmResponse>, Status> {
        let r = req.get_ref();
        let body = Q::GetSupportedDm(msg::GetSupportedDm {
            obj_paths: r.obj_paths.clone(),
            first_level_only: r.first_level_only,
            return_commands: r.return_commands,
            return_events: r.return_events,
            return_params: r.return_params,
            return_unique_key_sets: r.return_unique_key_sets,
        });
        let message = "GetSupportedDMRequest";
        self.one(&req, message, r.target.as_ref(), body, |a| match a {
            R::GetSupportedDmResp(s) => Some(pb::GetSupportedDmResponse {
                req_obj_results: s.req_obj_results,
            }),
            _ => None,
        })
        .await
    }

    async fn get_instances(
        &self,
        req: Request<pb::GetInstancesRequest>,
    ) -> Result<Response<pb::GetInstancesResponse>, Status> {
        let r = req.get_ref();
        let body = Q::GetInstances(msg::GetInstances {
            obj_paths: r.obj_paths.clone(),
            first_level_only: r.first_level_only,
        });
        let message = "GetInstancesRequest";
        self.one(&req, message, r.target.as_ref(), body, |a| match a {
            R::GetInstancesResp(s) => Some(pb::GetInstancesResponse {
                req_path_results: s.req_path_results,
            }),
            _ => None,
        })
        .await
    }

    async fn get_supported_protocol(
        &self,
        req: Request<pb::GetSupportedProtocolRequest>,
    ) -> Result<Response<pb::GetSupportedProtocolResponse>, Status> {
        let r = req.get_ref();
        let body = Q::GetSupportedProtocol(msg::GetSupportedProtocol {
            controller_supported_protocol_versions: "1.3,1.4".into(),
        });
        let message = "GetSupportedProtocolRequest";
        self.one(&req, message, r.target.as_ref(), body, |a| match a {
            R::GetSupportedProtocolResp(s) => Some(pb::GetSupportedProtocolResponse {
                agent_supported_protocol_versions: s.agent_supported_protocol_versions,
            }),
            _ => None,
        })
        .await
    }

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let run = async {
            rdm_kit::rules::checked(&req, "rdm.usp.v1.SubscribeRequest")?;
            let (p, r) = (Principal::of(&req)?, req.get_ref());
            let agent = self.0.agent(&req, r.target.as_ref()).await?;
            let now = now_millis();
            let mut sub = pb::Subscription {
                id: notifications::new_id(&p.tenant_id),
                device_id: agent.device_id.clone(),
                endpoint_id: agent.endpoint_id.clone(),
                notif_type: r.notif_type.clone(),
                reference_list: r.reference_list.clone(),
                notif_retry: r.notif_retry,
                obj_path: String::new(),
                create_time: Some(timestamp(now)),
            };
            // Kept first: the agent may notify before its AddResp arrives.
            let mut tx = self.0.tx(p, true).await?;
            store::put_subscription(&mut tx, &p.tenant_id, &p.user_id, &sub, now).await?;
            tx.commit().await?;
            let made = self.0.add_subscription(&agent, &sub, r.persistent).await;
            // The instance it got, or (not made) no row left behind.
            let mut tx = self.0.tx(p, true).await?;
            match &made {
                Ok(path) => store::set_obj_path(&mut tx, &p.tenant_id, &sub.id, path).await?,
                Err(_) => {
                    store::delete_subscription(&mut tx, &p.tenant_id, &sub.id).await?;
                }
            }
            tx.commit().await?;
            sub.obj_path = made?;
            Ok(pb::SubscribeResponse {
                subscription: Some(sub),
            })
        };
        run.await.map(Response::new).map_err(err)
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::UnsubscribeRequest>,
    ) -> Result<Response<pb::UnsubscribeResponse>, Status> {
        let run = async {
            rdm_kit::rules::checked(&req, "rdm.usp.v1.UnsubscribeRequest")?;
            let p = Principal::of(&req)?;
            let sub = self.0.subscription(p, &req.get_ref().id).await?;
            let target = pb::Target {
                target: Some(pb::target::Target::DeviceId(sub.device_id.clone())),
            };
            let agent = self.0.agent(&req, Some(&target)).await?;
            self.0.delete_subscription(&agent, &sub).await?;
            let mut tx = self.0.tx(p, true).await?;
            store::delete_subscription(&mut tx, &p.tenant_id, &sub.id).await?;
            tx.commit().await?;
            Ok(pb::UnsubscribeResponse {})
        };
        run.await.map(Response::new).map_err(err)
    }

    async fn list_subscriptions(
        &self,
        req: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        let run = async {
            rdm_kit::rules::checked(&req, "rdm.usp.v1.ListSubscriptionsRequest")?;
            let (p, r) = (Principal::of(&req)?, req.get_ref());
            let size = page::size(r.page_size)?;
            let after = page::decode(&r.page_token)?;
            let mut tx = self.0.tx(p, false).await?;
            let rows =
                store::subscriptions(&mut tx, &p.tenant_id, &r.device_id, &after, size + 1).await?;
            let (subscriptions, next_page_token) = page::finish(rows, size, |s| &s.id);
            Ok(pb::ListSubscriptionsResponse {
                subscriptions,
                next_page_token,
            })
        };
        run.await.map(Response::new).map_err(err)
    }

    async fn get_auto_registration(
        &self,
        req: Request<pb::GetAutoRegistrationRequest>,
    ) -> Result<Response<pb::GetAutoRegistrationResponse>, Status> {
        let run = async {
            let p = Principal::of(&req)?;
            let auto_registration = Some(self.0.notifications.onboarding.get(p).await?);
            Ok(pb::GetAutoRegistrationResponse { auto_registration })
        };
        run.await.map(Response::new).map_err(err)
    }

    async fn update_auto_registration(
        &self,
        req: Request<pb::UpdateAutoRegistrationRequest>,
    ) -> Result<Response<pb::UpdateAutoRegistrationResponse>, Status> {
        let run = async {
            rdm_kit::rules::checked(&req, "rdm.usp.v1.UpdateAutoRegistrationRequest")?;
            let (p, r) = (Principal::of(&req)?, req.get_ref());
            let onboarding = &self.0.notifications.onboarding;
            let auto_registration = Some(onboarding.update(p, &r.label, r.new_secret).await?);
            Ok(pb::UpdateAutoRegistrationResponse { auto_registration })
        };
        run.await.map(Response::new).map_err(err)
    }

    async fn delete_auto_registration(
        &self,
        req: Request<pb::DeleteAutoRegistrationRequest>,
    ) -> Result<Response<pb::DeleteAutoRegistrationResponse>, Status> {
        let run = async {
            let p = Principal::of(&req)?;
            self.0.notifications.onboarding.delete(p).await?;
            Ok(pb::DeleteAutoRegistrationResponse {})
        };
        run.await.map(Response::new).map_err(err)
    }

    async fn relay(
        &self,
        req: Request<pb::RelayRequest>,
    ) -> Result<Response<pb::RelayResponse>, Status> {
        let run = async {
            rdm_kit::rules::checked(&req, "rdm.usp.v1.RelayRequest")?;
            let r = req.get_ref();
            let request: msg::Msg = prost::Message::decode(r.msg.as_slice())
                .map_err(|e| Error::invalid("msg", format!("not a USP Msg: {e}")))?;
            let timeout = self.0.timeout(&req, r.timeout_ms);
            let id = &r.endpoint_id;
            let name = request
                .header
                .as_ref()
                .and_then(|h| msg::header::MsgType::try_from(h.msg_type).ok())
                .map_or("unknown", |t| t.as_str_name());
            // This replica's own connection, or none: never relayed again.
            let reply = self.0.sockets.request(id, None, request, timeout).await;
            let reply = exchanged(id, name, reply)?;
            Ok(pb::RelayResponse {
                msg: prost::Message::encode_to_vec(&reply),
            })
        };
        run.await.map(Response::new).map_err(err)
    }

    type WatchNotificationsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::WatchNotificationsResponse, Status>> + Send>,
    >;

    async fn watch_notifications(
        &self,
        req: Request<pb::WatchNotificationsRequest>,
    ) -> Result<Response<Self::WatchNotificationsStream>, Status> {
        rdm_kit::rules::checked(&req, "rdm.usp.v1.WatchNotificationsRequest").map_err(err)?;
        let p = Principal::of(&req).map_err(err)?.clone();
        let r = req.into_inner();
        let stream = self.0.notifications.watch(p, r.device_id, r.replay_minutes);
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            stream,
            |n| n.map_err(err),
        ))))
    }
}
