//! Devices, their endpoints and bulk import/export. Endpoint secrets are
//! sealed with the tenant, device, protocol and field as associated data,
//! and never leave in a reply: replies carry `<secret>_set: true` instead.
use crate::{
    Inventory,
    device_store::{self as ds, DeviceFilter, DeviceRow, EndpointRow, LabelTerm},
    endpoints, err, reply,
    targets::allowed_nets,
};
use futures::Stream;
use ipnet::IpNet;
use rdm_kit::{
    Error, Principal, Result,
    db::{Scope, TenantTx, mask_paths, now_millis, page, timestamp},
    endpoint,
};
use rdm_proto::{
    google::api::HttpBody,
    inventory::{self as pb, device_service_server::DeviceService},
};
use serde_json::{Map, Value, json};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    pin::Pin,
};
use tonic::{Request, Response, Status};

const MAX_LABELS: usize = 64;

/// Device fields as a user sends them (create, update, import).
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DeviceFields {
    pub name: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
    pub notes: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

impl DeviceFields {
    fn check(&self) -> Result<()> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > 200 || !rdm_kit::text::is_plain(name) {
            return Err(Error::invalid(
                "name",
                "name must be 1 to 200 printable characters (no invisible or direction-changing ones)",
            ));
        }
        for (field, value, max) in [
            ("serial", &self.serial, 200),
            ("manufacturer", &self.manufacturer, 200),
            ("model", &self.model, 200),
            ("firmware", &self.firmware, 200),
            ("notes", &self.notes, 4000),
        ] {
            if value.chars().count() > max {
                return Err(Error::invalid(
                    field,
                    format!("{field} must be at most {max} characters"),
                ));
            }
        }
        if !self.address.is_empty() && !rdm_kit::address::is_valid_host(&self.address) {
            return Err(Error::invalid(
                "address",
                "address must be an IP address or a host name",
            ));
        }
        if self.labels.len() > MAX_LABELS {
            return Err(Error::invalid(
                "labels",
                format!("at most {MAX_LABELS} labels"),
            ));
        }
        for (key, value) in &self.labels {
            if !valid_label_key(key) {
                return Err(Error::invalid(
                    "labels",
                    format!("label key {key:?} must be 1-63 characters of A-Z a-z 0-9 . _ / -"),
                ));
            }
            if value.chars().count() > 253 || !rdm_kit::text::is_plain(value) {
                return Err(Error::invalid(
                    "labels",
                    format!("label {key:?}: values are at most 253 printable characters"),
                ));
            }
        }
        Ok(())
    }

    fn row(self, tenant_id: &str) -> (DeviceRow, BTreeMap<String, String>) {
        let now = now_millis();
        let row = DeviceRow {
            id: crate::store::new_id(),
            tenant_id: tenant_id.to_owned(),
            name: self.name.trim().to_owned(),
            serial: self.serial,
            manufacturer: self.manufacturer,
            model: self.model,
            firmware: self.firmware,
            notes: self.notes,
            address: self.address,
            create_time: now,
            update_time: now,
        };
        (row, self.labels)
    }
}

fn valid_label_key(key: &str) -> bool {
    (1..=63).contains(&key.len())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
}

/// `env=prod,site!=ams,rack,!retired`
pub(crate) fn parse_selector(selector: &str) -> Result<Vec<LabelTerm>> {
    let bad = |term: &str| {
        Error::invalid(
            "label_selector",
            format!("label_selector term {term:?} is not key, !key, key=value or key!=value"),
        )
    };
    const MAX_TERMS: usize = 32;
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if terms.len() == MAX_TERMS {
            return Err(Error::invalid(
                "label_selector",
                format!("label_selector has more than {MAX_TERMS} terms"),
            ));
        }
        let parsed = if let Some((k, v)) = term.split_once("!=") {
            LabelTerm::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once('=') {
            LabelTerm::Equals(
                k.trim().trim_end_matches('=').to_owned(),
                v.trim().trim_start_matches('=').to_owned(),
            )
        } else if let Some(k) = term.strip_prefix('!') {
            LabelTerm::Missing(k.trim().to_owned())
        } else {
            LabelTerm::Exists(term.to_owned())
        };
        let key = match &parsed {
            LabelTerm::Equals(k, _)
            | LabelTerm::NotEquals(k, _)
            | LabelTerm::Exists(k)
            | LabelTerm::Missing(k) => k,
        };
        if !valid_label_key(key) {
            return Err(bad(term));
        }
        terms.push(parsed);
    }
    Ok(terms)
}

