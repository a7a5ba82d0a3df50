//! OpenAPI 3.1 from the descriptor set: one operation per HTTP binding
//! (operationId `<Service>_<Method>`), schemas in proto JSON form, comments
//! as descriptions, bearer security except on public RPCs, and every error
//! response as `application/problem+json`.
use crate::routes::{self, Binding};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use prost_types::FileDescriptorProto;
use rdm_kit::{
    ErrorCode,
    auth::{Access, AccessTable},
    rules,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Every HTTP status an `ErrorCode` maps to (a unit test keeps them in step).
const ERRORS: [(u16, &str); 15] = [
    (400, "The request is malformed; `field` names the culprit."),
    (
        401,
        "Missing, expired, revoked or invalid bearer token or API key.",
    ),
    (
        403,
        "The caller's roles do not allow this call, an address policy refused the target (`rule`), or the device rejected rdm's credentials.",
    ),
    (
        404,
        "No such route or resource (other tenants' resources are not found either).",
    ),
    (405, "The route exists with other methods (see Allow)."),
    (
        409,
        "Conflicts with the current state (already exists, precondition, a test-and-set whose configuration id changed).",
    ),
    (413, "Request body too large."),
    (415, "The body's content type is not one this call takes."),
    (
        422,
        "The device answered with an error of its own (protocol code as a member).",
    ),
    (429, "Throttled; see Retry-After."),
    (500, "Internal error."),
    (501, "Not implemented."),
    (
        502,
        "The device could not be reached, or the server in front of it (XMiDT, an ACS) refused rdm's credentials.",
    ),
    (
        503,
        "A service, or an ACS or controller in front of the device, is unavailable, or the device is offline or busy; see Retry-After.",
    ),
    (
        504,
        "The device or upstream did not answer in time, or the call passed its deadline.",
    ),
];

/// A schema with a description beside its type (or beside its `$ref`,
/// which OpenAPI 3.1 allows), never wrapped in `allOf`: generated clients
/// turn a wrapped scalar into an object.
fn described(mut schema: Value, doc: String) -> Value {
    if let Value::Object(map) = &mut schema {
        map.insert("description".into(), doc.into());
    }
    schema
}

/// The media types of a `google.api.HttpBody` request or reply (the
/// device import and export).
const RAW_TYPES: [&str; 2] = ["application/x-ndjson", "text/csv"];

fn raw_content() -> Value {
    let mut content = Map::new();
    for media in RAW_TYPES {
        content.insert(
            media.into(),
            json!({"schema": {"type": "string", "minLength": 1}}),
        );
    }
    Value::Object(content)
}

fn comments(file: &FileDescriptorProto, path: &[i32]) -> Option<String> {
    let info = file.source_code_info.as_ref()?;
    let loc = info.location.iter().find(|l| l.path == path)?;
    let text = loc
        .leading_comments
        .as_deref()
        .or(loc.trailing_comments.as_deref())?;
    let text = text
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned();
    (!text.is_empty()).then_some(text)
}

/// The whole document, as served at `/openapi.json` and printed by `rdm openapi`.
pub fn document() -> Value {
    let pool = rdm_proto::descriptor_pool();
    let access = AccessTable::from_pool(pool);
    let grpc_path =
        |b: &Binding| format!("/{}/{}", b.rpc.parent_service().full_name(), b.rpc.name());
    let bindings = routes::bindings(pool, |_| true).unwrap_or_default();
    let bindings: Vec<Binding> = bindings
        .into_iter()
        .filter(|b| !access.get(&grpc_path(b)).is_some_and(Access::internal))
        .collect();

    let mut schemas = BTreeMap::new();
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut seen_ids: BTreeMap<String, usize> = BTreeMap::new();
    let mut tags = BTreeMap::new();
    for b in &bindings {
        let service = b.rpc.parent_service();
        let base_id = format!("{}_{}", service.name(), b.rpc.name());
        // An RPC bound once per body field (PutEndpoint) is named by it.
        let per_body = bindings.iter().filter(|o| o.rpc == b.rpc).count() > 1;
        let n = seen_ids.entry(base_id.clone()).or_default();
        let operation_id = match b.body.as_deref() {
            Some(field) if per_body && field != "*" => format!("{base_id}_{field}"),
            _ if *n == 0 => base_id,
            _ => format!("{base_id}_{n}"),
        };
        *n += 1;
        let file = b.rpc.parent_file();
        let file = file.file_descriptor_proto();
        tags.entry(service.name().to_owned())
            .or_insert_with(|| comments(file, service.path()).unwrap_or_default());

        let input = b.rpc.input();
        let path_vars: Vec<&str> = b.template.variables().collect();
        let mut parameters: Vec<Value> = path_vars
            .iter()
            .map(|v| {
                let mut schema = json!({"type": "string"});
                if let Some(field) = input.get_field_by_name(v) {
                    constrain(&field, &mut schema);
                }
                json!({"name": v, "in": "path", "required": true, "schema": schema})
            })
            .collect();
        if b.body.as_deref() != Some("*") {
            let body_oneof = b
                .body
                .as_deref()
                .and_then(|f| input.get_field_by_name(f))
                .and_then(|f| f.containing_oneof());
            for field in input.fields() {
                let name = field.name();
                // Query parameters are scalars; the body's oneof siblings
                // are other bindings' bodies.
                let message = matches!(field.kind(), Kind::Message(m) if well_known(&m).is_none());
                let sibling = body_oneof.is_some() && field.containing_oneof() == body_oneof;
                if path_vars.contains(&name)
                    || b.body.as_deref() == Some(name)
                    || message
                    || sibling
                {
                    continue;
                }
                let mut schema = field_schema(&field, &mut schemas);
                constrain(&field, &mut schema);
                let mut p = json!({"name": name, "in": "query", "schema": schema});
                if name == "page_size" {
                    p["schema"] = json!({"type": "integer", "minimum": 0, "maximum": 1000, "description": "0 means the default"});
                }
                if let Some(doc) = comments(input.parent_file_descriptor_proto(), field.path()) {
                    p["description"] = doc.into();
                }
                if field.is_list() {
                    p["style"] = "form".into();
                    p["explode"] = true.into();
                }
                parameters.push(p);
            }
        }

        let mut op = json!({
            "operationId": operation_id,
            "tags": [service.name()],
            "parameters": parameters,
            "x-grpc-method": grpc_path(b),
        });
        let who = match access.get(&grpc_path(b)) {
            Some(Access::Public) => "Public: no token needed.".to_owned(),
            Some(Access::Role(role)) => format!("Needs the {} role (or higher).", role.as_str()),
            _ => "Denied to everybody.".to_owned(),
        };
        let doc = comments(file, b.rpc.path()).unwrap_or_else(|| b.rpc.name().to_owned());
        op["summary"] = doc.lines().next().unwrap_or_default().into();
        op["description"] = format!("{doc}\n\n{who}").into();
        op["x-rdm-access"] = who.into();
        match b.body.as_deref() {
            Some(_) if b.raw_request => {
                op["requestBody"] = json!({"required": true, "content": raw_content()});
            }
            Some("*") => {
                op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": message_ref(&input, &mut schemas)}}});
            }
            Some(field) => {
                if let Some(f) = input.get_field_by_name(field) {
                    op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": field_schema(&f, &mut schemas)}}});
                }
            }
            None => {}
        }
        let output = b.rpc.output();
        let reply = match b
            .response_body
            .as_deref()
            .and_then(|f| output.get_field_by_name(f))
        {
            Some(f) => field_schema(&f, &mut schemas),
            None => message_ref(&output, &mut schemas),
        };
        let ok = if b.raw_response {
            json!({"description": "The file, streamed.", "content": raw_content()})
        } else if b.rpc.is_server_streaming() {
            json!({"description": "A stream: one JSON object per line, or Server-Sent Events with Accept: text/event-stream.",
                "content": {"application/x-ndjson": {"schema": reply}, "text/event-stream": {"schema": {"type": "string"}}}})
        } else {
            json!({"description": "OK", "content": {"application/json": {"schema": reply}}})
        };
        let mut responses = Map::new();
        responses.insert("200".into(), ok);
        for (code, _) in ERRORS {
            responses.insert(
                code.to_string(),
                json!({"$ref": format!("#/components/responses/E{code}")}),
            );
        }
        op["responses"] = Value::Object(responses);
        if matches!(access.get(&grpc_path(b)), Some(Access::Public)) {
            op["security"] = json!([]);
        }
        paths
            .entry(b.template.openapi_path())
            .or_default()
            .insert(b.method.as_str().to_ascii_lowercase(), op);
    }

    let mut responses = Map::new();
    for (code, text) in ERRORS {
        responses.insert(
            format!("E{code}"),
            json!({"description": text, "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
        );
    }
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "An error (RFC 9457).",
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string", "enum": ErrorCode::ALL.iter().map(|c| c.reason()).collect::<Vec<_>>(),
                         "description": "The stable error reason."},
                "domain": {"type": "string"}, "field": {"type": "string"}, "request_id": {"type": "string"},
                "rule": {"type": "string", "description": "The address policy rule that refused a target."}
            },
            "additionalProperties": {"type": "string", "description": "Protocol details of the error (snmp_error_status, error_index, ...)."},
            "required": ["type", "title", "status", "detail", "code"]
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "rdm API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Remote device management mesh. Every operation is also a gRPC method (see x-grpc-method) on the same port."
        },
        "tags": tags.into_iter().map(|(name, description)| json!({"name": name, "description": description})).collect::<Vec<_>>(),
        "servers": [{"url": "/", "description": "The gateway this document was fetched from"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT or rdm_ API key"}},
            "schemas": schemas,
            "responses": responses,
        }
    })
}

