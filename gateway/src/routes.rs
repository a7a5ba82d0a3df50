//! REST routes read from the `google.api.http` annotations in the descriptor
//! set: path templates (`/v1/tenants/{tenant_id}/users`, `{name=a/*}`,
//! `**`, `:verb`), body and response_body. Nothing here knows a service.
use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

/// One HTTP binding of one RPC.
#[derive(Clone, Debug)]
pub struct Binding {
    pub method: Method,
    pub template: Template,
    /// `Some("*")`, `Some(field)` or `None` (everything from path and query).
    pub body: Option<String>,
    pub response_body: Option<String>,
    pub rpc: MethodDescriptor,
    /// The body field is a `google.api.HttpBody`: the request body is taken raw.
    pub raw_request: bool,
    /// The reply (or its response_body) is a `google.api.HttpBody`: sent raw.
    pub raw_response: bool,
    /// The reply holds `google.protobuf.Struct` values, whose numbers are
    /// doubles: whole ones are written as integers (161, not 161.0).
    pub has_struct: bool,
}

fn holds_struct(msg: &prost_reflect::MessageDescriptor, seen: &mut Vec<String>) -> bool {
    if msg.full_name() == "google.protobuf.Struct" || msg.full_name() == "google.protobuf.Value" {
        return true;
    }
    if seen.iter().any(|s| s == msg.full_name()) {
        return false;
    }
    seen.push(msg.full_name().to_owned());
    msg.fields()
        .any(|f| matches!(f.kind(), prost_reflect::Kind::Message(m) if holds_struct(&m, seen)))
}

const HTTP_BODY: &str = "google.api.HttpBody";

fn is_http_body(msg: &prost_reflect::MessageDescriptor, field: Option<&str>) -> bool {
    match field {
        None => msg.full_name() == HTTP_BODY,
        Some(name) => msg.get_field_by_name(name).is_some_and(
            |f| matches!(f.kind(), prost_reflect::Kind::Message(m) if m.full_name() == HTTP_BODY),
        ),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    /// `*`: one segment.
    Any,
    /// `**`: the rest of the path.
    Rest,
}

#[derive(Clone, Debug)]
struct Variable {
    field_path: String,
    start: usize,
    end: usize,
}

/// Path variables of a match: (field path, value).
pub type Vars = Vec<(String, String)>;

/// A parsed path template.
#[derive(Clone, Debug)]
pub struct Template {
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, String> {
        let path = source
            .strip_prefix('/')
            .ok_or_else(|| format!("{source}: must start with /"))?;
        // The verb follows the last ':' that is outside braces.
        let mut depth = 0;
        let mut verb_at = None;
        for (i, c) in path.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => verb_at = Some(i),
                _ => {}
            }
        }
        let (path, verb) = match verb_at {
            Some(i) => (&path[..i], Some(path[i + 1..].to_owned())),
            None => (path, None),
        };
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut rest = path;
        while !rest.is_empty() {
            if let Some(inner) = rest.strip_prefix('{') {
                let close = inner
                    .find('}')
                    .ok_or_else(|| format!("{source}: unclosed {{"))?;
                let (field, pattern) = match inner[..close].split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (&inner[..close], "*"),
                };
                let start = segments.len();
                for part in pattern.split('/') {
                    segments.push(match part {
                        "*" => Segment::Any,
                        "**" => Segment::Rest,
                        lit => Segment::Literal(lit.to_owned()),
                    });
                }
                variables.push(Variable {
                    field_path: field.to_owned(),
                    start,
                    end: segments.len(),
                });
                rest = inner[close + 1..]
                    .strip_prefix('/')
                    .unwrap_or(&inner[close + 1..]);
            } else {
                let (part, tail) = rest.split_once('/').unwrap_or((rest, ""));
                segments.push(match part {
                    "*" => Segment::Any,
                    "**" => Segment::Rest,
                    lit => Segment::Literal(lit.to_owned()),
                });
                rest = tail;
            }
        }
        if segments.iter().rev().skip(1).any(|s| *s == Segment::Rest) {
            return Err(format!("{source}: ** must be last"));
        }
        Ok(Self {
            segments,
            variables,
            verb,
        })
    }

    /// More literal segments first, so `/v1/users/me` wins over `/v1/users/{id}`.
    fn specificity(&self) -> (usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (literals, self.verb.is_some())
    }

    /// The variables of `path` (`field_path`, percent-decoded value) if it matches.
    pub fn matches(&self, path: &str) -> Option<Vars> {
        let mut path = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            path = path.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = if path.is_empty() {
            Vec::new()
        } else {
            path.split('/').collect()
        };
        let mut taken = Vec::with_capacity(self.segments.len());
        for (i, segment) in self.segments.iter().enumerate() {
            match segment {
                Segment::Literal(lit) => {
                    if parts.get(i) != Some(&lit.as_str()) {
                        return None;
                    }
                    taken.push(parts[i].to_owned());
                }
                Segment::Any => {
                    let part = parts.get(i).filter(|p| !p.is_empty())?;
                    taken.push(percent_decode(part)?);
                }
                Segment::Rest => {
                    taken.push(parts.get(i..).map(|p| p.join("/")).unwrap_or_default());
                    break;
                }
            }
        }
        let consumed = if self.segments.last() == Some(&Segment::Rest) {
            parts.len()
        } else {
            taken.len()
        };
        if consumed != parts.len() || taken.len() != self.segments.len() {
            return None;
        }
        Some(
            self.variables
                .iter()
                .map(|v| (v.field_path.clone(), taken[v.start..v.end].join("/")))
                .collect(),
        )
    }

    /// The template in OpenAPI form: `/v1/tenants/{tenant_id}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            out.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.start == i) {
                out.push_str(&format!("{{{}}}", v.field_path));
                i = v.end.max(i + 1);
                continue;
            }
            match &self.segments[i] {
                Segment::Literal(l) => out.push_str(l),
                Segment::Any => out.push('*'),
                Segment::Rest => out.push_str("**"),
            }
            i += 1;
        }
        if out.is_empty() {
            out.push('/');
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field_path.as_str())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Every binding in `pool` whose RPC `exposed` accepts, most specific first.
pub fn bindings(
    pool: &DescriptorPool,
    exposed: impl Fn(&MethodDescriptor) -> bool,
) -> Result<Vec<Binding>, String> {
    let Some(ext) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for service in pool.services() {
        for rpc in service.methods() {
            let options = rpc.options();
            if !exposed(&rpc) || !options.has_extension(&ext) {
                continue;
            }
            let rule = options.get_extension(&ext);
            let Some(rule) = rule.as_message() else {
                continue;
            };
            push_rule(rule, &rpc, &mut out)?;
            if let Some(Value::List(more)) =
                rule.get_field_by_name("additional_bindings").as_deref()
            {
                for extra in more.iter().filter_map(Value::as_message) {
                    push_rule(extra, &rpc, &mut out)?;
                }
            }
        }
    }
    out.sort_by_key(|b| std::cmp::Reverse(b.template.specificity()));
    Ok(out)
}

