//! The inventory's SQL, portable between SQLite and PostgreSQL. Every query
//! on a tenant table names the tenant in its WHERE clause even where
//! PostgreSQL's policies would filter anyway.
use rdm_kit::{
    Result,
    db::{TenantTx, now_millis},
};
use sqlx::FromRow;

#[derive(Clone, Debug, FromRow)]
pub struct TenantRow {
    pub id: String,
    pub slug: String,
    pub display_name: String,
    pub create_time: i64,
    pub update_time: i64,
    /// Comma-separated CIDRs inline targets may be in ("" = off).
    pub inline_cidrs: String,
    /// The tenant's own settings: an encoded `TenantSettings`, base64.
    pub settings: String,
    /// The tenant's identity provider: an encoded `IdentityProvider`,
    /// base64, tokens sealed ("" = none).
    pub identity_provider: String,
}

#[derive(Clone, FromRow)]
pub struct UserRow {
    pub id: String,
    pub tenant_id: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub roles: String,
    pub disabled: i64,
    pub create_time: i64,
    pub update_time: i64,
}

// Macros, not consts: sqlx takes only literal SQL, and concat! makes one.
macro_rules! tenant_columns {
    () => {
        "id, slug, display_name, create_time, update_time, inline_cidrs, settings, identity_provider"
    };
}
macro_rules! user_columns {
    () => {
        "id, tenant_id, username, display_name, password_hash, roles, disabled, create_time, update_time"
    };
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub async fn insert_tenant(tx: &mut TenantTx, slug: &str, display_name: &str) -> Result<TenantRow> {
    let now = now_millis();
    let row = sqlx::query_as(concat!(
        "insert into tenants (id, slug, display_name, create_time, update_time) values ($1, $2, $3, $4, $4) returning ",
        tenant_columns!()
    ))
    .bind(new_id())
    .bind(slug)
    .bind(display_name)
    .bind(now)
    .fetch_one(tx.conn())
    .await?;
    Ok(row)
}

pub async fn tenant_by_id(tx: &mut TenantTx, id: &str) -> Result<Option<TenantRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        tenant_columns!(),
        " from tenants where id = $1"
    ))
    .bind(id)
    .fetch_optional(tx.conn())
    .await?)
}

/// The tenant of a verified token: gone means the token no longer holds.
pub async fn token_tenant(tx: &mut TenantTx, tenant_id: &str) -> Result<TenantRow> {
    tenant_by_id(tx, tenant_id)
        .await?
        .ok_or_else(|| rdm_kit::Error::unauthenticated("the tenant of this token no longer exists"))
}

pub async fn tenant_by_slug(tx: &mut TenantTx, slug: &str) -> Result<Option<TenantRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        tenant_columns!(),
        " from tenants where slug = $1"
    ))
    .bind(slug)
    .fetch_optional(tx.conn())
    .await?)
}

/// Tenants ordered by slug, after `after`, at most `limit`.
pub async fn list_tenants(
    tx: &mut TenantTx,
    slug_prefix: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<TenantRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        tenant_columns!(),
        " from tenants where slug > $1 and substr(slug, 1, length($2)) = $2 \
         order by slug limit $3"
    ))
    .bind(after)
    .bind(slug_prefix)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?)
}

/// Writes back a tenant's mutable columns.
pub async fn update_tenant(tx: &mut TenantTx, tenant: &TenantRow) -> Result<Option<TenantRow>> {
    Ok(sqlx::query_as(concat!(
        "update tenants set display_name = $2, inline_cidrs = $3, settings = $4, identity_provider = $5, update_time = $6 \
         where id = $1 returning ",
        tenant_columns!()
    ))
    .bind(&tenant.id)
    .bind(&tenant.display_name)
    .bind(&tenant.inline_cidrs)
    .bind(&tenant.settings)
    .bind(&tenant.identity_provider)
    .bind(now_millis())
    .fetch_optional(tx.conn())
    .await?)
}

pub async fn delete_tenant(tx: &mut TenantTx, id: &str) -> Result<bool> {
    let done = sqlx::query("delete from tenants where id = $1")
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

pub struct NewUser<'a> {
    pub tenant_id: &'a str,
    pub username: &'a str,
    pub display_name: &'a str,
    pub password_hash: &'a str,
    pub roles: &'a str,
}

pub async fn insert_user(tx: &mut TenantTx, user: NewUser<'_>) -> Result<UserRow> {
    let now = now_millis();
    Ok(sqlx::query_as(concat!(
        "insert into users (",
        user_columns!(),
        ") values ($1, $2, $3, $4, $5, $6, 0, $7, $7) returning ",
        user_columns!()
    ))
    .bind(new_id())
    .bind(user.tenant_id)
    .bind(user.username)
    .bind(user.display_name)
    .bind(user.password_hash)
    .bind(user.roles)
    .bind(now)
    .fetch_one(tx.conn())
    .await?)
}

