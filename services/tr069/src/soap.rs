//! CWMP's SOAP 1.1 envelopes (TR-069; PEERS.md): what a CPE sends, read
//! with roxmltree (no DTD, so no entity expansion, and a node limit), and
//! what rdm's ACS answers, written in the CWMP version the CPE spoke.
use roxmltree::{Document, Node, ParsingOptions};
use std::fmt::Write;

/// The most XML nodes one envelope may hold (a whole parameter tree fits).
const MAX_NODES: u32 = 400_000;
const SOAP_ENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// CWMP 1.0 to 1.4; the Inform's namespace says which.
const CWMP_PREFIX: &str = "urn:dslforum-org:cwmp-1-";

/// A parameter and its value, as CWMP lists them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Param {
    pub name: String,
    pub value: String,
    /// `xsd:string`, `xsd:unsignedInt`, ...
    pub xsd_type: String,
}

/// A CPE's DeviceId.
#[derive(Clone, Debug, Default)]
pub struct DeviceId {
    pub manufacturer: String,
    pub oui: String,
    pub product_class: String,
    pub serial_number: String,
}

impl DeviceId {
    /// The ACS's id: OUI-ProductClass-SerialNumber, or OUI-SerialNumber
    /// without a product class.
    pub fn acs_id(&self) -> String {
        match self.product_class.as_str() {
            "" => format!("{}-{}", self.oui, self.serial_number),
            class => format!("{}-{class}-{}", self.oui, self.serial_number),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Inform {
    pub device: DeviceId,
    /// Event codes with their command keys.
    pub events: Vec<(String, String)>,
    pub params: Vec<Param>,
}

#[derive(Clone, Debug, Default)]
pub struct TransferComplete {
    pub command_key: String,
    pub fault_code: u32,
    pub fault_string: String,
    pub start_time: String,
    pub complete_time: String,
}

/// A CPE's fault: the code, its string, and the per-parameter faults of a
/// SetParameterValues.
#[derive(Clone, Debug, Default)]
pub struct Fault {
    pub code: u32,
    pub string: String,
    pub params: Vec<(String, u32, String)>,
}

/// A CPE's answer to an RPC of the ACS.
#[derive(Clone, Debug)]
pub enum Answer {
    Values(Vec<Param>),
    /// GetParameterNamesResponse: names (objects end in `.`) and whether
    /// each is writable.
    Names(Vec<(String, bool)>),
    AddObject {
        instance: u32,
    },
    /// Set, Delete, Reboot, FactoryReset, Download: their Status (1: the
    /// CPE applies it after a reboot or a transfer).
    Done {
        status: u32,
    },
}

/// What one POST of a CPE holds.
#[derive(Debug)]
pub enum Message {
    Inform(Box<Inform>),
    TransferComplete(TransferComplete),
    GetRpcMethods,
    Answer(Answer),
    Fault(Fault),
    /// A method the ACS does not take.
    Other(String),
}

/// A parsed envelope: the CWMP namespace, the `cwmp:ID` to echo, and the
/// message.
#[derive(Debug)]
pub struct Envelope {
    pub ns: String,
    pub id: Option<String>,
    pub message: Message,
}

/// Why an envelope was refused (answered 400).
pub type Refusal = String;

/// Reads a CPE's POST body.
pub fn parse(xml: &str) -> Result<Envelope, Refusal> {
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
    };
    let doc = Document::parse_with_options(xml, options)
        .map_err(|e| format!("not XML rdm reads: {e}"))?;
    let envelope = doc.root_element();
    if !is(envelope, SOAP_ENV, "Envelope") {
        return Err("not a SOAP 1.1 envelope".into());
    }
    let id = child_in(envelope, SOAP_ENV, "Header")
        .and_then(|h| {
            h.children()
                .find(|c| c.is_element() && c.tag_name().name() == "ID")
        })
        .map(text);
    let body = child_in(envelope, SOAP_ENV, "Body").ok_or("the envelope has no Body")?;
    let call = body
        .children()
        .find(Node::is_element)
        .ok_or("the Body is empty")?;
    if is(call, SOAP_ENV, "Fault") {
        let detail = call
            .descendants()
            .find(|n| n.is_element() && n.tag_name().name() == "Fault" && cwmp_ns(*n).is_some())
            .ok_or("a SOAP Fault without a cwmp:Fault detail")?;
        let ns = cwmp_ns(detail).unwrap_or_default().to_owned();
        return Ok(Envelope {
            ns,
            id,
            message: Message::Fault(fault(detail)),
        });
    }
    let ns = cwmp_ns(call)
        .ok_or_else(|| format!("{} is not in a CWMP namespace", call.tag_name().name()))?
        .to_owned();
    let message = match call.tag_name().name() {
        "Inform" => Message::Inform(Box::new(inform(call)?)),
        "TransferComplete" => {
            let fault = child(call, "FaultStruct");
            Message::TransferComplete(TransferComplete {
                command_key: field(call, "CommandKey"),
                fault_code: fault.map_or(0, |f| number(&field(f, "FaultCode"))),
                fault_string: fault.map(|f| field(f, "FaultString")).unwrap_or_default(),
                start_time: field(call, "StartTime"),
                complete_time: field(call, "CompleteTime"),
            })
        }
        "GetRPCMethods" => Message::GetRpcMethods,
        "GetParameterValuesResponse" => Message::Answer(Answer::Values(values(call))),
        "GetParameterNamesResponse" => Message::Answer(Answer::Names(
            list(call, "ParameterList")
                .map(|p| {
                    (
                        field(p, "Name"),
                        matches!(field(p, "Writable").as_str(), "1" | "true"),
                    )
                })
                .collect(),
        )),
        "AddObjectResponse" => Message::Answer(Answer::AddObject {
            instance: number(&field(call, "InstanceNumber")),
        }),
        "SetParameterValuesResponse"
        | "DeleteObjectResponse"
        | "DownloadResponse"
        | "RebootResponse"
        | "FactoryResetResponse" => Message::Answer(Answer::Done {
            status: number(&field(call, "Status")),
        }),
        other => Message::Other(other.to_owned()),
    };
    Ok(Envelope { ns, id, message })
}

fn inform(call: Node) -> Result<Inform, Refusal> {
    let id = child(call, "DeviceId").ok_or("an Inform without DeviceId")?;
    let device = DeviceId {
        manufacturer: field(id, "Manufacturer"),
        oui: field(id, "OUI"),
        product_class: field(id, "ProductClass"),
        serial_number: field(id, "SerialNumber"),
    };
    if device.oui.is_empty() || device.serial_number.is_empty() {
        return Err("the Inform's DeviceId needs OUI and SerialNumber".into());
    }
    let events = list(call, "Event")
        .map(|e| (field(e, "EventCode"), field(e, "CommandKey")))
        .collect();
    Ok(Inform {
        device,
        events,
        params: values(call),
    })
}

fn fault(detail: Node) -> Fault {
    Fault {
        code: number(&field(detail, "FaultCode")),
        string: field(detail, "FaultString"),
        params: detail
            .children()
            .filter(|c| c.has_tag_name("SetParameterValuesFault"))
            .map(|f| {
                (
                    field(f, "ParameterName"),
                    number(&field(f, "FaultCode")),
                    field(f, "FaultString"),
                )
            })
            .collect(),
    }
}

/// A ParameterList of ParameterValueStructs.
fn values(call: Node) -> Vec<Param> {
    list(call, "ParameterList")
        .map(|p| {
            let value = child(p, "Value");
            Param {
                name: field(p, "Name"),
                value: value.map(text).unwrap_or_default(),
                xsd_type: value
                    .and_then(|v| {
                        v.attributes()
                            .find(|a| a.name() == "type")
                            .map(|a| a.value().to_owned())
                    })
                    .unwrap_or_else(|| "xsd:string".into()),
            }
        })
        .collect()
}

/// The structs of an array element.
fn list<'a, 'i>(call: Node<'a, 'i>, name: &str) -> impl Iterator<Item = Node<'a, 'i>> {
    child(call, name)
        .into_iter()
        .flat_map(|l| l.children().filter(Node::is_element))
}

fn is(n: Node, ns: &str, name: &str) -> bool {
    n.tag_name().namespace() == Some(ns) && n.tag_name().name() == name
}

fn child_in<'a, 'i>(n: Node<'a, 'i>, ns: &str, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.is_element() && is(*c, ns, name))
}

/// A child by local name (CWMP's argument elements have no namespace).
fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn field(n: Node, name: &str) -> String {
    child(n, name).map(text).unwrap_or_default()
}

fn text(n: Node) -> String {
    n.text().unwrap_or_default().trim().to_owned()
}

fn number(s: &str) -> u32 {
    s.trim().parse().unwrap_or(0)
}

/// The element's namespace when it is CWMP's.
fn cwmp_ns<'a>(n: Node<'a, '_>) -> Option<&'a str> {
    n.tag_name().namespace().filter(|ns| {
        ns.strip_prefix(CWMP_PREFIX)
            .is_some_and(|v| matches!(v, "0" | "1" | "2" | "3" | "4"))
    })
}

/// An RPC rdm's ACS sends a CPE.
#[derive(Clone, Debug)]
pub enum Rpc {
    GetParameterValues(Vec<String>),
    SetParameterValues {
        params: Vec<Param>,
        key: String,
    },
    GetParameterNames {
        path: String,
        next_level: bool,
    },
    AddObject {
        name: String,
        key: String,
    },
    DeleteObject {
        name: String,
        key: String,
    },
    Reboot {
        key: String,
    },
    FactoryReset,
    Download {
        key: String,
        file_type: String,
        url: String,
        size: u64,
        target_file_name: String,
    },
}

/// An envelope rdm's ACS sends, in the CPE's CWMP namespace `ns`, with the
/// `cwmp:ID` header when there is one, and `HoldRequests` true when `hold`
/// (the CPE sends no requests of its own until told otherwise: the ACS has
/// work for it first).
pub fn envelope(ns: &str, id: Option<&str>, hold: bool, body: &str) -> String {
    let mut header = String::new();
    if let Some(id) = id {
        header += &format!(
            "<cwmp:ID soap-env:mustUnderstand=\"1\">{}</cwmp:ID>",
            escape(id)
        );
    }
    if hold {
        header += "<cwmp:HoldRequests soap-env:mustUnderstand=\"1\">1</cwmp:HoldRequests>";
    }
    if !header.is_empty() {
        header = format!("<soap-env:Header>{header}</soap-env:Header>");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soap-env:Envelope xmlns:soap-env=\"{SOAP_ENV}\" \
         xmlns:soap-enc=\"http://schemas.xmlsoap.org/soap/encoding/\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:cwmp=\"{}\">{header}<soap-env:Body>{body}</soap-env:Body></soap-env:Envelope>",
        escape(ns)
    )
}

pub const INFORM_RESPONSE: &str =
    "<cwmp:InformResponse><MaxEnvelopes>1</MaxEnvelopes></cwmp:InformResponse>";
pub const TRANSFER_COMPLETE_RESPONSE: &str = "<cwmp:TransferCompleteResponse/>";

/// The methods rdm's ACS takes from a CPE.
pub fn rpc_methods() -> String {
    let methods = ["Inform", "GetRPCMethods", "TransferComplete"];
    let mut out = format!(
        "<cwmp:GetRPCMethodsResponse><MethodList soap-enc:arrayType=\"xsd:string[{}]\">",
        methods.len()
    );
    for m in methods {
        let _ = write!(out, "<string>{m}</string>");
    }
    out + "</MethodList></cwmp:GetRPCMethodsResponse>"
}

/// An ACS fault (8000-8005).
pub fn acs_fault(code: u32, string: &str) -> String {
    format!(
        "<soap-env:Fault><faultcode>{}</faultcode><faultstring>CWMP fault</faultstring><detail>\
         <cwmp:Fault><FaultCode>{code}</FaultCode><FaultString>{}</FaultString></cwmp:Fault>\
         </detail></soap-env:Fault>",
        if code == 8002 { "Server" } else { "Client" },
        escape(string)
    )
}

/// The body of an RPC.
pub fn request(rpc: &Rpc) -> String {
    let strings = |names: &[String]| {
        let mut out = format!("soap-enc:arrayType=\"xsd:string[{}]\">", names.len());
        for n in names {
            let _ = write!(out, "<string>{}</string>", escape(n));
        }
        out
    };
    match rpc {
        Rpc::GetParameterValues(names) => format!(
            "<cwmp:GetParameterValues><ParameterNames {}</ParameterNames></cwmp:GetParameterValues>",
            strings(names)
        ),
        Rpc::SetParameterValues { params, key } => {
            let mut list = String::new();
            for p in params {
                let _ = write!(
                    list,
                    "<ParameterValueStruct><Name>{}</Name><Value xsi:type=\"{}\">{}</Value></ParameterValueStruct>",
                    escape(&p.name),
                    escape(&p.xsd_type),
                    escape(&p.value)
                );
            }
            format!(
                "<cwmp:SetParameterValues><ParameterList soap-enc:arrayType=\"cwmp:ParameterValueStruct[{}]\">{list}</ParameterList>\
                 <ParameterKey>{}</ParameterKey></cwmp:SetParameterValues>",
                params.len(),
                escape(key)
            )
        }
        Rpc::GetParameterNames { path, next_level } => format!(
            "<cwmp:GetParameterNames><ParameterPath>{}</ParameterPath><NextLevel>{}</NextLevel></cwmp:GetParameterNames>",
            escape(path),
            u8::from(*next_level)
        ),
        Rpc::AddObject { name, key } => format!(
            "<cwmp:AddObject><ObjectName>{}</ObjectName><ParameterKey>{}</ParameterKey></cwmp:AddObject>",
            escape(name),
            escape(key)
        ),
        Rpc::DeleteObject { name, key } => format!(
            "<cwmp:DeleteObject><ObjectName>{}</ObjectName><ParameterKey>{}</ParameterKey></cwmp:DeleteObject>",
            escape(name),
            escape(key)
        ),
        Rpc::Reboot { key } => format!(
            "<cwmp:Reboot><CommandKey>{}</CommandKey></cwmp:Reboot>",
            escape(key)
        ),
        Rpc::FactoryReset => "<cwmp:FactoryReset/>".into(),
        Rpc::Download {
            key,
            file_type,
            url,
            size,
            target_file_name,
        } => format!(
            "<cwmp:Download><CommandKey>{}</CommandKey><FileType>{}</FileType><URL>{}</URL>\
             <Username></Username><Password></Password><FileSize>{size}</FileSize>\
             <TargetFileName>{}</TargetFileName><DelaySeconds>0</DelaySeconds>\
             <SuccessURL></SuccessURL><FailureURL></FailureURL></cwmp:Download>",
            escape(key),
            escape(file_type),
            escape(url),
            escape(target_file_name)
        ),
    }
}

/// Text as XML character data or an attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFORM: &str = r#"<?xml version="1.0"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="urn:dslforum-org:cwmp-1-2" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<soapenv:Header><cwmp:ID soapenv:mustUnderstand="1">42</cwmp:ID></soapenv:Header>
<soapenv:Body><cwmp:Inform>
<DeviceId><Manufacturer>Acme</Manufacturer><OUI>202BC1</OUI><ProductClass>BM632w</ProductClass><SerialNumber>000001</SerialNumber></DeviceId>
<Event><EventStruct><EventCode>0 BOOTSTRAP</EventCode><CommandKey></CommandKey></EventStruct><EventStruct><EventCode>M Reboot</EventCode><CommandKey>k1</CommandKey></EventStruct></Event>
<MaxEnvelopes>1</MaxEnvelopes><RetryCount>0</RetryCount>
<ParameterList><ParameterValueStruct><Name>Device.DeviceInfo.SoftwareVersion</Name><Value xsi:type="xsd:string">1.0 &amp; more</Value></ParameterValueStruct></ParameterList>
</cwmp:Inform></soapenv:Body></soapenv:Envelope>"#;

