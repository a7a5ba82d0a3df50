//! The `rdm` command's roles, as a library so tests and benchmarks start the
//! same mesh the command does: `up` (every service and the gateway in one
//! process on SQLite, or PostgreSQL when configured), `serve <service>` (one
//! service alone, the Kubernetes shape) and `migrate`.
pub mod bench;
mod demo;

use anyhow::Context;
use rdm_kit::{
    address::{AddressArgs, AddressPolicy},
    auth::{AccessTable, ActorVerifier, ApiKeys, SigningKey, TokenPolicy, Verifier},
    db::Db,
    invoke::{self, Backend},
    mesh::{self, Service},
    secrets::Keyring,
    server::{self, Guard, ServerArgs, Shutdown},
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinSet};

/// The services behind the gateway, one line each. `rdm up`, `rdm serve`,
/// the gateway's backends and health names all come from this list.
pub static SERVICES: &[&dyn Service] = &[
    &rdm_snmp::SERVICE,
    &rdm_webpa::SERVICE,
    &rdm_router_hg630::SERVICE,
    &rdm_tr069::SERVICE,
    &rdm_identity_mellophone::SERVICE,
    &rdm_catalog::SERVICE,
    &rdm_usp::SERVICE,
    &rdm_jobs::SERVICE,
];

const INVENTORY_PACKAGE: &str = "rdm.inventory.v1";
/// The inventory's port under `rdm serve` (and `RDM_INVENTORY_URL`'s default).
pub const INVENTORY_PORT: u16 = 50051;
/// The gateway's port under `rdm serve`.
pub const GATEWAY_PORT: u16 = 8080;

/// `iss` and `aud` of the tokens every role issues or accepts.
#[derive(clap::Args, Clone, Debug)]
pub struct TokenArgs {
    /// `iss` of issued and accepted tokens.
    #[arg(long, env = "RDM_JWT_ISSUER", default_value = "rdm")]
    pub jwt_issuer: String,
    /// `aud` of issued and accepted tokens.
    #[arg(long, env = "RDM_JWT_AUDIENCE", default_value = "rdm")]
    pub jwt_audience: String,
}

impl Default for TokenArgs {
    fn default() -> Self {
        Self {
            jwt_issuer: "rdm".into(),
            jwt_audience: "rdm".into(),
        }
    }
}

impl TokenArgs {
    fn policy(&self) -> TokenPolicy {
        TokenPolicy {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }
    }
}

/// Where the inventory's data lives.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct DatabaseArgs {
    /// Database of the inventory: `sqlite:PATH` or `postgres://rdm_app@HOST/DB`
    /// (a role without superuser or BYPASSRLS). `rdm up` defaults to SQLite in the data dir.
    #[arg(long, env = "RDM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// An owner's connection for migrations (PostgreSQL); without it only
    /// SQLite is migrated at start and PostgreSQL needs `rdm migrate`.
    #[arg(long, env = "RDM_DATABASE_ADMIN_URL")]
    pub database_admin_url: Option<String>,
}

impl DatabaseArgs {
    /// The inventory's database: RDM_DATABASE_URL, else (with a data dir,
    /// as `rdm up` has) SQLite in it.
    fn url(&self, data_dir: Option<&Path>) -> anyhow::Result<String> {
        match (&self.database_url, data_dir) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(dir)) => Ok(format!("sqlite:{}", dir.join("inventory.db").display())),
            (None, None) => anyhow::bail!("RDM_DATABASE_URL is required for the inventory"),
        }
    }
}

/// The keys that seal endpoint secrets.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SecretKeyArgs {
    /// Key that seals endpoint secrets (32 bytes, base64). Without it a key
    /// file is used (`rdm up` creates DATA_DIR/secret.key).
    #[arg(long, env = "RDM_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Older keys, comma-separated: they still open secrets during a rotation.
    #[arg(
        long,
        env = "RDM_SECRET_KEY_PREVIOUS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub secret_key_previous: Vec<String>,
    /// Key file (one base64 key a line, the sealing key first); re-read when it changes.
    #[arg(long, env = "RDM_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

