//! Target resolution for protocol services: a device's endpoint with its
//! secrets opened, or an inline address vetted against the tenant's
//! allow-list. Only reachable by a service acting for the caller (the guard
//! checks the actor token; see DESIGN.md).
use crate::{
    Inventory,
    device_store::{self as ds},
    devices::{device_not_found, no_endpoint, secret_place},
    endpoints, settings, store,
};
use ipnet::IpNet;
use rdm_kit::{
    Error, Principal, Result, address,
    db::{Scope, TenantTx},
    endpoint,
};
use rdm_proto::inventory::{self as pb, resolve_target_request::Target};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

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
                        "allowed_target_cidrs",
                        format!("{c:?} is not a CIDR like 10.0.0.0/8 or ::1/128"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(nets.join(","))
}

/// The tenant's allowed networks: its half of the address policy.
pub(crate) async fn allowed_nets(tx: &mut TenantTx, tenant_id: &str) -> Result<Vec<IpNet>> {
    Ok(tenant_policy(tx, tenant_id).await?.0)
}

/// The tenant's allowed networks and its own settings, which every
/// resolved target carries.
async fn tenant_policy(
    tx: &mut TenantTx,
    tenant_id: &str,
) -> Result<(Vec<IpNet>, pb::TenantSettings)> {
    let tenant = store::token_tenant(tx, tenant_id).await?;
    Ok((
        address::parse_allowed(&tenant.inline_cidrs),
        settings::shown(settings::decode(&tenant.settings)?),
    ))
}

