//! A simulated USP (TR-369) agent over the MQTT 5 MTP, written from TR-369
//! and the BBF texts in `proto/third_party/usp` (the Record and Msg protos,
//! `mtp-mqtt.md`), not from rdm's controller. It connects with its
//! `usp-endpoint-id`, subscribes to its agent topic, and answers each
//! request Record addressed to it on the publish's Response Topic with
//! Content Type `usp.msg`.
//!
//! Its data model is a small TR-181 tree: DeviceInfo, a `WiFi.SSID.{i}.`
//! table (unique key Alias), the `LocalAgent.Subscription.{i}.` table
//! (unique key ID), a sync `Reboot()` followed by a `Boot!` event, and an
//! async `IP.Diagnostics.IPPing()`, which GetSupportedDM describes. Paths
//! may use `*` and search expressions (`[Alias=="guest"]`, `==` and `!=` on
//! one parameter) in place of an instance number. Errors are TR-369's: 7026
//! invalid path, 7016 object does not exist, 7004 invalid arguments with a
//! 7013 param_err for a required Set of a read-only parameter, 7021 when a
//! required parameter fails under allow_partial.
//!
//! Notifications: for each enabled subscription whose ReferenceList names
//! what changed, a Notify (ValueChange on a Set, ObjectCreation on an Add,
//! ObjectDeletion on a Delete, OperationComplete when `IPPing()` is done,
//! Event `Boot!` after `Reboot()`) goes to the controller that added the
//! subscription, on the agent's configured controller topic, after the
//! response to the request that caused it; `send_resp` is the
//! subscription's NotifRetry, and the NotifyResps it gets are kept.
//!
//! Where TR-369 leaves a choice, the simulator's: a Get of an object path
//! answers one resolved path per object (sub-objects on their own);
//! `max_depth` is not applied; a Notify that gets no NotifyResp is not sent
//! again.
use msg::operate_resp::operation_result::OperationResp;
use prost::Message;
use rdm_proto::{usp_msg as msg, usp_record as rec};
use rumqttc::v5::{
    AsyncClient, Event, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{ConnectProperties, Packet, PublishProperties},
    },
};
use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

const INVALID_ARGUMENTS: u32 = 7004;
const NOT_WRITABLE: u32 = 7013;
const OBJECT_DOES_NOT_EXIST: u32 = 7016;
const REQUIRED_FAILED: u32 = 7021;
const INVALID_PATH: u32 = 7026;
const SSID_TABLE: &str = "Device.WiFi.SSID.";
const SUBSCRIPTIONS: &str = "Device.LocalAgent.Subscription.";
const IPPING: &str = "Device.IP.Diagnostics.IPPing()";

/// A table of the agent: its path, unique key, and columns (name, writable,
/// default, where `{i}` is the instance number).
struct Table {
    path: &'static str,
    key: &'static str,
    columns: &'static [(&'static str, bool, &'static str)],
}

const TABLES: [Table; 2] = [
    Table {
        path: SSID_TABLE,
        key: "Alias",
        columns: &[
            ("Alias", true, "cpe-{i}"),
            ("Enable", true, "true"),
            ("SSID", true, "ssid-{i}"),
            ("Status", false, "Up"),
        ],
    },
    Table {
        path: SUBSCRIPTIONS,
        key: "ID",
        columns: &[
            ("Enable", true, "false"),
            ("ID", true, "sub-{i}"),
            ("NotifRetry", true, "false"),
            ("NotifType", true, ""),
            ("Persistent", true, "false"),
            ("Recipient", false, "Device.LocalAgent.Controller.1"),
            ("ReferenceList", true, ""),
        ],
    },
];

/// The table `path` is in (or is).
fn table_of(path: &str) -> Option<&'static Table> {
    TABLES.iter().find(|t| path.starts_with(t.path))
}

/// Whether a ReferenceList entry names `path`: the same path (`*` for
/// any instance number), or an object path (ending in `.`) above it.
fn refers(reference: &str, path: &str) -> bool {
    let segment = |r: &str, p: &str| r == p || (r == "*" && p.bytes().all(|b| b.is_ascii_digit()));
    let (refs, parts): (Vec<&str>, Vec<&str>) =
        (reference.split('.').collect(), path.split('.').collect());
    match reference.strip_suffix('.') {
        Some(_) => {
            let refs = &refs[..refs.len() - 1];
            parts.len() > refs.len() && refs.iter().zip(&parts).all(|(r, p)| segment(r, p))
        }
        None => refs.len() == parts.len() && refs.iter().zip(&parts).all(|(r, p)| segment(r, p)),
    }
}

#[derive(Clone, Debug)]
struct Param {
    value: String,
    writable: bool,
}

/// The agent's data model: parameters by full path, the next instance
/// number of each table, and the notifications waiting to go out.
struct Model {
    params: BTreeMap<String, Param>,
    next: HashMap<&'static str, u32>,
    reboots: u32,
    /// The controller (endpoint id) that added each subscription instance.
    recipients: HashMap<String, String>,
    /// The endpoint id of the controller of the request being answered.
    controller: String,
    /// Notifications for controllers (endpoint id, Notify), sent after the
    /// response.
    outbox: Vec<(String, msg::Notify)>,
    /// Async commands run so far (each a Device.LocalAgent.Request).
    requests: u32,
}

impl Model {
    fn new(serial: &str) -> Self {
        let mut m = Self {
            params: BTreeMap::new(),
            next: HashMap::new(),
            reboots: 0,
            recipients: HashMap::new(),
            controller: String::new(),
            outbox: Vec::new(),
            requests: 0,
        };
        for (name, value) in [
            ("Manufacturer", "rdm-sim"),
            ("ModelName", "usp-agent"),
            ("SerialNumber", serial),
            ("SoftwareVersion", "1.0"),
        ] {
            m.set_param(&format!("Device.DeviceInfo.{name}"), value, false);
        }
        m.set_param("Device.DeviceInfo.ProvisioningCode", "", true);
        for (name, value) in [("Name", "wan"), ("Status", "Up")] {
            m.set_param(&format!("Device.IP.Interface.1.{name}"), value, false);
        }
        m.set_param("Device.IP.Interface.1.Enable", "true", true);
        m.add(&TABLES[0], &[("Alias", "home"), ("SSID", "home")]);
        m.add(
            &TABLES[0],
            &[
                ("Alias", "guest"),
                ("SSID", "home-guest"),
                ("Enable", "false"),
            ],
        );
        m
    }

    fn set_param(&mut self, path: &str, value: &str, writable: bool) {
        self.params.insert(
            path.to_owned(),
            Param {
                value: value.to_owned(),
                writable,
            },
        );
    }

