//! The jobs service's tables: jobs, their results and events, schedules.
//! Requests work in their tenant's scope; the workers, the schedules'
//! clock and pruning in the platform's (the service on its own). A job's
//! events are numbered by its row (`last_event`), so whoever adds events
//! (a worker, a cancel) takes the next numbers under the row's lock.
use prost::Message;
use rdm_kit::{
    Result,
    db::{Backend, TenantTx, timestamp},
};
use rdm_proto::jobs as pb;
use sqlx::{Row, any::AnyRow};

rdm_kit::service_migrations! {
    /// The jobs service's migrations (after the inventory's: jobs belong to tenants).
    pub static MIGRATIONS = "_jobs_migrations";
}

pub const QUEUED: &str = "queued";
pub const RUNNING: &str = "running";

pub fn status(name: &str) -> pb::JobStatus {
    use pb::JobStatus as S;
    match name {
        QUEUED => S::Queued,
        RUNNING => S::Running,
        "succeeded" => S::Succeeded,
        "partially_succeeded" => S::PartiallySucceeded,
        "failed" => S::Failed,
        "cancelled" => S::Cancelled,
        "interrupted" => S::Interrupted,
        _ => S::Unspecified,
    }
}

pub fn status_name(s: pb::JobStatus) -> &'static str {
    use pb::JobStatus as S;
    match s {
        S::Queued => QUEUED,
        S::Running => RUNNING,
        S::Succeeded => "succeeded",
        S::PartiallySucceeded => "partially_succeeded",
        S::Failed => "failed",
        S::Cancelled => "cancelled",
        S::Interrupted => "interrupted",
        S::Unspecified => "",
    }
}

/// A job as stored.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub method: String,
    pub side_effects: bool,
    /// JSON texts.
    pub request: String,
    pub targets: String,
    pub labels: String,
    pub status: String,
    pub priority: i64,
    pub max_attempts: i64,
    pub attempts: i64,
    pub timeout_ms: i64,
    pub concurrency: i64,
    pub idempotency_key: Option<String>,
    pub schedule_id: String,
    pub run_after: i64,
    pub create_time: i64,
    pub start_time: Option<i64>,
    pub finish_time: Option<i64>,
    pub cancel_requested: bool,
    pub progress: pb::JobProgress,
    pub error_kind: String,
    pub error_message: String,
    pub last_event: i64,
}

const COLUMNS: &str = "id, tenant_id, user_id, method, side_effects, request, targets, labels, \
     status, priority, max_attempts, attempts, timeout_ms, concurrency, idempotency_key, \
     schedule_id, run_after, create_time, start_time, finish_time, cancel_requested, items, \
     devices_total, devices_done, devices_failed, error_kind, error_message, last_event";

fn job(row: &AnyRow) -> std::result::Result<Job, sqlx::Error> {
    Ok(Job {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        user_id: row.try_get("user_id")?,
        method: row.try_get("method")?,
        side_effects: row.try_get::<i64, _>("side_effects")? != 0,
        request: row.try_get("request")?,
        targets: row.try_get("targets")?,
        labels: row.try_get("labels")?,
        status: row.try_get("status")?,
        priority: row.try_get("priority")?,
        max_attempts: row.try_get("max_attempts")?,
        attempts: row.try_get("attempts")?,
        timeout_ms: row.try_get("timeout_ms")?,
        concurrency: row.try_get("concurrency")?,
        idempotency_key: row.try_get("idempotency_key")?,
        schedule_id: row.try_get("schedule_id")?,
        run_after: row.try_get("run_after")?,
        create_time: row.try_get("create_time")?,
        start_time: row.try_get("start_time")?,
        finish_time: row.try_get("finish_time")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        progress: pb::JobProgress {
            items: row.try_get("items")?,
            devices_total: row.try_get::<i64, _>("devices_total")? as i32,
            devices_done: row.try_get::<i64, _>("devices_done")? as i32,
            devices_failed: row.try_get::<i64, _>("devices_failed")? as i32,
        },
        error_kind: row.try_get("error_kind")?,
        error_message: row.try_get("error_message")?,
        last_event: row.try_get("last_event")?,
    })
}

