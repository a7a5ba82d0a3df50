//! From a request's target to an engine target: a device's endpoint, or
//! inline settings checked like a stored endpoint, their host vetted by the
//! address policy, both by the inventory.
use crate::engine::target::{Target, UsmUser, Version};
use rdm_kit::{
    Error, Principal, Result,
    targets::{self, TargetRef},
};
use rdm_proto::{
    inventory::{self as inv, endpoint::Settings},
    snmp::{self as pb, target::Target as Which},
};
use snmp2::v3::{AuthProtocol, Cipher};
use std::{net::SocketAddr, time::Duration};

pub struct Resolved {
    pub target: Target,
    pub device_id: String,
}

/// The inventory as this service reaches it: to resolve targets and to list
/// a tenant's devices.
#[derive(Clone)]
pub struct Inventory(pub targets::Inventory);

impl Inventory {
    pub fn backend(&self) -> &rdm_kit::invoke::Backend {
        &self.0.backend
    }

    /// A device of `p`'s tenant as an engine target.
    pub async fn device(&self, p: &Principal, device_id: &str) -> Result<Resolved> {
        from_device(
            self.0
                .resolve(p, TargetRef::Device(device_id.to_owned()))
                .await?,
        )
    }

    /// Many devices of `p`'s tenant, the inventory's answer for each, in
    /// order (the inventory resolves and vets their hosts). [`from_device`]
    /// makes each an engine target.
    pub async fn devices(
        &self,
        p: &Principal,
        ids: &[String],
    ) -> Result<Vec<Result<inv::ResolveTargetResponse>>> {
        self.0.resolve_devices(p, ids).await
    }

    pub async fn resolve(&self, p: &Principal, target: Option<&pb::Target>) -> Result<Resolved> {
        let which = target
            .and_then(|t| t.target.as_ref())
            .ok_or_else(|| Error::invalid("target", "name a device_id or an inline endpoint"))?;
        let target = match which {
            Which::DeviceId(id) => TargetRef::Device(id.clone()),
            Which::Endpoint(settings) => {
                TargetRef::Inline(Box::new(Settings::Snmp(settings.clone())))
            }
        };
        from_device(self.0.resolve(p, target).await?)
    }
}

/// A resolved endpoint as an engine target, sent to the vetted IP the
/// inventory resolved the host to, not the name.
pub fn from_device(reply: inv::ResolveTargetResponse) -> Result<Resolved> {
    match reply.endpoint.and_then(|e| e.settings) {
        Some(Settings::Snmp(settings)) => Ok(Resolved {
            target: engine_target(&settings, &reply.address)?,
            device_id: reply.device_id,
        }),
        _ => Err(Error::internal(
            "reading a resolved endpoint",
            "no SNMP settings",
        )),
    }
}

/// An engine target from settings and the vetted IP to send to.
fn engine_target(s: &pb::SnmpEndpoint, ip: &str) -> Result<Target> {
    let text = |v: &Option<String>| v.as_deref().unwrap_or_default().to_owned();
    let port = match s.port {
        0 => 161,
        port => port as u16,
    };
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| Error::internal("reading a resolved target", "not a vetted IP"))?;
    let addr = SocketAddr::new(ip, port);
    let version = match text(&s.version).as_str() {
        "1" => Version::V1,
        "2c" => Version::V2c,
        _ => Version::V3,
    };
    let mut target = if version == Version::V3 {
        let level = text(&s.security_level);
        let auth = s
            .auth_protocol
            .as_deref()
            .filter(|_| level != "noAuthNoPriv")
            .map(|name| (auth_protocol(name), text(&s.auth_password).into_bytes()));
        let privacy = s
            .priv_protocol
            .as_deref()
            .filter(|_| level == "authPriv")
            .map(|name| (cipher(name), text(&s.priv_password).into_bytes()));
        Target::usm(
            addr,
            UsmUser {
                username: text(&s.username).into_bytes(),
                auth,
                privacy,
                context_name: text(&s.context_name).into_bytes(),
            },
        )
    } else {
        Target::community(addr, version, &text(&s.community))
    };
    if s.timeout_ms > 0 {
        target.timeout = Duration::from_millis(s.timeout_ms.into());
    }
    if let Some(n) = s.retries {
        target.retries = n;
    }
    if s.max_repetitions > 0 {
        target.max_repetitions = s.max_repetitions;
    }
    if let Some(n) = s.max_in_flight {
        target.max_in_flight = n.clamp(1, Target::MAX_IN_FLIGHT);
    }
    Ok(target)
}

/// Names as the endpoint schema spells them canonically.
fn auth_protocol(name: &str) -> AuthProtocol {
    match name {
        "MD5" => AuthProtocol::Md5,
        "SHA-224" => AuthProtocol::Sha224,
        "SHA-256" => AuthProtocol::Sha256,
        "SHA-384" => AuthProtocol::Sha384,
        "SHA-512" => AuthProtocol::Sha512,
        _ => AuthProtocol::Sha1,
    }
}

fn cipher(name: &str) -> Cipher {
    match name {
        "DES" => Cipher::Des,
        "AES-192" => Cipher::Aes192,
        "AES-256" => Cipher::Aes256,
        _ => Cipher::Aes128,
    }
}
