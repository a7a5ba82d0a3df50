//! The real SNMP agent the tests talk to: net-snmp's snmpd on
//! 127.0.0.1:11161, as PEERS.md configures it, with one user per
//! auth/privacy pair. One agent serves every test process: the first to
//! need it starts it (under a file lock), the rest find it answering.
use std::{
    fs,
    io::Write,
    net::UdpSocket,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub const ADDR: &str = "127.0.0.1:11161";
pub const PORT: u16 = 11161;

/// The v3 users: name, auth protocol, auth password, privacy protocol,
/// privacy password, as the endpoint schema and the net-snmp tools spell them.
pub const USERS: [(&str, &str, &str, &str, &str); 4] = [
    ("md5DesUser", "MD5", "md5pass1234", "DES", "despass1234"),
    ("authPrivUser", "SHA", "authpass123", "AES", "privpass123"),
    (
        "sha256User",
        "SHA-256",
        "sha256pass1",
        "AES-256",
        "aes256pass1",
    ),
    (
        "sha512User",
        "SHA-512",
        "sha512pass1",
        "AES-192",
        "aes192pass1",
    ),
];

fn config() -> String {
    let mut conf = String::from(
        "agentAddress udp:127.0.0.1:11161\n\
         rocommunity public 127.0.0.1\n\
         rwcommunity private 127.0.0.1\n\
         dontLogTCPWrappersConnects yes\n\
         createUser authOnlyUser SHA \"authonly123\"\n\
         rouser authOnlyUser auth\n\
         createUser noAuthUser\n\
         rouser noAuthUser noauth\n",
    );
    for (user, auth, auth_pass, privacy, priv_pass) in USERS {
        conf.push_str(&format!(
            "createUser {user} {auth} \"{auth_pass}\" {privacy} \"{priv_pass}\"\nrwuser {user} priv\n"
        ));
    }
    conf
}

fn state_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/snmpd")
}

/// Whether an agent answers a v2c GET of sysDescr.0 on ADDR.
fn answers() -> bool {
    // A fixed v2c GET of 1.3.6.1.2.1.1.1.0 with community "public".
    const GET: [u8; 41] = [
        0x30, 0x27, 0x02, 0x01, 0x01, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xa0, 0x1a,
        0x02, 0x02, 0x12, 0x34, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30, 0x0e, 0x30, 0x0c, 0x06,
        0x08, 0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05, 0x00,
    ];
    let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 2048];
    (0..3).any(|_| socket.send_to(&GET, ADDR).is_ok() && socket.recv_from(&mut buf).is_ok())
}

/// Makes sure the agent runs; panics with what to do when it cannot.
pub fn ensure() {
    if answers() {
        return;
    }
    let dir = state_dir();
    fs::create_dir_all(&dir).expect("snmpd state dir");
    let lock = fs::File::create(dir.join("start.lock")).expect("snmpd lock file");
    lock.lock().expect("snmpd start lock");
    if answers() {
        return;
    }
    let conf = dir.join("snmpd.conf");
    fs::File::create(&conf)
        .and_then(|mut f| f.write_all(config().as_bytes()))
        .expect("write snmpd.conf");
    let persist = dir.join("persist");
    let _ = fs::remove_dir_all(&persist);
    fs::create_dir_all(&persist).expect("snmpd persistent dir");
    let snmpd = ["/usr/sbin/snmpd", "/usr/bin/snmpd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("snmpd is not installed: run ./test.sh (it installs Debian's snmpd and snmp)");
    let args = [
        "-Lf".into(),
        dir.join("snmpd.log").display().to_string(),
        "-C".into(),
        "-c".into(),
        conf.display().to_string(),
        "-p".into(),
        dir.join("snmpd.pid").display().to_string(),
        format!("--persistentDir={}", persist.display()),
        "-I".into(),
        "-smux".into(),
    ];
    // As PEERS.md says: unprivileged, when we are root.
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let mut cmd = if is_root {
        for p in [&dir, &persist] {
            let _ = Command::new("chmod").arg("777").arg(p).status();
        }
        let _ = Command::new("chmod").arg("644").arg(&conf).status();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", snmpd]);
        c
    } else {
        Command::new(snmpd)
    };
    // snmpd forks to the background and outlives this test process.
    let status = cmd
        .args(&args)
        .env("MIBDIRS", "/nonexistent")
        .status()
        .expect("start snmpd");
    assert!(
        status.success(),
        "snmpd failed to start: see {}",
        dir.join("snmpd.log").display()
    );
    for _ in 0..50 {
        if answers() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "snmpd started but does not answer on {ADDR}: see {}",
        dir.join("snmpd.log").display()
    );
}

/// A net-snmp command-line tool's output (the tests' oracle).
pub fn tool(name: &str, args: &[&str]) -> String {
    let out = tool_output(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("tool output is text")
}

/// How a net-snmp tool ended, success or not.
pub fn tool_output(name: &str, args: &[&str]) -> std::process::Output {
    // Each run its own persistent-state dir: tools running at the same
    // time otherwise rewrite one shared file under each other.
    let state = tempfile::tempdir().expect("a temp dir");
    Command::new(name)
        .args(args)
        .env("MIBDIRS", "/nonexistent")
        .env("MIBS", "")
        .env("SNMP_PERSISTENT_DIR", state.path())
        .output()
        .unwrap_or_else(|e| panic!("{name} is not installed ({e}): run ./test.sh"))
}