fn jobs(rows: Vec<AnyRow>) -> Result<Vec<Job>> {
    Ok(rows.iter().map(job).collect::<Result<_, _>>()?)
}

impl Job {
    pub fn finished(&self) -> bool {
        !matches!(self.status.as_str(), QUEUED | RUNNING)
    }

    pub fn error(&self) -> Option<pb::JobError> {
        (!self.error_kind.is_empty()).then(|| pb::JobError {
            kind: self.error_kind.clone(),
            message: self.error_message.clone(),
        })
    }

    pub fn to_pb(&self) -> pb::Job {
        let json = |text: &str| serde_json::from_str(text).unwrap_or(serde_json::Value::Null);
        let targets = json(&self.targets);
        pb::Job {
            id: self.id.clone(),
            method: self.method.clone(),
            request: Some(crate::method::json_struct(&json(&self.request))),
            targets: (!targets.is_null()).then(|| pb::JobTargets {
                device_ids: targets["device_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|d| d.as_str().map(str::to_owned))
                    .collect(),
                label_selector: targets["label_selector"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            }),
            labels: serde_json::from_str(&self.labels).unwrap_or_default(),
            status: status(&self.status).into(),
            attempts: self.attempts as i32,
            max_attempts: self.max_attempts as i32,
            timeout_ms: self.timeout_ms,
            priority: self.priority as i32,
            concurrency: self.concurrency as i32,
            idempotency_key: self.idempotency_key.clone().unwrap_or_default(),
            schedule_id: self.schedule_id.clone(),
            user_id: self.user_id.clone(),
            progress: Some(self.progress),
            create_time: Some(timestamp(self.create_time)),
            run_after: Some(timestamp(self.run_after)),
            start_time: self.start_time.map(timestamp),
            finish_time: self.finish_time.map(timestamp),
            error: self.error(),
            cancel_requested: self.cancel_requested,
        }
    }

    /// An event with the job's state as it is after it.
    pub fn event(&self, kind: &str, now: i64) -> pb::JobEvent {
        pb::JobEvent {
            id: 0,
            r#type: kind.to_owned(),
            time: Some(timestamp(now)),
            status: status(&self.status).into(),
            progress: Some(self.progress),
            error: self.error(),
            ..Default::default()
        }
    }
}

/// Queues `job` with its first event; None when the tenant already has a
/// job with its idempotency key (that one is the answer).
pub async fn insert(tx: &mut TenantTx, job: &Job, now: i64) -> Result<bool> {
    let done = sqlx::query(
        "insert into jobs (id, tenant_id, user_id, method, side_effects, request, targets, labels, \
         status, priority, max_attempts, timeout_ms, concurrency, idempotency_key, schedule_id, \
         run_after, create_time, last_event) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 1) \
         on conflict (tenant_id, idempotency_key) where idempotency_key is not null do nothing",
    )
    .bind(&job.id)
    .bind(&job.tenant_id)
    .bind(&job.user_id)
    .bind(&job.method)
    .bind(i64::from(job.side_effects))
    .bind(&job.request)
    .bind(&job.targets)
    .bind(&job.labels)
    .bind(QUEUED)
    .bind(job.priority)
    .bind(job.max_attempts)
    .bind(job.timeout_ms)
    .bind(job.concurrency)
    .bind(&job.idempotency_key)
    .bind(&job.schedule_id)
    .bind(job.run_after)
    .bind(job.create_time)
    .execute(tx.conn())
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    let mut event = job.event("queued", now);
    event.id = 1;
    insert_events(tx, &[(&job.id, &job.tenant_id, event)]).await?;
    Ok(true)
}

/// The job with this idempotency key.
pub async fn by_key(tx: &mut TenantTx, tenant_id: &str, key: &str) -> Result<Option<Job>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs where tenant_id = $1 and idempotency_key = $2"
    )))
    .bind(tenant_id)
    .bind(key)
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.as_ref().map(job).transpose()?)
}

