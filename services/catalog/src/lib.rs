//! rdm's catalog service: the MIB modules and BBF data models rdm knows,
//! browsed and searched, naming OIDs ([`mibs`]) and checking proposed
//! values ([`datamodel`]). The standard sets are shared by every tenant:
//! net-snmp's copies of the IETF modules (`mibs/`, parsed and resolved by
//! mib-rs) and TR-181 Device:2.16 (`datamodels/`); each tenant adds its own
//! modules and models on top. The SNMP, WebPA and TR-069 services use the
//! standard sets in their own processes, and ask the catalog for what only
//! a tenant's own modules name.
pub mod datamodel;
pub mod mibs;
mod search;
pub mod store;
pub mod uploads;

use datamodel::Model;
use mibs::MibSet;
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    db::{Db, Scope},
    mesh::{Context, Database, Spec, Started},
};
use rdm_proto::catalog::{
    self as pb, data_model_service_server::DataModelService, mib_service_server::MibService,
};
use std::{
    collections::HashMap,
    ops::Deref,
    sync::{Arc, Mutex},
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
    /// The jobs service (gRPC): each upload is parsed as a job of the
    /// uploader's there. `rdm up`: its own; none: parsed in this process.
    #[arg(long = "catalog-jobs-url", env = "RDM_JOBS_URL")]
    pub catalog_jobs_url: Option<String>,
}

/// The service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new("catalog", "rdm.catalog.v1", 50057, |args, context| {
    Box::pin(start(args, context))
})
.with_database();

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
    let db = Database::migrated(&context, "catalog", &store::MIGRATIONS).await?;
    let jobs = match args.catalog_jobs_url.or(context.mesh_url.clone()) {
        Some(url) => Some(rdm_kit::invoke::remote(&url)?),
        None => None,
    };
    let service = Catalog {
        standard: set,
        model,
        db,
        jobs,
        mib_sets: Arc::default(),
        data_models: Arc::default(),
    };
    let routes = tonic::service::Routes::new(
        pb::mib_service_server::MibServiceServer::new(service.clone())
            .max_decoding_message_size(MAX_DOCUMENT + 4096),
    )
    .add_service(
        pb::data_model_service_server::DataModelServiceServer::new(service)
            .max_decoding_message_size(MAX_DOCUMENT + 4096),
    );
    Ok(Started {
        router: rdm_kit::server::guarded(routes, context.guard()),
        listeners: Vec::new(),
    })
}

/// The largest data-model document or MIB upload a tenant may send.
pub const MAX_DOCUMENT: usize = 32 << 20;

#[derive(Clone)]
struct Catalog {
    standard: &'static MibSet,
    model: &'static Model,
    db: Db,
    /// Where uploads are parsed as jobs (None: in this process).
    jobs: Option<rdm_kit::invoke::Backend>,
    /// Each tenant's modules resolved with the standard set.
    mib_sets: Arc<PerTenant<MibSet>>,
    /// Each tenant's own data models.
    data_models: Arc<PerTenant<Vec<Model>>>,
}

/// What was built from each tenant's texts, with the [`store::Version`] of
/// the texts it was built from: built again when that moves, so replicas
/// agree without telling each other.
struct PerTenant<T>(Mutex<HashMap<String, (store::Version, Arc<T>)>>);

impl<T> Default for PerTenant<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T: Send + Sync + 'static> PerTenant<T> {
    /// `p`'s tenant's build of its `kind` texts (`None`: it has none).
    async fn get(
        &self,
        db: &Db,
        p: &Principal,
        kind: store::Texts,
        build: impl FnOnce(Vec<(String, String)>) -> Result<T> + Send + 'static,
    ) -> Result<Option<Arc<T>>> {
        let mut tx = db.begin(Scope::of(p)).await?;
        let version = store::version(&mut tx, kind, &p.tenant_id).await?;
        if version.0 == 0 {
            return Ok(None);
        }
        if let Some((v, built)) = self.0.lock().unwrap().get(&p.tenant_id)
            && *v == version
        {
            return Ok(Some(built.clone()));
        }
        let texts = store::texts(&mut tx, kind, &p.tenant_id).await?;
        drop(tx);
        let built = tokio::task::spawn_blocking(move || build(texts))
            .await
            .map_err(|e| Error::internal("reading a tenant's catalog", e))??;
        let built = Arc::new(built);
        self.0
            .lock()
            .unwrap()
            .insert(p.tenant_id.clone(), (version, built.clone()));
        Ok(Some(built))
    }
}