    /// A new instance of `table` with `settings` over the defaults; its path.
    fn add(&mut self, table: &'static Table, settings: &[(&str, &str)]) -> String {
        let next = self.next.entry(table.path).or_insert(1);
        let i = *next;
        *next += 1;
        let object = format!("{}{i}.", table.path);
        for (name, writable, default) in table.columns {
            let value = settings.iter().find(|(n, _)| n == name).map_or_else(
                || default.replace("{i}", &i.to_string()),
                |s| s.1.to_owned(),
            );
            self.set_param(&format!("{object}{name}"), &value, *writable);
        }
        object
    }

    fn instances(&self, table: &Table) -> Vec<String> {
        let mut out: Vec<String> = self
            .params
            .keys()
            .filter_map(|p| p.strip_prefix(table.path))
            .filter_map(|rest| {
                rest.split_once('.')
                    .map(|(i, _)| format!("{}{i}.", table.path))
            })
            .collect();
        out.dedup();
        out
    }

    fn value(&self, path: &str) -> &str {
        self.params.get(path).map_or("", |p| p.value.as_str())
    }

    /// Gives parameter `path` a new value, and queues its ValueChange
    /// notifications (nothing when the value is the same).
    fn change(&mut self, path: &str, value: String) {
        if let Some(p) = self.params.get_mut(path)
            && p.value != value
        {
            p.value.clone_from(&value);
            let change = msg::notify::ValueChange {
                param_path: path.to_owned(),
                param_value: value,
            };
            self.notify(
                "ValueChange",
                path,
                msg::notify::Notification::ValueChange(change),
            );
        }
    }

    /// Queues a notification of `notif_type` about `path` for each enabled
    /// subscription whose ReferenceList names it.
    fn notify(&mut self, notif_type: &str, path: &str, notification: msg::notify::Notification) {
        for sub in self.instances(&TABLES[1]) {
            let field = |name: &str| self.value(&format!("{sub}{name}"));
            if field("Enable") != "true"
                || field("NotifType") != notif_type
                || !field("ReferenceList")
                    .split(',')
                    .any(|r| refers(r.trim(), path))
            {
                continue;
            }
            let notify = msg::Notify {
                subscription_id: field("ID").to_owned(),
                send_resp: field("NotifRetry") == "true",
                notification: Some(notification.clone()),
            };
            let to = self.recipients.get(&sub).cloned().unwrap_or_default();
            self.outbox.push((to, notify));
        }
    }

    /// The objects an object path (ending in `.`, with `*` or a search
    /// expression for an instance) names.
    fn objects(&self, path: &str) -> Result<Vec<String>, (u32, String)> {
        let invalid = || (INVALID_PATH, format!("{path} is not a path of this agent"));
        if !path.ends_with('.') || !path.starts_with("Device.") {
            return Err(invalid());
        }
        let Some(table) = table_of(path) else {
            // A fixed object: it exists when some parameter is under it.
            return if self.params.keys().any(|p| p.starts_with(path)) {
                Ok(vec![path.to_owned()])
            } else {
                Err(invalid())
            };
        };
        let rest = &path[table.path.len()..];
        let (selector, tail) = rest.split_once('.').unwrap_or((rest, ""));
        if selector.is_empty() {
            return Ok(vec![table.path.to_owned()]);
        }
        if !tail.is_empty() {
            return Err(invalid());
        }
        let chosen: Vec<String> = self
            .instances(table)
            .into_iter()
            .filter(|object| self.selects(table, object, selector))
            .collect();
        if chosen.is_empty() && selector.bytes().all(|b| b.is_ascii_digit()) {
            return Err((OBJECT_DOES_NOT_EXIST, format!("{path} does not exist")));
        }
        Ok(chosen)
    }

    /// Whether instance `object` matches `selector`: its number, `*`, or
    /// `[Param==value]` / `[Param!=value]` (value optionally quoted).
    fn selects(&self, table: &Table, object: &str, selector: &str) -> bool {
        if selector == "*" {
            return true;
        }
        if let Some(expr) = selector.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let (param, value, equal) = match expr.split_once("==") {
                Some((p, v)) => (p, v, true),
                None => match expr.split_once("!=") {
                    Some((p, v)) => (p, v, false),
                    None => return false,
                },
            };
            let value = value.trim_matches('"');
            let actual = self.params.get(&format!("{object}{param}"));
            return actual.is_some_and(|a| (a.value == value) == equal);
        }
        object == format!("{}{selector}.", table.path)
    }

    fn get(&self, path: &str) -> msg::get_resp::RequestedPathResult {
        let mut out = msg::get_resp::RequestedPathResult {
            requested_path: path.to_owned(),
            ..Default::default()
        };
        let (objects, param) = match path.rsplit_once('.') {
            Some((object, param)) if !param.is_empty() => {
                (self.objects(&format!("{object}.")), Some(param))
            }
            _ => (self.objects(path), None),
        };
        let objects = match objects {
            Ok(o) => o,
            Err((code, why)) => {
                out.err_code = code;
                out.err_msg = why;
                return out;
            }
        };
        // Each object (and, for an object path, each object under it) with
        // its own parameters.
        let mut grouped: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
        for object in &objects {
            for (p, v) in self.params.range(object.clone()..) {
                if !p.starts_with(object.as_str()) {
                    break;
                }
                let (owner, name) = p.rsplit_once('.').unwrap_or_default();
                if param.is_some_and(|want| want != name || format!("{owner}.") != *object) {
                    continue;
                }
                grouped
                    .entry(format!("{owner}."))
                    .or_default()
                    .insert(name.to_owned(), v.value.clone());
            }
        }
        if let Some(param) = param
            && grouped.is_empty()
            && !objects.is_empty()
        {
            out.err_code = INVALID_PATH;
            out.err_msg = format!("{path}: no parameter {param}");
            return out;
        }
        out.resolved_path_results = grouped
            .into_iter()
            .map(
                |(resolved_path, result_params)| msg::get_resp::ResolvedPathResult {
                    resolved_path,
                    result_params,
                },
            )
            .collect();
        out
    }
}

/// One object the agent supports (GetSupportedDM): its path, whether it is
/// a table, its parameters (name, writable, type), commands (name, inputs,
/// outputs) and events (name, arguments).
struct Supported {
    path: &'static str,
    table: bool,
    params: &'static [(
        &'static str,
        bool,
        msg::get_supported_dm_resp::ParamValueType,
    )],
    /// Name, input and output arguments, async.
    commands: &'static [(
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        bool,
    )],
    events: &'static [(&'static str, &'static [&'static str])],
}

