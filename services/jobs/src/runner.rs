//! The workers: claim due jobs under a lease, run each as the user who
//! submitted it (a fresh token with the roles they have now), over its
//! targets a few at a time, recording results, progress and events as they
//! come; renew the leases of the jobs held here, stop a job whose cancel
//! was asked for, and take back the jobs of workers that are gone.
use crate::{
    hub::{Hub, POLL},
    method::Method,
    store::{self, Change, ResultRow},
};
use futures::StreamExt;
use rdm_kit::{
    Error, ErrorCode, Principal, Result,
    auth::{AccessTable, Verifier},
    client::Forward,
    db::{Db, Scope, now_millis},
    invoke::{self, Backend},
    server::Shutdown,
    targets,
};
use rdm_proto::{inventory as inv, jobs as pb};
use serde_json::{Map, Value};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Claims a worker makes in one go.
const CLAIM_BATCH: usize = 64;
/// Times a job without side effects is taken up again after its worker was lost.
const MAX_RUNS: i64 = 3;
/// How often a running job's progress is written.
const FLUSH: Duration = Duration::from_millis(250);
/// A read may reuse the user's token this long (a write always asks anew,
/// so a user demoted since cannot write).
const TOKEN_REUSE: Duration = Duration::from_secs(20);
const PRUNE_EVERY: Duration = Duration::from_secs(600);

pub struct Runner {
    pub db: Db,
    pub hub: Arc<Hub>,
    /// Where the RPCs go: every service of the mesh.
    pub mesh: Backend,
    pub inventory: targets::Inventory,
    pub verifier: Verifier,
    pub access: AccessTable,
    /// This worker's name on the leases it holds.
    pub owner: String,
    pub workers: usize,
    pub lease: Duration,
    pub result_limit: usize,
    pub retention: Duration,
    pub tokens: Mutex<HashMap<(String, String), (Principal, Instant)>>,
    /// Where its jobs' results, events and progress are written ([`writer`]).
    pub writer: tokio::sync::mpsc::Sender<Write>,
}

fn ms(d: Duration) -> i64 {
    d.as_millis() as i64
}

