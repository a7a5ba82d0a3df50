//! The `rdm` command's roles, as a library so tests and benchmarks start the
//! same mesh the command does: `up` (every service and the gateway in one
//! process on SQLite, or PostgreSQL when configured), `serve <service>` (one
//! service alone, the Kubernetes shape) and `migrate`.
pub mod bench;
mod demo;

use anyhow::Context;
use rdm_kit::{
    auth::{AccessTable, ActorVerifier, SigningKey, TokenPolicy, Verifier},
    db::Db,
    invoke::{self, Backend},
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

const INVENTORY_PACKAGE: &str = "rdm.inventory.v1";
const SNMP_PACKAGE: &str = "rdm.snmp.v1";

/// Settings every role reads from flags or `RDM_*` variables.
#[derive(clap::Args, Clone, Debug)]
pub struct Settings {
    /// Database of the inventory: `sqlite:PATH` or `postgres://rdm_app@HOST/DB`
    /// (a role without superuser or BYPASSRLS). `rdm up` defaults to SQLite in the data dir.
    #[arg(long, env = "RDM_DATABASE_URL")]
    pub database_url: Option<String>,
    /// An owner's connection for migrations (PostgreSQL); without it only
    /// SQLite is migrated at start and PostgreSQL needs `rdm migrate`.
    #[arg(long, env = "RDM_DATABASE_ADMIN_URL")]
    pub database_admin_url: Option<String>,
    /// Ed25519 PKCS#8 PEM key that signs tokens. `rdm up` creates one in the data dir.
    #[arg(long, env = "RDM_JWT_KEY_FILE")]
    pub jwt_key_file: Option<PathBuf>,
    /// Ed25519 key the protocol services sign actor tokens with; the
    /// inventory trusts its public half. `rdm up` creates DATA_DIR/service-ed25519.pem.
    #[arg(long, env = "RDM_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
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
    /// Key file (one base64 key a line, the sealing key first).
    #[arg(long, env = "RDM_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Access token lifetime in seconds.
    #[arg(long, env = "RDM_JWT_TTL", default_value_t = 3600)]
    pub jwt_ttl: u64,
    #[arg(long, env = "RDM_JWT_ISSUER", default_value = "rdm")]
    pub jwt_issuer: String,
    #[arg(long, env = "RDM_JWT_AUDIENCE", default_value = "rdm")]
    pub jwt_audience: String,
    /// Password of the platform admin (tenant `system`, user `admin`) at
    /// first start; without it one is generated and printed once.
    #[arg(long, env = "RDM_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Where the gateway (and other services) reach the inventory under `rdm serve`.
    #[arg(
        long,
        env = "RDM_INVENTORY_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub inventory_url: String,
    /// Where the gateway reaches the SNMP service under `rdm serve`.
    #[arg(long, env = "RDM_SNMP_URL", default_value = "http://127.0.0.1:50052")]
    pub snmp_url: String,
    /// Failed logins per user before a lock-out.
    #[arg(long, env = "RDM_LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: i64,
    /// Lock-out length in seconds.
    #[arg(long, env = "RDM_LOGIN_LOCKOUT_S", default_value_t = 300)]
    pub login_lockout_s: u64,
    /// Where the SNMP service receives traps and informs (`rdm up` default:
    /// 127.0.0.1:10162); unset under `rdm serve`: no trap listener.
    #[arg(long, env = "RDM_SNMP_TRAP_LISTEN")]
    pub snmp_trap_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub gateway: rdm_gateway::Config,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            database_url: None,
            database_admin_url: None,
            jwt_key_file: None,
            service_key_file: None,
            secret_key: None,
            secret_key_previous: Vec::new(),
            secret_key_file: None,
            jwt_ttl: 3600,
            jwt_issuer: "rdm".into(),
            jwt_audience: "rdm".into(),
            admin_password: None,
            inventory_url: "http://127.0.0.1:50051".into(),
            snmp_url: "http://127.0.0.1:50052".into(),
            login_max_failures: 5,
            login_lockout_s: 300,
            snmp_trap_listen: None,
            server: ServerArgs::default(),
            gateway: rdm_gateway::Config::default(),
        }
    }
}