fn supported() -> [Supported; 8] {
    use msg::get_supported_dm_resp::ParamValueType as V;
    [
        Supported {
            path: "Device.",
            table: false,
            params: &[],
            commands: &[("Reboot()", &[], &[], false)],
            events: &[("Boot!", &["CommandKey", "Cause"])],
        },
        Supported {
            path: "Device.DeviceInfo.",
            table: false,
            params: &[
                ("Manufacturer", false, V::ParamString),
                ("ModelName", false, V::ParamString),
                ("ProvisioningCode", true, V::ParamString),
                ("SerialNumber", false, V::ParamString),
                ("SoftwareVersion", false, V::ParamString),
            ],
            commands: &[],
            events: &[],
        },
        Supported {
            path: "Device.WiFi.",
            table: false,
            params: &[],
            commands: &[],
            events: &[],
        },
        Supported {
            path: "Device.WiFi.SSID.{i}.",
            table: true,
            params: &[
                ("Alias", true, V::ParamString),
                ("Enable", true, V::ParamBoolean),
                ("SSID", true, V::ParamString),
                ("Status", false, V::ParamString),
            ],
            commands: &[],
            events: &[],
        },
        Supported {
            path: "Device.IP.",
            table: false,
            params: &[],
            commands: &[],
            events: &[],
        },
        Supported {
            path: "Device.IP.Diagnostics.",
            table: false,
            params: &[],
            commands: &[(
                "IPPing()",
                &["Host", "NumberOfRepetitions"],
                &[
                    "Status",
                    "SuccessCount",
                    "FailureCount",
                    "AverageResponseTime",
                ],
                true,
            )],
            events: &[],
        },
        Supported {
            path: "Device.LocalAgent.",
            table: false,
            params: &[],
            commands: &[],
            events: &[],
        },
        Supported {
            path: "Device.LocalAgent.Subscription.{i}.",
            table: true,
            params: &[
                ("Enable", true, V::ParamBoolean),
                ("ID", true, V::ParamString),
                ("NotifRetry", true, V::ParamBoolean),
                ("NotifType", true, V::ParamString),
                ("Persistent", true, V::ParamBoolean),
                ("Recipient", false, V::ParamString),
                ("ReferenceList", true, V::ParamString),
            ],
            commands: &[],
            events: &[],
        },
    ]
}

