//! SNMP values: owned, typed as the SMI types them, with the text form
//! replies use and the parsing SET requests need.
use crate::engine::oid::Oid;
use std::net::Ipv4Addr;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Integer(i64),
    OctetString(Vec<u8>),
    ObjectIdentifier(Oid),
    IpAddress([u8; 4]),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Opaque(Vec<u8>),
    Counter64(u64),
    Null,
    NoSuchObject,
    NoSuchInstance,
    EndOfMibView,
}

/// One variable binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarBind {
    pub oid: Oid,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    #[error(
        "unknown type {0:?}: expected INTEGER, OCTET STRING, OBJECT IDENTIFIER, IpAddress, Counter32, Gauge32, TimeTicks, Opaque or Counter64"
    )]
    Type(String),
    #[error("{value:?} is not a valid {kind}")]
    Value { kind: &'static str, value: String },
    #[error("{0} takes no value in a SET")]
    NotSettable(&'static str),
}

impl Value {
    /// The SMI type name, as replies spell it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Integer(_) => "INTEGER",
            Self::OctetString(_) => "OCTET STRING",
            Self::ObjectIdentifier(_) => "OBJECT IDENTIFIER",
            Self::IpAddress(_) => "IpAddress",
            Self::Counter32(_) => "Counter32",
            Self::Gauge32(_) => "Gauge32",
            Self::TimeTicks(_) => "TimeTicks",
            Self::Opaque(_) => "Opaque",
            Self::Counter64(_) => "Counter64",
            Self::Null => "NULL",
            Self::NoSuchObject => "noSuchObject",
            Self::NoSuchInstance => "noSuchInstance",
            Self::EndOfMibView => "endOfMibView",
        }
    }

    pub fn is_exception(&self) -> bool {
        matches!(
            self,
            Self::NoSuchObject | Self::NoSuchInstance | Self::EndOfMibView
        )
    }

    /// `(text, hex)`: bytes that are not printable text go to `hex`.
    pub fn to_text(&self) -> (String, String) {
        let text = match self {
            Self::Integer(n) => n.to_string(),
            Self::OctetString(b) | Self::Opaque(b) => {
                return match std::str::from_utf8(b) {
                    Ok(s) if is_printable(s) => (s.to_owned(), String::new()),
                    _ => (String::new(), hex::encode(b)),
                };
            }
            Self::ObjectIdentifier(oid) => oid.to_string(),
            Self::IpAddress(ip) => Ipv4Addr::from(*ip).to_string(),
            Self::Counter32(n) | Self::Gauge32(n) | Self::TimeTicks(n) => n.to_string(),
            Self::Counter64(n) => n.to_string(),
            Self::Null | Self::NoSuchObject | Self::NoSuchInstance | Self::EndOfMibView => {
                String::new()
            }
        };
        (text, String::new())
    }

    /// A value for a SET from its type name (or net-snmp's one-letter type)
    /// and its text, or hex for strings.
    pub fn parse(type_name: &str, text: &str, hex_text: &str) -> Result<Self, BadValue> {
        let bad = |kind: &'static str, value: &str| BadValue::Value {
            kind,
            value: value.to_owned(),
        };
        let t = type_name.trim();
        let number = |kind: &'static str| text.trim().parse::<u64>().map_err(|_| bad(kind, text));
        let u32_of = |kind: &'static str| {
            number(kind).and_then(|n| u32::try_from(n).map_err(|_| bad(kind, text)))
        };
        let bytes = |kind: &'static str| {
            if hex_text.is_empty() {
                Ok(text.as_bytes().to_vec())
            } else {
                let clean: String = hex_text
                    .chars()
                    .filter(|c| !matches!(c, ' ' | ':' | '-'))
                    .collect();
                hex::decode(clean).map_err(|_| bad(kind, hex_text))
            }
        };
        Ok(match t.to_ascii_lowercase().as_str() {
            "integer" | "integer32" | "int" | "i" => Self::Integer(
                text.trim()
                    .parse::<i32>()
                    .map_err(|_| bad("INTEGER (a 32-bit signed number)", text))?
                    .into(),
            ),
            "octet string" | "octetstring" | "string" | "s" | "x" => {
                Self::OctetString(bytes("OCTET STRING hex")?)
            }
            "object identifier" | "objectidentifier" | "oid" | "o" => {
                Self::ObjectIdentifier(text.parse().map_err(|_| bad("OBJECT IDENTIFIER", text))?)
            }
            "ipaddress" | "ip" | "a" => Self::IpAddress(
                text.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| bad("IpAddress (a dotted quad)", text))?
                    .octets(),
            ),
            "counter32" | "counter" | "c" => Self::Counter32(u32_of("Counter32")?),
            "gauge32" | "gauge" | "unsigned32" | "unsigned" | "u" => {
                Self::Gauge32(u32_of("Gauge32")?)
            }
            "timeticks" | "t" => Self::TimeTicks(u32_of("TimeTicks")?),
            "opaque" => Self::Opaque(bytes("Opaque hex")?),
            "counter64" | "c64" => Self::Counter64(number("Counter64")?),
            "null" | "nosuchobject" | "nosuchinstance" | "endofmibview" => {
                return Err(BadValue::NotSettable(
                    match t.to_ascii_lowercase().as_str() {
                        "null" => "NULL",
                        _ => "an exception",
                    },
                ));
            }
            _ => return Err(BadValue::Type(t.to_owned())),
        })
    }

    /// From snmp2's borrowed value; `None` for types SNMP does not carry in
    /// a varbind (a device that sends one is lying).
    pub fn from_wire(v: &snmp2::Value<'_>) -> Option<Self> {
        use snmp2::Value as W;
        Some(match v {
            W::Integer(n) => Self::Integer(*n),
            W::OctetString(b) => Self::OctetString(b.to_vec()),
            W::ObjectIdentifier(o) => Self::ObjectIdentifier(Oid::try_from(o).ok()?),
            W::IpAddress(ip) => Self::IpAddress(*ip),
            W::Counter32(n) => Self::Counter32(*n),
            W::Unsigned32(n) => Self::Gauge32(*n),
            W::Timeticks(n) => Self::TimeTicks(*n),
            W::Opaque(b) => Self::Opaque(b.to_vec()),
            W::Counter64(n) => Self::Counter64(*n),
            W::Null => Self::Null,
            W::NoSuchObject => Self::NoSuchObject,
            W::NoSuchInstance => Self::NoSuchInstance,
            W::EndOfMibView => Self::EndOfMibView,
            _ => return None,
        })
    }
}

