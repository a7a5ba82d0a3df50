//! rdm's jobs service: any RPC of the mesh as a durable background job. A
//! job names its method (found in the descriptor set, as the gateway finds
//! it), its request as JSON, and optionally devices to fan out over; it is
//! kept in the database ([`store`]) and run by the workers of every replica
//! ([`runner`]) as the user who submitted it, with results, progress and
//! events a client can page, stream and watch. Cron schedules submit jobs
//! of their own ([`schedules`]). PostgreSQL: claims with `FOR UPDATE SKIP
//! LOCKED`, leases, and NOTIFY to wake every replica ([`hub`]); SQLite: the
//! same in one process.
pub mod hub;
pub mod method;
pub mod runner;
pub mod schedules;
pub mod store;

use anyhow::Context as _;
use hub::{Hub, POLL};
use method::{Method, struct_json};
use prost::Message;
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    auth::{AccessTable, Role},
    db::{Backend, Db, Scope, now_millis, page},
    invoke,
    mesh::{Context, Database, Spec, Started},
};
use rdm_proto::jobs::{
    self as pb, job_service_server::JobService, schedule_service_server::ScheduleService,
};
use std::{pin::Pin, sync::Arc, time::Duration};
use tonic::{Request, Response, Status};

pub const DOMAIN: &str = "jobs";

/// The jobs service's own settings.
#[derive(clap::Args, Clone, Debug)]
#[group(id = "jobs")]
pub struct Args {
    /// Jobs this process runs at once (0: it only takes requests).
    #[arg(long, env = "RDM_JOBS_WORKERS", default_value_t = 32)]
    pub jobs_workers: usize,
    /// How long a worker's claim on a job lasts unless renewed (it renews
    /// every third of it); a job whose worker died is taken back after it.
    #[arg(long, env = "RDM_JOBS_LEASE_S", default_value_t = 30)]
    pub jobs_lease_s: u64,
    /// The most bytes of results (as JSON) one job may store; a target whose
    /// results would pass it fails with RESULT_TOO_LARGE, storing none.
    #[arg(long, env = "RDM_JOBS_RESULT_LIMIT", default_value_t = 16 << 20)]
    pub jobs_result_limit: usize,
    /// How long finished jobs, their results and events are kept, in hours.
    #[arg(long, env = "RDM_JOBS_RETENTION_HOURS", default_value_t = 168)]
    pub jobs_retention_hours: u64,
    /// Where the workers call the mesh's RPCs (gRPC): the gateway under
    /// `rdm serve` (`http://rdm-gateway:8080`); `rdm up`: its own services.
    #[arg(long, env = "RDM_JOBS_MESH_URL")]
    pub jobs_mesh_url: Option<String>,
}

/// The jobs service as the mesh's registry lists it.
pub const SERVICE: Spec<Args> = Spec::new("jobs", "rdm.jobs.v1", 50059, |args, context| {
    Box::pin(start(args, context))
})
.with_database();

async fn start(args: Args, context: Context) -> anyhow::Result<Started> {
    let db = Database::migrated(&context, "jobs", &store::MIGRATIONS).await?;
    let hub = Hub::new();
    if db.backend() == Backend::Postgres {
        hub.listen(db.url().to_owned());
    }
    let mesh_url = args
        .jobs_mesh_url
        .or(context.mesh_url.clone())
        .context("RDM_JOBS_MESH_URL is required: where the workers call the mesh's RPCs")?;
    let access = AccessTable::from_pool(rdm_proto::descriptor_pool());
    let lease = Duration::from_secs(args.jobs_lease_s.max(1));
    let owner = uuid::Uuid::new_v4().simple().to_string();
    let runner = Arc::new(runner::Runner {
        writer: runner::writer(db.clone(), hub.clone(), owner.clone()),
        db: db.clone(),
        hub: hub.clone(),
        mesh: invoke::remote(&mesh_url)?,
        inventory: context.resolver(DOMAIN),
        verifier: context.verifier.clone(),
        access: access.clone(),
        owner,
        workers: args.jobs_workers,
        lease,
        result_limit: args.jobs_result_limit,
        retention: Duration::from_secs(args.jobs_retention_hours * 3600),
        tokens: Default::default(),
    });
    if args.jobs_workers > 0 {
        tokio::spawn(runner.clone().work(context.shutdown.clone()));
    }
    tokio::spawn(runner.maintain());
    let jobs = Arc::new(Jobs { db, hub, access });
    tokio::spawn(schedules::clock(jobs.db.clone(), jobs.clone()));
    let service = Service(jobs);
    let routes = tonic::service::Routes::new(pb::job_service_server::JobServiceServer::new(
        service.clone(),
    ))
    .add_service(pb::schedule_service_server::ScheduleServiceServer::new(
        service,
    ));
    Ok(Started {
        router: rdm_kit::server::guarded(routes, context.guard()),
        listeners: Vec::new(),
    })
}