impl Runner {
    /// Claims and runs jobs until `shutdown`.
    pub async fn work(self: Arc<Self>, shutdown: Shutdown) {
        let slots = Arc::new(Semaphore::new(self.workers));
        let stop = shutdown.requested();
        tokio::pin!(stop);
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => p.expect("never closed"),
                _ = &mut stop => return,
            };
            let free = (slots.available_permits() + 1).min(CLAIM_BATCH);
            match self.claim(free).await {
                Ok(jobs) if !jobs.is_empty() => {
                    let mut permit = Some(permit);
                    for job in jobs {
                        let permit = permit
                            .take()
                            .or_else(|| slots.clone().try_acquire_owned().ok());
                        tokio::spawn(self.clone().run(job, permit));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message, "claiming jobs"),
            }
            drop(permit);
            tokio::select! {
                _ = self.hub.queued.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = &mut stop => return,
            }
        }
    }

    async fn claim(&self, n: usize) -> Result<Vec<store::Job>> {
        let now = now_millis();
        let mut tx = self.db.begin_write_unsynced(Scope::Platform).await?;
        let jobs = store::claim(&mut tx, &self.owner, now, now + ms(self.lease), n as i64).await?;
        tx.commit().await?;
        for job in &jobs {
            self.hub.changed(&job.id);
            metrics::histogram!("rdm_jobs_start_delay_seconds")
                .record((now - job.run_after.max(job.create_time)).max(0) as f64 / 1000.0);
        }
        Ok(jobs)
    }

    /// Renews leases, stops jobs cancelled or lost, takes back the jobs of
    /// lost workers, prunes old jobs; until the process ends.
    pub async fn maintain(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.lease / 3);
        let mut pruned = Instant::now();
        loop {
            tick.tick().await;
            if let Err(e) = self.renew().await {
                tracing::warn!(error = %e.message, "renewing job leases");
            }
            if let Err(e) = self.reap().await {
                tracing::warn!(error = %e.message, "taking back the jobs of lost workers");
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = Instant::now();
                if let Err(e) = self.prune().await {
                    tracing::warn!(error = %e.message, "pruning old jobs");
                }
            }
        }
    }

    async fn renew(&self) -> Result<()> {
        // Taken first: a job claimed while the renewal runs is not in it.
        let running = self.hub.running();
        let mut tx = self.db.begin_write_unsynced(Scope::Platform).await?;
        let held = store::renew(
            &mut tx,
            &self.owner,
            &running,
            now_millis() + ms(self.lease),
        )
        .await?;
        tx.commit().await?;
        let ids: HashSet<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        for (id, cancel) in &held {
            if *cancel {
                self.hub.cancel(id);
            }
        }
        // Running here but no longer ours: another replica took it back.
        // (A job whose run ended without its last write is renewed no
        // more: its lease runs out and it is taken back.)
        for id in running {
            if !ids.contains(id.as_str()) {
                self.hub.cancel(&id);
            }
        }
        Ok(())
    }

    async fn reap(&self) -> Result<()> {
        let now = now_millis();
        let mut tx = self.db.begin_write_unsynced(Scope::Platform).await?;
        for job in store::expired(&mut tx, now).await? {
            let again = !job.side_effects && job.attempts < MAX_RUNS;
            let lost = pb::JobError {
                kind: "WORKER_LOST".into(),
                message: if again {
                    "the worker running it was lost; it runs again (its method has no side effects)"
                        .into()
                } else if job.side_effects {
                    "the worker running it was lost; a method with side effects is not run again on its own"
                        .into()
                } else {
                    format!("its workers were lost {} times", job.attempts)
                },
            };
            let status = match (again, job.side_effects) {
                (true, _) => store::QUEUED,
                (false, true) => "interrupted",
                (false, false) => "failed",
            };
            let mut after = job.clone();
            after.status = status.into();
            after.progress = pb::JobProgress::default();
            let mut event = after.event(if again { "retry" } else { "finished" }, now);
            event.error = Some(lost.clone());
            tracing::warn!(job = %job.id, status, "a worker was lost while it ran this job");
            store::apply(
                &mut tx,
                &job.id,
                Change {
                    status: Some(status),
                    progress: Some(pb::JobProgress::default()),
                    error: (!again).then_some(lost),
                    reset: again,
                    events: vec![event],
                    ..Default::default()
                },
                now,
            )
            .await?;
            if !again {
                metrics::counter!("rdm_jobs_finished_total", "status" => status).increment(1);
            }
        }
        tx.commit().await
    }

    async fn prune(&self) -> Result<()> {
        let mut tx = self.db.begin_write_unsynced(Scope::Platform).await?;
        let n = store::prune(&mut tx, now_millis() - ms(self.retention)).await?;
        tx.commit().await?;
        if n > 0 {
            tracing::info!(jobs = n, "pruned finished jobs past their retention");
        }
        Ok(())
    }

    /// The submitting user as a caller, with the roles they have now.
    async fn principal(&self, job: &store::Job) -> Result<Principal> {
        let key = (job.tenant_id.clone(), job.user_id.clone());
        if !job.side_effects
            && let Some((p, at)) = self.tokens.lock().expect("tokens").get(&key)
            && at.elapsed() < TOKEN_REUSE
        {
            return Ok(p.clone());
        }
        let p = self
            .inventory
            .user(&self.verifier, &job.tenant_id, &job.user_id)
            .await?;
        self.tokens
            .lock()
            .expect("tokens")
            .insert(key, (p.clone(), Instant::now()));
        Ok(p)
    }

    /// The devices a job's label selector picks, as `p`.
    async fn select(&self, p: &Principal, selector: &str) -> Result<Vec<String>> {
        let mut client = inv::device_service_client::DeviceServiceClient::with_interceptor(
            self.inventory.backend.clone(),
            Forward::new(Some(p), None),
        );
        let (mut ids, mut token) = (Vec::new(), String::new());
        loop {
            let page = client
                .list_devices(inv::ListDevicesRequest {
                    page_size: 1000,
                    page_token: token,
                    label_selector: selector.to_owned(),
                    ..Default::default()
                })
                .await
                .map_err(|s| Error::from_status(&s))?
                .into_inner();
            ids.extend(page.devices.into_iter().map(|d| d.id));
            if page.next_page_token.is_empty() {
                return Ok(ids);
            }
            token = page.next_page_token;
        }
    }

    async fn run(self: Arc<Self>, job: store::Job, _slot: Option<OwnedSemaphorePermit>) {
        let (_running, cancel) = self.hub.run(&job.id);
        if job.cancel_requested {
            cancel.cancel();
        }
        metrics::gauge!("rdm_jobs_running").increment(1.0);
        let recorder = Recorder::new(&self, &job);
        let outcome = self.execute(&job, &recorder, &cancel).await;
        metrics::gauge!("rdm_jobs_running").decrement(1.0);
        let (status, error) = match outcome {
            Outcome::Lost => return,
            Outcome::Cancelled => ("cancelled", None),
            Outcome::Failed(e) => ("failed", Some(job_error(&e))),
            Outcome::Done => recorder.verdict(),
        };
        if let Err(e) = recorder.finish(status, error).await {
            // The lease runs out and the job is taken back.
            tracing::warn!(job = %job.id, error = %e.message, "recording a job's end");
        }
    }

    async fn execute(
        &self,
        job: &store::Job,
        rec: &Recorder,
        cancel: &CancellationToken,
    ) -> Outcome {
        let setup = async {
            let method = Method::find(&job.method, &self.access)?;
            let p = self.principal(job).await?;
            // The role is checked again now: a user demoted since the job
            // was submitted cannot run it.
            method.allowed(&p)?;
            let request: Map<String, Value> = serde_json::from_str(&job.request)
                .map_err(|e| Error::internal("reading a job's request", e))?;
            let targets: Value = serde_json::from_str(&job.targets).unwrap_or(Value::Null);
            let devices: Vec<Option<String>> = match targets {
                Value::Null => vec![None],
                t => match t["label_selector"].as_str().filter(|s| !s.is_empty()) {
                    Some(selector) => self.select(&p, selector).await?,
                    None => serde_json::from_value(t["device_ids"].clone()).unwrap_or_default(),
                }
                .into_iter()
                .map(Some)
                .collect(),
            };
            Ok::<_, Error>((method, p, request, devices))
        };
        let (method, p, request, devices) = tokio::select! {
            s = setup => match s {
                Ok(s) => s,
                Err(e) => return Outcome::Failed(e),
            },
            _ = cancel.cancelled() => return Outcome::Cancelled,
        };
        rec.begin(devices.len());
        let max_attempts = job.max_attempts.max(1) as u32;
        let work = futures::stream::iter(devices)
            .map(|device| {
                let (method, p, request) = (&method, &p, &request);
                async move {
                    self.target(job, method, p, request, device, max_attempts, rec)
                        .await
                }
            })
            .buffer_unordered(job.concurrency.max(1) as usize)
            .for_each(|()| async {});
        tokio::pin!(work);
        let mut tick = tokio::time::interval(FLUSH);
        loop {
            tokio::select! {
                () = &mut work => return Outcome::Done,
                _ = cancel.cancelled() => return Outcome::Cancelled,
                _ = tick.tick() => match rec.flush().await {
                    Ok(true) => {}
                    Ok(false) => return Outcome::Lost,
                    Err(e) => tracing::warn!(job = %job.id, error = %e.message, "recording progress"),
                },
            }
        }
    }

    /// One target, with retries of the failures worth retrying.
    #[allow(clippy::too_many_arguments)]
    async fn target(
        &self,
        job: &store::Job,
        method: &Method,
        p: &Principal,
        request: &Map<String, Value>,
        device: Option<String>,
        max_attempts: u32,
        rec: &Recorder,
    ) {
        let device_id = device.clone().unwrap_or_default();
        let streamed = method.rpc.is_server_streaming();
        let mut attempt = 1;
        loop {
            let outcome = match method.encode(request, device.as_deref()) {
                Ok(bytes) => self.call(job, method, p, bytes, rec).await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(items) => return rec.device_done(&device_id, Ok(items), streamed),
                Err(e) if retryable(&e) && attempt < max_attempts => {
                    let delay = Duration::from_millis(500 << (attempt - 1).min(6));
                    rec.retry(&device_id, attempt, delay, &e);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return rec.device_done(&device_id, Err(e), streamed),
            }
        }
    }

    /// One call: its replies (a unary call's one, a stream's items).
    async fn call(
        &self,
        job: &store::Job,
        method: &Method,
        p: &Principal,
        request: bytes::Bytes,
        rec: &Recorder,
    ) -> Result<Vec<Value>> {
        let mut md = tonic::metadata::MetadataMap::new();
        let header = |v: String| {
            v.parse()
                .map_err(|_| Error::internal("making a call", "bad header"))
        };
        md.insert("authorization", header(format!("Bearer {}", p.bearer()))?);
        md.insert("grpc-timeout", header(format!("{}m", job.timeout_ms))?);
        md.insert("x-request-id", header(job.id.clone())?);
        let deadline = Duration::from_millis(job.timeout_ms as u64) + Duration::from_secs(2);
        let timed_out = || {
            Error::new(
                ErrorCode::DeadlineExceeded,
                format!("no answer within {} ms", job.timeout_ms),
            )
        };
        let mesh = self.mesh.clone();
        if !method.rpc.is_server_streaming() {
            let reply =
                tokio::time::timeout(deadline, invoke::unary(mesh, &method.path, request, md))
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|s| Error::from_status(&s))?;
            let item = method.reply_json(&reply)?;
            rec.check_size(&item)?;
            return Ok(vec![item]);
        }
        let mut items = Vec::new();
        let collect = async {
            let mut stream = invoke::server_streaming(mesh, &method.path, request, md)
                .await
                .map_err(|s| Error::from_status(&s))?;
            while let Some(reply) = stream.message().await.map_err(|s| Error::from_status(&s))? {
                let item = method.reply_json(&reply)?;
                rec.streamed(&item)?;
                items.push(item);
            }
            Ok(())
        };
        let done = tokio::time::timeout(deadline, collect)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        match done {
            Ok(()) => Ok(items),
            Err(e) => {
                // Nothing of a failed stream is stored.
                rec.unstream(&items);
                Err(e)
            }
        }
    }
}

