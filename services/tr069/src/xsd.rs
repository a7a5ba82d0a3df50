//! TR-069's value types (xsd, TR-106 section 3.2): each value checked
//! against its type before a set is sent, so a wrong value is a 400 naming
//! the parameter, not a CPE fault minutes later.
use base64::Engine;

/// The xsd types a SetParameterValues carries, by their full name.
const TYPES: [&str; 9] = [
    "xsd:string",
    "xsd:int",
    "xsd:unsignedInt",
    "xsd:long",
    "xsd:unsignedLong",
    "xsd:boolean",
    "xsd:dateTime",
    "xsd:base64",
    "xsd:hexBinary",
];

/// A type as given (`int`, `xsd:int`, or empty for xsd:string) by its full
/// name; None for a type TR-069 does not have.
pub fn full_name(given: &str) -> Option<&'static str> {
    if given.is_empty() {
        return Some("xsd:string");
    }
    let bare = given.strip_prefix("xsd:").unwrap_or(given);
    TYPES.iter().copied().find(|t| t[4..] == *bare)
}

/// Whether `value` is a valid lexical form of `xsd_type` (a full name);
/// Err says why not.
pub fn check(value: &str, xsd_type: &str) -> Result<(), String> {
    let number = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{value:?} is not {what}"))
        }
    };
    match xsd_type {
        "xsd:string" => Ok(()),
        "xsd:int" => number(value.parse::<i32>().is_ok(), "an int (32 bits, signed)"),
        "xsd:unsignedInt" => number(
            value.parse::<u32>().is_ok() && !value.starts_with('+'),
            "an unsignedInt (0 to 4294967295)",
        ),
        "xsd:long" => number(value.parse::<i64>().is_ok(), "a long (64 bits, signed)"),
        "xsd:unsignedLong" => number(
            value.parse::<u64>().is_ok() && !value.starts_with('+'),
            "an unsignedLong (64 bits, unsigned)",
        ),
        "xsd:boolean" => number(
            matches!(value, "true" | "false" | "1" | "0"),
            "a boolean (true, false, 1 or 0)",
        ),
        "xsd:dateTime" => number(
            chrono::DateTime::parse_from_rfc3339(value).is_ok()
                || chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M:%S%.f").is_ok(),
            "a dateTime like 2026-01-31T12:00:00Z",
        ),
        "xsd:base64" => number(
            base64::engine::general_purpose::STANDARD
                .decode(value)
                .is_ok(),
            "base64",
        ),
        "xsd:hexBinary" => number(
            value.len().is_multiple_of(2) && value.bytes().all(|b| b.is_ascii_hexdigit()),
            "hexBinary (pairs of hex digits)",
        ),
        other => Err(format!("{other} is not a TR-069 type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_named_with_or_without_their_prefix() {
        assert_eq!(full_name(""), Some("xsd:string"));
        assert_eq!(full_name("unsignedInt"), Some("xsd:unsignedInt"));
        assert_eq!(full_name("xsd:boolean"), Some("xsd:boolean"));
        assert_eq!(full_name("float"), None);
        assert_eq!(full_name("xsd:"), None);
    }

    #[test]
    fn values_are_checked_against_their_type() {
        for (value, t) in [
            ("-5", "xsd:int"),
            ("4294967295", "xsd:unsignedInt"),
            ("18446744073709551615", "xsd:unsignedLong"),
            ("true", "xsd:boolean"),
            ("0", "xsd:boolean"),
            ("2026-01-31T12:00:00Z", "xsd:dateTime"),
            ("2026-01-31T12:00:00", "xsd:dateTime"),
            ("0001-01-01T00:00:00Z", "xsd:dateTime"),
            ("aGVsbG8=", "xsd:base64"),
            ("00ff", "xsd:hexBinary"),
            ("anything", "xsd:string"),
        ] {
            assert_eq!(check(value, t), Ok(()), "{value} {t}");
        }
        for (value, t) in [
            ("2147483648", "xsd:int"),
            ("-1", "xsd:unsignedInt"),
            ("yes", "xsd:boolean"),
            ("31/01/2026", "xsd:dateTime"),
            ("not base64!", "xsd:base64"),
            ("0g", "xsd:hexBinary"),
            ("1.5", "xsd:long"),
        ] {
            assert!(check(value, t).is_err(), "{value} {t}");
        }
    }
}
