//! The RPC a job runs, found in the descriptor set as the gateway finds
//! it: its request built from JSON (the target set per device), its
//! replies read back as JSON. No job type is known by hand.
use bytes::Bytes;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, Kind, MethodDescriptor, SerializeOptions};
use rdm_kit::{
    Error, Principal, Result,
    auth::{Access, AccessTable},
};
use serde_json::{Map, Value};

/// The request field a job's targets fill, and its field naming a device.
const TARGET: &str = "target";
const DEVICE_ID: &str = "device_id";

/// A method a job may run.
#[derive(Clone, Debug)]
pub struct Method {
    pub rpc: MethodDescriptor,
    /// `/package.Service/Method`.
    pub path: String,
    /// The least role it needs (None: public).
    pub role: Option<rdm_kit::auth::Role>,
}

impl Method {
    /// `package.Service/Method`, if it names an RPC of the mesh a job may
    /// run: not the jobs service's own, not internal, not client-streaming.
    pub fn find(name: &str, access: &AccessTable) -> Result<Self> {
        let unknown = || Error::invalid("method", format!("no method {name:?} in the mesh"));
        let (service, method) = name.split_once('/').ok_or_else(unknown)?;
        let rpc = rdm_proto::descriptor_pool()
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == method))
            .ok_or_else(unknown)?;
        let path = format!("/{service}/{method}");
        let role = match access.get(&path) {
            Some(Access::Role(role)) => Some(*role),
            Some(Access::Public) => None,
            // Calls between services are not the jobs service's to make.
            _ => return Err(unknown()),
        };
        if rpc.parent_service().package_name() == "rdm.jobs.v1" {
            return Err(Error::invalid(
                "method",
                "a job cannot run the jobs service's own RPCs",
            ));
        }
        if rpc.is_client_streaming() {
            return Err(Error::invalid(
                "method",
                format!("{name} takes a stream of requests: it cannot run as a job"),
            ));
        }
        Ok(Self { rpc, path, role })
    }

    /// A method that may not be repeated (neither `NO_SIDE_EFFECTS` nor
    /// `IDEMPOTENT`) runs at most once unless the user asks for more
    /// attempts, and is not run again after a lost worker.
    pub fn side_effects(&self) -> bool {
        use prost_reflect::prost_types::method_options::IdempotencyLevel as L;
        !matches!(
            self.rpc
                .method_descriptor_proto()
                .options
                .as_ref()
                .map(|o| o.idempotency_level()),
            Some(L::NoSideEffects | L::Idempotent)
        )
    }

    /// May `p` call it?
    pub fn allowed(&self, p: &Principal) -> Result<()> {
        match self.role {
            Some(role) if !p.has_role(role) => Err(Error::permission_denied(format!(
                "{} needs the {} role",
                self.path.trim_start_matches('/'),
                role.as_str()
            ))),
            _ => Ok(()),
        }
    }

    /// Whether its request names a target a job can fill per device.
    pub fn has_target(&self) -> bool {
        self.rpc
            .input()
            .get_field_by_name(TARGET)
            .is_some_and(|f| match f.kind() {
                Kind::Message(m) => !f.is_list() && m.get_field_by_name(DEVICE_ID).is_some(),
                _ => false,
            })
    }

    /// The request as protobuf, from its JSON with `device` as its target;
    /// errors name the field under `request.`.
    pub fn encode(&self, request: &Map<String, Value>, device: Option<&str>) -> Result<Bytes> {
        Ok(Bytes::from(self.message(request, device)?.encode_to_vec()))
    }

    /// The request message, checked against its proto's rules.
    pub fn message(
        &self,
        request: &Map<String, Value>,
        device: Option<&str>,
    ) -> Result<DynamicMessage> {
        let mut json = request.clone();
        if let Some(device) = device {
            json.insert(TARGET.into(), serde_json::json!({ DEVICE_ID: device }));
        }
        let message = DynamicMessage::deserialize_with_options(
            self.rpc.input(),
            Value::Object(json),
            &DeserializeOptions::new(),
        )
        .map_err(|e| {
            Error::invalid(
                "request",
                format!("request does not fit {}: {e}", self.rpc.input().full_name()),
            )
        })?;
        rdm_kit::rules::check(&message, "request.")?;
        if let Some(path) = secret_in(&message, "request.") {
            return Err(Error::invalid(
                path.clone(),
                format!(
                    "{path} is a secret, and a job's request is kept and shown: \
                     name a device (target.device_id), whose secrets the inventory keeps sealed"
                ),
            ));
        }
        Ok(message)
    }

    /// A reply as the REST API shows it.
    pub fn reply_json(&self, bytes: &[u8]) -> Result<Value> {
        let message = DynamicMessage::decode(self.rpc.output(), bytes)
            .map_err(|e| Error::internal("decoding a reply", e))?;
        let options = SerializeOptions::new()
            .use_proto_field_name(true)
            .skip_default_fields(false);
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(|e| Error::internal("encoding a reply as JSON", e))
    }
}