impl Inventory {
    /// An address as it is stored: IP literals and names of this host are
    /// checked now (403 naming the rule); other names when they are resolved.
    pub(crate) fn vet_stored(
        &self,
        field: &str,
        host: &str,
        port: u16,
        allowed: &[IpNet],
    ) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        self.config
            .addresses
            .check_stored(host, port, allowed)
            .map_err(|e| e.with_meta("field", field))
    }

    /// Resolves a target's host once and vets every address it has; the IP
    /// to connect to.
    async fn vet(&self, host: &str, allowed: &[IpNet]) -> Result<String> {
        let addr = self.config.addresses.resolve(host, 0, allowed).await?;
        Ok(addr.ip().to_string())
    }

    pub(crate) async fn resolve(
        &self,
        p: &Principal,
        req: &pb::ResolveTargetRequest,
    ) -> Result<pb::ResolveTargetResponse> {
        let protocol = req.protocol.as_str();
        endpoint::schema(protocol)?;
        match &req.target {
            Some(Target::DeviceId(id)) => self.resolve_device(p, protocol, id).await,
            Some(Target::Inline(inline)) => self.resolve_inline(p, protocol, inline).await,
            Some(Target::UspEndpointId(agent)) if protocol == "usp" => {
                let mut tx = self.db().begin(Scope::of(p)).await?;
                let id = ds::usp_agent_device(&mut tx, &p.tenant_id, agent)
                    .await?
                    .ok_or_else(|| {
                        Error::not_found(format!("no device of yours has USP agent {agent}"))
                    })?;
                drop(tx);
                self.resolve_device(p, protocol, &id).await
            }
            Some(Target::UspEndpointId(_)) => Err(Error::invalid(
                "target.usp_endpoint_id",
                "names a USP agent: for protocol usp only",
            )),
            None => Err(Error::invalid(
                "target",
                "name a device_id or inline settings",
            )),
        }
    }

    async fn resolve_device(
        &self,
        p: &Principal,
        protocol: &str,
        id: &str,
    ) -> Result<pb::ResolveTargetResponse> {
        let mut tx = self.db().begin(Scope::of(p)).await?;
        let found = ds::device_to_resolve(&mut tx, &p.tenant_id, id, protocol)
            .await?
            .ok_or_else(|| device_not_found(id))?;
        drop(tx);
        let row = found
            .endpoint(protocol)
            .ok_or_else(|| no_endpoint(id, protocol))?;
        let allowed = address::parse_allowed(&found.inline_cidrs);
        let settings = settings::shown(settings::decode(&found.settings)?);
        let mut target = self.opened(protocol, found.device, &row, &allowed)?;
        self.vet_resolved(&mut target, &allowed).await?;
        target.tenant_settings = Some(settings);
        Ok(target)
    }

    /// Replaces a resolved target's host by its vetted IP (`address`).
    async fn vet_resolved(
        &self,
        target: &mut pb::ResolveTargetResponse,
        allowed: &[IpNet],
    ) -> Result<()> {
        if !target.address.is_empty() {
            target.address = self.vet(&target.address, allowed).await?;
        }
        Ok(())
    }

    /// Many devices at once: one read for all, an error of its own for each
    /// device that is missing or has no endpoint for the protocol.
    pub(crate) async fn resolve_many(
        &self,
        p: &Principal,
        req: &pb::ResolveTargetsRequest,
    ) -> Result<pb::ResolveTargetsResponse> {
        const MAX: usize = 1000;
        let protocol = req.protocol.as_str();
        endpoint::schema(protocol)?;
        if req.device_ids.len() > MAX {
            return Err(Error::invalid(
                "device_ids",
                format!("at most {MAX} a call"),
            ));
        }
        let mut tx = self.db().begin(Scope::of(p)).await?;
        let (devices, endpoints) =
            ds::devices_and_endpoints(&mut tx, &p.tenant_id, &req.device_ids, protocol).await?;
        let (allowed, settings) = tenant_policy(&mut tx, &p.tenant_id).await?;
        drop(tx);
        let mut devices: HashMap<String, ds::DeviceRow> =
            devices.into_iter().map(|d| (d.id.clone(), d)).collect();
        let endpoints: HashMap<&str, &ds::EndpointRow> = endpoints
            .iter()
            .map(|e| (e.device_id.as_str(), e))
            .collect();
        let opened: Vec<Result<pb::ResolveTargetResponse>> = req
            .device_ids
            .iter()
            .map(
                |id| match (devices.remove(id), endpoints.get(id.as_str())) {
                    (None, _) => Err(device_not_found(id)),
                    (Some(_), None) => Err(no_endpoint(id, protocol)),
                    (Some(device), Some(row)) => self.opened(protocol, device, row, &allowed),
                },
            )
            .collect();
        // Names are looked up concurrently; IP literals cost nothing.
        let vetted = futures::future::join_all(opened.into_iter().map(|found| async {
            let mut target = found?;
            self.vet_resolved(&mut target, &allowed).await?;
            target.tenant_settings = Some(settings.clone());
            Ok(target)
        }))
        .await;
        let targets = vetted
            .into_iter()
            .map(
                |found: Result<pb::ResolveTargetResponse>| pb::ResolvedTarget {
                    result: Some(match found {
                        Ok(target) => pb::resolved_target::Result::Target(target),
                        Err(e) => pb::resolved_target::Result::Error(pb::ResolveError {
                            code: e.code.reason().to_owned(),
                            message: e.message,
                        }),
                    }),
                },
            )
            .collect();
        Ok(pb::ResolveTargetsResponse { targets })
    }

    /// A device's endpoint with its secrets opened.
    fn opened(
        &self,
        protocol: &str,
        device: ds::DeviceRow,
        row: &ds::EndpointRow,
        allowed: &[IpNet],
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
        // An endpoint imported from an export lacks its secrets until they
        // are PUT again: say which, instead of sending without them.
        let held: Vec<&str> = opened.keys().map(String::as_str).collect();
        endpoints::complete(protocol, &mut config.clone(), &held, &device.address).map_err(|e| {
            Error::new(
                rdm_kit::ErrorCode::FailedPrecondition,
                format!(
                    "device {}'s {protocol} endpoint is incomplete ({}); it was imported without its secrets: PUT them again",
                    device.id, e.message
                ),
            )
        })?;
        // Debug, not info: a poll resolves every device it names, each time.
        tracing::debug!(tenant_id = %row.tenant_id, device_id = %device.id, %protocol, "target resolved");
        // XMiDT and an ACS know a device by its serial unless the endpoint
        // says otherwise.
        if matches!(protocol, "webpa" | "tr069") && !device.serial.is_empty() {
            config
                .entry("device_id")
                .or_insert_with(|| Value::from(device.serial.clone()));
        }
        target(
            protocol,
            device.id,
            config,
            &opened,
            &device.address,
            allowed,
        )
    }

    /// A CPE calling rdm's ACS: its tenant by slug, its device by the id
    /// its Inform gives, and the tenant's TR-069 policy (FindCpe).
    pub(crate) async fn find_cpe(&self, req: &pb::FindCpeRequest) -> Result<pb::FindCpeResponse> {
        let unknown = || Error::not_found(format!("no tenant {:?}", req.tenant_slug));
        let mut tx = self
            .db()
            .begin(Scope::Login {
                slug: &req.tenant_slug,
            })
            .await?;
        let tenant = store::tenant_by_slug(&mut tx, &req.tenant_slug)
            .await?
            .ok_or_else(unknown)?;
        drop(tx);
        let policy = self.opened_policy(&tenant.id, settings::decode(&tenant.settings)?)?;
        let allowed = address::parse_allowed(&tenant.inline_cidrs);
        let scope = || Scope::Tenant {
            tenant_id: &tenant.id,
            user_id: "",
        };
        let mut tx = self.db().begin(scope()).await?;
        let found = ds::cwmp_device(&mut tx, &tenant.id, &req.acs_device_id).await?;
        drop(tx);
        let mut reply = pb::FindCpeResponse {
            tenant_id: tenant.id.clone(),
            allowed_target_cidrs: allowed.iter().map(ToString::to_string).collect(),
            ..Default::default()
        };
        let device_id = match found {
            Some(id) => id,
            None if req.register => {
                let id = self
                    .register_cpe(&tenant.id, &policy, &allowed, req)
                    .await?;
                reply.registered = true;
                id
            }
            None => {
                reply.policy = Some(policy);
                return Ok(reply);
            }
        };
        reply.policy = Some(policy);
        let mut tx = self.db().begin(scope()).await?;
        let found = ds::device_to_resolve(&mut tx, &tenant.id, &device_id, "tr069")
            .await?
            .ok_or_else(|| device_not_found(&device_id))?;
        drop(tx);
        let row = found
            .endpoint("tr069")
            .ok_or_else(|| no_endpoint(&device_id, "tr069"))?;
        let target = self.opened("tr069", found.device, &row, &allowed)?;
        reply.device_id = device_id;
        if let Some(pb::endpoint::Settings::Tr069(e)) = target.endpoint.and_then(|e| e.settings) {
            reply.endpoint = Some(e);
        }
        Ok(reply)
    }

    /// Makes the device a CPE's Inform describes, with the tenant's
    /// auto-registration label and a builtin tr069 endpoint naming it.
    async fn register_cpe(
        &self,
        tenant_id: &str,
        policy: &rdm_proto::tr069::Tr069Policy,
        allowed: &[IpNet],
        req: &pb::FindCpeRequest,
    ) -> Result<String> {
        let Some((key, value)) = policy.cwmp_auto_register_label.split_once('=') else {
            return Err(Error::new(
                rdm_kit::ErrorCode::FailedPrecondition,
                "the tenant does not register unknown CPEs (tr069.cwmp_auto_register_label is empty)",
            ));
        };
        let fields = crate::devices::DeviceFields {
            name: req.acs_device_id.clone(),
            serial: req.serial_number.clone(),
            manufacturer: req.manufacturer.clone(),
            model: req.product_class.clone(),
            labels: [(key.to_owned(), value.to_owned())].into(),
            ..Default::default()
        };
        let endpoint = rdm_proto::tr069::Tr069Endpoint {
            acs: Some("builtin".into()),
            device_id: Some(req.acs_device_id.clone()),
            ..Default::default()
        };
        let settings =
            endpoint::checked(&endpoint::dynamic(&endpoint, "rdm.tr069.v1.Tr069Endpoint")?)?;
        let mut tx = self
            .db()
            .begin_write(Scope::Tenant {
                tenant_id,
                user_id: "",
            })
            .await?;
        let device = self
            .insert_device(&mut tx, tenant_id, fields, allowed)
            .await?;
        let row = self.endpoint_row(&device, "tr069", settings, None, allowed, false)?;
        ds::put_endpoint(&mut tx, &row).await?;
        tx.commit().await?;
        tracing::info!(%tenant_id, device_id = %device.id, cpe = %req.acs_device_id, "CPE registered");
        Ok(device.id)
    }

    /// Settings given inline: checked as a stored endpoint is (every secret
    /// given now), their host vetted by the same policy.
    async fn resolve_inline(
        &self,
        p: &Principal,
        protocol: &str,
        inline: &pb::Endpoint,
    ) -> Result<pb::ResolveTargetResponse> {
        let given = endpoint::dynamic(inline, "rdm.inventory.v1.Endpoint")?;
        let settings = match endpoint::settings_of(&given) {
            Some((name, settings)) if name == protocol => endpoint::checked(&settings)?,
            _ => {
                return Err(Error::invalid(
                    "inline",
                    format!("give {protocol} settings inline"),
                ));
            }
        };
        let mut config = settings.config;
        let held: Vec<&str> = settings.secrets.keys().map(String::as_str).collect();
        endpoints::complete(protocol, &mut config, &held, "")?;
        let mut tx = self.db().begin(Scope::of(p)).await?;
        let (allowed, tenant_settings) = tenant_policy(&mut tx, &p.tenant_id).await?;
        drop(tx);
        for (field, host, port) in endpoint::addresses(protocol, &config)? {
            self.vet_stored(&field, &host, port, &allowed)?;
        }
        let mut target = target(
            protocol,
            String::new(),
            config,
            &settings.secrets,
            "",
            &allowed,
        )?;
        self.vet_resolved(&mut target, &allowed).await?;
        target.tenant_settings = Some(tenant_settings);
        Ok(target)
    }
}

/// A resolved target: the settings with their secrets, and the host to vet
/// (an SNMP endpoint's own, or the device's address).
fn target(
    protocol: &str,
    device_id: String,
    mut config: serde_json::Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    device_address: &str,
    allowed: &[IpNet],
) -> Result<pb::ResolveTargetResponse> {
    if protocol == "snmp" && !config.contains_key("host") {
        config.insert("host".into(), Value::from(device_address));
    }
    let host = config
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let settings = endpoint::typed(protocol, &endpoint::with_secrets(&config, secrets))?;
    Ok(pb::ResolveTargetResponse {
        endpoint: Some(pb::Endpoint {
            device_id: device_id.clone(),
            protocol: protocol.to_owned(),
            settings: Some(settings),
            update_time: None,
        }),
        device_id,
        address: host,
        allowed_target_cidrs: allowed.iter().map(ToString::to_string).collect(),
        tenant_settings: None,
    })
}
