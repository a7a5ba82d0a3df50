//! SNMPv3 USM around snmp2: engine discovery cached per agent, localized
//! keys cached per engine and user (deriving them hashes a megabyte), and
//! USM reports turned into errors that say what is wrong.
use crate::engine::{
    ber::{self, UsmHeader},
    error::SnmpError,
    oid::Oid,
    target::{Target, UsmUser},
};
use sha2::{Digest, Sha256};
use snmp2::v3::{Auth, KeyExtension, Security};
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};
use tokio::sync::OnceCell;

/// What discovery learned of an agent's engine.
#[derive(Clone, Debug)]
pub struct Discovered {
    pub engine_id: Vec<u8>,
    pub boots: i64,
    pub time: i64,
    pub at: Instant,
}

impl Discovered {
    pub fn from_header(usm: &UsmHeader) -> Option<Self> {
        (!usm.engine_id.is_empty()).then(|| Self {
            engine_id: usm.engine_id.clone(),
            boots: usm.boots,
            time: usm.time,
            at: Instant::now(),
        })
    }
}

type Slot<T> = Arc<OnceCell<T>>;

#[derive(Default)]
pub struct EngineCache {
    engines: Mutex<HashMap<SocketAddr, Slot<Discovered>>>,
    keys: Mutex<HashMap<[u8; 32], Slot<Arc<Security>>>>,
}

fn slot<K: std::hash::Hash + Eq, T>(map: &Mutex<HashMap<K, Slot<T>>>, key: K) -> Slot<T> {
    // A poisoned lock only means another request panicked mid-insert; the map is still whole.
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    map.entry(key).or_default().clone()
}

impl EngineCache {
    /// The agent's engine, discovering it once however many ask at a time.
    pub async fn engine<F, Fut>(
        &self,
        addr: SocketAddr,
        discover: F,
    ) -> Result<Discovered, SnmpError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Discovered, SnmpError>>,
    {
        let cell = slot(&self.engines, addr);
        let found = cell.get_or_try_init(discover).await?.clone();
        Ok(found)
    }

    /// Forgets an agent's engine (it rebooted, or its clock moved).
    pub fn forget(&self, addr: SocketAddr) {
        self.engines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
    }

