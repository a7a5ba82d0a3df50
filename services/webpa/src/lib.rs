//! rdm's WebPA service: a device's TR-181 parameters through an XMiDT
//! server's config API (tr1d1um). Targets are a device of the caller's
//! tenant or an inline endpoint, both resolved by the inventory; the base
//! URL's addresses are vetted by the address policy before any connection.
mod client;
pub mod values;

use client::{Device, Reply, Resend};
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    address::HttpClients,
    mesh::{Context, Spec, Started},
    server::{CallDeadline, Guard},
    targets::{self, TargetRef},
};
use rdm_proto::{
    inventory::endpoint::Settings,
    webpa::{self as pb, target::Target as Which, webpa_service_server::WebpaService},
};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tonic::{Request, Response, Status};
use values::DataType;

pub const DOMAIN: &str = "webpa";
/// The parameter holding a device's configuration id (RDK-B).
pub const CID_PARAMETER: &str = "Device.DeviceInfo.Webpa.X_COMCAST-COM_CID";

/// The WebPA service's own settings: none yet.
#[derive(clap::Args, Clone, Debug, Default)]
#[group(id = "webpa")]
pub struct Args {}

/// The WebPA service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new("webpa", "rdm.webpa.v1", 50053, |_, context| {
    Box::pin(start(context))
});

async fn start(context: Context) -> anyhow::Result<Started> {
    let webpa = Webpa {
        inventory: context.resolver(DOMAIN),
        clients: HttpClients::new(context.addresses.clone()),
    };
    Ok(Started {
        router: service(webpa, context.guard()),
        listeners: Vec::new(),
    })
}

fn service(webpa: Webpa, guard: Guard) -> axum::Router {
    let routes =
        tonic::service::Routes::new(pb::webpa_service_server::WebpaServiceServer::new(webpa));
    rdm_kit::server::guarded(routes, guard)
}

struct Webpa {
    inventory: targets::Inventory,
    clients: HttpClients,
}

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

/// Checks a request against the rules its proto states (a 400 naming the
/// field) and returns the caller.
fn checked<'r, T: prost::Message>(req: &'r Request<T>, name: &str) -> Result<&'r Principal> {
    rdm_kit::rules::checked(req, &format!("rdm.webpa.v1.{name}"))
}

impl Webpa {
    /// The device a request names, reachable through its vetted client.
    async fn device<T>(&self, req: &Request<T>, target: Option<&pb::Target>) -> Result<Device> {
        let p = Principal::of(req)?;
        let target = match target.and_then(|t| t.target.as_ref()) {
            Some(Which::DeviceId(id)) => TargetRef::Device(id.clone()),
            Some(Which::Endpoint(e)) => TargetRef::Inline(Box::new(Settings::Webpa(e.clone()))),
            None => {
                return Err(Error::invalid(
                    "target",
                    "name a device_id or an inline endpoint",
                ));
            }
        };
        let resolved = self.inventory.resolve(p, target).await?;
        let Some(Settings::Webpa(endpoint)) = resolved.endpoint.and_then(|e| e.settings) else {
            return Err(Error::internal(
                "reading a resolved endpoint",
                "no WebPA settings",
            ));
        };
        if endpoint.device_id().is_empty() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                "the webpa endpoint names no device_id (like mac:112233445566) and the device has no serial to use",
            ));
        }
        let (_, http) = self
            .clients
            .for_target(endpoint.base_url(), &resolved.allowed_target_cidrs)
            .await?;
        let deadline = CallDeadline::of(req).map(|d| d.remaining());
        Ok(Device::new(http, &endpoint, endpoint.device_id(), deadline))
    }
}

/// A reply's parameters, typed; a partial path's values flattened in.
fn parameters(body: &Value) -> Vec<pb::Parameter> {
    let mut out = Vec::new();
    for p in body["parameters"].as_array().into_iter().flatten() {
        let data_type = DataType(p["dataType"].as_u64().unwrap_or(0).min(255) as u8);
        match (&p["value"], data_type) {
            (Value::Array(items), _) => {
                for item in items {
                    out.push(parameter(item));
                }
            }
            (_, DataType::NONE) => {}
            _ => out.push(parameter(p)),
        }
    }
    out
}

fn parameter(p: &Value) -> pb::Parameter {
    let data_type = DataType(p["dataType"].as_u64().unwrap_or(0).min(255) as u8);
    pb::Parameter {
        name: p["name"].as_str().unwrap_or_default().to_owned(),
        value: Some(values::from_wire(
            &values::wire_text(&p["value"]),
            data_type,
        )),
        data_type: data_type.name().to_owned(),
    }
}

