//! Receiving notifications on one UDP port: v1 and v2c traps, v2c informs,
//! and v3 informs, which are acknowledged. Each watcher sees those sent
//! from the addresses of its own tenant's devices.
//!
//! For v3 informs this listener is the authoritative engine (RFC 3414): it
//! answers discovery with its engine id, boots and time, and checks each
//! inform against the credentials of the device it comes from, as stored in
//! the inventory of a tenant that is watching. An inform that no watching
//! tenant's device credentials authenticate is refused with a USM report.
use crate::{
    Inventory,
    engine::{
        ber::{self, UsmHeader, V3In},
        oid::Oid,
        target::{Credentials, UsmUser},
        usm::{self, EngineCache, Keys, Unopened},
        value::{Value, VarBind},
    },
};
use futures::Stream;
use rand::Rng;
use rdm_kit::{Principal, Result, client::Forward};
use rdm_proto::{
    inventory::{self as inv, device_service_client::DeviceServiceClient, endpoint::Settings},
    snmp as pb,
};
use snmp2::{MessageType, snmp};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};
use tokio::{net::UdpSocket, sync::broadcast};

const SYS_UPTIME: [u32; 9] = [1, 3, 6, 1, 2, 1, 1, 3, 0];
const SNMP_TRAP_OID: [u32; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
/// snmpTrapAddress.0 and snmpTrapEnterprise.0 (RFC 3584).
const SNMP_TRAP_ADDRESS: [u32; 10] = [1, 3, 6, 1, 6, 3, 18, 1, 3, 0];
const SNMP_TRAP_ENTERPRISE: [u32; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 3, 0];
/// How often a watcher re-reads its tenant's device addresses.
const DEVICE_REFRESH: Duration = Duration::from_secs(30);
/// RFC 3414 3.2.7: how far a sender's idea of our clock may be off.
const TIME_WINDOW: i64 = 150;

#[derive(Clone, Debug)]
pub struct Trap {
    pub received: SystemTime,
    pub source: SocketAddr,
    pub version: &'static str,
    pub kind: &'static str,
    pub trap_oid: String,
    pub uptime: u64,
    pub varbinds: Vec<VarBind>,
    /// For v3: the tenant and device whose credentials authenticated it.
    pub tenant_id: Option<String>,
    pub device_id: Option<String>,
    /// For v1 and v2c: the community it was sent with (never shown).
    pub community: Option<Vec<u8>>,
    /// For a v1 trap: the fields v2 has no place for.
    pub v1: Option<V1Fields>,
}

/// The header fields of a v1 Trap-PDU (RFC 1157).
#[derive(Clone, Debug, Default)]
pub struct V1Fields {
    pub agent_address: String,
    pub enterprise: String,
    pub generic_trap: i32,
    pub specific_trap: i32,
}

/// A device of a watching tenant, as notifications are matched to it.
#[derive(Clone, Debug)]
struct Device {
    id: String,
    /// SHA-256 of its stored v1/v2c community, if it has one.
    community: Option<[u8; 32]>,
}

/// Address -> devices there, of one tenant.
type Addresses = Arc<HashMap<IpAddr, Vec<Device>>>;

fn community_hash(community: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(community).into()
}

/// The tenants watching now, with their devices' addresses: the only
/// places a v3 notification's credentials are looked for.
struct Watchers {
    next: AtomicU64,
    by_id: Mutex<HashMap<u64, (Principal, Addresses)>>,
    /// When the device lists were last re-read for a v3 sender, in ms
    /// since `started`.
    refreshed_ms: AtomicU64,
    started: std::time::Instant,
}

/// `refreshed_ms` before the first refresh.
const NEVER: u64 = u64::MAX;

impl Default for Watchers {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            by_id: Mutex::default(),
            refreshed_ms: AtomicU64::new(NEVER),
            started: std::time::Instant::now(),
        }
    }
}

