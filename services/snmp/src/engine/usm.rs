//! SNMPv3's User-based Security Model (RFC 3414, RFC 3826, RFC 7860, and
//! the Blumenthal draft for AES-192/256): keys, digests, ciphers, and the
//! messages they secure, on RustCrypto's primitives. snmp2 cannot do this
//! part for us: it hides its keys, always sends the request id as the
//! message id (an inform's acknowledgement must echo the inform's), and
//! derives every key from scratch (a megabyte hashed per agent and user).
//! Also: engine discovery cached per agent, password keys cached per
//! password, and USM reports turned into errors that say what is wrong.
use crate::engine::{
    ber::{self, UsmHeader, V3In},
    oid::Oid,
    target::UsmUser,
};
use aes::cipher::{
    AsyncStreamCipher, BlockCipher, BlockDecryptMut, BlockEncryptMut, KeyInit, KeyIvInit,
    block_padding::NoPadding,
};
use hmac::{Mac, SimpleHmac};
use rand::Rng;
use sha2::{Digest, Sha256, digest::core_api::BlockSizeUser};
use snmp2::{
    snmp,
    v3::{AuthProtocol, Cipher},
};
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

    /// The agent's clock now, as far as we can tell.
    pub fn time_now(&self) -> i64 {
        self.time + i64::try_from(self.at.elapsed().as_secs()).unwrap_or(i64::MAX / 2)
    }
}

type Slot<T> = Arc<OnceCell<T>>;
type Cache<K, T> = Mutex<HashMap<K, Slot<T>>>;

#[derive(Default)]
pub struct EngineCache {
    engines: Cache<SocketAddr, Discovered>,
    /// Password keys (Ku) by a digest of protocol and password.
    passwords: Cache<[u8; 32], Arc<Vec<u8>>>,
}

/// Entries a cache holds before it starts again (what it holds is
/// recomputed on demand: a discovery, a password hash).
const CACHE_CAP: usize = 50_000;

fn slot<K: std::hash::Hash + Eq, T>(map: &Cache<K, T>, key: K) -> Slot<T> {
    // A poisoned lock only means another request panicked mid-insert; the map is still whole.
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= CACHE_CAP && !map.contains_key(&key) {
        map.clear();
    }
    map.entry(key).or_default().clone()
}

impl EngineCache {
    /// The agent's engine, discovering it once however many ask at a time.
    pub async fn engine<F, Fut, E>(&self, addr: SocketAddr, discover: F) -> Result<Discovered, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Discovered, E>>,
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

    /// `user`'s keys localized to `engine_id`.
    pub async fn keys(&self, user: &UsmUser, engine_id: &[u8]) -> Keys {
        let mut keys = Keys::default();
        if let Some((proto, password)) = &user.auth {
            let ku = self.password_key(*proto, password).await;
            keys.auth = Some((*proto, localize(*proto, &ku, engine_id)));
            if let Some((cipher, password)) = &user.privacy {
                let ku = self.password_key(*proto, password).await;
                let key = extend(*proto, localize(*proto, &ku, engine_id), key_len(*cipher));
                keys.privacy = Some((*cipher, key));
            }
        }
        keys
    }

    /// RFC 3414 A.2's password to key: computed once per password, however
    /// many engines it is localized to.
    async fn password_key(&self, proto: AuthProtocol, password: &[u8]) -> Arc<Vec<u8>> {
        let cell = slot(&self.passwords, fingerprint(proto, password));
        let password = password.to_vec();
        cell.get_or_init(|| async move {
            let ku = tokio::task::spawn_blocking(move || password_key(proto, &password)).await;
            Arc::new(ku.expect("password hashing does not panic"))
        })
        .await
        .clone()
    }
}

/// A cache key that holds no password.
fn fingerprint(proto: AuthProtocol, password: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!("{proto:?}\0").as_bytes());
    h.update(password);
    h.finalize().into()
}

/// A user's keys at one engine; no auth key means noAuthNoPriv.
#[derive(Clone, Default)]
pub struct Keys {
    pub auth: Option<(AuthProtocol, Vec<u8>)>,
    pub privacy: Option<(Cipher, Vec<u8>)>,
}

impl Keys {
    /// The message flags of this security level.
    pub fn level(&self) -> u8 {
        let mut flags = 0;
        if self.auth.is_some() {
            flags |= snmp::V3_MSG_FLAGS_AUTH;
        }
        if self.privacy.is_some() {
            flags |= snmp::V3_MSG_FLAGS_PRIVACY;
        }
        flags
    }