fn device_pb(
    row: DeviceRow,
    labels: BTreeMap<String, String>,
    protocols: Vec<String>,
) -> pb::Device {
    pb::Device {
        id: row.id,
        tenant_id: row.tenant_id,
        name: row.name,
        serial: row.serial,
        manufacturer: row.manufacturer,
        model: row.model,
        firmware: row.firmware,
        labels: labels.into_iter().collect(),
        notes: row.notes,
        address: row.address,
        protocols,
        create_time: Some(timestamp(row.create_time)),
        update_time: Some(timestamp(row.update_time)),
    }
}

/// The secrets an endpoint row holds: name -> ciphertext.
fn sealed_secrets(row: &EndpointRow) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(&row.secrets).map_err(|e| Error::internal("reading stored secrets", e))
}

fn stored_config(row: &EndpointRow) -> Result<Map<String, Value>> {
    serde_json::from_str(&row.config).map_err(|e| Error::internal("reading a stored endpoint", e))
}

/// Where a secret lives, bound into its ciphertext.
pub(crate) fn secret_place(tenant_id: &str, device_id: &str, protocol: &str, name: &str) -> String {
    format!("{tenant_id}/{device_id}/{protocol}/{name}")
}

/// An endpoint as replies show it.
fn endpoint_json(row: &EndpointRow) -> Result<Map<String, Value>> {
    let secrets = sealed_secrets(row)?;
    let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
    Ok(endpoint::redacted(&stored_config(row)?, &names))
}

fn endpoint_pb(row: &EndpointRow) -> Result<pb::Endpoint> {
    Ok(pb::Endpoint {
        device_id: row.device_id.clone(),
        protocol: row.protocol.clone(),
        settings: Some(endpoint::typed(&row.protocol, &endpoint_json(row)?)?),
        update_time: Some(timestamp(row.update_time)),
    })
}

pub(crate) fn no_endpoint(device_id: &str, protocol: &str) -> Error {
    Error::not_found(format!("device {device_id} has no {protocol} endpoint"))
}

pub(crate) fn device_not_found(id: &str) -> Error {
    Error::not_found(format!("device {id} not found"))
}

/// Whether the settings hold the message a secret's dotted name is in
/// (always, for a secret at the top).
fn parent_given(config: &Map<String, Value>, name: &str) -> bool {
    let parents = name.rsplit_once('.').map_or("", |(p, _)| p);
    let mut at = config;
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        match at.get(part) {
            Some(Value::Object(inner)) => at = inner,
            _ => return false,
        }
    }
    true
}

impl Inventory {
    /// Stores a new device with its labels (its fields checked, its
    /// address vetted).
    pub(crate) async fn insert_device(
        &self,
        tx: &mut TenantTx,
        tenant_id: &str,
        fields: DeviceFields,
        allowed: &[IpNet],
    ) -> Result<DeviceRow> {
        fields.check()?;
        let (row, labels) = fields.row(tenant_id);
        self.vet_stored("address", &row.address, 0, allowed)?;
        ds::insert_device(tx, &row).await?;
        ds::set_labels(tx, tenant_id, &row.id, &labels).await?;
        Ok(row)
    }

    async fn device_in(&self, tx: &mut TenantTx, p: &Principal, id: &str) -> Result<pb::Device> {
        let row = ds::device(tx, &p.tenant_id, id)
            .await?
            .ok_or_else(|| device_not_found(id))?;
        let (mut labels, mut protocols) = ds::details(tx, &p.tenant_id, id, id).await?;
        Ok(device_pb(
            row,
            labels.remove(id).unwrap_or_default(),
            protocols.remove(id).unwrap_or_default(),
        ))
    }

