//! What each protocol's endpoint needs beyond the rules of its .proto
//! (the fields that go together, the defaults that follow from the rest),
//! and the one translation from the older backend's credential JSON.
use rdm_kit::{Error, Result};
use serde_json::{Map, Value};

/// The older backend's credential JSON, as an import may carry it, in the
/// form the settings messages take. Documented in the README ("Importing
/// from the older backend"):
/// - `timeout` in seconds (at the top or inside `auth`) becomes `timeout_ms`;
/// - `retries` inside `auth` moves to the top, and USP's `auth.mode`
///   becomes `transport` (`http` is `controller`, `ws` is `websocket`; with
///   none, a `base_url` alone means `controller`);
/// - names it spelled other ways become the canonical ones: SNMP versions
///   `v1`, `v2c`, `2`, `v3`; security levels in any case; `SHA1`, `SHA256`,
///   `AES128`, `AES-128`, ... ; auth types `token` and `apikey`.
pub fn translate(protocol: &str, input: Value) -> Result<Value> {
    let Value::Object(mut input) = input else {
        return Ok(input);
    };
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
        let seconds = seconds
            .filter(|s: &f64| *s > 0.0 && *s <= 600.0)
            .ok_or_else(|| {
                Error::invalid(
                    "timeout",
                    "timeout is a number of seconds, at most 600 (or give timeout_ms)",
                )
            })?;
        input
            .entry("timeout_ms")
            .or_insert(Value::from((seconds * 1000.0).round() as u64));
    }
    let aliases: &[(&str, Choices)] = match protocol {
        "snmp" => &[
            (
                "version",
                &[("1", &["v1"]), ("2c", &["v2c", "2"]), ("3", &["v3"])],
            ),
            (
                "security_level",
                &[
                    ("noAuthNoPriv", &["noauthnopriv"]),
                    ("authNoPriv", &["authnopriv"]),
                    ("authPriv", &["authpriv"]),
                ],
            ),
            (
                "auth_protocol",
                &[
                    ("MD5", &["md5"]),
                    ("SHA", &["SHA1", "SHA-1", "sha"]),
                    ("SHA-224", &["SHA224"]),
                    ("SHA-256", &["SHA256"]),
                    ("SHA-384", &["SHA384"]),
                    ("SHA-512", &["SHA512"]),
                ],
            ),
            (
                "priv_protocol",
                &[
                    ("DES", &["des"]),
                    ("AES", &["AES128", "AES-128", "aes"]),
                    ("AES-192", &["AES192"]),
                    ("AES-256", &["AES256"]),
                ],
            ),
        ],
        "usp" => &[(
            "transport",
            &[("websocket", &["ws"]), ("controller", &["http"])],
        )],
        _ => &[],
    };
    for (field, choices) in aliases {
        canonical(&mut input, field, choices);
    }
    // A USP endpoint with only a controller's URL goes through it.
    if protocol == "usp" && !input.contains_key("transport") && input.contains_key("base_url") {
        input.insert("transport".into(), Value::from("controller"));
    }
    if let Some(Value::Object(auth)) = input.get_mut("auth") {
        canonical(
            auth,
            "type",
            &[("bearer", &["token"]), ("api_key", &["apikey", "api-key"])],
        );
    }
    Ok(Value::Object(input))
}

