//! Broadband Forum data models (TR-181 `Device:2`, TR-098
//! `InternetGatewayDevice:1`, USP models) from their XML: objects,
//! parameters with their types resolved through named data types, USP
//! commands and events, and checks of proposed values. The XML is read with
//! roxmltree: no DTD (so no entities), a node limit.
use crate::search::Query;
use rdm_kit::{Error, Result};
use rdm_proto::catalog as pb;
use std::collections::{BTreeMap, HashMap};

/// The standard model: TR-181 Issue 2 Amendment 16, the CWMP full XML
/// (BSD-3-Clause, licence in its header).
const TR181: &str = include_str!("../datamodels/tr-181-2-16-0-cwmp-full.xml");
/// Elements and attributes read from one document at most.
const MAX_NODES: u32 = 4_000_000;

/// What a value must be: a base type and its facets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Syntax {
    /// string, boolean, int, unsignedInt, long, unsignedLong, dateTime,
    /// base64, hexBinary, decimal.
    pub base: String,
    /// The named data type, when the parameter refers to one.
    pub data_type: String,
    /// A comma-separated list of such values.
    pub list: bool,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    /// Inclusive ranges (either bound may be open).
    pub ranges: Vec<(Option<i128>, Option<i128>)>,
    pub enumerations: Vec<String>,
    pub patterns: Vec<String>,
    pub units: String,
}

/// A parameter of an object.
#[derive(Clone, Debug)]
pub struct Parameter {
    pub name: String,
    pub writable: bool,
    pub description: String,
    pub version: String,
    pub syntax: Syntax,
}

/// A USP command (`IPPing()`): its arguments are parameters.
#[derive(Clone, Debug)]
pub struct Command {
    pub name: String,
    pub r#async: bool,
    pub input: Vec<Parameter>,
    pub output: Vec<Parameter>,
    pub description: String,
    pub version: String,
}

/// A USP event (`Boot!`).
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub arguments: Vec<Parameter>,
    pub description: String,
    pub version: String,
}

/// An object: a path ending in `.`, `{i}` for each multi-instance level.
#[derive(Clone, Debug)]
pub struct Object {
    pub path: String,
    pub writable: bool,
    pub multi_instance: bool,
    pub description: String,
    pub version: String,
    pub parameters: Vec<Parameter>,
    pub commands: Vec<Command>,
    pub events: Vec<Event>,
}

/// One data model (`Device:2.16`).
pub struct Model {
    pub name: String,
    /// The document's `spec` (`urn:broadband-forum-org:tr-181-2-16-0-cwmp`).
    pub spec: String,
    /// Compiled in and shared by every tenant.
    pub standard: bool,
    /// By path.
    pub objects: BTreeMap<String, Object>,
}

/// The standard model, loaded once per process.
pub fn standard() -> &'static Model {
    static MODEL: std::sync::LazyLock<Model> = std::sync::LazyLock::new(|| {
        // The file is compiled into the binary and tested: it parses.
        load_standard().expect("the TR-181 XML parses")
    });
    &MODEL
}

