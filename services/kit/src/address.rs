//! The one address policy for every address rdm connects to on a tenant's
//! behalf: device addresses, endpoint hosts, base URLs, brokers. A platform
//! deny list (loopback, link-local and cloud metadata, unspecified and
//! multicast, plus whatever the operator adds: the cluster's own ranges)
//! refuses an address unless the platform admin allowed its network to the
//! tenant; rdm's own listeners are refused always. Names are resolved once
//! and the vetted IP is what the caller connects to.
use crate::error::{Error, Result};
use ipnet::IpNet;
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

/// Networks refused by default, with the reason a refusal names.
pub const DEFAULT_DENY: &[(&str, &str)] = &[
    ("127.0.0.0/8", "loopback"),
    ("::1/128", "loopback"),
    ("0.0.0.0/8", "unspecified"),
    ("::/128", "unspecified"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("fe80::/10", "link-local"),
    ("fd00:ec2::254/128", "cloud metadata"),
    ("100.100.100.200/32", "cloud metadata"),
    ("224.0.0.0/4", "multicast"),
    ("ff00::/8", "multicast"),
    ("255.255.255.255/32", "broadcast"),
];

/// How long resolving one name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// The platform's half of the policy; a tenant's allowed networks are the other.
#[derive(Clone, Debug)]
pub struct AddressPolicy {
    deny: Arc<Vec<(IpNet, String)>>,
    /// rdm's own listeners: never a target, whatever a tenant is allowed.
    own: Arc<Vec<SocketAddr>>,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        Self::new(&[]).expect("the default deny list parses")
    }
}

/// Settings of the address policy (every service that connects to devices,
/// and the inventory, which checks addresses as they are stored).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct AddressArgs {
    /// Networks no tenant may target unless a platform admin allowed them to
    /// it, on top of the built-in list (loopback, link-local and metadata,
    /// unspecified, multicast): put the cluster's pod and service ranges here.
    #[arg(long, env = "RDM_TARGET_DENY_CIDRS", value_delimiter = ',')]
    pub target_deny_cidrs: Vec<String>,
}

impl AddressArgs {
    pub fn policy(&self) -> anyhow::Result<AddressPolicy> {
        AddressPolicy::new(&self.target_deny_cidrs)
    }
}

impl AddressPolicy {
    /// The built-in deny list plus `extra` CIDRs.
    pub fn new(extra: &[String]) -> anyhow::Result<Self> {
        let mut deny = Vec::new();
        for (cidr, why) in DEFAULT_DENY {
            deny.push((cidr.parse()?, (*why).to_owned()));
        }
        for cidr in extra.iter().map(|c| c.trim()).filter(|c| !c.is_empty()) {
            let net: IpNet = cidr
                .parse()
                .map_err(|_| anyhow::anyhow!("RDM_TARGET_DENY_CIDRS: {cidr:?} is not a CIDR"))?;
            deny.push((net, format!("platform deny list ({net})")));
        }
        Ok(Self {
            deny: Arc::new(deny),
            own: Arc::default(),
        })
    }

    /// The same policy, also refusing rdm's own listeners.
    pub fn with_own_listeners(mut self, own: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut all: Vec<SocketAddr> = self.own.as_ref().clone();
        all.extend(own);
        self.own = Arc::new(all);
        self
    }

    /// Whether `ip` (port `port`, 0 for any) may be a target of a tenant
    /// allowed `allowed`; the error names the rule that refused it.
    pub fn check(&self, ip: IpAddr, port: u16, allowed: &[IpNet]) -> Result<()> {
        let ip = ip.to_canonical(); // ::ffff:127.0.0.1 is 127.0.0.1
        if self
            .own
            .iter()
            .any(|own| own.port() == port && (own.ip() == ip || own.ip().is_unspecified()))
        {
            return Err(refused(ip, "it is one of rdm's own listeners"));
        }
        if allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match self.deny.iter().find(|(net, _)| net.contains(&ip)) {
            Some((_, why)) => Err(refused(
                ip,
                &format!(
                    "{why} addresses are denied unless a platform admin allows them to the tenant"
                ),
            )),
            None => Ok(()),
        }
    }

    /// Checks what can be checked without a lookup: an IP literal, or a name
    /// that always means this host (`localhost`). Other names are checked when
    /// they are resolved, at connect time.
    pub fn check_stored(&self, host: &str, port: u16, allowed: &[IpNet]) -> Result<()> {
        let host = host.trim().trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.check(ip, port, allowed);
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return self.check(IpAddr::from([127, 0, 0, 1]), port, allowed);
        }
        Ok(())
    }

    /// Resolves `host` once and returns the address to connect to: every
    /// address the name has must pass (a name with one denied address is
    /// refused: DNS answers can rotate).
    pub async fn resolve(&self, host: &str, port: u16, allowed: &[IpNet]) -> Result<SocketAddr> {
        let ips = lookup(host).await?;
        for ip in &ips {
            self.check(*ip, port, allowed).map_err(|e| {
                Error::permission_denied(format!("{host}: {}", e.message))
                    .with_meta("rule", e.metadata.get("rule").cloned().unwrap_or_default())
            })?;
        }
        let ip = ips
            .first()
            .ok_or_else(|| Error::invalid("host", format!("{host} resolves to no address")))?;
        Ok(SocketAddr::new(*ip, port))
    }
}