impl SecretKeyArgs {
    /// The secret keyring: from RDM_SECRET_KEY (+ previous keys), else the
    /// key file, else (for `rdm up`) `default_file`, created when missing.
    pub fn keyring(&self, default_file: Option<&Path>) -> anyhow::Result<Keyring> {
        if let Some(key) = &self.secret_key {
            let keys: Vec<&str> = std::iter::once(key.as_str())
                .chain(self.secret_key_previous.iter().map(String::as_str))
                .collect();
            return Keyring::from_base64(&keys);
        }
        match (&self.secret_key_file, default_file) {
            (file, Some(default)) => Keyring::load_or_create(file.as_deref().unwrap_or(default)),
            (Some(file), None) => Keyring::load(file),
            (None, None) => anyhow::bail!("RDM_SECRET_KEY or RDM_SECRET_KEY_FILE is required"),
        }
    }
}

/// The inventory's settings: its database, its keys, sign-in.
#[derive(clap::Args, Clone, Debug)]
pub struct InventoryArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub secret_keys: SecretKeyArgs,
    #[command(flatten)]
    pub addresses: AddressArgs,
    /// Ed25519 PKCS#8 PEM key that signs tokens; only the inventory holds it.
    /// `rdm up` creates DATA_DIR/jwt-ed25519.pem.
    #[arg(long, env = "RDM_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,
    /// The key the protocol services sign actor tokens with (the inventory
    /// trusts its public half for target resolution). `rdm up` creates
    /// DATA_DIR/service-ed25519.pem.
    #[arg(long, env = "RDM_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
    /// Access token lifetime in seconds (short: a refresh token renews it).
    #[arg(long, env = "RDM_JWT_TTL", default_value_t = 300)]
    pub jwt_ttl: u64,
    /// How long audit events are kept, in days.
    #[arg(long, env = "RDM_AUDIT_RETENTION_DAYS", default_value_t = 365)]
    pub audit_retention_days: u64,
    /// Refresh token (sign-in session) lifetime in seconds.
    #[arg(long, env = "RDM_REFRESH_TTL", default_value_t = 7 * 24 * 3600)]
    pub refresh_ttl: u64,
    /// Password of the platform admin (tenant `system`, user `admin`) at
    /// first start; without it one is generated and printed once.
    #[arg(long, env = "RDM_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Failed logins per tenant and user before a lock-out.
    #[arg(long, env = "RDM_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: i64,
    /// Lock-out length in seconds.
    #[arg(long, env = "RDM_LOGIN_LOCKOUT_S", default_value_t = 300)]
    pub login_lockout_s: u64,
}

impl Default for InventoryArgs {
    fn default() -> Self {
        Self {
            database: DatabaseArgs::default(),
            secret_keys: SecretKeyArgs::default(),
            addresses: AddressArgs::default(),
            jwt_key_file: None,
            service_key_file: None,
            jwt_ttl: 300,
            refresh_ttl: 7 * 24 * 3600,
            audit_retention_days: 365,
            admin_password: None,
            login_max_failures: 5,
            login_lockout_s: 300,
        }
    }
}

/// How a service apart from the inventory reaches it (`rdm serve`).
#[derive(clap::Args, Clone, Debug)]
pub struct RemoteArgs {
    /// Where the inventory is: token keys (JWKS), routes, target resolution.
    #[arg(
        long,
        env = "RDM_INVENTORY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub inventory_url: String,
    #[command(flatten)]
    pub tokens: TokenArgs,
}