fn push_rule(
    rule: &DynamicMessage,
    rpc: &MethodDescriptor,
    out: &mut Vec<Binding>,
) -> Result<(), String> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|s| !s.is_empty())
    };
    let mut found = None;
    for (name, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if rule.has_field_by_name(name) {
            found = text(name).map(|p| (method, p));
        }
    }
    let custom = rule
        .has_field_by_name("custom")
        .then(|| rule.get_field_by_name("custom"))
        .flatten()
        .and_then(|v| v.as_message().cloned());
    if let Some(custom) = custom {
        let field = |name: &str| {
            custom
                .get_field_by_name(name)
                .and_then(|v| v.as_str().map(str::to_owned))
        };
        if let (Some(kind), Some(path)) = (field("kind"), field("path")) {
            let method = Method::from_bytes(kind.as_bytes()).map_err(|e| format!("{kind}: {e}"))?;
            found = Some((method, path));
        }
    }
    let Some((method, path)) = found else {
        return Ok(());
    };
    let template = Template::parse(&path).map_err(|e| format!("{}: {e}", rpc.full_name()))?;
    let (body, response_body) = (text("body"), text("response_body"));
    let raw_request = body
        .as_deref()
        .is_some_and(|b| b != "*" && is_http_body(&rpc.input(), Some(b)));
    let raw_response = is_http_body(&rpc.output(), response_body.as_deref());
    let has_struct = holds_struct(&rpc.output(), &mut Vec::new());
    out.push(Binding {
        method,
        template,
        body,
        response_body,
        rpc: rpc.clone(),
        raw_request,
        raw_response,
        has_struct,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &str, p: &str) -> Option<Vec<(String, String)>> {
        Template::parse(t).unwrap().matches(p)
    }

    #[test]
    fn templates_match_what_google_api_http_describes() {
        assert_eq!(
            vars("/v1/tenants/{tenant_id}", "/v1/tenants/t%201"),
            Some(vec![("tenant_id".into(), "t 1".into())])
        );
        assert_eq!(vars("/v1/tenants/{tenant_id}", "/v1/tenants"), None);
        assert_eq!(vars("/v1/tenants/{tenant_id}", "/v1/tenants/a/b"), None);
        assert_eq!(vars("/v1/users:export", "/v1/users:export"), Some(vec![]));
        assert_eq!(vars("/v1/users:export", "/v1/users"), None);
        assert_eq!(
            vars("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(vec![("name".into(), "shelves/1/books/2".into())])
        );
        assert_eq!(
            vars("/v1/files/{path=**}", "/v1/files/a/b/c"),
            Some(vec![("path".into(), "a/b/c".into())])
        );
        assert_eq!(
            vars("/.well-known/jwks.json", "/.well-known/jwks.json"),
            Some(vec![])
        );
        assert_eq!(
            Template::parse("/v1/{name=shelves/*}:move")
                .unwrap()
                .openapi_path(),
            "/v1/{name}:move"
        );
    }

    #[test]
    fn every_annotated_rpc_has_a_binding() {
        let pool = rdm_proto::descriptor_pool();
        let all = bindings(pool, |_| true).unwrap();
        let login = all
            .iter()
            .find(|b| b.rpc.full_name() == "rdm.inventory.v1.AuthService.Login")
            .unwrap();
        assert_eq!(
            (login.method.clone(), login.template.openapi_path()),
            (Method::POST, "/v1/auth/login".to_owned())
        );
        assert_eq!(login.body.as_deref(), Some("*"));
        let create = all.iter().find(|b| b.rpc.name() == "CreateTenant").unwrap();
        assert_eq!(create.response_body.as_deref(), Some("tenant"));
    }
}
