//! USP Records and Msgs (TR-369 1.4, the BBF's protos in
//! `proto/third_party/usp`): wrapping a Msg for an agent, reading what comes
//! back, and a USP Error as an error of rdm's.
use prost::Message;
use rdm_proto::{usp_msg as msg, usp_record as rec};

/// The Record version rdm stamps; agents in the field send 1.3 or 1.4.
pub const VERSION: &str = "1.3";
/// The largest Record rdm reads.
pub const MAX_RECORD: usize = 4 << 20;

/// `msg` for `to` from `from`, in a plaintext no-session-context Record.
pub fn wrap(from: &str, to: &str, msg: &msg::Msg) -> Vec<u8> {
    rec::Record {
        version: VERSION.to_owned(),
        to_id: to.to_owned(),
        from_id: from.to_owned(),
        payload_security: rec::record::PayloadSecurity::Plaintext as i32,
        record_type: Some(rec::record::RecordType::NoSessionContext(
            rec::NoSessionContextRecord {
                payload: msg.encode_to_vec(),
            },
        )),
        ..Default::default()
    }
    .encode_to_vec()
}

/// What a Record from an endpoint holds.
#[derive(Debug)]
pub enum Received {
    /// A Msg.
    Msg {
        from: String,
        to: String,
        msg: msg::Msg,
    },
    /// An agent announced itself on an MTP (`mqtt_connect`, ...).
    Connect { from: String, to: String },
    /// The endpoint is going away.
    Disconnect {
        from: String,
        to: String,
        reason: String,
    },
}

/// Why a Record was not read.
#[derive(Debug, thiserror::Error)]
pub enum BadRecord {
    #[error("the record is larger than {MAX_RECORD} bytes")]
    TooLarge,
    #[error("not a USP Record: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("USP Record version {0:?} is not 1.x")]
    Version(String),
    #[error("a {0} record, which rdm does not take")]
    Unsupported(&'static str),
    #[error("payload security TLS12 (E2E), which rdm does not take")]
    Secured,
}

/// Reads a Record (and the Msg in it).
pub fn read(bytes: &[u8]) -> Result<Received, BadRecord> {
    if bytes.len() > MAX_RECORD {
        return Err(BadRecord::TooLarge);
    }
    let record = rec::Record::decode(bytes)?;
    if !record.version.starts_with("1.") {
        return Err(BadRecord::Version(record.version));
    }
    use rec::record::RecordType as T;
    let (from, to) = (record.from_id, record.to_id);
    match record.record_type {
        Some(T::NoSessionContext(r)) => {
            if record.payload_security != rec::record::PayloadSecurity::Plaintext as i32 {
                return Err(BadRecord::Secured);
            }
            let msg = msg::Msg::decode(r.payload.as_slice())?;
            Ok(Received::Msg { from, to, msg })
        }
        Some(
            T::MqttConnect(_) | T::WebsocketConnect(_) | T::StompConnect(_) | T::UdsConnect(_),
        ) => Ok(Received::Connect { from, to }),
        Some(T::Disconnect(d)) => Ok(Received::Disconnect {
            from,
            to,
            reason: d.reason,
        }),
        Some(T::SessionContext(_)) => Err(BadRecord::Unsupported("session_context")),
        None => Err(BadRecord::Unsupported("empty")),
    }
}

/// A request Msg with its header.
pub fn request(
    msg_id: &str,
    msg_type: msg::header::MsgType,
    req: msg::request::ReqType,
) -> msg::Msg {
    msg::Msg {
        header: Some(msg::Header {
            msg_id: msg_id.to_owned(),
            msg_type: msg_type as i32,
        }),
        body: Some(msg::Body {
            msg_body: Some(msg::body::MsgBody::Request(msg::Request {
                req_type: Some(req),
            })),
        }),
    }
}

/// A Msg's id ("" when it has no header).
pub fn msg_id(m: &msg::Msg) -> &str {
    m.header.as_ref().map_or("", |h| h.msg_id.as_str())
}