impl Settings {
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

    /// The inventory's database: RDM_DATABASE_URL, else (with a data dir,
    /// as `rdm up` has) SQLite in it.
    fn inventory_url(&self, data_dir: Option<&Path>) -> anyhow::Result<String> {
        match (&self.database_url, data_dir) {
            (Some(url), _) => Ok(url.clone()),
            (None, Some(dir)) => Ok(format!("sqlite:{}", dir.join("inventory.db").display())),
            (None, None) => anyhow::bail!("RDM_DATABASE_URL is required for the inventory"),
        }
    }

    fn policy(&self) -> TokenPolicy {
        TokenPolicy {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }
    }
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
    /// Where the inventory's and the SNMP service's gRPC listen.
    pub inventory_addr: SocketAddr,
    /// Where SNMP traps and informs are received.
    pub trap_addr: Option<SocketAddr>,
    /// What the first start created (a generated admin password).
    pub bootstrapped: rdm_inventory::Bootstrapped,
    tasks: JoinSet<anyhow::Result<()>>,
    /// `--demo`: the simulated agents its devices point at.
    _demo_agents: Vec<rdm_sims::snmp_agent::SnmpAgent>,
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

fn inventory_config(
    settings: &Settings,
    db: Db,
    key: Arc<SigningKey>,
    keyring: Keyring,
) -> rdm_inventory::Config {
    rdm_inventory::Config {
        keyring,
        db,
        signing_key: key,
        policy: settings.policy(),
        token_ttl: Duration::from_secs(settings.jwt_ttl),
        throttle: rdm_inventory::LoginThrottle {
            max_failures: settings.login_max_failures,
            lockout: Duration::from_secs(settings.login_lockout_s),
            ..Default::default()
        },
    }
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
    verifier: Verifier,
    bootstrapped: rdm_inventory::Bootstrapped,
}

async fn start_inventory(
    settings: &Settings,
    data_dir: Option<&Path>,
    demo: bool,
) -> anyhow::Result<Inventory> {
    let key = signing_key(
        settings.jwt_key_file.as_deref(),
        data_dir,
        "jwt-ed25519.pem",
    )?
    .context("RDM_JWT_KEY_FILE is required for the inventory")?;
    let verifier = Verifier::new(&[key.public_jwk().clone()], &settings.policy())?;
    let db = inventory_db(
        &settings.inventory_url(data_dir)?,
        settings.database_admin_url.as_deref(),
    )
    .await?;
    let bootstrapped =
        rdm_inventory::bootstrap(&db, settings.admin_password.as_deref(), demo).await?;
    let keyring = settings.keyring(data_dir.map(|d| d.join("secret.key")).as_deref())?;
    let service_key = signing_key(
        settings.service_key_file.as_deref(),
        data_dir,
        "service-ed25519.pem",
    )?;
    if service_key.is_none() {
        tracing::warn!("no RDM_SERVICE_KEY_FILE: internal calls (target resolution) are refused");
    }
    let router = rdm_inventory::service(
        inventory_config(settings, db, Arc::new(key), keyring),
        inventory_guard(verifier.clone(), service_key.as_ref())?,
    );
    Ok(Inventory {
        router,
        verifier,
        bootstrapped,
    })
}

/// The inventory's guard: user tokens, and for its internal RPCs the actor
/// tokens of the services holding `service_key` (none: internal RPCs refused).
fn inventory_guard(verifier: Verifier, service_key: Option<&SigningKey>) -> anyhow::Result<Guard> {
    let actors = service_key
        .map(|k| ActorVerifier::new(&[k.public_jwk().clone()]))
        .transpose()?;
    Ok(Guard {
        access: AccessTable::from_pool(rdm_proto::descriptor_pool()),
        verifier,
        actors,
    })
}

/// `rdm up`: every service and the gateway in this process.
pub async fn up(opts: UpOptions, shutdown: Shutdown) -> anyhow::Result<Mesh> {
    let settings = &opts.settings;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data dir {}", opts.data_dir.display()))?;
    let Inventory {
        router: inventory,
        verifier,
        bootstrapped,
    } = start_inventory(settings, Some(&opts.data_dir), opts.demo != Demo::Off).await?;
    let inventory_backend = invoke::local(inventory.clone());
    let service_key = signing_key(
        settings.service_key_file.as_deref(),
        Some(&opts.data_dir),
        "service-ed25519.pem",
    )?
    .context("the service key is created in the data dir")?;
    let trap_listen = settings
        .snmp_trap_listen
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 10162)));
    let (snmp, trap_addr) = start_snmp(
        inventory_backend.clone(),
        service_key,
        verifier.clone(),
        Some(trap_listen),
    )
    .await?;
    let demo_agents = if opts.demo == Demo::Devices {
        demo::start(inventory_backend.clone()).await?
    } else {
        Vec::new()
    };
    let backends = HashMap::from([
        (INVENTORY_PACKAGE.to_owned(), inventory_backend),
        (SNMP_PACKAGE.to_owned(), invoke::local(snmp.clone())),
    ]);
    let gateway = rdm_gateway::router(&settings.gateway, backends, verifier)?;

    let inventory_listener = bind(opts.inventory_listen, "the services' gRPC").await?;
    let gateway_listener = bind(opts.listen, "the gateway").await?;
    let mesh_addrs = (
        gateway_listener.local_addr()?,
        inventory_listener.local_addr()?,
    );
    let mut tasks = JoinSet::new();
    let mut names = server::service_names(INVENTORY_PACKAGE);
    names.extend(server::service_names(SNMP_PACKAGE));
    // One gRPC port for both (each router has its own guard and fallback).
    let services = axum::Router::new()
        .route_service("/rdm.snmp.v1.SnmpService/{*method}", snmp.into_service())
        .fallback_service(inventory);
    let (args, stop) = (settings.server.clone(), shutdown.clone());
    tasks.spawn(
        async move { server::serve(inventory_listener, services, &names, &args, stop).await },
    );
    let args = settings.server.clone();
    tasks
        .spawn(async move { server::serve(gateway_listener, gateway, &[], &args, shutdown).await });
    Ok(Mesh {
        gateway_addr: mesh_addrs.0,
        inventory_addr: mesh_addrs.1,
        trap_addr,
        bootstrapped,
        tasks,
        _demo_agents: demo_agents,
    })
}