impl Watchers {
    fn set(&self, id: u64, p: &Principal, devices: Addresses) {
        self.lock().insert(id, (p.clone(), devices));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Principal, Addresses)>> {
        self.by_id.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every device at `ip` of a tenant with a watcher, once each.
    fn devices_at(&self, ip: IpAddr) -> Vec<(Principal, String)> {
        let mut found: Vec<(Principal, String)> = Vec::new();
        for (p, devices) in self.lock().values() {
            for device in devices.get(&ip).into_iter().flatten() {
                if !found
                    .iter()
                    .any(|(q, id)| q.tenant_id == p.tenant_id && *id == device.id)
                {
                    found.push((p.clone(), device.id.clone()));
                }
            }
        }
        found
    }
}

/// v3 notifications being checked at once; more are dropped.
const V3_AT_ONCE: usize = 64;
/// v3 datagrams one source address may have checked a second.
const V3_PER_SOURCE: u32 = 50;

/// How many v3 datagrams each source sent this second (a fixed window).
#[derive(Default)]
struct SourceBudget {
    second: u64,
    counts: HashMap<IpAddr, u32>,
}

impl SourceBudget {
    /// Whether `source` may have one more checked in `second` (Unix time).
    fn allow(&mut self, source: IpAddr, second: u64) -> bool {
        // A new second, or too many sources to remember: start again.
        if second != self.second || self.counts.len() >= 10_000 {
            self.second = second;
            self.counts.clear();
        }
        let count = self.counts.entry(source).or_default();
        *count += 1;
        *count <= V3_PER_SOURCE
    }
}

/// Unregisters a watcher when its stream is dropped.
struct Registration(Arc<Watchers>, u64);

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// This listener as an SNMP engine, authoritative for informs sent to it.
struct Authority {
    engine_id: Vec<u8>,
    boots: i64,
    started: Instant,
    keys: EngineCache,
    /// usmStats counters, by their last arc.
    stats: [AtomicU32; 7],
}

/// The usmStats counters a report can carry (RFC 3414 5).
#[derive(Clone, Copy)]
#[repr(usize)]
enum UsmStat {
    UnsupportedSecLevels = 1,
    NotInTimeWindows = 2,
    UnknownUserNames = 3,
    UnknownEngineIds = 4,
    WrongDigests = 5,
    DecryptionErrors = 6,
}

impl Authority {
    fn new() -> Self {
        // RFC 3411 snmpEngineID: high bit set, enterprise 0, format 5
        // (octets), random: a new engine each start, so boots stays 1.
        let mut engine_id = vec![0x80, 0, 0, 0, 5];
        engine_id.extend(rand::thread_rng().r#gen::<[u8; 8]>());
        Self {
            engine_id,
            boots: 1,
            started: Instant::now(),
            keys: EngineCache::default(),
            stats: Default::default(),
        }
    }

    fn header(&self, username: &[u8]) -> UsmHeader {
        UsmHeader {
            engine_id: self.engine_id.clone(),
            boots: self.boots,
            time: i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX),
            username: username.to_vec(),
        }
    }

    fn in_time_window(&self, usm: &UsmHeader) -> bool {
        usm.boots == self.boots && (usm.time - self.header(&[]).time).abs() <= TIME_WINDOW
    }