    /// Checks an endpoint against what is stored and seals its new secrets:
    /// the row to store. Secrets left out keep their stored ciphertext.
    /// With `imported`, secrets marked as set (`<name>_set: true`, as an
    /// export writes them) but not given count as present: the endpoint is
    /// stored, and using it says which secret to PUT again.
    pub(crate) fn endpoint_row(
        &self,
        device: &DeviceRow,
        protocol: &str,
        settings: endpoint::Settings,
        before: Option<&EndpointRow>,
        allowed: &[IpNet],
        imported: bool,
    ) -> Result<EndpointRow> {
        for (field, host, port) in endpoint::addresses(protocol, &settings.config)? {
            self.vet_stored(&field, &host, port, allowed)?;
        }
        let mut sealed = match before {
            Some(row) => sealed_secrets(row)?,
            None => BTreeMap::new(),
        };
        sealed.retain(|name, _| {
            !settings.cleared.contains(name) && !settings.secrets.contains_key(name)
        });
        let mut config = settings.config;
        // A kept secret goes with the settings it belongs to: a PUT without
        // `mqtt` forgets `mqtt.password` too.
        sealed.retain(|name, _| parent_given(&config, name));
        let pending = settings.marked.iter().filter(|_| imported);
        let names: Vec<&str> = sealed
            .keys()
            .chain(settings.secrets.keys())
            .chain(pending)
            .map(String::as_str)
            .collect();
        endpoints::complete(protocol, &mut config, &names, &device.address)?;
        for (name, secret) in &settings.secrets {
            let place = secret_place(&device.tenant_id, &device.id, protocol, name);
            sealed.insert(name.clone(), self.config.keyring.seal(secret, &place)?);
        }
        Ok(EndpointRow {
            tenant_id: device.tenant_id.clone(),
            device_id: device.id.clone(),
            protocol: protocol.to_owned(),
            config: Value::Object(config).to_string(),
            secrets: serde_json::to_string(&sealed)
                .map_err(|e| Error::internal("storing secrets", e))?,
            update_time: now_millis(),
        })
    }
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportDevicesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DeviceService for Inventory {
    async fn create_device(
        &self,
        req: Request<pb::CreateDeviceRequest>,
    ) -> Result<Response<pb::CreateDeviceResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let fields = DeviceFields {
            name: r.name.clone(),
            serial: r.serial.clone(),
            manufacturer: r.manufacturer.clone(),
            model: r.model.clone(),
            firmware: r.firmware.clone(),
            notes: r.notes.clone(),
            address: r.address.trim().to_owned(),
            labels: r.labels.clone().into_iter().collect(),
        };
        let run = async {
            let labels = fields.labels.clone();
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            let allowed = allowed_nets(&mut tx, &p.tenant_id).await?;
            let row = self
                .insert_device(&mut tx, &p.tenant_id, fields, &allowed)
                .await?;
            tx.commit().await?;
            tracing::info!(tenant_id = %p.tenant_id, device_id = %row.id, "device created");
            Ok(pb::CreateDeviceResponse {
                device: Some(device_pb(row, labels, Vec::new())),
            })
        };
        reply(run.await)
    }

    async fn find_cpe(
        &self,
        req: Request<pb::FindCpeRequest>,
    ) -> Result<Response<pb::FindCpeResponse>, Status> {
        reply(self.find_cpe(req.get_ref()).await)
    }