enum Outcome {
    Done,
    Cancelled,
    Failed(Error),
    /// The lease was lost: another replica has the job now.
    Lost,
}

fn retryable(e: &Error) -> bool {
    use ErrorCode as C;
    matches!(
        e.code,
        C::DeviceTimeout
            | C::DeviceUnreachable
            | C::DeviceBusy
            | C::DeviceOffline
            | C::UpstreamUnavailable
            | C::Unavailable
            | C::DeadlineExceeded
            | C::TooManyRequests
    )
}

fn job_error(e: &Error) -> pb::JobError {
    pb::JobError {
        kind: e.code.reason().to_owned(),
        message: e.message.clone(),
    }
}

/// What a running job has to write: gathered from its targets, written
/// every [`FLUSH`] and at its end, each time in one transaction.
struct Recorder {
    writer: tokio::sync::mpsc::Sender<Write>,
    job: store::Job,
    limit: usize,
    state: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    progress: pb::JobProgress,
    events: Vec<pb::JobEvent>,
    results: Vec<ResultRow>,
    seq: i64,
    /// Bytes of results stored by this attempt.
    bytes: usize,
    first_error: Option<pb::JobError>,
    /// Progress moved since the last progress event.
    moved: bool,
}

impl Recorder {
    fn new(runner: &Runner, job: &store::Job) -> Self {
        Self {
            writer: runner.writer.clone(),
            job: job.clone(),
            limit: runner.result_limit,
            state: Mutex::default(),
        }
    }