/// Parses the standard model's XML (the benchmark times it).
pub fn load_standard() -> Result<Model> {
    let mut model = parse(TR181)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("loading TR-181", "no model"))?;
    model.standard = true;
    Ok(model)
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text_of(n: roxmltree::Node, name: &str) -> String {
    child(n, name)
        .and_then(|d| d.text())
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

const BASES: [&str; 10] = [
    "string",
    "boolean",
    "int",
    "unsignedInt",
    "long",
    "unsignedLong",
    "dateTime",
    "base64",
    "hexBinary",
    "decimal",
];

/// Reads a `<syntax>` or `<dataType>` element's type and facets into `s`,
/// following `dataType ref` / `base` through `types` (named data types).
fn read_syntax(
    n: roxmltree::Node,
    types: &HashMap<String, roxmltree::Node>,
    s: &mut Syntax,
    depth: usize,
) {
    if depth > 16 {
        return;
    }
    if let Some(base) = n.attribute("base").and_then(|b| types.get(b)) {
        read_syntax(*base, types, s, depth + 1);
    }
    for c in n.children().filter(|c| c.is_element()) {
        let tag = c.tag_name().name();
        match tag {
            "list" => s.list = true,
            "dataType" => {
                if let Some(r) = c.attribute("ref") {
                    if s.data_type.is_empty() {
                        s.data_type = r.to_owned();
                    }
                    if let Some(t) = types.get(r) {
                        read_syntax(*t, types, s, depth + 1);
                    }
                }
                read_facets(c, s);
            }
            t if BASES.contains(&t) => {
                s.base = t.to_owned();
                read_facets(c, s);
            }
            _ => {}
        }
    }
}

fn read_facets(n: roxmltree::Node, s: &mut Syntax) {
    let number = |v: Option<&str>| v.and_then(|v| v.parse::<i128>().ok());
    for f in n.children().filter(|c| c.is_element()) {
        match f.tag_name().name() {
            "size" => {
                if let Some(v) = f.attribute("minLength").and_then(|v| v.parse().ok()) {
                    s.min_length = Some(v);
                }
                if let Some(v) = f.attribute("maxLength").and_then(|v| v.parse().ok()) {
                    s.max_length = Some(v);
                }
            }
            "range" => s.ranges.push((
                number(f.attribute("minInclusive")),
                number(f.attribute("maxInclusive")),
            )),
            "enumeration" => {
                if let Some(v) = f.attribute("value") {
                    s.enumerations.push(v.to_owned());
                }
            }
            "pattern" => {
                if let Some(v) = f.attribute("value") {
                    s.patterns.push(v.to_owned());
                }
            }
            "units" => s.units = f.attribute("value").unwrap_or_default().to_owned(),
            _ => {}
        }
    }
}

/// A `<parameter>`, its syntax resolved through `types`.
fn parameter(p: roxmltree::Node, types: &HashMap<String, roxmltree::Node>) -> Option<Parameter> {
    let mut syntax = Syntax::default();
    if let Some(s) = child(p, "syntax") {
        read_syntax(s, types, &mut syntax, 0);
    }
    Some(Parameter {
        name: p.attribute("name")?.to_owned(),
        // writeOnceReadOnly may be set (once).
        writable: matches!(
            p.attribute("access"),
            Some("readWrite" | "writeOnceReadOnly")
        ),
        description: text_of(p, "description"),
        version: p.attribute("version").unwrap_or_default().to_owned(),
        syntax,
    })
}

/// A command's `<input>`/`<output>` or an event's arguments: parameters,
/// and objects' parameters under the object's name (`Result.{i}.Host`).
fn arguments(n: roxmltree::Node, types: &HashMap<String, roxmltree::Node>) -> Vec<Parameter> {
    let mut out = Vec::new();
    for c in n.children().filter(|c| c.is_element()) {
        match c.tag_name().name() {
            "parameter" => out.extend(parameter(c, types)),
            "object" => {
                let prefix = c.attribute("name").unwrap_or_default();
                out.extend(arguments(c, types).into_iter().map(|mut p| {
                    p.name = format!("{prefix}{}", p.name);
                    p
                }));
            }
            _ => {}
        }
    }
    out
}

/// `n`'s child elements named `tag`.
fn elements<'a, 'i>(
    n: roxmltree::Node<'a, 'i>,
    tag: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    n.children().filter(move |c| c.has_tag_name(tag))
}

/// Every model in one BBF data-model XML document.
pub fn parse(xml: &str) -> Result<Vec<Model>> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    let doc = roxmltree::Document::parse_with_options(xml, options)
        .map_err(|e| Error::invalid("file", format!("not a data model document rdm reads: {e}")))?;
    let root = doc.root_element();
    let types: HashMap<String, roxmltree::Node> = root
        .children()
        .filter(|c| c.has_tag_name("dataType"))
        .filter_map(|c| Some((c.attribute("name")?.to_owned(), c)))
        .collect();
    let mut models = Vec::new();
    for m in elements(root, "model") {
        let mut objects = BTreeMap::new();
        for o in elements(m, "object") {
            let Some(path) = o.attribute("name") else {
                continue;
            };
            let commands = elements(o, "command")
                .filter_map(|c| {
                    Some(Command {
                        name: c.attribute("name")?.to_owned(),
                        r#async: c.attribute("async") == Some("true"),
                        input: child(c, "input")
                            .map(|i| arguments(i, &types))
                            .unwrap_or_default(),
                        output: child(c, "output")
                            .map(|i| arguments(i, &types))
                            .unwrap_or_default(),
                        description: text_of(c, "description"),
                        version: c.attribute("version").unwrap_or_default().to_owned(),
                    })
                })
                .collect();
            let events = elements(o, "event")
                .filter_map(|e| {
                    Some(Event {
                        name: e.attribute("name")?.to_owned(),
                        arguments: arguments(e, &types),
                        description: text_of(e, "description"),
                        version: e.attribute("version").unwrap_or_default().to_owned(),
                    })
                })
                .collect();
            objects.insert(
                path.to_owned(),
                Object {
                    path: path.to_owned(),
                    writable: matches!(o.attribute("access"), Some("readWrite" | "create")),
                    multi_instance: path.ends_with("{i}."),
                    description: text_of(o, "description"),
                    version: o.attribute("version").unwrap_or_default().to_owned(),
                    parameters: elements(o, "parameter")
                        .filter_map(|p| parameter(p, &types))
                        .collect(),
                    commands,
                    events,
                },
            );
        }
        models.push(Model {
            name: m.attribute("name").unwrap_or_default().to_owned(),
            spec: root.attribute("spec").unwrap_or_default().to_owned(),
            standard: false,
            objects,
        });
    }
    if models.is_empty() {
        return Err(Error::invalid("file", "the document defines no <model>"));
    }
    if let Some(m) = models.iter().find(|m| !is_model_name(&m.name)) {
        return Err(Error::invalid(
            "file",
            format!(
                "a <model> is named {:?}, not NAME:MAJOR.MINOR (Device:2.16)",
                m.name
            ),
        ));
    }
    Ok(models)
}