/// The data models a tenant sees: its own, and the standard one unless it
/// has its own of that name.
struct Models {
    standard: &'static Model,
    own: Option<Arc<Vec<Model>>>,
}

impl Models {
    fn all(&self) -> Vec<&Model> {
        let own: Vec<&Model> = self.own.iter().flat_map(|v| v.iter()).collect();
        let shadowed = own.iter().any(|m| m.name == self.standard.name);
        own.into_iter()
            .chain((!shadowed).then_some(self.standard))
            .collect()
    }

    /// The model `name` names: exactly, else by major version the newest
    /// (the tenant's when versions tie); the standard TR-181 when empty.
    fn find(&self, name: &str) -> Result<&Model> {
        let name = match name.trim() {
            "" => "Device:2",
            n => n,
        };
        let all = self.all();
        all.iter()
            .find(|m| m.name == name)
            .or_else(|| {
                all.iter().filter(|m| m.is_named(name)).max_by(|a, b| {
                    a.version()
                        .cmp(&b.version())
                        .then(b.standard.cmp(&a.standard))
                })
            })
            .copied()
            .ok_or_else(|| Error::not_found(format!("no data model {name}")))
    }
}

/// The modules a tenant sees: the standard set alone, or with its own.
enum Mibs {
    Standard(&'static MibSet),
    Tenant(Arc<MibSet>),
}

impl Deref for Mibs {
    type Target = MibSet;
    fn deref(&self) -> &MibSet {
        match self {
            Mibs::Standard(set) => set,
            Mibs::Tenant(set) => set,
        }
    }
}

impl Catalog {
    /// The modules `p`'s tenant sees, resolved again when its own changed.
    async fn mibs(&self, p: &Principal) -> Result<Mibs> {
        let own = self
            .mib_sets
            .get(&self.db, p, store::Texts::Mibs, |extra| {
                MibSet::load(&extra)
            })
            .await?;
        Ok(own.map_or(Mibs::Standard(self.standard), Mibs::Tenant))
    }

    /// The data models `p`'s tenant sees, read again when its own changed.
    async fn models(&self, p: &Principal) -> Result<Models> {
        let own = self
            .data_models
            .get(&self.db, p, store::Texts::DataModels, |documents| {
                documents
                    .into_iter()
                    .map(|(name, xml)| {
                        // Each was stored because its document parsed.
                        datamodel::parse(&xml)?
                            .into_iter()
                            .find(|m| m.name == name)
                            .ok_or_else(|| Error::internal("reading a data model", name))
                    })
                    .collect()
            })
            .await?;
        Ok(Models {
            standard: self.model,
            own,
        })
    }

    /// The request checked against its proto's rules, and the data models
    /// its caller sees.
    async fn models_for<T: prost::Message>(
        &self,
        req: &Request<T>,
        message: &str,
    ) -> Result<Models> {
        checked(req, message)?;
        self.models(Principal::of(req)?).await
    }

