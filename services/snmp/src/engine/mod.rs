//! The SNMP protocol engine, which knows nothing of gRPC: requests with
//! timeouts, retries (exponential backoff with jitter) and request-id
//! matching over pooled UDP sockets, v3 security (usm.rs), walks and
//! their safeguards.
pub mod ber;
pub mod error;
pub mod oid;
pub mod target;
pub mod usm;
pub mod value;
pub mod walk;

use ber::UsmHeader;
use error::{SnmpError, status_name};
use oid::Oid;
use rand::Rng;
use snmp2::{MessageType, snmp};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Instant,
};
use target::{Credentials, Target, UsmUser, Version};
use tokio::{
    net::UdpSocket,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use usm::{Discovered, EngineCache, Report};
use value::{Value, VarBind};

/// The security-level bits of a v3 message's flags.
const LEVEL: u8 = snmp::V3_MSG_FLAGS_AUTH | snmp::V3_MSG_FLAGS_PRIVACY;

/// One request's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    GetNext,
    GetBulk {
        non_repeaters: u32,
        max_repetitions: u32,
    },
    Set,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::GetNext => "getnext",
            Self::GetBulk { .. } => "getbulk",
            Self::Set => "set",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Self::Get => snmp::MSG_GET,
            Self::GetNext => snmp::MSG_GET_NEXT,
            Self::GetBulk { .. } => snmp::MSG_GET_BULK,
            Self::Set => snmp::MSG_SET,
        }
    }

    fn ints(self) -> (i64, i64) {
        match self {
            Self::GetBulk {
                non_repeaters,
                max_repetitions,
            } => (non_repeaters.into(), max_repetitions.into()),
            _ => (0, 0),
        }
    }
}

/// Sockets bound to an ephemeral port, reused across requests. A reply that
/// arrives after its request gave up is read by the socket's next user and
/// dropped for its request id.
#[derive(Default)]
struct SocketPool {
    idle: Mutex<Vec<(bool, UdpSocket)>>,
}

const POOL_MAX: usize = 1024;
const RECV_BUF: usize = 65_536;
/// The largest UDP payload over IPv4 (65,535 less the IP and UDP headers).
const MAX_DATAGRAM: usize = 65_507;

impl SocketPool {
    async fn take(&self, addr: SocketAddr) -> std::io::Result<UdpSocket> {
        let v6 = addr.is_ipv6();
        let found = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter()
                .rposition(|(is_v6, _)| *is_v6 == v6)
                .map(|i| idle.swap_remove(i).1)
        };
        match found {
            Some(socket) => Ok(socket),
            None if v6 => UdpSocket::bind("[::]:0").await,
            None => UdpSocket::bind("0.0.0.0:0").await,
        }
    }

    fn give(&self, addr: SocketAddr, socket: UdpSocket) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_MAX {
            idle.push((addr.is_ipv6(), socket));
        }
    }
}

/// What one received datagram meant to the request waiting for it.
enum Heard<T> {
    /// Not for this request (another request's, late, or garbage): keep waiting.
    NotOurs,
    Done(Result<T, Failure>),
}

/// Why an exchange failed.
enum Failure {
    /// The agent's engine boots or clock moved: discover it again.
    Stale,
    Error(SnmpError),
}

impl From<SnmpError> for Failure {
    fn from(e: SnmpError) -> Self {
        Self::Error(e)
    }
}

pub struct Engine {
    sockets: SocketPool,
    usm: EngineCache,
    next_id: AtomicU32,
    agents: AgentLimits,
}

impl Default for Engine {
    fn default() -> Self {
        Self {
            sockets: SocketPool::default(),
            usm: EngineCache::default(),
            next_id: AtomicU32::new(rand::thread_rng().gen_range(1..1 << 30)),
            agents: AgentLimits::default(),
        }
    }
}

/// What bounds the requests in flight to each agent, across every call: a
/// semaphore of [`AgentLimits::PERMITS`] per agent address, of which a
/// request takes `PERMITS / max_in_flight`. So a request of a call that
/// allows 3 in flight takes a third, one of a serial call all of them, and
/// however calls with different limits mix, no more requests are in flight
/// than the largest limit among them allows. An agent's entry lives while
/// a request to it does.
#[derive(Default)]
struct AgentLimits {
    agents: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
}

/// A request's share of its agent, given back when dropped.
struct AgentSlot<'a> {
    limits: &'a AgentLimits,
    addr: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl AgentLimits {
    /// 1..=8 all divide it.
    const PERMITS: u32 = 840;

    async fn take(&self, addr: SocketAddr, max_in_flight: u32) -> AgentSlot<'_> {
        let semaphore = {
            let mut agents = self.agents.lock().unwrap_or_else(|p| p.into_inner());
            agents
                .entry(addr)
                .or_insert_with(|| Arc::new(Semaphore::new(Self::PERMITS as usize)))
                .clone()
        };
        let share = Self::PERMITS / max_in_flight.clamp(1, Target::MAX_IN_FLIGHT);
        let permit = semaphore
            .acquire_many_owned(share)
            .await
            .expect("an agent's semaphore is never closed");
        AgentSlot {
            limits: self,
            addr,
            permit: Some(permit),
        }
    }
}

