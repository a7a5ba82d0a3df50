//! REST/JSON to gRPC: finds the binding for a request, builds the request
//! message from path, query and body (proto JSON, snake_case or
//! lowerCamelCase), calls the RPC and writes the reply as JSON, or for
//! server-streaming RPCs as NDJSON or Server-Sent Events.
use crate::{
    Gateway,
    routes::{Binding, Vars},
};
use axum::{
    body::Body,
    extract::Request,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, header};
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
    Value as ReflectValue,
};
use rdm_kit::{Error, ErrorCode, invoke};
use serde_json::{Map, Value};

const JSON: &str = "application/json";
const NDJSON: &str = "application/x-ndjson";
const SSE: &str = "text/event-stream";

/// A problem+json reply for `err`.
pub fn problem(err: &Error, request_id: Option<&str>) -> Response {
    rdm_kit::server::problem(err, request_id)
}

pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pub async fn handle(gw: &Gateway, req: Request) -> Response {
    let rid = request_id(req.headers());
    let (result, route) = match find(gw, req.method(), req.uri().path()) {
        Ok((binding, vars)) => {
            // The route template, for metric labels (never the raw path).
            let route = format!("{} {}", binding.method, binding.template.openapi_path());
            (transcode(gw, binding, &vars, req).await, Some(route))
        }
        Err(err) => (Err(err), None),
    };
    let mut resp = result.unwrap_or_else(|err| problem(&err, rid.as_deref()));
    if let Some(route) = route {
        resp.extensions_mut()
            .insert(rdm_kit::telemetry::Route(route));
    }
    resp
}

