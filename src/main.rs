//! The `rdm` command. Most subcommands are clap derives; `serve` is built
//! from the service registry (`rdm::SERVICES`), one subcommand per service,
//! each showing only the settings it uses.
use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use rdm::{
    DatabaseArgs, GATEWAY_PORT, INVENTORY_PORT, InventoryArgs, RemoteArgs, SERVICES, SecretKeyArgs,
    ServiceArgs, Settings, TokenArgs, UpOptions,
};
use rdm_kit::{server::ServerArgs, server::Shutdown, telemetry::TelemetryArgs};
use std::{collections::HashMap, net::SocketAddr, path::PathBuf};

const ENVIRONMENT: &str = "\
Every flag can be set by the environment variable shown with it.
Logging: RDM_LOG (filter, default info), RDM_LOG_FORMAT (json or text);
tracing: OTEL_EXPORTER_OTLP_ENDPOINT (an OTLP/gRPC collector).";

#[derive(Parser)]
#[command(name = "rdm", version, about = "Remote device management mesh", after_help = ENVIRONMENT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every service and the gateway in one process, on SQLite by default.
    Up(Box<UpArgs>),
    /// Apply database migrations (with an owner's connection on PostgreSQL).
    Migrate {
        /// Where the SQLite database lives when RDM_DATABASE_URL is not set.
        #[arg(long, env = "RDM_DATA_DIR", default_value = "./rdm-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Re-seal every stored secret under a new key, while services run.
    RotateSecretKey {
        /// Where the SQLite database and the key file live by default.
        #[arg(long, env = "RDM_DATA_DIR", default_value = "./rdm-data")]
        data_dir: PathBuf,
        /// Drop the older keys from the key file afterwards.
        #[arg(long)]
        retire_old: bool,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        keys: SecretKeyArgs,
    },
    /// Print the OpenAPI document the gateway serves at /openapi.json.
    Openapi,
    /// Benchmarks that print figures (nothing is asserted).
    Bench {
        #[command(subcommand)]
        which: rdm::bench::Which,
    },
}