    /// The same keys without privacy (reports go authNoPriv).
    pub fn without_privacy(&self) -> Self {
        Self {
            auth: self.auth.clone(),
            privacy: None,
        }
    }
}

/// Runs `$f::<Digest>(args)` with the digest of an auth protocol.
macro_rules! with_digest {
    ($proto:expr, $f:ident($($arg:expr),*)) => {
        match $proto {
            AuthProtocol::Md5 => $f::<md5::Md5>($($arg),*),
            AuthProtocol::Sha1 => $f::<sha1::Sha1>($($arg),*),
            AuthProtocol::Sha224 => $f::<sha2::Sha224>($($arg),*),
            AuthProtocol::Sha256 => $f::<sha2::Sha256>($($arg),*),
            AuthProtocol::Sha384 => $f::<sha2::Sha384>($($arg),*),
            AuthProtocol::Sha512 => $f::<sha2::Sha512>($($arg),*),
        }
    };
}

fn hash(proto: AuthProtocol, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    with_digest!(proto, run(parts))
}

fn hmac<D: Digest + BlockSizeUser>(key: &[u8], data: &[u8]) -> SimpleHmac<D> {
    let mut mac =
        <SimpleHmac<D> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac
}

/// The digest of `message` as it travels (truncated, RFC 3414 and 7860).
fn sign(proto: AuthProtocol, key: &[u8], message: &[u8]) -> Vec<u8> {
    fn run<D: Digest + BlockSizeUser>(key: &[u8], data: &[u8], len: usize) -> Vec<u8> {
        let mut full = hmac::<D>(key, data).finalize().into_bytes().to_vec();
        full.truncate(len);
        full
    }
    with_digest!(proto, run(key, message, truncation(proto)))
}

/// Whether `tag` is the digest of `message` (compared in constant time).
fn verify(proto: AuthProtocol, key: &[u8], message: &[u8], tag: &[u8]) -> bool {
    fn run<D: Digest + BlockSizeUser>(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
        hmac::<D>(key, data).verify_truncated_left(tag).is_ok()
    }
    tag.len() == truncation(proto) && with_digest!(proto, run(key, message, tag))
}

fn truncation(proto: AuthProtocol) -> usize {
    match proto {
        AuthProtocol::Md5 | AuthProtocol::Sha1 => 12,
        AuthProtocol::Sha224 => 16,
        AuthProtocol::Sha256 => 24,
        AuthProtocol::Sha384 => 32,
        AuthProtocol::Sha512 => 48,
    }
}

/// Ku: the digest of the password repeated to a megabyte (RFC 3414 A.2).
fn password_key(proto: AuthProtocol, password: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return hash(proto, &[]);
    }
    let expanded: Vec<u8> = password.iter().cycle().take(1 << 20).copied().collect();
    hash(proto, &[&expanded])
}

/// Kul = H(Ku || engine id || Ku).
fn localize(proto: AuthProtocol, ku: &[u8], engine_id: &[u8]) -> Vec<u8> {
    hash(proto, &[ku, engine_id, ku])
}

/// A privacy key of `len` bytes: Kul, lengthened where it is short by
/// appending the digest of what there is (the Blumenthal draft, as net-snmp
/// does for AES-192/256).
fn extend(proto: AuthProtocol, mut key: Vec<u8>, len: usize) -> Vec<u8> {
    while key.len() < len {
        let more = hash(proto, &[&key]);
        key.extend_from_slice(&more);
    }
    key.truncate(len);
    key
}

/// DES takes a key and a pre-IV of 8 bytes each.
fn key_len(cipher: Cipher) -> usize {
    match cipher {
        Cipher::Des | Cipher::Aes128 => 16,
        Cipher::Aes192 => 24,
        Cipher::Aes256 => 32,
    }
}

fn aes_cfb<C>(key: &[u8], iv: &[u8], data: &mut [u8], encrypt: bool)
where
    C: BlockEncryptMut + BlockCipher + KeyInit,
{
    if encrypt {
        cfb_mode::Encryptor::<C>::new_from_slices(key, iv)
            .expect("key and IV lengths are fixed")
            .encrypt(data);
    } else {
        cfb_mode::Decryptor::<C>::new_from_slices(key, iv)
            .expect("key and IV lengths are fixed")
            .decrypt(data);
    }
}

