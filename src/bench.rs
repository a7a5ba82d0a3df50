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
        /// How long each phase runs, in seconds.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Callers at once in the second round (the first has one).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Import devices with endpoints from one JSON-lines file through REST,
    /// then list them back page by page, on SQLite and on PostgreSQL
    /// (RDM_TEST_PG_URL or postgres://postgres@127.0.0.1:5432).
    Import {
        /// How many devices to import.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
    },
    /// A full-tree bulk walk of a local agent (v2c, community public): rdm
    /// over direct gRPC, as REST through the gateway, net-snmp's
    /// `snmpbulkwalk` and pysnmp (PYSNMP_PYTHON with scripts/pysnmp_walk.py),
    /// each the median of `runs`. scripts/bench-snmp.sh sets it all up.
    Snmp {
        /// The agent to walk.
        #[arg(long, default_value = "127.0.0.1:11161")]
        agent: std::net::SocketAddr,
        /// Walks per walker; the median is printed.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// GETBULK max-repetitions of every walker.
        #[arg(long, default_value_t = 25)]
        max_repetitions: u32,
        /// Requests rdm keeps in flight to the agent (the endpoint's
        /// max_in_flight; rdm's serial walk is measured too).
        #[arg(long, default_value_t = 3)]
        max_in_flight: u32,
    },
    /// Poll of sysUpTime.0 over `agents` devices of the demo tenant: first
    /// on as many agents simulated in this process (rdm's own cost), then on
    /// as many agents, one port each on 127.0.0.1 from `first_port`
    /// (scripts/bench-snmp.sh starts them with snmpsim: community "public";
    /// v3 user "simUser", SHA/AES, context "public"), with v2c and with v3
    /// (whose first round discovers every agent's engine).
    SnmpPoll {
        /// Devices (and agents) per round.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Port of the first snmpsim agent.
        #[arg(long, default_value_t = 30000)]
        first_port: u16,
        /// Poll rounds per phase (at least 2).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// GetParameters of 5 names on a device behind the simulated XMiDT
    /// server: through the gateway (REST, device target) and the same
    /// requests sent straight to the simulator with reqwest.
    Webpa {
        /// Calls per path.
        #[arg(long, default_value_t = 10_000)]
        calls: usize,
        /// Callers at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// USP Get of 5 parameters: one round over many simulated agents on the
    /// local MQTT broker (127.0.0.1:1883) through the gateway, then one
    /// agent's latency through the gateway against a raw MQTT request and
    /// reply to the same agent (rdm's own transport, no gateway or gRPC).
    Usp {
        /// Simulated agents, one MQTT connection each.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Agents asked at once in the round.
        #[arg(long, default_value_t = 128)]
        concurrency: usize,
        /// Calls per path for the one-agent latency.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// The broker's port on 127.0.0.1.
        #[arg(long, default_value_t = 1883)]
        broker_port: u16,
    },
    /// GetParameterValues of 5 names on an online CPE of the simulated ACS
    /// (wait mode: the CPE runs the task at once): through the gateway
    /// (REST, device target), and a GenieACS client's way straight to the
    /// simulator (the task with a connection request, then the device's
    /// values read back).
    Tr069 {
        /// Calls per path.
        #[arg(long, default_value_t = 1000)]
        calls: usize,
        /// Callers at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// rdm's own ACS: simulated CPEs (tests/sims) register with it, then
    /// each runs one periodic Inform session in which it is given the
    /// GetParameterValues of 10 parameters queued for it. Sessions/s, the
    /// session time (p50, p99), and the RSS of `rdm up` (its own process)
    /// during the run.
    Cwmp {
        /// Simulated CPEs, one session each.
        #[arg(long, default_value_t = 1000)]
        cpes: usize,
        /// Sessions at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
    },
    /// GetDslInfo on a simulated HG630 router, one caller: through the
    /// gateway on the service's shared session, and the seed client's way
    /// (fetch the CSRF page, sign in, read, sign out, for every read) with
    /// rdm's own router client. First with an instant router, then with
    /// one that takes `latency_ms` a request and `login_ms` more a sign-in.
    Hg630 {
        /// Reads through the shared session.
        #[arg(long, default_value_t = 1000)]
        calls: usize,
        /// Reads the seed client's way (each signs in and out).
        #[arg(long, default_value_t = 100)]
        seed_calls: usize,
        /// The modelled router's time per request, ms.
        #[arg(long, default_value_t = 2)]
        latency_ms: u64,
        /// The modelled router's extra time per sign-in (hashing on its CPU), ms.
        #[arg(long, default_value_t = 100)]
        login_ms: u64,
    },
    /// A tenant's Mellophone server through rdm: IsAuthenticated straight to
    /// a simulated server and through the gateway, then signing in to rdm
    /// through Mellophone against a local user's sign-in (argon2).
    Mellophone {
        /// IsAuthenticated calls per round.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Callers at once in the first round (the second has one).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Sign-ins of each kind, one caller.
        #[arg(long, default_value_t = 100)]
        logins: usize,
    },
    /// The jobs service on PostgreSQL with two workers (this process and an
    /// `rdm serve jobs` child): trivial jobs from enqueue to succeeded, and
    /// the same work in Celery on the local Redis (CELERY_PYTHON with
    /// scripts/celery_bench.py; scripts/bench-jobs.sh sets it up); SNMP GET
    /// jobs against the local snmpd; the delay from enqueue to start with
    /// an idle queue.
    Jobs {
        /// Trivial jobs (GetJwks) per side.
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        /// SNMP GET jobs.
        #[arg(long, default_value_t = 2_000)]
        snmp_jobs: usize,
        /// Jobs submitted one at a time for the start delay.
        #[arg(long, default_value_t = 200)]
        latency_jobs: usize,
        /// The agent the SNMP jobs GET from (v2c, community public).
        #[arg(long, default_value = "127.0.0.1:11161")]
        agent: std::net::SocketAddr,
    },
    /// The catalog in this process: parsing and resolving the standard MIB
    /// modules, the memory they take, TranslateOids both ways, and parsing
    /// the TR-181 XML.
    Catalog {
        /// Loads of the standard set; the median is printed.
        #[arg(long, default_value_t = 9)]
        runs: usize,
        /// OIDs translated each way.
        #[arg(long, default_value_t = 10_000)]
        oids: usize,
    },
}

pub async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Gateway {
            seconds,
            concurrency,
        } => gateway(Duration::from_secs(seconds), concurrency).await,
        Which::Import { devices } => import(devices).await,
        Which::Snmp {
            agent,
            runs,
            max_repetitions,
            max_in_flight,
        } => snmp_walk(agent, runs.max(1), max_repetitions, max_in_flight).await,
        Which::SnmpPoll {
            agents,
            first_port,
            rounds,
        } => snmp_poll(agents, first_port, rounds.max(2)).await,
        Which::Webpa { calls, concurrency } => webpa(calls, concurrency.max(1)).await,
        Which::Usp {
            agents,
            concurrency,
            calls,
            broker_port,
        } => {
            usp(
                agents.max(1),
                concurrency.max(1),
                calls.max(10),
                broker_port,
            )
            .await
        }
        Which::Tr069 { calls, concurrency } => tr069(calls, concurrency.max(1)).await,
        Which::Cwmp { cpes, concurrency } => cwmp(cpes.max(1), concurrency.max(1)).await,
        Which::Hg630 {
            calls,
            seed_calls,
            latency_ms,
            login_ms,
        } => {
            hg630(
                calls.max(1),
                seed_calls.max(1),
                Duration::from_millis(latency_ms),
                Duration::from_millis(login_ms),
            )
            .await
        }
        Which::Mellophone {
            calls,
            concurrency,
            logins,
        } => mellophone(calls.max(10), concurrency.max(1), logins.max(1)).await,
        Which::Catalog { runs, oids } => catalog(runs.max(1), oids.max(1)),
        Which::Jobs {
            jobs: n,
            snmp_jobs,
            latency_jobs,
            agent,
        } => jobs(n.max(10), snmp_jobs.max(1), latency_jobs.max(2), agent).await,
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
    /// The mean latency: with every caller always waiting on one call, it
    /// is callers / throughput (Little's law).
    fn mean(&self) -> Duration {
        let total: Duration = self.latencies.iter().sum();
        total / self.latencies.len().max(1) as u32
    }
    fn line(&self, name: &str) -> String {
        format!(
            "{name:<28} {:>9.0} req/s   mean {:>7.3} ms   p50 {:>7.3} ms   p99 {:>7.3} ms   ({} ok, {} failed)",
            self.rps(),
            self.mean().as_secs_f64() * 1e3,
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

/// Makes `total` calls from `concurrency` tasks (after a warm-up of a
/// tenth as many); each call says whether it succeeded.
async fn load_calls<F, Fut>(total: usize, concurrency: usize, call: F) -> Load
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let run = |n: usize| {
        let left = Arc::new(AtomicUsize::new(n));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (call, left) = (call.clone(), left.clone());
            tasks.spawn(async move {
                let (mut lat, mut failed) = (Vec::new(), 0);
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
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
        tasks
    };
    let mut warm = run(total / 10);
    while warm.join_next().await.is_some() {}
    let started = Instant::now();
    let mut tasks = run(total);
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(Ok((lat, f))) = tasks.join_next().await {
        latencies.extend(lat);
        failed += f;
    }
    latencies.sort();
    Load {
        ok: latencies.len(),
        failed,
        elapsed: started.elapsed(),
        latencies,
    }
}

/// Sends `req` and reads the whole reply: whether it succeeded.
fn succeeds(req: reqwest::RequestBuilder) -> futures::future::BoxFuture<'static, bool> {
    Box::pin(async move {
        match req.send().await {
            Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
            _ => false,
        }
    })
}

/// A REST POST of `body` with `token`, as [`load_calls`] makes it.
fn rest_post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: serde_json::Value,
) -> impl Fn() -> futures::future::BoxFuture<'static, bool> + Clone + Send + 'static {
    let (http, token, body) = (http.clone(), token.to_owned(), body.to_string());
    move || {
        succeeds(
            http.post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body(body.clone()),
        )
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
    settings.inventory.admin_password = Some("bench-admin-password".into());
    settings.services = crate::service_settings(&crate::EPHEMERAL_SERVICE_LISTENERS)?;
    let (trigger, shutdown) = Shutdown::new();
    let options = UpOptions {
        data_dir: dir.path().to_owned(),
        listen: "127.0.0.1:0".parse()?,
        inventory_listen: "127.0.0.1:0".parse()?,
        demo: crate::Demo::Tenant,
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

/// A gRPC channel to the services' port, and `token` as an authorization value.
async fn grpc(
    mesh: &crate::Mesh,
    token: &str,
) -> anyhow::Result<(
    tonic::transport::Channel,
    tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
)> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.inventory_addr))?
            .tcp_nodelay(true)
            .connect()
            .await?;
    Ok((channel, format!("Bearer {token}").parse()?))
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

    println!(
        "rdm bench gateway: GetMe, {} s per phase, client and server in one process on {} cores",
        duration.as_secs(),
        cores()
    );
    let (channel, bearer) = grpc(&mesh, &token).await?;
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
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "gateway/direct: {:.0}% of the throughput (goal >= 75%), {:+.3} ms at p50 (goal < +0.5 ms), {:+.3} ms mean",
            100.0 * rest.rps() / grpc.rps().max(1e-9),
            ms(rest.percentile(0.5)) - ms(grpc.percentile(0.5)),
            ms(rest.mean()) - ms(grpc.mean()),
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
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(crate::EPHEMERAL_SERVICE_LISTENERS)
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
    let rss_kb = rss_kib(&pid.to_string());
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
            settings.inventory.database.database_admin_url = Some(format!("{server}/{pg_name}"));
            settings.inventory.database.database_url = Some(format!(
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
        import_devices(&http, &base, &token, file.clone(), count).await?;
        let imported = started.elapsed();

        let started = Instant::now();
        let listed = list_devices(&http, &base, &token, "").await?.len();
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

/// The median of `runs` timings of `f`, and what the last run counted.
async fn median_of<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<(Duration, usize)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let mut times = Vec::with_capacity(runs);
    let mut count = 0;
    for _ in 0..runs {
        let started = Instant::now();
        count = f().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], count))
}

/// Lines a command prints (an OID a line, for the walk tools).
async fn command_lines(program: &str, args: &[String]) -> anyhow::Result<usize> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .env("MIBDIRS", "/nonexistent")
        .env("MIBS", "")
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout.iter().filter(|b| **b == b'\n').count())
}

/// The CPU time a local process has used so far: the sum of its threads'
/// `/proc/<pid>/task/<tid>/schedstat` (nanoseconds).
fn process_cpu(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        ns += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
    }
    Some(Duration::from_nanos(ns))
}

