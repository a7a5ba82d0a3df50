//! Object identifiers as SNMP orders them (arc by arc), parsed from the
//! dotted text users send and read from the wire.
use std::{fmt, str::FromStr};

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(Vec<u32>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadOid(pub String);

impl std::error::Error for BadOid {}

impl fmt::Display for BadOid {
    /// Names the input, but only its start: errors do not echo a megabyte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        let text = &self.0;
        if text.chars().count() <= SHOWN {
            write!(f, "{text:?}")?;
        } else {
            let start: String = text.chars().take(SHOWN).collect();
            write!(f, "{start:?}... ({} characters)", text.chars().count())?;
        }
        f.write_str(" is not a numeric OID like 1.3.6.1.2.1.1.1.0")
    }
}

impl Oid {
    pub fn arcs(&self) -> &[u32] {
        &self.0
    }

    pub fn starts_with(&self, prefix: &Oid) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The BER contents octets (without tag and length).
    pub fn ber_contents(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 4);
        let (first, rest) = match self.0.as_slice() {
            [a, b, rest @ ..] => (a * 40 + b, rest),
            _ => unreachable!("an Oid has at least two arcs (checked when built)"),
        };
        for arc in std::iter::once(first).chain(rest.iter().copied()) {
            let mut groups = [0u8; 5];
            let mut n = 0;
            let mut v = arc;
            loop {
                groups[n] = (v & 0x7f) as u8;
                n += 1;
                v >>= 7;
                if v == 0 {
                    break;
                }
            }
            for i in (0..n).rev() {
                out.push(groups[i] | if i > 0 { 0x80 } else { 0 });
            }
        }
        out
    }

    fn checked(arcs: Vec<u32>) -> Option<Self> {
        // The first two arcs travel as one number, a * 40 + b, in 32 bits.
        let ok = arcs.len() >= 2
            && match arcs[0] {
                0 | 1 => arcs[1] < 40,
                2 => arcs[1] <= u32::MAX - 80,
                _ => false,
            };
        ok.then_some(Self(arcs))
    }

    /// An OID from its arcs (None where no OID has them).
    pub fn try_from_arcs(arcs: &[u32]) -> Option<Self> {
        Self::checked(arcs.to_vec())
    }

    /// The root of a walk: an OID, or a top arc alone (`1`, `.1`, `iso`),
    /// which walks everything under it.
    pub fn walk_root(text: &str) -> Result<Self, BadOid> {
        let top = text.trim().trim_start_matches('.');
        match top {
            "iso" | "1" => Ok(Self(vec![1])),
            "0" => Ok(Self(vec![0])),
            "2" => Ok(Self(vec![2])),
            _ => text.parse(),
        }
    }

    /// Where a walk of this root starts asking: the root itself, or under a
    /// top arc alone its `.0` (one arc has no encoding of its own).
    pub fn walk_start(&self) -> Self {
        match self.0.as_slice() {
            [top] => Self(vec![*top, 0]),
            _ => self.clone(),
        }
    }
}

