//! Tokens and who may call what. Every service verifies the bearer token
//! itself with a `Verifier` and checks the RPC's `rdm.api.v1.access` option
//! from the descriptor set; nothing trusts the network or the gateway.
use crate::error::{Error, Result};
use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::Jwk};
use prost_reflect::{DescriptorPool, ExtensionDescriptor};
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    fmt,
    path::Path,
    str::FromStr,
    sync::{Arc, Mutex},
};

/// Roles, each including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
    PlatformAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Viewer,
        Role::Operator,
        Role::Admin,
        Role::PlatformAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::PlatformAdmin => "platform-admin",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "roles",
                    format!(
                        "unknown role {s:?}: expected viewer, operator, admin or platform-admin"
                    ),
                )
            })
    }
}

/// The claims of an rdm access token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub tid: String,
    pub roles: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
    pub jti: String,
    /// The sign-in session the token belongs to: revoking it ends the token.
    #[serde(default)]
    pub sid: String,
}

/// The verified caller of a request, in the request's extensions.
#[derive(Clone)]
pub struct Principal {
    pub user_id: String,
    pub tenant_id: String,
    pub roles: Vec<Role>,
    /// The sign-in session of the token (logout revokes it).
    pub session_id: String,
    /// The bearer token as received, forwarded on calls to other services.
    token: Arc<str>,
}

impl Principal {
    pub fn has_role(&self, least: Role) -> bool {
        self.roles.iter().any(|r| *r >= least)
    }

    pub fn bearer(&self) -> &str {
        &self.token
    }

    /// The user a service's actor token names, for a call of the service's
    /// own (no roles, no token: the handler decides what the user may do).
    pub fn acted(actor: ActorClaims) -> Self {
        Self {
            user_id: actor.act,
            tenant_id: actor.tid,
            roles: Vec::new(),
            session_id: String::new(),
            token: Arc::from(""),
        }
    }

    /// The principal a handler runs for; the auth layer put it there.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Principal> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| Error::unauthenticated("missing bearer token"))
    }
}

impl fmt::Debug for Principal {
    // By hand: the token must never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("user_id", &self.user_id)
            .field("tenant_id", &self.tenant_id)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// Who issues tokens and for whom: the `iss` and `aud` every token carries.
#[derive(Clone, Debug)]
pub struct TokenPolicy {
    pub issuer: String,
    pub audience: String,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuer: "rdm".into(),
            audience: "rdm".into(),
        }
    }
}

/// The Ed25519 key that signs tokens (held by the inventory service only).
pub struct SigningKey {
    encoding: EncodingKey,
    jwk: Jwk,
    /// Actor tokens signed, by (service, tenant, user), reused while they
    /// have more than half their minute left.
    actors: Remembered<(String, String, String), String>,
    /// A MAC key derived from the private key: what the services that share
    /// this key use to sign the ids they hand out (a TR-069 task's).
    mac_key: [u8; 32],
}

impl SigningKey {
    /// Reads a PKCS#8 PEM key, or creates one (mode 0600) when the file does
    /// not exist yet, as `rdm up` does in its data dir.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
            // PKCS#8 v1 (no public key inside): the form jsonwebtoken reads.
            let pair = ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: key.to_bytes(),
                public_key: None,
            };
            let pem = pair.to_pkcs8_pem(LineEnding::LF)?;
            write_private(path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), "created signing key");
        }
        Self::load(path)
    }

    /// Reads a PKCS#8 PEM key that must exist (`rdm serve`: a missing key
    /// is an error, not a reason to make a new one nobody else knows).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read key file {}: {e}", path.display()))?;
        Self::from_pem(&pem)
    }

    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let encoding = EncodingKey::from_ed_pem(pem)
            .map_err(|e| anyhow::anyhow!("jwt key is not an Ed25519 PKCS#8 PEM key: {e}"))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::EdDSA)
            .map_err(|e| anyhow::anyhow!("jwt key is not a PKCS#8 v1 Ed25519 key: {e}"))?;
        let kid = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)?;
        jwk.common.key_id = Some(kid);
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        use sha2::Digest;
        let mac_key = sha2::Sha256::new()
            .chain_update(b"rdm id mac key\0")
            .chain_update(pem)
            .finalize()
            .into();
        Ok(Self {
            encoding,
            jwk,
            actors: Remembered::default(),
            mac_key,
        })
    }

    /// An HMAC-SHA256 of `data` under a key only the holders of this
    /// signing key have.
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.mac_key)
            .expect("HMAC takes a key of any length");
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    pub fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or_default()
    }

    /// The public half, as published in the JWKS.
    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    pub fn sign(&self, claims: &Claims) -> Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid().to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| Error::internal("signing a token", e))
    }
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    opts.open(path)?.write_all(bytes)
}