/// A job of `tenant_id` (any tenant's, for the platform scope's None).
pub async fn get(tx: &mut TenantTx, tenant_id: Option<&str>, id: &str) -> Result<Option<Job>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs where id = $1 and ($2 = '' or tenant_id = $2)"
    )))
    .bind(id)
    .bind(tenant_id.unwrap_or_default())
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.as_ref().map(job).transpose()?)
}

/// What ListJobs filters on.
#[derive(Default)]
pub struct Filter<'a> {
    pub status: &'a str,
    pub method: &'a str,
    /// `"key":"value"` as the labels' JSON has it.
    pub label: String,
    pub created_after: i64,
    pub schedule_id: &'a str,
}

/// The tenant's jobs, newest first, before id `before` ("" for the first page).
pub async fn list(
    tx: &mut TenantTx,
    tenant_id: &str,
    filter: &Filter<'_>,
    before: &str,
    limit: i64,
) -> Result<Vec<Job>> {
    let label = format!(
        "%{}%",
        filter
            .label
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs where tenant_id = $1 and ($2 = '' or id < $2) \
         and ($3 = '' or status = $3) and ($4 = '' or method = $4) \
         and ($5 = '%%' or labels like $5 escape '\\') and create_time >= $6 \
         and ($7 = '' or schedule_id = $7) order by id desc limit $8"
    )))
    .bind(tenant_id)
    .bind(before)
    .bind(filter.status)
    .bind(filter.method)
    .bind(label)
    .bind(filter.created_after)
    .bind(filter.schedule_id)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    jobs(rows)
}

/// Takes up to `limit` queued jobs that are due, for `owner` until
/// `lease_until`, each with its `started` event.
pub async fn claim(
    tx: &mut TenantTx,
    owner: &str,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<Job>> {
    // PostgreSQL: rows another worker is claiming are skipped, not waited
    // for. SQLite: the write transaction holds the only lock there is.
    let lock = match tx.backend() {
        Backend::Postgres => "for update skip locked",
        Backend::Sqlite => "",
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "update jobs set status = 'running', attempts = attempts + 1, lease_owner = $1, \
         lease_until = $2, start_time = coalesce(start_time, $3), last_event = last_event + 1 \
         where id in (select id from jobs where status = 'queued' and run_after <= $3 \
         order by priority desc, run_after, id limit $4 {lock}) returning {COLUMNS}"
    )))
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    let claimed = jobs(rows)?;
    let started: Vec<(&str, &str, pb::JobEvent)> = claimed
        .iter()
        .map(|job| {
            let mut event = job.event("started", now);
            event.id = job.last_event;
            (job.id.as_str(), job.tenant_id.as_str(), event)
        })
        .collect();
    insert_events(tx, &started).await?;
    Ok(claimed)
}

/// Renews `owner`'s leases on `ids` (the jobs running in its process),
/// in id order (as every multi-job write here locks rows); those it still
/// holds, and whether each has a cancel asked for.
pub async fn renew(
    tx: &mut TenantTx,
    owner: &str,
    ids: &[String],
    lease_until: i64,
) -> Result<Vec<(String, bool)>> {
    let mut ids = ids.to_vec();
    ids.sort();
    let mut held = Vec::with_capacity(ids.len());
    for id in ids {
        let cancel: Option<i64> = sqlx::query_scalar(
            "update jobs set lease_until = $1 where id = $2 and lease_owner = $3 \
             and status = 'running' returning cancel_requested",
        )
        .bind(lease_until)
        .bind(&id)
        .bind(owner)
        .fetch_optional(tx.conn())
        .await?;
        if let Some(cancel) = cancel {
            held.push((id, cancel != 0));
        }
    }
    Ok(held)
}

/// Running jobs whose lease ran out (their worker is gone), locked.
pub async fn expired(tx: &mut TenantTx, now: i64) -> Result<Vec<Job>> {
    let lock = match tx.backend() {
        Backend::Postgres => "for update skip locked",
        Backend::Sqlite => "",
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs where status = 'running' and lease_until < $1 limit 100 {lock}"
    )))
    .bind(now)
    .fetch_all(tx.conn())
    .await?;
    jobs(rows)
}

