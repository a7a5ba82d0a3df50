//! The catalog's tables: a tenant's MIB modules, its uploads, and its data
//! models. Every
//! query names the tenant, and PostgreSQL's row-level security filters
//! again. The migrations keep their own table (`_catalog_migrations`), so
//! they never mix with the inventory's in the one database.
use base64::{Engine, engine::general_purpose::STANDARD};
use prost::Message;
use rdm_kit::{
    Error, Result,
    db::{TenantTx, now_millis},
};
use rdm_proto::catalog as pb;

rdm_kit::service_migrations! {
    /// The catalog's migrations (after the inventory's: its tables refer to
    /// tenants).
    pub static MIGRATIONS = "_catalog_migrations";
}

/// The tenant's texts, each under its name: MIB modules or data models.
#[derive(Clone, Copy, Debug)]
pub enum Texts {
    Mibs,
    DataModels,
}

impl Texts {
    /// Its table: a name from this list, never from input.
    fn table(self) -> &'static str {
        match self {
            Texts::Mibs => "mib_modules",
            Texts::DataModels => "data_models",
        }
    }
}

/// The tenant's texts of a kind, as (name, text), by name.
pub async fn texts(
    tx: &mut TenantTx,
    kind: Texts,
    tenant_id: &str,
) -> Result<Vec<(String, String)>> {
    let sql = format!(
        "select name, source from {} where tenant_id = $1 order by name",
        kind.table()
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .fetch_all(tx.conn())
        .await?)
}

/// What a tenant's texts of a kind are now: their count and newest change.
pub type Version = (i64, i64);

/// The [`Version`] of a tenant's texts (what was built from them is built
/// again when it moves).
pub async fn version(tx: &mut TenantTx, kind: Texts, tenant_id: &str) -> Result<Version> {
    let sql = format!(
        "select count(*), coalesce(max(create_time), 0) from {} where tenant_id = $1",
        kind.table()
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .fetch_one(tx.conn())
        .await?)
}

/// The tenant has a text of this kind and name.
pub async fn has(tx: &mut TenantTx, kind: Texts, tenant_id: &str, name: &str) -> Result<bool> {
    let sql = format!(
        "select 1 from {} where tenant_id = $1 and name = $2",
        kind.table()
    );
    let found: Option<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(name)
        .fetch_optional(tx.conn())
        .await?;
    Ok(found.is_some())
}

/// Deletes one; whether there was one.
pub async fn delete(tx: &mut TenantTx, kind: Texts, tenant_id: &str, name: &str) -> Result<bool> {
    let sql = format!(
        "delete from {} where tenant_id = $1 and name = $2",
        kind.table()
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(name)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Stores a data model's document, replacing one of the same name.
pub async fn put_data_model(
    tx: &mut TenantTx,
    tenant_id: &str,
    name: &str,
    source: &str,
) -> Result<()> {
    delete(tx, Texts::DataModels, tenant_id, name).await?;
    sqlx::query(
        "insert into data_models (tenant_id, name, source, create_time) values ($1, $2, $3, $4)",
    )
    .bind(tenant_id)
    .bind(name)
    .bind(source)
    .bind(now_millis())
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Stores a module, replacing one of the same name.
pub async fn put_module(
    tx: &mut TenantTx,
    tenant_id: &str,
    name: &str,
    source: &str,
    upload_id: &str,
) -> Result<()> {
    delete(tx, Texts::Mibs, tenant_id, name).await?;
    sqlx::query(
        "insert into mib_modules (tenant_id, name, source, upload_id, create_time) values ($1, $2, $3, $4, $5)",
    )
    .bind(tenant_id)
    .bind(name)
    .bind(source)
    .bind(upload_id)
    .bind(now_millis())
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// The report as stored (its job is a column of its own).
fn encode(upload: &pb::MibUpload) -> String {
    let report = pb::MibUpload {
        job_id: String::new(),
        ..upload.clone()
    };
    STANDARD.encode(report.encode_to_vec())
}

/// Records an upload (new or with what became of it).
pub async fn put_upload(tx: &mut TenantTx, tenant_id: &str, upload: &pb::MibUpload) -> Result<()> {
    let now = now_millis();
    let updated = sqlx::query(
        "update mib_uploads set report = $3, update_time = $4 where tenant_id = $1 and id = $2",
    )
    .bind(tenant_id)
    .bind(&upload.id)
    .bind(encode(upload))
    .bind(now)
    .execute(tx.conn())
    .await?;
    if updated.rows_affected() == 0 {
        sqlx::query(
            "insert into mib_uploads (id, tenant_id, report, create_time, update_time) values ($1, $2, $3, $4, $4)",
        )
        .bind(&upload.id)
        .bind(tenant_id)
        .bind(encode(upload))
        .bind(now)
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

/// Keeps an upload's file until it is parsed (None: forgets it).
pub async fn put_upload_data(
    tx: &mut TenantTx,
    tenant_id: &str,
    id: &str,
    data: Option<&[u8]>,
) -> Result<()> {
    sqlx::query("update mib_uploads set data = $3 where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .bind(data)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// An upload's file, while it waits to be parsed.
pub async fn upload_data(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<Option<Vec<u8>>> {
    let row: Option<(Option<Vec<u8>>,)> =
        sqlx::query_as("select data from mib_uploads where tenant_id = $1 and id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
    Ok(row.and_then(|(data,)| data))
}

/// Records the job that parses an upload (apart from its report, which
/// the job may be writing).
pub async fn put_upload_job(
    tx: &mut TenantTx,
    tenant_id: &str,
    id: &str,
    job_id: &str,
) -> Result<()> {
    sqlx::query("update mib_uploads set job_id = $3 where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .bind(job_id)
        .execute(tx.conn())
        .await?;
    Ok(())
}

pub async fn upload(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<Option<pb::MibUpload>> {
    let row: Option<(String, String)> =
        sqlx::query_as("select report, job_id from mib_uploads where tenant_id = $1 and id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
    row.map(|(report, job_id)| {
        let bytes = STANDARD
            .decode(report)
            .map_err(|e| Error::internal("reading an upload", e))?;
        let upload = pb::MibUpload::decode(bytes.as_slice())
            .map_err(|e| Error::internal("reading an upload", e))?;
        Ok(pb::MibUpload { job_id, ..upload })
    })
    .transpose()
}
