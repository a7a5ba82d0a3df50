//! Device endpoints: one protocol's settings for one device, checked against
//! a schema per protocol and turned into canonical JSON with the secrets
//! apart (to be sealed). The older backend's credential formats are accepted
//! as they are: `timeout` in seconds, and timeout, retries and mode inside
//! `auth`.
use crate::error::{Error, Result};
use serde_json::{Map, Value};
use std::{collections::BTreeMap, fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Snmp,
    Webpa,
    Tr069,
    Usp,
    Hg630,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [Self::Snmp, Self::Webpa, Self::Tr069, Self::Usp, Self::Hg630];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Snmp => "snmp",
            Self::Webpa => "webpa",
            Self::Tr069 => "tr069",
            Self::Usp => "usp",
            Self::Hg630 => "hg630",
        }
    }

    fn schema(self) -> &'static [Field] {
        match self {
            Self::Snmp => SNMP,
            Self::Webpa | Self::Tr069 => ACS,
            Self::Usp => USP,
            Self::Hg630 => HG630,
        }
    }
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(
                    "protocol",
                    format!("unknown protocol {s:?}: expected snmp, webpa, tr069, usp or hg630"),
                )
            })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Secret,
    Host,
    Url,
    Port,
    Count(u64, u64),
    Hex,
    /// Canonical values, each with the spellings also accepted.
    OneOf(&'static [(&'static str, &'static [&'static str])]),
    Object(&'static [Field]),
}