/// What a protocol service apart from the inventory takes (`rdm serve
/// <service>`): its own key for actor tokens, and the address policy.
#[derive(clap::Args, Clone, Debug)]
pub struct ServiceArgs {
    /// Ed25519 PKCS#8 PEM key this service signs actor tokens with; the
    /// inventory trusts its public half.
    #[arg(long, env = "RDM_SERVICE_KEY_FILE")]
    pub service_key_file: PathBuf,
    #[command(flatten)]
    pub addresses: AddressArgs,
    /// The database, for a service that keeps data of its own (its
    /// command takes [`DatabaseArgs`] then).
    #[arg(skip)]
    pub database: Option<DatabaseArgs>,
}

/// Everything `rdm up` runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub inventory: InventoryArgs,
    pub tokens: TokenArgs,
    pub server: ServerArgs,
    pub gateway: rdm_gateway::Config,
    /// The registered services' own settings ([`service_settings`]).
    pub services: clap::ArgMatches,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            inventory: InventoryArgs::default(),
            tokens: TokenArgs::default(),
            server: ServerArgs::default(),
            gateway: rdm_gateway::Config::default(),
            services: service_settings::<&str>(&[])
                .expect("no flags: every service setting has a default"),
        }
    }
}

/// Adds every registered service's own flags to `command`.
pub fn with_service_args(command: clap::Command) -> clap::Command {
    SERVICES.iter().fold(command, |c, s| s.args(c))
}

/// The services' own listeners on port 0, as flags for [`service_settings`]
/// or `rdm up`: what tests and benchmarks start with, so they never collide.
pub const EPHEMERAL_SERVICE_LISTENERS: [&str; 6] = [
    "--snmp-trap-listen",
    "127.0.0.1:0",
    "--usp-websocket-listen",
    "127.0.0.1:0",
    "--tr069-cwmp-listen",
    "127.0.0.1:0",
];

/// The registered services' settings from flags as typed on the command
/// line (`["--snmp-trap-listen", "127.0.0.1:0"]`) and `RDM_*` variables.
pub fn service_settings<S: AsRef<str>>(flags: &[S]) -> anyhow::Result<clap::ArgMatches> {
    let argv = std::iter::once("rdm").chain(flags.iter().map(AsRef::as_ref));
    Ok(with_service_args(clap::Command::new("rdm")).try_get_matches_from(argv)?)
}

/// What `rdm up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub inventory_listen: SocketAddr,
    pub demo: Demo,
    pub settings: Settings,
}

/// What the demo adds to a mesh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Demo {
    Off,
    /// The demo tenant and its user (`demo` / `demo` / `demo`).
    Tenant,
    /// The tenant, simulated devices, and the tenant's devices pointing at them.
    Devices,
}

/// A running mesh: where it listens and what it told the operator.
pub struct Mesh {
    pub gateway_addr: SocketAddr,
    /// Where the inventory's and every service's gRPC listen.
    pub inventory_addr: SocketAddr,
    /// The other listeners, by name (`snmp-traps`, `metrics`).
    pub listeners: HashMap<&'static str, SocketAddr>,
    /// What the first start created (a generated admin password).
    pub bootstrapped: rdm_inventory::Bootstrapped,
    tasks: JoinSet<anyhow::Result<()>>,
    /// `--demo`: the simulators its devices point at.
    _demo: Option<demo::Sims>,
}

impl Mesh {
    /// Runs until every server has stopped (after the shutdown signal).
    pub async fn wait(mut self) -> anyhow::Result<()> {
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        Ok(())
    }
}

/// Creates `dir` if needed, readable by its owner only (0700).
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private", dir.display()))?;
    }
    Ok(())
}