/// The process with a UDP socket bound to `addr`'s port on this host, if
/// it runs here and this user may see its sockets.
fn local_udp_owner(addr: std::net::SocketAddr) -> Option<u32> {
    let table = std::fs::read_to_string(if addr.is_ipv6() {
        "/proc/net/udp6"
    } else {
        "/proc/net/udp"
    })
    .ok()?;
    let port = format!(":{:04X}", addr.port());
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields
            .get(1)?
            .ends_with(&port)
            .then(|| fields.get(9).map(|i| i.to_string()))?
    })?;
    let socket = format!("socket:[{inode}]");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            std::fs::read_dir(entry.path().join("fd"))
                .ok()?
                .flatten()
                .any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == socket.as_str())
                })
                .then_some(pid)
        })
}

/// A walker's median wall time over `runs`, the OIDs it saw, and the
/// agent's CPU time per walk over those runs (when the agent runs here).
struct Walked {
    wall: Duration,
    oids: usize,
    agent_cpu: Option<Duration>,
    /// This process's CPU per walk: rdm, and the gRPC or REST client.
    own_cpu: Option<Duration>,
}

async fn walked<F, Fut>(runs: usize, agent: Option<u32>, f: F) -> anyhow::Result<Walked>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<usize>>,
{
    let per_walk = |b: Option<Duration>, a: Option<Duration>| {
        b.zip(a).map(|(b, a)| a.saturating_sub(b) / runs as u32)
    };
    let own = std::process::id();
    let (agent_before, own_before) = (agent.and_then(process_cpu), process_cpu(own));
    let (wall, oids) = median_of(runs, f).await?;
    let (agent_after, own_after) = (agent.and_then(process_cpu), process_cpu(own));
    Ok(Walked {
        wall,
        oids,
        agent_cpu: per_walk(agent_before, agent_after),
        own_cpu: per_walk(own_before, own_after),
    })
}

