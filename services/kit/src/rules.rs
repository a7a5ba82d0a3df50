//! What a .proto says of its fields (`rdm.api.v1.field` rules and the
//! `rdm.api.v1.secret` mark), read from the descriptors and checked on a
//! message. OpenAPI shows the same rules, so clients and the server agree.
use crate::error::{Error, Result};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use std::{
    collections::HashMap,
    sync::{LazyLock, RwLock},
};

/// One field's `rdm.api.v1.field` rules (zero values: no rule).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub required: bool,
    pub min_len: u32,
    pub max_len: u32,
    pub pattern: String,
    pub one_of: Vec<String>,
    pub min_items: u32,
    pub max_items: u32,
    pub minimum: u64,
    pub maximum: u64,
    /// "host" or "url" (see field.proto).
    pub format: String,
    /// A value to show in the documentation.
    pub example: String,
}

/// The field's rules, when it states any.
pub fn of(field: &FieldDescriptor) -> Option<Rules> {
    let pool = rdm_proto::descriptor_pool();
    let ext = pool.get_extension_by_name("rdm.api.v1.field")?;
    let options = field.options();
    if !options.has_extension(&ext) {
        return None;
    }
    let value = options.get_extension(&ext);
    let rules = value.as_message()?;
    let get = |name: &str| rules.get_field_by_name(name);
    let u32_of = |name: &str| get(name).and_then(|v| v.as_u32()).unwrap_or(0);
    let u64_of = |name: &str| get(name).and_then(|v| v.as_u64()).unwrap_or(0);
    let text = |name: &str| {
        get(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    Some(Rules {
        required: get("required").and_then(|v| v.as_bool()).unwrap_or(false),
        min_len: u32_of("min_len"),
        max_len: u32_of("max_len"),
        pattern: text("pattern"),
        one_of: get("one_of")
            .and_then(|v| {
                v.as_list().map(|l| {
                    l.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default(),
        min_items: u32_of("min_items"),
        max_items: u32_of("max_items"),
        minimum: u64_of("minimum"),
        maximum: u64_of("maximum"),
        format: text("format"),
        example: text("example"),
    })
}

/// A rule across a message's fields (`rdm.api.v1.when`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct When {
    pub field: String,
    pub values: Vec<String>,
    pub require: Vec<String>,
    pub forbid: Vec<String>,
}

/// The message's `rdm.api.v1.when` rules.
pub fn whens(desc: &MessageDescriptor) -> Vec<When> {
    let Some(ext) = rdm_proto::descriptor_pool().get_extension_by_name("rdm.api.v1.when") else {
        return Vec::new();
    };
    let options = desc.options();
    if !options.has_extension(&ext) {
        return Vec::new();
    }
    let value = options.get_extension(&ext);
    let texts = |rule: &DynamicMessage, name: &str| -> Vec<String> {
        rule.get_field_by_name(name)
            .and_then(|v| {
                v.as_list().map(|l| {
                    l.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    };
    value
        .as_list()
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_message)
        .map(|rule| When {
            field: rule
                .get_field_by_name("field")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            values: texts(rule, "values"),
            require: texts(rule, "require"),
            forbid: texts(rule, "forbid"),
        })
        .collect()
}

/// Whether a field of `msg` is given: set, and not an empty string.
fn given(msg: &DynamicMessage, name: &str) -> bool {
    let Some(field) = msg.descriptor().get_field_by_name(name) else {
        return false;
    };
    msg.has_field(&field) && !matches!(&*msg.get_field(&field), Value::String(s) if s.is_empty())
}

/// Whether the field is marked `(rdm.api.v1.secret) = true`.
pub fn is_secret(field: &FieldDescriptor) -> bool {
    let Some(ext) = rdm_proto::descriptor_pool().get_extension_by_name("rdm.api.v1.secret") else {
        return false;
    };
    let options = field.options();
    options.has_extension(&ext) && options.get_extension(&ext).as_bool() == Some(true)
}

/// A request checked against the rules its proto states (a 400 naming the
/// field), and its caller. `message` is the request's full name
/// (`rdm.tr069.v1.GetParameterValuesRequest`).
pub fn checked<'r, T: prost::Message>(
    req: &'r tonic::Request<T>,
    message: &str,
) -> Result<&'r crate::Principal> {
    check(&crate::endpoint::dynamic(req.get_ref(), message)?, "")?;
    crate::Principal::of(req)
}

/// Checks every rule of `msg`'s fields, nested messages included; the
/// error names the field by its dotted path under `prefix`.
pub fn check(msg: &DynamicMessage, prefix: &str) -> Result<()> {
    for field in msg.descriptor().fields() {
        let path = format!("{prefix}{}", field.name());
        let value = msg.get_field(&field);
        let rules = of(&field).unwrap_or_default();
        if field.is_list() {
            let n = value.as_list().map_or(0, <[Value]>::len) as u32;
            let bad = (rules.required && n == 0)
                || n < rules.min_items
                || (rules.max_items > 0 && n > rules.max_items);
            if bad {
                let max = match rules.max_items {
                    0 => "any number".to_owned(),
                    m => m.to_string(),
                };
                return Err(Error::invalid(
                    &path,
                    format!(
                        "{path}: from {} to {max} items",
                        rules.min_items.max(rules.required.into())
                    ),
                ));
            }
            // The string rules hold for each item; a message item has its own.
            let items = value.as_list().unwrap_or_default();
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) => {
                        let item_rules = Rules {
                            required: true,
                            ..rules.clone()
                        };
                        check_text(&format!("{path}[{i}]"), s, &item_rules)?;
                    }
                    Value::Message(inner) => check(inner, &format!("{path}[{i}]."))?,
                    _ => {}
                }
            }
            continue;
        }
        if field.is_map() {
            continue;
        }
        let given = msg.has_field(&field);
        match (field.kind(), &*value) {
            (Kind::Message(_), Value::Message(inner)) if given => {
                check(inner, &format!("{path}."))?;
            }
            (_, Value::String(s)) => check_text(&path, s, &rules)?,
            (_, v) => {
                let n = match v {
                    Value::U32(n) => Some(u64::from(*n)),
                    Value::U64(n) => Some(*n),
                    Value::I32(n) => Some((*n).max(0) as u64),
                    Value::I64(n) => Some((*n).max(0) as u64),
                    _ => None,
                };
                // A number left at zero without presence was not given.
                if let Some(n) = n
                    && (given || n != 0)
                    && (n < rules.minimum || (rules.maximum > 0 && n > rules.maximum))
                {
                    let max = match rules.maximum {
                        0 => "up".to_owned(),
                        m => format!("to {m}"),
                    };
                    return Err(Error::invalid(
                        &path,
                        format!("{path}: must be from {} {max}", rules.minimum),
                    ));
                }
                if rules.required && !given {
                    return Err(Error::invalid(&path, format!("{path} is required")));
                }
            }
        }
    }
    for rule in whens(&msg.descriptor()) {
        let value = msg
            .get_field_by_name(&rule.field)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if !rule.values.contains(&value) {
            continue;
        }
        let when = format!("{prefix}{} {value}", rule.field);
        if let Some(missing) = rule.require.iter().find(|f| !given(msg, f)) {
            return Err(Error::invalid(
                format!("{prefix}{missing}"),
                format!("{when} needs {prefix}{missing}"),
            ));
        }
        if let Some(extra) = rule.forbid.iter().find(|f| given(msg, f)) {
            return Err(Error::invalid(
                format!("{prefix}{extra}"),
                format!("{when} takes no {prefix}{extra}"),
            ));
        }
    }
    Ok(())
}

fn check_text(path: &str, s: &str, rules: &Rules) -> Result<()> {
    let bad = |why: String| Err(Error::invalid(path, format!("{path}: {why}")));
    if s.is_empty() {
        return if rules.required {
            Err(Error::invalid(path, format!("{path} is required")))
        } else {
            Ok(())
        };
    }
    let chars = s.chars().count() as u32;
    if chars < rules.min_len {
        return bad(format!("at least {} characters", rules.min_len));
    }
    if rules.max_len > 0 && chars > rules.max_len {
        return bad(format!("at most {} characters", rules.max_len));
    }
    if !rules.one_of.is_empty() && !rules.one_of.iter().any(|v| v == s) {
        return bad(format!("{s:?} is not one of {}", rules.one_of.join(", ")));
    }
    if !rules.pattern.is_empty() && !matches(&rules.pattern, s) {
        return bad(format!("must match {}", rules.pattern));
    }
    match rules.format.as_str() {
        "host" if !crate::address::is_valid_host(s) => {
            bad("must be an IP address or a host name".to_owned())
        }
        "url" => match url::Url::parse(s) {
            Ok(u) if u.host().is_some() => Ok(()),
            Ok(_) => bad("must be a URL with a host".to_owned()),
            Err(e) => bad(format!("not a URL ({e})")),
        },
        _ => Ok(()),
    }
}

/// Whether `s` matches `pattern`; each pattern is compiled once. A pattern
/// that does not compile matches nothing (a unit test compiles them all).
fn matches(pattern: &str, s: &str) -> bool {
    static CACHE: LazyLock<RwLock<HashMap<String, Option<regex::Regex>>>> =
        LazyLock::new(Default::default);
    if let Some(re) = CACHE.read().expect("regex cache").get(pattern) {
        return re.as_ref().is_some_and(|re| re.is_match(s));
    }
    let re = regex::Regex::new(pattern).ok();
    let found = re.as_ref().is_some_and(|re| re.is_match(s));
    CACHE
        .write()
        .expect("regex cache")
        .insert(pattern.to_owned(), re);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_compiles_and_every_secret_has_a_set_marker() {
        let pool = rdm_proto::descriptor_pool();
        let mut secrets = 0;
        for msg in pool.all_messages() {
            for field in msg.fields() {
                if let Some(rules) = of(&field)
                    && !rules.pattern.is_empty()
                {
                    regex::Regex::new(&rules.pattern)
                        .unwrap_or_else(|e| panic!("{}: {e}", field.full_name()));
                }
                if is_secret(&field) {
                    secrets += 1;
                    let marker = msg.get_field_by_name(&format!("{}_set", field.name()));
                    assert!(
                        marker.is_some_and(|m| m.kind() == Kind::Bool && m.supports_presence()),
                        "{} needs an `optional bool {}_set`",
                        field.full_name(),
                        field.name()
                    );
                }
            }
        }
        assert!(secrets >= 8, "{secrets} secret fields");
    }

    #[test]
    fn rules_name_the_field_that_breaks_them() {
        let pool = rdm_proto::descriptor_pool();
        let desc = pool
            .get_message_by_name("rdm.snmp.v1.SnmpEndpoint")
            .unwrap();
        let field = |json: serde_json::Value| {
            let msg = DynamicMessage::deserialize(desc.clone(), json).unwrap();
            check(&msg, "x.")
                .err()
                .map(|e| e.field().unwrap_or_default().to_owned())
        };
        assert_eq!(
            field(serde_json::json!({"version": "4"})),
            Some("x.version".into())
        );
        assert_eq!(
            field(serde_json::json!({"port": 70000})),
            Some("x.port".into())
        );
        assert_eq!(
            field(serde_json::json!({"host": "not a host!"})),
            Some("x.host".into())
        );
        assert_eq!(
            field(serde_json::json!({"version": "3", "engine_id": "abc"})),
            Some("x.engine_id".into())
        );
        assert_eq!(
            field(serde_json::json!({"version": "2c", "retries": 11})),
            Some("x.retries".into())
        );
        assert_eq!(
            field(serde_json::json!({"retries": 0, "version": "2c", "host": "h.example"})),
            None
        );
        let url = pool
            .get_message_by_name("rdm.webpa.v1.WebpaEndpoint")
            .unwrap();
        let field = |json: serde_json::Value| {
            let msg = DynamicMessage::deserialize(url.clone(), json).unwrap();
            check(&msg, "")
                .err()
                .map(|e| e.field().unwrap_or_default().to_owned())
        };
        assert_eq!(
            field(serde_json::json!({"base_url": "ftp://x"})),
            Some("base_url".into())
        );
        assert_eq!(
            field(serde_json::json!({"base_url": "http://"})),
            Some("base_url".into())
        );
        assert_eq!(
            field(serde_json::json!({"base_url": "http://x", "auth": {"type": "magic"}})),
            Some("auth.type".into())
        );
    }
}
