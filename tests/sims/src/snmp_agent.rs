//! A simulated SNMPv2c agent of a home gateway, from RFC 3416 (the protocol
//! operations) and RFC 1213 (the system group and interfaces table), on
//! rasn-snmp's message types. Community `public` reads; `private` reads and
//! writes sysContact, sysName, sysLocation and ifAdminStatus. Requests with
//! another community, or of another version, go unanswered, as agents do.
use rasn::types::{Integer, ObjectIdentifier, OctetString};
use rasn_smi::{
    v1::{Counter, Gauge, TimeTicks},
    v2::{ApplicationSyntax, ObjectSyntax, SimpleSyntax},
};
use rasn_snmp::{
    v2::{BulkPdu, Pdu, Pdus, Response, VarBind, VarBindValue},
    v2c::Message,
};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};
use tokio::net::UdpSocket;

/// RFC 3416 error-status values the agent uses.
const NOT_WRITABLE: u32 = 17;
const WRONG_TYPE: u32 = 7;
const WRONG_LENGTH: u32 = 8;
const NO_CREATION: u32 = 11;
const TOO_BIG: u32 = 1;
/// Varbinds in one GETBULK response, to stay within one datagram.
const MAX_BULK: usize = 256;

#[derive(Clone)]
enum Var {
    Fixed(ObjectSyntax),
    Writable(ObjectSyntax),
    /// sysUpTime: hundredths of a second since the agent started.
    UpTime,
    /// An octet counter growing at this many bytes a second.
    Octets {
        per_second: u64,
    },
}

/// A running simulated agent.
pub struct SnmpAgent {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SnmpAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Mib {
    vars: BTreeMap<Vec<u32>, Var>,
    started: Instant,
}

fn oid(arcs: &[u32]) -> ObjectIdentifier {
    ObjectIdentifier::new(arcs.to_vec()).expect("a valid OID")
}

fn text(s: &str) -> ObjectSyntax {
    ObjectSyntax::Simple(SimpleSyntax::String(OctetString::from(
        s.as_bytes().to_vec(),
    )))
}

fn int(n: i32) -> ObjectSyntax {
    ObjectSyntax::Simple(SimpleSyntax::Integer(Integer::from(n)))
}

impl Mib {
    /// A home gateway called `name`: the system group and three interfaces.
    fn gateway(name: &str, location: &str) -> Self {
        let system = |n: u32| vec![1, 3, 6, 1, 2, 1, 1, n, 0];
        let mut vars = BTreeMap::from([
            (
                system(1),
                Var::Fixed(text("rdm demo home gateway (simulated), firmware 1.0.0")),
            ),
            (
                system(2),
                Var::Fixed(ObjectSyntax::Simple(SimpleSyntax::ObjectId(oid(&[
                    1, 3, 6, 1, 4, 1, 8072, 3, 2, 10,
                ])))),
            ),
            (system(3), Var::UpTime),
            (system(4), Var::Writable(text("noc@example.net"))),
            (system(5), Var::Writable(text(name))),
            (system(6), Var::Writable(text(location))),
            (system(7), Var::Fixed(int(72))),
            (vec![1, 3, 6, 1, 2, 1, 2, 1, 0], Var::Fixed(int(3))),
        ]);
        let interfaces: [(&str, i32, u32, u64); 3] = [
            ("lo", 24, 10_000_000, 1_000),
            ("wan0", 6, 1_000_000_000, 250_000),
            ("lan0", 6, 1_000_000_000, 120_000),
        ];
        for (i, (descr, kind, speed, per_second)) in interfaces.into_iter().enumerate() {
            let index = i as u32 + 1;
            let column = |c: u32| vec![1, 3, 6, 1, 2, 1, 2, 2, 1, c, index];
            let gauge = ObjectSyntax::ApplicationWide(ApplicationSyntax::Unsigned(Gauge(speed)));
            vars.insert(column(1), Var::Fixed(int(index as i32)));
            vars.insert(column(2), Var::Fixed(text(descr)));
            vars.insert(column(3), Var::Fixed(int(kind)));
            vars.insert(column(4), Var::Fixed(int(1500)));
            vars.insert(column(5), Var::Fixed(gauge));
            vars.insert(column(7), Var::Writable(int(1)));
            vars.insert(column(8), Var::Fixed(int(1)));
            vars.insert(column(10), Var::Octets { per_second });
            vars.insert(
                column(16),
                Var::Octets {
                    per_second: per_second / 4,
                },
            );
        }
        Self {
            vars,
            started: Instant::now(),
        }
    }