    /// A report of `stat` in answer to `m`, secured with `keys`.
    fn report(&self, stat: UsmStat, keys: &Keys, m: &V3In<'_>) -> Option<Vec<u8>> {
        if m.flags & snmp::V3_MSG_FLAGS_REPORTABLE == 0 {
            return None;
        }
        let count = self.stats[stat as usize].fetch_add(1, Ordering::Relaxed) + 1;
        let oid: Oid = format!("1.3.6.1.6.3.15.1.1.{}.0", stat as usize)
            .parse()
            .expect("a valid OID");
        // The request id when the request can be read (RFC 3412 7.1.3.c).
        let req_id = (m.flags & snmp::V3_MSG_FLAGS_PRIVACY == 0)
            .then(|| ber::scoped(m.data))
            .flatten()
            .and_then(|s| snmp2::Pdu::from_bytes(&s.message).ok().map(|p| p.req_id))
            .unwrap_or(0);
        let mut pdu = Vec::new();
        ber::pdu(
            &mut pdu,
            snmp::MSG_REPORT,
            req_id,
            0,
            0,
            &[(oid, Value::Counter32(count))],
        );
        let scoped = ber::scoped_pdu(&self.engine_id, b"", &pdu);
        Some(usm::seal(
            keys,
            m.msg_id,
            false,
            &self.header(&m.usm.username),
            &scoped,
        ))
    }
}

/// The listener's fan-out to watchers.
#[derive(Clone)]
pub struct TrapHub {
    tx: broadcast::Sender<Arc<Trap>>,
    pub addr: SocketAddr,
    inventory: Inventory,
    watchers: Arc<Watchers>,
}

impl TrapHub {
    /// Listens on `addr` until the process ends.
    pub async fn listen(addr: SocketAddr, inventory: Inventory) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let hub = Self {
            tx: broadcast::channel(1024).0,
            addr: socket.local_addr()?,
            inventory,
            watchers: Arc::default(),
        };
        let authority = Arc::new(Authority::new());
        let listener = hub.clone();
        let v3_work = Arc::new(tokio::sync::Semaphore::new(V3_AT_ONCE));
        let mut budget = SourceBudget::default();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let bytes = buf[..n].to_vec();
                metrics::counter!("rdm_snmp_traps_received_total").increment(1);
                if matches!(ber::header(&bytes), Some(ber::Header::V3(_))) {
                    // Finding the sender's credentials takes a round trip to
                    // the inventory: bounded, as a flood of spoofed
                    // datagrams would otherwise take the service with it.
                    let second = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    if !budget.allow(from.ip(), second) {
                        metrics::counter!("rdm_snmp_traps_dropped_total", "reason" => "source_budget").increment(1);
                        continue;
                    }
                    let Ok(permit) = v3_work.clone().try_acquire_owned() else {
                        metrics::counter!("rdm_snmp_traps_dropped_total", "reason" => "busy")
                            .increment(1);
                        continue;
                    };
                    let (hub, socket, authority) =
                        (listener.clone(), socket.clone(), authority.clone());
                    tokio::spawn(async move {
                        hub.v3(&authority, &socket, &bytes, from).await;
                        drop(permit);
                    });
                    continue;
                }
                match decode(&bytes, from) {
                    Some((trap, ack)) => listener.deliver(&socket, trap, ack, from).await,
                    None => {
                        tracing::debug!(%from, bytes = n, "dropped a datagram that is no trap or inform")
                    }
                }
            }
        });
        tracing::info!(addr = %hub.addr, "snmp trap listener");
        Ok(hub)
    }

    /// Acknowledges (informs) and hands a notification to the watchers.
    async fn deliver(&self, socket: &UdpSocket, trap: Trap, ack: Option<Vec<u8>>, to: SocketAddr) {
        if let Some(ack) = ack
            && let Err(e) = socket.send_to(&ack, to).await
        {
            tracing::debug!(%to, error = %e, "cannot acknowledge an inform");
        }
        // No watcher is not an error.
        let _ = self.tx.send(Arc::new(trap));
    }

    async fn v3(&self, authority: &Authority, socket: &UdpSocket, bytes: &[u8], from: SocketAddr) {
        let Some(ber::Header::V3(m)) = ber::header(bytes) else {
            return;
        };
        let answer = match self.notification_v3(authority, bytes, &m, from).await {
            Ok((trap, ack)) => return self.deliver(socket, trap, ack, from).await,
            Err(None) => return,
            Err(Some((stat, keys))) => {
                tracing::debug!(%from, stat = stat as usize, "refused a v3 message with a usm report");
                authority.report(stat, &keys, &m)
            }
        };
        if let Some(report) = answer
            && let Err(e) = socket.send_to(&report, from).await
        {
            tracing::debug!(%from, error = %e, "cannot send a usm report");
        }
    }

    /// A v3 notification from a device of a watching tenant, checked with
    /// the credentials of each device at the sender's address until one
    /// verifies: an inform (sent to this listener's engine) with its
    /// acknowledgement, or a trap (sent with the sender's own engine id,
    /// RFC 3414 3.1.1, never answered); or the report to send.
    async fn notification_v3(
        &self,
        authority: &Authority,
        bytes: &[u8],
        m: &V3In<'_>,
        from: SocketAddr,
    ) -> std::result::Result<(Trap, Option<Vec<u8>>), Option<(UsmStat, Keys)>> {
        let refuse = |stat| Err(Some((stat, Keys::default())));
        // Sent to our engine: an inform (or discovery). Otherwise the
        // sender is authoritative: a trap, which gets no report either.
        let ours = m.usm.engine_id == authority.engine_id;
        if !ours && m.usm.engine_id.is_empty() {
            return refuse(UsmStat::UnknownEngineIds);
        }
        let mut candidates = self.candidates(from.ip(), &m.usm.username).await;
        if candidates.is_empty() && self.refresh_watchers().await {
            // A device created since the watchers last looked.
            candidates = self.candidates(from.ip(), &m.usm.username).await;
        }
        let mut refusal = UsmStat::UnknownUserNames;
        for (tenant_id, device_id, user) in candidates {
            let keys = authority.keys.keys(&user, &m.usm.engine_id).await;
            if m.flags & (snmp::V3_MSG_FLAGS_AUTH | snmp::V3_MSG_FLAGS_PRIVACY) != keys.level() {
                refusal = UsmStat::UnsupportedSecLevels;
                continue;
            }
            let scoped = match usm::open(&keys, bytes, m) {
                Ok(scoped) => scoped,
                Err(Unopened::Decryption) => {
                    refusal = UsmStat::DecryptionErrors;
                    continue;
                }
                Err(Unopened::WrongDigest | Unopened::Level) => {
                    refusal = UsmStat::WrongDigests;
                    continue;
                }
            };
            if ours && keys.auth.is_some() && !authority.in_time_window(&m.usm) {
                return Err(Some((UsmStat::NotInTimeWindows, keys.without_privacy())));
            }
            let is_inform = ber::scoped(&scoped).and_then(|p| {
                snmp2::Pdu::from_bytes(&p.message)
                    .ok()
                    .map(|p| p.message_type)
            }) == Some(MessageType::InformRequest);
            if !ours && is_inform {
                // An inform to an engine of ours from before a restart: the
                // report makes the sender discover the one we have now.
                return refuse(UsmStat::UnknownEngineIds);
            }
            let decoded = ber::scoped(&scoped).and_then(|pdu_bytes| {
                let (mut trap, _) = decode(&pdu_bytes.message, from)?;
                let pdu = snmp2::Pdu::from_bytes(&pdu_bytes.message).ok()?;
                trap.version = "3";
                trap.tenant_id = Some(tenant_id);
                trap.device_id = Some(device_id);
                trap.community = None; // authenticated by USM, not a community
                match (ours, pdu.message_type) {
                    (true, MessageType::InformRequest) => {
                        // The response names the inform's context (RFC 3412 7.1.4).
                        let ack = response(pdu.req_id, &trap.varbinds);
                        let scoped =
                            ber::scoped_pdu(pdu_bytes.context_engine, pdu_bytes.context_name, &ack);
                        let header = authority.header(&m.usm.username);
                        Some((
                            trap,
                            Some(usm::seal(&keys, m.msg_id, false, &header, &scoped)),
                        ))
                    }
                    (false, MessageType::Trap) => Some((trap, None)),
                    // Authenticated, but nothing to deliver or answer.
                    _ => None,
                }
            });
            return decoded.ok_or(None);
        }
        if ours { refuse(refusal) } else { Err(None) }
    }

    /// The v3 users named `username` of the devices at `ip` of every
    /// watching tenant: (tenant, device, user).
    async fn candidates(&self, ip: IpAddr, username: &[u8]) -> Vec<(String, String, UsmUser)> {
        let mut found = Vec::new();
        for (p, device_id) in self.watchers.devices_at(ip) {
            match self.inventory.device(&p, &device_id).await {
                Ok(resolved) => {
                    if let Credentials::Usm(user) = resolved.target.credentials
                        && user.username == username
                    {
                        found.push((p.tenant_id, device_id, user));
                    }
                }
                Err(e) => {
                    tracing::debug!(%device_id, error = %e, "cannot read a device's snmp credentials")
                }
            }
        }
        found
    }

    /// Re-reads every watcher's devices, at most once a second (a sender
    /// cannot make it do more); whether it did.
    async fn refresh_watchers(&self) -> bool {
        let now = self.watchers.started.elapsed().as_millis() as u64;
        let last = self.watchers.refreshed_ms.load(Ordering::Relaxed);
        if (last != NEVER && now.saturating_sub(last) < 1000)
            || self
                .watchers
                .refreshed_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let watching: Vec<(u64, Principal)> = self
            .watchers
            .lock()
            .iter()
            .map(|(id, (p, _))| (*id, p.clone()))
            .collect();
        for (id, p) in watching {
            if let Ok(devices) = device_addresses(&self.inventory, &p).await
                && let Some(entry) = self.watchers.lock().get_mut(&id)
            {
                entry.1 = devices;
            }
        }
        true
    }

    /// Traps from the caller's tenant's devices, from now on.
    pub async fn watch(
        &self,
        p: Principal,
    ) -> Result<impl Stream<Item = pb::WatchTrapsResponse> + use<>> {
        let mut rx = self.tx.subscribe();
        let mut devices = device_addresses(&self.inventory, &p).await?;
        let id = self.watchers.next.fetch_add(1, Ordering::Relaxed);
        self.watchers.set(id, &p, devices.clone());
        let registration = Registration(self.watchers.clone(), id);
        let inventory = self.inventory.clone();
        let mut refreshed = tokio::time::Instant::now();
        Ok(async_stream::stream! {
            let _registration = registration;
            loop {
                let trap = match rx.recv().await {
                    Ok(t) => t,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "a trap watcher fell behind");
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if refreshed.elapsed() > DEVICE_REFRESH {
                    if let Ok(fresh) = device_addresses(&inventory, &p).await {
                        _registration.0.set(id, &p, fresh);
                    }
                    refreshed = tokio::time::Instant::now();
                }
                // The list a v3 sender may have had re-read since.
                if let Some((_, current)) = _registration.0.lock().get(&id) {
                    devices = current.clone();
                }
                if trap.tenant_id.as_ref().is_some_and(|t| *t != p.tenant_id) {
                    continue;
                }
                if let Some(device) = sender(&devices, &trap) {
                    yield to_pb(&trap, &device.id);
                }
            }
        })
    }
}