impl Drop for AgentSlot<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut agents = self.limits.agents.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map holds it now: no request to this agent is waiting.
        if agents
            .get(&self.addr)
            .is_some_and(|s| Arc::strong_count(s) == 1)
        {
            agents.remove(&self.addr);
        }
    }
}

impl Engine {
    pub async fn get(&self, t: &Target, oids: &[Oid]) -> Result<Vec<VarBind>, SnmpError> {
        self.request(t, Op::Get, &nulls(oids)).await
    }

    pub async fn set(
        &self,
        t: &Target,
        values: &[(Oid, Value)],
    ) -> Result<Vec<VarBind>, SnmpError> {
        self.request(t, Op::Set, values).await
    }

    /// One request and its reply, with v3 discovery (once more if the agent
    /// says our view of its engine is stale); its outcome is counted in
    /// `rdm_snmp_requests_total{op, outcome}`.
    pub async fn request(
        &self,
        t: &Target,
        op: Op,
        varbinds: &[(Oid, Value)],
    ) -> Result<Vec<VarBind>, SnmpError> {
        let slot = self.agents.take(t.addr, t.max_in_flight).await;
        let result = self.request_once(t, op, varbinds).await;
        drop(slot);
        let outcome = match &result {
            Ok(_) => "ok",
            Err(SnmpError::Timeout { .. }) => "timeout",
            Err(SnmpError::Unreachable { .. }) => "unreachable",
            Err(SnmpError::Auth { .. }) => "auth_failure",
            Err(SnmpError::Status { .. } | SnmpError::Protocol { .. }) => "device_error",
            Err(SnmpError::TooLarge { .. }) => "too_large",
        };
        metrics::counter!("rdm_snmp_requests_total", "op" => op.name(), "outcome" => outcome)
            .increment(1);
        result
    }

    async fn request_once(
        &self,
        t: &Target,
        op: Op,
        varbinds: &[(Oid, Value)],
    ) -> Result<Vec<VarBind>, SnmpError> {
        if t.version == Version::V1 && matches!(op, Op::GetBulk { .. }) {
            return Err(SnmpError::Protocol {
                op: op.name(),
                addr: t.addr,
                reason: "GETBULK needs SNMP v2c or v3 (v1 has only GETNEXT)".into(),
            });
        }
        let Credentials::Usm(user) = &t.credentials else {
            return self.exchange_community(t, op, varbinds).await;
        };
        for fresh in [false, true] {
            let engine = self.usm.engine(t.addr, || self.discover(t)).await?;
            let keys = self.usm.keys(user, &engine.engine_id).await;
            match self
                .exchange_v3(t, op, varbinds, user, &engine, &keys)
                .await
            {
                Ok(found) => return Ok(found),
                Err(Failure::Error(e)) => return Err(e),
                Err(Failure::Stale) if fresh => break,
                Err(Failure::Stale) => self.usm.forget(t.addr),
            }
        }
        Err(SnmpError::Auth {
            op: op.name(),
            addr: t.addr,
            reason: "the agent rejected its own engine id or time twice (usmStatsNotInTimeWindows)"
                .into(),
        })
    }

    async fn exchange_community(
        &self,
        t: &Target,
        op: Op,
        varbinds: &[(Oid, Value)],
    ) -> Result<Vec<VarBind>, SnmpError> {
        let Credentials::Community(community) = &t.credentials else {
            unreachable!("only called for community targets");
        };
        let (a, b) = op.ints();
        let result = self
            .exchange(
                t,
                op.name(),
                |id| {
                    let mut pdu = Vec::new();
                    ber::pdu(&mut pdu, op.tag(), id, a, b, varbinds);
                    Ok(ber::community_message(t.version.wire(), community, &pdu))
                },
                |bytes, ids| {
                    let Ok(pdu) = snmp2::Pdu::from_bytes(bytes) else {
                        return Heard::NotOurs;
                    };
                    if !ids.contains(&pdu.req_id)
                        || pdu.message_type != MessageType::Response
                        || pdu.community != community.as_slice()
                    {
                        return Heard::NotOurs;
                    }
                    Heard::Done(response(t, op, varbinds, &pdu).map_err(Failure::Error))
                },
            )
            .await;
        result.map_err(|f| match f {
            Failure::Error(e) => e,
            Failure::Stale => unreachable!("community exchanges have no engine state"),
        })
    }

