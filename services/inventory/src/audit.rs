//! The audit trail's store and API: events recorded by the kit's audit
//! middleware (in this process, or sent by a protocol service through
//! `RecordAuditEvent`), listed and exported per tenant, pruned past the
//! retention period.
use crate::{Inventory, err, reply};
use futures::Stream;
use rdm_kit::{
    Error, Principal, Result,
    audit::{AuditEvent, AuditSink},
    db::{Db, Scope, now_millis, page, timestamp},
};
use rdm_proto::inventory::{self as pb, audit_service_server::AuditService};
use sqlx::FromRow;
use std::{pin::Pin, time::Duration};
use tonic::{Request, Response, Status};

/// Stores events in the inventory's database, off the caller's path.
#[derive(Clone)]
pub struct DbAudit(pub Db);

impl AuditSink for DbAudit {
    fn record(&self, _: &Principal, event: AuditEvent) {
        let db = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = insert(&db, &event).await {
                tracing::error!(error = %e.message, method = %event.method, "audit event not stored");
            }
        });
    }
}

async fn insert(db: &Db, e: &AuditEvent) -> Result<()> {
    let mut tx = db
        .begin_write(Scope::Tenant {
            tenant_id: &e.tenant_id,
            user_id: &e.actor,
        })
        .await?;
    sqlx::query(
        "insert into audit_events (id, tenant_id, time, actor, client_ip, method, target, summary, \
         outcome, request_id) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&e.id)
    .bind(&e.tenant_id)
    .bind(e.time_ms)
    .bind(&e.actor)
    .bind(&e.client_ip)
    .bind(&e.method)
    .bind(&e.target)
    .bind(&e.summary)
    .bind(&e.outcome)
    .bind(&e.request_id)
    .execute(tx.conn())
    .await?;
    tx.commit().await
}

/// Records work done on the platform from the command line (a secret key
/// rotation), in the system tenant's trail.
pub async fn record_platform_event(db: &Db, method: &str, summary: &str) -> Result<()> {
    let mut tx = db.begin(Scope::Platform).await?;
    let system = crate::store::tenant_by_slug(&mut tx, crate::SYSTEM_TENANT)
        .await?
        .ok_or_else(|| Error::not_found("no system tenant: run rdm up or serve once"))?;
    drop(tx);
    let event = AuditEvent {
        id: uuid::Uuid::now_v7().to_string(),
        time_ms: now_millis(),
        tenant_id: system.id,
        actor: "rdm (command line)".into(),
        method: method.to_owned(),
        summary: summary.to_owned(),
        outcome: "OK".into(),
        ..AuditEvent::default()
    };
    insert(db, &event).await
}

/// Deletes events older than `retention`, now and then every hour.
pub fn prune_every_hour(db: Db, retention: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let cutoff = now_millis() - retention.as_millis() as i64;
            match prune(&db, cutoff).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "audit events past retention pruned"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message, "audit pruning failed"),
            }
        }
    });
}

async fn prune(db: &Db, cutoff: i64) -> Result<i64> {
    let mut tx = db.begin_write(Scope::Platform).await?;
    // The app role may not delete audit rows on PostgreSQL: a function
    // owned by the schema's owner does, and only past the cutoff.
    let sql = if db.backend() == rdm_kit::db::Backend::Postgres {
        "select rdm_audit_prune($1)"
    } else {
        "delete from audit_events where time < $1"
    };
    let done = sqlx::query(sql).bind(cutoff).execute(tx.conn()).await?;
    tx.commit().await?;
    Ok(done.rows_affected() as i64)
}

#[derive(FromRow)]
struct EventRow {
    id: String,
    time: i64,
    actor: String,
    client_ip: String,
    method: String,
    target: String,
    summary: String,
    outcome: String,
    request_id: String,
}

fn event_pb(r: EventRow) -> pb::AuditEvent {
    pb::AuditEvent {
        id: r.id,
        time: Some(timestamp(r.time)),
        actor: r.actor,
        client_ip: r.client_ip,
        method: r.method,
        target: r.target,
        summary: r.summary,
        outcome: r.outcome,
        request_id: r.request_id,
    }
}

fn millis(t: &Option<prost_types::Timestamp>) -> Option<i64> {
    t.as_ref()
        .map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000))
}

enum Bind {
    Text(String),
    Int(i64),
}