/// `Device:2.16`, `InternetGatewayDevice:1.14`, `STBService:1`.
fn is_model_name(name: &str) -> bool {
    let Some((object, version)) = name.split_once(':') else {
        return false;
    };
    name.len() <= 128
        && object.starts_with(|c: char| c.is_ascii_alphabetic())
        && object
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !version.is_empty()
        && version.split('.').all(|n| n.parse::<u32>().is_ok())
}

/// Checks a SET's values against the standard model before anything is
/// sent (`validate: true` of the WebPA and TR-069 SETs): the first that
/// fails is a 400 naming `parameters[i].name` or `.value`, with the reason
/// and its `validation` code.
pub fn check_sets<'a>(sets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<()> {
    let sets = (sets.into_iter().enumerate())
        .map(|(i, (path, value))| (format!("parameters[{i}]"), path.to_owned(), value));
    check_fields(sets, "name")
}

/// Checks `(field, path, value)` settings against the standard model: the
/// first that fails is a 400 naming `{field}.{name}` (the path is wrong or
/// read-only) or `{field}.value`, with the reason and its `validation` code.
pub fn check_fields<'a>(
    sets: impl IntoIterator<Item = (String, String, &'a str)>,
    name: &str,
) -> Result<()> {
    let model = standard();
    for (field, path, value) in sets {
        if let Err((code, reason)) = model.check(&path, value) {
            let part = if matches!(code, "unknown_path" | "read_only") {
                name
            } else {
                "value"
            };
            return Err(
                Error::invalid(format!("{field}.{part}"), reason).with_meta("validation", code)
            );
        }
    }
    Ok(())
}

