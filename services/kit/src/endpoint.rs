//! Device endpoints, generically: one protocol's settings are a message
//! (`rdm.snmp.v1.SnmpEndpoint`, ...), one field of the `settings` oneof of
//! `rdm.inventory.v1.Endpoint`, kept as canonical JSON with the fields
//! marked `(rdm.api.v1.secret)` apart, to be sealed. Nothing here knows a
//! protocol: the descriptors say which protocols there are, which fields
//! are secrets and which name addresses.
use crate::{
    error::{Error, Result},
    rules,
};
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions};
use rdm_proto::inventory as pb;
use serde_json::{Map, Value};
use std::{collections::BTreeMap, fmt};

const ENDPOINT: &str = "rdm.inventory.v1.Endpoint";
const ONEOF: &str = "settings";

fn endpoint_descriptor() -> MessageDescriptor {
    rdm_proto::descriptor_pool()
        .get_message_by_name(ENDPOINT)
        .expect("rdm.inventory.v1.Endpoint is in the descriptor set")
}

/// The protocols: the fields of `Endpoint.settings`, in field order.
pub fn protocols() -> Vec<String> {
    let desc = endpoint_descriptor();
    desc.oneofs()
        .find(|o| o.name() == ONEOF)
        .map(|o| o.fields().map(|f| f.name().to_owned()).collect())
        .unwrap_or_default()
}

/// The settings message of `protocol`.
pub fn schema(protocol: &str) -> Result<MessageDescriptor> {
    let field = endpoint_descriptor()
        .get_field_by_name(protocol)
        .filter(|f| f.containing_oneof().is_some_and(|o| o.name() == ONEOF));
    match field.map(|f| f.kind()) {
        Some(Kind::Message(m)) => Ok(m),
        _ => Err(Error::invalid(
            "protocol",
            format!(
                "unknown protocol {protocol:?}: expected {}",
                protocols().join(", ")
            ),
        )),
    }
}

/// A generated message as a dynamic one of the named type.
pub fn dynamic<M: prost::Message>(msg: &M, name: &str) -> Result<DynamicMessage> {
    let desc = rdm_proto::descriptor_pool()
        .get_message_by_name(name)
        .ok_or_else(|| Error::internal("reading a message", format!("no message {name}")))?;
    DynamicMessage::decode(desc, msg.encode_to_vec().as_slice())
        .map_err(|e| Error::internal("reading a message", e))
}

/// The settings a message with a `settings` oneof holds (an Endpoint, a
/// PutEndpointRequest): the protocol and its settings.
pub fn settings_of(msg: &DynamicMessage) -> Option<(String, DynamicMessage)> {
    let oneof = msg.descriptor().oneofs().find(|o| o.name() == ONEOF)?;
    let field = oneof.fields().find(|f| msg.has_field(f))?;
    let value = msg.get_field(&field);
    Some((field.name().to_owned(), value.as_message()?.clone()))
}

/// An endpoint's protocol and settings as canonical JSON.
pub fn settings_json(endpoint: &pb::Endpoint) -> Result<(String, Map<String, Value>)> {
    let (protocol, settings) = settings_of(&dynamic(endpoint, ENDPOINT)?)
        .ok_or_else(|| Error::internal("reading an endpoint", "no settings"))?;
    Ok((protocol, to_json(&settings)))
}

/// The typed settings of `protocol` from JSON (secrets and all).
pub fn typed(protocol: &str, settings: &Map<String, Value>) -> Result<pb::endpoint::Settings> {
    let desc = endpoint_descriptor();
    let mut endpoint = DynamicMessage::new(desc.clone());
    let inner = DynamicMessage::deserialize(schema(protocol)?, Value::Object(settings.clone()))
        .map_err(|e| Error::internal("building an endpoint", e))?;
    endpoint.set_field_by_name(protocol, prost_reflect::Value::Message(inner));
    let endpoint: pb::Endpoint = endpoint
        .transcode_to()
        .map_err(|e| Error::internal("building an endpoint", e))?;
    endpoint
        .settings
        .ok_or_else(|| Error::internal("building an endpoint", "no settings"))
}