/// Makes the files in `dir` whose names start with `prefix` owner-only (0600).
fn private_files(dir: &Path, prefix: &str) -> anyhow::Result<()> {
    #[cfg(unix)]
    for entry in std::fs::read_dir(dir)? {
        use std::os::unix::fs::PermissionsExt;
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// Connects the inventory's database, migrating first where we may.
async fn inventory_db(url: &str, admin_url: Option<&str>) -> anyhow::Result<Db> {
    let migrate_with = admin_url.or(url.starts_with("sqlite:").then_some(url));
    if let Some(admin) = migrate_with {
        Db::migrate(admin, &rdm_inventory::MIGRATIONS)
            .await
            .context("migrating the inventory database")?;
    }
    Db::connect(url, 16)
        .await
        .context("connecting the inventory database")
}

/// A signing key: with a data dir (`rdm up`) created there when missing;
/// without one (`rdm serve`) it must be configured and exist, or is absent.
fn signing_key(
    configured: Option<&Path>,
    data_dir: Option<&Path>,
    name: &str,
) -> anyhow::Result<Option<SigningKey>> {
    match (configured, data_dir) {
        (file, Some(dir)) => SigningKey::load_or_create(file.unwrap_or(&dir.join(name))).map(Some),
        (Some(file), None) => SigningKey::load(file).map(Some),
        (None, None) => Ok(None),
    }
}

/// The inventory as `rdm up` (with its data dir) and `rdm serve inventory`
/// (without) run it.
struct Inventory {
    router: axum::Router,
    /// Its database, which the services that keep data share under `rdm up`.
    db: Db,
    verifier: Verifier,
    bootstrapped: rdm_inventory::Bootstrapped,
    /// Records the calls that change something, in the inventory's database.
    audit: rdm_kit::audit::Sink,
}

async fn start_inventory(
    args: &InventoryArgs,
    tokens: &TokenArgs,
    data_dir: Option<&Path>,
    demo: bool,
    addresses: AddressPolicy,
) -> anyhow::Result<Inventory> {
    let key = signing_key(args.jwt_key_file.as_deref(), data_dir, "jwt-ed25519.pem")?
        .context("RDM_JWT_KEY_FILE is required for the inventory")?;
    let verifier = Verifier::new(&[key.public_jwk().clone()], &tokens.policy())?;
    let db = inventory_db(
        &args.database.url(data_dir)?,
        args.database.database_admin_url.as_deref(),
    )
    .await?;
    let bootstrapped = rdm_inventory::bootstrap(&db, args.admin_password.as_deref(), demo).await?;
    let keyring = args
        .secret_keys
        .keyring(data_dir.map(|d| d.join("secret.key")).as_deref())?;
    let service_key = signing_key(
        args.service_key_file.as_deref(),
        data_dir,
        "service-ed25519.pem",
    )?;
    if service_key.is_none() {
        tracing::warn!("no RDM_SERVICE_KEY_FILE: internal calls (target resolution) are refused");
    }
    let audit: rdm_kit::audit::Sink = Arc::new(rdm_inventory::DbAudit(db.clone()));
    let shared_db = db.clone();
    let config = rdm_inventory::Config {
        keyring,
        db,
        signing_key: Arc::new(key),
        policy: tokens.policy(),
        token_ttl: Duration::from_secs(args.jwt_ttl),
        throttle: rdm_inventory::LoginThrottle {
            max_failures: args.login_max_failures,
            lockout: Duration::from_secs(args.login_lockout_s),
            ..Default::default()
        },
        addresses,
        refresh_ttl: Duration::from_secs(args.refresh_ttl),
        // Shared with the verifier (and, under `rdm up`, every service's
        // clone of it): a revocation takes effect in this process at once.
        revocations: verifier.revocations().clone(),
        audit_retention: Duration::from_secs(args.audit_retention_days * 24 * 3600),
    };
    let router = rdm_inventory::service(
        config,
        inventory_guard(verifier.clone(), service_key.as_ref(), audit.clone())?,
    )
    .await?;
    Ok(Inventory {
        router,
        db: shared_db,
        verifier,
        bootstrapped,
        audit,
    })
}

/// The inventory's guard: user tokens, and for its internal RPCs the actor
/// tokens of the services holding `service_key` (none: internal RPCs refused).
fn inventory_guard(
    verifier: Verifier,
    service_key: Option<&SigningKey>,
    audit: rdm_kit::audit::Sink,
) -> anyhow::Result<Guard> {
    let actors = service_key
        .map(|k| ActorVerifier::new(&[k.public_jwk().clone()]))
        .transpose()?;
    Ok(Guard {
        access: AccessTable::from_pool(rdm_proto::descriptor_pool()),
        verifier,
        actors,
        // API keys are exchanged by the gateway and the protocol services.
        api_keys: None,
        audit: Some(audit),
    })
}

/// `rdm up`: every service and the gateway in this process.
pub async fn up(opts: UpOptions, shutdown: Shutdown) -> anyhow::Result<Mesh> {
    let settings = &opts.settings;
    private_dir(&opts.data_dir)?;
    let inventory_listener = bind(opts.inventory_listen, "the services' gRPC").await?;
    let gateway_listener = bind(opts.listen, "the gateway").await?;
    let metrics = Metrics::bind(&settings.server).await?;
    let mesh_addrs = (
        gateway_listener.local_addr()?,
        inventory_listener.local_addr()?,
    );
    // No tenant may point rdm at its own ports, loopback allowed or not.
    let addresses = settings
        .inventory
        .addresses
        .policy()?
        .with_own_listeners([mesh_addrs.0, mesh_addrs.1])
        .with_own_listeners(metrics.addr());
    let Inventory {
        router: inventory,
        db: inventory_db,
        verifier,
        bootstrapped,
        audit,
    } = start_inventory(
        &settings.inventory,
        &settings.tokens,
        Some(&opts.data_dir),
        opts.demo != Demo::Off,
        addresses.clone(),
    )
    .await?;
    let inventory_backend = invoke::local(inventory.clone());
    let service_key = signing_key(
        settings.inventory.service_key_file.as_deref(),
        Some(&opts.data_dir),
        "service-ed25519.pem",
    )?
    .context("the service key is created in the data dir")?;
    let context = mesh::Context {
        inventory: inventory_backend.clone(),
        verifier: verifier.clone(),
        service_key: Arc::new(service_key),
        audit,
        addresses: addresses.clone(),
        shutdown: shutdown.clone(),
        all_in_one: true,
        database: Some(mesh::Database {
            db: inventory_db.clone(),
            migrate_url: Some(
                settings
                    .inventory
                    .database
                    .database_admin_url
                    .clone()
                    .map_or_else(|| settings.inventory.database.url(Some(&opts.data_dir)), Ok)?,
            ),
        }),
        mesh_url: Some(format!("http://{}", reachable(mesh_addrs.1))),
        own_url: None,
    };
    let mut backends = HashMap::from([(INVENTORY_PACKAGE.to_owned(), inventory_backend.clone())]);
    let mut names = server::service_names(INVENTORY_PACKAGE);
    let mut listeners = HashMap::new();
    // One gRPC port for all: each service's router has its own guard, and
    // the inventory answers what no other service claims.
    let mut services = axum::Router::new();
    for service in SERVICES {
        let started = service
            .start(&settings.services, context.clone())
            .await
            .with_context(|| format!("starting the {} service", service.name()))?;
        listeners.extend(started.listeners);
        backends.insert(
            service.package().to_owned(),
            invoke::local(started.router.clone()),
        );
        for name in server::service_names(service.package()) {
            services = services.route_service(
                &format!("/{name}/{{*method}}"),
                started.router.clone().into_service(),
            );
            names.push(name);
        }
    }
    let services = services.fallback_service(inventory);
    if let Some(addr) = metrics.start(&shutdown) {
        listeners.insert("metrics", addr);
    }
    let demo_sims = if opts.demo == Demo::Devices {
        let cwmp = listeners.get("tr069-cwmp").copied();
        Some(demo::start(inventory_backend.clone(), cwmp).await?)
    } else {
        None
    };
    // The database holds password hashes and sealed secrets: owner only
    // (SQLite gives its -wal and -shm files the database file's mode).
    private_files(&opts.data_dir, "inventory.db")?;
    let api_keys = ApiKeys::new(inventory_backend.clone());
    let routed = routed_names(&backends);
    let gateway = rdm_gateway::router(&settings.gateway, backends, verifier, api_keys)?;

    let mut tasks = JoinSet::new();
    let (args, stop) = (settings.server.clone(), shutdown.clone());
    tasks.spawn(
        async move { server::serve(inventory_listener, services, &names, &args, stop).await },
    );
    let args = settings.server.clone();
    tasks.spawn(
        async move { server::serve(gateway_listener, gateway, &routed, &args, shutdown).await },
    );
    Ok(Mesh {
        gateway_addr: mesh_addrs.0,
        inventory_addr: mesh_addrs.1,
        listeners,
        bootstrapped,
        tasks,
        _demo: demo_sims,
    })
}

/// An address to connect to a listener bound at `addr` (`0.0.0.0`: loopback).
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// The internal metrics port, when one is set: bound first, so that it is
/// one of rdm's own listeners no tenant may target.
struct Metrics(Option<TcpListener>);

impl Metrics {
    async fn bind(args: &ServerArgs) -> anyhow::Result<Self> {
        Ok(Self(match args.metrics_listen {
            Some(addr) => Some(bind(addr, "metrics").await?),
            None => None,
        }))
    }

    fn addr(&self) -> Option<SocketAddr> {
        self.0.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves `/metrics` until `shutdown`; its address.
    fn start(self, shutdown: &Shutdown) -> Option<SocketAddr> {
        let listener = self.0?;
        let addr = listener.local_addr().ok()?;
        tracing::info!(%addr, "metrics at /metrics");
        tokio::spawn(server::serve_metrics(listener, shutdown.clone()));
        Some(addr)
    }
}

/// Says where `rdm serve <role>` listens (the port may have been 0).
fn listening(role: &str, listener: &TcpListener) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(role, %addr, "serving");
    println!("rdm serve {role}: listening on {addr}");
    Ok(())
}

/// `rdm serve inventory`.
pub async fn serve_inventory(
    listen: SocketAddr,
    args: &InventoryArgs,
    tokens: &TokenArgs,
    server_args: &ServerArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = bind(listen, "the inventory").await?;
    let metrics = Metrics::bind(server_args).await?;
    let addresses = args
        .addresses
        .policy()?
        .with_own_listeners([listener.local_addr()?])
        .with_own_listeners(metrics.addr());
    let inventory = start_inventory(args, tokens, None, false, addresses).await?;
    inventory.bootstrapped.report();
    metrics.start(&shutdown);
    listening("inventory", &listener)?;
    let names = server::service_names(INVENTORY_PACKAGE);
    server::serve(listener, inventory.router, &names, server_args, shutdown).await
}

/// `rdm serve <service>` for a registered service: it reaches the inventory
/// over gRPC and verifies tokens with the inventory's published keys.
pub async fn serve_service(
    service: &dyn Service,
    listen: SocketAddr,
    remote: &RemoteArgs,
    args: &ServiceArgs,
    matches: &clap::ArgMatches,
    server_args: &ServerArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = bind(listen, "the service").await?;
    let metrics = Metrics::bind(server_args).await?;
    let service_key = Arc::new(SigningKey::load(&args.service_key_file)?);
    let addresses = args
        .addresses
        .policy()?
        .with_own_listeners([listener.local_addr()?])
        .with_own_listeners(metrics.addr());
    let inventory = invoke::remote(&remote.inventory_url)?;
    let audit = Arc::new(rdm_kit::audit::RemoteAudit {
        service: service.name(),
        inventory: inventory.clone(),
        service_key: service_key.clone(),
    });
    let context = mesh::Context {
        verifier: fetch_verifier(inventory.clone(), &remote.tokens.policy()).await?,
        inventory,
        service_key,
        audit,
        addresses,
        shutdown: shutdown.clone(),
        all_in_one: false,
        database: match args
            .database
            .as_ref()
            .and_then(|d| d.database_url.as_ref().map(|url| (d, url)))
        {
            Some((d, url)) => Some(mesh::Database {
                db: Db::connect(url, 8)
                    .await
                    .context("connecting the database")?,
                migrate_url: d
                    .database_admin_url
                    .clone()
                    .or_else(|| url.starts_with("sqlite:").then(|| url.clone())),
            }),
            None => None,
        },
        mesh_url: None,
        own_url: Some(listener.local_addr()?)
            .filter(|a| !a.ip().is_unspecified())
            .map(|a| format!("http://{a}")),
    };
    let started = service.start(matches, context).await?;
    metrics.start(&shutdown);
    for (name, addr) in &started.listeners {
        println!("rdm serve {}: {name} on {addr}", service.name());
    }
    listening(service.name(), &listener)?;
    let names = server::service_names(service.package());
    server::serve(listener, started.router, &names, server_args, shutdown).await
}

/// `rdm serve gateway`: `urls` says where each registered service is.
pub async fn serve_gateway(
    listen: SocketAddr,
    remote: &RemoteArgs,
    urls: &HashMap<&'static str, String>,
    config: &rdm_gateway::Config,
    server_args: &ServerArgs,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = bind(listen, "the gateway").await?;
    let inventory = invoke::remote(&remote.inventory_url)?;
    let verifier = fetch_verifier(inventory.clone(), &remote.tokens.policy()).await?;
    let mut backends = HashMap::from([(INVENTORY_PACKAGE.to_owned(), inventory)]);
    for service in SERVICES {
        let url = urls
            .get(service.name())
            .with_context(|| format!("no URL for the {} service", service.name()))?;
        backends.insert(service.package().to_owned(), invoke::remote(url)?);
    }
    let api_keys = ApiKeys::new(backends[INVENTORY_PACKAGE].clone());
    let routed = routed_names(&backends);
    let router = rdm_gateway::router(config, backends, verifier, api_keys)?;
    Metrics::bind(server_args).await?.start(&shutdown);
    listening("gateway", &listener)?;
    server::serve(listener, router, &routed, server_args, shutdown).await
}

/// The gRPC services the gateway routes, which its health reports on.
fn routed_names<B>(backends: &HashMap<String, B>) -> Vec<String> {
    let mut names: Vec<String> = backends
        .keys()
        .flat_map(|package| server::service_names(package))
        .collect();
    names.sort();
    names
}

/// How often a process apart from the inventory asks it for revoked sessions.
const REVOCATION_POLL: Duration = Duration::from_secs(2);

/// The token keys, from the inventory's JWKS (retried while it starts), and
/// the sessions it revokes, followed from then on.
async fn fetch_verifier(inventory: Backend, policy: &TokenPolicy) -> anyhow::Result<Verifier> {
    let verifier = fetch_keys(inventory.clone(), policy).await?;
    verifier.revocations().follow(inventory, REVOCATION_POLL);
    Ok(verifier)
}

async fn fetch_keys(inventory: Backend, policy: &TokenPolicy) -> anyhow::Result<Verifier> {
    use prost::Message;
    let path = "/rdm.inventory.v1.AuthService/GetJwks";
    let mut last = String::new();
    for attempt in 0..30u32 {
        let request = rdm_proto::inventory::GetJwksRequest {}
            .encode_to_vec()
            .into();
        match invoke::unary(inventory.clone(), path, request, Default::default()).await {
            Ok(bytes) => {
                let jwks = rdm_proto::inventory::GetJwksResponse::decode(bytes)?;
                let keys = jwks
                    .keys
                    .iter()
                    .map(|k| {
                        serde_json::from_value(serde_json::json!({
                            "kty": k.kty, "crv": k.crv, "x": k.x, "kid": k.kid, "alg": k.alg, "use": k.r#use,
                        }))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                return Verifier::new(&keys, policy);
            }
            Err(status) => last = status.message().to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10) + 1))).await;
    }
    anyhow::bail!("cannot fetch token keys from the inventory: {last}")
}

/// `rdm migrate`: applies every service's migrations with an owner's connection.
pub async fn migrate(database: &DatabaseArgs, data_dir: &Path) -> anyhow::Result<()> {
    let url = match &database.database_admin_url {
        Some(url) => url.clone(),
        None => database.url(Some(data_dir))?,
    };
    std::fs::create_dir_all(data_dir)?;
    Db::migrate(&url, &rdm_inventory::MIGRATIONS)
        .await
        .context("migrating the inventory database")?;
    println!("inventory: migrations applied");
    Db::migrate(&url, &rdm_catalog::store::MIGRATIONS)
        .await
        .context("migrating the catalog's tables")?;
    println!("catalog: migrations applied");
    Db::migrate(&url, &rdm_usp::store::MIGRATIONS)
        .await
        .context("migrating the USP service's tables")?;
    println!("usp: migrations applied");
    Db::migrate(&url, &rdm_jobs::store::MIGRATIONS)
        .await
        .context("migrating the jobs service's tables")?;
    println!("jobs: migrations applied");
    Db::migrate(&url, &rdm_tr069::store::MIGRATIONS)
        .await
        .context("migrating the TR-069 service's tables")?;
    println!("tr069: migrations applied");
    Ok(())
}

/// A key rotation in the system tenant's audit trail.
async fn audit_rotation(db: &Db, resealed: usize, key_id: &str) -> anyhow::Result<()> {
    let summary = serde_json::json!({"resealed": resealed, "key_id": key_id}).to_string();
    rdm_inventory::record_platform_event(db, "rdm rotate-secret-key", &summary)
        .await
        .map_err(|e| anyhow::anyhow!("recording the rotation in the audit trail: {}", e.message))
}

/// `rdm rotate-secret-key`: re-seals every endpoint secret under a new key.
/// With a key file (the `rdm up` way) it writes a new key first in the file
/// (running services re-read it), re-seals, and with `retire_old` drops the
/// older keys. With RDM_SECRET_KEY the operator has already made the new key
/// current (the old one in RDM_SECRET_KEY_PREVIOUS); this re-seals.
pub async fn rotate_secret_key(
    database: &DatabaseArgs,
    keys: &SecretKeyArgs,
    data_dir: &Path,
    retire_old: bool,
) -> anyhow::Result<String> {
    use rdm_kit::secrets::{generate_key, read_key_file, write_key_file};
    let db = Db::connect(&database.url(Some(data_dir))?, 2)
        .await
        .context("connecting the inventory database")?;
    if keys.secret_key.is_some() {
        let keyring = keys.keyring(None)?;
        let n = rdm_inventory::reseal_secrets(&db, &keyring).await?;
        audit_rotation(&db, n, &keyring.current_id()).await?;
        return Ok(format!(
            "re-sealed {n} secrets under key {}; once every service runs without it, drop RDM_SECRET_KEY_PREVIOUS",
            keyring.current_id()
        ));
    }
    let file = keys
        .secret_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("secret.key"));
    anyhow::ensure!(file.exists(), "no secret key file at {}", file.display());
    let old = read_key_file(&file)?;
    let new = generate_key();
    write_key_file(
        &file,
        &std::iter::once(new.clone())
            .chain(old.iter().cloned())
            .collect::<Vec<_>>(),
    )?;
    let keyring = Keyring::load(&file)?;
    let n = rdm_inventory::reseal_secrets(&db, &keyring).await?;
    audit_rotation(&db, n, &keyring.current_id()).await?;
    if retire_old {
        write_key_file(&file, &[new])?;
    }
    Ok(format!(
        "re-sealed {n} secrets under key {} in {}; {}",
        keyring.current_id(),
        file.display(),
        if retire_old {
            "older keys retired"
        } else {
            "older keys kept to open secrets until --retire-old"
        }
    ))
}