async fn snmp_walk(
    agent: std::net::SocketAddr,
    runs: usize,
    reps: u32,
    in_flight: u32,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use rdm_proto::snmp::{WalkRequest, snmp_service_client::SnmpServiceClient, target};
    let http = reqwest::Client::new();
    let DemoMesh {
        mesh,
        trigger,
        base,
        token,
        _dir,
    } = demo_mesh(Settings::default(), &http).await?;
    let endpoint = |max_in_flight: u32| {
        serde_json::json!({"host": agent.ip().to_string(), "port": agent.port(), "version": "2c",
                           "community": "public", "timeout_ms": 2000, "max_in_flight": max_in_flight})
    };
    let (channel, bearer) = grpc(&mesh, &token).await?;
    let grpc_walk = |max_in_flight: u32| {
        let (mut client, bearer) = (SnmpServiceClient::new(channel.clone()), bearer.clone());
        let fields = rdm_proto::snmp::SnmpEndpoint {
            host: Some(agent.ip().to_string()),
            port: agent.port().into(),
            version: Some("2c".into()),
            community: Some("public".into()),
            timeout_ms: 2000,
            max_in_flight: Some(max_in_flight),
            ..Default::default()
        };
        async move {
            let mut req = tonic::Request::new(WalkRequest {
                target: Some(rdm_proto::snmp::Target {
                    target: Some(target::Target::Endpoint(fields)),
                }),
                oid: "1.3.6.1".into(),
                max_repetitions: reps,
            });
            req.metadata_mut().insert("authorization", bearer);
            let mut stream = client.walk(req).await?.into_inner();
            let mut n = 0;
            while let Some(batch) = stream.next().await {
                n += batch?.varbinds.len();
            }
            anyhow::Ok(n)
        }
    };
    let rest_walk = |max_in_flight: u32| {
        let (http, url, token) = (http.clone(), format!("{base}/v1/snmp/walk"), token.clone());
        let body = serde_json::json!({"target": {"endpoint": endpoint(max_in_flight)}, "oid": "1.3.6.1", "max_repetitions": reps});
        async move {
            let text = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            let mut n = 0;
            for line in text.lines() {
                let msg: serde_json::Value = serde_json::from_str(line)?;
                n += msg["varbinds"].as_array().map_or(0, Vec::len);
            }
            anyhow::Ok(n)
        }
    };
    let pid = local_udp_owner(agent);
    println!(
        "rdm bench snmp: full-tree walk of {agent} (v2c, max-repetitions {reps}), median of {runs} runs; \
         the agent's CPU per walk {}",
        match pid {
            Some(pid) => format!("from /proc/{pid}"),
            None => "unknown (the agent is not a process here)".into(),
        }
    );
    grpc_walk(in_flight).await?;
    let mut rows = vec![
        (
            format!("rdm, direct gRPC ({in_flight} in flight)"),
            walked(runs, pid, || grpc_walk(in_flight)).await?,
        ),
        (
            format!("rdm, REST via gateway ({in_flight})"),
            walked(runs, pid, || rest_walk(in_flight)).await?,
        ),
        (
            "rdm, direct gRPC, serial".to_owned(),
            walked(runs, pid, || grpc_walk(1)).await?,
        ),
        (
            "rdm, REST via gateway, serial".to_owned(),
            walked(runs, pid, || rest_walk(1)).await?,
        ),
    ];
    let args: Vec<String> = [
        "-v2c",
        "-c",
        "public",
        "-On",
        &format!("-Cr{reps}"),
        &agent.to_string(),
        "1.3.6.1",
    ]
    .map(String::from)
    .to_vec();
    rows.push((
        "net-snmp snmpbulkwalk (lines)".to_owned(),
        walked(runs, pid, || command_lines("snmpbulkwalk", &args)).await?,
    ));
    match std::env::var("PYSNMP_PYTHON") {
        Ok(python) => {
            let args = vec![
                "scripts/pysnmp_walk.py".into(),
                agent.ip().to_string(),
                agent.port().to_string(),
                reps.to_string(),
            ];
            rows.push((
                "pysnmp bulk_walk_cmd".to_owned(),
                walked(runs.min(3), pid, || command_lines(&python, &args)).await?,
            ));
        }
        Err(_) => println!("  pysnmp: skipped (set PYSNMP_PYTHON; scripts/bench-snmp.sh does)"),
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (name, w) in &rows {
        let agent = match w.agent_cpu {
            Some(cpu) => format!(
                "agent CPU {:>6.1} ms   wall/agent CPU {:.2}x",
                ms(cpu),
                w.wall.as_secs_f64() / cpu.as_secs_f64().max(1e-9)
            ),
            None => String::new(),
        };
        // A walk by another program: this process only waited.
        let own = match w.own_cpu {
            Some(cpu) if name.starts_with("rdm") => {
                format!("   rdm+client CPU {:>6.1} ms", ms(cpu))
            }
            _ => String::new(),
        };
        println!(
            "  {name:<34} {:>7.1} ms  {:>6} OIDs  {:>7.0} OIDs/s   {agent}{own}",
            ms(w.wall),
            w.oids,
            w.oids as f64 / w.wall.as_secs_f64()
        );
    }
    let wall = |i: usize| rows[i].1.wall.as_secs_f64();
    let bulkwalk = wall(4);
    println!(
        "  snmpbulkwalk / rdm: {:.2}x gRPC, {:.2}x REST (goal >= 1.25x); serial rdm: {:.2}x gRPC, {:.2}x REST",
        bulkwalk / wall(0),
        bulkwalk / wall(1),
        bulkwalk / wall(2),
        bulkwalk / wall(3),
    );
    trigger.trigger();
    mesh.wait().await
}

async fn snmp_poll(agents: usize, first_port: u16, rounds: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut settings = Settings::default();
    settings.gateway.body_limit = 64 << 20;
    let DemoMesh {
        mesh,
        trigger,
        base,
        token,
        _dir,
    } = demo_mesh(settings, &http).await?;
    // rdm's own cost: as many agents, simulated in this process (each
    // answers in microseconds, where snmpsim takes about a millisecond).
    let fast =
        futures::future::try_join_all(
            (0..agents).map(|i| {
                let name = format!("bench-{i}");
                async move {
                    rdm_sims::snmp_agent::start(([127, 0, 0, 1], 0).into(), &name, "here").await
                }
            }),
        )
        .await?;
    let endpoint = |version: &str, port: u16| {
        let mut e = serde_json::json!({"host": "127.0.0.1", "port": port, "version": version,
            "timeout_ms": 2000, "retries": 1});
        let fields = if version == "3" {
            serde_json::json!({"username": "simUser", "security_level": "authPriv",
                "auth_protocol": "SHA", "auth_password": "simauth123", "priv_protocol": "AES",
                "priv_password": "simpriv123", "context_name": "public"})
        } else {
            serde_json::json!({"community": "public"})
        };
        e.as_object_mut()
            .expect("an object")
            .extend(fields.as_object().expect("an object").clone());
        e
    };
    let groups = [
        ("rdm-sims agents v2c", "fast", "2c"),
        ("snmpsim v2c", "v2c", "2c"),
        ("snmpsim v3", "v3", "3"),
    ];
    let file: String = groups
        .iter()
        .flat_map(|&(_, prefix, version)| (0..agents).map(move |i| (prefix, version, i)))
        .map(|(prefix, version, i)| {
            let port = if prefix == "fast" {
                fast[i].addr.port()
            } else {
                first_port + i as u16
            };
            serde_json::json!({"name": format!("sim-{prefix}-{i:04}"),
                "endpoints": {"snmp": endpoint(version, port)}})
            .to_string()
                + "\n"
        })
        .collect();
    import_devices(&http, &base, &token, file, groups.len() * agents).await?;

    let (channel, bearer) = grpc(&mesh, &token).await?;
    println!(
        "rdm bench snmp-poll: Poll of sysUpTime.0 over {agents} devices (gRPC), {rounds} rounds each; snmpsim agents on 127.0.0.1:{first_port}.."
    );
    // snmpsim sets each agent up on its first request: the first pass is slower.
    for pass in ["first", "second"] {
        let (floor, answered) = agents_alone(agents, first_port).await?;
        println!(
            "  snmpsim agents alone, {pass} pass: {:>7.1} ms for {answered} v2c GETs sent at once from one socket",
            floor.as_secs_f64() * 1e3
        );
    }
    for (name, prefix, _) in groups {
        let ids: Vec<String> = list_devices(&http, &base, &token, &format!("sim-{prefix}-"))
            .await?
            .iter()
            .map(|d| d["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        let mut times = Vec::with_capacity(rounds);
        for n in 0..rounds {
            let (took, ok, first_error) = poll_round(&channel, &bearer, &ids).await?;
            if let Some(e) = first_error {
                println!(
                    "  {name} round {n}: {} of {agents} failed, first: {e}",
                    agents - ok
                );
            }
            times.push(took);
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let first = times.remove(0);
        times.sort();
        println!(
            "  {name:<20} first round {:>7.1} ms   median of the next {} {:>7.1} ms",
            ms(first),
            times.len(),
            ms(times[times.len() / 2])
        );
    }
    println!(
        "  goals: v2c < 1000 ms a round; v3 < 2000 ms the first round (discovery), < 1000 ms after"
    );
    trigger.trigger();
    mesh.wait().await
}

/// One Poll of sysUpTime.0 over the devices `ids`: its time, the targets
/// that answered, and the first error.
async fn poll_round(
    channel: &tonic::transport::Channel,
    bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ids: &[String],
) -> anyhow::Result<(Duration, usize, Option<String>)> {
    use futures::StreamExt;
    use rdm_proto::snmp::{
        PollRequest, Target, poll_response, snmp_service_client::SnmpServiceClient, target,
    };
    let targets = ids
        .iter()
        .map(|id| Target {
            target: Some(target::Target::DeviceId(id.clone())),
        })
        .collect();
    let mut req = tonic::Request::new(PollRequest {
        targets,
        oids: vec!["1.3.6.1.2.1.1.3.0".into()],
        concurrency: 0,
    });
    req.metadata_mut().insert("authorization", bearer.clone());
    let started = Instant::now();
    let mut stream = SnmpServiceClient::new(channel.clone())
        .poll(req)
        .await?
        .into_inner();
    let (mut ok, mut first_error) = (0, None);
    while let Some(reply) = stream.next().await {
        match reply?.result {
            Some(poll_response::Result::Values(_)) => ok += 1,
            Some(poll_response::Result::Error(e)) => {
                first_error.get_or_insert(e.message);
            }
            None => {}
        }
    }
    Ok((started.elapsed(), ok, first_error))
}

/// How fast the agents answer with no manager in the way: one v2c GET of
/// sysUpTime.0 to each, all sent at once from one socket; replies counted.
async fn agents_alone(agents: usize, first_port: u16) -> anyhow::Result<(Duration, usize)> {
    use rdm_snmp::engine::{ber, nulls};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut pdu = Vec::new();
    let oid = "1.3.6.1.2.1.1.3.0".parse().expect("an OID");
    const GET_REQUEST: u8 = 0xa0; // [0] IMPLICIT, RFC 3416
    ber::pdu(&mut pdu, GET_REQUEST, 1, 0, 0, &nulls(&[oid]));
    let message = ber::community_message(1, b"public", &pdu);
    let started = Instant::now();
    for i in 0..agents {
        let port = usize::from(first_port) + i;
        socket.send_to(&message, ("127.0.0.1", port as u16)).await?;
    }
    let (mut answered, mut buf) = (0, vec![0u8; 4096]);
    while answered < agents {
        match tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await {
            Ok(Ok(_)) => answered += 1,
            _ => break,
        }
    }
    Ok((started.elapsed(), answered))
}

/// Every device whose name starts with `prefix`, page by page (1,000 a page).
async fn list_devices(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    prefix: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let (mut devices, mut page_token) = (Vec::new(), String::new());
    loop {
        let mut page: serde_json::Value = http
            .get(format!("{base}/v1/devices"))
            .query(&[
                ("page_size", "1000"),
                ("name_prefix", prefix),
                ("page_token", &page_token),
            ])
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        if let Some(more) = page["devices"].as_array_mut() {
            devices.append(more);
        }
        page_token = page["next_page_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if page_token.is_empty() {
            return Ok(devices);
        }
    }
}

/// Posts a JSON-lines file to `/v1/devices:import`; all `count` rows must go in.
async fn import_devices(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    file: String,
    count: usize,
) -> anyhow::Result<()> {
    let report: serde_json::Value = http
        .post(format!("{base}/v1/devices:import"))
        .bearer_auth(token)
        .header("content-type", "application/x-ndjson")
        .body(file)
        .send()
        .await?
        .json()
        .await?;
    anyhow::ensure!(report["imported"] == count, "import failed: {report}");
    Ok(())
}

async fn webpa(calls: usize, concurrency: usize) -> anyhow::Result<()> {
    use rdm_sims::webpa::{self, Credentials};
    use serde_json::json;
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
    let xmidt = Credentials::default();
    let gw = "mac:112233445566";
    let sim = webpa::start(
        ([127, 0, 0, 1], 0).into(),
        xmidt.clone(),
        &[(gw, "SN-1", "bench gateway")],
    )
    .await?;
    let endpoint = json!({"base_url": sim.base_url(), "device_id": gw,
        "auth": {"type": "basic", "username": xmidt.basic.0, "password": xmidt.basic.1}});
    let id = device_with(&http, &base, &token, "bench-webpa", "webpa", endpoint).await?;
    let names = FIVE_NAMES;
    println!(
        "rdm bench webpa: {calls} GetParameters of {} names, {concurrency} callers, client, mesh and simulator in one process on {} cores",
        names.len(),
        cores()
    );
    let direct_url = format!("{}/api/v3/device/{gw}/config", sim.base_url());
    let query = names.join(",");
    let (user, password) = xmidt.basic.clone();
    let direct_http = http.clone();
    let direct_call = move || {
        succeeds(
            direct_http
                .get(&direct_url)
                .query(&[("names", &query)])
                .basic_auth(&user, Some(&password)),
        )
    };
    let rest_call = rest_post(
        &http,
        format!("{base}/v1/webpa/get"),
        &token,
        json!({"target": {"device_id": id}, "names": names}),
    );
    gateway_vs_direct(calls, concurrency, direct_call, rest_call).await;
    trigger.trigger();
    drop(mesh);
    Ok(())
}

/// The same calls straight to a simulator and through the gateway, as
/// asked (many callers), then with one caller: the latency rdm adds when
/// nothing queues.
async fn gateway_vs_direct<D, DF, R, RF>(
    calls: usize,
    concurrency: usize,
    direct_call: D,
    rest_call: R,
) where
    D: Fn() -> DF + Clone + Send + 'static,
    DF: Future<Output = bool> + Send,
    R: Fn() -> RF + Clone + Send + 'static,
    RF: Future<Output = bool> + Send,
{
    for (calls, callers) in [(calls, concurrency), (calls / 10, 1)] {
        let direct = load_calls(calls, callers, direct_call.clone()).await;
        let rest = load_calls(calls, callers, rest_call.clone()).await;
        println!("-- {calls} calls, {callers} concurrent caller(s)");
        println!("{}", direct.line("direct to the simulator"));
        println!("{}", rest.line("REST via gateway (+JWT)"));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "gateway/direct: {:.0}% of the throughput (goal >= 70%), {:+.3} ms at p50",
            100.0 * rest.rps() / direct.rps().max(1e-9),
            ms(rest.percentile(0.5)) - ms(direct.percentile(0.5)),
        );
    }
}

/// A process's resident memory in KiB (`self` for this one), 0 when unknown.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The cores this machine has, as the benchmarks' headers say.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The five TR-181 names the WebPA and TR-069 benchmarks read.
const FIVE_NAMES: [&str; 5] = [
    "Device.DeviceInfo.SerialNumber",
    "Device.DeviceInfo.SoftwareVersion",
    "Device.DeviceInfo.UpTime",
    "Device.WiFi.SSID.1.SSID",
    "Device.WiFi.SSID.1.Enable",
];

async fn usp(agents: usize, concurrency: usize, calls: usize, port: u16) -> anyhow::Result<()> {
    use rdm_sims::usp_agent;
    use rdm_usp::{mqtt, record};
    use serde_json::json;
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
    let params = [
        "Device.DeviceInfo.Manufacturer",
        "Device.DeviceInfo.ModelName",
        "Device.DeviceInfo.SerialNumber",
        "Device.DeviceInfo.SoftwareVersion",
        "Device.DeviceInfo.ProvisioningCode",
    ];
    println!(
        "rdm bench usp: Get of {} parameters; {agents} simulated agents on the MQTT broker at 127.0.0.1:{port}, client, mesh and agents in one process on {} cores",
        params.len(),
        cores()
    );
    let run = uuid::Uuid::new_v4().simple().to_string();
    let started = Instant::now();
    let mut sims = Vec::with_capacity(agents);
    let mut ids = Vec::with_capacity(agents);
    for i in 0..agents {
        let endpoint_id = format!("os::012345-BENCH{i:07}");
        let topic = format!("usp/bench/{}/{i}", &run[..8]);
        let notify_to = format!("usp/bench/{}/controller", &run[..8]);
        let agent = usp_agent::start(
            "127.0.0.1",
            port,
            &endpoint_id,
            &topic,
            &notify_to,
            "self::rdm",
        )
        .await?;
        let endpoint = json!({"transport": "mqtt", "endpoint_id": endpoint_id, "timeout_ms": 10000,
            "mqtt": {"broker_url": format!("mqtt://127.0.0.1:{port}"), "agent_topic": topic}});
        ids.push(
            device_with(
                &http,
                &base,
                &token,
                &format!("bench-usp-{i}"),
                "usp",
                endpoint,
            )
            .await?,
        );
        sims.push(agent);
    }
    println!(
        "set-up: {agents} agents connected and their devices added in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let get = |id: &str| {
        rest_post(
            &http,
            format!("{base}/v1/usp/get"),
            &token,
            json!({"target": {"device_id": id}, "paths": params}),
        )
    };
    // The first request to the broker opens rdm's connection; any agent
    // that does not answer is named before the rounds.
    for id in &ids {
        let reply = http
            .post(format!("{base}/v1/usp/get"))
            .bearer_auth(&token)
            .json(&json!({"target": {"device_id": id}, "paths": params}))
            .send()
            .await?;
        if !reply.status().is_success() {
            let status = reply.status();
            anyhow::bail!("device {id}: {status} {}", reply.text().await?);
        }
    }
    for round in 1..=3 {
        // Each call the next agent (the warm-up's tenth included).
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = Instant::now();
        let load = load_calls(agents, concurrency, {
            let (ids, http, base, token) = (ids.clone(), http.clone(), base.clone(), token.clone());
            move || {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let id = ids[i % ids.len()].clone();
                rest_post(
                    &http,
                    format!("{base}/v1/usp/get"),
                    &token,
                    json!({"target": {"device_id": id}, "paths": params}),
                )()
            }
        })
        .await;
        println!(
            "round {round}: {} Gets over the agents (a tenth more to warm up), {concurrency} at a time: {:.0} ms wall with the warm-up (goal < 1000 ms for all), {} ok, {} failed, p50 {:.2} ms, p99 {:.2} ms",
            agents,
            t.elapsed().as_secs_f64() * 1e3,
            load.ok,
            load.failed,
            load.percentile(0.5).as_secs_f64() * 1e3,
            load.percentile(0.99).as_secs_f64() * 1e3,
        );
    }
    // One agent, one caller: rdm's own MQTT round trip against the gateway.
    let agent = &sims[0];
    let broker = std::sync::Arc::new(mqtt::Broker::connect(
        mqtt::BrokerSettings {
            host: "127.0.0.1".into(),
            port,
            client_id: String::new(),
            username: None,
            password: None,
            endpoint_id: "self::bench".into(),
            topic: format!("usp/bench/{}/controller", &run[..8]),
            notify_topic: String::new(),
            tls: None,
            own: false,
        },
        std::sync::Arc::new(rdm_usp::inbox::Inbox::new(
            "self::bench".into(),
            tokio::sync::mpsc::channel(16).0,
        )),
    ));
    let raw = {
        let (broker, id, topic) = (
            broker.clone(),
            agent.endpoint_id.clone(),
            agent.topic.clone(),
        );
        move || {
            let (broker, id, topic) = (broker.clone(), id.clone(), topic.clone());
            async move {
                use rdm_proto::usp_msg as msg;
                let request = record::request(
                    &broker.inbox().msg_id(),
                    msg::header::MsgType::Get,
                    msg::request::ReqType::Get(msg::Get {
                        param_paths: params.iter().map(|p| (*p).to_owned()).collect(),
                        max_depth: 0,
                    }),
                );
                broker
                    .request(&id, &topic, false, request, Duration::from_secs(10))
                    .await
                    .is_ok()
            }
        }
    };
    let direct = load_calls(calls, 1, raw).await;
    let rest = load_calls(calls, 1, get(&ids[0])).await;
    println!("-- {calls} calls, 1 caller, one agent");
    println!("{}", direct.line("raw MQTT request/reply"));
    println!("{}", rest.line("REST via gateway (+JWT)"));
    println!(
        "rdm adds {:+.3} ms at p50 (goal < 1 ms), {:+.3} ms at p99",
        (rest.percentile(0.5).as_secs_f64() - direct.percentile(0.5).as_secs_f64()) * 1e3,
        (rest.percentile(0.99).as_secs_f64() - direct.percentile(0.99).as_secs_f64()) * 1e3,
    );
    if direct.percentile(0.5) > Duration::from_millis(20) {
        println!(
            "note: about 40 ms a message is Nagle's algorithm at the broker: give Mosquitto `set_tcp_nodelay true` (rdm and the simulated agents set TCP_NODELAY on their side)"
        );
    }
    drop(sims);
    trigger.trigger();
    drop(mesh);
    Ok(())
}

/// A device of the demo tenant with `endpoint` as its `protocol` endpoint.
async fn device_with(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    name: &str,
    protocol: &str,
    endpoint: serde_json::Value,
) -> anyhow::Result<String> {
    let device: serde_json::Value = http
        .post(format!("{base}/v1/devices"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": name}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = device["id"].as_str().unwrap_or_default().to_owned();
    http.put(format!("{base}/v1/devices/{id}/endpoints/{protocol}"))
        .bearer_auth(token)
        .json(&endpoint)
        .send()
        .await?
        .error_for_status()?;
    Ok(id)
}

/// `rdm up --demo` as a process of its own, its CWMP listener on `cwmp`;
/// its gateway's URL once it answers.
async fn up_process(
    exe: &std::path::Path,
    data_dir: &std::path::Path,
    cwmp: std::net::SocketAddr,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = tokio::process::Command::new(exe)
        .args(["up", "--demo", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--inventory-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--snmp-trap-listen",
            "127.0.0.1:0",
            "--usp-websocket-listen",
            "127.0.0.1:0",
        ])
        .args(["--tr069-cwmp-listen", &cwmp.to_string(), "--data-dir"])
        .arg(data_dir)
        .arg("--tr069-files-dir")
        .arg(data_dir.join("tr069-files"))
        .env("RDM_ADMIN_PASSWORD", "bench-admin-password")
        .env("RDM_LOG", "warn")
        .env("RDM_SHUTDOWN_DELAY_MS", "0")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "rdm up did not become ready in 60 s"
        );
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("rdm up exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((child, base))
}

async fn cwmp(cpes: usize, concurrency: usize) -> anyhow::Result<()> {
    use futures::StreamExt;
    use rdm_sims::cwmp_cpe::{Cpe, CpeConfig};
    use serde_json::{Value, json};
    let dir = tempfile::tempdir()?;
    let cwmp_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (mut child, base) = up_process(&std::env::current_exe()?, dir.path(), cwmp_addr).await?;
    let pid = child.id().unwrap_or_default().to_string();
    let http = reqwest::Client::new();
    let token = {
        let login: Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({"tenant": "demo", "username": "demo", "password": "demo"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        login["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let (user, password) = ("bench-cpe", "bench-cpe-password");
    http.put(format!("{base}/v1/settings"))
        .bearer_auth(&token)
        .json(
            &json!({"tr069": {"cwmp_username": user, "cwmp_password": password,
            "cwmp_auto_register_label": "bench=cwmp"}}),
        )
        .send()
        .await?
        .error_for_status()?;
    let names: Vec<String> = (1..=10)
        .map(|i| format!("Device.X_SIM_Stats.Counter{i}"))
        .collect();
    println!(
        "rdm bench cwmp: {cpes} simulated CPEs, one Inform session each with a GetParameterValues of {} parameters queued for it, {concurrency} sessions at once; rdm up --demo (SQLite) in its own process, the CPEs in this one, on {} cores",
        names.len(),
        cores()
    );
    // The fleet registers itself (Digest, auto-registration, bootstrap).
    let url = format!("http://{cwmp_addr}/cwmp/demo");
    let mut fleet = Vec::with_capacity(cpes);
    for i in 0..cpes {
        let config = CpeConfig::new(&url, &format!("BENCH{i:06}"), user, password);
        fleet.push(Cpe::start(config).await?);
    }
    let sessions = |event: &'static str| {
        let fleet = fleet.clone();
        async move {
            let started = Instant::now();
            let results = futures::stream::iter(fleet)
                .map(|cpe| async move {
                    let t = Instant::now();
                    cpe.inform(event).await.map(|()| t.elapsed())
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
            let failed = results.iter().filter(|r| r.is_err()).count();
            let mut latencies: Vec<Duration> = results.into_iter().flatten().collect();
            latencies.sort();
            Load {
                ok: latencies.len(),
                failed,
                elapsed: started.elapsed(),
                latencies,
            }
        }
    };
    let bootstrap = sessions("").await;
    println!("{}", bootstrap.line("bootstrap sessions"));
    // One GetParameterValues of 10 parameters queued for every CPE.
    let mut ids = Vec::with_capacity(cpes);
    let mut page = String::new();
    loop {
        let got: Value = http
            .get(format!(
                "{base}/v1/devices?label_selector=bench%3Dcwmp&page_size=1000&page_token={page}"
            ))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        for d in got["devices"].as_array().into_iter().flatten() {
            ids.push(d["id"].as_str().unwrap_or_default().to_owned());
        }
        match got["next_page_token"].as_str() {
            Some(next) if !next.is_empty() => page = next.to_owned(),
            _ => break,
        }
    }
    anyhow::ensure!(ids.len() == cpes, "{} of {cpes} CPEs registered", ids.len());
    futures::stream::iter(ids)
        .map(|id| {
            let (http, token, base) = (http.clone(), token.clone(), base.clone());
            let body = json!({"target": {"device_id": id}, "names": names, "mode": "queue"});
            async move {
                http.post(format!("{base}/v1/tr069/get-parameter-values"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?
                    .error_for_status()
                    .map(|_| ())
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<()>, _>>()?;
    // The measured run, the service's RSS sampled meanwhile.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_kib(&pid)));
    let sampler = {
        let (peak, pid) = (peak.clone(), pid.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(&pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let periodic = sessions("2 PERIODIC").await;
    sampler.abort();
    let ran = fleet
        .iter()
        .filter(|c| c.rpcs().iter().any(|r| r == "GetParameterValues"))
        .count();
    println!("{}", periodic.line("sessions with one GPV"));
    println!(
        "  {ran} of {cpes} CPEs were given their GetParameterValues; rdm up's RSS: peak {:.0} MiB during the run",
        peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    );
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
    Ok(())
}

async fn tr069(calls: usize, concurrency: usize) -> anyhow::Result<()> {
    use rdm_sims::acs::{self, CpeSpec, Model};
    use serde_json::json;
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
    let cpe = CpeSpec::new("BM632w", "BENCH0001", Model::Tr181, true);
    let sim = acs::start(([127, 0, 0, 1], 0).into(), std::slice::from_ref(&cpe)).await?;
    let (user, password) = acs::credentials();
    let endpoint = json!({"base_url": sim.base_url(), "device_id": cpe.id(),
        "auth": {"type": "basic", "username": user, "password": password}});
    let id = device_with(&http, &base, &token, "bench-tr069", "tr069", endpoint).await?;
    let names = FIVE_NAMES;
    println!(
        "rdm bench tr069: {calls} GetParameterValues of {} names (wait mode), {concurrency} callers, client, mesh and ACS simulator in one process on {} cores",
        names.len(),
        cores()
    );
    // A GenieACS client's GetParameterValues: the task, run at once by
    // the online CPE, then its values read from the device.
    let tasks_url = format!("{}/devices/{}/tasks", sim.base_url(), cpe.id());
    let devices_url = format!("{}/devices", sim.base_url());
    let task = json!({"name": "getParameterValues", "parameterNames": names});
    let query = json!({"_id": cpe.id()}).to_string();
    let projection = names.join(",");
    let direct_http = http.clone();
    let direct_call = move || {
        let (http, tasks_url, devices_url) =
            (direct_http.clone(), tasks_url.clone(), devices_url.clone());
        let (task, query, projection) = (task.clone(), query.clone(), projection.clone());
        let (user, password) = (user.clone(), password.clone());
        async move {
            let sent = http
                .post(&tasks_url)
                .query(&[("connection_request", ""), ("timeout", "3000")])
                .basic_auth(&user, Some(&password))
                .json(&task)
                .send()
                .await;
            // 200: the CPE ran it (202 would be queued or faulted).
            let ran = match sent {
                Ok(r) if r.status() == reqwest::StatusCode::OK => r.bytes().await.is_ok(),
                _ => false,
            };
            ran && succeeds(
                http.get(&devices_url)
                    .query(&[("query", &query), ("projection", &projection)])
                    .basic_auth(&user, Some(&password)),
            )
            .await
        }
    };
    let rest_call = rest_post(
        &http,
        format!("{base}/v1/tr069/get-parameter-values"),
        &token,
        json!({"target": {"device_id": id}, "names": names}),
    );
    gateway_vs_direct(calls, concurrency, direct_call, rest_call).await;
    trigger.trigger();
    drop(mesh);
    Ok(())
}

async fn hg630(
    calls: usize,
    seed_calls: usize,
    latency: Duration,
    login_latency: Duration,
) -> anyhow::Result<()> {
    use rdm_router_hg630::router::{Router, Scheme};
    use rdm_sims::hg630;
    use serde_json::json;
    let http = reqwest::Client::new();
    let DemoMesh {
        mesh,
        trigger,
        base,
        token,
        _dir,
    } = demo_mesh(Settings::default(), &http).await?;
    println!(
        "rdm bench hg630: GetDslInfo, one caller; {calls} reads on rdm's shared session (REST via the gateway), {seed_calls} the seed client's way (page, sign in, read, sign out)"
    );
    for (what, latency, login_latency) in [
        ("an instant router", Duration::ZERO, Duration::ZERO),
        ("a modelled router", latency, login_latency),
    ] {
        let config = hg630::Config {
            latency,
            login_latency,
            ..Default::default()
        };
        let sim = hg630::start(([127, 0, 0, 1], 0).into(), config.clone()).await?;
        let endpoint =
            json!({"endpoint": {"base_url": sim.base_url(), "password": config.password}});
        let shared_call = rest_post(
            &http,
            format!("{base}/v1/hg630/dsl-info"),
            &token,
            json!({"target": endpoint}),
        );
        let router = Router {
            http: http.clone(),
            base: sim.base_url(),
            timeout: Duration::from_secs(10),
        };
        let password = config.password.clone();
        let seed_call = move || {
            let (router, password) = (router.clone(), password.clone());
            async move {
                let Ok(Ok(login)) = router.login(Scheme::Current, "admin", &password).await else {
                    return false;
                };
                let read = router.read("/api/ntwk/dslinfo", &login.cookie).await;
                let out = router
                    .write("/api/system/user_logout", &login.cookie, &login.csrf, None)
                    .await;
                matches!(read, Ok(Some(_))) && out.is_ok()
            }
        };
        let shared = load_calls(calls, 1, shared_call).await;
        // The router takes one session of a user at a time: rdm's goes first.
        let logout = rest_post(
            &http,
            format!("{base}/v1/hg630/logout"),
            &token,
            json!({"target": endpoint}),
        );
        anyhow::ensure!(logout().await, "signing rdm out of the router");
        let seed = load_calls(seed_calls, 1, seed_call).await;
        anyhow::ensure!(
            shared.failed == 0 && seed.failed == 0,
            "calls failed: {} shared, {} seed",
            shared.failed,
            seed.failed
        );
        println!(
            "-- {what} ({} ms a request, {} ms more a sign-in)",
            latency.as_millis(),
            login_latency.as_millis()
        );
        println!("{}", shared.line("rdm, shared session"));
        println!("{}", seed.line("seed pattern, rdm's client"));
        println!(
            "shared / seed: {:.1}x the calls a second (goal >= 20x); the router saw {} sign-ins",
            shared.rps() / seed.rps().max(1e-9),
            sim.seen().logins
        );
    }
    trigger.trigger();
    drop(mesh);
    Ok(())
}

async fn mellophone(calls: usize, concurrency: usize, logins: usize) -> anyhow::Result<()> {
    use rdm_sims::mellophone;
    use serde_json::json;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .build()?;
    let DemoMesh {
        mesh,
        trigger,
        base,
        token: _,
        _dir,
    } = demo_mesh(Settings::default(), &http).await?;
    let config = mellophone::Config::with_users(vec![mellophone::user(&[
        ("sid", "1"),
        ("login", "ann"),
        ("pwd", "ann-pw"),
        ("groups", "netops"),
    ])]);
    let sim = mellophone::start(([127, 0, 0, 1], 0).into(), config).await?;
    // The tenant bootstrap made for the demo: its local admin sets the server.
    let admin: serde_json::Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"tenant": "mellophone-demo", "username": "admin", "password": "demo"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let admin = admin["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    http.put(format!("{base}/v1/settings/identity-provider"))
        .bearer_auth(&admin)
        .json(
            &json!({"mellophone": {"base_url": sim.base_url(), "sign_in": true,
            "roles": [{"group": "netops", "role": "operator"}]}}),
        )
        .send()
        .await?
        .error_for_status()?;
    let session = "bench-session";
    let direct = format!("{}/login", sim.base_url());
    http.get(&direct)
        .query(&[("sesid", session), ("login", "ann"), ("pwd", "ann-pw")])
        .send()
        .await?
        .error_for_status()?;
    println!(
        "rdm bench mellophone: {calls} IsAuthenticated, {concurrency} callers, client, mesh and simulator in one process on {} cores",
        cores()
    );
    let direct_url = format!("{}/isauthenticated", sim.base_url());
    let direct_http = http.clone();
    let direct_call = move || succeeds(direct_http.get(&direct_url).query(&[("sesid", session)]));
    let rest_call = rest_post(
        &http,
        format!("{base}/v1/mellophone/is-authenticated"),
        &admin,
        json!({"session_id": session}),
    );
    gateway_vs_direct(calls, concurrency, direct_call, rest_call).await;
    let login = |tenant: &str, user: &str, password: &str| {
        let (http, url) = (http.clone(), format!("{base}/v1/auth/login"));
        let body = json!({"tenant": tenant, "username": user, "password": password}).to_string();
        move || {
            succeeds(
                http.post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
        }
    };
    let through = load_calls(logins, 1, login("mellophone-demo", "ann", "ann-pw")).await;
    let local = load_calls(logins, 1, login("demo", "demo", "demo")).await;
    anyhow::ensure!(
        through.failed == 0 && local.failed == 0,
        "sign-ins failed: {} through Mellophone, {} local",
        through.failed,
        local.failed
    );
    println!("-- {logins} sign-ins to rdm, one caller");
    println!("{}", through.line("through Mellophone"));
    println!("{}", local.line("local user (argon2)"));
    trigger.trigger();
    drop(mesh);
    Ok(())
}

/// Loads something `runs` times: the last one kept, and a line with the
/// median time (and its spread) and the memory the loads left resident.
fn loads<T, E: Into<anyhow::Error>>(
    runs: usize,
    what: &str,
    load: impl Fn() -> Result<T, E>,
) -> anyhow::Result<T> {
    let before = rss_kib("self");
    let mut times = Vec::with_capacity(runs);
    let mut kept = None;
    for _ in 0..runs {
        let t = Instant::now();
        kept = Some(load().map_err(Into::into)?);
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  {what:<20}{:8.1} ms median ({:.1} to {:.1}), {:.1} MiB more resident (one kept)   goal < 1000 ms",
        ms(times[runs / 2]),
        ms(times[0]),
        ms(times[runs - 1]),
        rss_kib("self").saturating_sub(before) as f64 / 1024.0
    );
    kept.ok_or_else(|| anyhow::anyhow!("no run"))
}

fn catalog(runs: usize, oids: usize) -> anyhow::Result<()> {
    use rdm_catalog::{datamodel, mibs};
    println!(
        "rdm bench catalog: the {} standard MIB modules and the TR-181 XML, median of {runs} loads; TranslateOids of {oids} OIDs each way; in process, on {} cores",
        mibs::STANDARD.len(),
        cores()
    );
    let set = loads(runs, "MIB modules", mibs::MibSet::load_standard)?;
    let model = loads(runs, "TR-181 XML (3.7 MB)", datamodel::load_standard)?;
    println!(
        "  {} modules, {} objects; {} data model objects, {} parameters",
        set.modules().len(),
        set.mib.objects().count(),
        model.objects.len(),
        model.parameter_count()
    );
    // Columns of ifTable and ipAddrTable with indexes, and scalars.
    let queries: Vec<String> = (0..oids)
        .map(|i| match i % 3 {
            0 => format!("1.3.6.1.2.1.2.2.1.{}.{}", 1 + i % 22, i),
            1 => format!(
                "1.3.6.1.2.1.4.20.1.{}.10.0.{}.{}",
                1 + i % 5,
                (i / 256) % 256,
                i % 256
            ),
            _ => format!("1.3.6.1.2.1.1.{}.0", 1 + i % 7),
        })
        .collect();
    let t = Instant::now();
    let names: Vec<String> = queries
        .iter()
        .map(|q| set.translate(q, None).name)
        .collect();
    let forward = t.elapsed();
    let t = Instant::now();
    let back: Vec<String> = names.iter().map(|n| set.translate(n, None).oid).collect();
    let backward = t.elapsed();
    let wrong = back.iter().zip(&queries).filter(|(b, q)| b != q).count();
    let rate = |d: Duration| oids as f64 / d.as_secs_f64();
    println!(
        "  OID -> name         {:8.0} /s  ({:.2} ms for {oids})   goal > 1,000,000 /s",
        rate(forward),
        forward.as_secs_f64() * 1e3
    );
    println!(
        "  name -> OID         {:8.0} /s  ({:.2} ms for {oids}; {wrong} did not come back to their OID)",
        rate(backward),
        backward.as_secs_f64() * 1e3
    );
    println!("  e.g. {} -> {}", queries[1], names[1]);
    Ok(())
}

/// A fresh PostgreSQL database for a benchmark: its owner's and rdm_app's
/// URLs (RDM_TEST_PG_URL or postgres://postgres@127.0.0.1:5432).
async fn bench_database(name: &str) -> anyhow::Result<(String, String)> {
    use sqlx::Connection;
    let server = std::env::var("RDM_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
    let name = format!("{name}_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name}"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut admin)
        .await?;
    Ok((
        format!("{server}/{name}"),
        format!("{}/{name}", server.replacen("postgres@", "rdm_app@", 1)),
    ))
}

async fn jobs(
    n: usize,
    snmp_n: usize,
    latency_n: usize,
    agent: std::net::SocketAddr,
) -> anyhow::Result<()> {
    use rdm_proto::jobs::{
        SubmitJobRequest, WatchJobRequest, job_service_client::JobServiceClient,
    };
    use sqlx::Connection;
    let (admin_url, app_url) = bench_database("rdm_bench_jobs").await?;
    let mut settings = Settings::default();
    settings.inventory.database.database_admin_url = Some(admin_url.clone());
    settings.inventory.database.database_url = Some(app_url.clone());
    let http = reqwest::Client::new();
    let demo = demo_mesh(settings, &http).await?;
    // The second worker: a process of its own on the same queue.
    let inventory = format!("http://{}", demo.mesh.inventory_addr);
    let mut other = tokio::process::Command::new(std::env::current_exe()?)
        .args(["serve", "jobs", "--listen", "127.0.0.1:0"])
        .env("RDM_DATABASE_URL", &app_url)
        .env("RDM_INVENTORY_URL", &inventory)
        .env("RDM_JOBS_MESH_URL", &inventory)
        .env(
            "RDM_SERVICE_KEY_FILE",
            demo._dir.path().join("service-ed25519.pem"),
        )
        .env("RDM_METRICS_LISTEN", "127.0.0.1:0")
        .env("RDM_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let (channel, bearer) = grpc(&demo.mesh, &demo.token).await?;
    let mut db = sqlx::PgConnection::connect(&admin_url).await?;
    println!(
        "rdm bench jobs: PostgreSQL, two workers (this process and `rdm serve jobs`), {} cores shared with the database",
        cores()
    );
    let submit = {
        let (channel, bearer) = (channel.clone(), bearer.clone());
        move |method: &str, request: serde_json::Value, label: &str| {
            let mut client = JobServiceClient::new(channel.clone());
            let bearer = bearer.clone();
            let job = SubmitJobRequest {
                method: method.into(),
                request: Some(rdm_jobs::method::json_struct(&request)),
                labels: [("bench".to_owned(), label.to_owned())].into(),
                ..Default::default()
            };
            async move {
                let mut req = tonic::Request::new(job);
                req.metadata_mut().insert("authorization", bearer);
                client
                    .submit_job(req)
                    .await
                    .ok()
                    .and_then(|r| r.into_inner().job)
                    .map(|j| j.id)
            }
        }
    };
    // Submits `count` jobs 64 at a time, and waits until none of `label`'s
    // is queued or running: the time it took, and how many succeeded.
    async fn round<F, Fut>(
        db: &mut sqlx::PgConnection,
        count: usize,
        label: &str,
        submit: F,
    ) -> anyhow::Result<(Duration, Duration, i64)>
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Option<String>> + Send,
    {
        let started = Instant::now();
        let submitted = load_calls_once(count, 64, move || {
            let submit = submit.clone();
            async move { submit().await.is_some() }
        })
        .await;
        anyhow::ensure!(
            submitted == count,
            "{} of {count} jobs were refused",
            count - submitted
        );
        let enqueued = started.elapsed();
        // Rounds run one after another: the queue is empty when this one is done.
        loop {
            // Each count on its partial index (a scan of every job would
            // cost the database more than the jobs do).
            let open: i64 = sqlx::query_scalar(
                "select (select count(*) from jobs where status = 'queued') \
                 + (select count(*) from jobs where status = 'running')",
            )
            .fetch_one(&mut *db)
            .await?;
            if open == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();
        let ok: i64 = sqlx::query_scalar(
            "select count(*) from jobs where status = 'succeeded' and labels like $1",
        )
        .bind(format!("%\"bench\":\"{label}\"%"))
        .fetch_one(&mut *db)
        .await?;
        Ok((enqueued, took, ok))
    }
    let jwks = {
        let submit = submit.clone();
        move |label: &'static str| {
            let submit = submit.clone();
            move || {
                submit(
                    "rdm.inventory.v1.AuthService/GetJwks",
                    serde_json::json!({}),
                    label,
                )
            }
        }
    };
    round(&mut db, n / 10, "warm", jwks("warm")).await?;
    let (enqueued, took, ok) = round(&mut db, n, "trivial", jwks("trivial")).await?;
    let rdm_rate = ok as f64 / took.as_secs_f64();
    println!(
        "rdm:    {n} trivial jobs (GetJwks) enqueued in {:.2} s and succeeded in {:.2} s: {rdm_rate:.0} jobs/s ({ok} succeeded)",
        enqueued.as_secs_f64(),
        took.as_secs_f64()
    );
    match std::env::var("CELERY_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
    {
        Some(python) => {
            let out = tokio::process::Command::new(python)
                .args(["scripts/celery_bench.py", &n.to_string(), "2", "2"])
                .output()
                .await?;
            let text = String::from_utf8_lossy(&out.stdout);
            let secs: Option<f64> = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("celery: {n} jobs in ")))
                .and_then(|rest| rest.trim_end_matches(" s").parse().ok());
            match secs {
                Some(secs) => {
                    let rate = n as f64 / secs;
                    println!(
                        "celery: {n} no-op tasks (2 prefork workers x 2, Redis broker and results) in {secs:.2} s: {rate:.0} jobs/s"
                    );
                    println!("rdm/celery: {:.1}x (goal >= 3x)", rdm_rate / rate);
                }
                None => println!(
                    "celery: did not run: {}{}",
                    text.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            }
        }
        None => println!("celery: not run (CELERY_PYTHON unset: scripts/bench-jobs.sh sets it)"),
    }

    // SNMP GETs, one job each, against a real agent.
    let device: serde_json::Value = http
        .post(format!("{}/v1/devices", demo.base))
        .bearer_auth(&demo.token)
        .json(&serde_json::json!({"name": "bench-agent"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let device_id = device["id"].as_str().unwrap_or_default().to_owned();
    http.put(format!("{}/v1/devices/{device_id}/endpoints/snmp", demo.base))
        .bearer_auth(&demo.token)
        .json(&serde_json::json!({"host": agent.ip().to_string(), "port": agent.port(), "version": "2c", "community": "public"}))
        .send()
        .await?
        .error_for_status()?;
    let get = {
        let submit = submit.clone();
        move || {
            submit(
                "rdm.snmp.v1.SnmpService/Get",
                serde_json::json!({"target": {"device_id": device_id}, "oids": ["1.3.6.1.2.1.1.3.0"]}),
                "snmp",
            )
        }
    };
    let (_, took, ok) = round(&mut db, snmp_n, "snmp", get).await?;
    println!(
        "rdm:    {snmp_n} SNMP GET jobs against {agent}: {:.0} jobs/s ({ok} succeeded)",
        ok as f64 / took.as_secs_f64()
    );

    // One job at a time on an idle queue: enqueue to start.
    for _ in 0..latency_n {
        let Some(id) = submit(
            "rdm.inventory.v1.AuthService/GetJwks",
            serde_json::json!({}),
            "latency",
        )
        .await
        else {
            anyhow::bail!("a latency job was refused");
        };
        let mut client = JobServiceClient::new(channel.clone());
        let mut req = tonic::Request::new(WatchJobRequest {
            job_id: id,
            last_event_id: Some(0),
        });
        req.metadata_mut().insert("authorization", bearer.clone());
        let mut events = client.watch_job(req).await?.into_inner();
        while events.message().await?.is_some() {}
    }
    let mut delays: Vec<i64> = sqlx::query_scalar(
        "select start_time - create_time from jobs where labels like '%\"bench\":\"latency\"%'",
    )
    .fetch_all(&mut db)
    .await?;
    delays.sort();
    let at = |p: f64| delays[((delays.len() - 1) as f64 * p).round() as usize];
    println!(
        "rdm:    enqueue to start on an idle queue, {latency_n} jobs one at a time: p50 {} ms, p99 {} ms (goal < 10 ms; stored to the millisecond)",
        at(0.5),
        at(0.99)
    );
    let _ = other.start_kill();
    let _ = other.wait().await;
    demo.trigger.trigger();
    Ok(())
}

/// Makes `total` calls from `concurrency` tasks, once (no warm-up): how
/// many succeeded.
async fn load_calls_once<F, Fut>(total: usize, concurrency: usize, call: F) -> usize
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let left = Arc::new(AtomicUsize::new(total));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (call, left) = (call.clone(), left.clone());
        tasks.spawn(async move {
            let mut ok = 0;
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                ok += usize::from(call().await);
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(Ok(n)) = tasks.join_next().await {
        ok += n;
    }
    ok
}