    #[test]
    fn an_inform_is_read_with_its_namespace_id_and_events() {
        let e = parse(INFORM).unwrap();
        assert_eq!(e.ns, "urn:dslforum-org:cwmp-1-2");
        assert_eq!(e.id.as_deref(), Some("42"));
        let Message::Inform(i) = e.message else {
            panic!("not an Inform")
        };
        assert_eq!(i.device.acs_id(), "202BC1-BM632w-000001");
        assert_eq!(i.events[1], ("M Reboot".into(), "k1".into()));
        assert_eq!(i.params[0].value, "1.0 & more");
        assert_eq!(i.params[0].xsd_type, "xsd:string");
    }

    #[test]
    fn a_fault_with_parameter_faults_is_read() {
        let xml = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="urn:dslforum-org:cwmp-1-0"><s:Body><s:Fault><faultcode>Client</faultcode><faultstring>CWMP fault</faultstring><detail><cwmp:Fault><FaultCode>9003</FaultCode><FaultString>Invalid arguments</FaultString><SetParameterValuesFault><ParameterName>Device.X</ParameterName><FaultCode>9008</FaultCode><FaultString>read-only</FaultString></SetParameterValuesFault></cwmp:Fault></detail></s:Fault></s:Body></s:Envelope>"#;
        let Message::Fault(f) = parse(xml).unwrap().message else {
            panic!("not a fault")
        };
        assert_eq!(f.code, 9003);
        assert_eq!(f.params, [("Device.X".into(), 9008, "read-only".into())]);
    }