    fn event(&self, state: &mut Pending, kind: &str, device_id: &str) -> pb::JobEvent {
        pb::JobEvent {
            r#type: kind.to_owned(),
            time: Some(rdm_kit::db::timestamp(now_millis())),
            status: pb::JobStatus::Running.into(),
            progress: Some(state.progress),
            device_id: device_id.to_owned(),
            ..Default::default()
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Pending) -> T) -> T {
        f(&mut self.state.lock().expect("pending job state"))
    }

    fn begin(&self, devices: usize) {
        self.with(|s| {
            s.progress.devices_total = devices as i32;
            let e = self.event(s, "progress", "");
            s.events.push(e);
        });
    }

    fn too_large(&self) -> Error {
        Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the job's results would pass {} bytes (RDM_JOBS_RESULT_LIMIT); this target's were not stored",
                self.limit
            ),
        )
        .with_meta("kind", "RESULT_TOO_LARGE")
    }

    /// The size `item` will take, or an error when it would take the
    /// job's results past the limit.
    fn check_size(&self, item: &Value) -> Result<usize> {
        let size = item.to_string().len();
        if self.with(|s| s.bytes) + size > self.limit {
            return Err(self.too_large());
        }
        Ok(size)
    }

    /// A stream brought an item: counted, or refused when the results
    /// would grow past the limit.
    fn streamed(&self, item: &Value) -> Result<()> {
        let size = self.check_size(item)?;
        self.with(|s| {
            s.progress.items += 1;
            s.moved = true;
            s.bytes += size;
        });
        Ok(())
    }

    /// Takes back what [`Self::streamed`] counted of a stream that failed.
    fn unstream(&self, items: &[Value]) {
        let size: usize = items.iter().map(|i| i.to_string().len()).sum();
        self.with(|s| {
            s.progress.items -= items.len() as i64;
            s.bytes -= size;
        });
    }

    fn retry(&self, device_id: &str, attempt: u32, delay: Duration, e: &Error) {
        self.with(|s| {
            let mut event = self.event(s, "retry", device_id);
            event.error = Some(job_error(e));
            event.data = Some(crate::method::json_struct(&serde_json::json!({
                "attempt": attempt, "delay_ms": delay.as_millis() as u64,
            })));
            s.events.push(event);
        });
    }

    /// A target's end: its items stored (a stream's were counted as they
    /// came, `streamed`), or its error.
    fn device_done(&self, device_id: &str, outcome: Result<Vec<Value>>, streamed: bool) {
        self.with(|s| {
            s.progress.devices_done += 1;
            s.moved = true;
            let error = match outcome {
                Ok(items) => {
                    for item in items {
                        if !streamed {
                            s.progress.items += 1;
                            s.bytes += item.to_string().len();
                        }
                        let mut event = self.event(s, "item", device_id);
                        event.data = Some(crate::method::json_struct(&item));
                        s.events.push(event);
                        s.seq += 1;
                        s.results.push(ResultRow {
                            seq: s.seq,
                            device_id: device_id.to_owned(),
                            item: item.to_string(),
                            error: None,
                        });
                    }
                    None
                }
                Err(e) => {
                    s.progress.devices_failed += 1;
                    let error = job_error(&e);
                    let error = match e.metadata.get("kind") {
                        Some(kind) => pb::JobError {
                            kind: kind.clone(),
                            ..error
                        },
                        None => error,
                    };
                    s.seq += 1;
                    s.results.push(ResultRow {
                        seq: s.seq,
                        device_id: device_id.to_owned(),
                        item: String::new(),
                        error: Some(error.clone()),
                    });
                    s.first_error.get_or_insert(error.clone());
                    Some(error)
                }
            };
            let mut event = self.event(s, "device_finished", device_id);
            event.error = error;
            s.events.push(event);
        });
    }

    /// The status a job that ran to its end has, by its targets.
    fn verdict(&self) -> (&'static str, Option<pb::JobError>) {
        self.with(|s| {
            let p = s.progress;
            match (p.devices_failed, p.devices_total) {
                (0, _) => ("succeeded", None),
                (failed, total) if failed >= total => ("failed", s.first_error.clone()),
                _ => ("partially_succeeded", s.first_error.clone()),
            }
        })
    }

    fn take(
        &self,
        status: Option<&str>,
    ) -> Option<(pb::JobProgress, Vec<pb::JobEvent>, Vec<ResultRow>)> {
        self.with(|s| {
            if status.is_none() && s.events.is_empty() && s.results.is_empty() && !s.moved {
                return None;
            }
            if s.moved && status.is_none() {
                let e = self.event(s, "progress", "");
                s.events.push(e);
            }
            s.moved = false;
            Some((
                s.progress,
                std::mem::take(&mut s.events),
                std::mem::take(&mut s.results),
            ))
        })
    }

    /// Writes what has gathered; false when the lease is lost.
    async fn flush(&self) -> Result<bool> {
        let Some((progress, events, results)) = self.take(None) else {
            return Ok(true);
        };
        self.write(Change {
            progress: Some(progress),
            events,
            results,
            ..Default::default()
        })
        .await
    }

    async fn finish(&self, status: &'static str, error: Option<pb::JobError>) -> Result<bool> {
        let (progress, mut events, results) = self.take(Some(status)).unwrap_or_default();
        events.push(pb::JobEvent {
            r#type: "finished".into(),
            time: Some(rdm_kit::db::timestamp(now_millis())),
            status: store::status(status).into(),
            progress: Some(progress),
            error: error.clone(),
            ..Default::default()
        });
        let change = Change {
            progress: Some(progress),
            status: Some(status),
            // Clears the error of an earlier, lost attempt.
            error: Some(error.unwrap_or_default()),
            events,
            results,
            ..Default::default()
        };
        // The end is worth a few tries: a job left running would be taken
        // back when its lease runs out, and a write then marked interrupted.
        let mut tries = 0;
        let written = loop {
            match self.write(change.clone()).await {
                Err(e) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(job = %self.job.id, error = %e.message, "recording a job's end; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                other => break other?,
            }
        };
        if written {
            metrics::counter!("rdm_jobs_finished_total", "status" => status).increment(1);
        }
        Ok(written)
    }

    async fn write(&self, change: Change<'static>) -> Result<bool> {
        let (done, written) = tokio::sync::oneshot::channel();
        let write = Write {
            id: self.job.id.clone(),
            change,
            done,
        };
        if self.writer.send(write).await.is_err() {
            return Err(Error::internal("recording a job", "the writer has stopped"));
        }
        written
            .await
            .unwrap_or_else(|_| Err(Error::internal("recording a job", "the writer has stopped")))
    }
}