/// A path with instance numbers as the model writes it: `Device.WiFi.SSID.1.SSID`
/// is `Device.WiFi.SSID.{i}.SSID`, and so is a USP path's `*` or search
/// expression (`Device.WiFi.SSID.[Alias=="a.b"].SSID`).
pub fn generic(path: &str) -> String {
    let mut parts = Vec::new();
    let (mut part, mut depth) = (String::new(), 0usize);
    for c in path.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => {
                parts.push(std::mem::take(&mut part));
                continue;
            }
            _ => {}
        }
        part.push(c);
    }
    parts.push(part);
    parts
        .iter()
        .map(|part| {
            let instance = part == "*"
                || (part.starts_with('[') && part.ends_with(']'))
                || (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
            if instance { "{i}" } else { part.as_str() }
        })
        .collect::<Vec<_>>()
        .join(".")
}

impl Model {
    /// Whether `name` names this model: exactly, or by its major version
    /// (`Device:2` for `Device:2.16`).
    pub fn is_named(&self, name: &str) -> bool {
        let name = name.trim();
        self.name == name
            || self
                .name
                .split_once('.')
                .is_some_and(|(major, _)| major == name)
    }

    /// Its version, as numbers (`Device:2.16`: [2, 16]).
    pub fn version(&self) -> Vec<u32> {
        let (_, v) = self.name.split_once(':').unwrap_or_default();
        v.split('.').filter_map(|n| n.parse().ok()).collect()
    }

    pub fn summary(&self) -> pb::DataModel {
        let count = |f: fn(&Object) -> usize| self.objects.values().map(f).sum::<usize>() as i32;
        pb::DataModel {
            name: self.name.clone(),
            standard: self.standard,
            object_count: self.objects.len() as i32,
            parameter_count: count(|o| o.parameters.len()),
            command_count: count(|o| o.commands.len()),
            event_count: count(|o| o.events.len()),
            spec: self.spec.clone(),
        }
    }

    /// An object with its child objects and parameters.
    pub fn tree(&self, path: &str) -> Result<pb::GetDataModelTreeResponse> {
        let path = match path.trim() {
            "" => self.objects.keys().next().cloned().unwrap_or_default(),
            p if p.ends_with('.') => generic(p),
            p => generic(&format!("{p}.")),
        };
        let object = self
            .objects
            .get(&path)
            .ok_or_else(|| Error::not_found(format!("{} has no object {path}", self.name)))?;
        let objects = self
            .objects
            .range(path.clone()..)
            .skip(1)
            .take_while(|(p, _)| p.starts_with(&path))
            .filter(|(p, _)| is_child(&path, p))
            .map(|(_, o)| o.to_pb())
            .collect();
        Ok(pb::GetDataModelTreeResponse {
            object: Some(object.to_pb()),
            objects,
            parameters: object
                .parameters
                .iter()
                .map(|p| p.to_pb(&object.path))
                .collect(),
            commands: object
                .commands
                .iter()
                .map(|c| c.to_pb(&object.path))
                .collect(),
            events: object
                .events
                .iter()
                .map(|e| e.to_pb(&object.path))
                .collect(),
        })
    }