/// The SNMP service: it resolves targets through `inventory`, acting for
/// its callers with `service_key`.
async fn start_snmp(
    inventory: Backend,
    service_key: SigningKey,
    verifier: Verifier,
    trap_listen: Option<SocketAddr>,
) -> anyhow::Result<(axum::Router, Option<SocketAddr>)> {
    let inventory = rdm_snmp::Inventory {
        backend: inventory,
        service_key: Arc::new(service_key),
    };
    let traps = match trap_listen {
        Some(addr) => Some(
            rdm_snmp::traps::TrapHub::listen(addr, inventory.clone())
                .await
                .with_context(|| format!("cannot listen for SNMP traps on {addr}"))?,
        ),
        None => None,
    };
    let trap_addr = traps.as_ref().map(|t| t.addr);
    let config = rdm_snmp::Config {
        engine: Default::default(),
        inventory,
        traps,
    };
    let guard = Guard {
        access: AccessTable::from_pool(rdm_proto::descriptor_pool()),
        verifier,
        actors: None,
    };
    Ok((rdm_snmp::service(config, guard), trap_addr))
}

/// The services `rdm serve` can run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Inventory,
    Snmp,
    Gateway,
}

/// `rdm serve <role>`: one service alone, as one Deployment runs it.
pub async fn serve(
    role: Role,
    listen: SocketAddr,
    settings: &Settings,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = bind(listen, "the service").await?;
    tracing::info!(role = ?role, addr = %listener.local_addr()?, "serving");
    match role {
        Role::Inventory => {
            let inventory = start_inventory(settings, None, false).await?;
            inventory.bootstrapped.report();
            let router = inventory.router;
            server::serve(
                listener,
                router,
                &server::service_names(INVENTORY_PACKAGE),
                &settings.server,
                shutdown,
            )
            .await
        }
        Role::Snmp => {
            let inventory = invoke::remote(&settings.inventory_url)?;
            let verifier = remote_verifier(settings, inventory.clone()).await?;
            let key_file = settings
                .service_key_file
                .as_deref()
                .context("RDM_SERVICE_KEY_FILE is required for the SNMP service")?;
            let (router, _) = start_snmp(
                inventory,
                SigningKey::load(key_file)?,
                verifier,
                settings.snmp_trap_listen,
            )
            .await?;
            let names = server::service_names(SNMP_PACKAGE);
            server::serve(listener, router, &names, &settings.server, shutdown).await
        }
        Role::Gateway => {
            let inventory = invoke::remote(&settings.inventory_url)?;
            let verifier = remote_verifier(settings, inventory.clone()).await?;
            let backends = HashMap::from([
                (INVENTORY_PACKAGE.to_owned(), inventory),
                (SNMP_PACKAGE.to_owned(), invoke::remote(&settings.snmp_url)?),
            ]);
            let router = rdm_gateway::router(&settings.gateway, backends, verifier)?;
            server::serve(listener, router, &[], &settings.server, shutdown).await
        }
    }
}