/// A rule across fields as `if`/`then`: given is non-empty (a string), left
/// out is absent or empty.
fn when_schema(msg: &MessageDescriptor, when: &rules::When) -> Value {
    let is_text = |name: &str| {
        msg.get_field_by_name(name)
            .is_some_and(|f| f.kind() == Kind::String)
    };
    let mut properties = Map::new();
    for name in &when.require {
        if is_text(name) {
            properties.insert(name.clone(), json!({"minLength": 1}));
        }
    }
    for name in &when.forbid {
        let schema = if is_text(name) {
            json!({"maxLength": 0})
        } else {
            json!(false)
        };
        properties.insert(name.clone(), schema);
    }
    json!({
        "if": {"properties": {&when.field: {"enum": when.values}}, "required": [&when.field]},
        "then": {"required": when.require, "properties": properties},
    })
}

fn is_field_mask(field: &FieldDescriptor) -> bool {
    matches!(field.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask")
}

/// An update mask names the message's other fields, snake_case, comma-separated
/// (the ids in the path are not among them).
fn mask_paths(msg: &MessageDescriptor, schema: &mut Value) {
    let names: Vec<String> = msg
        .fields()
        .filter(|f| !is_field_mask(f) && !f.name().ends_with("_id"))
        .map(|f| f.name().to_owned())
        .collect();
    let one = format!("({})", names.join("|"));
    schema["pattern"] = format!("^({one}(,{one})*)?$").into();
    schema["example"] = names
        .iter()
        .take(2)
        .cloned()
        .collect::<Vec<_>>()
        .join(",")
        .into();
}

fn message_ref(msg: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if let Some(wkt) = well_known(msg) {
        return wkt;
    }
    let name = msg.full_name().to_owned();
    if !schemas.contains_key(&name) {
        schemas.insert(name.clone(), Value::Null); // placeholder: stops recursion
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in msg.fields() {
            let mut schema = field_schema(&field, schemas);
            if let Some(doc) = comments(msg.parent_file_descriptor_proto(), field.path()) {
                schema = described(schema, doc);
            }
            if constrain(&field, &mut schema) {
                required.push(field.name().to_owned());
            }
            if is_field_mask(&field) {
                mask_paths(msg, &mut schema);
            }
            properties.insert(field.name().to_owned(), schema);
        }
        // The server refuses fields it does not know.
        let mut schema =
            json!({"type": "object", "properties": properties, "additionalProperties": false});
        if !required.is_empty() {
            schema["required"] = required.into();
        }
        // A oneof: exactly one of its fields.
        let mut all_of: Vec<Value> = msg
            .oneofs()
            .filter(|o| !o.is_synthetic())
            .map(|o| json!({"oneOf": o.fields().map(|f| json!({"required": [f.name()]})).collect::<Vec<_>>()}))
            .collect();
        all_of.extend(rules::whens(msg).iter().map(|w| when_schema(msg, w)));
        if !all_of.is_empty() {
            schema["allOf"] = all_of.into();
        }
        if let Some(doc) = comments(msg.parent_file_descriptor_proto(), msg.path()) {
            schema["description"] = doc.into();
        }
        schemas.insert(name.clone(), schema);
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Adds a field's `rdm.api.v1.field` rules (and its secret mark) to its
/// schema; true when the field is required.
fn constrain(field: &FieldDescriptor, schema: &mut Value) -> bool {
    let Value::Object(map) = schema else {
        return false;
    };
    if rules::is_secret(field) {
        map.insert("writeOnly".into(), true.into());
    }
    let Some(rules) = rules::of(field) else {
        return false;
    };
    let mut set = |key: &str, n: u64| {
        if n > 0 {
            map.insert(key.into(), n.into());
        }
    };
    if field.is_list() {
        set("minItems", rules.min_items.into());
        set("maxItems", rules.max_items.into());
        let required = rules.required || rules.min_items > 0;
        // The string rules hold for each item.
        if let Some(Value::Object(items)) = map.get_mut("items")
            && items.get("type").is_some_and(|t| t == "string")
        {
            text_rules(&rules, items, true);
        }
        return required;
    }
    set("minimum", rules.minimum);
    set("maximum", rules.maximum);
    if field.kind() == Kind::String {
        text_rules(&rules, map, rules.required);
    }
    rules.required
}

fn text_rules(rules: &rules::Rules, map: &mut Map<String, Value>, required: bool) {
    let min_len = rules.min_len.max(required.into());
    if min_len > 0 {
        map.insert("minLength".into(), min_len.into());
    }
    if rules.max_len > 0 {
        map.insert("maxLength".into(), rules.max_len.into());
    }
    if !rules.pattern.is_empty() {
        map.insert("pattern".into(), rules.pattern.clone().into());
    }
    if !rules.one_of.is_empty() {
        map.insert("enum".into(), rules.one_of.clone().into());
    }
    // "host" has no JSON Schema format: "hostname" would refuse IP addresses.
    if rules.format == "url" {
        map.insert("format".into(), "uri".into());
    }
    if !rules.example.is_empty() {
        map.insert("example".into(), rules.example.clone().into());
    }
}

fn well_known(msg: &MessageDescriptor) -> Option<Value> {
    Some(match msg.full_name() {
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string", "example": "1.5s"}),
        "google.protobuf.FieldMask" => json!({"type": "string", "example": "display_name,roles"}),
        "google.protobuf.Struct" | "google.protobuf.Any" | "google.protobuf.Empty" => {
            json!({"type": "object"})
        }
        "google.protobuf.Value" => json!({}),
        "google.protobuf.StringValue" | "google.protobuf.BytesValue" => json!({"type": "string"}),
        "google.protobuf.BoolValue" => json!({"type": "boolean"}),
        "google.protobuf.Int32Value" | "google.protobuf.UInt32Value" => json!({"type": "integer"}),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => {
            json!({"type": "string", "format": "int64"})
        }
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => json!({"type": "number"}),
        _ => return None,
    })
}

fn scalar_schema(kind: &Kind, schemas: &mut BTreeMap<String, Value>) -> Value {
    match kind {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>()})
        }
        Kind::Message(m) => message_ref(m, schemas),
    }
}