/// The path of the first secret (`(rdm.api.v1.secret)`) `msg` holds.
fn secret_in(msg: &DynamicMessage, prefix: &str) -> Option<String> {
    use prost_reflect::Value as V;
    msg.fields().find_map(|(field, value)| {
        let path = format!("{prefix}{}", field.name());
        if rdm_kit::rules::is_secret(&field) {
            return Some(path);
        }
        let nested = |v: &V| match v {
            V::Message(m) => secret_in(m, &format!("{path}.")),
            _ => None,
        };
        match value {
            V::List(items) => items.iter().find_map(nested),
            other => nested(other),
        }
    })
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn struct_json(s: &prost_types::Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v)))
        .collect()
}

fn value_json(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind as K;
    match &v.kind {
        None | Some(K::NullValue(_)) => Value::Null,
        Some(K::BoolValue(b)) => Value::Bool(*b),
        Some(K::NumberValue(n)) => {
            // Whole numbers stay whole, as a client wrote them.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
            }
        }
        Some(K::StringValue(s)) => Value::String(s.clone()),
        Some(K::ListValue(l)) => Value::Array(l.values.iter().map(value_json).collect()),
        Some(K::StructValue(s)) => Value::Object(struct_json(s)),
    }
}

/// A JSON object as a `google.protobuf.Struct` (anything else: empty).
pub fn json_struct(v: &Value) -> prost_types::Struct {
    match v {
        Value::Object(map) => prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .collect(),
        },
        _ => prost_types::Struct::default(),
    }
}

fn json_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind as K;
    let kind = match v {
        Value::Null => K::NullValue(0),
        Value::Bool(b) => K::BoolValue(*b),
        Value::Number(n) => K::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => K::StringValue(s.clone()),
        Value::Array(items) => K::ListValue(prost_types::ListValue {
            values: items.iter().map(json_value).collect(),
        }),
        Value::Object(_) => K::StructValue(json_struct(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> AccessTable {
        AccessTable::from_pool(rdm_proto::descriptor_pool())
    }

    #[test]
    fn methods_are_found_by_name_and_read_from_the_descriptors() {
        let walk = Method::find("rdm.snmp.v1.SnmpService/Walk", &access()).unwrap();
        assert!(!walk.side_effects() && walk.has_target() && walk.rpc.is_server_streaming());
        let set = Method::find("rdm.snmp.v1.SnmpService/Set", &access()).unwrap();
        assert!(set.side_effects());
        let parse = Method::find("rdm.catalog.v1.MibService/ParseMibUpload", &access()).unwrap();
        assert!(!parse.side_effects(), "IDEMPOTENT: safe to run again");
        for bad in [
            "rdm.snmp.v1.SnmpService/Nope",
            "nothing",
            "rdm.inventory.v1.DeviceService/ResolveTarget",
            "rdm.inventory.v1.AuthService/IssueUserToken",
            "rdm.jobs.v1.JobService/SubmitJob",
        ] {
            let err = Method::find(bad, &access()).unwrap_err();
            assert_eq!(err.field(), Some("method"), "{bad}");
        }
    }

    #[test]
    fn requests_are_checked_and_targets_filled() {
        let get = Method::find("rdm.snmp.v1.SnmpService/Get", &access()).unwrap();
        let request = serde_json::json!({"oids": ["1.3.6.1.2.1.1.1.0"]});
        let message = get
            .message(request.as_object().unwrap(), Some("d1"))
            .unwrap();
        let json = serde_json::to_value(&message).unwrap();
        assert_eq!(json["target"]["deviceId"], "d1");
        let err = get
            .message(
                serde_json::json!({"oidz": []}).as_object().unwrap(),
                Some("d1"),
            )
            .unwrap_err();
        assert_eq!(err.field(), Some("request"));
        assert!(err.message.contains("oidz"), "{}", err.message);
        // The proto's own rules: a target is required.
        let err = get.message(request.as_object().unwrap(), None).unwrap_err();
        assert_eq!(err.field(), Some("request.target"));
    }

    #[test]
    fn secrets_stay_out_of_jobs() {
        let get = Method::find("rdm.snmp.v1.SnmpService/Get", &access()).unwrap();
        let inline = serde_json::json!({"oids": ["1.3.6.1.2.1.1.1.0"],
            "target": {"endpoint": {"host": "127.0.0.1", "version": "2c", "community": "public"}}});
        let err = get.message(inline.as_object().unwrap(), None).unwrap_err();
        assert_eq!(err.field(), Some("request.target.endpoint.community"));
        assert!(!err.message.contains("public"), "{}", err.message);
        let inline = serde_json::json!({"oids": ["1.3.6.1.2.1.1.1.0"],
            "target": {"endpoint": {"host": "127.0.0.1", "version": "3", "username": "u", "security_level": "noAuthNoPriv"}}});
        assert!(get.message(inline.as_object().unwrap(), None).is_ok());
    }

    #[test]
    fn structs_round_trip() {
        let v = serde_json::json!({"a": 1, "b": [true, "x", 1.5], "c": {"d": null}});
        assert_eq!(Value::Object(struct_json(&json_struct(&v))), v);
    }
}