    /// Objects and parameters matching `q`, best first (see the proto).
    pub fn search(&self, q: &str, size: usize) -> Vec<pb::DataModelHit> {
        let query = Query::new(q);
        let mut hits = Vec::new();
        for o in self.objects.values() {
            let last = o.path.trim_end_matches('.').trim_end_matches(".{i}");
            let last = last.rsplit('.').next().unwrap_or_default();
            if let Some((score, matched)) = query.rank(last, || o.description.clone()) {
                hits.push((score + 1, o.path.clone(), "object", matched));
            }
            let members = (o
                .parameters
                .iter()
                .map(|p| (&p.name, &p.description, "parameter")))
            .chain(
                o.commands
                    .iter()
                    .map(|c| (&c.name, &c.description, "command")),
            )
            .chain(o.events.iter().map(|e| (&e.name, &e.description, "event")));
            for (name, description, kind) in members {
                let bare = name.trim_end_matches(['(', ')', '!']);
                if let Some((score, matched)) = query.rank(bare, || description.clone()) {
                    hits.push((score, format!("{}{name}", o.path), kind, matched));
                }
            }
        }
        // Equal ranks: the shallower path (the more general) first.
        let depth = |p: &str| p.matches('.').count();
        hits.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| depth(&a.1).cmp(&depth(&b.1)))
                .then_with(|| a.1.cmp(&b.1))
        });
        hits.into_iter()
            .take(size)
            .map(|(score, path, kind, matched)| pb::DataModelHit {
                model: self.name.clone(),
                path,
                kind: kind.to_owned(),
                matched: matched.to_owned(),
                score,
            })
            .collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.objects.values().map(|o| o.parameters.len()).sum()
    }

    /// The object holding what `path` names (instance numbers or `{i}`),
    /// and that member's name.
    fn member(&self, path: &str) -> Option<(&Object, String)> {
        let generic = generic(path.trim());
        let (object, name) = generic.rsplit_once('.')?;
        let object = self.objects.get(&format!("{object}."))?;
        Some((object, name.to_owned()))
    }

    /// The parameter a path names (instance numbers or `{i}`).
    pub fn parameter(&self, path: &str) -> Option<(&Object, &Parameter)> {
        let (object, name) = self.member(path)?;
        let param = object.parameters.iter().find(|p| p.name == name)?;
        Some((object, param))
    }

    /// What GetDataModelParameter answers for `path`: a parameter, or a USP
    /// command (`...()`) or event (`...!`).
    pub fn describe(&self, path: &str) -> Result<pb::GetDataModelParameterResponse> {
        let missing = || Error::not_found(format!("{} has no {path}", self.name));
        let (object, name) = self.member(path).ok_or_else(missing)?;
        let o = &object.path;
        let mut out = pb::GetDataModelParameterResponse::default();
        if name.ends_with(')') {
            let c = object.commands.iter().find(|c| c.name == name);
            out.command = Some(c.ok_or_else(missing)?.to_pb(o));
        } else if name.ends_with('!') {
            let e = object.events.iter().find(|e| e.name == name);
            out.event = Some(e.ok_or_else(missing)?.to_pb(o));
        } else {
            let p = object.parameters.iter().find(|p| p.name == name);
            out.parameter = Some(p.ok_or_else(missing)?.to_pb(o));
        }
        Ok(out)
    }

    /// Checks a proposed value for `path`; the reason it is refused.
    pub fn check(&self, path: &str, value: &str) -> Result<(), (&'static str, String)> {
        let Some((_, p)) = self.parameter(path) else {
            return Err((
                "unknown_path",
                format!("{} has no parameter {path}", self.name),
            ));
        };
        if !p.writable {
            return Err(("read_only", format!("{path} is read-only")));
        }
        let s = &p.syntax;
        let items: Vec<&str> = if s.list {
            value
                .split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .collect()
        } else {
            vec![value]
        };
        if s.list
            && let Some(max) = s.max_length.filter(|m| value.chars().count() as u64 > *m)
        {
            return Err(("too_long", format!("{path} takes at most {max} characters")));
        }
        for item in items {
            check_one(path, s, item)?;
        }
        Ok(())
    }
}