/// Names as tr1d1um's `names` query takes them: comma-separated, so a name
/// may not hold a comma (the proto's pattern already refuses one).
fn names_query(names: &[String]) -> (&'static str, String) {
    ("names", names.join(","))
}

/// The parameters of a set as WebPA sends them, each value checked against
/// its type first (a 400 naming the parameter, before anything is sent).
fn wire_parameters(params: &[pb::Parameter]) -> Result<Vec<Value>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let data_type = DataType::parse(&p.data_type).ok_or_else(|| {
                Error::invalid(
                    format!("parameters[{i}].data_type"),
                    format!("{:?} is not a WebPA data type", p.data_type),
                )
            })?;
            if p.name.ends_with('.') {
                return Err(Error::invalid(
                    format!("parameters[{i}].name"),
                    "a set names whole parameters, not partial paths",
                ));
            }
            let value = p
                .value
                .as_ref()
                .ok_or_else(|| "a value is required".to_owned())
                .and_then(|v| values::to_wire(v, data_type))
                .map_err(|why| {
                    Error::invalid(
                        format!("parameters[{i}].value"),
                        format!("{}: {why}", p.name),
                    )
                })?;
            Ok(json!({"name": p.name, "value": value, "dataType": data_type.0}))
        })
        .collect()
}

fn attributes(body: &Value) -> Vec<pb::ParameterAttributes> {
    body["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| pb::ParameterAttributes {
            name: p["name"].as_str().unwrap_or_default().to_owned(),
            attributes: Some(pb::Attributes {
                notify: p["attributes"]["notify"].as_u64().unwrap_or(0).min(1) as u32,
            }),
        })
        .collect()
}

/// The table or row part of a tables URL (`/Device.NAT.PortMapping.`).
fn table_suffix(name: &str) -> String {
    format!("/{name}")
}

#[tonic::async_trait]
impl WebpaService for Webpa {
    async fn get_parameters(
        &self,
        req: Request<pb::GetParametersRequest>,
    ) -> Result<Response<pb::GetParametersResponse>, Status> {
        checked(&req, "GetParametersRequest").map_err(err)?;
        let r = req.get_ref();
        let device = self.device(&req, r.target.as_ref()).await.map_err(err)?;
        let Reply {
            body,
            transaction_id,
        } = device
            .send(
                Method::GET,
                "",
                &[names_query(&r.names)],
                &[],
                None,
                Resend::Read,
            )
            .await
            .map_err(err)?;
        Ok(Response::new(pb::GetParametersResponse {
            parameters: parameters(&body),
            transaction_id,
        }))
    }

    async fn get_attributes(
        &self,
        req: Request<pb::GetAttributesRequest>,
    ) -> Result<Response<pb::GetAttributesResponse>, Status> {
        checked(&req, "GetAttributesRequest").map_err(err)?;
        let r = req.get_ref();
        let device = self.device(&req, r.target.as_ref()).await.map_err(err)?;
        let query = [names_query(&r.names), ("attributes", "notify".to_owned())];
        let reply = device
            .send(Method::GET, "", &query, &[], None, Resend::Read)
            .await
            .map_err(err)?;
        Ok(Response::new(pb::GetAttributesResponse {
            parameters: attributes(&reply.body),
            transaction_id: reply.transaction_id,
        }))
    }

