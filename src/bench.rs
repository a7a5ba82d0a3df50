//! `rdm bench`: figures printed side by side, never asserted. Each load
//! runs a fixed time with a fixed number of concurrent callers, after a
//! warm-up, against a mesh started in this process.
use crate::{Settings, UpOptions, up};
use rdm_kit::server::Shutdown;
use rdm_proto::inventory::{GetMeRequest, auth_service_client::AuthServiceClient};
use std::{
    future::Future,
    time::{Duration, Instant},
};

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Which {
    /// A small authenticated unary RPC (GetMe) over direct gRPC and as REST
    /// through the gateway; then `rdm up` start-to-ready time and idle RSS.
    Gateway {
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Import devices with endpoints from one JSON-lines file through REST,
    /// then list them back page by page, on SQLite and on PostgreSQL
    /// (RDM_TEST_PG_URL or postgres://postgres@127.0.0.1:5432).
    Import {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
    },
}

pub async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Gateway {
            seconds,
            concurrency,
        } => gateway(Duration::from_secs(seconds), concurrency).await,
        Which::Import { devices } => import(devices).await,
    }
}

struct Load {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Load {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[i]
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>9.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} ok, {} failed)",
            self.rps(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.ok,
            self.failed
        )
    }
}

/// Runs `call` from `concurrency` tasks for `duration` (after a warm-up of
/// a fifth of it); each call says whether it succeeded.
async fn load<F, Fut>(duration: Duration, concurrency: usize, call: F) -> Load
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let warm_until = Instant::now() + duration / 5;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let call = call.clone();
        tasks.spawn(async move {
            while Instant::now() < warm_until {
                call().await;
            }
            let until = Instant::now() + duration;
            let (mut lat, mut failed) = (Vec::new(), 0);
            while Instant::now() < until {
                let t = Instant::now();
                if call().await {
                    lat.push(t.elapsed());
                } else {
                    failed += 1;
                }
            }
            (lat, failed)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(Ok((lat, f))) = tasks.join_next().await {
        latencies.extend(lat);
        failed += f;
    }
    latencies.sort();
    Load {
        ok: latencies.len(),
        failed,
        elapsed: duration,
        latencies,
    }
}

/// A demo mesh in this process, signed in as the demo admin.
struct DemoMesh {
    mesh: crate::Mesh,
    trigger: rdm_kit::server::ShutdownTrigger,
    base: String,
    token: String,
    _dir: tempfile::TempDir,
}

async fn demo_mesh(mut settings: Settings, http: &reqwest::Client) -> anyhow::Result<DemoMesh> {
    let dir = tempfile::tempdir()?;
    settings.admin_password = Some("bench-admin-password".into());
    settings.snmp_trap_listen = Some("127.0.0.1:0".parse()?);
    let (trigger, shutdown) = Shutdown::new();
    let options = UpOptions {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse()?,
        inventory_listen: "127.0.0.1:0".parse()?,
        demo: true,
        settings,
    };
    let mesh = up(options, shutdown).await?;
    let base = format!("http://{}", mesh.gateway_addr);
    let login: serde_json::Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&serde_json::json!({"tenant": "demo", "username": "demo", "password": "demo"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok(DemoMesh {
        mesh,
        trigger,
        base,
        token,
        _dir: dir,
    })
}

async fn gateway(duration: Duration, concurrency: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;
    let DemoMesh {
        mesh,
        trigger,
        base,
        token,
        _dir,
    } = demo_mesh(Settings::default(), &http).await?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse()?;

    println!(
        "rdm bench gateway: GetMe, {} s per phase, client and server in one process on {} cores",
        duration.as_secs(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.inventory_addr))?
            .tcp_nodelay(true)
            .connect()
            .await?;
    let grpc_call = move || {
        let mut client = AuthServiceClient::new(channel.clone());
        let bearer = bearer.clone();
        async move {
            let mut req = tonic::Request::new(GetMeRequest {});
            req.metadata_mut().insert("authorization", bearer);
            client.get_me(req).await.is_ok()
        }
    };
    let url = format!("{base}/v1/me");
    let rest_call = move || {
        let req = http.get(&url).bearer_auth(&token);
        async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
    };
    // Latency with one caller (nothing queues), throughput with many.
    for callers in [1, concurrency] {
        let grpc = load(duration, callers, grpc_call.clone()).await;
        let rest = load(duration, callers, rest_call.clone()).await;
        println!("-- {callers} concurrent caller(s)");
        println!("{}", grpc.line("direct gRPC (inventory)"));
        println!("{}", rest.line("REST via gateway (+JWT)"));
        println!(
            "gateway/direct: {:.0}% of the throughput (goal >= 75%), {:+.3} ms at p50 (goal < +0.5 ms)",
            100.0 * rest.rps() / grpc.rps().max(1e-9),
            (rest.percentile(0.5).as_secs_f64() - grpc.percentile(0.5).as_secs_f64()) * 1e3
        );
    }
    trigger.trigger();
    drop(mesh);

    let exe = std::env::current_exe()?;
    let data = tempfile::tempdir()?;
    for start in ["first start (new data dir)", "restart (existing data dir)"] {
        let (ready, rss) = start_to_ready(&exe, data.path()).await?;
        println!(
            "rdm up {start}: ready in {:.0} ms (goal < 1000 ms); idle RSS {:.1} MB (goal < 60 MB)",
            ready.as_secs_f64() * 1e3,
            rss as f64 / 1024.0
        );
    }
    Ok(())
}

/// Starts `rdm up` as a child, times it until the gateway answers, reads its
/// resident memory after a second of idling, and stops it with SIGTERM.
async fn start_to_ready(
    exe: &std::path::Path,
    data_dir: &std::path::Path,
) -> anyhow::Result<(Duration, u64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "up",
            "--demo",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--inventory-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RDM_ADMIN_PASSWORD", "bench-admin-password")
        .env("RDM_LOG", "warn")
        .env("RDM_SHUTDOWN_DELAY_MS", "0")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}/healthz");
    let http = reqwest::Client::new();
    let ready = loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "rdm up did not become ready in 30 s"
        );
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("rdm up exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = child.id().unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    Ok((ready, rss_kb))
}

async fn import(count: usize) -> anyhow::Result<()> {
    const SITES: [&str; 3] = ["ams", "fra", "lon"];
    use sqlx::Connection;
    let file: String = (0..count)
        .map(|i| {
            serde_json::json!({
                "name": format!("cpe-{i:06}"),
                "serial": format!("SN{i:08}"),
                "labels": {"site": SITES[i % 3], "batch": "bench"},
                "endpoints": {"snmp": {"host": "127.0.0.1", "port": 11161, "version": "2c", "community": "public"}},
            })
            .to_string()
                + "\n"
        })
        .collect();
    println!(
        "rdm bench import: {count} devices with an SNMP endpoint each, one JSON-lines file of {} KiB",
        file.len() / 1024
    );
    let server = std::env::var("RDM_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let pg_name = format!("rdm_bench_{}", std::process::id());
    for store in ["sqlite", "postgres"] {
        let mut settings = Settings::default();
        settings.gateway.body_limit = 64 << 20;
        if store == "postgres" {
            let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("create database {pg_name}")))
                .execute(&mut admin)
                .await?;
            settings.database_admin_url = Some(format!("{server}/{pg_name}"));
            settings.database_url = Some(format!(
                "{}/{pg_name}",
                server.replacen("postgres@", "rdm_app@", 1)
            ));
        }
        let http = reqwest::Client::new();
        let DemoMesh {
            mesh,
            trigger,
            base,
            token,
            _dir,
        } = demo_mesh(settings, &http).await?;

        let started = Instant::now();
        let report: serde_json::Value = http
            .post(format!("{base}/v1/devices:import"))
            .bearer_auth(&token)
            .header("content-type", "application/x-ndjson")
            .body(file.clone())
            .send()
            .await?
            .json()
            .await?;
        let imported = started.elapsed();
        anyhow::ensure!(report["imported"] == count, "import failed: {report}");

        let started = Instant::now();
        let (mut listed, mut token_next) = (0, String::new());
        loop {
            let page: serde_json::Value = http
                .get(format!(
                    "{base}/v1/devices?page_size=1000&page_token={token_next}"
                ))
                .bearer_auth(&token)
                .send()
                .await?
                .json()
                .await?;
            listed += page["devices"].as_array().map_or(0, Vec::len);
            token_next = page["next_page_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if token_next.is_empty() {
                break;
            }
        }
        let listing = started.elapsed();
        println!(
            "{store:<9} import {:>7.0} devices/s ({:.2} s, goal > 5000/s)   list back {:>7.0} devices/s ({listed} in pages of 1000)",
            count as f64 / imported.as_secs_f64(),
            imported.as_secs_f64(),
            listed as f64 / listing.as_secs_f64(),
        );
        trigger.trigger();
        mesh.wait().await?;
        if store == "postgres" {
            let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "drop database if exists {pg_name} with (force)"
            )))
            .execute(&mut admin)
            .await?;
        }
    }
    Ok(())
}