/// A message as canonical JSON: proto field names, defaults and empty
/// strings (given or not, they say nothing) left out.
fn to_json(msg: &DynamicMessage) -> Map<String, Value> {
    fn prune(map: &mut Map<String, Value>) {
        map.retain(|_, v| match v {
            Value::String(s) => !s.is_empty(),
            Value::Object(inner) => {
                prune(inner);
                true
            }
            _ => true,
        });
    }
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    match msg.serialize_with_options(serde_json::value::Serializer, &options) {
        Ok(Value::Object(mut map)) => {
            prune(&mut map);
            map
        }
        _ => Map::new(),
    }
}

/// Checks `protocol`'s settings as a user wrote them in JSON: field names,
/// types and the rules of its .proto. Errors name the field.
pub fn parse(protocol: &str, input: Value) -> Result<Settings> {
    let desc = schema(protocol)?;
    let Value::Object(map) = &input else {
        return Err(Error::invalid(
            "config",
            "endpoint settings must be a JSON object",
        ));
    };
    let msg = DynamicMessage::deserialize(desc.clone(), input.clone()).map_err(|e| {
        let field = culprit(&desc, map, "");
        Error::invalid(&field, format!("{field}: {e}"))
    })?;
    checked(&msg)
}

/// Checks settings given as a message (from a request).
pub fn checked(msg: &DynamicMessage) -> Result<Settings> {
    rules::check(msg, "")?;
    let mut config = to_json(msg);
    canonical_urls(&msg.descriptor(), &mut config);
    Ok(split(&msg.descriptor(), config))
}

/// URLs as the URL standard writes them (IDNA hosts in ASCII, no trailing
/// slash on an empty path): what is stored, shown and connected to.
fn canonical_urls(desc: &MessageDescriptor, config: &mut Map<String, Value>) {
    for field in desc.fields() {
        let Some(value) = config.get_mut(field.name()) else {
            continue;
        };
        match (field.kind(), value) {
            (Kind::Message(inner), Value::Object(map)) => canonical_urls(&inner, map),
            (_, Value::String(text)) if rules::of(&field).is_some_and(|r| r.format == "url") => {
                if let Ok(url) = url::Url::parse(text) {
                    *text = url.as_str().trim_end_matches('/').to_owned();
                }
            }
            _ => {}
        }
    }
}

/// The field of `map` that does not read as `desc` says.
fn culprit(desc: &MessageDescriptor, map: &Map<String, Value>, prefix: &str) -> String {
    for (key, value) in map {
        let one = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
        if DynamicMessage::deserialize(desc.clone(), one).is_ok() {
            continue;
        }
        let nested = desc.get_field_by_name(key).map(|f| f.kind());
        if let (Some(Kind::Message(inner)), Value::Object(inner_map)) = (nested, value) {
            return culprit(&inner, inner_map, &format!("{prefix}{key}."));
        }
        return format!("{prefix}{key}");
    }
    prefix.trim_end_matches('.').to_owned()
}