/// GetSupportedDM of one object path (`{i}` or instance numbers alike):
/// the object and what is under it (only its direct children with
/// `first_level_only`).
fn supported_dm(
    req: &msg::GetSupportedDm,
    path: &str,
) -> msg::get_supported_dm_resp::RequestedObjectResult {
    use msg::get_supported_dm_resp::{self as r, CmdType, ObjAccessType, ParamAccessType};
    let generic: String = path
        .split('.')
        .map(|p| {
            if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() {
                "{i}"
            } else {
                p
            }
        })
        .collect::<Vec<_>>()
        .join(".");
    let all = supported();
    let mut out = r::RequestedObjectResult {
        req_obj_path: path.to_owned(),
        data_model_inst_uri: "urn:broadband-forum-org:tr-181-2-16-0-usp".into(),
        ..Default::default()
    };
    if !all.iter().any(|o| o.path == generic) {
        out.err_code = INVALID_PATH;
        out.err_msg = format!("{path} is not an object this agent supports");
        return out;
    }
    let depth = |p: &str| {
        p.trim_end_matches(".{i}.")
            .trim_end_matches('.')
            .matches('.')
            .count()
    };
    out.supported_objs = all
        .iter()
        .filter(|o| o.path.starts_with(generic.as_str()))
        .filter(|o| !req.first_level_only || depth(o.path) <= depth(&generic) + 1)
        .map(|o| r::SupportedObjectResult {
            supported_obj_path: o.path.into(),
            access: if o.table {
                ObjAccessType::ObjAddDelete
            } else {
                ObjAccessType::ObjReadOnly
            } as i32,
            is_multi_instance: o.table,
            supported_params: if req.return_params {
                (o.params.iter())
                    .map(|(name, writable, t)| r::SupportedParamResult {
                        param_name: (*name).into(),
                        access: if *writable {
                            ParamAccessType::ParamReadWrite
                        } else {
                            ParamAccessType::ParamReadOnly
                        } as i32,
                        value_type: *t as i32,
                        value_change: r::ValueChangeType::ValueChangeAllowed as i32,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            supported_commands: if req.return_commands {
                (o.commands.iter())
                    .map(
                        |(name, inputs, outputs, asynchronous)| r::SupportedCommandResult {
                            command_name: (*name).into(),
                            input_arg_names: inputs.iter().map(|a| (*a).into()).collect(),
                            output_arg_names: outputs.iter().map(|a| (*a).into()).collect(),
                            command_type: if *asynchronous {
                                CmdType::CmdAsync
                            } else {
                                CmdType::CmdSync
                            } as i32,
                        },
                    )
                    .collect()
            } else {
                Vec::new()
            },
            supported_events: if req.return_events {
                (o.events.iter())
                    .map(|(name, args)| r::SupportedEventResult {
                        event_name: (*name).into(),
                        arg_names: args.iter().map(|a| (*a).into()).collect(),
                    })
                    .collect()
            } else {
                Vec::new()
            },
            unique_key_sets: match table_of(o.path.trim_end_matches("{i}.")) {
                Some(t) if req.return_unique_key_sets && o.table => {
                    vec![r::SupportedUniqueKeySet {
                        key_names: vec![t.key.into()],
                    }]
                }
                _ => Vec::new(),
            },
            divergent_paths: Vec::new(),
        })
        .collect();
    out
}

/// The simulated IPPing(): every echo answered in 1 ms, or the failure
/// of a call without a Host.
fn ipping(args: &HashMap<String, String>) -> msg::notify::operation_complete::OperationResp {
    use msg::notify::operation_complete::{CommandFailure, OperationResp as Done, OutputArgs};
    let host = args.get("Host").map_or("", String::as_str);
    if host.is_empty() {
        return Done::CmdFailure(CommandFailure {
            err_code: INVALID_ARGUMENTS,
            err_msg: "IPPing() needs a Host".into(),
        });
    }
    let count = args.get("NumberOfRepetitions").map_or("3", String::as_str);
    Done::ReqOutputArgs(OutputArgs {
        output_args: HashMap::from([
            ("Status".to_owned(), "Complete".to_owned()),
            ("SuccessCount".to_owned(), count.to_owned()),
            ("FailureCount".to_owned(), "0".to_owned()),
            ("AverageResponseTime".to_owned(), "1".to_owned()),
        ]),
    })
}

/// An OperateResp with one result.
fn operated(command: String, resp: OperationResp) -> (msg::header::MsgType, msg::body::MsgBody) {
    (
        msg::header::MsgType::OperateResp,
        msg::body::MsgBody::Response(msg::Response {
            resp_type: Some(msg::response::RespType::OperateResp(msg::OperateResp {
                operation_results: vec![msg::operate_resp::OperationResult {
                    executed_command: command,
                    operation_resp: Some(resp),
                }],
            })),
        }),
    )
}

/// What one request gets back: a response body, or a USP Error.
fn answer(
    model: &mut Model,
    req: msg::request::ReqType,
) -> (msg::header::MsgType, msg::body::MsgBody) {
    use msg::{
        body::MsgBody, header::MsgType as T, request::ReqType as Q, response::RespType as R,
    };
    let resp = |t: T, r: R| (t, MsgBody::Response(msg::Response { resp_type: Some(r) }));
    match req {
        Q::Get(get) => resp(
            T::GetResp,
            R::GetResp(msg::GetResp {
                req_path_results: get.param_paths.iter().map(|p| model.get(p)).collect(),
            }),
        ),
        Q::GetSupportedDm(dm) => resp(
            T::GetSupportedDmResp,
            R::GetSupportedDmResp(msg::GetSupportedDmResp {
                req_obj_results: dm.obj_paths.iter().map(|p| supported_dm(&dm, p)).collect(),
            }),
        ),
        Q::GetSupportedProtocol(_) => resp(
            T::GetSupportedProtoResp,
            R::GetSupportedProtocolResp(msg::GetSupportedProtocolResp {
                agent_supported_protocol_versions: "1.3,1.4".into(),
            }),
        ),
        Q::GetInstances(g) => {
            let results = g
                .obj_paths
                .iter()
                .map(|path| {
                    let mut r = msg::get_instances_resp::RequestedPathResult {
                        requested_path: path.clone(),
                        ..Default::default()
                    };
                    if let Some(table) = table_of(path) {
                        let chosen = match model.objects(path) {
                            Ok(o) if o == [table.path] => model.instances(table),
                            Ok(o) => o,
                            Err((code, why)) => {
                                r.err_code = code;
                                r.err_msg = why;
                                return r;
                            }
                        };
                        r.curr_insts = chosen
                            .into_iter()
                            .map(|o| msg::get_instances_resp::CurrInstance {
                                unique_keys: HashMap::from([(
                                    table.key.to_owned(),
                                    model.value(&format!("{o}{}", table.key)).to_owned(),
                                )]),
                                instantiated_obj_path: o,
                            })
                            .collect();
                    } else {
                        r.err_code = INVALID_PATH;
                        r.err_msg = format!("{path} is not a multi-instance object");
                    }
                    r
                })
                .collect();
            resp(
                T::GetInstancesResp,
                R::GetInstancesResp(msg::GetInstancesResp {
                    req_path_results: results,
                }),
            )
        }
        Q::Set(set) => set_(model, set).map_or_else(
            |e| (T::Error, MsgBody::Error(e)),
            |r| resp(T::SetResp, R::SetResp(r)),
        ),
        Q::Add(add) => add_(model, add).map_or_else(
            |e| (T::Error, MsgBody::Error(e)),
            |r| resp(T::AddResp, R::AddResp(r)),
        ),
        Q::Delete(delete) => delete_(model, delete).map_or_else(
            |e| (T::Error, MsgBody::Error(e)),
            |r| resp(T::DeleteResp, R::DeleteResp(r)),
        ),
        Q::Operate(op) if op.command == "Device.Reboot()" => {
            model.reboots += 1;
            // It comes back up at once, and says so.
            let boot = msg::notify::Event {
                obj_path: "Device.".into(),
                event_name: "Boot!".into(),
                params: HashMap::from([
                    ("CommandKey".to_owned(), op.command_key.clone()),
                    ("Cause".to_owned(), "RemoteReboot".to_owned()),
                ]),
            };
            model.notify(
                "Event",
                "Device.Boot!",
                msg::notify::Notification::Event(boot),
            );
            operated(op.command, OperationResp::ReqOutputArgs(Default::default()))
        }
        Q::Operate(op) if op.command == IPPING => {
            model.requests += 1;
            let request = format!("Device.LocalAgent.Request.{}.", model.requests);
            let done = ipping(&op.input_args);
            let complete = msg::notify::OperationComplete {
                obj_path: "Device.IP.Diagnostics.".into(),
                command_name: "IPPing()".into(),
                command_key: op.command_key.clone(),
                operation_resp: Some(done),
            };
            model.notify(
                "OperationComplete",
                IPPING,
                msg::notify::Notification::OperComplete(complete),
            );
            operated(op.command, OperationResp::ReqObjPath(request))
        }
        Q::Operate(op) => (
            T::Error,
            MsgBody::Error(error(
                INVALID_PATH,
                format!("{} is not a command of this agent", op.command),
            )),
        ),
        other => (
            T::Error,
            MsgBody::Error(error(
                7000,
                format!("this agent does not take {}", request_name(&other)),
            )),
        ),
    }
}

fn request_name(r: &msg::request::ReqType) -> &'static str {
    use msg::request::ReqType as Q;
    match r {
        Q::Notify(_) => "Notify",
        Q::Register(_) => "Register",
        Q::Deregister(_) => "Deregister",
        _ => "this request",
    }
}

fn error(code: u32, why: String) -> msg::Error {
    msg::Error {
        err_code: code,
        err_msg: why,
        param_errs: Vec::new(),
    }
}

fn set_(model: &mut Model, set: msg::Set) -> Result<msg::SetResp, msg::Error> {
    use msg::set_resp::{
        self as r,
        updated_object_result::{OperationStatus, operation_status::OperStatus},
    };
    let mut results = Vec::new();
    let mut writes = Vec::new();
    for u in &set.update_objs {
        let objects = match model.objects(&u.obj_path) {
            Ok(o) => o,
            Err((code, why)) if !set.allow_partial => return Err(error(code, why)),
            Err((code, why)) => {
                results.push(r::UpdatedObjectResult {
                    requested_path: u.obj_path.clone(),
                    oper_status: Some(OperationStatus {
                        oper_status: Some(OperStatus::OperFailure(
                            r::updated_object_result::operation_status::OperationFailure {
                                err_code: code,
                                err_msg: why,
                                updated_inst_failures: Vec::new(),
                            },
                        )),
                    }),
                });
                continue;
            }
        };
        let mut instances = Vec::new();
        let mut failures = Vec::new();
        for object in objects {
            let mut param_errs = Vec::new();
            let mut updated = HashMap::new();
            let mut required_failed = false;
            for s in &u.param_settings {
                let path = format!("{object}{}", s.param);
                let why = match model.params.get(&path) {
                    None => Some((INVALID_PATH, format!("{path} does not exist"))),
                    Some(p) if !p.writable => {
                        Some((NOT_WRITABLE, format!("{path} is not writable")))
                    }
                    Some(_) => None,
                };
                match why {
                    Some((code, msg)) => {
                        required_failed |= s.required;
                        if s.required && !set.allow_partial {
                            return Err(msg::Error {
                                err_code: INVALID_ARGUMENTS,
                                err_msg: format!("a required parameter of {} failed", u.obj_path),
                                param_errs: vec![msg::error::ParamError {
                                    param_path: path,
                                    err_code: code,
                                    err_msg: msg,
                                }],
                            });
                        }
                        param_errs.push(r::ParameterError {
                            param: s.param.clone(),
                            err_code: code,
                            err_msg: msg,
                        });
                    }
                    None => {
                        updated.insert(s.param.clone(), s.value.clone());
                        writes.push((path, s.value.clone()));
                    }
                }
            }
            if required_failed {
                failures.push(r::UpdatedInstanceFailure {
                    affected_path: object.clone(),
                    param_errs,
                });
            } else {
                instances.push(r::UpdatedInstanceResult {
                    affected_path: object.clone(),
                    param_errs,
                    updated_params: updated,
                });
            }
        }
        let status = if failures.is_empty() {
            OperStatus::OperSuccess(
                r::updated_object_result::operation_status::OperationSuccess {
                    updated_inst_results: instances,
                },
            )
        } else {
            // The object's writes are not made when a required one failed.
            writes.retain(|(p, _)| !failures.iter().any(|f| p.starts_with(&f.affected_path)));
            OperStatus::OperFailure(
                r::updated_object_result::operation_status::OperationFailure {
                    err_code: REQUIRED_FAILED,
                    err_msg: format!("a required parameter of {} failed", u.obj_path),
                    updated_inst_failures: failures,
                },
            )
        };
        results.push(r::UpdatedObjectResult {
            requested_path: u.obj_path.clone(),
            oper_status: Some(OperationStatus {
                oper_status: Some(status),
            }),
        });
    }
    for (path, value) in writes {
        model.change(&path, value);
    }
    Ok(msg::SetResp {
        updated_obj_results: results,
    })
}

fn add_(model: &mut Model, add: msg::Add) -> Result<msg::AddResp, msg::Error> {
    use msg::add_resp::{
        self as r,
        created_object_result::{OperationStatus, operation_status as s},
    };
    let mut results = Vec::new();
    for c in add.create_objs {
        let Some(table) = TABLES.iter().find(|t| t.path == c.obj_path) else {
            let why = format!("{} is not a table objects can be added to", c.obj_path);
            if !add.allow_partial {
                return Err(error(INVALID_PATH, why));
            }
            results.push(r::CreatedObjectResult {
                requested_path: c.obj_path,
                oper_status: Some(OperationStatus {
                    oper_status: Some(s::OperStatus::OperFailure(s::OperationFailure {
                        err_code: INVALID_PATH,
                        err_msg: why,
                    })),
                }),
            });
            continue;
        };
        if let Some(bad) = c.param_settings.iter().find(|p| {
            !table
                .columns
                .iter()
                .any(|(name, writable, _)| *writable && *name == p.param)
        }) {
            return Err(msg::Error {
                err_code: INVALID_ARGUMENTS,
                err_msg: format!("{} has no writable parameter {}", c.obj_path, bad.param),
                param_errs: vec![msg::error::ParamError {
                    param_path: format!("{}{{i}}.{}", c.obj_path, bad.param),
                    err_code: INVALID_PATH,
                    err_msg: "no such parameter".into(),
                }],
            });
        }
        let settings: Vec<(&str, &str)> = c
            .param_settings
            .iter()
            .map(|p| (p.param.as_str(), p.value.as_str()))
            .collect();
        let object = model.add(table, &settings);
        if table.path == SUBSCRIPTIONS {
            model
                .recipients
                .insert(object.clone(), model.controller.clone());
        }
        let unique_keys = HashMap::from([(
            table.key.to_owned(),
            model.value(&format!("{object}{}", table.key)).to_owned(),
        )]);
        let created = msg::notify::ObjectCreation {
            obj_path: object.clone(),
            unique_keys: unique_keys.clone(),
        };
        model.notify(
            "ObjectCreation",
            &object,
            msg::notify::Notification::ObjCreation(created),
        );
        results.push(r::CreatedObjectResult {
            requested_path: c.obj_path,
            oper_status: Some(OperationStatus {
                oper_status: Some(s::OperStatus::OperSuccess(s::OperationSuccess {
                    unique_keys,
                    instantiated_path: object,
                    param_errs: Vec::new(),
                })),
            }),
        });
    }
    Ok(msg::AddResp {
        created_obj_results: results,
    })
}

fn delete_(model: &mut Model, delete: msg::Delete) -> Result<msg::DeleteResp, msg::Error> {
    use msg::delete_resp::{
        self as r,
        deleted_object_result::{OperationStatus, operation_status as s},
    };
    let mut results = Vec::new();
    for path in delete.obj_paths {
        let status = match model.objects(&path) {
            Ok(objects) if table_of(&path).is_some_and(|t| t.path != path) => {
                for o in &objects {
                    model.params.retain(|p, _| !p.starts_with(o.as_str()));
                    model.recipients.remove(o);
                    let deleted = msg::notify::ObjectDeletion {
                        obj_path: o.clone(),
                    };
                    model.notify(
                        "ObjectDeletion",
                        o,
                        msg::notify::Notification::ObjDeletion(deleted),
                    );
                }
                s::OperStatus::OperSuccess(s::OperationSuccess {
                    affected_paths: objects,
                    unaffected_path_errs: Vec::new(),
                })
            }
            Ok(_) => {
                let why = format!("{path} cannot be deleted");
                if !delete.allow_partial {
                    return Err(error(INVALID_PATH, why));
                }
                s::OperStatus::OperFailure(s::OperationFailure {
                    err_code: INVALID_PATH,
                    err_msg: why,
                })
            }
            // Deleting what does not exist succeeds with nothing affected.
            Err((OBJECT_DOES_NOT_EXIST, _)) => s::OperStatus::OperSuccess(Default::default()),
            Err((code, why)) => {
                if !delete.allow_partial {
                    return Err(error(code, why));
                }
                s::OperStatus::OperFailure(s::OperationFailure {
                    err_code: code,
                    err_msg: why,
                })
            }
        };
        results.push(r::DeletedObjectResult {
            requested_path: path,
            oper_status: Some(OperationStatus {
                oper_status: Some(status),
            }),
        });
    }
    Ok(msg::DeleteResp {
        deleted_obj_results: results,
    })
}

/// A running agent; it disconnects when dropped.
pub struct UspAgent {
    pub endpoint_id: String,
    /// The topic it takes requests on.
    pub topic: String,
    /// The topic its notifications go to (its controller's).
    pub controller_topic: String,
    /// Its WebSocket server (when it is one; rdm connects to it).
    pub websocket_url: String,
    model: Arc<Mutex<Model>>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
    /// Changes a parameter as the device itself would (MQTT 5 agents).
    local: Option<tokio::sync::mpsc::UnboundedSender<(String, String)>>,
    /// Asks an MQTT 5 agent to say goodbye; answered once it has.
    stop: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    )>,
}

impl Drop for UspAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UspAgent {
    /// A parameter's value now (for tests to check a Set landed).
    pub fn value(&self, path: &str) -> Option<String> {
        self.model
            .lock()
            .unwrap()
            .params
            .get(path)
            .map(|p| p.value.clone())
    }

    /// Changes parameter `path` on the device itself (not through a
    /// controller), which notifies its ValueChange subscriptions (MQTT 5
    /// agents only).
    pub fn change(&self, path: &str, value: &str) {
        let local = self.local.as_ref().expect("an MQTT 5 agent");
        let _ = local.send((path.to_owned(), value.to_owned()));
    }

    /// How many times `Device.Reboot()` ran.
    pub fn reboots(&self) -> u32 {
        self.model.lock().unwrap().reboots
    }

    /// Shuts down as an agent does: a DisconnectRecord to its controller
    /// first (MQTT 5 agents; the others just go).
    pub async fn shut_down(mut self) {
        if let Some((stop, said)) = self.stop.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), said).await;
        }
    }

    /// The subscription ids of the NotifyResps it got, in order.
    pub fn acknowledged(&self) -> Vec<String> {
        self.acknowledged.lock().unwrap().clone()
    }
}