    #[test]
    fn entity_expansion_and_foreign_documents_are_refused() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>"#;
        assert!(parse(bomb).unwrap_err().contains("DTD"));
        assert!(parse("<a/>").unwrap_err().contains("SOAP"));
        assert!(parse("not xml").is_err());
    }

    #[test]
    fn requests_are_escaped_and_in_the_cpes_namespace() {
        let rpc = Rpc::SetParameterValues {
            params: vec![Param {
                name: "Device.X".into(),
                value: "a<b".into(),
                xsd_type: "xsd:string".into(),
            }],
            key: "k".into(),
        };
        let xml = envelope(
            "urn:dslforum-org:cwmp-1-4",
            Some("7"),
            false,
            &request(&rpc),
        );
        assert!(xml.contains("a&lt;b"));
        let doc = Document::parse(&xml).unwrap();
        let call = doc
            .descendants()
            .find(|n| n.has_tag_name("SetParameterValues"))
            .unwrap();
        assert_eq!(
            call.tag_name().namespace(),
            Some("urn:dslforum-org:cwmp-1-4")
        );
        assert!(!xml.contains("HoldRequests"));
        let held = envelope(
            "urn:dslforum-org:cwmp-1-0",
            Some("1"),
            true,
            INFORM_RESPONSE,
        );
        let doc = Document::parse(&held).unwrap();
        let hold = doc
            .descendants()
            .find(|n| n.has_tag_name("HoldRequests"))
            .unwrap();
        assert_eq!(
            (hold.tag_name().namespace(), hold.text()),
            (Some("urn:dslforum-org:cwmp-1-0"), Some("1"))
        );
    }
}