    async fn exchange_v3(
        &self,
        t: &Target,
        op: Op,
        varbinds: &[(Oid, Value)],
        user: &UsmUser,
        engine: &Discovered,
        keys: &usm::Keys,
    ) -> Result<Vec<VarBind>, Failure> {
        let (a, b) = op.ints();
        let refused = |reason: String| {
            Failure::Error(SnmpError::Auth {
                op: op.name(),
                addr: t.addr,
                reason,
            })
        };
        let undecodable = || {
            Heard::Done(Err(Failure::Error(SnmpError::Protocol {
                op: op.name(),
                addr: t.addr,
                reason: "undecodable reply".into(),
            })))
        };
        self.exchange(
            t,
            op.name(),
            |id| {
                let mut pdu = Vec::new();
                ber::pdu(&mut pdu, op.tag(), id, a, b, varbinds);
                let usm = UsmHeader {
                    engine_id: engine.engine_id.clone(),
                    boots: engine.boots,
                    time: engine.time_now(),
                    username: user.username.clone(),
                };
                let scoped = ber::scoped_pdu(&engine.engine_id, &user.context_name, &pdu);
                Ok(usm::seal(keys, id, true, &usm, &scoped))
            },
            |bytes, ids| {
                let Some(ber::Header::V3(m)) = ber::header(bytes) else {
                    return Heard::NotOurs;
                };
                if !ids.contains(&m.msg_id) {
                    return Heard::NotOurs;
                }
                let scoped = match usm::open(keys, bytes, &m) {
                    Ok(scoped) => scoped,
                    Err(why) => {
                        return Heard::Done(Err(refused(format!(
                            "the reply failed USM checks: {why}"
                        ))));
                    }
                };
                let Some(scoped) = ber::scoped(&scoped) else {
                    return undecodable();
                };
                let Ok(pdu) = snmp2::Pdu::from_bytes(&scoped.message) else {
                    return undecodable();
                };
                match pdu.message_type {
                    // Reports about our credentials or clock come with less security.
                    MessageType::Report => {
                        let oid = pdu
                            .varbinds
                            .clone()
                            .next()
                            .and_then(|(o, _)| Oid::try_from(&o).ok());
                        Heard::Done(Err(from_report(t, op, oid.as_ref())))
                    }
                    MessageType::Response if ids.contains(&pdu.req_id) => {
                        if m.flags & LEVEL != keys.level() {
                            return Heard::Done(Err(refused(
                                "the agent replied without the security the user requires".into(),
                            )));
                        }
                        Heard::Done(response(t, op, varbinds, &pdu).map_err(Failure::Error))
                    }
                    _ => Heard::NotOurs,
                }
            },
        )
        .await
    }

    /// RFC 3414 discovery: the agent's engine id, boots and time from the
    /// report it sends to a probe with no user.
    async fn discover(&self, t: &Target) -> Result<Discovered, SnmpError> {
        let found = self
            .exchange(
                t,
                "discovery",
                |id| Ok(usm::discovery_probe(id)),
                |bytes, ids| match ber::header(bytes) {
                    Some(ber::Header::V3(m)) if ids.contains(&m.msg_id) => {
                        Heard::Done(Discovered::from_header(&m.usm).ok_or_else(|| {
                            Failure::Error(SnmpError::Protocol {
                                op: "discovery",
                                addr: t.addr,
                                reason: "the agent reported no engine id".into(),
                            })
                        }))
                    }
                    _ => Heard::NotOurs,
                },
            )
            .await;
        match found {
            Ok(d) => {
                tracing::debug!(addr = %t.addr, engine_id = %hex::encode(&d.engine_id), boots = d.boots, "snmp engine discovered");
                Ok(d)
            }
            Err(Failure::Error(e)) => Err(e),
            Err(Failure::Stale) => unreachable!("discovery decodes no security"),
        }
    }

    fn next_id(&self) -> i32 {
        // Request ids stay positive; wrapping back to 1 is fine (ids only
        // need to differ among requests in flight on one socket).
        let n = self.next_id.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff;
        n.max(1) as i32
    }

