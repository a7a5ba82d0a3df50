//! rdm-tests: the whole mesh started in this process exactly as `rdm up`
//! starts it, on SQLite or on a fresh PostgreSQL database per test, and
//! helpers that talk to it the way a user does: REST through the gateway
//! and gRPC.
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::{net::SocketAddr, path::PathBuf};
use tokio::io::AsyncBufReadExt;

pub mod snmpd;

pub use rdm::Settings;

/// The password the harness gives the platform admin.
pub const ADMIN_PASSWORD: &str = "test-admin-password";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// A PostgreSQL database made for one test and dropped after it.
pub struct PgDatabase {
    pub name: String,
    /// As the owner (runs migrations; superuser on this machine).
    pub admin_url: String,
    /// As rdm_app, the role the services use.
    pub app_url: String,
    server_url: String,
}

/// The server the tests make their databases on (trust auth on loopback).
pub fn pg_server_url() -> String {
    std::env::var("RDM_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

impl PgDatabase {
    pub async fn create() -> Self {
        let server_url = pg_server_url();
        let name = format!("rdm_t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        let mut conn = connect_pg(&format!("{server_url}/postgres")).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Self {
            admin_url: format!("{server_url}/{name}"),
            app_url: format!("{}/{name}", server_url.replacen("postgres@", "rdm_app@", 1)),
            name,
            server_url,
        }
    }
}

pub async fn connect_pg(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap_or_else(|e| {
        panic!("PostgreSQL is required for these tests (./test.sh starts it): cannot connect to {url}: {e}")
    })
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let (url, name) = (format!("{}/postgres", self.server_url), self.name.clone());
        // Drop runs outside any runtime guarantee: a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "drop database if exists {name} with (force)"
                )))
                .execute(&mut conn)
                .await
                .ok()
            })
        })
        .join();
    }
}

/// The mesh under test.
pub struct TestMesh {
    pub gateway: SocketAddr,
    /// The gRPC port of the inventory and the SNMP service.
    pub inventory: SocketAddr,
    /// Where the SNMP service receives traps.
    pub traps: SocketAddr,
    /// Where USP agents connect over WebSocket.
    pub usp_websocket: SocketAddr,
    /// The internal port that serves `/metrics`.
    pub metrics: SocketAddr,
    /// Where rdm's own ACS takes CPEs (CWMP).
    pub cwmp: SocketAddr,
    pub http: reqwest::Client,
    pub data_dir: PathBuf,
    pub pg: Option<PgDatabase>,
    trigger: rdm_kit::server::ShutdownTrigger,
    _dir: tempfile::TempDir,
}

impl TestMesh {
    pub async fn start(store: Store) -> Self {
        Self::start_with(store, |_| {}).await
    }

    /// Starts with settings changed by `tune` (body limit, CORS, throttling...).
    pub async fn start_with(store: Store, tune: impl FnOnce(&mut Settings)) -> Self {
        Self::start_demo(store, rdm::Demo::Tenant, tune).await
    }

    /// Starts as `rdm up --demo` does: the demo tenant's devices and their
    /// simulated agents too.
    pub async fn start_with_demo_devices(store: Store) -> Self {
        Self::start_demo(store, rdm::Demo::Devices, |_| {}).await
    }