/// What a worker (or a cancel, or the reaper) writes to a job at once.
#[derive(Clone, Default)]
pub struct Change<'a> {
    /// Only while `owner` holds the job's lease.
    pub owner: Option<&'a str>,
    /// Only while the job has this status (without an owner).
    pub when_status: Option<&'a str>,
    pub progress: Option<pb::JobProgress>,
    /// A new status: a finished one sets finish_time and drops the lease.
    pub status: Option<&'a str>,
    pub error: Option<pb::JobError>,
    pub cancel_requested: bool,
    /// Its results from this attempt are dropped first (a re-run).
    pub reset: bool,
    /// Not before (with a status of queued).
    pub run_after: Option<i64>,
    pub events: Vec<pb::JobEvent>,
    pub results: Vec<ResultRow>,
}

/// A result to store.
#[derive(Clone)]
pub struct ResultRow {
    pub seq: i64,
    pub device_id: String,
    pub item: String,
    pub error: Option<pb::JobError>,
}

/// A value bound to a statement built piece by piece.
enum Arg {
    Int(i64),
    Text(String),
}

/// Applies `change` to job `id`; false when the job is not the owner's
/// any more (its lease was lost) or has finished.
pub async fn apply(tx: &mut TenantTx, id: &str, change: Change<'_>, now: i64) -> Result<bool> {
    let mut args = vec![
        Arg::Text(id.to_owned()),
        Arg::Int(change.events.len() as i64),
    ];
    let mut arg = |a: Arg| {
        args.push(a);
        format!("${}", args.len())
    };
    let mut sets = vec!["last_event = last_event + $2".to_owned()];
    if let Some(p) = change.progress {
        sets.push(format!(
            "items = {}, devices_total = {}, devices_done = {}, devices_failed = {}",
            arg(Arg::Int(p.items)),
            arg(Arg::Int(p.devices_total.into())),
            arg(Arg::Int(p.devices_done.into())),
            arg(Arg::Int(p.devices_failed.into())),
        ));
    }
    if let Some(status) = change.status {
        sets.push(format!("status = {}", arg(Arg::Text(status.to_owned()))));
        if status == QUEUED {
            let after = arg(Arg::Int(change.run_after.unwrap_or(now)));
            sets.push(format!(
                "lease_owner = null, lease_until = null, run_after = {after}"
            ));
        } else if status != RUNNING {
            let at = arg(Arg::Int(now));
            sets.push(format!(
                "finish_time = {at}, lease_owner = null, lease_until = null"
            ));
        }
    }
    if let Some(e) = &change.error {
        sets.push(format!(
            "error_kind = {}, error_message = {}",
            arg(Arg::Text(e.kind.clone())),
            arg(Arg::Text(e.message.clone()))
        ));
    }
    if change.cancel_requested {
        sets.push("cancel_requested = 1".into());
    }
    let owner = match change.owner {
        Some(owner) => format!(
            "and lease_owner = {} and status = 'running'",
            arg(Arg::Text(owner.to_owned()))
        ),
        None => match change.when_status {
            Some(status) => format!("and status = {}", arg(Arg::Text(status.to_owned()))),
            None => "and status in ('queued', 'running')".to_owned(),
        },
    };
    let mut query = sqlx::query_as::<_, (i64, String)>(sqlx::AssertSqlSafe(format!(
        "update jobs set {} where id = $1 {owner} returning last_event, tenant_id",
        sets.join(", ")
    )));
    for a in args {
        query = match a {
            Arg::Int(i) => query.bind(i),
            Arg::Text(t) => query.bind(t),
        };
    }
    let Some((last, tenant_id)) = query.fetch_optional(tx.conn()).await? else {
        return Ok(false);
    };
    if change.reset {
        sqlx::query("delete from job_results where job_id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
    }
    let first = last - change.events.len() as i64 + 1;
    let events: Vec<(&str, &str, pb::JobEvent)> = change
        .events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.id = first + i as i64;
            (id, tenant_id.as_str(), e)
        })
        .collect();
    insert_events(tx, &events).await?;
    insert_results(tx, id, &tenant_id, &change.results).await?;
    Ok(true)
}

