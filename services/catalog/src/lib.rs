//! rdm's catalog service: the MIB modules and BBF data models rdm knows,
//! browsed and searched, naming OIDs ([`mibs`]) and checking proposed
//! values ([`datamodel`]). Today the standard sets, shared by every tenant:
//! net-snmp's copies of the IETF modules (`mibs/`, parsed and resolved by
//! mib-rs) and TR-181 Device:2.16 (`datamodels/`). The SNMP, WebPA and
//! TR-069 services use the same sets in their own processes.
pub mod datamodel;
pub mod mibs;

use datamodel::Model;
use mibs::MibSet;
use rdm_kit::{
    Error, Principal, Result,
    mesh::{Context, Spec, Started},
};
use rdm_proto::catalog::{
    self as pb, data_model_service_server::DataModelService, mib_service_server::MibService,
};
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "catalog";

/// The catalog service's own settings.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "catalog")]
pub struct Args {
    /// Log every diagnostic mib-rs reports for the standard modules at
    /// start (they are loaded either way).
    #[arg(long, env = "RDM_CATALOG_LOG_DIAGNOSTICS", default_value_t = false)]
    pub catalog_log_diagnostics: bool,
}

/// The service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new("catalog", "rdm.catalog.v1", 50057, |args, context| {
    Box::pin(start(args, context))
});

async fn start(args: Args, context: Context) -> anyhow::Result<Started> {
    let started = std::time::Instant::now();
    let set = tokio::task::spawn_blocking(mibs::standard).await?;
    tracing::info!(
        modules = set.modules().len(),
        diagnostics = set.mib.diagnostics().len(),
        ms = started.elapsed().as_millis() as u64,
        "standard MIB modules loaded"
    );
    if args.catalog_log_diagnostics {
        for d in set.mib.diagnostics() {
            tracing::info!(diagnostic = %d, "standard MIB modules");
        }
    }
    let started = std::time::Instant::now();
    let model = tokio::task::spawn_blocking(datamodel::standard).await?;
    tracing::info!(
        model = %model.name,
        objects = model.objects.len(),
        parameters = model.parameter_count(),
        ms = started.elapsed().as_millis() as u64,
        "standard data model loaded"
    );
    let service = Catalog {
        standard: set,
        models: vec![model],
    };
    let routes = tonic::service::Routes::new(pb::mib_service_server::MibServiceServer::new(
        service.clone(),
    ))
    .add_service(pb::data_model_service_server::DataModelServiceServer::new(
        service,
    ));
    Ok(Started {
        router: rdm_kit::server::guarded(routes, context.guard()),
        listeners: Vec::new(),
    })
}

#[derive(Clone)]
struct Catalog {
    standard: &'static MibSet,
    models: Vec<&'static Model>,
}

impl Catalog {
    fn model(&self, name: &str) -> Result<&'static Model> {
        let name = match name.trim() {
            "" => "Device:2",
            n => n,
        };
        self.models
            .iter()
            .find(|m| m.is_named(name))
            .copied()
            .ok_or_else(|| Error::not_found(format!("no data model {name}")))
    }
}

/// Checks a request against its proto's rules (a 400 naming the field).
fn checked<T: prost::Message>(req: &Request<T>, name: &str) -> Result<()> {
    let message = rdm_kit::endpoint::dynamic(req.get_ref(), &format!("rdm.catalog.v1.{name}"))?;
    rdm_kit::rules::check(&message, "")?;
    Principal::of(req)?;
    Ok(())
}

fn reply<T>(r: Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new)
        .map_err(|e: Error| e.in_domain(DOMAIN).into())
}

#[tonic::async_trait]
impl MibService for Catalog {
    async fn list_mib_modules(
        &self,
        req: Request<pb::ListMibModulesRequest>,
    ) -> Result<Response<pb::ListMibModulesResponse>, Status> {
        let run = checked(&req, "ListMibModulesRequest").map(|()| pb::ListMibModulesResponse {
            modules: self.standard.modules(),
        });
        reply(run)
    }

    async fn get_mib_module(
        &self,
        req: Request<pb::GetMibModuleRequest>,
    ) -> Result<Response<pb::GetMibModuleResponse>, Status> {
        let run = checked(&req, "GetMibModuleRequest")
            .and_then(|()| self.standard.module(req.get_ref().name.trim()));
        reply(run)
    }

    async fn get_mib_object(
        &self,
        req: Request<pb::GetMibObjectRequest>,
    ) -> Result<Response<pb::GetMibObjectResponse>, Status> {
        let run = checked(&req, "GetMibObjectRequest")
            .and_then(|()| self.standard.object(&req.get_ref().query))
            .map(|object| pb::GetMibObjectResponse {
                object: Some(object),
            });
        reply(run)
    }