    /// Reads an upload's files, resolves them and stores what resolved.
    async fn process(&self, p: Principal, mut upload: pb::MibUpload, data: Vec<u8>) -> Result<()> {
        let filename = upload.filename.clone();
        let mut tx = self.db.begin(Scope::of(&p)).await?;
        let existing = store::texts(&mut tx, store::Texts::Mibs, &p.tenant_id).await?;
        drop(tx);
        let resolved = tokio::task::spawn_blocking(move || {
            uploads::files(&filename, &data).map(|files| uploads::resolve(files, &existing))
        })
        .await
        .map_err(|e| Error::internal("reading an upload", e))?;
        let mut tx = self.db.begin_write(Scope::of(&p)).await?;
        match resolved {
            Ok(resolved) => {
                for (name, text) in &resolved.store {
                    store::put_module(&mut tx, &p.tenant_id, name, text, &upload.id).await?;
                }
                upload = pb::MibUpload {
                    id: upload.id,
                    filename: upload.filename,
                    ..resolved.report
                };
            }
            Err(why) => {
                upload.status = "failed".into();
                upload.error = why;
            }
        }
        store::put_upload(&mut tx, &p.tenant_id, &upload).await?;
        store::put_upload_data(&mut tx, &p.tenant_id, &upload.id, None).await?;
        tx.commit().await?;
        tracing::info!(tenant_id = %p.tenant_id, upload = %upload.id, added = upload.added.len(), failed = upload.failed.len(), status = %upload.status, "MIB upload parsed");
        Ok(())
    }
}

impl Catalog {
    /// One of `p`'s tenant's uploads.
    async fn upload(&self, p: &Principal, id: &str) -> Result<pb::MibUpload> {
        let mut tx = self.db.begin(Scope::of(p)).await?;
        store::upload(&mut tx, &p.tenant_id, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no MIB upload {id}")))
    }

    /// Submits the parse of upload `id` as a job of the caller's: its id,
    /// or None when there is no jobs service to take it (the caller then
    /// parses it in this process).
    async fn parse_as_job<T>(&self, req: &Request<T>, id: &str) -> Option<String> {
        use prost_types::{Struct, Value, value::Kind};
        use rdm_proto::jobs::{SubmitJobRequest, job_service_client::JobServiceClient};
        let jobs = self.jobs.clone()?;
        let mut client =
            JobServiceClient::with_interceptor(jobs, rdm_kit::client::Forward::of(req));
        let job = SubmitJobRequest {
            method: "rdm.catalog.v1.MibService/ParseMibUpload".into(),
            request: Some(Struct {
                fields: [(
                    "id".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(id.to_owned())),
                    },
                )]
                .into(),
            }),
            labels: [("mib_upload".to_owned(), id.to_owned())].into(),
            ..Default::default()
        };
        match client.submit_job(job).await {
            Ok(reply) => reply.into_inner().job.map(|j| j.id),
            Err(status) => {
                tracing::warn!(upload = %id, error = %status.message(), "the jobs service did not take a MIB upload: parsed here");
                None
            }
        }
    }
}