/// A page of `p`'s tenant's events, newest first, after the id `after`.
async fn events(
    db: &Db,
    p: &Principal,
    filter: &pb::AuditFilter,
    after: &str,
    limit: i64,
) -> Result<Vec<EventRow>> {
    // Built from fixed fragments only; every value is a bind parameter.
    let mut sql = String::from(
        "select id, time, actor, client_ip, method, target, summary, outcome, request_id \
         from audit_events where tenant_id = $1",
    );
    let mut binds = vec![Bind::Text(p.tenant_id.clone())];
    let mut push = |sql: &mut String, clause: &str, value: Bind| {
        binds.push(value);
        sql.push_str(&clause.replace('?', &format!("${}", binds.len())));
    };
    for (clause, value) in [
        (" and actor = ?", &filter.actor),
        (" and target = ?", &filter.target),
        (" and outcome = ?", &filter.outcome),
    ] {
        if !value.is_empty() {
            push(&mut sql, clause, Bind::Text(value.clone()));
        }
    }
    if !filter.method_prefix.is_empty() {
        // A prefix as a range, not LIKE: no wildcards to escape.
        push(
            &mut sql,
            " and method >= ?",
            Bind::Text(filter.method_prefix.clone()),
        );
        push(
            &mut sql,
            " and method < ?",
            Bind::Text(format!("{}\u{10FFFF}", filter.method_prefix)),
        );
    }
    if let Some(since) = millis(&filter.since) {
        push(&mut sql, " and time >= ?", Bind::Int(since));
    }
    if let Some(until) = millis(&filter.until) {
        push(&mut sql, " and time < ?", Bind::Int(until));
    }
    if !after.is_empty() {
        push(&mut sql, " and id < ?", Bind::Text(after.to_owned()));
    }
    push(&mut sql, " order by id desc limit ?", Bind::Int(limit));
    let mut query = sqlx::query_as::<_, EventRow>(sqlx::AssertSqlSafe(sql));
    for bind in binds {
        query = match bind {
            Bind::Text(t) => query.bind(t),
            Bind::Int(n) => query.bind(n),
        };
    }
    let mut tx = db.begin(Scope::of(p)).await?;
    Ok(query.fetch_all(tx.conn()).await?)
}

type EventStream =
    Pin<Box<dyn Stream<Item = Result<pb::ExportAuditEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for Inventory {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        let run = async {
            let size = page::size(r.page_size)?;
            let after = page::decode(&r.page_token)?;
            let filter = r.filter.clone().unwrap_or_default();
            let rows = events(self.db(), p, &filter, &after, size + 1).await?;
            let (rows, next_page_token) = page::finish(rows, size, |e| &e.id);
            Ok(pb::ListAuditEventsResponse {
                events: rows.into_iter().map(event_pb).collect(),
                next_page_token,
            })
        };
        reply(run.await)
    }

    type ExportAuditEventsStream = EventStream;

    async fn export_audit_events(
        &self,
        req: Request<pb::ExportAuditEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let p = Principal::of(&req).map_err(err)?.clone();
        let filter = req.get_ref().filter.clone().unwrap_or_default();
        let db = self.db().clone();
        let stream = async_stream::try_stream! {
            let mut after = String::new();
            loop {
                let rows = events(&db, &p, &filter, &after, 1000).await.map_err(err)?;
                let done = rows.len() < 1000;
                for row in rows {
                    after = row.id.clone();
                    yield pb::ExportAuditEventsResponse { event: Some(event_pb(row)) };
                }
                if done {
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn record_audit_event(
        &self,
        req: Request<pb::RecordAuditEventRequest>,
    ) -> Result<Response<pb::RecordAuditEventResponse>, Status> {
        let p = Principal::of(&req).map_err(err)?;
        let r = req.get_ref();
        // The id must be a UUID (it orders events); the time near now.
        let now = now_millis();
        let id = match uuid::Uuid::parse_str(&r.id) {
            Ok(id) if id.get_version_num() == 7 => id.to_string(),
            _ => uuid::Uuid::now_v7().to_string(),
        };
        let event = AuditEvent {
            id,
            time_ms: if (now - r.time_ms).abs() < 60_000 {
                r.time_ms
            } else {
                now
            },
            tenant_id: p.tenant_id.clone(),
            actor: p.user_id.clone(),
            client_ip: r.client_ip.clone(),
            method: r.method.clone(),
            target: r.target.clone(),
            summary: r.summary.clone(),
            outcome: r.outcome.clone(),
            request_id: r.request_id.clone(),
        };
        if event.method.len() > 200 || event.summary.len() > 4096 || event.target.len() > 200 {
            return Err(err(Error::invalid(
                "summary",
                "audit event fields are too long",
            )));
        }
        reply(
            insert(self.db(), &event)
                .await
                .map(|()| pb::RecordAuditEventResponse {}),
        )
    }
}