    async fn get_mib_tree(
        &self,
        req: Request<pb::GetMibTreeRequest>,
    ) -> Result<Response<pb::GetMibTreeResponse>, Status> {
        let run = checked(&req, "GetMibTreeRequest").and_then(|()| {
            let r = req.get_ref();
            let after = match r.page_token.as_str() {
                "" => None,
                t => Some(
                    t.parse()
                        .map_err(|_| Error::invalid("page_token", "not a token this call gave"))?,
                ),
            };
            let size = usize::try_from(r.page_size)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(100);
            self.standard.tree(&r.root, after, size)
        });
        reply(run)
    }

    async fn search_mibs(
        &self,
        req: Request<pb::SearchMibsRequest>,
    ) -> Result<Response<pb::SearchMibsResponse>, Status> {
        let run = checked(&req, "SearchMibsRequest").map(|()| {
            let r = req.get_ref();
            let size = usize::try_from(r.page_size)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(50);
            pb::SearchMibsResponse {
                hits: self.standard.search(&r.q, size),
            }
        });
        reply(run)
    }

    async fn translate_oids(
        &self,
        req: Request<pb::TranslateOidsRequest>,
    ) -> Result<Response<pb::TranslateOidsResponse>, Status> {
        let run = checked(&req, "TranslateOidsRequest").map(|()| pb::TranslateOidsResponse {
            translations: req
                .get_ref()
                .queries
                .iter()
                .map(|q| self.standard.translate(q))
                .collect(),
        });
        reply(run)
    }
}

#[tonic::async_trait]
impl DataModelService for Catalog {
    async fn list_data_models(
        &self,
        req: Request<pb::ListDataModelsRequest>,
    ) -> Result<Response<pb::ListDataModelsResponse>, Status> {
        let run = checked(&req, "ListDataModelsRequest").map(|()| pb::ListDataModelsResponse {
            models: self.models.iter().map(|m| m.summary()).collect(),
        });
        reply(run)
    }

    async fn get_data_model_tree(
        &self,
        req: Request<pb::GetDataModelTreeRequest>,
    ) -> Result<Response<pb::GetDataModelTreeResponse>, Status> {
        let r = req.get_ref();
        let run = checked(&req, "GetDataModelTreeRequest")
            .and_then(|()| self.model(&r.model))
            .and_then(|m| m.tree(&r.path));
        reply(run)
    }

    async fn get_data_model_parameter(
        &self,
        req: Request<pb::GetDataModelParameterRequest>,
    ) -> Result<Response<pb::GetDataModelParameterResponse>, Status> {
        let r = req.get_ref();
        let run = checked(&req, "GetDataModelParameterRequest")
            .and_then(|()| self.model(&r.model))
            .and_then(|m| {
                let (object, p) = m.parameter(&r.path).ok_or_else(|| {
                    Error::not_found(format!("{} has no parameter {}", m.name, r.path))
                })?;
                Ok(pb::GetDataModelParameterResponse {
                    parameter: Some(p.to_pb(&object.path)),
                })
            });
        reply(run)
    }

    async fn search_data_models(
        &self,
        req: Request<pb::SearchDataModelsRequest>,
    ) -> Result<Response<pb::SearchDataModelsResponse>, Status> {
        let r = req.get_ref();
        let run = checked(&req, "SearchDataModelsRequest").and_then(|()| {
            let size = usize::try_from(r.page_size)
                .ok()
                .filter(|n| *n > 0)
                .unwrap_or(50);
            let models = match r.model.as_str() {
                "" => self.models.clone(),
                name => vec![self.model(name)?],
            };
            let mut hits: Vec<pb::DataModelHit> =
                models.iter().flat_map(|m| m.search(&r.q, size)).collect();
            hits.sort_by_key(|h| std::cmp::Reverse(h.score));
            hits.truncate(size);
            Ok(pb::SearchDataModelsResponse { hits })
        });
        reply(run)
    }

    async fn validate_sets(
        &self,
        req: Request<pb::ValidateSetsRequest>,
    ) -> Result<Response<pb::ValidateSetsResponse>, Status> {
        let r = req.get_ref();
        let run = checked(&req, "ValidateSetsRequest")
            .and_then(|()| self.model(&r.model))
            .map(|m| pb::ValidateSetsResponse {
                results: r
                    .sets
                    .iter()
                    .map(|set| match m.check(&set.path, &set.value) {
                        Ok(()) => pb::SetCheck {
                            path: set.path.clone(),
                            ok: true,
                            ..Default::default()
                        },
                        Err((code, reason)) => pb::SetCheck {
                            path: set.path.clone(),
                            ok: false,
                            code: code.to_owned(),
                            reason,
                        },
                    })
                    .collect(),
            });
        reply(run)
    }
}