/// Runs the cipher over `data` in place. `salt` is the privacy parameter;
/// `boots` and `time` those of the authoritative engine in the message.
fn crypt(
    cipher: Cipher,
    key: &[u8],
    boots: i64,
    time: i64,
    salt: &[u8],
    data: &mut Vec<u8>,
    encrypt: bool,
) -> Result<(), &'static str> {
    if salt.len() != 8 {
        return Err("the privacy parameters are not 8 bytes");
    }
    if cipher == Cipher::Des {
        // RFC 3414 8.1.1: CBC, IV = pre-IV xor salt, padded to the block.
        let iv: Vec<u8> = key[8..16].iter().zip(salt).map(|(a, b)| a ^ b).collect();
        if encrypt {
            data.resize(data.len().div_ceil(8) * 8, 0);
            let len = data.len();
            cbc::Encryptor::<des::Des>::new_from_slices(&key[..8], &iv)
                .expect("key and IV lengths are fixed")
                .encrypt_padded_mut::<NoPadding>(data, len)
                .map_err(|_| "cannot pad")?;
        } else {
            cbc::Decryptor::<des::Des>::new_from_slices(&key[..8], &iv)
                .expect("key and IV lengths are fixed")
                .decrypt_padded_mut::<NoPadding>(data)
                .map_err(|_| "the ciphertext is not whole DES blocks")?;
        }
        return Ok(());
    }
    // RFC 3826 3.1.2.1: CFB-128, IV = boots || time || salt.
    let mut iv = Vec::with_capacity(16);
    iv.extend_from_slice(&(boots as u32).to_be_bytes());
    iv.extend_from_slice(&(time as u32).to_be_bytes());
    iv.extend_from_slice(salt);
    match cipher {
        Cipher::Aes192 => aes_cfb::<aes::Aes192>(key, &iv, data, encrypt),
        Cipher::Aes256 => aes_cfb::<aes::Aes256>(key, &iv, data, encrypt),
        _ => aes_cfb::<aes::Aes128>(key, &iv, data, encrypt),
    }
    Ok(())
}

/// A v3 message secured with `keys`: `scoped` is the plaintext scoped PDU.
pub fn seal(keys: &Keys, msg_id: i32, reportable: bool, usm: &UsmHeader, scoped: &[u8]) -> Vec<u8> {
    let mut flags = keys.level();
    if reportable {
        flags |= snmp::V3_MSG_FLAGS_REPORTABLE;
    }
    let (salt, data) = match &keys.privacy {
        Some((cipher, key)) => {
            let salt: [u8; 8] = match cipher {
                // DES: boots, then 32 random bits (RFC 3414 8.1.1.1).
                Cipher::Des => {
                    let mut s = [0u8; 8];
                    s[..4].copy_from_slice(&(usm.boots as u32).to_be_bytes());
                    rand::thread_rng().fill(&mut s[4..]);
                    s
                }
                _ => rand::thread_rng().r#gen(),
            };
            let mut ciphertext = scoped.to_vec();
            crypt(
                *cipher,
                key,
                usm.boots,
                usm.time,
                &salt,
                &mut ciphertext,
                true,
            )
            .expect("encryption takes any length");
            let mut data = Vec::with_capacity(ciphertext.len() + 4);
            ber::tlv(&mut data, snmp2::asn1::TYPE_OCTETSTRING, &ciphertext);
            (salt.to_vec(), data)
        }
        None => (Vec::new(), scoped.to_vec()),
    };
    let auth_len = keys.auth.as_ref().map_or(0, |(p, _)| truncation(*p));
    let (mut message, at) = ber::v3_message(msg_id, flags, usm, auth_len, &salt, &data);
    if let Some((proto, key)) = &keys.auth {
        let digest = sign(*proto, key, &message);
        message[at..at + auth_len].copy_from_slice(&digest);
    }
    message
}

/// Why a message did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unopened {
    #[error("it is secured at a level the user has no keys for")]
    Level,
    #[error("its digest does not match (auth password or protocol differ)")]
    WrongDigest,
    #[error("it does not decrypt (privacy password or protocol differ)")]
    Decryption,
}