    async fn get_device(
        &self,
        req: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::GetDeviceResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let run = async {
            let mut tx = self.db().begin(Scope::of(p)).await?;
            Ok(pb::GetDeviceResponse {
                device: Some(self.device_in(&mut tx, p, &req.get_ref().device_id).await?),
            })
        };
        reply(run.await)
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let size = page::size(r.page_size)?;
            let after = page::decode(&r.page_token)?;
            let protocol = match r.protocol.as_str() {
                "" => None,
                name => {
                    endpoint::schema(name)?;
                    Some(name.to_owned())
                }
            };
            let filter = DeviceFilter {
                name_prefix: r.name_prefix.clone(),
                labels: parse_selector(&r.label_selector)?,
                protocol,
            };
            let mut tx = self.db().begin(Scope::of(p)).await?;
            let rows = ds::list_devices(&mut tx, &p.tenant_id, &filter, &after, size + 1).await?;
            let (rows, next_page_token) = page::finish(rows, size, |d| &d.id);
            let devices = with_details(&mut tx, &p.tenant_id, rows).await?;
            Ok(pb::ListDevicesResponse {
                devices,
                next_page_token,
            })
        };
        reply(run.await)
    }

    async fn update_device(
        &self,
        req: Request<pb::UpdateDeviceRequest>,
    ) -> Result<Response<pb::UpdateDeviceResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            let mut row = ds::device(&mut tx, &p.tenant_id, &r.device_id)
                .await?
                .ok_or_else(|| device_not_found(&r.device_id))?;
            let (mut all_labels, _) = ds::details(&mut tx, &p.tenant_id, &row.id, &row.id).await?;
            let mut labels = all_labels.remove(&row.id).unwrap_or_default();
            let paths = mask_paths(
                r.update_mask.as_ref(),
                &[
                    ("name", !r.name.is_empty()),
                    ("serial", !r.serial.is_empty()),
                    ("manufacturer", !r.manufacturer.is_empty()),
                    ("model", !r.model.is_empty()),
                    ("firmware", !r.firmware.is_empty()),
                    ("labels", !r.labels.is_empty()),
                    ("notes", !r.notes.is_empty()),
                    ("address", !r.address.is_empty()),
                ],
            );
            for path in &paths {
                match path.as_str() {
                    "name" => row.name = r.name.trim().to_owned(),
                    "serial" => row.serial = r.serial.clone(),
                    "manufacturer" => row.manufacturer = r.manufacturer.clone(),
                    "model" => row.model = r.model.clone(),
                    "firmware" => row.firmware = r.firmware.clone(),
                    "notes" => row.notes = r.notes.clone(),
                    "address" => row.address = r.address.trim().to_owned(),
                    "labels" => labels = r.labels.clone().into_iter().collect(),
                    other => {
                        return Err(Error::invalid(
                            "update_mask",
                            format!("update_mask names unknown field {other:?}"),
                        ));
                    }
                }
            }
            DeviceFields {
                name: row.name.clone(),
                serial: row.serial.clone(),
                manufacturer: row.manufacturer.clone(),
                model: row.model.clone(),
                firmware: row.firmware.clone(),
                notes: row.notes.clone(),
                address: row.address.clone(),
                labels: labels.clone(),
            }
            .check()?;
            if paths.iter().any(|p| p == "address") {
                self.vet_stored(
                    "address",
                    &row.address,
                    0,
                    &allowed_nets(&mut tx, &p.tenant_id).await?,
                )?;
            }
            ds::update_device(&mut tx, &row).await?;
            if paths.iter().any(|p| p == "labels") {
                ds::set_labels(&mut tx, &p.tenant_id, &row.id, &labels).await?;
            }
            let device = self.device_in(&mut tx, p, &row.id).await?;
            tx.commit().await?;
            Ok(pb::UpdateDeviceResponse {
                device: Some(device),
            })
        };
        reply(run.await)
    }

    async fn delete_device(
        &self,
        req: Request<pb::DeleteDeviceRequest>,
    ) -> Result<Response<pb::DeleteDeviceResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let id = &req.get_ref().device_id;
        let run = async {
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            if !ds::delete_device(&mut tx, &p.tenant_id, id).await? {
                return Err(device_not_found(id));
            }
            tx.commit().await?;
            tracing::info!(tenant_id = %p.tenant_id, device_id = %id, "device deleted");
            Ok(pb::DeleteDeviceResponse {})
        };
        reply(run.await)
    }

    async fn put_endpoint(
        &self,
        req: Request<pb::PutEndpointRequest>,
    ) -> Result<Response<pb::PutEndpointResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let request = endpoint::dynamic(r, "rdm.inventory.v1.PutEndpointRequest")?;
            let (protocol, settings) = endpoint::settings_of(&request).ok_or_else(|| {
                Error::invalid(
                    "settings",
                    "give one protocol's settings (snmp, webpa, ...)",
                )
            })?;
            let protocol = protocol.as_str();
            let settings = endpoint::checked(&settings)?;
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            let device = ds::device(&mut tx, &p.tenant_id, &r.device_id)
                .await?
                .ok_or_else(|| device_not_found(&r.device_id))?;
            let before = ds::endpoint(&mut tx, &p.tenant_id, &device.id, protocol).await?;
            let allowed = allowed_nets(&mut tx, &p.tenant_id).await?;
            let row = self.endpoint_row(
                &device,
                protocol,
                settings,
                before.as_ref(),
                &allowed,
                false,
            )?;
            ds::put_endpoint(&mut tx, &row).await?;
            tx.commit().await?;
            tracing::info!(tenant_id = %p.tenant_id, device_id = %device.id, %protocol, "endpoint set");
            Ok(pb::PutEndpointResponse {
                endpoint: Some(endpoint_pb(&row)?),
            })
        };
        reply(run.await)
    }

    async fn get_endpoint(
        &self,
        req: Request<pb::GetEndpointRequest>,
    ) -> Result<Response<pb::GetEndpointResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let protocol = r.protocol.as_str();
            endpoint::schema(protocol)?;
            let mut tx = self.db().begin(Scope::of(p)).await?;
            let row = ds::endpoint(&mut tx, &p.tenant_id, &r.device_id, protocol)
                .await?
                .ok_or_else(|| no_endpoint(&r.device_id, protocol))?;
            Ok(pb::GetEndpointResponse {
                endpoint: Some(endpoint_pb(&row)?),
            })
        };
        reply(run.await)
    }

    async fn delete_endpoint(
        &self,
        req: Request<pb::DeleteEndpointRequest>,
    ) -> Result<Response<pb::DeleteEndpointResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let protocol = r.protocol.as_str();
            endpoint::schema(protocol)?;
            let mut tx = self.db().begin_write(Scope::of(p)).await?;
            if !ds::delete_endpoint(&mut tx, &p.tenant_id, &r.device_id, protocol).await? {
                return Err(no_endpoint(&r.device_id, protocol));
            }
            tx.commit().await?;
            Ok(pb::DeleteEndpointResponse {})
        };
        reply(run.await)
    }

    async fn import_devices(
        &self,
        req: Request<pb::ImportDevicesRequest>,
    ) -> Result<Response<pb::ImportDevicesResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let file = req.get_ref().file.clone().unwrap_or_default();
        let deadline = rdm_kit::server::CallDeadline::of(&req);
        reply(self.import(p, &file, deadline).await)
    }

    async fn resolve_target(
        &self,
        req: Request<pb::ResolveTargetRequest>,
    ) -> Result<Response<pb::ResolveTargetResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        reply(self.resolve(p, req.get_ref()).await)
    }

    async fn resolve_targets(
        &self,
        req: Request<pb::ResolveTargetsRequest>,
    ) -> Result<Response<pb::ResolveTargetsResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        reply(self.resolve_many(p, req.get_ref()).await)
    }

    type ExportDevicesStream = ExportStream;

    async fn export_devices(
        &self,
        req: Request<pb::ExportDevicesRequest>,
    ) -> Result<Response<ExportStream>, Status> {
        let p = Principal::of(&req).map_err(err)?.clone();
        let csv = match req.get_ref().format.as_str() {
            "" | "jsonl" | "ndjson" => false,
            "csv" => true,
            other => {
                return Err(err(Error::invalid(
                    "format",
                    format!("format {other:?} is not jsonl or csv"),
                )));
            }
        };
        let db = self.db().clone();
        let stream = async_stream::try_stream! {
            let content_type = if csv { "text/csv" } else { "application/x-ndjson" };
            let chunk = |data: Vec<u8>| pb::ExportDevicesResponse {
                chunk: Some(HttpBody { content_type: content_type.to_owned(), data, extensions: Vec::new() }),
            };
            if csv {
                yield chunk(csv_line(&CSV_COLUMNS.map(String::from)));
            }
            let mut after = String::new();
            loop {
                let mut tx = db.begin(Scope::of(&p)).await.map_err(err)?;
                let rows = ds::list_devices(&mut tx, &p.tenant_id, &DeviceFilter::default(), &after, 500).await.map_err(err)?;
                let (Some(first), Some(last)) = (rows.first(), rows.last()) else { break };
                let (first, last) = (first.id.clone(), last.id.clone());
                let endpoints = ds::endpoints_between(&mut tx, &p.tenant_id, &first, &last).await.map_err(err)?;
                let full = rows.len() == 500;
                let devices = with_details(&mut tx, &p.tenant_id, rows).await.map_err(err)?;
                drop(tx);
                let mut by_device: HashMap<&str, Map<String, Value>> = HashMap::new();
                for row in &endpoints {
                    by_device.entry(&row.device_id).or_default().insert(row.protocol.clone(), Value::Object(endpoint_json(row).map_err(err)?));
                }
                let mut out = Vec::new();
                for device in &devices {
                    let endpoints = by_device.remove(device.id.as_str()).unwrap_or_default();
                    if csv {
                        out.extend(csv_line(&csv_record(device, &endpoints)));
                    } else {
                        let mut line = export_json(device);
                        line.insert("endpoints".into(), Value::Object(endpoints));
                        out.extend(Value::Object(line).to_string().into_bytes());
                        out.push(b'\n');
                    }
                }
                yield chunk(out);
                after = last;
                if !full { break }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Fills in labels and protocols for a page of devices (one id range).
async fn with_details(
    tx: &mut TenantTx,
    tenant_id: &str,
    rows: Vec<DeviceRow>,
) -> Result<Vec<pb::Device>> {
    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        return Ok(Vec::new());
    };
    let (mut labels, mut protocols) =
        ds::details(tx, tenant_id, &first.id.clone(), &last.id.clone()).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (l, p) = (
                labels.remove(&row.id).unwrap_or_default(),
                protocols.remove(&row.id).unwrap_or_default(),
            );
            device_pb(row, l, p)
        })
        .collect())
}