/// Checks a request against its proto's rules (a 400 naming the field).
fn checked<T: prost::Message>(req: &Request<T>, name: &str) -> Result<()> {
    rdm_kit::rules::checked(req, &format!("rdm.catalog.v1.{name}")).map(|_| ())
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
        let run = async {
            checked(&req, "ListMibModulesRequest")?;
            let mibs = self.mibs(Principal::of(&req)?).await?;
            Ok(pb::ListMibModulesResponse {
                modules: mibs.modules(),
            })
        };
        reply(run.await)
    }

    async fn get_mib_module(
        &self,
        req: Request<pb::GetMibModuleRequest>,
    ) -> Result<Response<pb::GetMibModuleResponse>, Status> {
        let run = async {
            checked(&req, "GetMibModuleRequest")?;
            let mibs = self.mibs(Principal::of(&req)?).await?;
            mibs.module(req.get_ref().name.trim())
        };
        reply(run.await)
    }

    async fn get_mib_object(
        &self,
        req: Request<pb::GetMibObjectRequest>,
    ) -> Result<Response<pb::GetMibObjectResponse>, Status> {
        let run = async {
            checked(&req, "GetMibObjectRequest")?;
            let mibs = self.mibs(Principal::of(&req)?).await?;
            Ok(pb::GetMibObjectResponse {
                object: Some(mibs.object(&req.get_ref().query)?),
            })
        };
        reply(run.await)
    }

    async fn get_mib_tree(
        &self,
        req: Request<pb::GetMibTreeRequest>,
    ) -> Result<Response<pb::GetMibTreeResponse>, Status> {
        let run = async {
            checked(&req, "GetMibTreeRequest")?;
            let mibs = self.mibs(Principal::of(&req)?).await?;
            let r = req.get_ref();
            let after = match r.page_token.as_str() {
                "" => None,
                t => Some(
                    t.parse()
                        .map_err(|_| Error::invalid("page_token", "not a token this call gave"))?,
                ),
            };
            let size = search::page_size(r.page_size, 100);
            mibs.tree(&r.root, after, size)
        };
        reply(run.await)
    }

    async fn search_mibs(
        &self,
        req: Request<pb::SearchMibsRequest>,
    ) -> Result<Response<pb::SearchMibsResponse>, Status> {
        let run = async {
            checked(&req, "SearchMibsRequest")?;
            let mibs = self.mibs(Principal::of(&req)?).await?;
            let r = req.get_ref();
            let size = search::page_size(r.page_size, 50);
            Ok(pb::SearchMibsResponse {
                hits: mibs.search(&r.q, size),
            })
        };
        reply(run.await)
    }

    async fn translate_oids(
        &self,
        req: Request<pb::TranslateOidsRequest>,
    ) -> Result<Response<pb::TranslateOidsResponse>, Status> {
        let run = async {
            checked(&req, "TranslateOidsRequest")?;
            let mibs = self.mibs(Principal::of(&req)?).await?;
            let r = req.get_ref();
            Ok(pb::TranslateOidsResponse {
                standard_only: matches!(mibs, Mibs::Standard(_)),
                translations: r
                    .queries
                    .iter()
                    .enumerate()
                    .map(|(i, q)| mibs.translate(q, r.integers.get(&(i as i32)).copied()))
                    .collect(),
            })
        };
        reply(run.await)
    }

    async fn upload_mibs(
        &self,
        req: Request<pb::UploadMibsRequest>,
    ) -> Result<Response<pb::UploadMibsResponse>, Status> {
        let run = async {
            checked(&req, "UploadMibsRequest")?;
            let p = Principal::of(&req)?.clone();
            let r = req.get_ref();
            let data = r.file.as_ref().map(|f| f.data.clone()).unwrap_or_default();
            if data.is_empty() {
                return Err(Error::invalid(
                    "file",
                    "the upload is empty: post the file itself",
                ));
            }
            let mut upload = pb::MibUpload {
                id: uuid::Uuid::now_v7().to_string(),
                status: "parsing".into(),
                filename: r.filename.trim().to_owned(),
                ..Default::default()
            };
            let mut tx = self.db.begin_write(Scope::of(&p)).await?;
            store::put_upload(&mut tx, &p.tenant_id, &upload).await?;
            store::put_upload_data(&mut tx, &p.tenant_id, &upload.id, Some(&data)).await?;
            tx.commit().await?;
            match self.parse_as_job(&req, &upload.id).await {
                Some(job_id) => {
                    let mut tx = self.db.begin_write(Scope::of(&p)).await?;
                    store::put_upload_job(&mut tx, &p.tenant_id, &upload.id, &job_id).await?;
                    tx.commit().await?;
                    upload.job_id = job_id;
                }
                None => {
                    let (this, pending) = (self.clone(), upload.clone());
                    tokio::spawn(async move {
                        let id = pending.id.clone();
                        if let Err(e) = this.process(p, pending, data).await {
                            tracing::error!(upload = %id, error = %e.message, "MIB upload not processed");
                        }
                    });
                }
            }
            Ok(pb::UploadMibsResponse {
                upload: Some(upload),
            })
        };
        reply(run.await)
    }

    async fn parse_mib_upload(
        &self,
        req: Request<pb::ParseMibUploadRequest>,
    ) -> Result<Response<pb::ParseMibUploadResponse>, Status> {
        let run = async {
            checked(&req, "ParseMibUploadRequest")?;
            let p = Principal::of(&req)?;
            let id = req.get_ref().id.trim();
            let upload = self.upload(p, id).await?;
            let mut tx = self.db.begin(Scope::of(p)).await?;
            let data = store::upload_data(&mut tx, &p.tenant_id, id).await?;
            drop(tx);
            let upload = match data {
                Some(data) if upload.status == "parsing" => {
                    self.process(p.clone(), upload, data).await?;
                    self.upload(p, id).await?
                }
                _ => upload,
            };
            Ok(pb::ParseMibUploadResponse {
                upload: Some(upload),
            })
        };
        reply(run.await)
    }

    async fn get_mib_upload(
        &self,
        req: Request<pb::GetMibUploadRequest>,
    ) -> Result<Response<pb::GetMibUploadResponse>, Status> {
        let run = async {
            checked(&req, "GetMibUploadRequest")?;
            let p = Principal::of(&req)?;
            let upload = self.upload(p, req.get_ref().id.trim()).await?;
            Ok(pb::GetMibUploadResponse {
                upload: Some(upload),
            })
        };
        reply(run.await)
    }

    async fn delete_mib_module(
        &self,
        req: Request<pb::DeleteMibModuleRequest>,
    ) -> Result<Response<pb::DeleteMibModuleResponse>, Status> {
        let run = async {
            checked(&req, "DeleteMibModuleRequest")?;
            let p = Principal::of(&req)?;
            let r = req.get_ref();
            let name = r.name.trim();
            let mibs = self.mibs(p).await?;
            let mut tx = self.db.begin_write(Scope::of(p)).await?;
            let own = store::has(&mut tx, store::Texts::Mibs, &p.tenant_id, name).await?;
            if !own {
                let why = if mibs::STANDARD.iter().any(|(s, _)| *s == name) {
                    format!(
                        "{name} is a standard module, shared by every tenant: it cannot be deleted"
                    )
                } else {
                    format!("this tenant has no MIB module {name}")
                };
                return Err(Error::not_found(why));
            }
            let dependents: Vec<String> = mibs
                .mib
                .modules()
                .filter(|m| m.name() != name && m.imports().iter().any(|i| i.module == name))
                .map(|m| m.name().to_owned())
                .collect();
            if !dependents.is_empty() && !r.force {
                return Err(Error::new(
                    ErrorCode::FailedPrecondition,
                    format!(
                        "{name} is imported by {}: delete those first, or send force",
                        dependents.join(", ")
                    ),
                )
                .with_meta("dependents", dependents.join(",")));
            }
            store::delete(&mut tx, store::Texts::Mibs, &p.tenant_id, name).await?;
            tx.commit().await?;
            Ok(pb::DeleteMibModuleResponse { dependents })
        };
        reply(run.await)
    }
}