    async fn start_demo(store: Store, demo: rdm::Demo, tune: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = match store {
            Store::Sqlite => None,
            Store::Postgres => Some(PgDatabase::create().await),
        };
        let files = dir.path().join("tr069-files");
        let mut flags: Vec<&str> = rdm::EPHEMERAL_SERVICE_LISTENERS.to_vec();
        flags.extend([
            "--tr069-files-dir",
            files.to_str().expect("a UTF-8 temp dir"),
        ]);
        let mut settings = Settings {
            services: rdm::service_settings(&flags).expect("service flags parse"),
            ..Settings::default()
        };
        settings.inventory.admin_password = Some(ADMIN_PASSWORD.into());
        settings.inventory.database.database_url = pg.as_ref().map(|p| p.app_url.clone());
        settings.inventory.database.database_admin_url = pg.as_ref().map(|p| p.admin_url.clone());
        settings.server.shutdown_delay_ms = 0;
        settings.server.metrics_listen = Some(([127, 0, 0, 1], 0).into());
        settings.server.drain_timeout_ms = 2000;
        tune(&mut settings);
        let (trigger, shutdown) = rdm_kit::server::Shutdown::new();
        let mesh = rdm::up(
            rdm::UpOptions {
                data_dir: dir.path().to_owned(),
                listen: "127.0.0.1:0".parse().expect("addr"),
                inventory_listen: "127.0.0.1:0".parse().expect("addr"),
                demo,
                settings,
            },
            shutdown,
        )
        .await
        .expect("the mesh starts");
        let (gateway, inventory) = (mesh.gateway_addr, mesh.inventory_addr);
        let traps = mesh.listeners.get("snmp-traps").copied();
        let usp_websocket = mesh.listeners.get("usp-websocket").copied();
        let metrics = mesh.listeners.get("metrics").copied();
        let cwmp = mesh.listeners.get("tr069-cwmp").copied();
        tokio::spawn(mesh.wait());
        Self {
            gateway,
            inventory,
            traps: traps.expect("the test mesh listens for traps"),
            usp_websocket: usp_websocket.expect("the test mesh listens for USP agents"),
            metrics: metrics.expect("the test mesh serves metrics"),
            cwmp: cwmp.expect("the test mesh runs rdm's ACS"),
            http: reqwest::Client::new(),
            data_dir: dir.path().to_owned(),
            pg,
            trigger,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    /// A REST call as a user makes it; the reply's status and JSON body
    /// (`Value::Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("gateway did not answer {path}: {e:?}"));
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    pub async fn login(&self, tenant: &str, username: &str, password: &str) -> (StatusCode, Value) {
        let body = json!({"tenant": tenant, "username": username, "password": password});
        self.call(Method::POST, "/v1/auth/login", None, Some(body))
            .await
    }

    /// Logs in and returns the access token; panics with the reply otherwise.
    pub async fn token(&self, tenant: &str, username: &str, password: &str) -> String {
        let (status, body) = self.login(tenant, username, password).await;
        assert_eq!(status, StatusCode::OK, "login {tenant}/{username}: {body}");
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    pub async fn admin_token(&self) -> String {
        self.token("system", "admin", ADMIN_PASSWORD).await
    }

    /// A new tenant with an admin `alice` (password `alice-password`):
    /// its id and alice's token.
    pub async fn tenant_with_admin(&self, slug: &str) -> (String, String) {
        let admin = self.admin_token().await;
        let (status, tenant) = self
            .post(
                "/v1/tenants",
                &admin,
                json!({"slug": slug, "display_name": slug}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "create tenant {slug}: {tenant}");
        let id = tenant["id"].as_str().expect("tenant id").to_owned();
        let (status, user) = self
            .post(
                &format!("/v1/tenants/{id}/users"),
                &admin,
                json!({"username": "alice", "password": "alice-password", "roles": ["admin"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "create alice in {slug}: {user}");
        (id, self.token(slug, "alice", "alice-password").await)
    }

    /// A device of the token's tenant (`device`: CreateDevice's body) with
    /// `endpoint` as its `protocol` endpoint; its id.
    pub async fn device_with_endpoint(
        &self,
        token: &str,
        device: Value,
        protocol: &str,
        endpoint: Value,
    ) -> String {
        let (status, body) = self.post("/v1/devices", token, device).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let id = body["id"].as_str().expect("a device id").to_owned();
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/devices/{id}/endpoints/{protocol}"),
                Some(token),
                Some(endpoint),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        id
    }

    /// A platform admin gives a tenant networks the platform deny list
    /// refuses (loopback, for the agents tests run).
    pub async fn allow_targets(&self, tenant_id: &str, cidrs: &[&str]) {
        let admin = self.admin_token().await;
        let (status, tenant) = self
            .call(
                Method::PATCH,
                &format!("/v1/tenants/{tenant_id}"),
                Some(&admin),
                Some(json!({"allowed_target_cidrs": cidrs, "update_mask": "allowed_target_cidrs"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "allow {cidrs:?}: {tenant}");
    }

    /// What the internal metrics port serves now.
    /// The mesh's database as the services reach it (PostgreSQL as
    /// rdm_app, or the SQLite file in the data dir).
    pub async fn database(&self) -> rdm_kit::db::Db {
        let url = match &self.pg {
            Some(pg) => pg.app_url.clone(),
            None => format!("sqlite:{}", self.data_dir.join("inventory.db").display()),
        };
        rdm_kit::db::Db::connect(&url, 1)
            .await
            .expect("the mesh's database")
    }

    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .expect("the metrics port answers")
            .text()
            .await
            .expect("metrics text")
    }

    /// Asks the mesh to stop, as SIGTERM does.
    pub fn stop(&self) {
        self.trigger.trigger();
    }

    /// The key file `rdm up` created, to forge tokens in tests.
    pub fn signing_key(&self) -> rdm_kit::auth::SigningKey {
        rdm_kit::auth::SigningKey::load_or_create(&self.data_dir.join("jwt-ed25519.pem"))
            .expect("key")
    }
}

impl Drop for TestMesh {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

/// Sends a request and reads its JSON reply (`Value::Null` when the reply
/// is not JSON): what most raw-HTTP steps of a test want.
pub trait SendJson {
    fn send_json(self) -> impl std::future::Future<Output = Value> + Send;
}

impl SendJson for reqwest::RequestBuilder {
    async fn send_json(self) -> Value {
        let resp = self.send().await.expect("the server answers");
        resp.json().await.unwrap_or(Value::Null)
    }
}

/// A `/proc/self/status` figure in KiB (`VmRSS:`, `VmHWM:`): what the
/// memory tests measure this process (and the mesh in it) by.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// The `rdm` binary cargo built beside this test binary.
pub fn rdm_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join(format!("rdm{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --bin rdm` (./test.sh does)",
        bin.display()
    );
    bin
}

/// Runs each named `async fn(TestMesh)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestMesh::start($crate::Store::Sqlite).await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestMesh::start($crate::Store::Postgres).await).await
                }
            )*
        }
    };
}

/// A running `rdm` child process and where it said it listens.
pub struct Process {
    pub child: tokio::process::Child,
    /// The gateway (`rdm up`) or the role's port (`rdm serve`).
    pub addr: SocketAddr,
    /// What it printed up to saying so.
    pub printed: Vec<String>,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// Its stderr (the logs), in a file: a pipe nobody reads would fill up.
    stderr: tempfile::NamedTempFile,
}

impl Process {
    /// Where it said its listener `name` is (`rdm serve ROLE: NAME on ADDR`).
    pub fn listener(&self, name: &str) -> Option<SocketAddr> {
        let marker = format!(": {name} on ");
        self.printed
            .iter()
            .find_map(|line| line.split_once(&marker)?.1.trim().parse().ok())
    }

    /// Starts `rdm` with `args` (every port it binds is 0, so tests never
    /// collide) and waits (at most 30 s) for the line naming its address:
    /// `rdm is up: gateway http://ADDR ...` or `rdm serve ROLE: listening on ADDR`.
    pub async fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let stderr = tempfile::NamedTempFile::new().expect("temp file");
        let mut cmd = tokio::process::Command::new(rdm_binary());
        cmd.args(args)
            .env("RDM_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .stderr(stderr.reopen().expect("temp file"))
            .kill_on_drop(true);
        // Only the settings the test gives, none from the environment.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("RDM_")) {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn rdm");
        let mut stdout =
            tokio::io::BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut printed = Vec::new();
        let found = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(line) = stdout.next_line().await.expect("stdout") {
                let addr = line
                    .strip_prefix("rdm is up: gateway http://")
                    .and_then(|rest| rest.split_whitespace().next())
                    .or_else(|| line.split_once(": listening on ").map(|(_, a)| a.trim()))
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                printed.push(line);
                if addr.is_some() {
                    return addr;
                }
            }
            None
        })
        .await;
        let addr = match found {
            Ok(Some(addr)) => addr,
            _ => panic!("rdm {args:?} never said where it listens: {printed:?}"),
        };
        Self {
            child,
            addr,
            printed,
            stdout,
            stderr,
        }
    }

    /// `rdm up` on `data_dir`, every port 0, with `extra` flags.
    pub async fn up(data_dir: &std::path::Path, extra: &[&str], env: &[(&str, String)]) -> Self {
        let dir = data_dir.to_str().expect("utf-8 temp dir");
        let mut args = vec![
            "up",
            "--listen",
            "127.0.0.1:0",
            "--inventory-listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--data-dir",
            dir,
        ];
        args.extend_from_slice(&rdm::EPHEMERAL_SERVICE_LISTENERS);
        args.extend_from_slice(extra);
        Self::start(&args, env).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends SIGTERM and waits (at most `within`) for the exit; returns
    /// everything it printed on stdout after its address line, then stderr.
    pub async fn terminate(
        mut self,
        within: std::time::Duration,
    ) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().expect("running").to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let mut rest = String::new();
        let status = tokio::time::timeout(within, async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
            self.child.wait().await.expect("wait")
        })
        .await
        .expect("exits in time");
        rest.push_str(&std::fs::read_to_string(self.stderr.path()).unwrap_or_default());
        (status, rest)
    }
}

/// `rdm serve <role>` as a child process on a port of its own choosing,
/// with `env` on top of a test environment; killed when dropped.
pub async fn spawn_serve(role: &str, env: &[(&str, String)]) -> Process {
    let mut env: Vec<(&str, String)> = env.to_vec();
    if !env.iter().any(|(k, _)| *k == "RDM_SECRET_KEY") {
        env.push(("RDM_SECRET_KEY", rdm_kit::secrets::generate_key()));
    }
    env.push(("RDM_ADMIN_PASSWORD", ADMIN_PASSWORD.into()));
    env.push(("RDM_METRICS_LISTEN", "127.0.0.1:0".into()));
    Process::start(&["serve", role, "--listen", "127.0.0.1:0"], &env).await
}

/// The Kubernetes shape: `rdm serve inventory` on a fresh PostgreSQL
/// database, with its token and service keys, for tests that start the
/// other roles as processes of their own ([`Split::serve`]).
pub struct Split {
    pub inventory: Process,
    service_key: String,
    /// The database the inventory keeps (for a service that keeps data).
    pub pg: PgDatabase,
    _dir: tempfile::TempDir,
}

impl Split {
    /// The inventory, `env` on top of what it needs.
    pub async fn start(env: &[(&str, String)]) -> Self {
        let pg = PgDatabase::create().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let key_file = |name: &str| {
            let path = dir.path().join(name);
            rdm_kit::auth::SigningKey::load_or_create(&path).expect("key");
            path.display().to_string()
        };
        let service_key = key_file("service.pem");
        let mut all = vec![
            ("RDM_DATABASE_URL", pg.app_url.clone()),
            ("RDM_DATABASE_ADMIN_URL", pg.admin_url.clone()),
            ("RDM_JWT_KEY_FILE", key_file("jwt.pem")),
            ("RDM_SERVICE_KEY_FILE", service_key.clone()),
        ];
        all.extend_from_slice(env);
        Self {
            inventory: spawn_serve("inventory", &all).await,
            service_key,
            pg,
            _dir: dir,
        }
    }

    /// `rdm serve <role>` reaching this inventory, `env` on top.
    pub async fn serve(&self, role: &str, env: &[(&str, String)]) -> Process {
        let mut all = vec![
            (
                "RDM_INVENTORY_URL",
                format!("http://{}", self.inventory.addr),
            ),
            ("RDM_SERVICE_KEY_FILE", self.service_key.clone()),
        ];
        all.extend_from_slice(env);
        spawn_serve(role, &all).await
    }
}

/// The platform admin's token, signed in through the gateway at `base`,
/// and its tenant allowed loopback (where the tests' peers are).
pub async fn admin_on_loopback(http: &reqwest::Client, base: &str) -> String {
    let login = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"tenant": "system", "username": "admin", "password": ADMIN_PASSWORD}))
        .send_json()
        .await;
    let token = login["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("admin login: {login}"))
        .to_owned();
    let me = http
        .get(format!("{base}/v1/me"))
        .bearer_auth(&token)
        .send_json()
        .await;
    let allowed = http
        .patch(format!(
            "{base}/v1/tenants/{}",
            me["tenant_id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&json!({"allowed_target_cidrs": ["127.0.0.0/8"]}))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(allowed.status(), StatusCode::OK, "allow loopback");
    token
}

/// A gRPC channel to `addr` once something accepts there (at most 20 s).
pub async fn wait_for(addr: SocketAddr) -> tonic::transport::Channel {
    let started = std::time::Instant::now();
    loop {
        let endpoint =
            tonic::transport::Channel::from_shared(format!("http://{addr}")).expect("url");
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "nothing listens on {addr} after 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A server stream read through REST as NDJSON, a value at a time.
pub struct NdJson {
    chunks: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: String,
}

impl NdJson {
    /// The stream of a reply (which must be 200).
    pub fn of(resp: reqwest::Response) -> Self {
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.url());
        Self {
            chunks: futures::StreamExt::boxed(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// `GET path` with the token, as a stream.
    pub async fn get(http: &reqwest::Client, url: &str, token: &str) -> Self {
        Self::of(http.get(url).bearer_auth(token).send().await.unwrap())
    }

    /// The next value, if one comes within `wait` (panics when the stream ends).
    pub async fn next_within(&mut self, wait: std::time::Duration) -> Option<Value> {
        let next = self.read(wait).await.ok()?;
        Some(next.expect("the stream ended"))
    }

    /// The next value; None when the stream has ended. Panics when neither
    /// happens within `wait`.
    pub async fn next_within_or_end(&mut self, wait: std::time::Duration) -> Option<Value> {
        self.read(wait)
            .await
            .expect("the stream neither went on nor ended in time")
    }

    /// The next value (None: the stream ended), or Err when none came in time.
    async fn read(&mut self, wait: std::time::Duration) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find('\n') {
                let line: String = self.buf.drain(..=end).collect();
                return Ok(Some(
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")),
                ));
            }
            let chunk =
                tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut self.chunks))
                    .await
                    .map_err(|_| ())?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.buf
                .push_str(std::str::from_utf8(&chunk.expect("the stream failed")).unwrap());
        }
    }

    /// The next `n` values, within 10 s.
    pub async fn next(&mut self, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Some(v) => got.push(v),
                None => panic!("{n} values within 10 s, got {got:?}"),
            }
        }
        got
    }
}