/// Checked settings: canonical JSON without secrets, and the secrets given,
/// by dotted path (`auth.password`).
#[derive(Clone, PartialEq)]
pub struct Settings {
    pub config: Map<String, Value>,
    pub secrets: BTreeMap<String, String>,
    /// Secrets sent as `<name>_set: false`: to be forgotten.
    pub cleared: Vec<String>,
    /// Secrets the settings say are held (`<name>_set: true`, as replies and
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

/// The dotted paths of the secret fields of `desc`, nested ones included.
pub fn secret_paths(desc: &MessageDescriptor) -> Vec<String> {
    fn walk(desc: &MessageDescriptor, prefix: &str, out: &mut Vec<String>) {
        for field in desc.fields() {
            let path = format!("{prefix}{}", field.name());
            if rules::is_secret(&field) {
                out.push(path);
            } else if let Kind::Message(inner) = field.kind()
                && !field.is_list()
            {
                walk(&inner, &format!("{path}."), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(desc, "", &mut out);
    out
}

/// The object at a dotted path's parent and the leaf name.
fn parent<'a>(
    map: &'a mut Map<String, Value>,
    path: &'a str,
) -> Option<(&'a mut Map<String, Value>, &'a str)> {
    let mut parts: Vec<&str> = path.split('.').collect();
    let leaf = parts.pop()?;
    let mut at = map;
    for part in parts {
        at = at.get_mut(part)?.as_object_mut()?;
    }
    Some((at, leaf))
}

/// Takes the secrets and their `_set` markers out of canonical JSON.
fn split(desc: &MessageDescriptor, mut config: Map<String, Value>) -> Settings {
    let mut settings = Settings {
        config: Map::new(),
        secrets: BTreeMap::new(),
        cleared: Vec::new(),
        marked: Vec::new(),
    };
    for path in secret_paths(desc) {
        let Some((at, leaf)) = parent(&mut config, &path) else {
            continue;
        };
        if let Some(Value::String(secret)) = at.remove(leaf) {
            settings.secrets.insert(path.clone(), secret);
        }
        match at.remove(&format!("{leaf}_set")) {
            Some(Value::Bool(true)) => settings.marked.push(path),
            Some(Value::Bool(false)) => settings.cleared.push(path),
            _ => {}
        }
    }
    // An object left empty by taking its secrets out says nothing.
    config.retain(|_, v| !matches!(v, Value::Object(m) if m.is_empty()));
    settings.config = config;
    settings
}

/// An address named in endpoint settings: the field, the host, and the port
/// (0 where the settings name none).
pub type Address = (String, String, u16);

/// Every address in checked settings: the fields whose rules say `format:
/// "host"` (with the `port` beside them) or `"url"` (host and port of the
/// URL). The address policy vets each.
pub fn addresses(protocol: &str, config: &Map<String, Value>) -> Result<Vec<Address>> {
    fn walk(
        desc: &MessageDescriptor,
        config: &Map<String, Value>,
        prefix: &str,
        out: &mut Vec<Address>,
    ) {
        let port = config.get("port").and_then(Value::as_u64).unwrap_or(0) as u16;
        for field in desc.fields() {
            let Some(value) = config.get(field.name()) else {
                continue;
            };
            let path = format!("{prefix}{}", field.name());
            let format = rules::of(&field).map(|r| r.format).unwrap_or_default();
            match (format.as_str(), field.kind(), value) {
                ("host", _, Value::String(host)) => out.push((path, host.clone(), port)),
                ("url", _, Value::String(url)) => {
                    if let Ok(url) = url::Url::parse(url)
                        && let Some(host) = url.host_str()
                    {
                        let port = url.port_or_known_default().unwrap_or(0);
                        out.push((path, host.to_owned(), port));
                    }
                }
                (_, Kind::Message(inner), Value::Object(map)) => {
                    walk(&inner, map, &format!("{path}."), out);
                }
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(&schema(protocol)?, config, "", &mut out);
    Ok(out)
}

/// The settings as replies show them: each secret held appears as
/// `<name>_set: true` where the secret would be.
pub fn redacted(config: &Map<String, Value>, held: &[&str]) -> Map<String, Value> {
    let mut out = config.clone();
    for path in held {
        put(&mut out, path, |leaf| {
            (format!("{leaf}_set"), Value::Bool(true))
        });
    }
    out
}

/// The settings with their secrets put back at their paths (for a
/// protocol service, never for a reply).
pub fn with_secrets(
    config: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
) -> Map<String, Value> {
    let mut out = config.clone();
    for (path, secret) in secrets {
        put(&mut out, path, |leaf| {
            (leaf.to_owned(), Value::from(secret.as_str()))
        });
    }
    out
}

/// Inserts what `entry` makes of the leaf name at a dotted path, making
/// the objects on the way.
fn put(map: &mut Map<String, Value>, path: &str, entry: impl FnOnce(&str) -> (String, Value)) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(leaf) = parts.pop() else {
        return;
    };
    let mut at = map;
    for part in parts {
        let next = at.entry(part).or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner) = next else {
            return;
        };
        at = inner;
    }
    let (key, value) = entry(leaf);
    at.insert(key, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_protocols_are_the_fields_of_the_oneof() {
        assert_eq!(protocols(), ["snmp", "webpa", "tr069", "usp", "hg630"]);
        assert_eq!(schema("ftp").unwrap_err().field(), Some("protocol"));
        assert_eq!(
            secret_paths(&schema("usp").unwrap()),
            ["mqtt.password", "auth.password", "auth.token", "auth.key"]
        );
    }

    #[test]
    fn secrets_come_apart_and_go_back() {
        let s = parse(
            "webpa",
            json!({"base_url": "http://acs:7557", "auth": {"type": "basic", "username": "u", "password": "p", "token_set": false, "key_set": true}}),
        )
        .unwrap();
        assert_eq!(
            s.config,
            *json!({"base_url": "http://acs:7557", "auth": {"type": "basic", "username": "u"}})
                .as_object()
                .unwrap()
        );
        assert_eq!(
            s.secrets,
            BTreeMap::from([("auth.password".to_owned(), "p".to_owned())])
        );
        assert_eq!(
            (s.cleared.as_slice(), s.marked.as_slice()),
            (&["auth.token".to_owned()][..], &["auth.key".to_owned()][..])
        );
        assert_eq!(
            Value::Object(redacted(&s.config, &["auth.password"])),
            json!({"base_url": "http://acs:7557", "auth": {"type": "basic", "username": "u", "password_set": true}})
        );
        assert_eq!(with_secrets(&s.config, &s.secrets)["auth"]["password"], "p");
        let settings = typed("webpa", &with_secrets(&s.config, &s.secrets)).unwrap();
        let pb::endpoint::Settings::Webpa(webpa) = settings else {
            panic!("{settings:?}")
        };
        assert_eq!(webpa.auth.unwrap().password.as_deref(), Some("p"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let cases = [
            ("snmp", json!({"port": "x"}), "port"),
            ("snmp", json!({"colour": "red"}), "colour"),
            ("snmp", json!({"version": "4"}), "version"),
            ("webpa", json!({"auth": {"type": 3}}), "auth.type"),
            (
                "usp",
                json!({"transport": "mqtt", "mqtt": {"broker_url": "http://b"}}),
                "mqtt.broker_url",
            ),
        ];
        for (protocol, input, field) in cases {
            let e = parse(protocol, input.clone()).unwrap_err();
            assert_eq!(e.field(), Some(field), "{protocol} {input}: {e}");
        }
    }

    #[test]
    fn addresses_are_the_fields_the_rules_say() {
        let s = parse(
            "usp",
            json!({"transport": "controller", "mqtt": {"broker_url": "mqtt://broker:1883", "agent_topic": "a"}, "base_url": "https://c.example"}),
        )
        .unwrap();
        assert_eq!(
            addresses("usp", &s.config).unwrap(),
            [
                ("mqtt.broker_url".to_owned(), "broker".to_owned(), 1883),
                ("base_url".to_owned(), "c.example".to_owned(), 443)
            ]
        );
        // URLs are stored as the URL standard writes them (the host in ASCII).
        let s = parse("webpa", json!({"base_url": "https://Bücher.example/"})).unwrap();
        assert_eq!(s.config["base_url"], "https://xn--bcher-kva.example");
        let s = parse(
            "snmp",
            json!({"host": "10.0.0.1", "port": 1161, "version": "2c"}),
        )
        .unwrap();
        assert_eq!(
            addresses("snmp", &s.config).unwrap(),
            [("host".to_owned(), "10.0.0.1".to_owned(), 1161)]
        );
    }
}
