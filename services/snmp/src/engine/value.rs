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
    #[error(
        "type {0:?} takes `value` only (OCTET STRING and Opaque take `value` or `hex`, not both; x takes hex digits in `value`)"
    )]
    Mixed(String),
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
            // A float or double wrapped in Opaque (RFC 6340 style, as
            // net-snmp writes them): the number, and the bytes as they came.
            Self::Opaque(b) if opaque_number(b).is_some() => {
                let number = opaque_number(b).unwrap_or_default();
                return (number, hex::encode(b));
            }
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

    /// A value for a SET from its type name, or one of snmpset's letters
    /// meaning what they mean to snmpset: `i` INTEGER, `u` Unsigned32, `c`
    /// Counter32, `C` Counter64, `t` TimeTicks, `a` IpAddress, `o` OID, `s`
    /// a string of text, `x` a string of hex digits, `d` a string of decimal
    /// bytes (`1.2.3` or `1 2 3`), `b` BITS (bit numbers, `0 3 5`). OCTET
    /// STRING and Opaque take `value` (text) or `hex`, not both; every other
    /// type takes `value` only.
    pub fn parse(type_name: &str, text: &str, hex_text: &str) -> Result<Self, BadValue> {
        let bad = |kind: &'static str, value: &str| BadValue::Value {
            kind,
            value: value.chars().take(64).collect(),
        };
        let t = type_name.trim();
        let lower = t.to_ascii_lowercase();
        // Letters are case-sensitive (`c` Counter32, `C` Counter64); names are not.
        let canonical = match t {
            "i" => "integer",
            "u" => "gauge32",
            "c" => "counter32",
            "C" => "counter64",
            "t" => "timeticks",
            "a" => "ipaddress",
            "o" => "oid",
            "s" => "text",
            "x" => "hexstring",
            "d" => "decimalstring",
            "b" => "bits",
            "n" => "null",
            _ => lower.as_str(),
        };
        let takes_hex = matches!(
            canonical,
            "octet string" | "octetstring" | "string" | "opaque"
        );
        if !hex_text.is_empty() && !takes_hex {
            return Err(BadValue::Mixed(t.to_owned()));
        }
        if !hex_text.is_empty() && !text.is_empty() {
            return Err(BadValue::Mixed(t.to_owned()));
        }
        let number = |kind: &'static str| text.trim().parse::<u64>().map_err(|_| bad(kind, text));
        let u32_of = |kind: &'static str| {
            number(kind).and_then(|n| u32::try_from(n).map_err(|_| bad(kind, text)))
        };
        let hex_of = |kind: &'static str, digits: &str| {
            let clean: String = digits
                .chars()
                .filter(|c| !matches!(c, ' ' | ':' | '-' | '\t' | '\n'))
                .collect();
            hex::decode(clean.trim_start_matches("0x")).map_err(|_| bad(kind, digits))
        };
        let bytes = |kind: &'static str| {
            if hex_text.is_empty() {
                Ok(text.as_bytes().to_vec())
            } else {
                hex_of(kind, hex_text)
            }
        };
        Ok(match canonical {
            "integer" | "integer32" | "int" => Self::Integer(
                text.trim()
                    .parse::<i32>()
                    .map_err(|_| bad("INTEGER (a 32-bit signed number)", text))?
                    .into(),
            ),
            "octet string" | "octetstring" | "string" => {
                Self::OctetString(bytes("OCTET STRING hex")?)
            }
            "text" => Self::OctetString(text.as_bytes().to_vec()),
            "hexstring" => Self::OctetString(hex_of("hex string (type x)", text)?),
            "decimalstring" => Self::OctetString(
                text.split(['.', ' ', ','])
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse::<u8>())
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| bad("decimal string (type d: bytes 0-255, like 1.2.3)", text))?,
            ),
            "bits" => {
                let mut octets: Vec<u8> = Vec::new();
                for bit in text.split([' ', ',']).filter(|p| !p.is_empty()) {
                    let bit: usize = bit
                        .parse()
                        .ok()
                        .filter(|b| *b < 1024)
                        .ok_or_else(|| bad("BITS (bit numbers, like 0 3 5)", text))?;
                    if octets.len() <= bit / 8 {
                        octets.resize(bit / 8 + 1, 0);
                    }
                    // BITS: bit 0 is the first octet's most significant bit.
                    octets[bit / 8] |= 0x80 >> (bit % 8);
                }
                Self::OctetString(octets)
            }
            "object identifier" | "objectidentifier" | "oid" => {
                Self::ObjectIdentifier(text.parse().map_err(|_| bad("OBJECT IDENTIFIER", text))?)
            }
            "ipaddress" | "ip" => Self::IpAddress(
                text.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| bad("IpAddress (a dotted quad)", text))?
                    .octets(),
            ),
            "counter32" | "counter" => Self::Counter32(u32_of("Counter32")?),
            "gauge32" | "gauge" | "unsigned32" | "unsigned" => Self::Gauge32(u32_of("Gauge32")?),
            "timeticks" => Self::TimeTicks(u32_of("TimeTicks")?),
            "opaque" => Self::Opaque(bytes("Opaque hex")?),
            "counter64" | "c64" => Self::Counter64(number("Counter64")?),
            "null" | "nosuchobject" | "nosuchinstance" | "endofmibview" => {
                return Err(BadValue::NotSettable(match canonical {
                    "null" => "NULL",
                    _ => "an exception",
                }));
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
/// Text shows what it holds: line breaks and tabs are fine, but control,
/// zero-width and direction-changing characters send the value to `hex`.
fn is_printable(s: &str) -> bool {
    s.chars()
        .all(|c| matches!(c, '\t' | '\r' | '\n') || !rdm_kit::text::is_hidden(c))
}

/// The number in an Opaque-wrapped float (`9f 78 04` + 4 bytes) or double
/// (`9f 79 08` + 8 bytes), big-endian IEEE 754.
fn opaque_number(b: &[u8]) -> Option<String> {
    match b {
        [0x9f, 0x78, 0x04, rest @ ..] => {
            Some(f32::from_be_bytes(rest.try_into().ok()?).to_string())
        }
        [0x9f, 0x79, 0x08, rest @ ..] => {
            Some(f64::from_be_bytes(rest.try_into().ok()?).to_string())
        }
        _ => None,
    }
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
        // Hidden characters go to hex: what a user sees is what the device holds.
        for hidden in ["admin\u{200B}", "x\u{202E}y", "bell\u{7}"] {
            assert_eq!(
                Value::OctetString(hidden.as_bytes().to_vec()).to_text(),
                (String::new(), hex::encode(hidden)),
                "{hidden:?}"
            );
        }
        assert_eq!(
            Value::OctetString(b"line 1\nline 2".to_vec()).to_text().0,
            "line 1\nline 2"
        );
        // Opaque floats and doubles, as net-snmp encodes 3.14 and -2.5.
        let float = [0x9f, 0x78, 0x04, 0x40, 0x48, 0xf5, 0xc3];
        assert_eq!(
            Value::Opaque(float.to_vec()).to_text(),
            ("3.14".into(), "9f78044048f5c3".into())
        );
        let double = [0x9f, 0x79, 0x08, 0xc0, 0x04, 0, 0, 0, 0, 0, 0];
        assert_eq!(Value::Opaque(double.to_vec()).to_text().0, "-2.5");
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

    /// snmpset's letters, as snmpset means them.
    #[test]
    fn snmpset_letters_mean_what_they_mean_to_snmpset() {
        let os = |b: &[u8]| Value::OctetString(b.to_vec());
        assert_eq!(
            Value::parse("x", "001a2bff", "").unwrap(),
            os(&[0, 0x1a, 0x2b, 0xff])
        );
        assert_eq!(
            Value::parse("x", "00:1a:2b ff", "").unwrap(),
            os(&[0, 0x1a, 0x2b, 0xff])
        );
        assert_eq!(Value::parse("s", "001a2bff", "").unwrap(), os(b"001a2bff"));
        assert_eq!(Value::parse("d", "1.2.255", "").unwrap(), os(&[1, 2, 255]));
        assert_eq!(
            Value::parse("b", "0 3 9", "").unwrap(),
            os(&[0b1001_0000, 0b0100_0000])
        );
        assert_eq!(Value::parse("c", "5", "").unwrap(), Value::Counter32(5));
        assert_eq!(
            Value::parse("C", "5000000000", "").unwrap(),
            Value::Counter64(5_000_000_000)
        );
        assert_eq!(Value::parse("u", "7", "").unwrap(), Value::Gauge32(7));
        assert_eq!(Value::parse("t", "100", "").unwrap(), Value::TimeTicks(100));
        assert_eq!(
            Value::parse("a", "10.0.0.1", "").unwrap(),
            Value::IpAddress([10, 0, 0, 1])
        );
        assert_eq!(Value::parse("i", "-3", "").unwrap(), Value::Integer(-3));
        for (t, v, h) in [
            ("x", "zz", ""),
            ("d", "1.256", ""),
            ("b", "x", ""),
            ("c", "5000000000", ""),
        ] {
            assert!(
                matches!(Value::parse(t, v, h), Err(BadValue::Value { .. })),
                "{t} {v}"
            );
        }
        // value and hex must not disagree with the type, or with each other.
        for (t, v, h) in [
            ("s", "", "00ff"),
            ("INTEGER", "", "01"),
            ("x", "", "00ff"),
            ("OCTET STRING", "ab", "00ff"),
        ] {
            assert!(
                matches!(Value::parse(t, v, h), Err(BadValue::Mixed(_))),
                "{t} {v} {h}"
            );
        }
    }
}