const CSV_COLUMNS: [&str; 14] = [
    "name",
    "serial",
    "manufacturer",
    "model",
    "firmware",
    "address",
    "notes",
    "labels",
    "snmp",
    "webpa",
    "tr069",
    "usp",
    "hg630",
    "id",
];

/// Characters that make a spreadsheet read a cell as a formula.
const FORMULA_START: &[char] = &['=', '+', '-', '@', '\t', '\r'];

/// A cell a spreadsheet shows as text: a formula-like value gets a leading
/// `'` (OWASP's CSV injection advice); import takes it off again.
fn csv_cell(value: &str) -> std::borrow::Cow<'_, str> {
    if value.starts_with(FORMULA_START) {
        format!("'{value}").into()
    } else {
        value.into()
    }
}

/// The value of a cell `csv_cell` wrote.
fn csv_value(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_START) => rest,
        _ => cell,
    }
}

fn csv_line(fields: &[String]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = writer.write_record(fields.iter().map(|f| csv_cell(f).into_owned()));
    writer.into_inner().unwrap_or_default()
}

fn export_json(d: &pb::Device) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in [
        ("id", &d.id),
        ("name", &d.name),
        ("serial", &d.serial),
        ("manufacturer", &d.manufacturer),
        ("model", &d.model),
        ("firmware", &d.firmware),
        ("address", &d.address),
        ("notes", &d.notes),
    ] {
        m.insert(k.into(), Value::from(v.as_str()));
    }
    let labels: BTreeMap<_, _> = d.labels.iter().collect();
    m.insert("labels".into(), json!(labels));
    m
}