    /// Sends, waits, and resends with backoff until `decode` hears its
    /// reply or the attempts run out. Every id this request sent is
    /// accepted, so a slow reply to an earlier attempt still counts.
    async fn exchange<T>(
        &self,
        t: &Target,
        op: &'static str,
        mut encode: impl FnMut(i32) -> Result<Vec<u8>, SnmpError>,
        mut decode: impl FnMut(&[u8], &[i32]) -> Heard<T>,
    ) -> Result<T, Failure> {
        let unreachable = |e: std::io::Error| SnmpError::Unreachable {
            op,
            addr: t.addr,
            reason: e.to_string(),
        };
        let socket = self.sockets.take(t.addr).await.map_err(unreachable)?;
        let mut buf = vec![0u8; RECV_BUF];
        let mut ids = Vec::with_capacity(t.retries as usize + 1);
        let started = Instant::now();
        for attempt in 0..=t.retries {
            let id = self.next_id();
            ids.push(id);
            let message = encode(id)?;
            if message.len() > MAX_DATAGRAM {
                return Err(SnmpError::TooLarge {
                    op,
                    addr: t.addr,
                    bytes: message.len(),
                    max: MAX_DATAGRAM,
                }
                .into());
            }
            socket
                .send_to(&message, t.addr)
                .await
                .map_err(unreachable)?;
            let jitter = if attempt == 0 {
                1.0
            } else {
                rand::thread_rng().gen_range(0.9..1.1)
            };
            let deadline = tokio::time::Instant::now() + t.attempt_window(attempt, jitter);
            while let Ok(received) =
                tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
            {
                let (n, from) = match received {
                    Ok(got) => got,
                    // ICMP errors for earlier sends surface here on some systems; the attempt goes on.
                    Err(e) => {
                        tracing::debug!(addr = %t.addr, error = %e, "snmp receive error");
                        continue;
                    }
                };
                if from != t.addr {
                    continue;
                }
                match decode(&buf[..n], &ids) {
                    Heard::NotOurs => {
                        tracing::debug!(addr = %t.addr, "dropped a late or foreign snmp datagram")
                    }
                    Heard::Done(result) => {
                        self.sockets.give(t.addr, socket);
                        return result;
                    }
                }
            }
        }
        self.sockets.give(t.addr, socket);
        Err(Failure::Error(SnmpError::Timeout {
            op,
            addr: t.addr,
            attempts: t.retries + 1,
            waited: started.elapsed(),
        }))
    }
}

/// Variables to read: the OIDs with NULL values.
pub fn nulls(oids: &[Oid]) -> Vec<(Oid, Value)> {
    oids.iter().map(|o| (o.clone(), Value::Null)).collect()
}

fn from_report(t: &Target, op: Op, oid: Option<&Oid>) -> Failure {
    match usm::report(oid) {
        Report::Stale => Failure::Stale,
        Report::Refused(reason) => Failure::Error(SnmpError::Auth {
            op: op.name(),
            addr: t.addr,
            reason: reason.into(),
        }),
        Report::Unknown(what) => Failure::Error(SnmpError::Protocol {
            op: op.name(),
            addr: t.addr,
            reason: format!("the agent answered with {what}"),
        }),
    }
}

/// A response's varbinds, or its error-status as an error.
fn response(
    t: &Target,
    op: Op,
    sent: &[(Oid, Value)],
    pdu: &snmp2::Pdu<'_>,
) -> Result<Vec<VarBind>, SnmpError> {
    if pdu.error_status != 0 {
        let index = pdu.error_index;
        let oid = index
            .checked_sub(1)
            .and_then(|i| sent.get(i as usize))
            .map(|(o, _)| o.clone());
        return Err(SnmpError::Status {
            op: op.name(),
            addr: t.addr,
            status: status_name(pdu.error_status),
            index,
            oid,
        });
    }
    pdu.varbinds
        .clone()
        .map(|(oid, v)| {
            let oid = Oid::try_from(&oid).ok();
            let value = Value::from_wire(&v);
            oid.zip(value).map(|(oid, value)| VarBind { oid, value })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| SnmpError::Protocol {
            op: op.name(),
            addr: t.addr,
            reason: "the reply holds a varbind that is not an SNMP value".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::atomic::AtomicUsize, time::Duration};

    /// Calls with limits 3 and 1 on one agent, many at once: never more than
    /// three requests hold the agent, and a serial call's request holds it
    /// alone; the agent's entry goes once nothing holds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_in_flight_to_an_agent_stay_under_its_limit() {
        let limits = Arc::new(AgentLimits::default());
        let addr: SocketAddr = ([127, 0, 0, 1], 161).into();
        let (held, most, serial_with_others) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..40u32 {
            let (limits, held, most, shared) = (
                limits.clone(),
                held.clone(),
                most.clone(),
                serial_with_others.clone(),
            );
            let cap = if i % 5 == 0 { 1 } else { 3 };
            tasks.spawn(async move {
                let _slot = limits.take(addr, cap).await;
                let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                if cap == 1 && held.load(Ordering::SeqCst) > 1 {
                    shared.fetch_add(1, Ordering::SeqCst);
                }
                held.fetch_sub(1, Ordering::SeqCst);
            });
        }
        while tasks.join_next().await.is_some() {}
        let most = most.load(Ordering::SeqCst);
        assert!((2..=3).contains(&most), "{most} at once");
        assert_eq!(serial_with_others.load(Ordering::SeqCst), 0);
        assert!(limits.agents.lock().unwrap().is_empty());
    }
}