/// A worker's write to one of its jobs, and who waits for it.
pub struct Write {
    id: String,
    /// Its `owner` is set by the writer (this worker's).
    change: Change<'static>,
    done: tokio::sync::oneshot::Sender<Result<bool>>,
}

/// Most writes one transaction takes.
const WRITE_BATCH: usize = 64;

/// Writes the worker's jobs' changes: those that come together (jobs
/// finishing at once) share one transaction.
pub fn writer(db: Db, hub: Arc<Hub>, owner: String) -> tokio::sync::mpsc::Sender<Write> {
    let (queue, mut writes) = tokio::sync::mpsc::channel::<Write>(4 * WRITE_BATCH);
    tokio::spawn(async move {
        while let Some(first) = writes.recv().await {
            let mut batch = vec![first];
            while batch.len() < WRITE_BATCH {
                match writes.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            let ids: Vec<String> = batch.iter().map(|w| w.id.clone()).collect();
            let (changes, waiting): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|w| ((w.id, w.change), w.done))
                .unzip();
            match write_all(&db, &owner, changes).await {
                Ok(held) => {
                    for (done, held) in waiting.into_iter().zip(held) {
                        let _ = done.send(Ok(held));
                    }
                }
                Err(e) => {
                    for done in waiting {
                        let _ = done.send(Err(e.clone()));
                    }
                }
            }
            for id in ids {
                hub.changed(&id);
            }
        }
    });
    queue
}

/// Applies each change in one transaction: whether `owner` still held each job.
async fn write_all(
    db: &Db,
    owner: &str,
    changes: Vec<(String, Change<'static>)>,
) -> Result<Vec<bool>> {
    let now = now_millis();
    // Rows are locked in id order, as the lease renewal locks them: two
    // transactions never wait for each other in a circle.
    let mut order: Vec<usize> = (0..changes.len()).collect();
    order.sort_by(|a, b| changes[*a].0.cmp(&changes[*b].0));
    let mut changes: Vec<Option<(String, Change<'static>)>> =
        changes.into_iter().map(Some).collect();
    let mut tx = db.begin_write_unsynced(Scope::Platform).await?;
    let mut held = vec![false; changes.len()];
    for i in order {
        let Some((id, change)) = changes[i].take() else {
            continue;
        };
        let change = Change {
            owner: Some(owner),
            ..change
        };
        held[i] = store::apply(&mut tx, &id, change, now).await?;
    }
    tx.commit().await?;
    Ok(held)
}