struct Field(&'static str, Kind);

const MILLIS: Kind = Kind::Count(1, 600_000);
const RETRIES: Kind = Kind::Count(0, 10);

const AUTH: &[Field] = &[
    Field(
        "type",
        Kind::OneOf(&[
            ("basic", &[]),
            ("bearer", &["token"]),
            ("api_key", &["apikey", "api-key"]),
            ("none", &[]),
        ]),
    ),
    Field("username", Kind::Text),
    Field("password", Kind::Secret),
    Field("token", Kind::Secret),
    Field("header", Kind::Text),
    Field("key", Kind::Secret),
];

const SNMP: &[Field] = &[
    Field("host", Kind::Host),
    Field("port", Kind::Port),
    Field(
        "version",
        Kind::OneOf(&[("1", &["v1"]), ("2c", &["v2c", "2"]), ("3", &["v3"])]),
    ),
    Field("community", Kind::Secret),
    Field("username", Kind::Text),
    Field(
        "security_level",
        Kind::OneOf(&[
            ("noAuthNoPriv", &["noauthnopriv"]),
            ("authNoPriv", &["authnopriv"]),
            ("authPriv", &["authpriv"]),
        ]),
    ),
    Field(
        "auth_protocol",
        Kind::OneOf(&[
            ("MD5", &[]),
            ("SHA", &["SHA1", "SHA-1"]),
            ("SHA-224", &["SHA224"]),
            ("SHA-256", &["SHA256"]),
            ("SHA-384", &["SHA384"]),
            ("SHA-512", &["SHA512"]),
        ]),
    ),
    Field("auth_password", Kind::Secret),
    Field(
        "priv_protocol",
        Kind::OneOf(&[
            ("DES", &[]),
            ("AES", &["AES128", "AES-128"]),
            ("AES-192", &["AES192"]),
            ("AES-256", &["AES256"]),
        ]),
    ),
    Field("priv_password", Kind::Secret),
    Field("context_name", Kind::Text),
    Field("engine_id", Kind::Hex),
    Field("timeout_ms", MILLIS),
    Field("retries", RETRIES),
    Field("max_repetitions", Kind::Count(1, 1000)),
];

/// WebPA (XMiDT) and TR-069 (an ACS's north-bound API) share a shape.
const ACS: &[Field] = &[
    Field("base_url", Kind::Url),
    Field("device_id", Kind::Text),
    Field("auth", Kind::Object(AUTH)),
    Field("timeout_ms", MILLIS),
    Field("retries", RETRIES),
];

const MQTT: &[Field] = &[
    Field("broker_url", Kind::Url),
    Field("agent_topic", Kind::Text),
    Field("controller_topic", Kind::Text),
    Field("client_id", Kind::Text),
    Field("username", Kind::Text),
    Field("password", Kind::Secret),
];

const USP: &[Field] = &[
    Field("endpoint_id", Kind::Text),
    Field(
        "transport",
        Kind::OneOf(&[
            ("mqtt", &[]),
            ("websocket", &["ws"]),
            ("controller", &["http"]),
        ]),
    ),
    Field("mqtt", Kind::Object(MQTT)),
    Field("websocket_url", Kind::Url),
    Field("base_url", Kind::Url),
    Field("auth", Kind::Object(AUTH)),
    Field("timeout_ms", MILLIS),
    Field("retries", RETRIES),
];

const HG630: &[Field] = &[
    Field("base_url", Kind::Url),
    Field("username", Kind::Text),
    Field("password", Kind::Secret),
    Field(
        "password_scheme",
        Kind::OneOf(&[("current", &[]), ("legacy", &[])]),
    ),
    Field("timeout_ms", MILLIS),
    Field("retries", RETRIES),
];

/// Checked settings: canonical JSON without secrets, and the secrets given,
/// by dotted path (`auth.password`).
#[derive(Clone, PartialEq)]
pub struct Settings {
    pub config: Map<String, Value>,
    pub secrets: BTreeMap<String, String>,
    /// Secrets sent as `null`: to be forgotten rather than kept.
    pub cleared: Vec<String>,
    /// Secrets the settings say were set (`<name>_set: true`, as replies and
    /// exports show them) without giving them.
    pub marked: Vec<String>,
}

impl fmt::Debug for Settings {
    // By hand: secret names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("config", &self.config)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Checks one protocol's settings as a user sent them.
pub fn parse(protocol: Protocol, input: Value) -> Result<Settings> {
    let Value::Object(mut input) = input else {
        return Err(Error::invalid(
            "config",
            "endpoint settings must be a JSON object",
        ));
    };
    adopt_older_format(&mut input)?;
    let mut secrets = BTreeMap::new();
    let mut cleared = Vec::new();
    let mut marked = Vec::new();
    let config = check_object(
        protocol.schema(),
        input,
        "",
        &mut Found {
            secrets: &mut secrets,
            cleared: &mut cleared,
            marked: &mut marked,
        },
    )?;
    Ok(Settings {
        config,
        secrets,
        cleared,
        marked,
    })
}

/// The older backend put `timeout` (seconds), `retries` and USP's `mode`
/// inside `auth`, and `timeout` in seconds at the top.
fn adopt_older_format(input: &mut Map<String, Value>) -> Result<()> {
    if let Some(Value::Object(auth)) = input.get_mut("auth") {
        let moved: Vec<(String, Value)> = ["timeout", "retries", "mode"]
            .into_iter()
            .filter_map(|k| auth.remove(k).map(|v| (k.to_owned(), v)))
            .collect();
        for (key, value) in moved {
            let key = if key == "mode" {
                "transport".to_owned()
            } else {
                key
            };
            input.entry(key).or_insert(value);
        }
    }
    if let Some(timeout) = input.remove("timeout") {
        let seconds = match &timeout {
            Value::String(s) => s.trim().parse().ok(),
            other => other.as_f64(),
        };
        let seconds = seconds.filter(|s: &f64| *s > 0.0).ok_or_else(|| {
            Error::invalid(
                "timeout",
                "timeout is a number of seconds (or give timeout_ms)",
            )
        })?;
        input
            .entry("timeout_ms")
            .or_insert(Value::from((seconds * 1000.0).round() as u64));
    }
    Ok(())
}

/// What checking finds besides the settings: secrets given, cleared, marked.
struct Found<'a> {
    secrets: &'a mut BTreeMap<String, String>,
    cleared: &'a mut Vec<String>,
    marked: &'a mut Vec<String>,
}

fn check_object(
    schema: &'static [Field],
    input: Map<String, Value>,
    prefix: &str,
    found: &mut Found<'_>,
) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for (key, value) in input {
        let path = format!("{prefix}{key}");
        // `<secret>_set`, as replies and exports show a secret: no value.
        if let Some(secret) = key.strip_suffix("_set")
            && schema
                .iter()
                .any(|f| f.0 == secret && matches!(f.1, Kind::Secret))
        {
            match value {
                Value::Bool(true) => found.marked.push(format!("{prefix}{secret}")),
                Value::Bool(false) | Value::Null => {}
                _ => return Err(Error::invalid(path, format!("{key} is true or false"))),
            }
            continue;
        }
        let Some(Field(_, kind)) = schema.iter().find(|f| f.0 == key) else {
            let known: Vec<&str> = schema.iter().map(|f| f.0).collect();
            return Err(Error::invalid(
                path,
                format!("unknown field {key:?}; known: {}", known.join(", ")),
            ));
        };
        if value.is_null() {
            if matches!(kind, Kind::Secret) {
                found.cleared.push(path);
            }
            continue;
        }
        let bad = |why: &str| Error::invalid(path.clone(), format!("{path}: {why}"));
        let text = || {
            value
                .as_str()
                .map(str::trim)
                .filter(|s| s.len() <= 1024)
                .ok_or_else(|| bad("must be text of at most 1024 bytes"))
        };
        let checked = match *kind {
            Kind::Text => Value::from(text()?),
            Kind::Secret => {
                let secret = value.as_str().ok_or_else(|| bad("must be text"))?;
                if secret.is_empty() {
                    return Err(bad("must be non-empty text (null forgets a stored one)"));
                }
                if secret.len() > 4096 {
                    return Err(bad("is too long: at most 4096 bytes"));
                }
                found.secrets.insert(path, secret.to_owned());
                continue;
            }
            Kind::Host => {
                let host = text()?;
                if !valid_host(host) {
                    return Err(bad("must be an IP address or a host name"));
                }
                Value::from(host)
            }
            Kind::Url => {
                let parsed =
                    url::Url::parse(text()?).map_err(|e| bad(&format!("not a URL ({e})")))?;
                if !["http", "https", "ws", "wss", "mqtt", "mqtts", "tcp", "ssl"]
                    .contains(&parsed.scheme())
                    || parsed.host().is_none()
                {
                    return Err(bad("must be an http(s), ws(s) or mqtt(s) URL with a host"));
                }
                Value::from(parsed.as_str().trim_end_matches('/'))
            }
            Kind::Port => Value::from(
                number(&value, 1, 65_535).ok_or_else(|| bad("must be a port, 1 to 65535"))?,
            ),
            Kind::Count(min, max) => Value::from(
                number(&value, min, max)
                    .ok_or_else(|| bad(&format!("must be a whole number from {min} to {max}")))?,
            ),
            Kind::Hex => {
                let hex = text()?.trim_start_matches("0x");
                let ok = (10..=64).contains(&hex.len())
                    && hex.len() % 2 == 0
                    && hex.chars().all(|c| c.is_ascii_hexdigit());
                if !ok {
                    return Err(bad("must be 5 to 32 bytes of hex"));
                }
                Value::from(hex.to_ascii_lowercase())
            }
            Kind::OneOf(choices) => {
                let given = match &value {
                    Value::Number(n) => n.to_string(),
                    _ => text()?.to_owned(),
                };
                let found = choices.iter().find(|(canon, aliases)| {
                    canon.eq_ignore_ascii_case(&given)
                        || aliases.iter().any(|a| a.eq_ignore_ascii_case(&given))
                });
                let Some((canon, _)) = found else {
                    let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
                    return Err(bad(&format!(
                        "{given:?} is not one of {}",
                        names.join(", ")
                    )));
                };
                Value::from(*canon)
            }
            Kind::Object(fields) => {
                let Value::Object(inner) = value else {
                    return Err(bad("must be an object"));
                };
                Value::Object(check_object(fields, inner, &format!("{path}."), found)?)
            }
        };
        out.insert(key, checked);
    }
    Ok(out)
}

