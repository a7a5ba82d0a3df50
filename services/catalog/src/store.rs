//! The catalog's tables: a tenant's MIB modules and its uploads. Every
//! query names the tenant, and PostgreSQL's row-level security filters
//! again. The migrations keep their own table (`_catalog_migrations`), so
//! they never mix with the inventory's in the one database.
use base64::{Engine, engine::general_purpose::STANDARD};
use prost::Message;
use rdm_kit::{
    Error, Result,
    db::{Migrations, TenantTx, now_millis},
};
use rdm_proto::catalog as pb;
use sqlx::migrate::Migrator;
use std::sync::LazyLock;

fn own_table(mut m: Migrator) -> Migrator {
    m.dangerous_set_table_name("_catalog_migrations");
    m
}

static SQLITE: LazyLock<Migrator> =
    LazyLock::new(|| own_table(sqlx::migrate!("./migrations/sqlite")));
static POSTGRES: LazyLock<Migrator> =
    LazyLock::new(|| own_table(sqlx::migrate!("./migrations/postgres")));

/// The catalog's migrations (after the inventory's: its tables refer to
/// tenants).
pub static MIGRATIONS: LazyLock<Migrations> = LazyLock::new(|| Migrations {
    sqlite: &SQLITE,
    postgres: &POSTGRES,
});

/// A tenant's module: its name and its text.
#[derive(sqlx::FromRow)]
pub struct ModuleRow {
    pub name: String,
    pub source: String,
}

/// The tenant's modules, by name.
pub async fn modules(tx: &mut TenantTx, tenant_id: &str) -> Result<Vec<ModuleRow>> {
    Ok(
        sqlx::query_as("select name, source from mib_modules where tenant_id = $1 order by name")
            .bind(tenant_id)
            .fetch_all(tx.conn())
            .await?,
    )
}

/// What a tenant's modules are now: their count and newest change.
pub type Version = (i64, i64);

/// The tenant's modules' [`Version`] (a cached set is rebuilt when it moves).
pub async fn version(tx: &mut TenantTx, tenant_id: &str) -> Result<Version> {
    Ok(sqlx::query_as(
        "select count(*), coalesce(max(create_time), 0) from mib_modules where tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_one(tx.conn())
    .await?)
}

/// Stores a module, replacing one of the same name.
pub async fn put_module(
    tx: &mut TenantTx,
    tenant_id: &str,
    name: &str,
    source: &str,
    upload_id: &str,
) -> Result<()> {
    sqlx::query("delete from mib_modules where tenant_id = $1 and name = $2")
        .bind(tenant_id)
        .bind(name)
        .execute(tx.conn())
        .await?;
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

/// The tenant has a module of this name.
pub async fn has_module(tx: &mut TenantTx, tenant_id: &str, name: &str) -> Result<bool> {
    let found: Option<(i64,)> =
        sqlx::query_as("select 1 from mib_modules where tenant_id = $1 and name = $2")
            .bind(tenant_id)
            .bind(name)
            .fetch_optional(tx.conn())
            .await?;
    Ok(found.is_some())
}

pub async fn delete_module(tx: &mut TenantTx, tenant_id: &str, name: &str) -> Result<bool> {
    let done = sqlx::query("delete from mib_modules where tenant_id = $1 and name = $2")
        .bind(tenant_id)
        .bind(name)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

fn encode(upload: &pb::MibUpload) -> String {
    STANDARD.encode(upload.encode_to_vec())
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

pub async fn upload(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<Option<pb::MibUpload>> {
    let row: Option<(String,)> =
        sqlx::query_as("select report from mib_uploads where tenant_id = $1 and id = $2")
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(tx.conn())
            .await?;
    row.map(|(report,)| {
        let bytes = STANDARD
            .decode(report)
            .map_err(|e| Error::internal("reading an upload", e))?;
        pb::MibUpload::decode(bytes.as_slice()).map_err(|e| Error::internal("reading an upload", e))
    })
    .transpose()
}
