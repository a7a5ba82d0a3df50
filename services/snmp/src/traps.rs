//! Receiving notifications: v1 and v2c traps, and v2c informs (which are
//! acknowledged), on one UDP port; each watcher sees those sent from the
//! addresses of its own tenant's devices.
use crate::engine::{
    ber,
    oid::Oid,
    value::{Value, VarBind},
};
use futures::Stream;
use rdm_kit::{Principal, Result, client::Forward, invoke::Backend};
use rdm_proto::{
    inventory::{self as inv, device_service_client::DeviceServiceClient},
    snmp as pb,
};
use snmp2::{MessageType, snmp};
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::{net::UdpSocket, sync::broadcast};

const SYS_UPTIME: [u32; 9] = [1, 3, 6, 1, 2, 1, 1, 3, 0];
const SNMP_TRAP_OID: [u32; 11] = [1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
/// How often a watcher re-reads its tenant's device addresses.
const DEVICE_REFRESH: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Trap {
    pub received: SystemTime,
    pub source: SocketAddr,
    pub version: &'static str,
    pub kind: &'static str,
    pub trap_oid: String,
    pub uptime: u64,
    pub varbinds: Vec<VarBind>,
}

/// The listener's fan-out to watchers.
#[derive(Clone)]
pub struct TrapHub {
    tx: broadcast::Sender<Arc<Trap>>,
    pub addr: SocketAddr,
}

impl TrapHub {
    /// Listens on `addr` until the process ends.
    pub async fn listen(addr: SocketAddr) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
        let hub = Self {
            tx: broadcast::channel(1024).0,
            addr: socket.local_addr()?,
        };
        let tx = hub.tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                match decode(&buf[..n], from) {
                    Some((trap, ack)) => {
                        if let Some(ack) = ack
                            && let Err(e) = socket.send_to(&ack, from).await
                        {
                            tracing::debug!(%from, error = %e, "cannot acknowledge an inform");
                        }
                        // No watcher is not an error.
                        let _ = tx.send(Arc::new(trap));
                    }
                    None => {
                        tracing::debug!(%from, bytes = n, "dropped a datagram that is no v1/v2c trap or inform")
                    }
                }
            }
        });
        tracing::info!(addr = %hub.addr, "snmp trap listener");
        Ok(hub)
    }

    /// Traps from the caller's tenant's devices, from now on.
    pub async fn watch(
        &self,
        inventory: Backend,
        p: Principal,
    ) -> Result<impl Stream<Item = pb::WatchTrapsResponse> + use<>> {
        let mut rx = self.tx.subscribe();
        let mut devices = device_addresses(&inventory, &p).await?;
        let mut refreshed = tokio::time::Instant::now();
        Ok(async_stream::stream! {
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
                        devices = fresh;
                    }
                    refreshed = tokio::time::Instant::now();
                }
                if let Some(device_id) = devices.get(&trap.source.ip()) {
                    yield to_pb(&trap, device_id);
                }
            }
        })
    }
}

/// Address -> device id, for every device of the caller's tenant with an IP address.
async fn device_addresses(inventory: &Backend, p: &Principal) -> Result<HashMap<IpAddr, String>> {
    let mut client =
        DeviceServiceClient::with_interceptor(inventory.clone(), Forward::new(Some(p), None));
    let mut out = HashMap::new();
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
                out.insert(ip, d.id);
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

fn to_pb(t: &Trap, device_id: &str) -> pb::WatchTrapsResponse {
    pb::WatchTrapsResponse {
        receive_time: Some(prost_types::Timestamp::from(t.received)),
        source: t.source.to_string(),
        device_id: device_id.to_owned(),
        version: t.version.to_owned(),
        kind: t.kind.to_owned(),
        trap_oid: t.trap_oid.clone(),
        uptime: t.uptime,
        varbinds: crate::to_pb(t.varbinds.clone()),
    }
}

/// A trap or inform, and for an inform the response that acknowledges it.
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
        let trap = Trap {
            received,
            source,
            version: "1",
            kind: "trap",
            trap_oid,
            uptime: info.timestamp.into(),
            varbinds,
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
    let ack = (kind == "inform").then(|| {
        let echoed: Vec<(Oid, Value)> = varbinds
            .iter()
            .map(|vb| (vb.oid.clone(), vb.value.clone()))
            .collect();
        let mut response = Vec::new();
        ber::pdu(&mut response, snmp::MSG_RESPONSE, pdu.req_id, 0, 0, &echoed);
        ber::community_message(1, pdu.community, &response)
    });
    let trap = Trap {
        received,
        source,
        version: "2c",
        kind,
        trap_oid,
        uptime,
        varbinds,
    };
    Some((trap, ack))
}