/// Text a person can read: no control characters but tab, CR and LF.
fn is_printable(s: &str) -> bool {
    s.chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\r' | '\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_text_or_hex() {
        assert_eq!(
            Value::OctetString(b"Linux box".to_vec()).to_text(),
            ("Linux box".into(), String::new())
        );
        assert_eq!(
            Value::OctetString(vec![0, 0x1b, 0xff]).to_text(),
            (String::new(), "001bff".into())
        );
        assert_eq!(Value::IpAddress([10, 0, 0, 1]).to_text().0, "10.0.0.1");
        assert_eq!(Value::Counter64(u64::MAX).to_text().0, u64::MAX.to_string());
    }

    #[test]
    fn parses_set_values_and_names_what_is_wrong() {
        assert_eq!(
            Value::parse("INTEGER", "-5", "").unwrap(),
            Value::Integer(-5)
        );
        assert_eq!(
            Value::parse("s", "lab", "").unwrap(),
            Value::OctetString(b"lab".to_vec())
        );
        assert_eq!(
            Value::parse("OCTET STRING", "", "de:ad be-ef").unwrap(),
            Value::OctetString(vec![0xde, 0xad, 0xbe, 0xef])
        );
        assert_eq!(Value::parse("Gauge32", "7", "").unwrap(), Value::Gauge32(7));
        assert_eq!(
            Value::parse("IpAddress", "192.0.2.1", "").unwrap(),
            Value::IpAddress([192, 0, 2, 1])
        );
        assert!(matches!(
            Value::parse("INTEGER", "2147483648", ""),
            Err(BadValue::Value { .. })
        ));
        assert!(matches!(
            Value::parse("Counter32", "-1", ""),
            Err(BadValue::Value { .. })
        ));
        assert!(matches!(
            Value::parse("IpAddress", "10.0.0", ""),
            Err(BadValue::Value { .. })
        ));
        assert!(matches!(
            Value::parse("OCTET STRING", "", "zz"),
            Err(BadValue::Value { .. })
        ));
        assert!(matches!(
            Value::parse("Float", "1", ""),
            Err(BadValue::Type(_))
        ));
        assert!(matches!(
            Value::parse("NULL", "", ""),
            Err(BadValue::NotSettable(_))
        ));
    }
}