/// Starts an agent `endpoint_id` on the broker at `host:port`, taking
/// requests on `topic` and sending notifications to `controller_topic`;
/// returns once it is subscribed. Each time it has subscribed it tells its
/// controller (`controller_id`) with an MQTTConnectRecord, and
/// [`UspAgent::shut_down`] with a DisconnectRecord; its MQTT Will (sent by
/// the broker when the connection is lost without a DISCONNECT) is a
/// DisconnectRecord too, as a deployment may configure it.
pub async fn start(
    host: &str,
    port: u16,
    endpoint_id: &str,
    topic: &str,
    controller_topic: &str,
    controller_id: &str,
) -> std::io::Result<UspAgent> {
    start_with(
        host,
        port,
        endpoint_id,
        topic,
        controller_topic,
        controller_id,
        false,
    )
    .await
}

/// [`start`] for an agent new to its controller: once subscribed it sends
/// an OnBoardRequest (send_resp set) to `controller_topic`, again each
/// second until the controller answers it (at most 30 times).
pub async fn start_announcing(
    host: &str,
    port: u16,
    endpoint_id: &str,
    topic: &str,
    controller_topic: &str,
    controller_id: &str,
) -> std::io::Result<UspAgent> {
    start_with(
        host,
        port,
        endpoint_id,
        topic,
        controller_topic,
        controller_id,
        true,
    )
    .await
}