fn csv_record(d: &pb::Device, endpoints: &Map<String, Value>) -> Vec<String> {
    let labels: BTreeMap<_, _> = d.labels.iter().collect();
    let labels = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let endpoint = |p: &str| endpoints.get(p).map(Value::to_string).unwrap_or_default();
    vec![
        d.name.clone(),
        d.serial.clone(),
        d.manufacturer.clone(),
        d.model.clone(),
        d.firmware.clone(),
        d.address.clone(),
        d.notes.clone(),
        labels,
        endpoint("snmp"),
        endpoint("webpa"),
        endpoint("tr069"),
        endpoint("usp"),
        endpoint("hg630"),
        d.id.clone(),
    ]
}

/// One row of an import file, parsed.
struct ImportRow {
    line: usize,
    fields: DeviceFields,
    endpoints: Vec<(String, Value)>,
}

/// An endpoint's error as an import reports it: `endpoints.snmp.port`.
fn within_endpoint(mut e: Error, protocol: &str) -> Error {
    if let Some(field) = e.metadata.get_mut("field") {
        *field = format!("endpoints.{protocol}.{field}");
    }
    e
}

fn row_error(line: usize, e: &Error) -> pb::ImportRowError {
    pb::ImportRowError {
        line: line as i32,
        field: e.field().unwrap_or_default().to_owned(),
        message: e.message.clone(),
    }
}

fn parse_jsonl(data: &[u8]) -> (Vec<ImportRow>, Vec<pb::ImportRowError>) {
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let line_no = i + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = serde_json::from_slice::<Map<String, Value>>(line)
            .map_err(|e| Error::invalid("", format!("not a JSON object: {e}")))
            .and_then(|mut object| {
                object.remove("id"); // exports carry ids; imports make new ones
                let endpoints = match object.remove("endpoints") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Object(map)) => map.into_iter().collect(),
                    Some(_) => {
                        return Err(Error::invalid(
                            "endpoints",
                            "endpoints must be an object keyed by protocol",
                        ));
                    }
                };
                let fields: DeviceFields =
                    serde_json::from_value(Value::Object(object)).map_err(|e| {
                        let text = e.to_string();
                        let field = text.split('`').nth(1).unwrap_or("").to_owned();
                        Error::invalid(field, text)
                    })?;
                Ok(ImportRow {
                    line: line_no,
                    fields,
                    endpoints,
                })
            });
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) => errors.push(row_error(line_no, &e)),
        }
    }
    (rows, errors)
}