impl FromStr for Oid {
    type Err = BadOid;
    fn from_str(s: &str) -> Result<Self, BadOid> {
        let bad = || BadOid(s.to_owned());
        let text = s.trim().strip_prefix('.').unwrap_or(s.trim());
        if text.is_empty() || text.len() > 1408 {
            return Err(bad());
        }
        let arcs = text
            .split('.')
            .map(|a| {
                if a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                a.parse::<u32>().ok()
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        if arcs.len() > 128 {
            return Err(bad());
        }
        Self::checked(arcs).ok_or_else(bad)
    }
}

impl TryFrom<&snmp2::Oid<'_>> for Oid {
    type Error = BadOid;
    /// From the BER contents (asn1-rs reads `0.0`, the null OID agents
    /// send, as a single arc).
    fn try_from(oid: &snmp2::Oid<'_>) -> Result<Self, BadOid> {
        let bytes = oid.as_bytes();
        let bad = || BadOid(hex::encode(bytes));
        let mut subids = Vec::with_capacity(bytes.len() + 1);
        let mut v: u64 = 0;
        for (i, b) in bytes.iter().enumerate() {
            v = (v << 7) | u64::from(b & 0x7f);
            if v > u64::from(u32::MAX) + 80 {
                return Err(bad());
            }
            if b & 0x80 == 0 {
                subids.push(v);
                v = 0;
            } else if i + 1 == bytes.len() {
                return Err(bad());
            }
        }
        let (&first, rest) = subids.split_first().ok_or_else(bad)?;
        let (a, b) = match first {
            0..40 => (0, first),
            40..80 => (1, first - 40),
            _ => (2, first - 80),
        };
        let arcs = [a, b]
            .into_iter()
            .chain(rest.iter().copied())
            .map(|a| u32::try_from(a).ok())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Self::checked(arcs).ok_or_else(bad)
    }
}

impl fmt::Display for Oid {
    /// Dotted decimal, built in one buffer: every OID of a walk is printed,
    /// and the formatter's machinery per arc was a profile's top entry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = Vec::with_capacity(self.0.len() * 4);
        let mut digits = [0u8; 10];
        for (i, &arc) in self.0.iter().enumerate() {
            if i > 0 {
                text.push(b'.');
            }
            let (mut n, mut at) = (arc, digits.len());
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            text.extend_from_slice(&digits[at..]);
        }
        f.write_str(std::str::from_utf8(&text).expect("ASCII digits and dots"))
    }
}

impl fmt::Debug for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_bad_oid_is_not_echoed_in_full() {
        let long = format!("1.3.{}x", "6.".repeat(10_000));
        let message = long.parse::<Oid>().unwrap_err().to_string();
        assert!(message.len() < 200, "{message}");
        assert!(message.contains("20005 characters"), "{message}");
    }

    #[test]
    fn parses_and_prints_dotted_oids() {
        let oid: Oid = ".1.3.6.1.2.1.1.1.0".parse().unwrap();
        assert_eq!(oid.to_string(), "1.3.6.1.2.1.1.1.0");
        // The largest second arc under 2 that a * 40 + b still fits.
        assert!("2.4294967215".parse::<Oid>().is_ok());
        assert_eq!(
            Oid::walk_root("iso").unwrap().walk_start().to_string(),
            "1.0"
        );
        assert_eq!(Oid::walk_root(".1").unwrap().arcs(), [1]);
        for bad in [
            "",
            "1",
            "1..3",
            "1.3.x",
            "3.1",
            "1.40",
            "1.3.4294967296",
            "2.4294967216",
            "-1.3",
        ] {
            assert!(bad.parse::<Oid>().is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn encodes_contents_as_ber() {
        let oid: Oid = "1.3.6.1.4.1.2680.1.2.7.3.2.0".parse().unwrap();
        assert_eq!(
            hex::encode(oid.ber_contents()),
            "2b060104019478010207030200"
        );
        let sys: Oid = "1.3.6.1.2.1.1.1.0".parse().unwrap();
        let raw = sys.ber_contents();
        let parsed = snmp2::Oid::from(&[1u64, 3, 6, 1, 2, 1, 1, 1, 0][..]).unwrap();
        assert_eq!(raw, parsed.as_bytes());
        assert_eq!(Oid::try_from(&parsed).unwrap(), sys);
        let null = snmp2::Oid::new(std::borrow::Cow::Borrowed(&[0u8]));
        assert_eq!(Oid::try_from(&null).unwrap().to_string(), "0.0");
    }

    #[test]
    fn orders_arc_by_arc() {
        let a: Oid = "1.3.6.1.2.1.2".parse().unwrap();
        let b: Oid = "1.3.6.1.2.1.10".parse().unwrap();
        assert!(a < b);
        assert!(b.starts_with(&"1.3.6.1".parse().unwrap()));
    }
}
