//! Cron schedules (croner, time zones by chrono-tz): each firing submits an
//! ordinary job. Every replica looks for due schedules; a firing is taken
//! under the row's lock (skipped by the others on PostgreSQL) and its job
//! carries the key `schedule:<id>:<time>`, unique in the tenant, so one
//! firing never makes two jobs. Firings missed while no replica ran are
//! skipped, or made up once (`MISSED_FIRINGS_RUN_ONCE`).
use crate::store;
use chrono::{TimeZone, Utc};
use rdm_kit::{
    Error, Result,
    db::{Backend, Db, Scope, TenantTx, now_millis, timestamp},
};
use rdm_proto::jobs as pb;
use sqlx::Row;
use std::{str::FromStr, sync::Arc, time::Duration};

/// A firing this late still counts as on time (a busy replica, a slow tick).
const GRACE_MS: i64 = 5_000;
const TICK: Duration = Duration::from_millis(200);

/// A cron expression read in a time zone.
pub struct Cron {
    cron: croner::Cron,
    tz: chrono_tz::Tz,
}

impl Cron {
    pub fn parse(expr: &str, time_zone: &str) -> Result<Self> {
        let cron = croner::Cron::from_str(expr)
            .map_err(|e| Error::invalid("cron", format!("not a cron expression: {e}")))?;
        let tz = match time_zone {
            "" => chrono_tz::UTC,
            tz => tz.parse().map_err(|_| {
                Error::invalid(
                    "time_zone",
                    format!("{tz:?} is not an IANA time zone (Europe/Amsterdam)"),
                )
            })?,
        };
        Ok(Self { cron, tz })
    }

    /// The first firing after `millis`.
    pub fn next_after(&self, millis: i64) -> Result<i64> {
        let at = Utc
            .timestamp_millis_opt(millis)
            .single()
            .ok_or_else(|| Error::invalid("cron", "time out of range"))?
            .with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&at, false)
            .map(|t| t.timestamp_millis())
            .map_err(|e| Error::invalid("cron", format!("the expression never fires: {e}")))
    }
}

/// A schedule as stored.
pub struct Schedule {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub user_id: String,
    pub cron: String,
    pub time_zone: String,
    /// The SubmitJobRequest, as JSON.
    pub job: String,
    pub paused: bool,
    pub missed: String,
    pub next_fire: i64,
    pub last_fire: Option<i64>,
    pub last_job_id: String,
    pub create_time: i64,
}

const COLUMNS: &str = "id, tenant_id, name, user_id, cron, time_zone, job, paused, missed, \
     next_fire, last_fire, last_job_id, create_time";

fn row(r: &sqlx::any::AnyRow) -> std::result::Result<Schedule, sqlx::Error> {
    Ok(Schedule {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        user_id: r.try_get("user_id")?,
        cron: r.try_get("cron")?,
        time_zone: r.try_get("time_zone")?,
        job: r.try_get("job")?,
        paused: r.try_get::<i64, _>("paused")? != 0,
        missed: r.try_get("missed")?,
        next_fire: r.try_get("next_fire")?,
        last_fire: r.try_get("last_fire")?,
        last_job_id: r.try_get("last_job_id")?,
        create_time: r.try_get("create_time")?,
    })
}

pub fn missed_name(m: pb::MissedFirings) -> &'static str {
    match m {
        pb::MissedFirings::RunOnce => "run_once",
        _ => "skip",
    }
}

impl Schedule {
    pub fn to_pb(&self) -> pb::Schedule {
        let job: pb::SubmitJobRequest = crate::submit_from_json(&self.job).unwrap_or_default();
        pb::Schedule {
            id: self.id.clone(),
            name: self.name.clone(),
            cron: self.cron.clone(),
            time_zone: self.time_zone.clone(),
            job: Some(job),
            paused: self.paused,
            missed: match self.missed.as_str() {
                "run_once" => pb::MissedFirings::RunOnce,
                _ => pb::MissedFirings::Skip,
            }
            .into(),
            next_fire_time: (!self.paused).then(|| timestamp(self.next_fire)),
            last_fire_time: self.last_fire.map(timestamp),
            last_job_id: self.last_job_id.clone(),
            user_id: self.user_id.clone(),
            create_time: Some(timestamp(self.create_time)),
        }
    }
}