    fn value(&self, var: &Var) -> ObjectSyntax {
        let elapsed = self.started.elapsed();
        match var {
            Var::Fixed(v) | Var::Writable(v) => v.clone(),
            Var::UpTime => ObjectSyntax::ApplicationWide(ApplicationSyntax::Ticks(TimeTicks(
                (elapsed.as_millis() / 10) as u32,
            ))),
            Var::Octets { per_second } => {
                let octets = (elapsed.as_secs_f64() * *per_second as f64) as u64;
                ObjectSyntax::ApplicationWide(ApplicationSyntax::Counter(Counter(octets as u32)))
            }
        }
    }

    fn get(&self, name: &[u32]) -> VarBindValue {
        match self.vars.get(name) {
            Some(var) => VarBindValue::Value(self.value(var)),
            // An instance of a known object, or no such object at all.
            None if self
                .vars
                .keys()
                .any(|k| k[..k.len() - 1] == name[..name.len().saturating_sub(1)]) =>
            {
                VarBindValue::NoSuchInstance
            }
            None => VarBindValue::NoSuchObject,
        }
    }

    fn next(&self, name: &[u32]) -> VarBind {
        let after = self
            .vars
            .range::<[u32], _>((std::ops::Bound::Excluded(name), std::ops::Bound::Unbounded))
            .next();
        match after {
            Some((k, var)) => VarBind {
                name: oid(k),
                value: VarBindValue::Value(self.value(var)),
            },
            None => VarBind {
                name: oid(name),
                value: VarBindValue::EndOfMibView,
            },
        }
    }

    /// A SET: every varbind checked before any is written (RFC 3416 4.2.5).
    fn set(&mut self, binds: &[VarBind]) -> Result<(), (u32, u32)> {
        for (i, vb) in binds.iter().enumerate() {
            let index = i as u32 + 1;
            let VarBindValue::Value(new) = &vb.value else {
                return Err((WRONG_TYPE, index));
            };
            match self.vars.get(&vb.name.to_vec()) {
                None => return Err((NO_CREATION, index)),
                Some(Var::Writable(old)) => {
                    if !same_syntax(old, new) {
                        return Err((WRONG_TYPE, index));
                    }
                    if let ObjectSyntax::Simple(SimpleSyntax::String(s)) = new
                        && s.len() > 255
                    {
                        return Err((WRONG_LENGTH, index));
                    }
                }
                Some(_) => return Err((NOT_WRITABLE, index)),
            }
        }
        for vb in binds {
            if let VarBindValue::Value(new) = &vb.value {
                self.vars
                    .insert(vb.name.to_vec(), Var::Writable(new.clone()));
            }
        }
        Ok(())
    }
}

fn same_syntax(a: &ObjectSyntax, b: &ObjectSyntax) -> bool {
    use std::mem::discriminant;
    match (a, b) {
        (ObjectSyntax::Simple(x), ObjectSyntax::Simple(y)) => discriminant(x) == discriminant(y),
        (ObjectSyntax::ApplicationWide(x), ObjectSyntax::ApplicationWide(y)) => {
            discriminant(x) == discriminant(y)
        }
        _ => false,
    }
}

/// Starts an agent named `name` on `addr` (port 0: any free port).
pub async fn start(addr: SocketAddr, name: &str, location: &str) -> std::io::Result<SnmpAgent> {
    let socket = UdpSocket::bind(addr).await?;
    let addr = socket.local_addr()?;
    let mib = Arc::new(Mutex::new(Mib::gateway(name, location)));
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                continue;
            };
            let reply = {
                let mut mib = mib.lock().unwrap_or_else(|p| p.into_inner());
                answer(&mut mib, &buf[..n])
            };
            if let Some(reply) = reply {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    });
    tracing::info!(%addr, name, "simulated snmp agent (v2c, communities public and private)");
    Ok(SnmpAgent { addr, task })
}