    /// A security context for `user` at `engine`, its clock advanced to now.
    pub async fn security(
        &self,
        target: &Target,
        user: &UsmUser,
        engine: &Discovered,
    ) -> Result<Security, SnmpError> {
        let cell = slot(&self.keys, fingerprint(&engine.engine_id, user));
        let keyed = cell
            .get_or_try_init(|| async {
                let (user, engine_id) = (user.clone(), engine.engine_id.clone());
                tokio::task::spawn_blocking(move || localized(&user, &engine_id))
                    .await
                    .map_err(|e| e.to_string())?
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await
            .map_err(|reason| SnmpError::Auth {
                op: "key localization",
                addr: target.addr,
                reason,
            })?;
        let elapsed = i64::try_from(engine.at.elapsed().as_secs()).unwrap_or(i64::MAX / 2);
        Ok(Security::clone(keyed).with_engine_boots_and_time(engine.boots, engine.time + elapsed))
    }
}

/// The cache key of a user's keys at an engine: a digest, so no password
/// sits in a map key.
fn fingerprint(engine_id: &[u8], user: &UsmUser) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    field(engine_id);
    field(&user.username);
    if let Some((proto, pass)) = &user.auth {
        field(format!("{proto:?}").as_bytes());
        field(pass);
    }
    if let Some((cipher, pass)) = &user.privacy {
        field(format!("{cipher:?}").as_bytes());
        field(pass);
    }
    h.finalize().into()
}

/// snmp2's security context with keys localized to `engine_id`.
fn localized(user: &UsmUser, engine_id: &[u8]) -> Result<Security, snmp2::Error> {
    let Some((proto, auth_pass)) = &user.auth else {
        return Security::new(&user.username, b"")
            .with_auth(Auth::NoAuthNoPriv)
            .with_engine_id(engine_id);
    };
    let mut security = Security::new(&user.username, auth_pass).with_auth_protocol(*proto);
    security = match &user.privacy {
        None => security.with_auth(Auth::AuthNoPriv),
        Some((cipher, priv_pass)) => {
            if cipher.priv_key_needs_extension(proto) {
                // net-snmp's AES-192/256 extend short keys as Blumenthal's draft does.
                security = security.with_key_extension_method(KeyExtension::Blumenthal);
            }
            security.with_auth(Auth::AuthPriv {
                cipher: *cipher,
                privacy_password: priv_pass.clone(),
            })
        }
    };
    security.with_engine_id(engine_id)
}

/// An engine id used only to build a request in the clear for snmp2 to
/// re-encode under the real security (snmp2 does not expose its builders).
const STAGING_ENGINE: &[u8] = b"rdm-staging";

/// A v3 request: the PDU built here, signed and encrypted by snmp2.
pub fn encode_request(
    security: &Security,
    tag: u8,
    id: i32,
    a: i64,
    b: i64,
    varbinds: &[(Oid, crate::engine::value::Value)],
) -> Result<Vec<u8>, snmp2::Error> {
    let mut pdu = Vec::new();
    ber::pdu(&mut pdu, tag, id, a, b, varbinds);
    let header = UsmHeader {
        engine_id: STAGING_ENGINE.to_vec(),
        username: security.username().to_vec(),
        ..UsmHeader::default()
    };
    let plain = ber::plain_v3_message(
        id,
        snmp2::snmp::V3_MSG_FLAGS_REPORTABLE,
        &header,
        STAGING_ENGINE,
        &pdu,
    );
    let mut staging = Security::new(security.username(), b"")
        .with_auth(Auth::NoAuthNoPriv)
        .with_engine_id(STAGING_ENGINE)?;
    let parsed = snmp2::Pdu::from_bytes_with_security(&plain, Some(&mut staging))?;
    parsed.to_bytes_with_security(Some(security))
}

/// The discovery probe of RFC 3414 section 4: no user, no engine id.
pub fn discovery_probe(id: i32) -> Vec<u8> {
    let mut pdu = Vec::new();
    ber::pdu(&mut pdu, snmp2::snmp::MSG_GET, id, 0, 0, &[]);
    ber::plain_v3_message(
        id,
        snmp2::snmp::V3_MSG_FLAGS_REPORTABLE,
        &UsmHeader::default(),
        &[],
        &pdu,
    )
}

/// What a USM report means for the request that drew it.
pub enum Report {
    /// The agent's clock or engine moved: discover again and retry.
    Stale,
    Refused(&'static str),
    Unknown(String),
}

pub fn report(oid: Option<&Oid>) -> Report {
    const USM_STATS: [u32; 9] = [1, 3, 6, 1, 6, 3, 15, 1, 1];
    let Some(oid) = oid else {
        return Report::Unknown("an empty report".into());
    };
    let arcs = oid.arcs();
    if !arcs.starts_with(&USM_STATS) {
        return Report::Unknown(format!("a report of {oid}"));
    }
    match arcs.get(USM_STATS.len()) {
        Some(2 | 4) => Report::Stale,
        Some(1) => Report::Refused(
            "unsupported security level for this user (usmStatsUnsupportedSecLevels)",
        ),
        Some(3) => Report::Refused("unknown user name (usmStatsUnknownUserNames)"),
        Some(5) => Report::Refused(
            "wrong digest: the auth password or protocol does not match (usmStatsWrongDigests)",
        ),
        Some(6) => Report::Refused(
            "decryption error: the privacy password or protocol does not match (usmStatsDecryptionErrors)",
        ),
        _ => Report::Unknown(format!("a report of {oid}")),
    }
}
