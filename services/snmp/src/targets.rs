//! From a request's target to an engine target: a device's endpoint, or an
//! inline endpoint checked like a stored one, its host vetted against the
//! tenant's inline-target policy, both by the inventory.
use crate::engine::target::{Target, UsmUser, Version};
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    auth::SigningKey,
    client::Forward,
    endpoint::{self, Protocol, structs},
    invoke::Backend,
};
use rdm_proto::{
    inventory::{self as inv, device_service_client::DeviceServiceClient, resolve_target_request},
    snmp::{self as pb, target::Target as Which},
};
use serde_json::{Map, Value};
use snmp2::v3::{AuthProtocol, Cipher};
use std::{net::SocketAddr, sync::Arc, time::Duration};

pub struct Resolved {
    pub target: Target,
    pub device_id: String,
}

/// The inventory as this service reaches it: to resolve targets (with an
/// actor token it signs) and to list a tenant's devices.
#[derive(Clone)]
pub struct Inventory {
    pub backend: Backend,
    /// Signs this service's actor tokens for the inventory's internal RPCs.
    pub service_key: Arc<SigningKey>,
}

impl Inventory {
    /// A device of `p`'s tenant as an engine target.
    pub async fn device(&self, p: &Principal, device_id: &str) -> Result<Resolved> {
        let target = pb::Target {
            target: Some(Which::DeviceId(device_id.to_owned())),
        };
        self.resolve(p, Some(&target)).await
    }

    /// Many devices of `p`'s tenant, the inventory's answer for each, in
    /// order: one call per thousand (the inventory resolves and vets their
    /// hosts). [`from_device`] makes each an engine target.
    pub async fn devices(
        &self,
        p: &Principal,
        ids: &[String],
    ) -> Result<Vec<Result<inv::ResolveTargetResponse>>> {
        let forward = Forward::acting("snmp", &self.service_key, p, None)?;
        let mut client = DeviceServiceClient::with_interceptor(self.backend.clone(), forward);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(1000) {
            let reply = client
                .resolve_targets(inv::ResolveTargetsRequest {
                    protocol: Protocol::Snmp.as_str().to_owned(),
                    device_ids: chunk.to_vec(),
                })
                .await
                .map_err(|s| Error::from_status(&s))?
                .into_inner();
            if reply.targets.len() != chunk.len() {
                return Err(Error::internal(
                    "resolving devices",
                    format!(
                        "{} results for {} devices",
                        reply.targets.len(),
                        chunk.len()
                    ),
                ));
            }
            for resolved in reply.targets {
                out.push(match resolved.result {
                    Some(inv::resolved_target::Result::Target(t)) => Ok(t),
                    Some(inv::resolved_target::Result::Error(e)) => {
                        let code = ErrorCode::ALL.into_iter().find(|c| c.reason() == e.code);
                        Err(Error::new(code.unwrap_or(ErrorCode::Internal), e.message))
                    }
                    None => Err(Error::internal("resolving devices", "an empty result")),
                });
            }
        }
        Ok(out)
    }

    pub async fn resolve(&self, p: &Principal, target: Option<&pb::Target>) -> Result<Resolved> {
        let which = target
            .and_then(|t| t.target.as_ref())
            .ok_or_else(|| Error::invalid("target", "name a device_id or an inline endpoint"))?;
        let (request, inline) = match which {
            Which::DeviceId(id) => (resolve_target_request::Target::DeviceId(id.clone()), None),
            Which::Endpoint(fields) => {
                let settings =
                    endpoint::parse(Protocol::Snmp, structs::to_json(fields)).map_err(in_target)?;
                let mut config = settings.config;
                let secrets: Vec<&str> = settings.secrets.keys().map(String::as_str).collect();
                endpoint::complete(Protocol::Snmp, &mut config, &secrets, "").map_err(in_target)?;
                let host = config
                    .get("host")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let full = endpoint::with_secrets(&config, &settings.secrets);
                (
                    resolve_target_request::Target::InlineAddress(host),
                    Some(full),
                )
            }
        };
        let forward = Forward::acting("snmp", &self.service_key, p, None)?;
        let mut client = DeviceServiceClient::with_interceptor(self.backend.clone(), forward);
        let reply = client
            .resolve_target(inv::ResolveTargetRequest {
                protocol: Protocol::Snmp.as_str().to_owned(),
                target: Some(request),
            })
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner();
        match inline {
            // The vetted address, not the name (which could resolve elsewhere now).
            Some(settings) => Ok(Resolved {
                target: engine_target(&settings, &reply.address)?,
                device_id: reply.device_id,
            }),
            None => from_device(reply),
        }
    }
}

/// A device's resolved endpoint as an engine target.
pub fn from_device(reply: inv::ResolveTargetResponse) -> Result<Resolved> {
    let settings = reply
        .config
        .as_ref()
        .map(structs::to_json)
        .unwrap_or_default();
    let Value::Object(settings) = settings else {
        return Err(Error::internal(
            "reading a resolved endpoint",
            "not an object",
        ));
    };
    // The vetted IP the inventory resolved the host to, not the name.
    Ok(Resolved {
        target: engine_target(&settings, &reply.address)?,
        device_id: reply.device_id,
    })
}

/// Field names of an inline endpoint are reported under `target.endpoint`.
fn in_target(mut e: Error) -> Error {
    if let Some(field) = e.metadata.get_mut("field") {
        *field = format!("target.endpoint.{field}");
    }
    e
}

/// An engine target from settings and the vetted IP to send to.
fn engine_target(s: &Map<String, Value>, ip: &str) -> Result<Target> {
    let text = |k: &str| s.get(k).and_then(Value::as_str).unwrap_or_default();
    let number = |k: &str| s.get(k).and_then(Value::as_u64);
    let port = number("port").unwrap_or(161) as u16;
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| Error::internal("reading a resolved target", "not a vetted IP"))?;
    let addr = SocketAddr::new(ip, port);
    let version = match text("version") {
        "1" => Version::V1,
        "2c" => Version::V2c,
        _ => Version::V3,
    };
    let mut target = if version == Version::V3 {
        let auth = match text("auth_protocol") {
            "" => None,
            name => Some((
                auth_protocol(name),
                text("auth_password").as_bytes().to_vec(),
            )),
        };
        let privacy = match text("priv_protocol") {
            "" => None,
            name => Some((cipher(name), text("priv_password").as_bytes().to_vec())),
        };
        let level = text("security_level");
        Target::usm(
            addr,
            UsmUser {
                username: text("username").as_bytes().to_vec(),
                auth: auth.filter(|_| level != "noAuthNoPriv"),
                privacy: privacy.filter(|_| level == "authPriv"),
                context_name: text("context_name").as_bytes().to_vec(),
            },
        )
    } else {
        Target::community(addr, version, text("community"))
    };
    if let Some(ms) = number("timeout_ms") {
        target.timeout = Duration::from_millis(ms);
    }
    if let Some(n) = number("retries") {
        target.retries = n as u32;
    }
    if let Some(n) = number("max_repetitions") {
        target.max_repetitions = n as u32;
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
