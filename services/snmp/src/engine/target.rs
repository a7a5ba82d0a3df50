//! Who to talk to and how: address, version, credentials and patience.
use snmp2::v3::{AuthProtocol, Cipher};
use std::{fmt, net::SocketAddr, time::Duration};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2c,
    V3,
}

impl Version {
    pub fn wire(self) -> i64 {
        match self {
            Self::V1 => 0,
            Self::V2c => 1,
            Self::V3 => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "1",
            Self::V2c => "2c",
            Self::V3 => "3",
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Community(Vec<u8>),
    Usm(UsmUser),
}

/// A USM user: authentication and privacy are each optional (the security
/// level follows from which are present).
#[derive(Clone, PartialEq, Eq)]
pub struct UsmUser {
    pub username: Vec<u8>,
    pub auth: Option<(AuthProtocol, Vec<u8>)>,
    pub privacy: Option<(Cipher, Vec<u8>)>,
    /// The SNMPv3 context the requests name (empty for the default).
    pub context_name: Vec<u8>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub version: Version,
    pub credentials: Credentials,
    /// How long the first attempt waits; each retry waits twice as long as
    /// the one before (with up to 10% jitter).
    pub timeout: Duration,
    pub retries: u32,
    pub max_repetitions: u32,
    /// Requests in flight to this agent at once, across every call.
    pub max_in_flight: u32,
}

impl Target {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
    pub const DEFAULT_RETRIES: u32 = 1;
    pub const DEFAULT_MAX_REPETITIONS: u32 = 25;
    pub const DEFAULT_MAX_IN_FLIGHT: u32 = 3;
    pub const MAX_IN_FLIGHT: u32 = 8;

    pub fn community(addr: SocketAddr, version: Version, community: &str) -> Self {
        Self {
            addr,
            version,
            credentials: Credentials::Community(community.as_bytes().to_vec()),
            timeout: Self::DEFAULT_TIMEOUT,
            retries: Self::DEFAULT_RETRIES,
            max_repetitions: Self::DEFAULT_MAX_REPETITIONS,
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
        }
    }

    pub fn usm(addr: SocketAddr, user: UsmUser) -> Self {
        Self {
            version: Version::V3,
            credentials: Credentials::Usm(user),
            ..Self::community(addr, Version::V3, "")
        }
    }

    /// The longest a request waits for its last reply before giving up.
    pub fn patience(&self) -> Duration {
        (0..=self.retries)
            .map(|n| self.attempt_window(n, 1.1))
            .sum()
    }

    pub(crate) fn attempt_window(&self, attempt: u32, jitter: f64) -> Duration {
        self.timeout
            .mul_f64(2f64.powi(attempt.min(16) as i32))
            .mul_f64(jitter)
    }
}

impl fmt::Debug for Target {
    // By hand: never the community or passwords.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Target");
        d.field("addr", &self.addr).field("version", &self.version);
        if let Credentials::Usm(u) = &self.credentials {
            d.field("username", &String::from_utf8_lossy(&u.username))
                .field("auth", &u.auth.as_ref().map(|a| a.0))
                .field("privacy", &u.privacy.as_ref().map(|p| p.0));
        }
        d.field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}
