//! WebPA's data types, and values between their wire text and JSON: a
//! boolean is `true`, an integer or a float a number, the rest a string.
use prost_types::{Value, value::Kind};
use std::sync::LazyLock;

/// WebPA's data types by number (PEERS.md): 11 is "none" (a partial path's
/// array of values), never sent.
const NAMES: [&str; 13] = [
    "string",
    "int",
    "unsignedInt",
    "boolean",
    "dateTime",
    "base64",
    "long",
    "unsignedLong",
    "float",
    "double",
    "byte",
    "none",
    "blob",
];

/// A parameter's data type, by WebPA's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataType(pub u8);

impl DataType {
    pub const STRING: Self = Self(0);
    pub const NONE: Self = Self(11);

    /// From a name (`int`) or WebPA's number as text (`"1"`); empty is string.
    pub fn parse(text: &str) -> Option<Self> {
        if text.is_empty() {
            return Some(Self::STRING);
        }
        let n = match text.parse::<u8>() {
            Ok(n) => n,
            Err(_) => NAMES.iter().position(|name| *name == text)? as u8,
        };
        (usize::from(n) < NAMES.len() && n != Self::NONE.0).then_some(Self(n))
    }

    pub fn name(self) -> &'static str {
        NAMES.get(usize::from(self.0)).copied().unwrap_or("string")
    }

    /// The integer range of an integer type.
    fn range(self) -> Option<(i128, i128)> {
        Some(match self.0 {
            1 => (i32::MIN.into(), i32::MAX.into()),
            2 => (0, u32::MAX.into()),
            6 => (i64::MIN.into(), i64::MAX.into()),
            7 => (0, u64::MAX.into()),
            10 => (0, 255),
            _ => return None,
        })
    }
}

/// The largest integer a JSON number (an f64) holds exactly.
const EXACT: i128 = 1 << 53;

/// A value as the device sent it (text), typed for the reply.
pub fn from_wire(text: &str, data_type: DataType) -> Value {
    let kind = match data_type.0 {
        3 => match text {
            "true" | "1" => Kind::BoolValue(true),
            "false" | "0" => Kind::BoolValue(false),
            _ => Kind::StringValue(text.to_owned()),
        },
        8 | 9 => match text.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Kind::NumberValue(f),
            _ => Kind::StringValue(text.to_owned()),
        },
        _ if data_type.range().is_some() => match text.trim().parse::<i128>() {
            Ok(n) if n.abs() <= EXACT => Kind::NumberValue(n as f64),
            _ => Kind::StringValue(text.to_owned()),
        },
        _ => Kind::StringValue(text.to_owned()),
    };
    Value { kind: Some(kind) }
}

/// A JSON value from the device's reply (normally text; a device may send
/// a JSON boolean or number) as the text [`from_wire`] reads.
pub fn wire_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

static DATE_TIME: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?$")
        .expect("the dateTime pattern compiles")
});

/// A value given in a request as the text sent to the device, or why it
/// does not fit `data_type`.
pub fn to_wire(value: &Value, data_type: DataType) -> Result<String, String> {
    let name = data_type.name();
    let kind = value.kind.as_ref().ok_or("a value is required")?;
    let text = match kind {
        Kind::StringValue(s) => s.clone(),
        Kind::BoolValue(b) if data_type.0 == 3 => b.to_string(),
        Kind::NumberValue(n) if data_type.range().is_some() => {
            if n.fract() != 0.0 || !n.is_finite() {
                return Err(format!("{n} is not a whole number, as {name} needs"));
            }
            if n.abs() > EXACT as f64 {
                return Err(format!(
                    "{n} is beyond what a JSON number holds exactly: give it as a string"
                ));
            }
            format!("{}", *n as i128)
        }
        Kind::NumberValue(n) if matches!(data_type.0, 8 | 9) => n.to_string(),
        _ => return Err(format!("a {name} value cannot be {}", kind_name(kind))),
    };
    if text.is_empty() {
        return Err("the value is empty (devices refuse empty values)".into());
    }
    match data_type.0 {
        3 if !matches!(text.as_str(), "true" | "false" | "1" | "0") => {
            Err(format!("{text:?} is not a boolean (true or false)"))
        }
        8 | 9 if !text.trim().parse::<f64>().is_ok_and(f64::is_finite) => {
            Err(format!("{text:?} is not a {name}"))
        }
        4 if !DATE_TIME.is_match(&text) => Err(format!(
            "{text:?} is not a dateTime like 2026-11-30T12:00:00Z"
        )),
        5 | 12 if base64_invalid(&text) => Err(format!("{name} values are base64 text")),
        _ => match data_type.range() {
            Some((lo, hi)) => match text.parse::<i128>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(text),
                _ => Err(format!("{text:?} is not a {name} (from {lo} to {hi})")),
            },
            None => Ok(text),
        },
    }
}