fn number(value: &Value, min: u64, max: u64) -> Option<u64> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (min..=max).contains(&n).then_some(n)
}

fn valid_host(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Some(v6) = bare {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if host.parse::<std::net::IpAddr>().is_ok() {
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

/// Whether `host` is a valid IP address or host name.
pub fn is_valid_host(host: &str) -> bool {
    valid_host(host)
}

/// An address named in endpoint settings: the field, the host, and the port
/// (0 where the settings name none).
pub type Address = (String, String, u16);

/// Every address in checked settings: hosts (with `port`), and the host and
/// port of every URL (base URLs, brokers). The address policy vets each.
pub fn addresses(protocol: Protocol, config: &Map<String, Value>) -> Vec<Address> {
    fn walk(schema: &[Field], config: &Map<String, Value>, prefix: &str, out: &mut Vec<Address>) {
        let port = config.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
        for Field(name, kind) in schema {
            let Some(value) = config.get(*name) else {
                continue;
            };
            let path = format!("{prefix}{name}");
            match (kind, value) {
                (Kind::Host, Value::String(host)) => out.push((path, host.clone(), port)),
                (Kind::Url, Value::String(url)) => {
                    if let Ok(url) = url::Url::parse(url)
                        && let Some(host) = url.host_str()
                    {
                        let port = url.port_or_known_default().unwrap_or(0);
                        out.push((path, host.to_owned(), port));
                    }
                }
                (Kind::Object(fields), Value::Object(inner)) => {
                    walk(fields, inner, &format!("{path}."), out);
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(protocol.schema(), config, "", &mut out);
    out
}

/// Checks what a complete endpoint needs, given which secrets it holds
/// (sent now or kept from before) and the device's address. Fills in what
/// follows from the rest (SNMPv3's security level).
pub fn complete(
    protocol: Protocol,
    config: &mut Map<String, Value>,
    secrets: &[&str],
    device_address: &str,
) -> Result<()> {
    let has = |config: &Map<String, Value>, k: &str| config.get(k).is_some_and(|v| !v.is_null());
    let secret = |k: &str| secrets.contains(&k);
    let need = |ok: bool, field: &str, why: &str| {
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(field, why.to_owned()))
        }
    };
    match protocol {
        Protocol::Snmp => {
            need(
                has(config, "host") || !device_address.is_empty(),
                "host",
                "host is required (or give the device an address)",
            )?;
            let version = config
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            need(
                !version.is_empty(),
                "version",
                "version is required: 1, 2c or 3",
            )?;
            if version != "3" {
                need(
                    secret("community"),
                    "community",
                    "versions 1 and 2c need a community",
                )?;
                for v3 in [
                    "username",
                    "security_level",
                    "auth_protocol",
                    "priv_protocol",
                    "context_name",
                    "engine_id",
                ] {
                    need(!has(config, v3), v3, &format!("{v3} is for version 3 only"))?;
                }
                for v3 in ["auth_password", "priv_password"] {
                    need(!secret(v3), v3, &format!("{v3} is for version 3 only"))?;
                }
                return Ok(());
            }
            need(
                !secret("community"),
                "community",
                "version 3 uses users, not a community (send \"community\": null to forget a stored one)",
            )?;
            need(
                has(config, "username"),
                "username",
                "version 3 needs a username",
            )?;
            let level = match config.get("security_level").and_then(Value::as_str) {
                Some(level) => level.to_owned(),
                None if has(config, "priv_protocol") || secret("priv_password") => {
                    "authPriv".to_owned()
                }
                None if has(config, "auth_protocol") || secret("auth_password") => {
                    "authNoPriv".to_owned()
                }
                None => "noAuthNoPriv".to_owned(),
            };
            let auth = level != "noAuthNoPriv";
            let privacy = level == "authPriv";
            need(
                auth || !has(config, "auth_protocol"),
                "auth_protocol",
                "noAuthNoPriv takes no auth_protocol",
            )?;
            need(
                !auth || has(config, "auth_protocol"),
                "auth_protocol",
                &format!("{level} needs auth_protocol"),
            )?;
            need(
                !auth || secret("auth_password"),
                "auth_password",
                &format!("{level} needs auth_password"),
            )?;
            need(
                privacy || !has(config, "priv_protocol"),
                "priv_protocol",
                &format!("{level} takes no priv_protocol"),
            )?;
            need(
                !privacy || has(config, "priv_protocol"),
                "priv_protocol",
                "authPriv needs priv_protocol",
            )?;
            need(
                !privacy || secret("priv_password"),
                "priv_password",
                "authPriv needs priv_password",
            )?;
            config.insert("security_level".into(), Value::from(level));
            Ok(())
        }
        Protocol::Webpa | Protocol::Tr069 => {
            need(has(config, "base_url"), "base_url", "base_url is required")?;
            complete_auth(config, secrets, "auth")
        }
        Protocol::Usp => {
            if !has(config, "transport") && has(config, "base_url") {
                config.insert("transport".into(), Value::from("controller"));
            }
            match config.get("transport").and_then(Value::as_str) {
                Some("mqtt") => {
                    let mqtt = config.get("mqtt").and_then(Value::as_object);
                    let field = |k: &str| mqtt.is_some_and(|m| m.contains_key(k));
                    need(
                        field("broker_url"),
                        "mqtt.broker_url",
                        "the mqtt transport needs mqtt.broker_url",
                    )?;
                    need(
                        field("agent_topic"),
                        "mqtt.agent_topic",
                        "the mqtt transport needs mqtt.agent_topic",
                    )?;
                    need(
                        has(config, "endpoint_id"),
                        "endpoint_id",
                        "the mqtt transport needs the agent's endpoint_id",
                    )
                }
                Some("websocket") => {
                    need(
                        has(config, "websocket_url"),
                        "websocket_url",
                        "the websocket transport needs websocket_url",
                    )?;
                    need(
                        has(config, "endpoint_id"),
                        "endpoint_id",
                        "the websocket transport needs the agent's endpoint_id",
                    )
                }
                Some(_) => {
                    need(
                        has(config, "base_url"),
                        "base_url",
                        "the controller transport needs the controller's base_url",
                    )?;
                    complete_auth(config, secrets, "auth")
                }
                None => Err(Error::invalid(
                    "transport",
                    "transport is required: mqtt, websocket or controller",
                )),
            }
        }
        Protocol::Hg630 => {
            need(has(config, "base_url"), "base_url", "base_url is required")?;
            need(
                secret("password"),
                "password",
                "the router's password is required",
            )?;
            config
                .entry("username")
                .or_insert_with(|| Value::from("admin"));
            config
                .entry("password_scheme")
                .or_insert_with(|| Value::from("current"));
            Ok(())
        }
    }
}

fn complete_auth(config: &mut Map<String, Value>, secrets: &[&str], at: &str) -> Result<()> {
    let Some(Value::Object(auth)) = config.get_mut(at) else {
        return Ok(());
    };
    let kind = auth
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_owned();
    let secret = |k: &str| secrets.contains(&format!("{at}.{k}").as_str());
    let missing =
        |k: &str| Error::invalid(format!("{at}.{k}"), format!("{kind} auth needs {at}.{k}"));
    match kind.as_str() {
        "basic" if !auth.contains_key("username") => Err(missing("username")),
        "basic" if !secret("password") => Err(missing("password")),
        "bearer" if !secret("token") => Err(missing("token")),
        "api_key" if !secret("key") => Err(missing("key")),
        "api_key" => {
            auth.entry("header")
                .or_insert_with(|| Value::from("X-API-Key"));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The settings as replies show them: each secret held appears as
/// `<name>_set: true` where the secret would be.
pub fn redacted(config: &Map<String, Value>, secrets: &[&str]) -> Map<String, Value> {
    fn mark(map: &mut Map<String, Value>, path: &[&str]) {
        match path {
            [] => {}
            [leaf] => {
                map.insert(format!("{leaf}_set"), Value::Bool(true));
            }
            [object, rest @ ..] => {
                if let Value::Object(inner) = map
                    .entry(*object)
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    mark(inner, rest);
                }
            }
        }
    }
    let mut out = config.clone();
    for path in secrets {
        mark(&mut out, &path.split('.').collect::<Vec<_>>());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(protocol: Protocol, input: Value, address: &str) -> (Map<String, Value>, Vec<String>) {
        let mut s = parse(protocol, input).unwrap();
        let names: Vec<&str> = s.secrets.keys().map(String::as_str).collect();
        complete(protocol, &mut s.config, &names, address).unwrap();
        (s.config, s.secrets.into_keys().collect())
    }

    fn field_of(protocol: Protocol, input: Value) -> String {
        let err = parse(protocol, input).and_then(|mut s| {
            let names: Vec<&str> = s.secrets.keys().map(String::as_str).collect();
            complete(protocol, &mut s.config, &names, "")
        });
        err.unwrap_err().field().unwrap_or_default().to_owned()
    }

    #[test]
    fn the_older_snmp_format_is_accepted_as_it_is() {
        let seed = json!({"version": "3", "username": "snmpuser", "auth_protocol": "SHA", "auth_password": "authpass123",
            "priv_protocol": "AES", "priv_password": "privpass456", "port": 161, "timeout": 5.0, "retries": 3});
        let (config, secrets) = ok(Protocol::Snmp, seed, "10.0.0.1");
        assert_eq!(config["timeout_ms"], 5000);
        assert_eq!(config["security_level"], "authPriv");
        assert_eq!(secrets, ["auth_password", "priv_password"]);
        assert!(!serde_json::to_string(&config).unwrap().contains("pass"));
        let shown = redacted(&config, &["auth_password", "priv_password"]);
        assert_eq!(
            (
                shown["auth_password_set"].clone(),
                shown["priv_password_set"].clone()
            ),
            (json!(true), json!(true))
        );
    }

    #[test]
    fn the_older_acs_and_usp_formats_are_accepted_as_they_are() {
        let webpa = json!({"base_url": "http://device-ip:8080", "auth": {"type": "bearer", "token": "t", "timeout": 30.0, "retries": 3}});
        let (config, secrets) = ok(Protocol::Webpa, webpa, "");
        assert_eq!(
            (config["timeout_ms"].clone(), config["retries"].clone()),
            (json!(30000), json!(3))
        );
        assert_eq!(secrets, ["auth.token"]);
        let usp = json!({"base_url": "http://usp-controller:8080", "auth": {"type": "bearer", "token": "t", "mode": "http", "timeout": 30.0, "retries": 3}});
        assert_eq!(ok(Protocol::Usp, usp, "").0["transport"], "controller");
        let tr069 = json!({"base_url": "http://acs:8080", "auth": {"type": "basic", "username": "acs_admin", "password": "p", "timeout": 60.0, "retries": 3}});
        assert_eq!(ok(Protocol::Tr069, tr069, "").1, ["auth.password"]);
    }

    #[test]
    fn secrets_marked_set_are_noted_not_taken_as_values() {
        let s = parse(
            Protocol::Webpa,
            json!({"base_url": "http://acs:7557", "auth": {"type": "basic", "username": "u", "password_set": true}}),
        )
        .unwrap();
        assert_eq!(s.marked, ["auth.password"]);
        assert!(s.secrets.is_empty());
        let s = parse(
            Protocol::Snmp,
            json!({"version": "2c", "community_set": false}),
        )
        .unwrap();
        assert!(s.marked.is_empty());
        let e = parse(Protocol::Snmp, json!({"community_set": "yes"})).unwrap_err();
        assert_eq!(e.field(), Some("community_set"));
        // Only secrets have markers.
        let e = parse(Protocol::Snmp, json!({"port_set": true})).unwrap_err();
        assert_eq!(e.field(), Some("port_set"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let cases = [
            (
                Protocol::Snmp,
                json!({"host": "10.0.0.1", "version": "2c", "community": "c", "port": 70000}),
                "port",
            ),
            (
                Protocol::Snmp,
                json!({"host": "not a host!", "version": "2c", "community": "c"}),
                "host",
            ),
            (
                Protocol::Snmp,
                json!({"host": "10.0.0.1", "version": "4", "community": "c"}),
                "version",
            ),
            (
                Protocol::Snmp,
                json!({"host": "10.0.0.1", "version": "2c"}),
                "community",
            ),
            (
                Protocol::Snmp,
                json!({"host": "h", "version": "3", "username": "u", "security_level": "authPriv", "auth_protocol": "SHA", "auth_password": "authpass1", "priv_protocol": "AES"}),
                "priv_password",
            ),
            (
                Protocol::Snmp,
                json!({"host": "h", "version": "3", "username": "u", "auth_protocol": "SHA-999"}),
                "auth_protocol",
            ),
            (
                Protocol::Snmp,
                json!({"version": "2c", "community": "c"}),
                "host",
            ),
            (
                Protocol::Snmp,
                json!({"host": "h", "version": "2c", "community": "c", "colour": "red"}),
                "colour",
            ),
            (Protocol::Webpa, json!({"base_url": "ftp://x"}), "base_url"),
            (
                Protocol::Webpa,
                json!({"base_url": "http://x", "auth": {"type": "basic", "username": "u"}}),
                "auth.password",
            ),
            (
                Protocol::Usp,
                json!({"transport": "mqtt", "endpoint_id": "os::1", "mqtt": {"agent_topic": "a"}}),
                "mqtt.broker_url",
            ),
            (
                Protocol::Hg630,
                json!({"base_url": "http://192.168.1.1"}),
                "password",
            ),
        ];
        for (protocol, input, field) in cases {
            assert_eq!(
                field_of(protocol, input.clone()),
                field,
                "{protocol} {input}"
            );
        }
    }
}

/// The settings with their secrets put back at their paths (for a
/// protocol service, never for a reply).
pub fn with_secrets(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Map<String, Value> {
    fn put(map: &mut Map<String, Value>, path: &[&str], secret: &str) {
        match path {
            [] => {}
            [leaf] => {
                map.insert((*leaf).to_owned(), Value::from(secret));
            }
            [object, rest @ ..] => {
                if let Value::Object(inner) = map
                    .entry(*object)
                    .or_insert_with(|| Value::Object(Map::new()))
                {
                    put(inner, rest, secret);
                }
            }
        }
    }
    let mut out = config.clone();
    for (path, secret) in secrets {
        put(&mut out, &path.split('.').collect::<Vec<_>>(), secret);
    }
    out
}

/// `google.protobuf.Struct` to JSON and back (how endpoint settings travel).
pub mod structs {
    use prost_types::{ListValue, Struct, Value as PValue, value::Kind};
    use serde_json::{Map, Value};

    pub fn to_json(s: &Struct) -> Value {
        Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), value_to_json(v)))
                .collect(),
        )
    }

    fn value_to_json(v: &PValue) -> Value {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::BoolValue(b)) => Value::Bool(*b),
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                Value::from(*n as i64)
            }
            Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Some(Kind::StringValue(s)) => Value::String(s.clone()),
            Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
            Some(Kind::StructValue(s)) => to_json(s),
        }
    }

    pub fn from_json(map: &Map<String, Value>) -> Struct {
        Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_to_value(v)))
                .collect(),
        }
    }

    fn json_to_value(v: &Value) -> PValue {
        let kind = match v {
            Value::Null => Kind::NullValue(0),
            Value::Bool(b) => Kind::BoolValue(*b),
            Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            Value::String(s) => Kind::StringValue(s.clone()),
            Value::Array(a) => Kind::ListValue(ListValue {
                values: a.iter().map(json_to_value).collect(),
            }),
            Value::Object(m) => Kind::StructValue(from_json(m)),
        };
        PValue { kind: Some(kind) }
    }
}