/// The rows of a CSV file; a header rdm cannot read makes the whole file
/// a bad request (there are no rows to speak of).
fn parse_csv(data: &[u8]) -> Result<(Vec<ImportRow>, Vec<pb::ImportRowError>)> {
    let (mut rows, mut errors) = (Vec::new(), Vec::new());
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(data);
    let headers = reader
        .headers()
        .map_err(|e| Error::invalid("file", format!("unreadable CSV header: {e}")))?
        .clone();
    if let Some(unknown) = headers.iter().find(|h| !CSV_COLUMNS.contains(h)) {
        return Err(Error::invalid(
            "file",
            format!(
                "the CSV header names an unknown column {unknown:?}; known: {}",
                CSV_COLUMNS.join(", ")
            ),
        ));
    }
    for (i, record) in reader.records().enumerate() {
        let line_no = i + 2;
        let parsed = record
            .map_err(|e| Error::invalid("", format!("unreadable CSV row: {e}")))
            .and_then(|record| {
                let mut fields = DeviceFields::default();
                let mut endpoints = Vec::new();
                for (column, cell) in headers.iter().zip(record.iter().map(csv_value)) {
                    match column {
                        "name" => fields.name = cell.to_owned(),
                        "serial" => fields.serial = cell.to_owned(),
                        "manufacturer" => fields.manufacturer = cell.to_owned(),
                        "model" => fields.model = cell.to_owned(),
                        "firmware" => fields.firmware = cell.to_owned(),
                        "address" => fields.address = cell.trim().to_owned(),
                        "notes" => fields.notes = cell.to_owned(),
                        "labels" => {
                            for pair in cell.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                                let (k, v) = pair.split_once('=').ok_or_else(|| {
                                    Error::invalid(
                                        "labels",
                                        format!("label {pair:?} is not key=value"),
                                    )
                                })?;
                                fields
                                    .labels
                                    .insert(k.trim().to_owned(), v.trim().to_owned());
                            }
                        }
                        "id" => {}
                        protocol if !cell.trim().is_empty() => {
                            let config = serde_json::from_str::<Value>(cell).map_err(|e| {
                                Error::invalid(
                                    protocol,
                                    format!("{protocol}: settings must be a JSON object: {e}"),
                                )
                            })?;
                            endpoints.push((protocol.to_owned(), config));
                        }
                        _ => {}
                    }
                }
                Ok(ImportRow {
                    line: line_no,
                    fields,
                    endpoints,
                })
            });
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) => errors.push(row_error(line_no, &e)),
        }
    }
    Ok((rows, errors))
}

