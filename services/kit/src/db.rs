//! Storage shared by every service that owns data: one pool over SQLite (the
//! `rdm up` default) or PostgreSQL, migrations per back-end, and `TenantTx`,
//! the transaction every request runs in. On PostgreSQL it first sets
//! `app.tenant_id`, which the row-level security policies read; the queries
//! filter by tenant as well, which is all the isolation SQLite has.
use crate::error::{Error, Result};
use sqlx::{Any, AnyPool, Transaction, any::AnyPoolOptions, migrate::Migrator};
use std::{str::FromStr, sync::Once, time::Duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            anyhow::bail!("database url must start with sqlite: or postgres://")
        }
    }
}

/// A service's migrations, one set per back-end.
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

/// A service's migrations (`migrations/sqlite` and `migrations/postgres`
/// of the crate that names them), recorded in a table of their own:
/// `service_migrations!(pub static MIGRATIONS = "_usp_migrations");`
#[macro_export]
macro_rules! service_migrations {
    ($(#[$doc:meta])* $vis:vis static $name:ident = $table:literal;) => {
        $(#[$doc])*
        $vis static $name: std::sync::LazyLock<$crate::db::Migrations> =
            std::sync::LazyLock::new(|| {
                fn own(mut m: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
                    m.dangerous_set_table_name($table);
                    m
                }
                static SQLITE: std::sync::LazyLock<sqlx::migrate::Migrator> =
                    std::sync::LazyLock::new(|| own(sqlx::migrate!("./migrations/sqlite")));
                static POSTGRES: std::sync::LazyLock<sqlx::migrate::Migrator> =
                    std::sync::LazyLock::new(|| own(sqlx::migrate!("./migrations/postgres")));
                $crate::db::Migrations {
                    sqlite: &SQLITE,
                    postgres: &POSTGRES,
                }
            });
    };
}

/// What a transaction may see.
#[derive(Clone, Debug)]
pub enum Scope<'a> {
    /// One tenant's rows: every request made by a tenant's user.
    Tenant {
        tenant_id: &'a str,
        user_id: &'a str,
    },
    /// Every tenant's rows: platform administration and bootstrap only.
    Platform,
    /// The one tenant with this slug, read-only, to sign a user in.
    Login { slug: &'a str },
}

impl<'a> Scope<'a> {
    /// The rows of the caller's tenant, as its user.
    pub fn of(p: &'a crate::Principal) -> Self {
        Scope::Tenant {
            tenant_id: &p.tenant_id,
            user_id: &p.user_id,
        }
    }
}

#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// SQLite takes one writer at a time: this process's writers wait
    /// their turn here, in order, rather than in SQLite's busy handler,
    /// which sleeps up to 100 ms between tries.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The URL it was opened with (may hold a password: never shown).
    url: std::sync::Arc<str>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

impl Db {
    /// Connects the service's pool. On PostgreSQL it refuses a role that is a
    /// superuser or bypasses row-level security: such a role would make the
    /// policies decoration.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        install_drivers();
        let backend = Backend::of_url(url)?;
        let options = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10));
        let pool = match backend {
            Backend::Sqlite => {
                options
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::raw_sql(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000; \
                                 PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
                            )
                            .execute(conn)
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(&sqlite_create_url(url))
                    .await?
            }
            Backend::Postgres => options.connect(url).await?,
        };
        if backend == Backend::Postgres {
            let (name, privileged): (String, bool) = sqlx::query_as(
                "select rolname::text, (rolsuper or rolbypassrls) from pg_roles where rolname = current_user",
            )
            .fetch_one(&pool)
            .await?;
            anyhow::ensure!(
                !privileged,
                "refusing to serve as database role {name:?}: it is a superuser or bypasses \
                 row-level security; connect as the app role the migrations create (rdm_app)"
            );
        }
        Ok(Self {
            pool,
            backend,
            writer: Default::default(),
            url: url.into(),
        })
    }

    /// Applies the migrations with an owner's connection (`rdm migrate`).
    pub async fn migrate(url: &str, migrations: &Migrations) -> anyhow::Result<()> {
        install_drivers();
        let backend = Backend::of_url(url)?;
        let url = match backend {
            Backend::Sqlite => sqlite_create_url(url),
            Backend::Postgres => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        let migrator = match backend {
            Backend::Sqlite => migrations.sqlite,
            Backend::Postgres => migrations.postgres,
        };
        migrator.run(&pool).await?;
        pool.close().await;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The URL it was opened with, for a connection of another kind
    /// (PostgreSQL's LISTEN). It may hold a password: never log it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Begins a read transaction that sees only what `scope` allows.
    pub async fn begin(&self, scope: Scope<'_>) -> Result<TenantTx> {
        self.begin_as(scope, false, true).await
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock at once (BEGIN IMMEDIATE): a transaction that read first and
    /// then writes would fail outright, not wait, when another write
    /// committed in between.
    pub async fn begin_write(&self, scope: Scope<'_>) -> Result<TenantTx> {
        self.begin_as(scope, true, true).await
    }

    /// A write whose commit does not wait for the database's log to reach
    /// the disk (PostgreSQL's `synchronous_commit = off`): a crash of the
    /// database may lose the last moments of such commits, whole, never
    /// half of one. For state that is safe to lose that way (a worker's
    /// progress, which its lease recovers), not for what a caller was told
    /// is stored.
    pub async fn begin_write_unsynced(&self, scope: Scope<'_>) -> Result<TenantTx> {
        self.begin_as(scope, true, false).await
    }

    async fn begin_as(&self, scope: Scope<'_>, write: bool, synced: bool) -> Result<TenantTx> {
        let mut writer = None;
        let mut tx = match (self.backend, write) {
            (Backend::Sqlite, true) => {
                let turn = tokio::time::timeout(WRITER_WAIT, self.writer.clone().lock_owned())
                    .await
                    .map_err(|_| {
                        Error::new(
                            crate::ErrorCode::Unavailable,
                            "the database is busy with other writes: try again",
                        )
                    })?;
                writer = Some(turn);
                self.pool.begin_with("BEGIN IMMEDIATE").await?
            }
            _ => self.pool.begin().await?,
        };
        if self.backend == Backend::Postgres {
            let (tenant, user, platform, slug) = match scope {
                Scope::Tenant { tenant_id, user_id } => (tenant_id, user_id, "off", ""),
                Scope::Platform => ("", "", "on", ""),
                Scope::Login { slug } => ("", "", "off", slug),
            };
            let unsynced = if synced {
                ""
            } else {
                ", set_config('synchronous_commit', 'off', true)"
            };
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "select set_config('app.tenant_id', $1, true), set_config('app.user_id', $2, true), \
                 set_config('app.platform', $3, true), set_config('app.login_slug', $4, true){unsynced}"
            )))
            .bind(tenant)
            .bind(user)
            .bind(platform)
            .bind(slug)
            .execute(&mut *tx)
            .await?;
        }
        Ok(TenantTx {
            tx,
            backend: self.backend,
            _writer: writer,
        })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How long a SQLite write waits for its turn (SQLite's own busy timeout
/// is 5 s on top, for writers of other processes).
const WRITER_WAIT: Duration = Duration::from_secs(10);

/// SQLite urls get `mode=rwc` so a fresh data dir works.
fn sqlite_create_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

/// A transaction scoped to a tenant (or the platform). Dropping it without
/// `commit` rolls back.
pub struct TenantTx {
    tx: Transaction<'static, Any>,
    backend: Backend,
    /// A SQLite write's turn, held until the transaction ends.
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl TenantTx {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Narrows a login transaction to the tenant it found, so the user
    /// lookup that follows is subject to that tenant's policies.
    pub async fn enter_tenant(&mut self, tenant_id: &str) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("select set_config('app.tenant_id', $1, true)")
                .bind(tenant_id)
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    pub fn conn(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.map_err(Error::from)
    }
}

/// Milliseconds since the epoch, the form timestamps are stored in.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The fields an update changes: the mask's paths, or with no mask every
/// field `given` marks as set (non-empty).
pub fn mask_paths(
    mask: Option<&prost_types::FieldMask>,
    given: &[(&'static str, bool)],
) -> Vec<String> {
    match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => given
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| (*name).to_owned())
            .collect(),
    }
}

/// Opaque keyset page tokens: the last key of the page, base64url.
pub mod page {
    use super::*;
    use base64::{
        Engine, alphabet,
        engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD},
    };

    /// Reads every token OpenAPI's pattern admits (trailing bits too).
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );

    pub const DEFAULT_SIZE: i64 = 50;
    pub const MAX_SIZE: i64 = 1000;

    pub fn size(requested: i32) -> Result<i64> {
        match i64::from(requested) {
            0 => Ok(DEFAULT_SIZE),
            n if (1..=MAX_SIZE).contains(&n) => Ok(n),
            _ => Err(Error::invalid(
                "page_size",
                format!("page_size must be 0 to {MAX_SIZE}"),
            )),
        }
    }

    pub fn encode(last_key: &str) -> String {
        URL_SAFE_NO_PAD.encode(last_key)
    }

    /// The key to start after; "" for the first page.
    pub fn decode(token: &str) -> Result<String> {
        if token.is_empty() {
            return Ok(String::new());
        }
        // Any decodable token is a key to continue after: one this server
        // did not issue just starts somewhere else.
        LENIENT
            .decode(token)
            .map(|b| String::from_utf8_lossy(&b).replace('\0', ""))
            .map_err(|_| Error::invalid("page_token", "page_token is not one this server issued"))
    }

    /// Given `size + 1` rows fetched, trims to `size` and returns the token
    /// of the next page.
    pub fn finish<T>(mut rows: Vec<T>, size: i64, key: impl Fn(&T) -> &str) -> (Vec<T>, String) {
        if rows.len() as i64 <= size {
            return (rows, String::new());
        }
        rows.truncate(size as usize);
        let next = rows.last().map(|r| encode(key(r))).unwrap_or_default();
        (rows, next)
    }
}

impl FromStr for Backend {
    type Err = anyhow::Error;
    fn from_str(url: &str) -> anyhow::Result<Self> {
        Self::of_url(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(page::decode(&page::encode("0190-abc")).unwrap(), "0190-abc");
        assert_eq!(page::decode("").unwrap(), "");
        assert_eq!(page::decode("!!!").unwrap_err().field(), Some("page_token"));
        // What OpenAPI's pattern admits is read (a token not issued here just
        // starts elsewhere).
        assert!(page::decode("AB").is_ok() && page::decode("_-8").is_ok());
        let (rows, next) = page::finish(vec!["a", "b", "c"], 2, |s| s);
        assert_eq!(rows, ["a", "b"]);
        assert_eq!(page::decode(&next).unwrap(), "b");
        assert_eq!(page::finish(vec!["a"], 2, |s| s).1, "");
    }

    #[test]
    fn an_empty_mask_means_the_fields_given() {
        let given = [("name", true), ("notes", false), ("labels", true)];
        assert_eq!(mask_paths(None, &given), ["name", "labels"]);
        let mask = prost_types::FieldMask {
            paths: vec!["notes".into()],
        };
        assert_eq!(mask_paths(Some(&mask), &given), ["notes"]);
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(page::size(0).unwrap(), 50);
        assert!(page::size(1001).is_err());
        assert!(page::size(-1).is_err());
    }

    #[test]
    fn timestamps_keep_millis() {
        let t = timestamp(1_700_000_000_123);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_000_000));
    }
}