pub async fn user_by_id(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        user_columns!(),
        " from users where tenant_id = $1 and id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(tx.conn())
    .await?)
}

pub async fn user_by_name(
    tx: &mut TenantTx,
    tenant_id: &str,
    username: &str,
) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        user_columns!(),
        " from users where tenant_id = $1 and username = $2"
    ))
    .bind(tenant_id)
    .bind(username)
    .fetch_optional(tx.conn())
    .await?)
}

/// Users of a tenant in id (creation) order, after `after`, at most `limit`.
/// `role` filters on one role name ("" for any).
pub async fn list_users(
    tx: &mut TenantTx,
    tenant_id: &str,
    username_prefix: &str,
    role: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<UserRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        user_columns!(),
        " from users where tenant_id = $1 and id > $2 \
         and substr(username, 1, length($3)) = $3 \
         and ($4 = '' or (' ' || roles || ' ') like ('% ' || $4 || ' %')) \
         order by id limit $5"
    ))
    .bind(tenant_id)
    .bind(after)
    .bind(username_prefix)
    .bind(role)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?)
}

/// Writes back every mutable column of `user`.
pub async fn update_user(tx: &mut TenantTx, user: &UserRow) -> Result<UserRow> {
    Ok(sqlx::query_as(concat!("update users set display_name = $3, password_hash = $4, roles = $5, disabled = $6, update_time = $7 \
         where tenant_id = $1 and id = $2 returning ", user_columns!()))
    .bind(&user.tenant_id)
    .bind(&user.id)
    .bind(&user.display_name)
    .bind(&user.password_hash)
    .bind(&user.roles)
    .bind(user.disabled)
    .bind(now_millis())
    .fetch_one(tx.conn())
    .await?)
}

pub async fn delete_user(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<bool> {
    let done = sqlx::query("delete from users where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Who a token's subject is: one query for GetMe.
#[derive(Clone, Debug, FromRow)]
pub struct MeRow {
    pub username: String,
    pub roles: String,
    pub slug: String,
}

pub async fn me(tx: &mut TenantTx, tenant_id: &str, user_id: &str) -> Result<Option<MeRow>> {
    Ok(sqlx::query_as(
        "select u.username, u.roles, t.slug from users u join tenants t on t.id = u.tenant_id \
         where u.tenant_id = $1 and u.id = $2",
    )
    .bind(tenant_id)
    .bind(user_id)
    .fetch_optional(tx.conn())
    .await?)
}

#[derive(Clone, Debug, Default, FromRow)]
pub struct ThrottleRow {
    pub failures: i64,
    pub locked_until: i64,
}

/// Counts one failed login for `key`, atomically (parallel guesses each
/// count): a new window after `window_ms`, a lock-out of `lockout_ms` at
/// `max_failures`. Returns the row as it is now.
pub async fn record_failure(
    tx: &mut TenantTx,
    key: &str,
    now: i64,
    window_ms: i64,
    max_failures: i64,
    lockout_ms: i64,
) -> Result<ThrottleRow> {
    Ok(sqlx::query_as(
        "insert into login_throttle (key, failures, window_start, locked_until) \
         values ($1, 1, $2, case when 1 >= $4 then $2 + $5 else 0 end) \
         on conflict (key) do update set \
           failures = case when $2 - login_throttle.window_start > $3 then 1 else login_throttle.failures + 1 end, \
           window_start = case when $2 - login_throttle.window_start > $3 then $2 else login_throttle.window_start end, \
           locked_until = case \
             when (case when $2 - login_throttle.window_start > $3 then 1 else login_throttle.failures + 1 end) >= $4 \
             then $2 + $5 else login_throttle.locked_until end \
         returning failures, locked_until",
    )
    .bind(key)
    .bind(now)
    .bind(window_ms)
    .bind(max_failures)
    .bind(lockout_ms)
    .fetch_one(tx.conn())
    .await?)
}

/// Takes one failure back (a success that was counted as one).
pub async fn forgive_one(tx: &mut TenantTx, key: &str) -> Result<()> {
    sqlx::query(
        "update login_throttle set failures = case when failures > 0 then failures - 1 else 0 end \
         where key = $1",
    )
    .bind(key)
    .execute(tx.conn())
    .await?;
    Ok(())
}

pub async fn clear_throttle(tx: &mut TenantTx, key: &str) -> Result<()> {
    sqlx::query("delete from login_throttle where key = $1")
        .bind(key)
        .execute(tx.conn())
        .await?;
    Ok(())
}