/// The device of one tenant that sent `trap`: at its source address, and for
/// v1/v2c one whose stored community is the one the trap carries (an
/// address alone would hand any tenant with a device there every trap from
/// it, other tenants' included). A v3 inform was already authenticated.
fn sender<'a>(devices: &'a Addresses, trap: &Trap) -> Option<&'a Device> {
    let at = devices.get(&trap.source.ip())?;
    match (&trap.community, &trap.device_id) {
        (Some(community), _) => {
            let hash = community_hash(community);
            at.iter().find(|d| d.community == Some(hash))
        }
        // v3: the device whose credentials verified it.
        (None, Some(id)) => at.iter().find(|d| d.id == *id),
        (None, None) => None,
    }
}

/// The addresses of every device of the caller's tenant that has one, with
/// the communities of their SNMP endpoints.
async fn device_addresses(inventory: &Inventory, p: &Principal) -> Result<Addresses> {
    let mut client = DeviceServiceClient::with_interceptor(
        inventory.backend().clone(),
        Forward::new(Some(p), None),
    );
    let mut found: Vec<(IpAddr, String)> = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_devices(inv::ListDevicesRequest {
                page_size: 1000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .map_err(|s| rdm_kit::Error::from_status(&s))?
            .into_inner();
        for d in page.devices {
            if let Ok(ip) = d.address.parse() {
                found.push((ip, d.id));
            }
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let ids: Vec<String> = found.iter().map(|(_, id)| id.clone()).collect();
    let resolved = inventory.devices(p, &ids).await?;
    let mut out: HashMap<IpAddr, Vec<Device>> = HashMap::new();
    for ((ip, id), target) in found.into_iter().zip(resolved) {
        // No SNMP endpoint (or not v1/v2c): no community to match.
        let community = target.ok().and_then(|t| match t.endpoint?.settings? {
            Settings::Snmp(s) if matches!(s.version.as_deref(), Some("1" | "2c")) => {
                s.community.map(|c| community_hash(c.as_bytes()))
            }
            _ => None,
        });
        out.entry(ip).or_default().push(Device { id, community });
    }
    Ok(Arc::new(out))
}

fn to_pb(t: &Trap, device_id: &str) -> pb::WatchTrapsResponse {
    let v1 = t.v1.clone().unwrap_or_default();
    pb::WatchTrapsResponse {
        receive_time: Some(prost_types::Timestamp::from(t.received)),
        source: t.source.to_string(),
        device_id: device_id.to_owned(),
        version: t.version.to_owned(),
        kind: t.kind.to_owned(),
        trap_oid: t.trap_oid.clone(),
        uptime: t.uptime,
        varbinds: crate::names::standard(t.varbinds.clone()).0,
        agent_address: v1.agent_address,
        enterprise: v1.enterprise,
        generic_trap: v1.generic_trap,
        specific_trap: v1.specific_trap,
    }
}

/// The Response PDU that acknowledges an inform: its varbinds echoed.
fn response(req_id: i32, varbinds: &[VarBind]) -> Vec<u8> {
    let echoed: Vec<(Oid, Value)> = varbinds
        .iter()
        .map(|vb| (vb.oid.clone(), vb.value.clone()))
        .collect();
    let mut pdu = Vec::new();
    ber::pdu(&mut pdu, snmp::MSG_RESPONSE, req_id, 0, 0, &echoed);
    pdu
}

/// A v1/v2c trap or inform, and for an inform the response that
/// acknowledges it.
fn decode(bytes: &[u8], source: SocketAddr) -> Option<(Trap, Option<Vec<u8>>)> {
    let pdu = snmp2::Pdu::from_bytes(bytes).ok()?;
    let varbinds = pdu
        .varbinds
        .clone()
        .map(|(oid, v)| {
            Some(VarBind {
                oid: Oid::try_from(&oid).ok()?,
                value: Value::from_wire(&v)?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let received = SystemTime::now();
    if let Some(info) = &pdu.v1_trap_info {
        // RFC 3584 3.1: the v2 trap OID of a v1 trap.
        let enterprise = Oid::try_from(&info.enterprise).ok()?;
        let trap_oid = if (0..6).contains(&info.generic_trap) {
            format!("1.3.6.1.6.3.1.1.5.{}", info.generic_trap + 1)
        } else {
            format!("{enterprise}.0.{}", info.specific_trap)
        };
        // RFC 3584 3.1: the v2 form, the v1 header's facts as variables.
        let agent = match info.agent_addr {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => [0; 4],
        };
        let mut v2 = vec![
            VarBind {
                oid: Oid::try_from_arcs(&SYS_UPTIME)?,
                value: Value::TimeTicks(info.timestamp),
            },
            VarBind {
                oid: Oid::try_from_arcs(&SNMP_TRAP_OID)?,
                value: Value::ObjectIdentifier(trap_oid.parse().ok()?),
            },
        ];
        v2.extend(varbinds);
        for (arcs, value) in [
            (&SNMP_TRAP_ADDRESS[..], Value::IpAddress(agent)),
            (
                &SNMP_TRAP_ENTERPRISE[..],
                Value::ObjectIdentifier(enterprise.clone()),
            ),
        ] {
            if !v2.iter().any(|vb| vb.oid.arcs() == arcs) {
                v2.push(VarBind {
                    oid: Oid::try_from_arcs(arcs)?,
                    value,
                });
            }
        }
        let trap = Trap {
            received,
            source,
            version: "1",
            kind: "trap",
            trap_oid,
            uptime: info.timestamp.into(),
            varbinds: v2,
            tenant_id: None,
            device_id: None,
            community: Some(pdu.community.to_vec()),
            v1: Some(V1Fields {
                agent_address: info.agent_addr.to_string(),
                enterprise: enterprise.to_string(),
                generic_trap: info.generic_trap as i32,
                specific_trap: info.specific_trap as i32,
            }),
        };
        return Some((trap, None));
    }
    let kind = match pdu.message_type {
        MessageType::Trap => "trap",
        MessageType::InformRequest => "inform",
        _ => return None,
    };
    let find = |arcs: &[u32]| {
        varbinds
            .iter()
            .find(|vb| vb.oid.arcs() == arcs)
            .map(|vb| &vb.value)
    };
    let uptime = match find(&SYS_UPTIME) {
        Some(Value::TimeTicks(t)) => u64::from(*t),
        _ => 0,
    };
    let trap_oid = match find(&SNMP_TRAP_OID) {
        Some(Value::ObjectIdentifier(o)) => o.to_string(),
        _ => String::new(),
    };
    let ack = (kind == "inform")
        .then(|| ber::community_message(1, pdu.community, &response(pdu.req_id, &varbinds)));
    let trap = Trap {
        received,
        source,
        version: "2c",
        kind,
        trap_oid,
        uptime,
        varbinds,
        tenant_id: None,
        device_id: None,
        community: Some(pdu.community.to_vec()),
        v1: None,
    };
    Some((trap, ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_its_budget_a_second() {
        let mut budget = SourceBudget::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..V3_PER_SOURCE + 10)
            .filter(|_| budget.allow(a, 100))
            .count() as u32;
        assert_eq!(allowed, V3_PER_SOURCE, "ten over the budget refused");
        assert!(budget.allow(b, 100), "another source has its own budget");
        assert!(budget.allow(a, 101), "the next second starts again");
    }
}