/// The token verifier of a service apart from the inventory: from the
/// configured key file, else the inventory's JWKS.
async fn remote_verifier(settings: &Settings, inventory: Backend) -> anyhow::Result<Verifier> {
    match &settings.jwt_key_file {
        Some(file) => {
            let key = SigningKey::load(file)?;
            Ok(Verifier::new(
                &[key.public_jwk().clone()],
                &settings.policy(),
            )?)
        }
        None => fetch_verifier(inventory, &settings.policy()).await,
    }
}

/// The token keys, from the inventory's JWKS (retried while it starts).
async fn fetch_verifier(inventory: Backend, policy: &TokenPolicy) -> anyhow::Result<Verifier> {
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
pub async fn migrate(settings: &Settings, data_dir: &Path) -> anyhow::Result<()> {
    let url = match &settings.database_admin_url {
        Some(url) => url.clone(),
        None => settings.inventory_url(Some(data_dir))?,
    };
    std::fs::create_dir_all(data_dir)?;
    Db::migrate(&url, &rdm_inventory::MIGRATIONS)
        .await
        .context("migrating the inventory database")?;
    println!("inventory: migrations applied");
    Ok(())
}

/// `rdm rotate-secret-key`: re-seals every endpoint secret under a new key.
/// With a key file (the `rdm up` way) it writes a new key first in the file
/// (running services re-read it), re-seals, and with `retire_old` drops the
/// older keys. With RDM_SECRET_KEY the operator has already made the new key
/// current (the old one in RDM_SECRET_KEY_PREVIOUS); this re-seals.
pub async fn rotate_secret_key(
    settings: &Settings,
    data_dir: &Path,
    retire_old: bool,
) -> anyhow::Result<String> {
    use rdm_kit::secrets::{generate_key, read_key_file, write_key_file};
    let db = Db::connect(&settings.inventory_url(Some(data_dir))?, 2)
        .await
        .context("connecting the inventory database")?;
    if settings.secret_key.is_some() {
        let keyring = settings.keyring(None)?;
        let n = rdm_inventory::reseal_secrets(&db, &keyring).await?;
        return Ok(format!(
            "re-sealed {n} secrets under key {}; once every service runs without it, drop RDM_SECRET_KEY_PREVIOUS",
            keyring.current_id()
        ));
    }
    let file = settings
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
