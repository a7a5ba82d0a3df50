//! A device document as the ACS stores it (GenieACS, PEERS.md): a tree of
//! objects (`_object`, `_writable`) whose leaves are parameters
//! (`_value`, `_type`, `_timestamp`, `_writable`), read flat.
use serde_json::Value;

/// One parameter of the tree.
pub struct Leaf {
    pub name: String,
    /// In its xsd lexical form.
    pub value: String,
    pub xsd_type: String,
    pub timestamp: Option<prost_types::Timestamp>,
    pub writable: bool,
}

/// Every parameter of `doc`, in name order (the ACS's own `_` fields left
/// out).
pub fn leaves(doc: &Value) -> Vec<Leaf> {
    let mut out = Vec::new();
    walk(doc, "", &mut |name, node| {
        if is_parameter(node) {
            out.push(Leaf {
                name: name.to_owned(),
                value: lexical(&node["_value"]),
                xsd_type: node["_type"].as_str().unwrap_or("xsd:string").to_owned(),
                timestamp: timestamp(&node["_timestamp"]),
                writable: writable(node),
            });
        }
    });
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every object (its name ending in `.`) and parameter of `doc` with its
/// writability, in name order.
pub fn names(doc: &Value) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    walk(doc, "", &mut |name, node| {
        let name = if is_parameter(node) {
            name.to_owned()
        } else {
            format!("{name}.")
        };
        out.push((name, writable(node)));
    });
    out.sort();
    out
}

/// The instance numbers of the multi-instance object `object` (`X.Y.`).
pub fn instances(doc: &Value, object: &str) -> Vec<u32> {
    let mut node = doc;
    for part in object.trim_end_matches('.').split('.') {
        node = &node[part];
    }
    node.as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.parse().ok())
        .collect()
}

/// Whether `name` is `path` itself or lies under it (`path` a partial
/// path ending in `.`).
pub fn under(name: &str, path: &str) -> bool {
    name == path || (path.ends_with('.') && name.starts_with(path)) || path.is_empty()
}

/// Whether `name` is a direct child of the partial path `path`.
pub fn is_child(name: &str, path: &str) -> bool {
    name.strip_prefix(path)
        .is_some_and(|rest| !rest.trim_end_matches('.').contains('.'))
}

/// An ISO 8601 time the ACS stores, as a Timestamp.
pub fn timestamp(v: &Value) -> Option<prost_types::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// The ACS's tags on a device.
pub fn tags(doc: &Value) -> Vec<String> {
    doc["_tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect()
}

fn is_parameter(node: &Value) -> bool {
    node.get("_value").is_some() || node.get("_type").is_some()
}

fn writable(node: &Value) -> bool {
    node["_writable"].as_bool().unwrap_or(false)
}

/// A value in its lexical form: booleans and numbers as the CPE sent them.
fn lexical(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Calls `visit` with the name and node of every object and parameter.
fn walk(node: &Value, prefix: &str, visit: &mut dyn FnMut(&str, &Value)) {
    let Some(fields) = node.as_object() else {
        return;
    };
    for (key, child) in fields {
        if key.starts_with('_') || !child.is_object() {
            continue;
        }
        let name = format!("{prefix}{key}");
        visit(&name, child);
        if !is_parameter(child) {
            walk(child, &format!("{name}."), visit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "_id": "202BC1-BM632w-000001",
            "_lastInform": "2026-11-30T08:00:00.000Z",
            "_tags": ["ams"],
            "Device": {"_object": true, "_writable": false,
                "DeviceInfo": {"_object": true,
                    "SoftwareVersion": {"_value": "1.0", "_type": "xsd:string", "_timestamp": "2026-11-30T08:00:00.000Z", "_writable": false},
                    "UpTime": {"_value": 3600, "_type": "xsd:unsignedInt", "_writable": false}},
                "NAT": {"_object": true, "PortMapping": {"_object": true, "_writable": true,
                    "1": {"_object": true, "_writable": true,
                        "Enable": {"_value": true, "_type": "xsd:boolean", "_writable": true}},
                    "3": {"_object": true, "_writable": true}}}}
        })
    }

    #[test]
    fn leaves_are_flat_typed_and_in_name_order() {
        let leaves = leaves(&doc());
        let names: Vec<_> = leaves.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Device.DeviceInfo.SoftwareVersion",
                "Device.DeviceInfo.UpTime",
                "Device.NAT.PortMapping.1.Enable"
            ]
        );
        assert_eq!(leaves[1].value, "3600");
        assert_eq!(leaves[2].value, "true");
        assert!(leaves[2].writable);
        assert_eq!(leaves[0].timestamp.unwrap().seconds, 1_796_025_600);
    }

    #[test]
    fn names_and_instances_of_objects() {
        let names = names(&doc());
        assert!(names.contains(&("Device.NAT.PortMapping.".into(), true)));
        assert!(names.contains(&("Device.DeviceInfo.UpTime".into(), false)));
        assert_eq!(instances(&doc(), "Device.NAT.PortMapping."), [1, 3]);
        assert!(is_child("Device.NAT.PortMapping.", "Device.NAT."));
        assert!(!is_child("Device.NAT.PortMapping.1.", "Device.NAT."));
        assert!(under("Device.NAT.PortMapping.1.Enable", "Device.NAT."));
        assert!(!under("Device.NATX", "Device.NAT"));
    }
}