fn check_one(path: &str, s: &Syntax, v: &str) -> Result<(), (&'static str, String)> {
    let wrong = |what: &str| Err(("wrong_type", format!("{path} takes {what}, not {v:?}")));
    let integer = match s.base.as_str() {
        "boolean" => {
            return match v {
                "true" | "false" | "1" | "0" => Ok(()),
                _ => wrong("a boolean (true, false, 1, 0)"),
            };
        }
        "int" | "long" => match v.parse::<i128>() {
            Ok(n) => Some(n),
            Err(_) => return wrong("an integer"),
        },
        "unsignedInt" | "unsignedLong" => match v.parse::<u64>() {
            Ok(n) => Some(i128::from(n)),
            Err(_) => return wrong("an unsigned integer"),
        },
        "dateTime" => {
            return if chrono_like(v) {
                Ok(())
            } else {
                wrong("a dateTime (2026-11-30T12:00:00Z)")
            };
        }
        "hexBinary" if !v.len().is_multiple_of(2) || !v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return wrong("hex digits in pairs");
        }
        _ => None,
    };
    let bits = match s.base.as_str() {
        "int" => Some((i128::from(i32::MIN), i128::from(i32::MAX))),
        "unsignedInt" => Some((0, i128::from(u32::MAX))),
        _ => None,
    };
    if let (Some(n), Some((lo, hi))) = (integer, bits)
        && !(lo..=hi).contains(&n)
    {
        return Err(("out_of_range", format!("{path}: {n} is outside {lo}..{hi}")));
    }
    if let Some(n) = integer
        && !s.ranges.is_empty()
        && !s
            .ranges
            .iter()
            .any(|(lo, hi)| lo.is_none_or(|l| n >= l) && hi.is_none_or(|h| n <= h))
    {
        let ranges: Vec<String> = s
            .ranges
            .iter()
            .map(|(lo, hi)| {
                format!(
                    "{}..{}",
                    lo.map(|l| l.to_string()).unwrap_or_default(),
                    hi.map(|h| h.to_string()).unwrap_or_default()
                )
            })
            .collect();
        return Err((
            "out_of_range",
            format!("{path}: {n} is outside {}", ranges.join(", ")),
        ));
    }
    if s.base == "string" || s.base.is_empty() {
        let len = v.chars().count() as u64;
        if !s.list && s.max_length.is_some_and(|m| len > m) {
            return Err((
                "too_long",
                format!(
                    "{path} takes at most {} characters",
                    s.max_length.unwrap_or_default()
                ),
            ));
        }
        if s.min_length.is_some_and(|m| len < m) {
            return Err((
                "too_short",
                format!(
                    "{path} takes at least {} characters",
                    s.min_length.unwrap_or_default()
                ),
            ));
        }
        if !s.enumerations.is_empty() && !s.enumerations.iter().any(|e| e == v) {
            return Err((
                "not_in_enumeration",
                format!("{path} takes one of {}", s.enumerations.join(", ")),
            ));
        }
        if !s.patterns.is_empty()
            && !s.patterns.iter().any(|p| {
                // An empty pattern means "the empty string"; one that does
                // not compile is not held against the value.
                regex::Regex::new(&format!("^(?:{p})$")).map_or(true, |r| r.is_match(v))
            })
        {
            return Err((
                "pattern_mismatch",
                format!("{path}: {v:?} does not match {}", s.patterns.join(" or ")),
            ));
        }
    }
    Ok(())
}

/// `YYYY-MM-DDThh:mm:ss` with an optional fraction and zone.
fn chrono_like(v: &str) -> bool {
    let b = v.as_bytes();
    b.len() >= 19
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19]
            .into_iter()
            .all(|r| b[r].iter().all(u8::is_ascii_digit))
}

/// `child` is an object directly under `parent` (a table's `{i}.` level
/// counts as part of the table's name).
fn is_child(parent: &str, child: &str) -> bool {
    let rest = child[parent.len()..].trim_end_matches('.');
    let rest = rest.strip_suffix(".{i}").unwrap_or(rest);
    !rest.is_empty() && !rest.contains('.')
}

impl Object {
    fn to_pb(&self) -> pb::DataModelObject {
        pb::DataModelObject {
            path: self.path.clone(),
            writable: self.writable,
            multi_instance: self.multi_instance,
            description: self.description.clone(),
            version: self.version.clone(),
        }
    }
}

impl Command {
    fn to_pb(&self, object: &str) -> pb::DataModelCommand {
        let args = |ps: &[Parameter]| ps.iter().map(|p| p.to_pb("")).collect();
        pb::DataModelCommand {
            path: format!("{object}{}", self.name),
            name: self.name.clone(),
            r#async: self.r#async,
            input: args(&self.input),
            output: args(&self.output),
            description: self.description.clone(),
            version: self.version.clone(),
        }
    }
}

impl Event {
    fn to_pb(&self, object: &str) -> pb::DataModelEvent {
        pb::DataModelEvent {
            path: format!("{object}{}", self.name),
            name: self.name.clone(),
            arguments: self.arguments.iter().map(|p| p.to_pb("")).collect(),
            description: self.description.clone(),
            version: self.version.clone(),
        }
    }
}