#[tonic::async_trait]
impl DataModelService for Catalog {
    async fn import_data_model(
        &self,
        req: Request<pb::ImportDataModelRequest>,
    ) -> Result<Response<pb::ImportDataModelResponse>, Status> {
        let run = async {
            checked(&req, "ImportDataModelRequest")?;
            let p = Principal::of(&req)?;
            let data = req
                .get_ref()
                .file
                .as_ref()
                .map(|f| f.data.clone())
                .unwrap_or_default();
            if data.is_empty() {
                return Err(Error::invalid(
                    "file",
                    "the document is empty: post the XML itself",
                ));
            }
            if data.len() > MAX_DOCUMENT {
                return Err(Error::invalid(
                    "file",
                    format!("the document is larger than {} MiB", MAX_DOCUMENT >> 20),
                ));
            }
            let xml = String::from_utf8(data)
                .map_err(|_| Error::invalid("file", "the document is not UTF-8 text"))?;
            let (xml, models) = tokio::task::spawn_blocking(move || {
                datamodel::parse(&xml).map(|models| (xml, models))
            })
            .await
            .map_err(|e| Error::internal("reading a data model", e))??;
            let mut tx = self.db.begin_write(Scope::of(p)).await?;
            for m in &models {
                store::put_data_model(&mut tx, &p.tenant_id, &m.name, &xml).await?;
            }
            tx.commit().await?;
            tracing::info!(tenant_id = %p.tenant_id, models = ?models.iter().map(|m| &m.name).collect::<Vec<_>>(), "data models imported");
            Ok(pb::ImportDataModelResponse {
                models: models.iter().map(Model::summary).collect(),
            })
        };
        reply(run.await)
    }