async fn transcode(
    gw: &Gateway,
    binding: &Binding,
    vars: &Vars,
    req: Request,
) -> Result<Response, Error> {
    let (parts, body) = req.into_parts();
    let rpc = &binding.rpc;
    let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name());
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    gw.access
        .authorize(&gw.verifier, &grpc_path, authorization, None)?;
    let backend = gw.backend(rpc.parent_service().package_name())?;

    // A client-streaming upload goes on as it comes: each piece of the
    // body is one message, the first with the path's fields. The service
    // holds it to its own limit.
    let mut upload = None;
    let body = match &binding.body {
        Some(_) if rpc.is_client_streaming() => {
            upload = Some(body);
            Bytes::new()
        }
        Some(_) => {
            let limit = if binding.raw_request {
                gw.upload_limit
            } else {
                gw.body_limit
            };
            read_body(body, &parts.headers, limit, !binding.raw_request).await?
        }
        None => Bytes::new(),
    };
    // A call that takes a body gets one: an empty JSON body is a mistake,
    // not "change nothing" (`{}` says that).
    if binding.body.is_some()
        && !binding.raw_request
        && upload.is_none()
        && body.trim_ascii().is_empty()
    {
        return Err(Error::invalid(
            "body",
            "this call takes a JSON body (send {} for none)",
        ));
    }
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    // SSE clients resume with Last-Event-ID: the request's last_event_id.
    let mut vars = vars.clone();
    if let Some(last) = parts
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|_| {
            binding
                .rpc
                .input()
                .get_field_by_name(LAST_EVENT_ID)
                .is_some()
        })
        && !parts
            .uri
            .query()
            .unwrap_or_default()
            .contains(LAST_EVENT_ID)
    {
        vars.push((LAST_EVENT_ID.to_owned(), last.trim().to_owned()));
    }
    let message = build_request(binding, &vars, parts.uri.query(), &body, content_type)?;

    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(ip) = rdm_kit::server::peer_ip(&parts.extensions).and_then(|ip| ip.parse().ok()) {
        metadata.insert(rdm_kit::server::CLIENT_IP_HEADER, ip);
    }
    // The backend works to the same deadline.
    if let Some(deadline) = parts.extensions.get::<rdm_kit::server::CallDeadline>()
        && let Ok(value) = deadline.header().parse()
    {
        metadata.insert("grpc-timeout", value);
    }
    // The trace goes on: the caller's, or the one this request started.
    if let Some(trace) = parts.extensions.get::<rdm_kit::telemetry::TraceParent>()
        && let Ok(value) = trace.0.parse()
    {
        metadata.insert("traceparent", value);
    }
    for name in ["authorization", "x-request-id"] {
        if let Some(v) = parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            metadata.insert(name, v);
        }
    }
    if prefers_async(&parts.headers) && rpc.parent_service().package_name() != JOBS_PACKAGE {
        return submit_job(gw, rpc, &message, metadata).await;
    }
    let output = rpc.output();
    let response_body = binding.response_body.clone();
    if !rpc.is_server_streaming() {
        let reply = match (upload, &binding.body) {
            (Some(upload), Some(field)) => {
                let (input, field, ct) = (rpc.input(), field.clone(), content_type.to_owned());
                let pieces = upload.into_data_stream().map(move |piece| match piece {
                    Ok(data) => upload_piece(&input, &field, &ct, data),
                    // A body cut short must not store as a whole file: a
                    // message that does not decode fails the call.
                    Err(_) => Bytes::from_static(&[0xff]),
                });
                let messages = futures::stream::once(async move { message }).chain(pieces);
                invoke::client_streaming(backend, &grpc_path, messages, metadata).await
            }
            _ => invoke::unary(backend, &grpc_path, message, metadata).await,
        }
        .map_err(|s| Error::from_status(&s))?;
        if binding.raw_response {
            let (content_type, data) = raw_reply(&output, &reply, response_body.as_deref())?;
            return Ok(([(header::CONTENT_TYPE, content_type)], data).into_response());
        }
        let json = reply_json(
            &output,
            &reply,
            response_body.as_deref(),
            binding.has_struct,
        )?;
        return Ok(([(header::CONTENT_TYPE, JSON)], json).into_response());
    }

    let sse = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains(SSE));
    let mut stream = invoke::server_streaming(backend, &grpc_path, message, metadata)
        .await
        .map_err(|s| Error::from_status(&s))?;
    if binding.raw_response {
        // One file in pieces: the first piece says what it is.
        let first = stream.message().await.map_err(|s| Error::from_status(&s))?;
        let (content_type, data) = match &first {
            Some(m) => raw_reply(&output, m, response_body.as_deref())?,
            None => ("application/octet-stream".to_owned(), Bytes::new()),
        };
        let rest = stream.map(move |item| {
            item.map_err(|s| std::io::Error::other(s.message().to_owned()))
                .and_then(|m| {
                    raw_reply(&output, &m, response_body.as_deref())
                        .map(|(_, d)| d)
                        .map_err(|e| std::io::Error::other(e.message))
                })
        });
        let body = Body::from_stream(futures::stream::once(async move { Ok(data) }).chain(rest));
        return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
    }
    let rid = request_id(&parts.headers);
    let has_struct = binding.has_struct;
    let named = sse && names_events(&output, response_body.as_deref());
    let frames: FrameStream = Box::pin(stream.map(move |item| {
        let (event, json) = match item
            .map_err(|s| Error::from_status(&s))
            .and_then(|m| reply_json(&output, &m, response_body.as_deref(), has_struct))
        {
            Ok(json) => ("message", json),
            Err(err) => (
                "error",
                serde_json::to_vec(&serde_json::json!({"error": err.problem(rid.as_deref())}))
                    .unwrap_or_default(),
            ),
        };
        let frame = if sse {
            let mut f = match named.then(|| event_name(&json)).flatten() {
                Some((id, name)) => format!("id: {id}\nevent: {name}\ndata: ").into_bytes(),
                None => format!("event: {event}\ndata: ").into_bytes(),
            };
            f.extend_from_slice(&json);
            f.extend_from_slice(b"\n\n");
            f
        } else {
            let mut f = json;
            f.push(b'\n');
            f
        };
        Ok(Bytes::from(frame))
    }));
    let content_type = if sse { SSE } else { NDJSON };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response())
}

/// A request field REST clients may fill with the Last-Event-ID header.
const LAST_EVENT_ID: &str = "last_event_id";
const JOBS_PACKAGE: &str = "rdm.jobs.v1";
const SUBMIT_JOB: &str = "/rdm.jobs.v1.JobService/SubmitJob";

