//! Target resolution for protocol services: a device's endpoint with its
//! secrets opened, or an inline address vetted against the tenant's
//! allow-list. Only reachable by a service acting for the caller (the guard
//! checks the actor token; see DESIGN.md).
use crate::{
    Inventory,
    device_store::{self as ds},
    devices::{device_not_found, no_endpoint, secret_place},
    store, tenant_scope,
};
use ipnet::IpNet;
use rdm_kit::{
    Error, Principal, Result,
    endpoint::{self, Protocol, structs},
};
use rdm_proto::inventory::{self as pb, resolve_target_request::Target};
use serde_json::Value;
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::Duration,
};

/// Checks and normalizes CIDRs for storage ("" when none).
pub(crate) fn normalize_cidrs(cidrs: &[String]) -> Result<String> {
    let nets = cidrs
        .iter()
        .map(|c| {
            c.trim()
                .parse::<IpNet>()
                .map(|n| n.trunc().to_string())
                .map_err(|_| {
                    Error::invalid(
                        "inline_target_cidrs",
                        format!("{c:?} is not a CIDR like 10.0.0.0/8 or ::1/128"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(nets.join(","))
}

impl Inventory {
    pub(crate) async fn resolve(
        &self,
        p: &Principal,
        req: &pb::ResolveTargetRequest,
    ) -> Result<pb::ResolveTargetResponse> {
        let protocol: Protocol = req.protocol.parse()?;
        match &req.target {
            Some(Target::DeviceId(id)) => self.resolve_device(p, protocol, id).await,
            Some(Target::InlineAddress(address)) => self.resolve_inline(p, address).await,
            None => Err(Error::invalid(
                "target",
                "name a device_id or an inline_address",
            )),
        }
    }

    async fn resolve_device(
        &self,
        p: &Principal,
        protocol: Protocol,
        id: &str,
    ) -> Result<pb::ResolveTargetResponse> {
        let mut tx = self.db().begin(tenant_scope(p)).await?;
        let device = ds::device(&mut tx, &p.tenant_id, id)
            .await?
            .ok_or_else(|| device_not_found(id))?;
        let row = ds::endpoint(&mut tx, &p.tenant_id, id, protocol.as_str())
            .await?
            .ok_or_else(|| no_endpoint(id, protocol))?;
        drop(tx);
        self.opened(p, protocol, device, &row)
    }

    /// Many devices at once: one read for all, an error of its own for each
    /// device that is missing or has no endpoint for the protocol.
    pub(crate) async fn resolve_many(
        &self,
        p: &Principal,
        req: &pb::ResolveTargetsRequest,
    ) -> Result<pb::ResolveTargetsResponse> {
        const MAX: usize = 1000;
        let protocol: Protocol = req.protocol.parse()?;
        if req.device_ids.len() > MAX {
            return Err(Error::invalid(
                "device_ids",
                format!("at most {MAX} a call"),
            ));
        }
        let mut tx = self.db().begin(tenant_scope(p)).await?;
        let (devices, endpoints) =
            ds::devices_and_endpoints(&mut tx, &p.tenant_id, &req.device_ids, protocol.as_str())
                .await?;
        drop(tx);
        let mut devices: HashMap<String, ds::DeviceRow> =
            devices.into_iter().map(|d| (d.id.clone(), d)).collect();
        let endpoints: HashMap<&str, &ds::EndpointRow> = endpoints
            .iter()
            .map(|e| (e.device_id.as_str(), e))
            .collect();
        let targets = req
            .device_ids
            .iter()
            .map(|id| {
                let found = match (devices.remove(id), endpoints.get(id.as_str())) {
                    (None, _) => Err(device_not_found(id)),
                    (Some(_), None) => Err(no_endpoint(id, protocol)),
                    (Some(device), Some(row)) => self.opened(p, protocol, device, row),
                };
                pb::ResolvedTarget {
                    result: Some(match found {
                        Ok(target) => pb::resolved_target::Result::Target(target),
                        Err(e) => pb::resolved_target::Result::Error(pb::ResolveError {
                            code: e.code.reason().to_owned(),
                            message: e.message,
                        }),
                    }),
                }
            })
            .collect();
        Ok(pb::ResolveTargetsResponse { targets })
    }

    /// A device's endpoint with its secrets opened.
    fn opened(
        &self,
        p: &Principal,
        protocol: Protocol,
        device: ds::DeviceRow,
        row: &ds::EndpointRow,
    ) -> Result<pb::ResolveTargetResponse> {
        let mut config: serde_json::Map<String, Value> = serde_json::from_str(&row.config)
            .map_err(|e| Error::internal("reading a stored endpoint", e))?;
        let sealed: BTreeMap<String, String> = serde_json::from_str(&row.secrets)
            .map_err(|e| Error::internal("reading stored secrets", e))?;
        let mut opened = BTreeMap::new();
        for (name, value) in &sealed {
            let place = secret_place(&row.tenant_id, &row.device_id, &row.protocol, name);
            opened.insert(name.clone(), self.config.keyring.open(value, &place)?);
        }
        if protocol == Protocol::Snmp && !config.contains_key("host") {
            config.insert("host".into(), Value::from(device.address.clone()));
        }
        // Debug, not info: a poll resolves every device it names, each time.
        tracing::debug!(tenant_id = %p.tenant_id, device_id = %device.id, %protocol, "target resolved");
        Ok(pb::ResolveTargetResponse {
            device_id: device.id,
            config: Some(structs::from_json(&endpoint::with_secrets(
                &config, &opened,
            ))),
            address: device.address,
        })
    }

    /// Every address the name resolves to must lie in the allow-list, and
    /// the caller gets the vetted IP, not the name (no DNS rebinding).
    async fn resolve_inline(
        &self,
        p: &Principal,
        address: &str,
    ) -> Result<pb::ResolveTargetResponse> {
        let mut tx = self.db().begin(tenant_scope(p)).await?;
        let tenant = store::tenant_by_id(&mut tx, &p.tenant_id)
            .await?
            .ok_or_else(|| Error::unauthenticated("the tenant of this token no longer exists"))?;
        drop(tx);
        let allowed: Vec<IpNet> = tenant
            .inline_cidrs
            .split(',')
            .filter_map(|c| c.parse().ok())
            .collect();
        if allowed.is_empty() {
            return Err(Error::permission_denied(
                "inline targets are off for this tenant: name a device_id",
            ));
        }
        let ips: Vec<IpAddr> = match address
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => vec![ip],
            Err(_) if endpoint::is_valid_host(address) => {
                let lookup = tokio::time::timeout(
                    Duration::from_secs(3),
                    tokio::net::lookup_host((address, 0)),
                );
                let found = lookup.await.map_err(|_| {
                    Error::invalid("inline_address", format!("resolving {address} timed out"))
                })?;
                found
                    .map_err(|e| {
                        Error::invalid("inline_address", format!("cannot resolve {address}: {e}"))
                    })?
                    .map(|a| a.ip())
                    .collect()
            }
            Err(_) => {
                return Err(Error::invalid(
                    "inline_address",
                    format!("{address:?} is not an IP address or host name"),
                ));
            }
        };
        if let Some(outside) = ips
            .iter()
            .find(|ip| !allowed.iter().any(|net| net.contains(*ip)))
        {
            return Err(Error::permission_denied(format!(
                "{address} ({outside}) is outside this tenant's inline target networks"
            )));
        }
        let ip = ips.first().ok_or_else(|| {
            Error::invalid("inline_address", format!("{address} resolves to nothing"))
        })?;
        Ok(pb::ResolveTargetResponse {
            device_id: String::new(),
            config: None,
            address: ip.to_string(),
        })
    }
}