fn answer(mib: &mut Mib, datagram: &[u8]) -> Option<Vec<u8>> {
    let request: Message<Pdus> = rasn::ber::decode(datagram).ok()?;
    let writer = match request.community.as_ref() {
        b"public" => false,
        b"private" => true,
        _ => return None,
    };
    if request.version != Integer::from(1) {
        return None;
    }
    let response = |request_id, (error_status, error_index), variable_bindings| Pdu {
        request_id,
        error_status,
        error_index,
        variable_bindings,
    };
    let pdu = match request.data {
        Pdus::GetRequest(r) => {
            let binds =
                r.0.variable_bindings
                    .iter()
                    .map(|vb| VarBind {
                        name: vb.name.clone(),
                        value: mib.get(&vb.name),
                    })
                    .collect();
            response(r.0.request_id, (0, 0), binds)
        }
        Pdus::GetNextRequest(r) => {
            let binds =
                r.0.variable_bindings
                    .iter()
                    .map(|vb| mib.next(&vb.name))
                    .collect();
            response(r.0.request_id, (0, 0), binds)
        }
        Pdus::GetBulkRequest(r) => bulk(mib, &r.0),
        Pdus::SetRequest(r) if writer => {
            let status = mib.set(&r.0.variable_bindings).err().unwrap_or((0, 0));
            response(r.0.request_id, status, r.0.variable_bindings)
        }
        // A read-only community may not write: noAccess (RFC 3416 4.2.5).
        Pdus::SetRequest(r) => response(r.0.request_id, (6, 1), r.0.variable_bindings),
        _ => return None,
    };
    let reply = Message {
        version: request.version,
        community: request.community,
        data: Pdus::Response(Response(pdu)),
    };
    let bytes = rasn::ber::encode(&reply).ok()?;
    if bytes.len() <= 65_507 {
        return Some(bytes);
    }
    let empty = Message {
        data: Pdus::Response(Response(Pdu {
            request_id: match &reply.data {
                Pdus::Response(r) => r.0.request_id,
                _ => 0,
            },
            error_status: TOO_BIG,
            error_index: 0,
            variable_bindings: Vec::new(),
        })),
        ..reply
    };
    rasn::ber::encode(&empty).ok()
}

/// RFC 3416 4.2.3: the non-repeaters once, then the rest `max_repetitions` times.
fn bulk(mib: &Mib, r: &BulkPdu) -> Pdu {
    let split = (r.non_repeaters as usize).min(r.variable_bindings.len());
    let (once, repeated) = r.variable_bindings.split_at(split);
    let mut binds: Vec<VarBind> = once.iter().map(|vb| mib.next(&vb.name)).collect();
    let mut last: Vec<Vec<u32>> = repeated.iter().map(|vb| vb.name.to_vec()).collect();
    'rounds: for _ in 0..r.max_repetitions {
        let mut all_ended = true;
        for name in &mut last {
            if binds.len() >= MAX_BULK {
                break 'rounds;
            }
            let vb = mib.next(name);
            all_ended &= vb.value == VarBindValue::EndOfMibView;
            *name = vb.name.to_vec();
            binds.push(vb);
        }
        if all_ended || last.is_empty() {
            break;
        }
    }
    Pdu {
        request_id: r.request_id,
        error_status: 0,
        error_index: 0,
        variable_bindings: binds,
    }
}