/// `Prefer: respond-async` (RFC 7240): the call is to run as a job.
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Submits the call as a job of the jobs service, as the caller: 202 with
/// the job and its `Location`.
async fn submit_job(
    gw: &Gateway,
    rpc: &prost_reflect::MethodDescriptor,
    message: &[u8],
    metadata: tonic::metadata::MetadataMap,
) -> Result<Response, Error> {
    let submit = rdm_proto::descriptor_pool()
        .get_service_by_name("rdm.jobs.v1.JobService")
        .and_then(|s| s.methods().find(|m| m.name() == "SubmitJob"))
        .ok_or_else(|| Error::internal("running a call as a job", "no SubmitJob"))?;
    let request = DynamicMessage::decode(rpc.input(), message)
        .map_err(|e| Error::internal("reading the request", e))?
        .serialize_with_options(
            serde_json::value::Serializer,
            &SerializeOptions::new().use_proto_field_name(true),
        )
        .map_err(|e| Error::internal("reading the request", e))?;
    let job = serde_json::json!({
        "method": format!("{}/{}", rpc.parent_service().full_name(), rpc.name()),
        "request": request,
    });
    let job = DynamicMessage::deserialize(submit.input(), job)
        .map_err(|e| Error::internal("making the job", e))?;
    let backend = gw.backend(JOBS_PACKAGE)?;
    let reply = invoke::unary(
        backend,
        SUBMIT_JOB,
        Bytes::from(job.encode_to_vec()),
        metadata,
    )
    .await
    .map_err(|s| Error::from_status(&s))?;
    let json = reply_json(&submit.output(), &reply, Some("job"), true)?;
    let id = serde_json::from_slice::<Value>(&json)
        .ok()
        .and_then(|j| j["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    Ok((
        http::StatusCode::ACCEPTED,
        [
            (header::CONTENT_TYPE, JSON.to_owned()),
            (header::LOCATION, format!("/v1/jobs/{id}")),
            (
                http::HeaderName::from_static("preference-applied"),
                "respond-async".to_owned(),
            ),
        ],
        json,
    )
        .into_response())
}

/// Whether a stream's messages name their SSE events: an int64 `id` (the
/// `id:` a client resumes after) and a string `type` (the `event:`).
fn names_events(output: &MessageDescriptor, response_body: Option<&str>) -> bool {
    let message = match response_body.and_then(|f| output.get_field_by_name(f)) {
        Some(field) => match field.kind() {
            Kind::Message(m) => m,
            _ => return false,
        },
        None => output.clone(),
    };
    matches!(
        message.get_field_by_name("id").map(|f| f.kind()),
        Some(Kind::Int64)
    ) && matches!(
        message.get_field_by_name("type").map(|f| f.kind()),
        Some(Kind::String)
    )
}

/// An event's SSE id and name, from its JSON.
fn event_name(json: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(json).ok()?;
    let id = match &v["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let name = v["type"].as_str()?;
    // An event name is one line of its own.
    (!name.contains(['\n', '\r'])).then(|| (id, name.to_owned()))
}

type FrameStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send>>;

/// The binding for `method path`: 404 for no route, 405 when only the method differs.
fn find<'a>(gw: &'a Gateway, method: &Method, path: &str) -> Result<(&'a Binding, Vars), Error> {
    let mut other_methods = Vec::new();
    for binding in &gw.bindings {
        if let Some(vars) = binding.template.matches(path) {
            if binding.method == *method {
                return Ok((binding, vars));
            }
            other_methods.push(binding.method.as_str());
        }
    }
    if other_methods.is_empty() {
        return Err(Error::not_found(format!("no route for {method} {path}")));
    }
    Err(Error::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{method} is not allowed on {path}; use {}",
            other_methods.join(", ")
        ),
    )
    .with_meta("allow", other_methods.join(", ")))
}

/// How much of an oversized body is read and dropped before the 413, so a
/// client still sending gets to read the reply instead of a reset.
const DRAIN_MAX: usize = 4 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    json_only: bool,
) -> Result<Bytes, Error> {
    let too_large = || {
        Error::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        // curl -d sends form-urlencoded by default; its bodies are read as JSON.
        let json_like = ct.is_empty()
            || ct == JSON
            || ct.ends_with("+json")
            || ct == "application/x-www-form-urlencoded";
        if json_only && !json_like {
            return Err(Error::invalid(
                "body",
                format!("request body must be JSON, not {ct}"),
            ));
        }
    }
    let mut stream = body.into_data_stream();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(limit));
    if declared.is_none_or(|n| n <= limit) {
        let mut overflow = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                Error::invalid("body", format!("request body could not be read: {e}"))
            })?;
            if buf.len() + chunk.len() > limit {
                overflow = true;
                break;
            }
            buf.extend_from_slice(&chunk);
        }
        if !overflow {
            return Ok(buf.freeze());
        }
    }
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut drained = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            drained += chunk.len();
            if drained > DRAIN_MAX {
                break;
            }
        }
    })
    .await;
    Err(too_large())
}

/// Builds the request message as one proto JSON object (body, then path
/// variables and query parameters) and decodes it once, so every error
/// names the field it is about.
/// JSON nesting a request may have: a Struct inside a message costs
/// protobuf two levels a JSON level, and decoders stop at 100.
const MAX_DEPTH: usize = 32;