async fn start_with(
    host: &str,
    port: u16,
    endpoint_id: &str,
    topic: &str,
    controller_topic: &str,
    controller_id: &str,
    announce: bool,
) -> std::io::Result<UspAgent> {
    let agent = Agent::new(endpoint_id);
    let (model, acknowledged) = (agent.model.clone(), agent.acknowledged.clone());
    // A client id of its own: agents of several runs may share the broker.
    let client_id = format!("sim-{:016x}", rand::random::<u64>());
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    // Without it each small Record waits on Nagle and a delayed ACK (~40 ms).
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    options.set_connect_properties(ConnectProperties {
        user_properties: vec![("usp-endpoint-id".into(), endpoint_id.to_owned())],
        ..ConnectProperties::new()
    });
    let will = agent.mtp_record(
        controller_id,
        rec::record::RecordType::Disconnect(rec::DisconnectRecord {
            reason: "connection lost".into(),
            reason_code: 0,
        }),
    );
    options.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        controller_topic,
        will,
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let (client, mut events) = AsyncClient::new(options, 64);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (agent_topic, to_controller) = (topic.to_owned(), controller_topic.to_owned());
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (local, local_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let (said_tx, said_rx) = tokio::sync::oneshot::channel();
    let mut said_tx = Some(said_tx);
    let controller = controller_id.to_owned();
    let task = tokio::spawn(async move {
        let mut agent = agent;
        let mut ready = Some(ready_tx);
        let mut said = None;
        let connect = rec::record::RecordType::MqttConnect(rec::MqttConnectRecord {
            version: rec::mqtt_connect_record::MqttVersion::V5 as i32,
            subscribed_topic: agent_topic.clone(),
        });
        let disconnect = rec::record::RecordType::Disconnect(rec::DisconnectRecord {
            reason: "shutting down".into(),
            reason_code: 0,
        });
        let publish = |topic: String, record: Vec<u8>, reply_to: Option<String>| {
            let properties = PublishProperties {
                content_type: Some("usp.msg".into()),
                response_topic: reply_to,
                ..Default::default()
            };
            client.publish_with_properties(topic, QoS::AtLeastOnce, false, record, properties)
        };
        let mut changes = local_rx;
        let mut again = tokio::time::interval(Duration::from_secs(1));
        let mut announcements = 0;
        loop {
            let event = tokio::select! {
                event = events.poll() => event,
                _ = again.tick(), if announce && ready.is_none() && announcements < 30
                    && !agent.acknowledged.lock().unwrap().iter().any(String::is_empty) => {
                    announcements += 1;
                    let hello = agent.on_board_request(&controller);
                    let _ = publish(to_controller.clone(), hello, Some(agent_topic.clone())).await;
                    continue;
                }
                Some((path, value)) = changes.recv() => {
                    agent.model.lock().unwrap().change(&path, value);
                    for notify in agent.notifies() {
                        let _ = publish(to_controller.clone(), notify, Some(agent_topic.clone())).await;
                    }
                    continue;
                }
                Ok(()) = &mut stop_rx, if said.is_none() => {
                    let bye = agent.mtp_record(&controller, disconnect.clone());
                    let _ = publish(to_controller.clone(), bye, None).await;
                    said = said_tx.take();
                    continue;
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe(agent_topic.clone(), QoS::AtLeastOnce)
                        .await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let hello = agent.mtp_record(&controller, connect.clone());
                    let _ = publish(to_controller.clone(), hello, None).await;
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                // The broker took the goodbye (the only publish after it):
                // a clean DISCONNECT, so the broker drops the Will.
                Ok(Event::Incoming(Packet::PubAck(_))) if said.is_some() => {
                    let _ = client.disconnect().await;
                    while let Ok(event) = events.poll().await {
                        if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                            break;
                        }
                    }
                    if let Some(tx) = said.take() {
                        let _ = tx.send(());
                    }
                    return;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let reply_to = p.properties.as_ref().and_then(|p| p.response_topic.clone());
                    let (reply, notifies) = agent.handle(&p.payload);
                    if let Some(reply) = reply {
                        match reply_to {
                            Some(reply_to) => {
                                let _ = publish(reply_to, reply, None).await;
                            }
                            None => {
                                tracing::info!(agent = %agent.id, "USP request without a Response Topic: not answered");
                            }
                        }
                    }
                    for notify in notifies {
                        let _ =
                            publish(to_controller.clone(), notify, Some(agent_topic.clone())).await;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(agent = %agent.id, error = %e, "simulated USP agent: broker connection lost");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    subscribed(ready_rx).await?;
    Ok(UspAgent {
        endpoint_id: endpoint_id.to_owned(),
        topic: topic.to_owned(),
        controller_topic: controller_topic.to_owned(),
        websocket_url: String::new(),
        model,
        acknowledged,
        task,
        local: Some(local),
        stop: Some((stop_tx, said_rx)),
    })
}

/// Starts an agent on MQTT 3.1.1, as TR-369 has such endpoints work (no
/// properties): it subscribes to `topic/#`, takes the topic to answer on
/// from `.../reply-to=` at the end of a request's topic name, and names its
/// own the same way in what it publishes; returns once it is subscribed.
pub async fn start_mqtt311(
    host: &str,
    port: u16,
    endpoint_id: &str,
    topic: &str,
    controller_topic: &str,
) -> std::io::Result<UspAgent> {
    let mut agent = Agent::new(endpoint_id);
    let (model, acknowledged) = (agent.model.clone(), agent.acknowledged.clone());
    let client_id = format!("sim311-{:016x}", rand::random::<u64>());
    let mut options = rumqttc::MqttOptions::new(client_id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(options, 64);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let own = format!("/reply-to={}", topic.replace('/', "%2F"));
    let (filter, to_controller) = (format!("{topic}/#"), controller_topic.to_owned());
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let _ = client
                        .subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                        .await;
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let reply_to = p
                        .topic
                        .rsplit_once("/reply-to=")
                        .map(|(_, t)| t.replace("%2F", "/"));
                    let (reply, notifies) = agent.handle(&p.payload);
                    let out = reply.map(|r| (reply_to, r)).into_iter().chain(
                        notifies
                            .into_iter()
                            .map(|n| (Some(to_controller.clone()), n)),
                    );
                    for (to, record) in out {
                        let Some(to) = to else { continue };
                        let _ = client
                            .publish(
                                format!("{to}{own}"),
                                rumqttc::QoS::AtLeastOnce,
                                false,
                                record,
                            )
                            .await;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    subscribed(ready_rx).await?;
    Ok(UspAgent {
        endpoint_id: endpoint_id.to_owned(),
        topic: topic.to_owned(),
        controller_topic: controller_topic.to_owned(),
        websocket_url: String::new(),
        model,
        acknowledged,
        task,
        local: None,
        stop: None,
    })
}

/// Waits (10 s at most) for an MQTT agent's task to say it is subscribed.
async fn subscribed(ready: tokio::sync::oneshot::Receiver<()>) -> std::io::Result<()> {
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .map_err(|_| {
            std::io::Error::other("the MQTT broker did not take the agent's subscription in 10 s")
        })?
        .map_err(|_| std::io::Error::other("the agent stopped"))
}

/// The subprotocol of TR-369's WebSocket binding.
const SUBPROTOCOL: &str = "v1.usp";

/// Starts an agent on the WebSocket MTP that connects to its controller at
/// `url` (`ws://host:port/usp`), naming itself in `?eid=`; returns once
/// connected. Its requests, replies and notifications are binary frames.
pub async fn connect_websocket(url: &str, endpoint_id: &str) -> std::io::Result<UspAgent> {
    connect_websocket_with(url, endpoint_id, None, None).await
}

/// [`connect_websocket`] to a `wss://` URL, with `tls` (the CAs it trusts
/// and the client certificate it shows, if any).
pub async fn connect_websocket_tls(
    url: &str,
    endpoint_id: &str,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<UspAgent> {
    connect_websocket_with(url, endpoint_id, None, Some(tls)).await
}

/// [`connect_websocket`] for an agent new to its controller
/// (`controller_id`): its first frame is an OnBoardRequest (send_resp set).
pub async fn connect_websocket_announcing(
    url: &str,
    endpoint_id: &str,
    controller_id: &str,
) -> std::io::Result<UspAgent> {
    connect_websocket_with(url, endpoint_id, Some(controller_id), None).await
}

async fn connect_websocket_with(
    url: &str,
    endpoint_id: &str,
    announce_to: Option<&str>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> std::io::Result<UspAgent> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let eid: String = url_escape(endpoint_id);
    let mut request = format!("{url}?eid={eid}")
        .into_client_request()
        .map_err(std::io::Error::other)?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, connector)
            .await
            .map_err(std::io::Error::other)?;
    let mut agent = Agent::new(endpoint_id);
    if let Some(controller) = announce_to {
        use futures::SinkExt;
        let hello = agent.on_board_request(controller);
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            hello.into(),
        ))
        .await
        .map_err(std::io::Error::other)?;
    }
    let (model, acknowledged) = (agent.model.clone(), agent.acknowledged.clone());
    let task = tokio::spawn(async move { agent.over_websocket(ws).await });
    Ok(UspAgent {
        endpoint_id: endpoint_id.to_owned(),
        topic: String::new(),
        controller_topic: String::new(),
        websocket_url: String::new(),
        model,
        acknowledged,
        task,
        local: None,
        stop: None,
    })
}

/// Starts an agent on the WebSocket MTP that is a server on loopback: the
/// controller connects to its `websocket_url` with the v1.usp subprotocol
/// (a connection without it is refused); it serves one controller at a
/// time.
pub async fn serve_websocket(endpoint_id: &str) -> std::io::Result<UspAgent> {
    serve_websocket_with(endpoint_id, None).await
}

/// [`serve_websocket`] over TLS with `tls` (its certificate): its URL is
/// `wss://localhost:<port>/usp-agent`.
pub async fn serve_websocket_tls(
    endpoint_id: &str,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<UspAgent> {
    serve_websocket_with(endpoint_id, Some(tls)).await
}

async fn serve_websocket_with(
    endpoint_id: &str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<UspAgent> {
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let websocket_url = match tls {
        Some(_) => format!("wss://localhost:{port}/usp-agent"),
        None => format!("ws://127.0.0.1:{port}/usp-agent"),
    };
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut agent = Agent::new(endpoint_id);
    let (model, acknowledged) = (agent.model.clone(), agent.acknowledged.clone());
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // The handshake callback's type is tungstenite's.
            #[allow(clippy::result_large_err)]
            let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
                let offered = req
                    .headers()
                    .get("sec-websocket-protocol")
                    .and_then(|h| h.to_str().ok())
                    .is_some_and(|h| h.split(',').any(|p| p.trim() == SUBPROTOCOL));
                if !offered {
                    return Err(ErrorResponse::new(Some("v1.usp is required".into())));
                }
                resp.headers_mut()
                    .insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
                Ok(resp)
            };
            match &tls {
                None => {
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, check).await {
                        agent.over_websocket(ws).await;
                    }
                }
                Some(tls) => {
                    let Ok(stream) = tls.accept(tcp).await else {
                        continue;
                    };
                    if let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await {
                        agent.over_websocket(ws).await;
                    }
                }
            }
        }
    });
    Ok(UspAgent {
        endpoint_id: endpoint_id.to_owned(),
        topic: String::new(),
        controller_topic: String::new(),
        websocket_url,
        model,
        acknowledged,
        task,
        local: None,
        stop: None,
    })
}

/// `s` with what a query value cannot hold percent-escaped.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The agent as its connection's task sees it.
struct Agent {
    id: String,
    model: Arc<Mutex<Model>>,
    acknowledged: Arc<Mutex<Vec<String>>>,
    /// Notify messages sent so far (their ids).
    notified: u64,
}

impl Agent {
    fn new(endpoint_id: &str) -> Self {
        let serial = endpoint_id.rsplit('-').next().unwrap_or(endpoint_id);
        Self {
            id: endpoint_id.to_owned(),
            model: Arc::new(Mutex::new(Model::new(serial))),
            acknowledged: Arc::new(Mutex::new(Vec::new())),
            notified: 0,
        }
    }

    /// Serves one WebSocket connection until it closes: each binary frame
    /// a Record, answered (and its notifications sent) on the same
    /// connection.
    async fn over_websocket<S>(&mut self, ws: tokio_tungstenite::WebSocketStream<S>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use futures::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut sink, mut frames) = ws.split();
        while let Some(Ok(frame)) = frames.next().await {
            let Message::Binary(payload) = frame else {
                continue;
            };
            let (reply, notifies) = self.handle(&payload);
            for record in reply.into_iter().chain(notifies) {
                if sink.send(Message::Binary(record.into())).await.is_err() {
                    return;
                }
            }
        }
    }

    /// A Record in: the reply Record to send back (none for what is not
    /// answered: not a Record, not for this agent, not a request), and the
    /// Notify Records it caused.
    fn handle(&mut self, payload: &[u8]) -> (Option<Vec<u8>>, Vec<Vec<u8>>) {
        let Some((from, msg)) = self.read(payload) else {
            return (None, Vec::new());
        };
        let Some(header) = msg.header else {
            return (None, Vec::new());
        };
        let req = match msg.body.and_then(|b| b.msg_body) {
            Some(msg::body::MsgBody::Request(msg::Request {
                req_type: Some(req),
            })) => req,
            Some(msg::body::MsgBody::Response(msg::Response {
                resp_type: Some(msg::response::RespType::NotifyResp(r)),
            })) => {
                self.acknowledged.lock().unwrap().push(r.subscription_id);
                return (None, Vec::new());
            }
            _ => return (None, Vec::new()),
        };
        let mut model = self.model.lock().unwrap();
        model.controller.clone_from(&from);
        let (msg_type, body) = answer(&mut model, req);
        drop(model);
        let reply = self.record(&from, header.msg_id, msg_type, body);
        (Some(reply), self.notifies())
    }

    /// The Notify Records of the notifications queued so far.
    fn notifies(&mut self) -> Vec<Vec<u8>> {
        let outbox = std::mem::take(&mut self.model.lock().unwrap().outbox);
        outbox
            .into_iter()
            .map(|(to, notify)| {
                self.notified += 1;
                let id = format!("notify-{}", self.notified);
                let body = msg::body::MsgBody::Request(msg::Request {
                    req_type: Some(msg::request::ReqType::Notify(notify)),
                });
                self.record(&to, id, msg::header::MsgType::Notify, body)
            })
            .collect()
    }

    /// The sender and Msg of a Record addressed to this agent.
    fn read(&self, payload: &[u8]) -> Option<(String, msg::Msg)> {
        let record = rec::Record::decode(payload).ok()?;
        if record.to_id != self.id {
            return None;
        }
        let Some(rec::record::RecordType::NoSessionContext(r)) = record.record_type else {
            return None;
        };
        let msg = msg::Msg::decode(r.payload.as_slice()).ok()?;
        Some((record.from_id, msg))
    }

    /// An OnBoardRequest Notify for `to` (TR-369: sent with send_resp, and
    /// no subscription).
    fn on_board_request(&mut self, to: &str) -> Vec<u8> {
        self.notified += 1;
        let serial = self
            .model
            .lock()
            .unwrap()
            .value("Device.DeviceInfo.SerialNumber")
            .to_owned();
        let notify = msg::Notify {
            subscription_id: String::new(),
            send_resp: true,
            notification: Some(msg::notify::Notification::OnBoardReq(
                msg::notify::OnBoardRequest {
                    oui: "00D09E".into(),
                    product_class: "RDM-SIM".into(),
                    serial_number: serial,
                    agent_supported_protocol_versions: "1.3,1.4".into(),
                },
            )),
        };
        let body = msg::body::MsgBody::Request(msg::Request {
            req_type: Some(msg::request::ReqType::Notify(notify)),
        });
        let id = format!("onboard-{}", self.notified);
        self.record(to, id, msg::header::MsgType::Notify, body)
    }

    /// An MTP record (connect, disconnect) for `to`.
    fn mtp_record(&self, to: &str, record_type: rec::record::RecordType) -> Vec<u8> {
        rec::Record {
            version: "1.4".into(),
            to_id: to.to_owned(),
            from_id: self.id.clone(),
            record_type: Some(record_type),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// A Msg to `to` in a plaintext no-session-context Record.
    fn record(
        &self,
        to: &str,
        msg_id: String,
        msg_type: msg::header::MsgType,
        body: msg::body::MsgBody,
    ) -> Vec<u8> {
        let msg = msg::Msg {
            header: Some(msg::Header {
                msg_id,
                msg_type: msg_type as i32,
            }),
            body: Some(msg::Body {
                msg_body: Some(body),
            }),
        };
        rec::Record {
            version: "1.4".into(),
            to_id: to.to_owned(),
            from_id: self.id.clone(),
            record_type: Some(rec::record::RecordType::NoSessionContext(
                rec::NoSessionContextRecord {
                    payload: msg.encode_to_vec(),
                },
            )),
            ..Default::default()
        }
        .encode_to_vec()
    }
}