/// What the handlers and the schedules' clock share.
pub struct Jobs {
    db: Db,
    hub: Arc<Hub>,
    access: AccessTable,
}

#[derive(Clone)]
struct Service(Arc<Jobs>);

fn checked<'r, T: Message>(req: &'r Request<T>, name: &str) -> Result<&'r Principal> {
    rdm_kit::rules::checked(req, &format!("rdm.jobs.v1.{name}"))
}

fn err(e: Error) -> Status {
    e.in_domain(DOMAIN).into()
}

fn reply<T>(r: Result<T>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(err)
}

fn not_found(id: &str) -> Error {
    Error::not_found(format!("no job {id}"))
}

fn millis(t: &prost_types::Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// A SubmitJobRequest as its JSON, and back (how schedules keep theirs).
fn submit_json(r: &pb::SubmitJobRequest) -> Result<String> {
    let desc = rdm_proto::descriptor_pool()
        .get_message_by_name("rdm.jobs.v1.SubmitJobRequest")
        .ok_or_else(|| Error::internal("encoding a job", "no SubmitJobRequest"))?;
    let message = prost_reflect::DynamicMessage::decode(desc, r.encode_to_vec().as_slice())
        .map_err(|e| Error::internal("encoding a job", e))?;
    serde_json::to_string(&message).map_err(|e| Error::internal("encoding a job", e))
}

pub(crate) fn submit_from_json(text: &str) -> Result<pb::SubmitJobRequest> {
    let desc = rdm_proto::descriptor_pool()
        .get_message_by_name("rdm.jobs.v1.SubmitJobRequest")
        .ok_or_else(|| Error::internal("reading a job", "no SubmitJobRequest"))?;
    let mut de = serde_json::Deserializer::from_str(text);
    let message = prost_reflect::DynamicMessage::deserialize(desc, &mut de)
        .map_err(|e| Error::internal("reading a job", e))?;
    pb::SubmitJobRequest::decode(message.encode_to_vec().as_slice())
        .map_err(|e| Error::internal("reading a job", e))
}

impl Jobs {
    /// A job from a submission, checked: its method is one a job may run,
    /// its request fits the method's input, its targets fit the method.
    pub(crate) fn prepare(
        &self,
        tenant_id: &str,
        user_id: &str,
        r: &pb::SubmitJobRequest,
        idempotency_key: Option<String>,
        schedule_id: &str,
        now: i64,
    ) -> Result<store::Job> {
        let method = Method::find(&r.method, &self.access)?;
        for (field, value) in [
            ("max_attempts", i64::from(r.max_attempts)),
            ("timeout_ms", r.timeout_ms),
            ("priority", i64::from(r.priority)),
            ("concurrency", i64::from(r.concurrency)),
        ] {
            if value < 0 {
                return Err(Error::invalid(field, format!("{field} cannot be negative")));
            }
        }
        let request = r.request.as_ref().map(struct_json).unwrap_or_default();
        let targets = r
            .targets
            .as_ref()
            .filter(|t| !t.device_ids.is_empty() || !t.label_selector.is_empty());
        if let Some(t) = targets {
            if !method.has_target() {
                return Err(Error::invalid(
                    "targets",
                    format!("{} names no target to fan out over", r.method),
                ));
            }
            if request.contains_key("target") {
                return Err(Error::invalid(
                    "request.target",
                    "leave the target out when targets are given: each device fills it",
                ));
            }
            if !t.device_ids.is_empty() && !t.label_selector.is_empty() {
                return Err(Error::invalid(
                    "targets",
                    "give device_ids or label_selector, not both",
                ));
            }
        }
        // Checked as it will be sent (a placeholder device for a fan-out).
        method.message(&request, targets.map(|_| "device"))?;
        let side_effects = method.side_effects();
        let or = |v: i64, default: i64| if v > 0 { v } else { default };
        Ok(store::Job {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant_id.to_owned(),
            user_id: user_id.to_owned(),
            method: r.method.clone(),
            side_effects,
            request: serde_json::Value::Object(request).to_string(),
            targets: match targets {
                Some(t) => serde_json::json!({
                    "device_ids": t.device_ids, "label_selector": t.label_selector,
                })
                .to_string(),
                None => "null".into(),
            },
            labels: serde_json::to_string(
                &r.labels
                    .iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
            .map_err(|e| Error::internal("encoding labels", e))?,
            status: store::QUEUED.into(),
            priority: i64::from(r.priority),
            max_attempts: or(r.max_attempts.into(), if side_effects { 1 } else { 3 }),
            attempts: 0,
            timeout_ms: or(r.timeout_ms, 60_000),
            concurrency: or(r.concurrency.into(), 10),
            idempotency_key,
            schedule_id: schedule_id.to_owned(),
            run_after: r.run_after.as_ref().map_or(now, millis).max(now),
            create_time: now,
            start_time: None,
            finish_time: None,
            cancel_requested: false,
            progress: pb::JobProgress::default(),
            error_kind: String::new(),
            error_message: String::new(),
            last_event: 1,
        })
    }

    async fn job(&self, p: &Principal, id: &str) -> Result<store::Job> {
        let mut tx = self.db.begin(Scope::of(p)).await?;
        store::get(&mut tx, Some(&p.tenant_id), id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    async fn submit(&self, p: &Principal, r: &pb::SubmitJobRequest) -> Result<pb::Job> {
        let now = now_millis();
        let key = Some(r.idempotency_key.clone()).filter(|k| !k.is_empty());
        let job = self.prepare(&p.tenant_id, &p.user_id, r, key.clone(), "", now)?;
        Method::find(&r.method, &self.access)?.allowed(p)?;
        let mut tx = self.db.begin_write(Scope::of(p)).await?;
        if !store::insert(&mut tx, &job, now).await? {
            let first = store::by_key(&mut tx, &p.tenant_id, key.as_deref().unwrap_or_default())
                .await?
                .ok_or_else(|| Error::internal("submitting a job", "no job under its key"))?;
            return Ok(first.to_pb());
        }
        tx.commit().await?;
        metrics::counter!("rdm_jobs_submitted_total", "by" => "user").increment(1);
        self.hub.changed(&job.id);
        self.hub.queued.notify_one();
        Ok(job.to_pb())
    }

    async fn cancel(&self, p: &Principal, id: &str) -> Result<pb::Job> {
        let now = now_millis();
        let mut tx = self.db.begin_write(Scope::of(p)).await?;
        let job = store::get(&mut tx, Some(&p.tenant_id), id)
            .await?
            .ok_or_else(|| not_found(id))?;
        if job.user_id != p.user_id && !p.has_role(Role::Operator) {
            return Err(Error::permission_denied(
                "only its submitter or an operator may cancel a job",
            ));
        }
        if job.status == "cancelled" {
            return Ok(job.to_pb());
        }
        if job.finished() {
            return Err(Error::new(
                ErrorCode::FailedPrecondition,
                format!("job {id} has already finished ({})", job.status),
            ));
        }
        // Queued: cancelled now. Running: its worker stops it (told at once
        // in this process, by NOTIFY or its next lease renewal elsewhere).
        let mut cancelled = job.clone();
        cancelled.status = "cancelled".into();
        cancelled.cancel_requested = true;
        let stopped = job.status == store::QUEUED
            && store::apply(
                &mut tx,
                id,
                store::Change {
                    when_status: Some(store::QUEUED),
                    status: Some("cancelled"),
                    cancel_requested: true,
                    events: vec![cancelled.event("finished", now)],
                    ..Default::default()
                },
                now,
            )
            .await?;
        if !stopped {
            let mut asked = job.clone();
            asked.cancel_requested = true;
            store::apply(
                &mut tx,
                id,
                store::Change {
                    cancel_requested: true,
                    events: vec![asked.event("cancel_requested", now)],
                    ..Default::default()
                },
                now,
            )
            .await?;
        }
        let job = store::get(&mut tx, Some(&p.tenant_id), id)
            .await?
            .ok_or_else(|| not_found(id))?;
        tx.commit().await?;
        if stopped {
            metrics::counter!("rdm_jobs_finished_total", "status" => "cancelled").increment(1);
        }
        self.hub.cancel(id);
        self.hub.changed(id);
        Ok(job.to_pb())
    }
}

type Stream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

/// Events read at once from the store while a watcher catches up.
const EVENT_PAGE: i64 = 500;

#[tonic::async_trait]
impl JobService for Service {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let run = async {
            let p = checked(&req, "SubmitJobRequest")?;
            let job = self.0.submit(p, req.get_ref()).await?;
            Ok(pb::SubmitJobResponse { job: Some(job) })
        };
        reply(run.await)
    }

    async fn get_job(
        &self,
        req: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        let run = async {
            let p = checked(&req, "GetJobRequest")?;
            let job = self.0.job(p, &req.get_ref().job_id).await?;
            Ok(pb::GetJobResponse {
                job: Some(job.to_pb()),
            })
        };
        reply(run.await)
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let run = async {
            let p = checked(&req, "ListJobsRequest")?;
            let r = req.get_ref();
            let size = page::size(r.page_size)?;
            let label = match r.label.split_once('=') {
                Some((k, v)) => format!(
                    "{}:{}",
                    serde_json::Value::from(k.trim()),
                    serde_json::Value::from(v.trim())
                ),
                None if r.label.is_empty() => String::new(),
                None => return Err(Error::invalid("label", "label is key=value")),
            };
            let filter = store::Filter {
                status: store::status_name(r.status()),
                method: &r.method,
                label,
                created_after: r.created_after.as_ref().map_or(0, millis),
                schedule_id: &r.schedule_id,
            };
            let mut tx = self.0.db.begin(Scope::of(p)).await?;
            let rows = store::list(
                &mut tx,
                &p.tenant_id,
                &filter,
                &page::decode(&r.page_token)?,
                size + 1,
            )
            .await?;
            let (rows, next_page_token) = page::finish(rows, size, |j| &j.id);
            Ok(pb::ListJobsResponse {
                jobs: rows.iter().map(store::Job::to_pb).collect(),
                next_page_token,
            })
        };
        reply(run.await)
    }

    async fn list_job_results(
        &self,
        req: Request<pb::ListJobResultsRequest>,
    ) -> Result<Response<pb::ListJobResultsResponse>, Status> {
        let run = async {
            let p = checked(&req, "ListJobResultsRequest")?;
            let r = req.get_ref();
            let size = page::size(r.page_size)?;
            self.0.job(p, &r.job_id).await?;
            let after = page::decode(&r.page_token)?.parse().unwrap_or(0);
            let mut tx = self.0.db.begin(Scope::of(p)).await?;
            let rows = store::results(
                &mut tx,
                &p.tenant_id,
                &r.job_id,
                &r.device_id,
                after,
                size + 1,
            )
            .await?;
            let keys: Vec<String> = rows.iter().map(|r| r.seq.to_string()).collect();
            let (keys, next_page_token) = page::finish(keys, size, |k| k);
            let mut results = rows;
            results.truncate(keys.len());
            Ok(pb::ListJobResultsResponse {
                results,
                next_page_token,
            })
        };
        reply(run.await)
    }

    type StreamJobResultsStream = Stream<pb::StreamJobResultsResponse>;

    async fn stream_job_results(
        &self,
        req: Request<pb::StreamJobResultsRequest>,
    ) -> Result<Response<Self::StreamJobResultsStream>, Status> {
        let p = checked(&req, "StreamJobResultsRequest")
            .map_err(err)?
            .clone();
        let r = req.into_inner();
        self.0.job(&p, &r.job_id).await.map_err(err)?;
        let jobs = self.0.clone();
        let stream = async_stream::try_stream! {
            let mut after = 0;
            loop {
                let mut tx = jobs.db.begin(Scope::of(&p)).await.map_err(err)?;
                let page = store::results(&mut tx, &p.tenant_id, &r.job_id, &r.device_id, after, 1000)
                    .await
                    .map_err(err)?;
                drop(tx);
                let last = page.len() < 1000;
                for result in page {
                    after = result.seq;
                    yield pb::StreamJobResultsResponse { result: Some(result) };
                }
                if last {
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let run = async {
            let p = checked(&req, "CancelJobRequest")?;
            let job = self.0.cancel(p, &req.get_ref().job_id).await?;
            Ok(pb::CancelJobResponse { job: Some(job) })
        };
        reply(run.await)
    }

    type WatchJobStream = Stream<pb::WatchJobResponse>;

    async fn watch_job(
        &self,
        req: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let p = checked(&req, "WatchJobRequest").map_err(err)?.clone();
        let r = req.into_inner();
        let job = self.0.job(&p, &r.job_id).await.map_err(err)?;
        let jobs = self.0.clone();
        let mut changed = jobs.hub.subscribe();
        let stream = async_stream::try_stream! {
            let mut after = match r.last_event_id {
                Some(id) => id.max(0),
                None => {
                    // The state first: what a late watcher missed.
                    let mut state = job.event("state", now_millis());
                    state.id = job.last_event;
                    yield pb::WatchJobResponse { event: Some(state) };
                    if job.finished() {
                        return;
                    }
                    job.last_event
                }
            };
            loop {
                let mut tx = jobs.db.begin(Scope::of(&p)).await.map_err(err)?;
                let events = store::events(&mut tx, &p.tenant_id, &job.id, after, EVENT_PAGE)
                    .await
                    .map_err(err)?;
                let finished = events.is_empty()
                    && store::get(&mut tx, Some(&p.tenant_id), &job.id)
                        .await
                        .map_err(err)?
                        .is_none_or(|j| j.finished() && j.last_event <= after);
                drop(tx);
                if finished {
                    return;
                }
                let full = events.len() as i64 == EVENT_PAGE;
                for event in events {
                    after = event.id;
                    let last = event.r#type == "finished";
                    yield pb::WatchJobResponse { event: Some(event) };
                    if last {
                        return;
                    }
                }
                if full {
                    continue;
                }
                let wake = async {
                    loop {
                        match changed.recv().await {
                            Ok(id) if id == job.id => return,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(_) => std::future::pending::<()>().await,
                        }
                    }
                };
                let _ = tokio::time::timeout(POLL, wake).await;
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}

impl Service {
    async fn schedule(&self, p: &Principal, id: &str) -> Result<schedules::Schedule> {
        let mut tx = self.0.db.begin(Scope::of(p)).await?;
        schedules::get(&mut tx, &p.tenant_id, id)
            .await?
            .ok_or_else(|| Error::not_found(format!("no schedule {id}")))
    }

    async fn pause(&self, p: &Principal, id: &str, paused: bool) -> Result<pb::Schedule> {
        let s = self.schedule(p, id).await?;
        let next = schedules::Cron::parse(&s.cron, &s.time_zone)?.next_after(now_millis())?;
        let mut tx = self.0.db.begin_write(Scope::of(p)).await?;
        schedules::set_paused(&mut tx, &p.tenant_id, id, paused, next).await?;
        tx.commit().await?;
        Ok(self.schedule(p, id).await?.to_pb())
    }
}

#[tonic::async_trait]
impl ScheduleService for Service {
    async fn create_schedule(
        &self,
        req: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let run = async {
            let p = checked(&req, "CreateScheduleRequest")?;
            let r = req.get_ref();
            let cron = schedules::Cron::parse(&r.cron, &r.time_zone)?;
            let mut job = r.job.clone().unwrap_or_default();
            let now = now_millis();
            self.0
                .prepare(&p.tenant_id, &p.user_id, &job, None, "", now)
                .map_err(in_job)?;
            Method::find(&job.method, &self.0.access)?.allowed(p)?;
            job.idempotency_key.clear();
            job.run_after = None;
            let schedule = schedules::Schedule {
                id: uuid::Uuid::now_v7().to_string(),
                tenant_id: p.tenant_id.clone(),
                name: r.name.clone(),
                user_id: p.user_id.clone(),
                cron: r.cron.clone(),
                time_zone: r.time_zone.clone(),
                job: submit_json(&job)?,
                paused: false,
                missed: schedules::missed_name(r.missed()).into(),
                next_fire: cron.next_after(now)?,
                last_fire: None,
                last_job_id: String::new(),
                create_time: now,
            };
            let mut tx = self.0.db.begin_write(Scope::of(p)).await?;
            schedules::insert(&mut tx, &schedule).await?;
            tx.commit().await?;
            Ok(pb::CreateScheduleResponse {
                schedule: Some(schedule.to_pb()),
            })
        };
        reply(run.await)
    }

    async fn get_schedule(
        &self,
        req: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let run = async {
            let p = checked(&req, "GetScheduleRequest")?;
            let s = self.schedule(p, &req.get_ref().schedule_id).await?;
            Ok(pb::GetScheduleResponse {
                schedule: Some(s.to_pb()),
            })
        };
        reply(run.await)
    }

    async fn list_schedules(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let run = async {
            let p = checked(&req, "ListSchedulesRequest")?;
            let r = req.get_ref();
            let size = page::size(r.page_size)?;
            let mut tx = self.0.db.begin(Scope::of(p)).await?;
            let rows = schedules::list(
                &mut tx,
                &p.tenant_id,
                &page::decode(&r.page_token)?,
                size + 1,
            )
            .await?;
            let (rows, next_page_token) = page::finish(rows, size, |s| &s.id);
            Ok(pb::ListSchedulesResponse {
                schedules: rows.iter().map(schedules::Schedule::to_pb).collect(),
                next_page_token,
            })
        };
        reply(run.await)
    }

    async fn pause_schedule(
        &self,
        req: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let run = async {
            let p = checked(&req, "PauseScheduleRequest")?;
            let schedule = self.pause(p, &req.get_ref().schedule_id, true).await?;
            Ok(pb::PauseScheduleResponse {
                schedule: Some(schedule),
            })
        };
        reply(run.await)
    }

    async fn resume_schedule(
        &self,
        req: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        let run = async {
            let p = checked(&req, "ResumeScheduleRequest")?;
            let schedule = self.pause(p, &req.get_ref().schedule_id, false).await?;
            Ok(pb::ResumeScheduleResponse {
                schedule: Some(schedule),
            })
        };
        reply(run.await)
    }

    async fn delete_schedule(
        &self,
        req: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let run = async {
            let p = checked(&req, "DeleteScheduleRequest")?;
            let id = &req.get_ref().schedule_id;
            let mut tx = self.0.db.begin_write(Scope::of(p)).await?;
            if !schedules::delete(&mut tx, &p.tenant_id, id).await? {
                return Err(Error::not_found(format!("no schedule {id}")));
            }
            tx.commit().await?;
            Ok(pb::DeleteScheduleResponse {})
        };
        reply(run.await)
    }
}

/// A schedule's job's errors name their field under `job.`.
fn in_job(mut e: Error) -> Error {
    if let Some(field) = e.metadata.get_mut("field") {
        *field = format!("job.{field}");
    }
    e
}