/// Seconds since the Unix epoch: the system's, or one a test moves.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<std::sync::atomic::AtomicU64>),
}

impl Clock {
    pub fn now(&self) -> u64 {
        match self {
            Clock::System => jsonwebtoken::get_current_timestamp(),
            Clock::Manual(t) => t.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Claims with an expiry, checked against our clock (not jsonwebtoken's).
trait Expiring {
    fn exp(&self) -> u64;
}

impl Expiring for Claims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

/// Published public keys and what a token signed by one must say.
#[derive(Clone)]
struct KeySet {
    keys: Arc<HashMap<String, DecodingKey>>,
    validation: Arc<Validation>,
}

impl KeySet {
    fn new(jwks: &[Jwk], policy: &TokenPolicy, required: &[&str]) -> anyhow::Result<Self> {
        let mut keys = HashMap::new();
        for jwk in jwks {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            keys.insert(kid, DecodingKey::from_jwk(jwk)?);
        }
        anyhow::ensure!(!keys.is_empty(), "no token verification keys");
        // EdDSA only: `alg: none`, HS256 with the public key as secret and the
        // like are rejected before any signature check.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        validation.set_required_spec_claims(required);
        validation.leeway = LEEWAY;
        // Expiry is checked against the verifier's clock, after decoding.
        validation.validate_exp = false;
        Ok(Self {
            keys: Arc::new(keys),
            validation: Arc::new(validation),
        })
    }

    fn decode<C: serde::de::DeserializeOwned + Expiring>(
        &self,
        token: &str,
        what: &str,
        now: u64,
    ) -> Result<C> {
        let rejected = |why: &str| Error::unauthenticated(format!("invalid {what}: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| rejected("malformed"))?;
        let key = match header.kid.as_deref() {
            Some(kid) => self.keys.get(kid),
            None if self.keys.len() == 1 => self.keys.values().next(),
            None => None,
        }
        .ok_or_else(|| rejected("unknown signing key"))?;
        let data = jsonwebtoken::decode::<C>(token, key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => rejected("expired"),
                K::InvalidSignature => rejected("bad signature"),
                K::InvalidAlgorithm => rejected("algorithm not allowed"),
                K::InvalidIssuer | K::InvalidAudience => rejected("wrong issuer or audience"),
                _ => rejected("malformed"),
            }
        })?;
        if now > data.claims.exp() + LEEWAY {
            return Err(rejected("expired"));
        }
        Ok(data.claims)
    }
}

/// Seconds a token is still accepted past its `exp` (clock skew between hosts).
const LEEWAY: u64 = 5;

/// Sessions that were revoked (logout, a user disabled, deleted, demoted or
/// given a new password, a tenant deleted), each until its last access token
/// has expired. One set is shared by every verifier of a process: under
/// `rdm up` the inventory writes to it directly; under `rdm serve` other
/// processes copy the inventory's list ([`Revocations::follow`]).
#[derive(Clone, Debug, Default)]
pub struct Revocations(Arc<std::sync::RwLock<HashMap<String, u64>>>);

impl Revocations {
    /// Refuses tokens of `session_id` until `until` (Unix seconds).
    pub fn revoke(&self, session_id: &str, until: u64) {
        if let Ok(mut set) = self.0.write() {
            set.insert(session_id.to_owned(), until);
        }
    }

    pub fn is_revoked(&self, session_id: &str, now: u64) -> bool {
        !session_id.is_empty()
            && self
                .0
                .read()
                .is_ok_and(|set| set.get(session_id).is_some_and(|until| *until >= now))
    }

    /// Forgets sessions whose tokens have all expired.
    pub fn prune(&self, now: u64) {
        if let Ok(mut set) = self.0.write() {
            set.retain(|_, until| *until >= now);
        }
    }

    /// Keeps this set in step with the inventory's list of revoked sessions
    /// (`AuthService/ListRevokedSessions`), polling every `every`, until the
    /// process ends. A failed poll is retried at the next tick.
    pub fn follow(&self, inventory: crate::invoke::Backend, every: std::time::Duration) {
        let set = self.clone();
        tokio::spawn(async move {
            let mut since_ms = 0i64;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match fetch_revoked(inventory.clone(), since_ms).await {
                    Ok(reply) => {
                        for session in &reply.sessions {
                            set.revoke(&session.session_id, session.until);
                        }
                        since_ms = reply.as_of_ms;
                        set.prune(jsonwebtoken::get_current_timestamp());
                    }
                    Err(e) => tracing::warn!(error = %e.message(), "cannot fetch revoked sessions"),
                }
            }
        });
    }
}

async fn fetch_revoked(
    inventory: crate::invoke::Backend,
    since_ms: i64,
) -> std::result::Result<rdm_proto::inventory::ListRevokedSessionsResponse, tonic::Status> {
    use prost::Message;
    let request = rdm_proto::inventory::ListRevokedSessionsRequest { since_ms };
    let bytes = crate::invoke::unary(
        inventory,
        "/rdm.inventory.v1.AuthService/ListRevokedSessions",
        request.encode_to_vec().into(),
        Default::default(),
    )
    .await?;
    rdm_proto::inventory::ListRevokedSessionsResponse::decode(bytes)
        .map_err(|e| tonic::Status::internal(format!("decoding revoked sessions: {e}")))
}

/// Whether a bearer credential is an API key (`rdm_<id>.<secret>`), not a JWT.
pub fn is_api_key(token: &str) -> bool {
    token.starts_with("rdm_") && !token.starts_with("rdm_rt_")
}

/// Turns API keys into access tokens through the inventory
/// (`AuthService/ExchangeApiKey`), remembering each until shortly before it
/// expires (a revoked key's token is then refused by the verifier).
#[derive(Clone)]
pub struct ApiKeys {
    inventory: crate::invoke::Backend,
    /// (SHA-256 of the key, client address) -> access token.
    exchanged: Remembered<(String, String), String>,
}

impl ApiKeys {
    pub fn new(inventory: crate::invoke::Backend) -> Self {
        Self {
            inventory,
            exchanged: Remembered::default(),
        }
    }

    /// The access token for `key` used from `client` (the address the key's
    /// networks are checked against).
    pub async fn exchange(&self, key: &str, client: Option<&str>) -> Result<String> {
        use prost::Message;
        use sha2::Digest;
        let now = jsonwebtoken::get_current_timestamp();
        let id = (
            hex_digest(&sha2::Sha256::digest(key.as_bytes())),
            client.unwrap_or_default().to_owned(),
        );
        if let Some(token) = self.exchanged.get(&id, now + 10) {
            return Ok(token);
        }
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(ip) = client.and_then(|c| c.parse().ok()) {
            metadata.insert(crate::server::CLIENT_IP_HEADER, ip);
        }
        let request = rdm_proto::inventory::ExchangeApiKeyRequest {
            api_key: key.to_owned(),
        };
        let reply = crate::invoke::unary(
            self.inventory.clone(),
            "/rdm.inventory.v1.AuthService/ExchangeApiKey",
            request.encode_to_vec().into(),
            metadata,
        )
        .await
        .map_err(|s| Error::from_status(&s))?;
        let reply = rdm_proto::inventory::ExchangeApiKeyResponse::decode(reply)
            .map_err(|e| Error::internal("decoding an exchanged API key", e))?;
        let exp = now + u64::from(reply.expires_in);
        self.exchanged
            .insert(id, reply.access_token.clone(), exp, now);
        Ok(reply.access_token)
    }
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks bearer tokens against the published keys.
#[derive(Clone)]
pub struct Verifier {
    keys: KeySet,
    /// Tokens verified: a signature check costs more than the rest of a
    /// small call, and through the gateway each call is checked twice.
    /// Expiry and revocation are still checked on every use.
    verified: Remembered<Arc<str>, Principal>,
    clock: Clock,
    revocations: Revocations,
}

/// Values remembered until their expiry (Unix seconds, plus [`LEEWAY`]),
/// shared by clones: verified tokens, signed actor tokens, exchanged API
/// keys. At most [`Remembered::MAX`]: past that the expired ones go, or all.
struct Remembered<K, V>(Arc<Mutex<HashMap<K, (V, u64)>>>);

impl<K, V> Clone for Remembered<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V> Default for Remembered<K, V> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> Remembered<K, V> {
    const MAX: usize = 10_000;

    /// The value for `key` if it is still valid at `at`.
    fn get<Q>(&self, key: &Q, at: u64) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        let cache = self.0.lock().ok()?;
        let (value, exp) = cache.get(key)?;
        (at <= *exp).then(|| value.clone())
    }

    fn insert(&self, key: K, value: V, exp: u64, now: u64) {
        if let Ok(mut cache) = self.0.lock() {
            if cache.len() >= Self::MAX {
                cache.retain(|_, (_, exp)| now <= *exp);
                if cache.len() >= Self::MAX {
                    cache.clear();
                }
            }
            cache.insert(key, (value, exp));
        }
    }
}

impl Verifier {
    pub fn new(jwks: &[Jwk], policy: &TokenPolicy) -> anyhow::Result<Self> {
        let keys = KeySet::new(jwks, policy, &["exp", "iat", "iss", "aud", "sub"])?;
        Ok(Self {
            keys,
            verified: Remembered::default(),
            clock: Clock::System,
            revocations: Revocations::default(),
        })
    }

    /// The revoked sessions this verifier refuses (shared by its clones).
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// The same verifier reading time from `clock`.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn verify(&self, token: &str) -> Result<Principal> {
        let now = self.clock.now();
        if let Some(principal) = self.verified.get(token, now.saturating_sub(LEEWAY)) {
            return self.unrevoked(principal, now);
        }
        let claims: Claims = self.keys.decode(token, "bearer token", now)?;
        let roles = claims
            .roles
            .iter()
            .map(|r| r.parse())
            .collect::<Result<Vec<Role>>>()
            .map_err(|_| Error::unauthenticated("invalid bearer token: unknown role"))?;
        let principal = Principal {
            user_id: claims.sub,
            tenant_id: claims.tid,
            roles,
            session_id: claims.sid,
            token: token.into(),
        };
        self.verified
            .insert(principal.token.clone(), principal.clone(), claims.exp, now);
        self.unrevoked(principal, now)
    }

    fn unrevoked(&self, principal: Principal, now: u64) -> Result<Principal> {
        if self.revocations.is_revoked(&principal.session_id, now) {
            return Err(Error::unauthenticated(
                "this token was revoked (signed out, or the user changed): sign in again",
            ));
        }
        Ok(principal)
    }
}

/// How long an actor token is valid, in seconds.
const ACTOR_TTL: u64 = 60;

/// The header carrying an actor token on calls between services.
pub const ACTOR_HEADER: &str = "x-rdm-actor";

/// What a service's actor token says: service `sub` acts for user `act` of
/// tenant `tid`, for a minute.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ActorClaims {
    pub sub: String,
    pub tid: String,
    pub act: String,
    pub iat: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
}

fn actor_policy() -> TokenPolicy {
    TokenPolicy {
        issuer: "rdm-service".into(),
        audience: "rdm-internal".into(),
    }
}

impl SigningKey {
    /// An actor token: this service (`service`) acting for `caller`.
    pub fn actor_token(&self, service: &str, caller: &Principal) -> Result<String> {
        self.actor_token_for(service, &caller.tenant_id, &caller.user_id)
    }