fn base64_invalid(text: &str) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .is_err()
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::NullValue(_) => "null",
        Kind::NumberValue(_) => "a number",
        Kind::StringValue(_) => "a string",
        Kind::BoolValue(_) => "a boolean",
        Kind::StructValue(_) => "an object",
        Kind::ListValue(_) => "a list",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    #[test]
    fn types_by_name_or_number() {
        assert_eq!(DataType::parse("int"), Some(DataType(1)));
        assert_eq!(DataType::parse("12"), Some(DataType(12)));
        assert_eq!(DataType::parse("blob").map(DataType::name), Some("blob"));
        assert_eq!(DataType::parse(""), Some(DataType::STRING));
        assert_eq!(DataType::parse("11"), None, "none is not a type to set");
        assert_eq!(DataType::parse("13"), None);
        assert_eq!(DataType::parse("integer"), None);
    }

    #[test]
    fn replies_are_typed() {
        let t = |s, n| from_wire(s, DataType(n)).kind.unwrap();
        assert_eq!(t("true", 3), Kind::BoolValue(true));
        assert_eq!(t("0", 3), Kind::BoolValue(false));
        assert_eq!(t("-12", 1), Kind::NumberValue(-12.0));
        assert_eq!(t("2.5", 9), Kind::NumberValue(2.5));
        assert_eq!(t("aGk=", 5), Kind::StringValue("aGk=".into()));
        // Beyond 2^53 a number would lose digits: it stays text.
        assert_eq!(
            t("18446744073709551615", 7),
            Kind::StringValue("18446744073709551615".into())
        );
        assert_eq!(
            t("9007199254740992", 7),
            Kind::NumberValue(9007199254740992.0)
        );
    }

    #[test]
    fn values_must_fit_their_type() {
        let w = |k, n| to_wire(&v(k), DataType(n));
        assert_eq!(w(Kind::BoolValue(true), 3), Ok("true".into()));
        assert_eq!(w(Kind::NumberValue(42.0), 2), Ok("42".into()));
        assert_eq!(w(Kind::StringValue("42".into()), 1), Ok("42".into()));
        assert_eq!(
            w(Kind::StringValue("18446744073709551615".into()), 7),
            Ok("18446744073709551615".into())
        );
        assert!(
            w(Kind::NumberValue(-1.0), 2)
                .unwrap_err()
                .contains("unsignedInt")
        );
        assert!(w(Kind::NumberValue(1.5), 1).unwrap_err().contains("whole"));
        assert!(w(Kind::NumberValue(256.0), 10).is_err());
        assert!(w(Kind::StringValue("yes".into()), 3).is_err());
        assert!(w(Kind::BoolValue(true), 0).unwrap_err().contains("boolean"));
        assert!(w(Kind::StringValue("not base64!".into()), 5).is_err());
        assert!(w(Kind::StringValue("tomorrow".into()), 4).is_err());
        assert_eq!(
            w(Kind::StringValue("2026-11-30T12:00:00Z".into()), 4),
            Ok("2026-11-30T12:00:00Z".into())
        );
        assert!(w(Kind::StringValue(String::new()), 0).is_err());
        assert!(to_wire(&Value { kind: None }, DataType(0)).is_err());
    }
}