/// The plaintext scoped PDU of `m` (parsed from `bytes`), its digest checked
/// and its data decrypted as its flags say.
pub fn open(keys: &Keys, bytes: &[u8], m: &V3In<'_>) -> Result<Vec<u8>, Unopened> {
    if m.flags & snmp::V3_MSG_FLAGS_AUTH != 0 {
        let Some((proto, key)) = &keys.auth else {
            return Err(Unopened::Level);
        };
        let mut zeroed = bytes.to_vec();
        zeroed[m.auth_at..m.auth_at + m.auth_params.len()].fill(0);
        if !verify(*proto, key, &zeroed, m.auth_params) {
            return Err(Unopened::WrongDigest);
        }
    }
    if m.flags & snmp::V3_MSG_FLAGS_PRIVACY == 0 {
        return Ok(m.data.to_vec());
    }
    let Some((cipher, key)) = &keys.privacy else {
        return Err(Unopened::Level);
    };
    let mut plain = m.data.to_vec();
    crypt(
        *cipher,
        key,
        m.usm.boots,
        m.usm.time,
        m.priv_params,
        &mut plain,
        false,
    )
    .map_err(|_| Unopened::Decryption)?;
    Ok(plain)
}

/// The discovery probe of RFC 3414 section 4: no user, no engine id.
pub fn discovery_probe(id: i32) -> Vec<u8> {
    let mut pdu = Vec::new();
    ber::pdu(&mut pdu, snmp::MSG_GET, id, 0, 0, &[]);
    seal(
        &Keys::default(),
        id,
        true,
        &UsmHeader::default(),
        &ber::scoped_pdu(&[], &[], &pdu),
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

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 3414 A.3: password "maplesyrup", engine id 00..02.
    const ENGINE: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    #[test]
    fn keys_match_rfc_3414_vectors() {
        let md5 = password_key(AuthProtocol::Md5, b"maplesyrup");
        assert_eq!(hex::encode(&md5), "9faf3283884e92834ebc9847d8edd963");
        assert_eq!(
            hex::encode(localize(AuthProtocol::Md5, &md5, &ENGINE)),
            "526f5eed9fcce26f8964c2930787d82b"
        );
        let sha = password_key(AuthProtocol::Sha1, b"maplesyrup");
        assert_eq!(
            hex::encode(&sha),
            "9fb5cc0381497b3793528939ff788d5d79145211"
        );
        assert_eq!(
            hex::encode(localize(AuthProtocol::Sha1, &sha, &ENGINE)),
            "6695febc9288e36282235fc7151f128497b38f3f"
        );
    }

    fn user_keys(cipher: Cipher) -> Keys {
        let ku = password_key(AuthProtocol::Sha256, b"maplesyrup");
        let kul = localize(AuthProtocol::Sha256, &ku, &ENGINE);
        Keys {
            auth: Some((AuthProtocol::Sha256, kul.clone())),
            privacy: Some((cipher, extend(AuthProtocol::Sha256, kul, key_len(cipher)))),
        }
    }

    #[test]
    fn sealed_messages_open_with_the_same_keys_only() {
        let usm = UsmHeader {
            engine_id: ENGINE.to_vec(),
            boots: 3,
            time: 1234,
            username: b"ops".to_vec(),
        };
        let mut pdu = Vec::new();
        ber::pdu(&mut pdu, snmp::MSG_GET, 7, 0, 0, &[]);
        let scoped = ber::scoped_pdu(&ENGINE, b"", &pdu);
        for cipher in [Cipher::Des, Cipher::Aes128, Cipher::Aes192, Cipher::Aes256] {
            let keys = user_keys(cipher);
            let sealed = seal(&keys, 99, true, &usm, &scoped);
            let Some(ber::Header::V3(m)) = ber::header(&sealed) else {
                panic!("not a v3 message")
            };
            assert_eq!((m.msg_id, &m.usm), (99, &usm));
            assert_eq!(m.auth_params.len(), 24);
            let opened = open(&keys, &sealed, &m).expect("opens");
            assert_eq!(&opened[..scoped.len()], &scoped[..], "{cipher:?}");

            let mut tampered = sealed.clone();
            *tampered.last_mut().unwrap() ^= 1;
            let Some(ber::Header::V3(t)) = ber::header(&tampered) else {
                panic!("not a v3 message")
            };
            assert_eq!(open(&keys, &tampered, &t), Err(Unopened::WrongDigest));
            assert_eq!(open(&Keys::default(), &sealed, &m), Err(Unopened::Level));
        }
    }

    #[test]
    fn short_keys_grow_by_their_own_digest() {
        let kul = vec![1u8; 16];
        let long = extend(AuthProtocol::Md5, kul.clone(), 32);
        assert_eq!(&long[..16], &kul[..]);
        assert_eq!(&long[16..], &hash(AuthProtocol::Md5, &[&kul])[..]);
    }
}