    /// An actor token: this service (`service`) acting for user `user_id`
    /// of tenant `tenant_id`.
    pub fn actor_token_for(&self, service: &str, tenant_id: &str, user_id: &str) -> Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let who = (service.to_owned(), tenant_id.to_owned(), user_id.to_owned());
        if let Some(token) = self.actors.get(&who, now + ACTOR_TTL / 2) {
            return Ok(token);
        }
        let policy = actor_policy();
        let claims = ActorClaims {
            sub: service.to_owned(),
            tid: tenant_id.to_owned(),
            act: user_id.to_owned(),
            iat: now,
            exp: now + ACTOR_TTL,
            iss: policy.issuer,
            aud: policy.audience,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| Error::internal("signing an actor token", e))?;
        self.actors.insert(who, token.clone(), claims.exp, now);
        Ok(token)
    }
}

impl Expiring for ActorClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

/// Checks actor tokens against the keys of the services the inventory
/// trusts, remembering the ones verified until they expire.
#[derive(Clone)]
pub struct ActorVerifier {
    keys: KeySet,
    verified: Remembered<String, ActorClaims>,
}

impl ActorVerifier {
    pub fn new(service_keys: &[Jwk]) -> anyhow::Result<Self> {
        Ok(Self {
            keys: KeySet::new(
                service_keys,
                &actor_policy(),
                &["exp", "iat", "iss", "aud", "sub"],
            )?,
            verified: Remembered::default(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<ActorClaims> {
        let now = jsonwebtoken::get_current_timestamp();
        if let Some(claims) = self.verified.get(token, now.saturating_sub(LEEWAY)) {
            return Ok(claims);
        }
        let claims: ActorClaims = self.keys.decode(token, "actor token", now)?;
        self.verified
            .insert(token.to_owned(), claims.clone(), claims.exp, now);
        Ok(claims)
    }
}

fn service_only() -> Error {
    Error::permission_denied("this call is a service's own: only a service of the mesh may make it")
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// matched case-insensitively (RFC 6750 / RFC 9110).
pub fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The access rule of one RPC, from its `rdm.api.v1.access` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    Public,
    Role(Role),
    /// Only for a service acting for a caller (never through the gateway).
    Internal,
    /// Only for a service acting on its own for the user its actor token
    /// names, who is not calling (never through the gateway).
    Service,
    /// No rule, or one that does not parse: nobody may call it.
    Denied,
}

impl Access {
    /// Calls between services only: the gateway neither routes nor lists them.
    pub fn internal(&self) -> bool {
        matches!(self, Access::Internal | Access::Service)
    }

    /// The rule of one method. Exactly one of `public`, `role`, `internal`
    /// and `service` must be set; anything else fails closed.
    fn of(method: &prost_reflect::MethodDescriptor, ext: Option<&ExtensionDescriptor>) -> Self {
        let Some(ext) = ext.filter(|ext| method.options().has_extension(ext)) else {
            return Access::Denied;
        };
        let options = method.options();
        let value = options.get_extension(ext);
        let Some(rule) = value.as_message() else {
            return Access::Denied;
        };
        // Set means not the default value (proto3): `public: false` is unset.
        let set = |name: &str| {
            prost_reflect::ReflectMessage::descriptor(rule)
                .get_field_by_name(name)
                .is_some_and(|f| rule.has_field(&f))
        };
        let role = rule
            .get_field_by_name("role")
            .and_then(|v| v.as_enum_number());
        match (set("public"), set("internal"), set("role"), set("service")) {
            (true, false, false, false) => Access::Public,
            (false, true, false, false) => Access::Internal,
            (false, false, false, true) => Access::Service,
            (false, false, true, false) => match role {
                Some(1) => Access::Role(Role::Viewer),
                Some(2) => Access::Role(Role::Operator),
                Some(3) => Access::Role(Role::Admin),
                Some(4) => Access::Role(Role::PlatformAdmin),
                _ => Access::Denied,
            },
            _ => Access::Denied,
        }
    }
}

/// Access rules of every RPC in the descriptor set, by gRPC path
/// (`/rdm.inventory.v1.AuthService/Login`).
#[derive(Clone, Debug, Default)]
pub struct AccessTable(Arc<HashMap<String, Access>>);

impl AccessTable {
    /// Reads every method's option. A method without a valid one is denied to
    /// everybody: a forgotten or mistyped rule fails closed.
    pub fn from_pool(pool: &DescriptorPool) -> Self {
        let ext = pool.get_extension_by_name("rdm.api.v1.access");
        let mut rules = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                let access = Access::of(&method, ext.as_ref());
                if access == Access::Denied && service.full_name().starts_with("rdm.") {
                    tracing::warn!(method = %method.full_name(), "rpc has no valid access option: denied");
                }
                let path = format!("/{}/{}", service.full_name(), method.name());
                rules.insert(path, access);
            }
        }
        Self(Arc::new(rules))
    }

    pub fn get(&self, path: &str) -> Option<&Access> {
        self.0.get(path)
    }

    /// Decides one call: `Ok(None)` for a public RPC, the principal otherwise.
    /// `actors` checks the actor token of internal calls; without it
    /// (the gateway) internal calls are refused.
    pub fn authorize(
        &self,
        verifier: &Verifier,
        path: &str,
        authorization: Option<&str>,
        actors: Option<(&ActorVerifier, Option<&str>)>,
    ) -> Result<Option<Principal>> {
        let Some(access) = self.get(path) else {
            return Ok(None); // not an rdm RPC: health, reflection, metrics
        };
        match access {
            Access::Public => return Ok(None),
            Access::Denied => {
                return Err(Error::permission_denied(
                    "this call has no valid access rule: nobody may make it",
                ));
            }
            Access::Service => {
                let (actors, Some(actor)) = actors.ok_or_else(service_only)? else {
                    return Err(service_only());
                };
                return Ok(Some(Principal::acted(actors.verify(actor)?)));
            }
            _ => {}
        }
        let token = authorization
            .and_then(bearer_token)
            .ok_or_else(|| Error::unauthenticated("missing bearer token"))?;
        let principal = verifier.verify(token)?;
        match access {
            Access::Role(least) if principal.has_role(*least) => Ok(Some(principal)),
            Access::Role(least) => Err(Error::permission_denied(format!(
                "this call needs the {} role",
                least.as_str()
            ))),
            Access::Internal => {
                let internal = || {
                    Error::permission_denied(
                        "this call is internal: only a service acting for the caller may make it",
                    )
                };
                let (actors, Some(actor)) = actors.ok_or_else(internal)? else {
                    return Err(internal());
                };
                let actor = actors.verify(actor)?;
                if actor.tid != principal.tenant_id || actor.act != principal.user_id {
                    return Err(Error::permission_denied(
                        "the actor token acts for another caller",
                    ));
                }
                Ok(Some(principal))
            }
            Access::Public | Access::Denied | Access::Service => unreachable!("handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        let dir = tempfile::tempdir().unwrap();
        SigningKey::load_or_create(&dir.path().join("jwt.pem")).unwrap()
    }

    fn claims(roles: &[&str], exp_in: i64) -> Claims {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            sub: "u1".into(),
            tid: "t1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            iat: now,
            exp: (now as i64 + exp_in) as u64,
            iss: "rdm".into(),
            aud: "rdm".into(),
            jti: "j1".into(),
            sid: "s1".into(),
        }
    }

    #[test]
    fn created_key_is_reloaded_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt.pem");
        let first = SigningKey::load_or_create(&path).unwrap();
        let again = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(first.kid(), again.kid());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn verifies_own_tokens_and_rejects_others() {
        let key = key();
        let verifier = Verifier::new(&[key.public_jwk().clone()], &TokenPolicy::default()).unwrap();
        let token = key.sign(&claims(&["operator"], 60)).unwrap();
        let p = verifier.verify(&token).unwrap();
        assert_eq!((p.user_id.as_str(), p.tenant_id.as_str()), ("u1", "t1"));
        assert!(p.has_role(Role::Viewer) && p.has_role(Role::Operator) && !p.has_role(Role::Admin));

        let expired = key.sign(&claims(&["admin"], -120)).unwrap();
        assert!(
            verifier
                .verify(&expired)
                .unwrap_err()
                .message
                .contains("expired")
        );

        let other = self::key().sign(&claims(&["admin"], 60)).unwrap();
        assert_eq!(
            verifier.verify(&other).unwrap_err().code,
            crate::ErrorCode::Unauthenticated
        );
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let key = key();
        let t0 = jsonwebtoken::get_current_timestamp();
        let time = Arc::new(std::sync::atomic::AtomicU64::new(t0));
        let verifier = Verifier::new(&[key.public_jwk().clone()], &TokenPolicy::default())
            .unwrap()
            .with_clock(Clock::Manual(time.clone()));
        let token = key.sign(&claims(&["viewer"], 60)).unwrap();
        assert!(verifier.verify(&token).is_ok());
        assert!(
            verifier.verified.get(token.as_str(), t0).is_some(),
            "remembered"
        );
        // Within the leeway past exp, then one second beyond it.
        time.store(t0 + 60 + LEEWAY, std::sync::atomic::Ordering::Relaxed);
        assert!(verifier.verify(&token).is_ok());
        time.store(t0 + 61 + LEEWAY, std::sync::atomic::Ordering::Relaxed);
        let err = verifier.verify(&token).unwrap_err();
        assert!(err.message.contains("expired"), "{err:?}");
        // Not remembered either: a fresh verifier at that time refuses it too.
        let fresh = Verifier::new(&[key.public_jwk().clone()], &TokenPolicy::default())
            .unwrap()
            .with_clock(Clock::Manual(time));
        assert!(
            fresh
                .verify(&token)
                .unwrap_err()
                .message
                .contains("expired")
        );
    }

    #[test]
    fn a_revoked_session_ends_its_tokens_even_remembered_ones() {
        let key = key();
        let verifier = Verifier::new(&[key.public_jwk().clone()], &TokenPolicy::default()).unwrap();
        let token = key.sign(&claims(&["admin"], 60)).unwrap();
        assert_eq!(verifier.verify(&token).unwrap().session_id, "s1");
        let now = jsonwebtoken::get_current_timestamp();
        // A clone shares the set: what the inventory revokes, services refuse.
        verifier.clone().revocations().revoke("s1", now + 60);
        let err = verifier.verify(&token).unwrap_err();
        assert!(err.message.contains("revoked"), "{err:?}");
        verifier.revocations().prune(now + 61);
        assert!(
            verifier.verify(&token).is_ok(),
            "forgotten once its tokens expired"
        );
    }

    #[test]
    fn every_rdm_rpc_has_a_valid_access_rule() {
        let pool = rdm_proto::descriptor_pool();
        let table = AccessTable::from_pool(pool);
        for service in pool
            .services()
            .filter(|s| s.full_name().starts_with("rdm."))
        {
            for method in service.methods() {
                let path = format!("/{}/{}", service.full_name(), method.name());
                let rule = table.get(&path);
                assert!(
                    rule.is_some_and(|r| *r != Access::Denied),
                    "{path} has no valid access rule"
                );
            }
        }
        assert_eq!(
            table.get("/rdm.inventory.v1.AuthService/Login"),
            Some(&Access::Public)
        );
        assert_eq!(
            table.get("/rdm.inventory.v1.TenantService/CreateTenant"),
            Some(&Access::Role(Role::PlatformAdmin))
        );
        assert_eq!(
            table.get("/rdm.snmp.v1.SnmpService/Set"),
            Some(&Access::Role(Role::Operator))
        );
    }

    /// A service's own call (IssueUserToken) takes the actor token of a
    /// trusted service key alone, and nothing else: no user token, however
    /// mighty, and no actor token of another key.
    #[test]
    fn service_calls_need_a_trusted_actor_token_and_nothing_more() {
        let table = AccessTable::from_pool(rdm_proto::descriptor_pool());
        let path = "/rdm.inventory.v1.AuthService/IssueUserToken";
        assert_eq!(table.get(path), Some(&Access::Service));
        let (user_key, service_key, stranger) = (key(), key(), key());
        let verifier =
            Verifier::new(&[user_key.public_jwk().clone()], &TokenPolicy::default()).unwrap();
        let actors = ActorVerifier::new(&[service_key.public_jwk().clone()]).unwrap();
        let root = format!(
            "Bearer {}",
            user_key.sign(&claims(&["platform-admin"], 60)).unwrap()
        );
        let denied = table
            .authorize(&verifier, path, Some(&root), Some((&actors, None)))
            .unwrap_err();
        assert_eq!(denied.code, crate::ErrorCode::PermissionDenied);
        let forged = stranger.actor_token_for("usp", "t1", "u1").unwrap();
        assert!(
            table
                .authorize(&verifier, path, None, Some((&actors, Some(&forged))))
                .is_err()
        );
        let actor = service_key.actor_token_for("usp", "t1", "u1").unwrap();
        let p = table
            .authorize(&verifier, path, None, Some((&actors, Some(&actor))))
            .unwrap()
            .unwrap();
        assert_eq!((p.tenant_id.as_str(), p.user_id.as_str()), ("t1", "u1"));
        assert!(p.roles.is_empty());
    }

    /// Rules that are missing, empty, say two things or name no role deny
    /// the RPC to everybody, platform admins included.
    #[test]
    fn a_missing_or_malformed_rule_fails_closed() {
        let dir = tempfile::tempdir().unwrap();
        let proto_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
        std::fs::write(
            dir.path().join("t.proto"),
            r#"syntax = "proto3";
package t.v1;
import "rdm/api/v1/access.proto";
message M {}
service S {
  rpc NoRule(M) returns (M);
  rpc Empty(M) returns (M) { option (rdm.api.v1.access) = {}; }
  rpc Unspecified(M) returns (M) { option (rdm.api.v1.access) = {role: ROLE_UNSPECIFIED}; }
  rpc Two(M) returns (M) { option (rdm.api.v1.access) = {public: true, role: ROLE_VIEWER}; }
  rpc PublicFalse(M) returns (M) { option (rdm.api.v1.access) = {public: false}; }
  rpc Good(M) returns (M) { option (rdm.api.v1.access) = {role: ROLE_ADMIN}; }
}"#,
        )
        .unwrap();
        let mut compiler = protox::Compiler::new([dir.path(), proto_root.as_path()]).unwrap();
        compiler.include_imports(true).open_file("t.proto").unwrap();
        let pool =
            DescriptorPool::decode(compiler.encode_file_descriptor_set().as_slice()).unwrap();
        let table = AccessTable::from_pool(&pool);
        for name in ["NoRule", "Empty", "Unspecified", "Two", "PublicFalse"] {
            assert_eq!(
                table.get(&format!("/t.v1.S/{name}")),
                Some(&Access::Denied),
                "{name}"
            );
        }
        assert_eq!(table.get("/t.v1.S/Good"), Some(&Access::Role(Role::Admin)));

        let key = key();
        let verifier = Verifier::new(&[key.public_jwk().clone()], &TokenPolicy::default()).unwrap();
        let root = key.sign(&claims(&["platform-admin"], 60)).unwrap();
        let err = table
            .authorize(
                &verifier,
                "/t.v1.S/Empty",
                Some(&format!("Bearer {root}")),
                None,
            )
            .unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::PermissionDenied);
        assert!(
            table
                .authorize(
                    &verifier,
                    "/t.v1.S/Good",
                    Some(&format!("Bearer {root}")),
                    None
                )
                .is_ok()
        );
    }
}
