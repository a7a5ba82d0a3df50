//! The tables of rdm's own ACS (migrations in `migrations/`, their own
//! table `_tr069_migrations`): CPEs, cached parameters, tasks, sessions,
//! files and download tokens. Every query names the tenant; PostgreSQL's
//! row-level security filters again.
use crate::soap::Param;
use rdm_kit::{Result, db::TenantTx};

rdm_kit::service_migrations! {
    /// The TR-069 service's migrations (after the inventory's: its tables
    /// refer to tenants and devices).
    pub static MIGRATIONS = "_tr069_migrations";
}

/// A CPE rdm's ACS knows.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct CpeRow {
    pub tenant_id: String,
    pub device_id: String,
    pub acs_id: String,
    pub manufacturer: String,
    pub oui: String,
    pub product_class: String,
    pub serial_number: String,
    pub root: String,
    pub cr_url: String,
    pub bootstrapped: i64,
    pub last_inform: i64,
    pub last_events: String,
}

const CPE: &str = "select tenant_id, device_id, acs_id, manufacturer, oui, product_class, \
     serial_number, root, cr_url, bootstrapped, last_inform, last_events from cwmp_devices";

pub async fn put_cpe(tx: &mut TenantTx, c: &CpeRow) -> Result<()> {
    sqlx::query(
        "insert into cwmp_devices (tenant_id, device_id, acs_id, manufacturer, oui, product_class, \
         serial_number, root, cr_url, bootstrapped, last_inform, last_events) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         on conflict (tenant_id, device_id) do update set acs_id = excluded.acs_id, \
         manufacturer = excluded.manufacturer, oui = excluded.oui, \
         product_class = excluded.product_class, serial_number = excluded.serial_number, \
         root = excluded.root, cr_url = excluded.cr_url, bootstrapped = excluded.bootstrapped, \
         last_inform = excluded.last_inform, last_events = excluded.last_events",
    )
    .bind(&c.tenant_id)
    .bind(&c.device_id)
    .bind(&c.acs_id)
    .bind(&c.manufacturer)
    .bind(&c.oui)
    .bind(&c.product_class)
    .bind(&c.serial_number)
    .bind(&c.root)
    .bind(&c.cr_url)
    .bind(c.bootstrapped)
    .bind(c.last_inform)
    .bind(&c.last_events)
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn cpe(tx: &mut TenantTx, tenant_id: &str, device_id: &str) -> Result<Option<CpeRow>> {
    let sql = format!("{CPE} where tenant_id = $1 and device_id = $2");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(device_id)
        .fetch_optional(tx.conn())
        .await?)
}

/// The tenant's CPEs, by ACS id.
pub async fn cpes(tx: &mut TenantTx, tenant_id: &str) -> Result<Vec<CpeRow>> {
    let sql = format!("{CPE} where tenant_id = $1 order by acs_id");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .fetch_all(tx.conn())
        .await?)
}