    async fn set_parameters(
        &self,
        req: Request<pb::SetParametersRequest>,
    ) -> Result<Response<pb::SetParametersResponse>, Status> {
        let p = checked(&req, "SetParametersRequest").map_err(err)?.clone();
        let r = req.get_ref();
        let wire = wire_parameters(&r.parameters).map_err(err)?;
        if r.validate {
            let texts: Vec<(&str, String)> = r
                .parameters
                .iter()
                .zip(&wire)
                .map(|(p, w)| {
                    let value = match &w["value"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (p.name.as_str(), value)
                })
                .collect();
            rdm_catalog::datamodel::check_sets(texts.iter().map(|(n, v)| (*n, v.as_str())))
                .map_err(err)?;
        }
        let mut headers = Vec::new();
        if let Some(t) = &r.test_and_set {
            headers.push(("X-Webpa-Sync-New-Cid", t.new_cid.clone()));
            if !t.old_cid.is_empty() {
                headers.push(("X-Webpa-Sync-Old-Cid", t.old_cid.clone()));
            }
            if !t.sync_cmc.is_empty() {
                headers.push(("X-Webpa-Sync-Cmc", t.sync_cmc.clone()));
            }
        }
        let device = self.device(&req, r.target.as_ref()).await.map_err(err)?;
        let body = json!({"parameters": wire});
        let sent = device
            .send(Method::PATCH, "", &[], &headers, Some(&body), Resend::Write)
            .await;
        let reply = match sent {
            Err(e) if e.code == ErrorCode::Conflict => {
                return Err(err(with_current_cid(&device, e).await));
            }
            other => other.map_err(err)?,
        };
        tracing::info!(tenant_id = %p.tenant_id, parameters = r.parameters.len(), transaction_id = %reply.transaction_id, "webpa set");
        let parameters = r
            .parameters
            .iter()
            .map(|param| pb::Parameter {
                data_type: DataType::parse(&param.data_type)
                    .map(DataType::name)
                    .unwrap_or("string")
                    .to_owned(),
                ..param.clone()
            })
            .collect();
        Ok(Response::new(pb::SetParametersResponse {
            parameters,
            new_cid: r
                .test_and_set
                .as_ref()
                .map(|t| t.new_cid.clone())
                .unwrap_or_default(),
            transaction_id: reply.transaction_id,
        }))
    }

    async fn set_attributes(
        &self,
        req: Request<pb::SetAttributesRequest>,
    ) -> Result<Response<pb::SetAttributesResponse>, Status> {
        checked(&req, "SetAttributesRequest").map_err(err)?;
        let r = req.get_ref();
        let wire: Vec<Value> = r
            .parameters
            .iter()
            .map(|p| {
                let notify = p.attributes.as_ref().map_or(0, |a| a.notify);
                json!({"name": p.name, "attributes": {"notify": notify}})
            })
            .collect();
        let device = self.device(&req, r.target.as_ref()).await.map_err(err)?;
        let body = json!({"parameters": wire});
        let reply = device
            .send(Method::PATCH, "", &[], &[], Some(&body), Resend::Write)
            .await
            .map_err(err)?;
        Ok(Response::new(pb::SetAttributesResponse {
            transaction_id: reply.transaction_id,
        }))
    }

    async fn add_row(
        &self,
        req: Request<pb::AddRowRequest>,
    ) -> Result<Response<pb::AddRowResponse>, Status> {
        checked(&req, "AddRowRequest").map_err(err)?;
        let r = req.get_ref();
        let device = self.device(&req, r.target.as_ref()).await.map_err(err)?;
        let body = json!(r.values.iter().collect::<BTreeMap<_, _>>());
        let reply = device
            .send(
                Method::POST,
                &table_suffix(&r.table),
                &[],
                &[],
                Some(&body),
                Resend::Write,
            )
            .await
            .map_err(err)?;
        Ok(Response::new(pb::AddRowResponse {
            row: reply.body["row"].as_str().unwrap_or_default().to_owned(),
            transaction_id: reply.transaction_id,
        }))
    }

    async fn replace_rows(
        &self,
        req: Request<pb::ReplaceRowsRequest>,
    ) -> Result<Response<pb::ReplaceRowsResponse>, Status> {
        checked(&req, "ReplaceRowsRequest").map_err(err)?;
        let r = req.get_ref();
        let device = self.device(&req, r.target.as_ref()).await.map_err(err)?;
        let rows: serde_json::Map<String, Value> = r
            .rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let values = row.values.iter().collect::<BTreeMap<_, _>>();
                ((i + 1).to_string(), json!(values))
            })
            .collect();
        let reply = device
            .send(
                Method::PUT,
                &table_suffix(&r.table),
                &[],
                &[],
                Some(&Value::Object(rows)),
                Resend::Write,
            )
            .await
            .map_err(err)?;
        Ok(Response::new(pb::ReplaceRowsResponse {
            transaction_id: reply.transaction_id,
        }))
    }

    async fn delete_row(
        &self,
        req: Request<pb::DeleteRowRequest>,
    ) -> Result<Response<pb::DeleteRowResponse>, Status> {
        checked(&req, "DeleteRowRequest").map_err(err)?;
        let r = req.get_ref();
        let device = self.device(&req, r.target.as_ref()).await.map_err(err)?;
        let reply = device
            .send(
                Method::DELETE,
                &table_suffix(&r.row),
                &[],
                &[],
                None,
                Resend::Write,
            )
            .await
            .map_err(err)?;
        Ok(Response::new(pb::DeleteRowResponse {
            transaction_id: reply.transaction_id,
        }))
    }
}

/// A failed test-and-set, with the device's current configuration id when
/// it can be read.
async fn with_current_cid(device: &Device, e: Error) -> Error {
    let query = [names_query(&[CID_PARAMETER.to_owned()])];
    match device
        .send(Method::GET, "", &query, &[], None, Resend::Read)
        .await
    {
        Ok(reply) => match parameters(&reply.body)
            .first()
            .and_then(|p| p.value.clone())
        {
            Some(prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(cid)),
            }) => Error {
                message: format!("{}; the device's CID is now {cid:?}", e.message),
                ..e
            }
            .with_meta("current_cid", cid),
            _ => e,
        },
        Err(_) => e,
    }
}