/// A closed set's values, each with the other spellings it takes.
type Choices<'a> = &'a [(&'a str, &'a [&'a str])];

/// Replaces an alias (any case) of a closed set's value by the value.
fn canonical(map: &mut Map<String, Value>, field: &str, choices: Choices) {
    let Some(given) = map.get(field).map(|v| match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => String::new(),
    }) else {
        return;
    };
    let found = choices.iter().find(|(canon, aliases)| {
        canon.eq_ignore_ascii_case(&given) || aliases.iter().any(|a| a.eq_ignore_ascii_case(&given))
    });
    if let Some((canon, _)) = found {
        map.insert(field.to_owned(), Value::from(*canon));
    }
}

/// Checks what a complete endpoint needs beyond its .proto's rules (which
/// `rdm_kit::rules` has checked): the secrets it holds, sent now or kept
/// from before, and the device's address. Fills in what follows from the
/// rest (SNMPv3's security level, defaults).
pub fn complete(
    protocol: &str,
    config: &mut Map<String, Value>,
    secrets: &[&str],
    device_address: &str,
) -> Result<()> {
    let has = |config: &Map<String, Value>, k: &str| config.contains_key(k);
    let secret = |k: &str| secrets.contains(&k);
    let need = |ok: bool, field: &str, why: &str| {
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(field, why.to_owned()))
        }
    };
    match protocol {
        "snmp" => {
            need(
                has(config, "host") || !device_address.is_empty(),
                "host",
                "host is required (or give the device an address)",
            )?;
            if config.get("version").and_then(Value::as_str) != Some("3") {
                need(
                    secret("community"),
                    "community",
                    "versions 1 and 2c need a community",
                )?;
                for v3 in ["auth_password", "priv_password"] {
                    need(
                        !secret(v3),
                        v3,
                        &format!(
                            "{v3} is for version 3 only (send {v3}_set: false to forget a stored one)"
                        ),
                    )?;
                }
                return Ok(());
            }
            need(
                !secret("community"),
                "community",
                "version 3 uses users, not a community (send \"community_set\": false to forget a stored one)",
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
        "webpa" | "tr069" => complete_auth(config, secrets, "auth"),
        "usp" if config.get("transport").and_then(Value::as_str) == Some("controller") => {
            complete_auth(config, secrets, "auth")
        }
        "hg630" => {
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
        // A protocol whose rules say all it needs.
        _ => Ok(()),
    }
}

/// An HTTP back-end's sign-in needs its secret.
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdm_kit::endpoint;
    use serde_json::json;

    /// Translated, parsed and completed as an import does.
    fn imported(protocol: &str, input: Value) -> Result<(Map<String, Value>, Vec<String>)> {
        let mut s = endpoint::parse(protocol, translate(protocol, input)?)?;
        let names: Vec<&str> = s.secrets.keys().map(String::as_str).collect();
        complete(protocol, &mut s.config, &names, "10.0.0.1")?;
        Ok((s.config, s.secrets.into_keys().collect()))
    }

    #[test]
    fn the_older_formats_are_translated() {
        let snmp = json!({"version": "v3", "username": "snmpuser", "auth_protocol": "SHA1", "auth_password": "authpass123",
            "priv_protocol": "aes128", "priv_password": "privpass456", "port": 161, "timeout": 5.0, "retries": 3});
        let (config, secrets) = imported("snmp", snmp).unwrap();
        assert_eq!(
            Value::Object(config),
            json!({"version": "3", "username": "snmpuser", "auth_protocol": "SHA", "priv_protocol": "AES",
                "port": 161, "timeout_ms": 5000, "retries": 3, "security_level": "authPriv"})
        );
        assert_eq!(secrets, ["auth_password", "priv_password"]);
        let webpa = json!({"base_url": "http://device-ip:8080", "auth": {"type": "token", "token": "t", "timeout": 30.0, "retries": 3}});
        let (config, secrets) = imported("webpa", webpa).unwrap();
        assert_eq!(
            (
                config["timeout_ms"].clone(),
                config["retries"].clone(),
                config["auth"]["type"].clone()
            ),
            (json!(30000), json!(3), json!("bearer"))
        );
        assert_eq!(secrets, ["auth.token"]);
        let usp = json!({"base_url": "http://usp-controller:8080", "auth": {"type": "bearer", "token": "t", "mode": "http", "timeout": 30.0, "retries": 3}});
        assert_eq!(imported("usp", usp).unwrap().0["transport"], "controller");
        let tr069 = json!({"base_url": "http://acs:8080", "auth": {"type": "basic", "username": "acs_admin", "password": "p", "timeout": 60.0, "retries": 3}});
        assert_eq!(imported("tr069", tr069).unwrap().1, ["auth.password"]);
        let e = imported(
            "snmp",
            json!({"version": "2c", "community": "c", "timeout": "soon"}),
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("timeout"));
    }

    #[test]
    fn incomplete_endpoints_name_what_is_missing() {
        let cases = [
            ("snmp", json!({"version": "2c"}), "community"),
            ("snmp", json!({"version": "3"}), "username"),
            (
                "snmp",
                json!({"version": "2c", "community": "c", "username": "u"}),
                "username",
            ),
            (
                "snmp",
                json!({"version": "3", "username": "u", "security_level": "authPriv", "auth_protocol": "SHA", "auth_password": "authpass1", "priv_protocol": "AES"}),
                "priv_password",
            ),
            (
                "webpa",
                json!({"base_url": "http://x", "auth": {"type": "basic", "username": "u"}}),
                "auth.password",
            ),
            (
                "hg630",
                json!({"base_url": "http://192.168.1.1"}),
                "password",
            ),
        ];
        for (protocol, input, field) in cases {
            let e = imported(protocol, input.clone()).unwrap_err();
            assert_eq!(e.field(), Some(field), "{protocol} {input}: {e}");
        }
        let (config, _) = imported(
            "hg630",
            json!({"base_url": "http://192.168.1.1", "password": "p"}),
        )
        .unwrap();
        assert_eq!(
            (
                config["username"].as_str(),
                config["password_scheme"].as_str()
            ),
            (Some("admin"), Some("current"))
        );
    }
}