fn field_schema(field: &FieldDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return json!({"type": "object"});
        };
        let value = entry.map_entry_value_field();
        return json!({"type": "object", "additionalProperties": scalar_schema(&value.kind(), schemas)});
    }
    let item = scalar_schema(&field.kind(), schemas);
    if field.is_list() {
        json!({"type": "array", "items": item})
    } else {
        item
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_error_status_is_documented_and_descriptions_sit_beside_types() {
        let statuses: Vec<u16> = super::ERRORS.iter().map(|(s, _)| *s).collect();
        for code in super::ErrorCode::ALL {
            assert!(
                statuses.contains(&code.http_status()),
                "{code:?} -> {}",
                code.http_status()
            );
        }
        let doc = super::document().to_string();
        // allOf holds only rules across fields (oneofs, `when`), never a
        // type or a $ref wrapped to carry a description.
        assert!(
            !doc.contains(r#""allOf":[{"$ref""#) && !doc.contains(r#""allOf":[{"type""#),
            "a description wrapped a schema"
        );
        let doc = super::document();
        let import = &doc["paths"]["/v1/devices:import"]["post"]["requestBody"]["content"];
        assert!(
            import["text/csv"].is_object() && import["application/x-ndjson"].is_object(),
            "{import}"
        );
        assert!(import.get("application/json").is_none(), "{import}");
        let login = &doc["paths"]["/v1/auth/login"]["post"];
        assert!(
            login["description"]
                .as_str()
                .unwrap()
                .ends_with("Public: no token needed.")
        );
        assert_eq!(doc["servers"][0]["url"], "/");
        // Constraints the server enforces, carried from the proto.
        let slug = &doc["components"]["schemas"]["rdm.inventory.v1.CreateTenantRequest"];
        assert_eq!(slug["required"], serde_json::json!(["slug"]));
        assert_eq!(
            slug["properties"]["slug"]["pattern"],
            "^[a-z][a-z0-9-]{1,62}$"
        );
        let get = &doc["components"]["schemas"]["rdm.snmp.v1.GetRequest"]["properties"]["oids"];
        assert_eq!(
            (get["minItems"].as_u64(), get["maxItems"].as_u64()),
            (Some(1), Some(128))
        );
        let put = &doc["paths"]["/v1/devices/{device_id}/endpoints/snmp"]["put"];
        assert_eq!(put["operationId"], "DeviceService_PutEndpoint_snmp");
        let body = &put["requestBody"]["content"]["application/json"]["schema"]["$ref"];
        assert_eq!(body, "#/components/schemas/rdm.snmp.v1.SnmpEndpoint");
        let snmp = &doc["components"]["schemas"]["rdm.snmp.v1.SnmpEndpoint"]["properties"];
        assert_eq!(snmp["port"]["maximum"], 65535);
        assert_eq!(snmp["version"]["enum"], serde_json::json!(["1", "2c", "3"]));
        assert_eq!(snmp["community"]["writeOnly"], true);
        assert_eq!(snmp["version"]["example"], "2c");
        let login = &doc["components"]["schemas"]["rdm.inventory.v1.LoginRequest"]["properties"];
        assert_eq!(login["tenant"]["example"], "demo");
        let get =
            &doc["paths"]["/v1/devices/{device_id}/endpoints/{protocol}"]["get"]["parameters"];
        let protocol = get
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "protocol")
            .unwrap();
        assert_eq!(protocol["schema"]["enum"][0], "snmp", "{protocol}");
    }

    #[test]
    fn operations_are_named_service_method_and_errors_are_problems() {
        let doc = super::document();
        let login = &doc["paths"]["/v1/auth/login"]["post"];
        assert_eq!(login["operationId"], "AuthService_Login");
        assert_eq!(login["security"], serde_json::json!([]));
        let me = &doc["paths"]["/v1/me"]["get"];
        assert_eq!(me["operationId"], "AuthService_GetMe");
        assert!(
            me.get("security").is_none(),
            "GetMe needs the bearer scheme"
        );
        let create = &doc["paths"]["/v1/tenants"]["post"];
        assert_eq!(
            create["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/rdm.inventory.v1.Tenant"
        );
        assert_eq!(
            doc["components"]["responses"]["E404"]["content"]["application/problem+json"]["schema"]
                ["$ref"],
            "#/components/schemas/Problem"
        );
        let list = &doc["paths"]["/v1/users"]["get"]["parameters"];
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "page_size" && p["in"] == "query")
        );
    }
}