impl Inventory {
    /// All or nothing: every row is checked first; one bad row stores nothing.
    async fn import(
        &self,
        p: &Principal,
        file: &HttpBody,
        deadline: Option<rdm_kit::server::CallDeadline>,
    ) -> Result<pb::ImportDevicesResponse> {
        let media = file
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let csv = match media {
            "text/csv" => true,
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => false,
            other => {
                return Err(Error::new(
                    rdm_kit::ErrorCode::UnsupportedMediaType,
                    format!("import takes text/csv or application/x-ndjson, not {other:?}"),
                ));
            }
        };
        if file.data.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::invalid("file", "the file is empty"));
        }
        let (rows, mut errors) = if csv {
            parse_csv(&file.data)?
        } else {
            parse_jsonl(&file.data)
        };
        let mut tx = self.db().begin_write(Scope::of(p)).await?;
        let mut taken: HashSet<String> = ds::device_names(&mut tx, &p.tenant_id)
            .await?
            .into_iter()
            .collect();
        let allowed = allowed_nets(&mut tx, &p.tenant_id).await?;
        let mut devices = Vec::with_capacity(rows.len());
        let mut labels = Vec::new();
        let mut endpoints = Vec::new();
        for row in rows {
            let checked = row.fields.check().and_then(|()| {
                self.vet_stored("address", &row.fields.address, 0, &allowed)?;
                let name = row.fields.name.trim().to_owned();
                if !taken.insert(name.clone()) {
                    return Err(Error::invalid(
                        "name",
                        format!("a device named {name:?} already exists"),
                    ));
                }
                let (device, device_labels) = row.fields.clone().row(&p.tenant_id);
                let device_endpoints = row
                    .endpoints
                    .into_iter()
                    .map(|(protocol, config)| {
                        endpoints::translate(&protocol, config)
                            .and_then(|config| endpoint::parse(&protocol, config))
                            .and_then(|settings| {
                                self.endpoint_row(
                                    &device, &protocol, settings, None, &allowed, true,
                                )
                            })
                            .map_err(|e| within_endpoint(e, &protocol))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((device, device_labels, device_endpoints))
            });
            match checked {
                Ok((device, device_labels, device_endpoints)) => {
                    labels.extend(
                        device_labels
                            .into_iter()
                            .map(|(k, v)| (device.id.clone(), k, v)),
                    );
                    endpoints.extend(device_endpoints);
                    devices.push(device);
                }
                Err(e) => errors.push(row_error(row.line, &e)),
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.line);
            return Ok(pb::ImportDevicesResponse {
                imported: 0,
                errors,
            });
        }
        ds::insert_many(&mut tx, &p.tenant_id, &devices, &labels, &endpoints).await?;
        rdm_kit::server::CallDeadline::check_room(deadline, "committing the import")?;
        tx.commit().await?;
        tracing::info!(tenant_id = %p.tenant_id, devices = devices.len(), "devices imported");
        Ok(pb::ImportDevicesResponse {
            imported: devices.len() as i32,
            errors,
        })
    }
}

/// Re-seals every stored secret that is not under the keyring's sealing key
/// (a key rotation). Runs in pages, one transaction each, while the services
/// keep serving; returns how many secrets were re-sealed.
pub async fn reseal_secrets(
    db: &rdm_kit::db::Db,
    keyring: &rdm_kit::secrets::Keyring,
) -> Result<usize> {
    let (mut after, mut resealed) = ((String::new(), String::new()), 0);
    loop {
        let mut tx = db.begin_write(rdm_kit::db::Scope::Platform).await?;
        let rows = ds::all_endpoints_after(&mut tx, (&after.0, &after.1), 500).await?;
        let Some(last) = rows.last() else { break };
        after = (last.device_id.clone(), last.protocol.clone());
        for mut row in rows {
            let mut secrets = sealed_secrets(&row)?;
            let mut changed = false;
            for (name, sealed) in secrets.iter_mut() {
                if keyring.is_current(sealed) {
                    continue;
                }
                let place = secret_place(&row.tenant_id, &row.device_id, &row.protocol, name);
                *sealed = keyring.seal(&keyring.open(sealed, &place)?, &place)?;
                changed = true;
                resealed += 1;
            }
            if changed {
                row.secrets = serde_json::to_string(&secrets)
                    .map_err(|e| Error::internal("storing secrets", e))?;
                ds::set_endpoint_secrets(&mut tx, &row).await?;
            }
        }
        tx.commit().await?;
    }
    Ok(resealed)
}

#[cfg(test)]
mod csv_tests {
    use super::*;

    #[test]
    fn formula_cells_are_neutralised_and_read_back() {
        for value in [
            "=cmd|' /C calc'!A0",
            "+1",
            "-2",
            "@SUM(A1)",
            "plain",
            "'quoted",
        ] {
            let line = String::from_utf8(csv_line(&[value.to_owned()])).unwrap();
            let cell = line.trim_end().trim_matches('"').replace("\"\"", "\"");
            assert!(!cell.starts_with(FORMULA_START), "{value} -> {line}");
            assert_eq!(csv_value(&cell), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_parse_every_form_and_reject_junk() {
        assert_eq!(
            parse_selector("env=prod, site!=ams,rack,!retired").unwrap(),
            vec![
                LabelTerm::Equals("env".into(), "prod".into()),
                LabelTerm::NotEquals("site".into(), "ams".into()),
                LabelTerm::Exists("rack".into()),
                LabelTerm::Missing("retired".into()),
            ]
        );
        assert_eq!(
            parse_selector("bad key=1").unwrap_err().field(),
            Some("label_selector")
        );
    }
}