pub async fn set_bootstrapped(tx: &mut TenantTx, tenant_id: &str, device_id: &str) -> Result<()> {
    sqlx::query("update cwmp_devices set bootstrapped = 1 where tenant_id = $1 and device_id = $2")
        .bind(tenant_id)
        .bind(device_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// A cached parameter (or object, its name ending in `.`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ParamRow {
    pub name: String,
    pub value: String,
    pub xsd_type: String,
    /// 1, 0, or -1 when not known yet.
    pub writable: i64,
    pub update_time: i64,
}

/// Caches values the CPE reported, keeping what is known of writability
/// (a hundred rows a statement).
pub async fn put_values(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    params: &[Param],
    now: i64,
) -> Result<()> {
    // One row per name: a statement may not upsert a row twice, and a CPE
    // may list a name twice (overlapping partial paths).
    let mut unique: std::collections::BTreeMap<&str, &Param> = Default::default();
    for p in params {
        unique.insert(&p.name, p);
    }
    let params: Vec<&Param> = unique.into_values().collect();
    for chunk in params.chunks(100) {
        let rows: Vec<String> = (0..chunk.len())
            .map(|i| {
                let n = 4 + i * 3;
                format!("($1, $2, $3, ${n}, ${}, ${}, -1)", n + 1, n + 2)
            })
            .collect();
        let sql = format!(
            "insert into cwmp_parameters (tenant_id, device_id, update_time, name, value, xsd_type, writable) \
             values {} on conflict (tenant_id, device_id, name) do update \
             set value = excluded.value, xsd_type = excluded.xsd_type, update_time = excluded.update_time",
            rows.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(device_id)
            .bind(now);
        for p in chunk {
            query = query
                .bind(p.name.as_str())
                .bind(p.value.as_str())
                .bind(p.xsd_type.as_str());
        }
        query.execute(tx.conn()).await?;
    }
    Ok(())
}

/// Caches names and writability from a GetParameterNames (values kept).
pub async fn put_names(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    names: &[(String, bool)],
    now: i64,
) -> Result<()> {
    for (name, writable) in names {
        sqlx::query(
            "insert into cwmp_parameters (tenant_id, device_id, name, value, xsd_type, writable, update_time) \
             values ($1, $2, $3, '', '', $4, $5) on conflict (tenant_id, device_id, name) do update \
             set writable = excluded.writable",
        )
        .bind(tenant_id)
        .bind(device_id)
        .bind(name)
        .bind(i64::from(*writable))
        .bind(now)
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

/// Forgets the cached parameters under `prefix` (`X.Y.`; '' is all).
pub async fn forget_under(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    prefix: &str,
) -> Result<()> {
    sqlx::query(
        "delete from cwmp_parameters where tenant_id = $1 and device_id = $2 \
         and substr(name, 1, length($3)) = $4",
    )
    .bind(tenant_id)
    .bind(device_id)
    .bind(prefix)
    .bind(prefix)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The cached parameters whose names start with `prefix`.
pub async fn params_under(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    prefix: &str,
) -> Result<Vec<ParamRow>> {
    Ok(sqlx::query_as(
        "select name, value, xsd_type, writable, update_time from cwmp_parameters \
         where tenant_id = $1 and device_id = $2 and substr(name, 1, length($3)) = $4 order by name",
    )
    .bind(tenant_id)
    .bind(device_id)
    .bind(prefix)
    .bind(prefix)
    .fetch_all(tx.conn())
    .await?)
}

/// A task of a CPE.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct TaskRow {
    pub id: String,
    pub tenant_id: String,
    pub device_id: String,
    pub user_id: String,
    pub task: String,
    pub status: String,
    pub step: i64,
    pub session_id: String,
    pub fault: String,
    pub transfer: String,
    pub create_time: i64,
    pub update_time: i64,
}

const TASK: &str = "select id, tenant_id, device_id, user_id, task, status, step, session_id, \
     fault, transfer, create_time, update_time from cwmp_tasks";

pub async fn insert_task(tx: &mut TenantTx, t: &TaskRow) -> Result<()> {
    sqlx::query(
        "insert into cwmp_tasks (id, tenant_id, device_id, user_id, task, status, step, session_id, \
         fault, transfer, create_time, update_time) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&t.id)
    .bind(&t.tenant_id)
    .bind(&t.device_id)
    .bind(&t.user_id)
    .bind(&t.task)
    .bind(&t.status)
    .bind(t.step)
    .bind(&t.session_id)
    .bind(&t.fault)
    .bind(&t.transfer)
    .bind(t.create_time)
    .bind(t.update_time)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Stores a task's status, step, session, fault and transfer.
pub async fn update_task(tx: &mut TenantTx, t: &TaskRow) -> Result<()> {
    sqlx::query(
        "update cwmp_tasks set status = $1, step = $2, session_id = $3, fault = $4, transfer = $5, \
         update_time = $6 where tenant_id = $7 and id = $8",
    )
    .bind(&t.status)
    .bind(t.step)
    .bind(&t.session_id)
    .bind(&t.fault)
    .bind(&t.transfer)
    .bind(t.update_time)
    .bind(&t.tenant_id)
    .bind(&t.id)
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn task(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<Option<TaskRow>> {
    let sql = format!("{TASK} where tenant_id = $1 and id = $2");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(tx.conn())
        .await?)
}

/// The device's tasks not done yet, oldest first.
pub async fn pending_tasks(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
) -> Result<Vec<TaskRow>> {
    let sql = format!(
        "{TASK} where tenant_id = $1 and device_id = $2 and status <> 'DONE' order by create_time, id"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(device_id)
        .fetch_all(tx.conn())
        .await?)
}

/// The device's next task to send: rdm's own (bootstrap) first, then the
/// oldest queued.
pub async fn next_task(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
) -> Result<Option<TaskRow>> {
    let sql = format!(
        "{TASK} where tenant_id = $1 and device_id = $2 and status = 'QUEUED' \
         order by case when user_id = '' then 0 else 1 end, create_time, id limit 1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(device_id)
        .fetch_optional(tx.conn())
        .await?)
}

pub async fn delete_task(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<bool> {
    let done = sqlx::query("delete from cwmp_tasks where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// A session in progress.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub tenant_id: String,
    pub device_id: String,
    pub ns: String,
    pub task_id: String,
    pub expire_time: i64,
}

pub async fn put_session(tx: &mut TenantTx, s: &SessionRow) -> Result<()> {
    sqlx::query(
        "insert into cwmp_sessions (id, tenant_id, device_id, ns, task_id, expire_time) \
         values ($1, $2, $3, $4, $5, $6) on conflict (id) do update \
         set task_id = excluded.task_id, expire_time = excluded.expire_time",
    )
    .bind(&s.id)
    .bind(&s.tenant_id)
    .bind(&s.device_id)
    .bind(&s.ns)
    .bind(&s.task_id)
    .bind(s.expire_time)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Ends the CPE's other sessions (an Inform starts a session anew: the
/// CPE gave up on the old one); their tasks in flight are queued again.
pub async fn end_sessions_of(tx: &mut TenantTx, tenant_id: &str, device_id: &str) -> Result<()> {
    sqlx::query(
        "update cwmp_tasks set status = 'QUEUED', session_id = '' \
         where tenant_id = $1 and device_id = $2 and status = 'RUNNING'",
    )
    .bind(tenant_id)
    .bind(device_id)
    .execute(tx.conn())
    .await?;
    sqlx::query("delete from cwmp_sessions where tenant_id = $1 and device_id = $2")
        .bind(tenant_id)
        .bind(device_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// A session by its cookie (platform scope: the cookie names the tenant).
pub async fn session(tx: &mut TenantTx, id: &str) -> Result<Option<SessionRow>> {
    Ok(sqlx::query_as(
        "select id, tenant_id, device_id, ns, task_id, expire_time from cwmp_sessions where id = $1",
    )
    .bind(id)
    .fetch_optional(tx.conn())
    .await?)
}

pub async fn delete_session(tx: &mut TenantTx, id: &str) -> Result<()> {
    sqlx::query("delete from cwmp_sessions where id = $1")
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// Ends the sessions that expired before `now` (platform scope): their
/// tasks in flight go back to the queue for the CPE's next session.
pub async fn expire_sessions(tx: &mut TenantTx, now: i64) -> Result<u64> {
    sqlx::query(
        "update cwmp_tasks set status = 'QUEUED', session_id = '' where status = 'RUNNING' \
         and session_id in (select id from cwmp_sessions where expire_time < $1)",
    )
    .bind(now)
    .execute(tx.conn())
    .await?;
    let gone = sqlx::query("delete from cwmp_sessions where expire_time < $1")
        .bind(now)
        .execute(tx.conn())
        .await?;
    Ok(gone.rows_affected())
}

/// A file rdm's ACS serves.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct FileRow {
    pub tenant_id: String,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    pub path: String,
    pub create_time: i64,
}

const FILE: &str =
    "select tenant_id, name, size, sha256, content_type, path, create_time from cwmp_files";

/// Stores a file's row; the path of the file it replaced, if any.
pub async fn put_file(tx: &mut TenantTx, f: &FileRow) -> Result<Option<String>> {
    let before = file(tx, &f.tenant_id, &f.name).await?.map(|f| f.path);
    sqlx::query(
        "insert into cwmp_files (tenant_id, name, size, sha256, content_type, path, create_time) \
         values ($1, $2, $3, $4, $5, $6, $7) on conflict (tenant_id, name) do update \
         set size = excluded.size, sha256 = excluded.sha256, content_type = excluded.content_type, \
         path = excluded.path, create_time = excluded.create_time",
    )
    .bind(&f.tenant_id)
    .bind(&f.name)
    .bind(f.size)
    .bind(&f.sha256)
    .bind(&f.content_type)
    .bind(&f.path)
    .bind(f.create_time)
    .execute(tx.conn())
    .await?;
    Ok(before)
}

pub async fn file(tx: &mut TenantTx, tenant_id: &str, name: &str) -> Result<Option<FileRow>> {
    let sql = format!("{FILE} where tenant_id = $1 and name = $2");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(name)
        .fetch_optional(tx.conn())
        .await?)
}

pub async fn files(tx: &mut TenantTx, tenant_id: &str) -> Result<Vec<FileRow>> {
    let sql = format!("{FILE} where tenant_id = $1 order by name");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .fetch_all(tx.conn())
        .await?)
}

pub async fn delete_file(tx: &mut TenantTx, tenant_id: &str, name: &str) -> Result<Option<String>> {
    let path = file(tx, tenant_id, name).await?.map(|f| f.path);
    sqlx::query("delete from cwmp_files where tenant_id = $1 and name = $2")
        .bind(tenant_id)
        .bind(name)
        .execute(tx.conn())
        .await?;
    Ok(path)
}

/// A one-time download: what its token is good for.
#[derive(Clone, Debug, Default, sqlx::FromRow)]
pub struct DownloadRow {
    pub token_hash: String,
    pub tenant_id: String,
    pub file_name: String,
    pub task_id: String,
    pub used: i64,
    pub expire_time: i64,
}

pub async fn insert_download(tx: &mut TenantTx, d: &DownloadRow) -> Result<()> {
    sqlx::query(
        "insert into cwmp_downloads (token_hash, tenant_id, file_name, task_id, used, expire_time) \
         values ($1, $2, $3, $4, 0, $5)",
    )
    .bind(&d.token_hash)
    .bind(&d.tenant_id)
    .bind(&d.file_name)
    .bind(&d.task_id)
    .bind(d.expire_time)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Spends a download token (platform scope): its row if it was unused and
/// has not expired.
pub async fn spend_download(
    tx: &mut TenantTx,
    token_hash: &str,
    now: i64,
) -> Result<Option<DownloadRow>> {
    let row: Option<DownloadRow> = sqlx::query_as(
        "select token_hash, tenant_id, file_name, task_id, used, expire_time from cwmp_downloads \
         where token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(tx.conn())
    .await?;
    let Some(row) = row.filter(|d| d.used == 0 && d.expire_time > now) else {
        return Ok(None);
    };
    let spent =
        sqlx::query("update cwmp_downloads set used = 1 where token_hash = $1 and used = 0")
            .bind(token_hash)
            .execute(tx.conn())
            .await?;
    Ok((spent.rows_affected() == 1).then_some(row))
}