pub async fn insert(tx: &mut TenantTx, s: &Schedule) -> Result<()> {
    sqlx::query(
        "insert into job_schedules (id, tenant_id, name, user_id, cron, time_zone, job, paused, \
         missed, next_fire, create_time) values ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, $10)",
    )
    .bind(&s.id)
    .bind(&s.tenant_id)
    .bind(&s.name)
    .bind(&s.user_id)
    .bind(&s.cron)
    .bind(&s.time_zone)
    .bind(&s.job)
    .bind(&s.missed)
    .bind(s.next_fire)
    .bind(s.create_time)
    .execute(tx.conn())
    .await
    .map_err(|e| match e.as_database_error() {
        Some(d) if d.is_unique_violation() => Error::new(
            rdm_kit::ErrorCode::AlreadyExists,
            format!("the tenant has a schedule named {:?}", s.name),
        )
        .with_meta("field", "name"),
        _ => e.into(),
    })?;
    Ok(())
}

pub async fn get(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<Option<Schedule>> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from job_schedules where tenant_id = $1 and id = $2"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(tx.conn())
    .await?;
    Ok(r.as_ref().map(row).transpose()?)
}

pub async fn list(
    tx: &mut TenantTx,
    tenant_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<Schedule>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from job_schedules where tenant_id = $1 and id > $2 order by id limit $3"
    )))
    .bind(tenant_id)
    .bind(after)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    Ok(rows.iter().map(row).collect::<Result<_, _>>()?)
}

/// Pauses or resumes (from its next firing after now).
pub async fn set_paused(
    tx: &mut TenantTx,
    tenant_id: &str,
    id: &str,
    paused: bool,
    next_fire: i64,
) -> Result<bool> {
    let done = sqlx::query(
        "update job_schedules set paused = $3, next_fire = $4 where tenant_id = $1 and id = $2",
    )
    .bind(tenant_id)
    .bind(id)
    .bind(i64::from(paused))
    .bind(next_fire)
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn delete(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<bool> {
    let done = sqlx::query("delete from job_schedules where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Fires the due schedules of every tenant, until the process ends.
pub async fn clock(db: Db, jobs: Arc<crate::Jobs>) {
    loop {
        if let Err(e) = fire_due(&db, &jobs).await {
            tracing::warn!(error = %e.message, "firing schedules");
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn fire_due(db: &Db, jobs: &crate::Jobs) -> Result<()> {
    let now = now_millis();
    let mut tx = db.begin_write(Scope::Platform).await?;
    let lock = match tx.backend() {
        Backend::Postgres => "for update skip locked",
        Backend::Sqlite => "",
    };
    let due = sqlx::query(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from job_schedules where paused = 0 and next_fire <= $1 \
         order by next_fire limit 100 {lock}"
    )))
    .bind(now)
    .fetch_all(tx.conn())
    .await?;
    let mut fired = Vec::new();
    for s in due.iter().map(row) {
        let s = s?;
        let cron = match Cron::parse(&s.cron, &s.time_zone) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(schedule = %s.id, error = %e.message, "a schedule that cannot fire");
                continue;
            }
        };
        let late = now - s.next_fire > GRACE_MS;
        // On time, or made up once: the firing it was due for. Missed and
        // skipped: none, and on from now.
        let fire_at = match (late, s.missed.as_str()) {
            (false, _) => Some(s.next_fire),
            (true, "run_once") => Some(s.next_fire),
            (true, _) => None,
        };
        let next = cron.next_after(if late { now } else { s.next_fire })?;
        let mut job_id = s.last_job_id.clone();
        if let Some(at) = fire_at {
            let request = crate::submit_from_json(&s.job)?;
            let job = jobs.prepare(
                &s.tenant_id,
                &s.user_id,
                &request,
                Some(format!("schedule:{}:{at}", s.id)),
                &s.id,
                now,
            )?;
            store::insert(&mut tx, &job, now).await?;
            job_id = job.id.clone();
            fired.push(job.id);
        } else {
            tracing::info!(schedule = %s.id, "skipped the firings missed while no replica ran");
        }
        sqlx::query(
            "update job_schedules set next_fire = $2, last_fire = coalesce($3, last_fire), \
             last_job_id = $4 where id = $1",
        )
        .bind(&s.id)
        .bind(next)
        .bind(fire_at)
        .bind(&job_id)
        .execute(tx.conn())
        .await?;
    }
    tx.commit().await?;
    for id in fired {
        metrics::counter!("rdm_jobs_submitted_total", "by" => "schedule").increment(1);
        jobs.hub.changed(&id);
        jobs.hub.queued.notify_one();
    }
    Ok(())
}