/// `rdm up`.
#[derive(Args)]
struct UpArgs {
    /// Where the database and the generated keys live.
    #[arg(long, env = "RDM_DATA_DIR", default_value = "./rdm-data")]
    data_dir: PathBuf,
    /// The gateway's address (REST and gRPC).
    #[arg(long, env = "RDM_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The services' own gRPC address (inventory and every other service).
    #[arg(long, env = "RDM_INVENTORY_LISTEN", default_value = "127.0.0.1:50051")]
    inventory_listen: SocketAddr,
    /// Add the demo tenant (`demo` / `demo` / `demo`) and simulated devices.
    #[arg(long)]
    demo: bool,
    #[command(flatten)]
    inventory: InventoryArgs,
    #[command(flatten)]
    tokens: TokenArgs,
    #[command(flatten)]
    gateway: rdm_gateway::Config,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// `rdm serve inventory`.
#[derive(Args)]
struct ServeInventory {
    #[command(flatten)]
    inventory: InventoryArgs,
    #[command(flatten)]
    tokens: TokenArgs,
}

/// `rdm serve gateway` (the services' URLs are added from the registry).
#[derive(Args)]
struct ServeGateway {
    #[command(flatten)]
    remote: RemoteArgs,
    #[command(flatten)]
    gateway: rdm_gateway::Config,
}

/// What every `rdm serve` role takes.
#[derive(Args)]
struct ServeCommon {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

/// The internal metrics port's default.
const METRICS_PORT: u16 = 9464;

fn url_flag(service: &str) -> String {
    format!("{service}-url")
}

/// `rdm serve`, with a subcommand per role: the inventory, the gateway and
/// every registered service.
fn serve_command() -> clap::Command {
    let role =
        |name: &'static str, about: String, port: u16, args: fn(clap::Command) -> clap::Command| {
            let listen = clap::Arg::new("listen")
                .long("listen")
                .env("RDM_LISTEN")
                .value_parser(clap::value_parser!(SocketAddr))
                .default_value(format!("0.0.0.0:{port}"))
                .help("Address to listen on");
            // About last: each derive's doc comment would replace it.
            ServeCommon::augment_args(args(clap::Command::new(name).arg(listen)))
                .about(about)
                .after_help(ENVIRONMENT)
        };
    let mut gateway = role(
        "gateway",
        "The gateway: REST, gRPC proxy, OpenAPI".into(),
        GATEWAY_PORT,
        ServeGateway::augment_args,
    );
    for service in SERVICES {
        let name = service.name();
        gateway = gateway.arg(
            clap::Arg::new(url_flag(name))
                .long(url_flag(name))
                .env(format!("RDM_{}_URL", name.to_uppercase().replace('-', "_")))
                .default_value(format!("http://127.0.0.1:{}", service.port()))
                .help(format!("Where the gateway reaches the {name} service")),
        );
    }
    let services = SERVICES.iter().map(|s| {
        let command = role(
            s.name(),
            format!("The {} service ({})", s.name(), s.package()),
            s.port(),
            |c| ServiceArgs::augment_args(RemoteArgs::augment_args(c)),
        );
        // Only a service that keeps data takes the database's settings.
        let command = if s.uses_database() {
            DatabaseArgs::augment_args(command)
        } else {
            command
        };
        let about = command.get_about().cloned().unwrap_or_default();
        s.args(command).about(about)
    });
    clap::Command::new("serve")
        .about("One service alone (one Deployment per service in Kubernetes)")
        .subcommand_required(true)
        .subcommand(role(
            "inventory",
            "The inventory: tenants, users, sign-in, devices".into(),
            INVENTORY_PORT,
            ServeInventory::augment_args,
        ))
        .subcommand(gateway)
        .subcommands(services)
}

fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("up", rdm::with_service_args)
        .subcommand(serve_command())
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(rdm_main());
    // The servers have drained by now: do not wait on blocking work left
    // behind (database connections closing), so SIGTERM to exit stays
    // within RDM_SHUTDOWN_DELAY_MS + RDM_DRAIN_TIMEOUT_MS.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

async fn rdm_main() -> anyhow::Result<()> {
    let matches = command().get_matches();
    if let Some(("serve", serve)) = matches.subcommand() {
        let (role, m) = serve.subcommand().context("a role to serve")?;
        let common = ServeCommon::from_arg_matches(m)?;
        let tracer = rdm_kit::telemetry::init(&format!("rdm-{role}"), &common.telemetry);
        let result = run_serve(role, m, common.server).await;
        if let Some(tracer) = tracer {
            let _ = tracer.shutdown();
        }
        return result;
    }
    let command = Cli::from_arg_matches(&matches)?.command;
    let tracer = match &command {
        Command::Up(up) => rdm_kit::telemetry::init("rdm", &up.telemetry),
        _ => None,
    };
    let up_matches = matches.subcommand_matches("up").cloned();
    let result = run(command, up_matches).await;
    if let Some(tracer) = tracer {
        let _ = tracer.shutdown();
    }
    result
}

async fn run_serve(role: &str, m: &clap::ArgMatches, mut server: ServerArgs) -> anyhow::Result<()> {
    let listen = *m.get_one::<SocketAddr>("listen").context("--listen")?;
    // Prometheus scrapes each pod on its own address.
    server
        .metrics_listen
        .get_or_insert(SocketAddr::from(([0, 0, 0, 0], METRICS_PORT)));
    let shutdown = Shutdown::on_signals();
    match role {
        "inventory" => {
            let a = ServeInventory::from_arg_matches(m)?;
            rdm::serve_inventory(listen, &a.inventory, &a.tokens, &server, shutdown).await
        }
        "gateway" => {
            let a = ServeGateway::from_arg_matches(m)?;
            let urls: HashMap<&'static str, String> = SERVICES
                .iter()
                .filter_map(|s| Some((s.name(), m.get_one::<String>(&url_flag(s.name()))?.clone())))
                .collect();
            rdm::serve_gateway(listen, &a.remote, &urls, &a.gateway, &server, shutdown).await
        }
        name => {
            let service = SERVICES
                .iter()
                .find(|s| s.name() == name)
                .with_context(|| format!("no service named {name}"))?;
            let remote = RemoteArgs::from_arg_matches(m)?;
            let mut args = ServiceArgs::from_arg_matches(m)?;
            if service.uses_database() {
                args.database = Some(DatabaseArgs::from_arg_matches(m)?);
            }
            rdm::serve_service(*service, listen, &remote, &args, m, &server, shutdown).await
        }
    }
}

async fn run(command: Command, up_matches: Option<clap::ArgMatches>) -> anyhow::Result<()> {
    match command {
        Command::Up(up) => {
            let UpArgs {
                data_dir,
                listen,
                inventory_listen,
                demo,
                inventory,
                tokens,
                gateway,
                mut server,
                telemetry: _,
            } = *up;
            server
                .metrics_listen
                .get_or_insert(SocketAddr::from(([127, 0, 0, 1], METRICS_PORT)));
            let opts = UpOptions {
                data_dir: data_dir.clone(),
                listen,
                inventory_listen,
                demo: if demo {
                    rdm::Demo::Devices
                } else {
                    rdm::Demo::Off
                },
                settings: Settings {
                    inventory,
                    tokens,
                    server,
                    gateway,
                    services: up_matches.context("the up command's settings")?,
                },
            };
            let mesh = rdm::up(opts, Shutdown::on_signals()).await?;
            mesh.bootstrapped.report();
            println!(
                "rdm is up: gateway http://{} (REST, gRPC, /docs), services gRPC {}, metrics http://{}/metrics, data in {}{}",
                mesh.gateway_addr,
                mesh.inventory_addr,
                mesh.listeners
                    .get("metrics")
                    .map_or("(off)".to_owned(), ToString::to_string),
                data_dir.display(),
                if demo {
                    "; demo login: tenant demo, user demo, password demo"
                } else {
                    ""
                }
            );
            mesh.wait().await
        }
        Command::Migrate { data_dir, database } => rdm::migrate(&database, &data_dir).await,
        Command::RotateSecretKey {
            data_dir,
            retire_old,
            database,
            keys,
        } => {
            println!(
                "{}",
                rdm::rotate_secret_key(&database, &keys, &data_dir, retire_old).await?
            );
            Ok(())
        }
        Command::Openapi => {
            println!(
                "{}",
                serde_json::to_string_pretty(&rdm_gateway::openapi_document())
                    .context("encoding openapi")?
            );
            Ok(())
        }
        Command::Bench { which } => rdm::bench::run(which).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_commands(c: &clap::Command) -> Vec<clap::Command> {
        std::iter::once(c.clone())
            .chain(c.get_subcommands().flat_map(all_commands))
            .collect()
    }

    fn env_vars(c: &clap::Command) -> Vec<String> {
        c.get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }

    fn repo_file(path: &str) -> String {
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn the_command_is_well_formed_and_every_flag_says_what_it_is() {
        let root = command();
        root.clone().debug_assert();
        for c in all_commands(&root) {
            for arg in c.get_arguments() {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert!(
                    !help.trim().is_empty() || arg.get_id() == "help" || arg.get_id() == "version",
                    "`rdm {}` --{} has no description",
                    c.get_name(),
                    arg.get_id()
                );
            }
        }
    }

    #[test]
    fn each_command_shows_only_the_settings_it_uses() {
        let root = command();
        let sub = |path: &[&str]| {
            path.iter().fold(root.clone(), |c, name| {
                c.find_subcommand(name).unwrap().clone()
            })
        };
        let migrate = env_vars(&sub(&["migrate"]));
        assert_eq!(
            migrate,
            ["RDM_DATA_DIR", "RDM_DATABASE_URL", "RDM_DATABASE_ADMIN_URL"]
        );
        let snmp = env_vars(&sub(&["serve", "snmp"]));
        assert!(snmp.contains(&"RDM_SNMP_TRAP_LISTEN".to_owned()));
        for other in [
            "RDM_CORS_ORIGINS",
            "RDM_JWT_KEY_FILE",
            "RDM_DATABASE_URL",
            "RDM_ADMIN_PASSWORD",
        ] {
            assert!(
                !snmp.contains(&other.to_owned()),
                "serve snmp lists {other}"
            );
        }
        let catalog = env_vars(&sub(&["serve", "catalog"]));
        assert!(
            catalog.contains(&"RDM_DATABASE_URL".to_owned()),
            "the catalog keeps data"
        );
        let gateway = env_vars(&sub(&["serve", "gateway"]));
        assert!(gateway.contains(&"RDM_SNMP_URL".to_owned()));
        assert!(!gateway.contains(&"RDM_JWT_KEY_FILE".to_owned()));
        assert!(!gateway.contains(&"RDM_SNMP_TRAP_LISTEN".to_owned()));
    }

    /// Adding a service means its Deployment and its settings in the README:
    /// a registry line without them fails here.
    #[test]
    fn every_service_has_a_deployment_and_every_setting_a_readme_row() {
        let kustomization = repo_file("deploy/k8s/base/kustomization.yaml");
        for service in SERVICES {
            let file = format!("{}-deployment.yaml", service.name());
            assert!(
                kustomization.contains(&file),
                "deploy/k8s/base has no {file} for the {} service",
                service.name()
            );
            let deployment = repo_file(&format!("deploy/k8s/base/{file}"));
            assert!(
                deployment.contains(&format!("\"serve\", \"{}\"", service.name())),
                "{file} does not run `rdm serve {}`",
                service.name()
            );
        }
        // Only the inventory may hold the token-signing key.
        for entry in std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/base"),
        )
        .unwrap()
        {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name != "inventory-deployment.yaml" && name != "kustomization.yaml" {
                assert!(
                    !text.contains("rdm-jwt") && !text.contains("RDM_JWT_KEY_FILE"),
                    "{name} gives the token-signing key to a service other than the inventory"
                );
            }
        }
        // Every pod runs under the "restricted" Pod Security level, and only
        // the migration Job gets the database owner's URL.
        for entry in std::fs::read_dir(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/base"),
        )
        .unwrap()
        {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            if name.ends_with("-deployment.yaml") || name == "migrate-job.yaml" {
                assert!(
                    text.contains("type: RuntimeDefault"),
                    "{name}: no seccomp profile"
                );
                assert!(
                    text.contains("automountServiceAccountToken: false"),
                    "{name}: mounts an API token"
                );
            }
            if name.ends_with("-deployment.yaml") {
                assert!(
                    !text.contains("RDM_DATABASE_ADMIN_URL") && !text.contains("secretRef:"),
                    "{name} gets the owner's URL"
                );
            }
        }
        let readme = repo_file("README.md");
        let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
        for c in all_commands(&command()) {
            for var in env_vars(&c) {
                assert!(
                    table.iter().any(|row| row.contains(&format!("`{var}`"))),
                    "README's configuration table has no row for {var} (`rdm {}`)",
                    c.get_name()
                );
            }
        }
    }
}
