//! The `rdm` command.
use anyhow::Context;
use clap::{Parser, Subcommand};
use rdm::{Role, Settings, UpOptions};
use rdm_kit::server::Shutdown;
use std::{net::SocketAddr, path::PathBuf};

#[derive(Parser)]
#[command(name = "rdm", version, about = "Remote device management mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every service and the gateway in one process, on SQLite by default.
    Up {
        /// Where the database and the token key live.
        #[arg(long, env = "RDM_DATA_DIR", default_value = "./rdm-data")]
        data_dir: PathBuf,
        /// The gateway's address (REST and gRPC).
        #[arg(long, env = "RDM_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// The inventory service's own gRPC address.
        #[arg(long, env = "RDM_INVENTORY_LISTEN", default_value = "127.0.0.1:50051")]
        inventory_listen: SocketAddr,
        /// Add the demo tenant (`demo` / `demo` / `demo`).
        #[arg(long)]
        demo: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// One service alone (one Deployment per service in Kubernetes).
    Serve {
        role: Role,
        #[arg(long, env = "RDM_LISTEN")]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Apply database migrations (with an owner's connection on PostgreSQL).
    Migrate {
        #[arg(long, env = "RDM_DATA_DIR", default_value = "./rdm-data")]
        data_dir: PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
    /// Re-seal every stored secret under a new key, while services run.
    RotateSecretKey {
        #[arg(long, env = "RDM_DATA_DIR", default_value = "./rdm-data")]
        data_dir: PathBuf,
        /// Drop the older keys from the key file afterwards.
        #[arg(long)]
        retire_old: bool,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print the OpenAPI document the gateway serves at /openapi.json.
    Openapi,
    /// Benchmarks that print figures (nothing is asserted).
    Bench {
        #[command(subcommand)]
        which: rdm::bench::Which,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let name = match &cli.command {
        Command::Serve { role, .. } => format!("rdm-{role:?}").to_lowercase(),
        _ => "rdm".to_owned(),
    };
    let tracer = match cli.command {
        Command::Openapi | Command::Bench { .. } => None,
        _ => rdm_kit::telemetry::init(&name),
    };
    let result = run(cli.command).await;
    if let Some(tracer) = tracer {
        let _ = tracer.shutdown();
    }
    result
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up {
            data_dir,
            listen,
            inventory_listen,
            demo,
            settings,
        } => {
            let opts = UpOptions {
                data_dir: data_dir.clone(),
                listen,
                inventory_listen,
                demo: if demo {
                    rdm::Demo::Devices
                } else {
                    rdm::Demo::Off
                },
                settings,
            };
            let mesh = rdm::up(opts, Shutdown::on_signals()).await?;
            mesh.bootstrapped.report();
            println!(
                "rdm is up: gateway http://{} (REST, gRPC, /docs), inventory gRPC {}, data in {}{}",
                mesh.gateway_addr,
                mesh.inventory_addr,
                data_dir.display(),
                if demo {
                    "; demo login: tenant demo, user demo, password demo"
                } else {
                    ""
                }
            );
            mesh.wait().await
        }
        Command::Serve {
            role,
            listen,
            settings,
        } => {
            let default = match role {
                Role::Inventory => "0.0.0.0:50051",
                Role::Snmp => "0.0.0.0:50052",
                Role::Gateway => "0.0.0.0:8080",
            };
            let listen = listen.unwrap_or_else(|| default.parse().expect("literal address parses"));
            rdm::serve(role, listen, &settings, Shutdown::on_signals()).await
        }
        Command::Migrate { data_dir, settings } => rdm::migrate(&settings, &data_dir).await,
        Command::RotateSecretKey {
            data_dir,
            retire_old,
            settings,
        } => {
            println!(
                "{}",
                rdm::rotate_secret_key(&settings, &data_dir, retire_old).await?
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