/// An HTTP client for one of a tenant's URLs (a WebPA, ACS, HG630 or
/// Mellophone base URL): its host is resolved once here and every address
/// vetted (with the URL's port, so rdm's own listeners are refused too), the
/// client connects to those addresses only (no second lookup), through no
/// proxy, and follows no redirect (one could point anywhere).
pub async fn http_client(
    policy: &AddressPolicy,
    allowed: &[IpNet],
    url: &url::Url,
    timeout: Duration,
) -> Result<reqwest::Client> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::invalid("base_url", "the URL names no host"))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Error::invalid("base_url", "the URL names no port"))?;
    let mut vetted = Vec::new();
    for ip in lookup(host).await? {
        policy.check(ip, port, allowed).map_err(|e| {
            Error::permission_denied(format!("{host}: {}", e.message))
                .with_meta("rule", e.metadata.get("rule").cloned().unwrap_or_default())
        })?;
        vetted.push(SocketAddr::new(ip, port));
    }
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout);
    if host.parse::<IpAddr>().is_err() && !host.starts_with('[') {
        builder = builder.resolve_to_addrs(host, &vetted);
    }
    builder
        .build()
        .map_err(|e| Error::internal("building an HTTP client", e))
}

/// Vetted HTTP clients kept for reuse (their connections with them), by
/// origin and the tenant's allowed networks. A client is built again after
/// [`HttpClients::TTL`], so a name is looked up and vetted again that often.
#[derive(Clone)]
pub struct HttpClients {
    policy: AddressPolicy,
    cache: Arc<std::sync::Mutex<ClientCache>>,
}

/// Clients by origin and allowed networks, with when each was made.
type ClientCache = HashMap<(String, Vec<IpNet>), (Instant, reqwest::Client)>;

impl HttpClients {
    const TTL: Duration = Duration::from_secs(60);
    /// Clients kept at most; past that, the expired ones go, or all.
    const MAX: usize = 10_000;
    /// The longest any request may take; each request sets its own.
    const MAX_TIMEOUT: Duration = Duration::from_secs(600);

    pub fn new(policy: AddressPolicy) -> Self {
        Self {
            policy,
            cache: Arc::default(),
        }
    }

    /// A client for `url`'s origin, vetted for a tenant allowed `allowed`.
    async fn get(&self, url: &url::Url, allowed: &[IpNet]) -> Result<reqwest::Client> {
        let key = (url.origin().ascii_serialization(), allowed.to_vec());
        let now = Instant::now();
        if let Some((made, client)) = self.lock().get(&key)
            && now.duration_since(*made) < Self::TTL
        {
            return Ok(client.clone());
        }
        let client = http_client(&self.policy, allowed, url, Self::MAX_TIMEOUT).await?;
        let mut cache = self.lock();
        if cache.len() >= Self::MAX {
            cache.retain(|_, (made, _)| now.duration_since(*made) < Self::TTL);
            if cache.len() >= Self::MAX {
                cache.clear();
            }
        }
        cache.insert(key, (now, client.clone()));
        Ok(client)
    }