/// The path of the first null in a JSON body (`labels.site`, `oids[2]`).
fn null_at(value: &Value, path: &str) -> Option<String> {
    let join = |key: &str| match path {
        "" => key.to_owned(),
        _ => format!("{path}.{key}"),
    };
    match value {
        Value::Null => Some(if path.is_empty() {
            "body".to_owned()
        } else {
            path.to_owned()
        }),
        Value::Object(map) => map.iter().find_map(|(k, v)| null_at(v, &join(k))),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| null_at(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// One piece of a streamed upload: the input message with only its body
/// field (a `google.api.HttpBody`) set.
fn upload_piece(input: &MessageDescriptor, field: &str, content_type: &str, data: Bytes) -> Bytes {
    let mut message = DynamicMessage::new(input.clone());
    if let Some(f) = input.get_field_by_name(field)
        && let Kind::Message(body) = f.kind()
    {
        let mut piece = DynamicMessage::new(body);
        piece.set_field_by_name(
            "content_type",
            ReflectValue::String(content_type.to_owned()),
        );
        piece.set_field_by_name("data", ReflectValue::Bytes(data));
        message.set_field(&f, ReflectValue::Message(piece));
    }
    message.encode_to_vec().into()
}

fn build_request(
    binding: &Binding,
    vars: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
    content_type: &str,
) -> Result<Bytes, Error> {
    let input = binding.rpc.input();
    let mut object = Map::new();
    let body_json = if binding.raw_request {
        use base64::Engine;
        let data = base64::engine::general_purpose::STANDARD.encode(body);
        Some(serde_json::json!({"content_type": content_type, "data": data}))
    } else if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let json = serde_json::from_slice::<Value>(body)
            .map_err(|e| Error::invalid("body", format!("request body is not valid JSON: {e}")))?;
        if depth(&json) > MAX_DEPTH {
            return Err(Error::invalid(
                "body",
                format!("request body nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        // proto3 JSON reads null as "not given"; OpenAPI says no field is
        // nullable, so a null is refused rather than silently dropped.
        if !binding.has_struct
            && let Some(path) = null_at(&json, "")
        {
            return Err(Error::invalid(
                &path,
                format!("{path} is null: leave a field out instead"),
            ));
        }
        Some(json)
    };
    match (binding.body.as_deref(), body_json) {
        (Some("*"), Some(Value::Object(map))) => object = map,
        (Some("*"), Some(_)) => {
            return Err(Error::invalid("body", "request body must be a JSON object"));
        }
        (Some(field), Some(value)) => {
            object.insert(field.to_owned(), value);
        }
        _ => {}
    }
    if binding.method == Method::PATCH && binding.body.as_deref() == Some("*") {
        fill_update_mask(&input, &mut object);
    }
    for (path, value) in vars {
        set_field(&input, &mut object, path, &[value.as_str()])?;
    }
    if let Some(query) = query.filter(|q| !q.is_empty()) {
        if binding.body.as_deref() == Some("*") {
            return Err(Error::invalid(
                "query",
                "this call takes its fields from the JSON body, not the query string",
            ));
        }
        let mut params: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match params.iter_mut().find(|(name, _)| *name == k) {
                Some((_, values)) => values.push(v.into_owned()),
                None => params.push((k.into_owned(), vec![v.into_owned()])),
            }
        }
        for (name, values) in &params {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            set_field(&input, &mut object, name, &values)?;
        }
    }
    let value = Value::Object(object);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(&value, &mut track);
    let message =
        DynamicMessage::deserialize_with_options(input, tracked, &DeserializeOptions::new())
            .map_err(|e| {
                let path = track.path().to_string();
                let field = if path == "." { "body".to_owned() } else { path };
                Error::invalid(
                    field.clone(),
                    format!("invalid field {field}: {}", without_values(&e.to_string())),
                )
            })?;
    Ok(Bytes::from(message.encode_to_vec()))
}

/// serde's "invalid type: <kind> <value>, expected ..." names the value
/// sent; that may be a password, so only its kind stays in the reply.
fn without_values(message: &str) -> String {
    for marker in ["invalid type: ", "invalid value: "] {
        let Some(at) = message.find(marker) else {
            continue;
        };
        let after = at + marker.len();
        let Some(end) = message[after..].find(", expected").map(|i| after + i) else {
            continue;
        };
        let unexpected = &message[after..end];
        let kind = unexpected
            .find([' ', '`', '"'])
            .map_or(unexpected, |i| &unexpected[..i]);
        let kind = match kind {
            "floating" => "floating point",
            "byte" => "byte array",
            other => other,
        };
        return format!("{}{kind}{}", &message[..after], &message[end..]);
    }
    message.to_owned()
}

/// For PATCH: the update mask is the set of fields the body names, unless
/// the body gives one (its paths in snake_case or lowerCamelCase).
fn fill_update_mask(input: &MessageDescriptor, object: &mut Map<String, Value>) {
    let Some(mask) = input.get_field_by_name("update_mask") else {
        return;
    };
    if !matches!(mask.kind(), Kind::Message(m) if m.full_name() == "google.protobuf.FieldMask") {
        return;
    }
    for key in ["update_mask", "updateMask"] {
        if let Some(Value::String(given)) = object.get_mut(key) {
            // FieldMask's JSON form wants lowerCamelCase; users write either.
            *given = given
                .split(',')
                .map(|path| {
                    field_named(input, path.trim())
                        .map_or_else(|| path.trim().to_owned(), |f| f.json_name().to_owned())
                })
                .collect::<Vec<_>>()
                .join(",");
            return;
        }
    }
    let paths: Vec<String> = object
        .keys()
        .filter_map(|k| field_named(input, k))
        .map(|f| f.json_name().to_owned())
        .collect();
    // FieldMask's JSON form lists lowerCamelCase paths.
    object.insert("update_mask".into(), Value::String(paths.join(",")));
}

fn field_named(msg: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    msg.get_field_by_name(name)
        .or_else(|| msg.get_field_by_json_name(name))
}

/// Sets the (dotted) field `path` in the JSON object from text values.
fn set_field(
    input: &MessageDescriptor,
    object: &mut Map<String, Value>,
    path: &str,
    values: &[&str],
) -> Result<(), Error> {
    let unknown = || Error::invalid(path.to_owned(), format!("unknown field {path:?}"));
    let mut msg = input.clone();
    let mut target = object;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = field_named(&msg, part).ok_or_else(unknown)?;
        if i + 1 == parts.len() {
            let convert = |raw: &str| {
                scalar_json(&field, raw).map_err(|why| {
                    Error::invalid(path.to_owned(), format!("invalid value for {path}: {why}"))
                })
            };
            let value = if field.is_list() {
                Value::Array(
                    values
                        .iter()
                        .flat_map(|v| v.split(','))
                        .map(convert)
                        .collect::<Result<_, _>>()?,
                )
            } else {
                let [one] = values else {
                    return Err(Error::invalid(
                        path.to_owned(),
                        format!("{path} takes one value"),
                    ));
                };
                convert(one)?
            };
            target.insert(field.name().to_owned(), value);
            return Ok(());
        }
        let Kind::Message(next) = field.kind() else {
            return Err(unknown());
        };
        let entry = target
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        target = entry.as_object_mut().ok_or_else(unknown)?;
        msg = next;
    }
    Err(unknown())
}

/// Text from a path or query string as the proto JSON value of `field`:
/// proto JSON takes numbers, enums, bytes and well-known types as strings
/// already; booleans need converting.
fn scalar_json(field: &FieldDescriptor, raw: &str) -> Result<Value, &'static str> {
    match field.kind() {
        Kind::Bool => match raw {
            "true" | "1" => Ok(Value::Bool(true)),
            "false" | "0" | "" => Ok(Value::Bool(false)),
            _ => Err("expected true or false"),
        },
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// A `google.api.HttpBody` reply (or response_body field): its content
/// type and data.
fn raw_reply(
    output: &MessageDescriptor,
    bytes: &[u8],
    response_body: Option<&str>,
) -> Result<(String, Bytes), Error> {
    let message = DynamicMessage::decode(output.clone(), bytes)
        .map_err(|e| Error::internal("decoding a backend reply", e))?;
    let body = match response_body {
        Some(name) => message
            .get_field_by_name(name)
            .and_then(|v| v.as_message().cloned()),
        None => Some(message),
    }
    .ok_or_else(|| Error::internal("reading a raw reply", "no HttpBody"))?;
    let content_type = body
        .get_field_by_name("content_type")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let data = body
        .get_field_by_name("data")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    Ok((content_type, data))
}

/// The JSON of a reply, or of its `response_body` field.
fn reply_json(
    output: &MessageDescriptor,
    bytes: &[u8],
    response_body: Option<&str>,
    has_struct: bool,
) -> Result<Vec<u8>, Error> {
    let message = DynamicMessage::decode(output.clone(), bytes)
        .map_err(|e| Error::internal("decoding a backend reply", e))?;
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut out = Vec::with_capacity(bytes.len() * 2 + 16);
    let mut ser = serde_json::Serializer::new(&mut out);
    let field = response_body.and_then(|name| message.get_field_by_name(name));
    let result = match field.as_deref().and_then(|v| v.as_message()) {
        Some(inner) => inner.serialize_with_options(&mut ser, &options),
        None => message.serialize_with_options(&mut ser, &options),
    };
    result.map_err(|e| Error::internal("encoding a reply as JSON", e))?;
    if !has_struct {
        return Ok(out);
    }
    let mut value: Value =
        serde_json::from_slice(&out).map_err(|e| Error::internal("re-reading a reply", e))?;
    whole_numbers(&mut value);
    serde_json::to_vec(&value).map_err(|e| Error::internal("encoding a reply as JSON", e))
}

/// Struct numbers are doubles: 161.0 is written as 161, as JavaScript would.
fn whole_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n
                .as_f64()
                .filter(|f| n.is_f64() && f.fract() == 0.0 && f.abs() < 9.0e15)
            {
                *n = serde_json::Number::from(f as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::Template;
    use serde_json::json;

    fn binding(rpc: &str, method: Method, template: &str, body: Option<&str>) -> Binding {
        let rpc = rdm_proto::descriptor_pool()
            .get_service_by_name("rdm.inventory.v1.UserService")
            .and_then(|s| s.methods().find(|m| m.name() == rpc))
            .unwrap();
        Binding {
            method,
            template: Template::parse(template).unwrap(),
            body: body.map(str::to_owned),
            response_body: None,
            rpc,
            raw_request: false,
            raw_response: false,
            has_struct: false,
        }
    }

    fn decode(binding: &Binding, bytes: Bytes) -> serde_json::Value {
        let msg = DynamicMessage::decode(binding.rpc.input(), bytes).unwrap();
        serde_json::to_value(&msg).unwrap()
    }

    #[test]
    fn a_field_body_fills_that_field_and_the_query_the_rest() {
        let b = binding(
            "UpdateUser",
            Method::PUT,
            "/v1/users/{user_id}/roles",
            Some("roles"),
        );
        let vars = b.template.matches("/v1/users/u1/roles").unwrap();
        let bytes = build_request(
            &b,
            &vars,
            Some("display_name=Ann&disabled=true"),
            br#"["viewer","operator"]"#,
            "",
        )
        .unwrap();
        assert_eq!(
            decode(&b, bytes),
            json!({"userId": "u1", "roles": ["viewer", "operator"], "displayName": "Ann", "disabled": true})
        );
        let err = build_request(&b, &vars, Some("disabled=maybe"), b"[]", "").unwrap_err();
        assert_eq!(err.field(), Some("disabled"));
    }

    #[test]
    fn type_errors_name_the_kind_not_the_value() {
        assert_eq!(
            without_values("invalid type: string \"hunter2\", expected u32"),
            "invalid type: string, expected u32"
        );
        assert_eq!(
            without_values("invalid value: floating point `1.5`, expected u8"),
            "invalid value: floating point, expected u8"
        );
        assert_eq!(
            without_values("invalid type: integer `12345678`, expected a string"),
            "invalid type: integer, expected a string"
        );
        assert_eq!(
            without_values("unknown field `userName`, expected `username`"),
            "unknown field `userName`, expected `username`"
        );
        let b = binding("CreateUser", Method::POST, "/v1/users", Some("*"));
        let err = build_request(
            &b,
            &[],
            None,
            br#"{"username": "x", "password": 12345678}"#,
            "",
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("password"));
        assert!(!err.message.contains("12345678"), "{}", err.message);
    }

    #[test]
    fn patch_masks_only_the_fields_the_body_names() {
        let b = binding(
            "UpdateUser",
            Method::PATCH,
            "/v1/users/{user_id}",
            Some("*"),
        );
        let vars = b.template.matches("/v1/users/u1").unwrap();
        let bytes = build_request(
            &b,
            &vars,
            None,
            br#"{"displayName": "Ann", "roles": []}"#,
            "",
        )
        .unwrap();
        assert_eq!(decode(&b, bytes)["updateMask"], "displayName,roles");
        let err = build_request(&b, &vars, Some("x=1"), b"{}", "").unwrap_err();
        assert_eq!(err.field(), Some("query"));
    }
}