impl Parameter {
    pub fn to_pb(&self, object: &str) -> pb::DataModelParameter {
        pb::DataModelParameter {
            path: format!("{object}{}", self.name),
            name: self.name.clone(),
            writable: self.writable,
            syntax: Some(self.syntax.to_pb()),
            description: self.description.clone(),
            version: self.version.clone(),
        }
    }
}

impl Syntax {
    pub fn to_pb(&self) -> pb::ParameterSyntax {
        pb::ParameterSyntax {
            base_type: self.base.clone(),
            data_type: self.data_type.clone(),
            list: self.list,
            min_length: self.min_length.unwrap_or_default(),
            max_length: self.max_length.unwrap_or_default(),
            ranges: self
                .ranges
                .iter()
                .map(|(lo, hi)| pb::ValueRange {
                    min: lo.map(|l| l.to_string()).unwrap_or_default(),
                    max: hi.map(|h| h.to_string()).unwrap_or_default(),
                })
                .collect(),
            enumerations: self.enumerations.clone(),
            patterns: self.patterns.clone(),
            units: self.units.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_model_reads_whole() {
        let m = standard();
        assert_eq!(m.name, "Device:2.16");
        // The file's own counts, as Python's ElementTree reads it: the
        // model's named <object>s and their <parameter>s (the profiles'
        // <object ref=...> are not objects).
        assert_eq!(m.objects.len(), 724);
        assert_eq!(m.parameter_count(), 5872);
        let (object, ssid) = m.parameter("Device.WiFi.SSID.1.SSID").unwrap();
        assert!(object.multi_instance && ssid.writable);
        assert_eq!(ssid.syntax.max_length, Some(32));
        let (_, state) = m
            .parameter("Device.IP.Diagnostics.IPPing.DiagnosticsState")
            .unwrap();
        assert!(
            state.syntax.enumerations.contains(&"Requested".to_owned()),
            "{state:?}"
        );
    }

    #[test]
    fn hostile_documents_are_refused() {
        let laughs = r#"<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><document><model name="&b;"/></document>"#;
        for xml in [laughs, "<document>", "<document/>"] {
            let e = parse(xml).err().expect(xml);
            assert_eq!(e.field(), Some("file"), "{xml}");
        }
    }

    #[test]
    fn each_failure_kind_is_named() {
        let m = standard();
        let kind = |path: &str, value: &str| m.check(path, value).err().map(|e| e.0);
        assert_eq!(kind("Device.WiFi.SSID.1.SSID", "cafe"), None);
        assert_eq!(kind("Device.WiFi.SSID.1.Nope", "x"), Some("unknown_path"));
        assert_eq!(
            kind("Device.DeviceInfo.SerialNumber", "x"),
            Some("read_only")
        );
        assert_eq!(kind("Device.WiFi.SSID.1.Enable", "yes"), Some("wrong_type"));
        assert_eq!(
            kind("Device.WiFi.SSID.1.SSID", &"x".repeat(33)),
            Some("too_long")
        );
        assert_eq!(
            kind("Device.ManagementServer.PeriodicInformInterval", "0"),
            Some("out_of_range")
        );
        assert_eq!(
            kind("Device.IP.Diagnostics.IPPing.DiagnosticsState", "Go"),
            Some("not_in_enumeration")
        );
        assert_eq!(
            kind("Device.Ethernet.Link.1.MACAddress", "00:11:22"),
            Some("pattern_mismatch")
        );
        assert_eq!(
            kind("Device.Ethernet.Link.1.MACAddress", "00:11:22:33:44:55"),
            None
        );
        assert_eq!(
            generic("Device.WiFi.SSID.12.SSID"),
            "Device.WiFi.SSID.{i}.SSID"
        );
        assert_eq!(
            generic("Device.IP.Interface.*.IPv4Address.[IPAddress==\"10.0.0.1\"].Enable"),
            "Device.IP.Interface.{i}.IPv4Address.{i}.Enable"
        );
        assert!(is_child("Device.WiFi.", "Device.WiFi.SSID.{i}."));
        assert!(!is_child("Device.WiFi.", "Device.WiFi.SSID.{i}.Stats."));
    }
}