/// Rows per insert statement.
const BATCH: usize = 500;

/// `(..), (..)` for `rows` rows of `columns` values bound in order: plain
/// `?` on SQLite (numbered parameters make a big statement quadratic
/// there), `$n` on PostgreSQL.
fn placeholders(backend: Backend, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=columns)
                .map(|c| match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::Postgres => format!("${}", r * columns + c),
                })
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Events of any jobs: (job, tenant, event).
async fn insert_events(tx: &mut TenantTx, events: &[(&str, &str, pb::JobEvent)]) -> Result<()> {
    for chunk in events.chunks(BATCH) {
        let sql = format!(
            "insert into job_events (job_id, id, tenant_id, event) values {}",
            placeholders(tx.backend(), chunk.len(), 4)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (job_id, tenant_id, e) in chunk {
            query = query
                .bind(job_id)
                .bind(e.id)
                .bind(tenant_id)
                .bind(e.encode_to_vec());
        }
        query.execute(tx.conn()).await?;
    }
    Ok(())
}

async fn insert_results(
    tx: &mut TenantTx,
    job_id: &str,
    tenant_id: &str,
    results: &[ResultRow],
) -> Result<()> {
    for chunk in results.chunks(BATCH) {
        let sql = format!(
            "insert into job_results (job_id, seq, tenant_id, device_id, item, error_kind, error_message) values {}",
            placeholders(tx.backend(), chunk.len(), 7)
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            let error = r.error.clone().unwrap_or_default();
            query = query
                .bind(job_id)
                .bind(r.seq)
                .bind(tenant_id)
                .bind(&r.device_id)
                .bind(&r.item)
                .bind(error.kind)
                .bind(error.message);
        }
        query.execute(tx.conn()).await?;
    }
    Ok(())
}

/// A job's events after `after`, in order.
pub async fn events(
    tx: &mut TenantTx,
    tenant_id: &str,
    job_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<pb::JobEvent>> {
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "select id, event from job_events where tenant_id = $1 and job_id = $2 and id > $3 \
         order by id limit $4",
    )
    .bind(tenant_id)
    .bind(job_id)
    .bind(after)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, bytes)| {
            let mut e = pb::JobEvent::decode(bytes.as_slice()).ok()?;
            e.id = id;
            Some(e)
        })
        .collect())
}

/// A job's results after `after`, in order (one device's, when given).
pub async fn results(
    tx: &mut TenantTx,
    tenant_id: &str,
    job_id: &str,
    device_id: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<pb::JobResult>> {
    let rows: Vec<(i64, String, String, String, String)> = sqlx::query_as(
        "select seq, device_id, item, error_kind, error_message from job_results \
         where tenant_id = $1 and job_id = $2 and ($3 = '' or device_id = $3) and seq > $4 \
         order by seq limit $5",
    )
    .bind(tenant_id)
    .bind(job_id)
    .bind(device_id)
    .bind(after)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, device_id, item, kind, message)| pb::JobResult {
            seq,
            device_id,
            item: (!item.is_empty()).then(|| {
                crate::method::json_struct(&serde_json::from_str(&item).unwrap_or_default())
            }),
            error: (!kind.is_empty()).then_some(pb::JobError { kind, message }),
        })
        .collect())
}

/// Deletes jobs that finished before `before`, with their results and
/// events; how many.
pub async fn prune(tx: &mut TenantTx, before: i64) -> Result<u64> {
    // SQLite deletes the results and events by its foreign keys too.
    for table in ["job_results", "job_events"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "delete from {table} where job_id in (select id from jobs where finish_time < $1)"
        )))
        .bind(before)
        .execute(tx.conn())
        .await?;
    }
    let done = sqlx::query("delete from jobs where finish_time < $1")
        .bind(before)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected())
}