    /// A client for a resolved endpoint's `base_url`, vetted against the
    /// tenant's allowed networks the inventory returned with it.
    pub async fn for_target(
        &self,
        base_url: &str,
        allowed_cidrs: &[String],
    ) -> Result<(url::Url, reqwest::Client)> {
        let url: url::Url = base_url
            .parse()
            .map_err(|_| Error::invalid("base_url", "not a URL"))?;
        let allowed: Vec<IpNet> = allowed_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect();
        let client = self.get(&url, &allowed).await?;
        Ok((url, client))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClientCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn refused(ip: IpAddr, why: &str) -> Error {
    Error::permission_denied(format!("address {ip} is refused: {why}")).with_meta(
        "rule",
        why.split(" addresses").next().unwrap_or(why).to_owned(),
    )
}

/// The addresses of `host`: itself when it is an IP literal (`[::1]` too).
pub async fn lookup(host: &str) -> Result<Vec<IpAddr>> {
    let bare = host.trim().trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if !is_valid_host(bare) {
        return Err(Error::invalid(
            "host",
            "not an IP address or host name".to_owned(),
        ));
    }
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((bare, 0)))
        .await
        .map_err(|_| Error::invalid("host", format!("resolving {bare} timed out")))?
        .map_err(|e| Error::invalid("host", format!("cannot resolve {bare}: {e}")))?;
    let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    ips.dedup();
    Ok(ips)
}

/// Whether `host` is an IP address (`[::1]` too) or a DNS host name.
pub fn is_valid_host(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Some(v6) = bare {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.parse::<IpAddr>().is_ok() {
        return true;
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Parses stored allowed-network text (`10.0.0.0/8,::1/128`).
pub fn parse_allowed(text: &str) -> Vec<IpNet> {
    text.split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_deny_list_refuses_what_a_tenant_was_not_given() {
        let policy = AddressPolicy::new(&["10.96.0.0/12".into()]).unwrap();
        let none: &[IpNet] = &[];
        for (addr, rule) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("fd00:ec2::254", "cloud metadata"),
            ("0.0.0.0", "unspecified"),
            ("10.96.0.1", "platform deny list (10.96.0.0/12)"),
        ] {
            let err = policy.check(ip(addr), 161, none).unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::PermissionDenied, "{addr}");
            assert_eq!(err.metadata["rule"], rule, "{addr}");
            assert!(
                err.message.contains(&ip(addr).to_canonical().to_string()),
                "{}",
                err.message
            );
        }
        for addr in ["192.0.2.10", "10.20.30.40", "2001:db8::1"] {
            assert!(policy.check(ip(addr), 161, none).is_ok(), "{addr}");
        }
    }

    #[test]
    fn a_tenant_allowed_loopback_still_cannot_reach_rdm_itself() {
        let gateway: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let policy = AddressPolicy::default().with_own_listeners([gateway]);
        let loopback = parse_allowed("127.0.0.0/8,::1/128");
        assert!(policy.check(ip("127.0.0.1"), 161, &loopback).is_ok());
        let err = policy.check(ip("127.0.0.1"), 8080, &loopback).unwrap_err();
        assert!(
            err.message.contains("rdm's own listeners"),
            "{}",
            err.message
        );
        // Listening on every address: that port on any address is ours.
        let any = AddressPolicy::default().with_own_listeners(["0.0.0.0:50051".parse().unwrap()]);
        assert!(any.check(ip("127.0.0.5"), 50051, &loopback).is_err());
    }

    #[test]
    fn stored_names_for_this_host_are_refused_and_other_names_wait() {
        let policy = AddressPolicy::default();
        for host in [
            "localhost",
            "LOCALHOST.",
            "db.localhost",
            "[::1]",
            "127.0.0.2",
        ] {
            assert!(policy.check_stored(host, 0, &[]).is_err(), "{host}");
        }
        assert!(policy.check_stored("cpe-1.example.net", 0, &[]).is_ok());
    }

    /// A local web server answering `/` with 200 and `/away` with a redirect
    /// to the cloud metadata address.
    async fn web_server() -> SocketAddr {
        use axum::{Router, response::Redirect, routing::get};
        let app = Router::new().route("/", get(|| async { "hello" })).route(
            "/away",
            get(|| async { Redirect::temporary("http://169.254.169.254/latest/meta-data") }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn http_clients_connect_only_to_vetted_addresses_and_follow_no_redirect() {
        let server = web_server().await;
        let url = |host: &str, path: &str| {
            url::Url::parse(&format!("http://{host}:{}{path}", server.port())).unwrap()
        };
        let policy = AddressPolicy::default();
        let t = Duration::from_secs(5);
        // Not allowed loopback: refused before any connection, by IP or name.
        for host in ["127.0.0.1", "localhost", "[::1]"] {
            let err = http_client(&policy, &[], &url(host, "/"), t)
                .await
                .unwrap_err();
            assert_eq!(err.code, crate::ErrorCode::PermissionDenied, "{host}");
        }
        let loopback = parse_allowed("127.0.0.0/8,::1/128");
        let client = http_client(&policy, &loopback, &url("localhost", "/"), t)
            .await
            .unwrap();
        let body = client
            .get(url("localhost", "/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hello");
        // A redirect to a denied address is handed back, not followed.
        let away = client.get(url("localhost", "/away")).send().await.unwrap();
        assert_eq!(away.status(), reqwest::StatusCode::TEMPORARY_REDIRECT);
        // rdm's own ports stay refused, loopback allowed or not.
        let own = AddressPolicy::default().with_own_listeners([server]);
        let err = http_client(&own, &loopback, &url("127.0.0.1", "/"), t)
            .await
            .unwrap_err();
        assert!(
            err.message.contains("rdm's own listeners"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_resolved_name_is_vetted_and_returned_as_an_ip() {
        let policy = AddressPolicy::default();
        let err = policy.resolve("localhost", 161, &[]).await.unwrap_err();
        assert_eq!(err.code, crate::ErrorCode::PermissionDenied);
        assert!(err.message.starts_with("localhost: "), "{}", err.message);
        let ok = policy
            .resolve("localhost", 161, &parse_allowed("127.0.0.0/8,::1/128"))
            .await
            .unwrap();
        assert!(ok.ip().is_loopback() && ok.port() == 161);
        assert_eq!(
            policy
                .resolve("[::1]", 1, &parse_allowed("::1/128"))
                .await
                .unwrap(),
            "[::1]:1".parse().unwrap()
        );
    }
}