    async fn delete_data_model(
        &self,
        req: Request<pb::DeleteDataModelRequest>,
    ) -> Result<Response<pb::DeleteDataModelResponse>, Status> {
        let run = async {
            checked(&req, "DeleteDataModelRequest")?;
            let p = Principal::of(&req)?;
            let name = req.get_ref().model.trim();
            let mut tx = self.db.begin_write(Scope::of(p)).await?;
            if !store::delete(&mut tx, store::Texts::DataModels, &p.tenant_id, name).await? {
                let why = if name == self.model.name {
                    format!(
                        "{name} is the standard model, shared by every tenant: it cannot be deleted"
                    )
                } else {
                    format!("this tenant has no data model {name} (name it in full)")
                };
                return Err(Error::not_found(why));
            }
            tx.commit().await?;
            Ok(pb::DeleteDataModelResponse {})
        };
        reply(run.await)
    }

    async fn list_data_models(
        &self,
        req: Request<pb::ListDataModelsRequest>,
    ) -> Result<Response<pb::ListDataModelsResponse>, Status> {
        let run = async {
            let models = self.models_for(&req, "ListDataModelsRequest").await?;
            Ok(pb::ListDataModelsResponse {
                models: models.all().into_iter().map(Model::summary).collect(),
            })
        };
        reply(run.await)
    }

    async fn get_data_model_tree(
        &self,
        req: Request<pb::GetDataModelTreeRequest>,
    ) -> Result<Response<pb::GetDataModelTreeResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let models = self.models_for(&req, "GetDataModelTreeRequest").await?;
            models.find(&r.model)?.tree(&r.path)
        };
        reply(run.await)
    }

    async fn get_data_model_parameter(
        &self,
        req: Request<pb::GetDataModelParameterRequest>,
    ) -> Result<Response<pb::GetDataModelParameterResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let models = self
                .models_for(&req, "GetDataModelParameterRequest")
                .await?;
            models.find(&r.model)?.describe(&r.path)
        };
        reply(run.await)
    }

    async fn search_data_models(
        &self,
        req: Request<pb::SearchDataModelsRequest>,
    ) -> Result<Response<pb::SearchDataModelsResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let all = self.models_for(&req, "SearchDataModelsRequest").await?;
            let size = search::page_size(r.page_size, 50);
            let models = match r.model.as_str() {
                "" => all.all(),
                name => vec![all.find(name)?],
            };
            let mut hits: Vec<pb::DataModelHit> =
                models.iter().flat_map(|m| m.search(&r.q, size)).collect();
            hits.sort_by_key(|h| std::cmp::Reverse(h.score));
            hits.truncate(size);
            Ok(pb::SearchDataModelsResponse { hits })
        };
        reply(run.await)
    }

    async fn validate_sets(
        &self,
        req: Request<pb::ValidateSetsRequest>,
    ) -> Result<Response<pb::ValidateSetsResponse>, Status> {
        let r = req.get_ref();
        let run = async {
            let models = self.models_for(&req, "ValidateSetsRequest").await?;
            let m = models.find(&r.model)?;
            Ok(pb::ValidateSetsResponse {
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
            })
        };
        reply(run.await)
    }
}
