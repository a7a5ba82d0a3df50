//! The BER snmp2 does not expose: requests we build ourselves (v1/v2c
//! messages, v3 scoped PDUs before snmp2 signs and encrypts them, the
//! discovery probe, replies to informs), and the few header fields we read
//! before deciding who parses a datagram.
use crate::engine::{oid::Oid, value::Value};
use snmp2::{AsnReader, asn1, snmp};

pub const MAX_MESSAGE: i64 = 65_507;

pub fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push(0x80 | (bytes.len() - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

pub fn tlv_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    push_len(out, len);
}

pub fn tlv(out: &mut Vec<u8>, tag: u8, contents: &[u8]) {
    tlv_header(out, tag, contents.len());
    out.extend_from_slice(contents);
}

/// A constructed value whose contents `f` writes.
pub fn nested(out: &mut Vec<u8>, tag: u8, f: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    f(&mut inner);
    tlv(out, tag, &inner);
}

pub fn int(out: &mut Vec<u8>, tag: u8, n: i64) {
    let bytes = n.to_be_bytes();
    let mut start = 0;
    // Shortest two's complement: drop a leading byte that only repeats the sign.
    while start < 7
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    tlv(out, tag, &bytes[start..]);
}

/// Unsigned application types (Counter32, Gauge32, TimeTicks, Counter64):
/// a leading zero byte where the top bit is set.
pub fn uint(out: &mut Vec<u8>, tag: u8, n: u64) {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(7);
    let mut contents = Vec::with_capacity(9);
    if bytes[skip] & 0x80 != 0 {
        contents.push(0);
    }
    contents.extend_from_slice(&bytes[skip..]);
    tlv(out, tag, &contents);
}

pub fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Integer(n) => int(out, asn1::TYPE_INTEGER, *n),
        Value::OctetString(b) => tlv(out, asn1::TYPE_OCTETSTRING, b),
        Value::ObjectIdentifier(o) => tlv(out, asn1::TYPE_OBJECTIDENTIFIER, &o.ber_contents()),
        Value::IpAddress(ip) => tlv(out, snmp::TYPE_IPADDRESS, ip),
        Value::Counter32(n) => uint(out, snmp::TYPE_COUNTER32, (*n).into()),
        Value::Gauge32(n) => uint(out, snmp::TYPE_GAUGE32, (*n).into()),
        Value::TimeTicks(n) => uint(out, snmp::TYPE_TIMETICKS, (*n).into()),
        Value::Opaque(b) => tlv(out, snmp::TYPE_OPAQUE, b),
        Value::Counter64(n) => uint(out, snmp::TYPE_COUNTER64, *n),
        Value::Null => tlv(out, asn1::TYPE_NULL, &[]),
        Value::NoSuchObject => tlv(out, snmp::SNMP_NOSUCHOBJECT, &[]),
        Value::NoSuchInstance => tlv(out, snmp::SNMP_NOSUCHINSTANCE, &[]),
        Value::EndOfMibView => tlv(out, snmp::SNMP_ENDOFMIBVIEW, &[]),
    }
}

/// A PDU: request id, the two integers (error status and index, or
/// non-repeaters and max-repetitions for GETBULK), and the varbinds.
pub fn pdu(out: &mut Vec<u8>, tag: u8, req_id: i32, a: i64, b: i64, varbinds: &[(Oid, Value)]) {
    nested(out, tag, |p| {
        int(p, asn1::TYPE_INTEGER, req_id.into());
        int(p, asn1::TYPE_INTEGER, a);
        int(p, asn1::TYPE_INTEGER, b);
        nested(p, asn1::TYPE_SEQUENCE, |list| {
            for (oid, v) in varbinds {
                nested(list, asn1::TYPE_SEQUENCE, |vb| {
                    tlv(vb, asn1::TYPE_OBJECTIDENTIFIER, &oid.ber_contents());
                    value(vb, v);
                });
            }
        });
    });
}

/// A v1 or v2c message around an encoded PDU.
pub fn community_message(version: i64, community: &[u8], pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pdu.len() + community.len() + 16);
    nested(&mut out, asn1::TYPE_SEQUENCE, |m| {
        int(m, asn1::TYPE_INTEGER, version);
        tlv(m, asn1::TYPE_OCTETSTRING, community);
        m.extend_from_slice(pdu);
    });
    out
}

/// USM security parameters as they travel in the clear.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsmHeader {
    pub engine_id: Vec<u8>,
    pub boots: i64,
    pub time: i64,
    pub username: Vec<u8>,
}

/// A scoped PDU: context engine id, context name and an encoded PDU.
pub fn scoped_pdu(context_engine: &[u8], context_name: &[u8], pdu: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pdu.len() + context_engine.len() + context_name.len() + 8);
    nested(&mut out, asn1::TYPE_SEQUENCE, |s| {
        tlv(s, asn1::TYPE_OCTETSTRING, context_engine);
        tlv(s, asn1::TYPE_OCTETSTRING, context_name);
        s.extend_from_slice(pdu);
    });
    out
}

/// A v3 message around `data` (a scoped PDU, or its ciphertext as an OCTET
/// STRING), with `auth_len` zero bytes as authentication parameters; also
/// the offset of those bytes, where the digest goes.
pub fn v3_message(
    msg_id: i32,
    flags: u8,
    usm: &UsmHeader,
    auth_len: usize,
    priv_params: &[u8],
    data: &[u8],
) -> (Vec<u8>, usize) {
    let mut params = Vec::new();
    tlv(&mut params, asn1::TYPE_OCTETSTRING, &usm.engine_id);
    int(&mut params, asn1::TYPE_INTEGER, usm.boots);
    int(&mut params, asn1::TYPE_INTEGER, usm.time);
    tlv(&mut params, asn1::TYPE_OCTETSTRING, &usm.username);
    tlv_header(&mut params, asn1::TYPE_OCTETSTRING, auth_len);
    let mut auth_at = params.len();
    params.resize(auth_at + auth_len, 0);
    tlv(&mut params, asn1::TYPE_OCTETSTRING, priv_params);
    let mut sequence = Vec::with_capacity(params.len() + 4);
    tlv_header(&mut sequence, asn1::TYPE_SEQUENCE, params.len());
    auth_at += sequence.len();
    sequence.extend_from_slice(&params);

    let mut body = Vec::with_capacity(sequence.len() + data.len() + 32);
    int(&mut body, asn1::TYPE_INTEGER, 3);
    nested(&mut body, asn1::TYPE_SEQUENCE, |g| {
        int(g, asn1::TYPE_INTEGER, msg_id.into());
        int(g, asn1::TYPE_INTEGER, MAX_MESSAGE);
        tlv(g, asn1::TYPE_OCTETSTRING, &[flags]);
        int(g, asn1::TYPE_INTEGER, 3);
    });
    tlv_header(&mut body, asn1::TYPE_OCTETSTRING, sequence.len());
    auth_at += body.len();
    body.extend_from_slice(&sequence);
    body.extend_from_slice(data);
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv_header(&mut out, asn1::TYPE_SEQUENCE, body.len());
    auth_at += out.len();
    out.extend_from_slice(&body);
    (out, auth_at)
}

/// A v3 message as it arrives, before anyone checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3In<'a> {
    pub msg_id: i32,
    pub flags: u8,
    pub usm: UsmHeader,
    pub auth_params: &'a [u8],
    /// Where `auth_params` sit in the message.
    pub auth_at: usize,
    pub priv_params: &'a [u8],
    /// The scoped PDU (a whole SEQUENCE), or its ciphertext when the
    /// privacy flag is set.
    pub data: &'a [u8],
}

/// What a datagram says of itself before anyone checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header<'a> {
    /// v1 or v2c: the request id.
    Community {
        version: i64,
        req_id: i32,
    },
    V3(V3In<'a>),
}

/// Where `part`, a slice of `whole`, starts in it.
fn offset(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

pub fn header(bytes: &[u8]) -> Option<Header<'_>> {
    let message = AsnReader::from_bytes(bytes)
        .read_raw(asn1::TYPE_SEQUENCE)
        .ok()?;
    let mut rdr = AsnReader::from_bytes(message);
    let version = rdr.read_asn_integer().ok()?;
    if version != 3 {
        let _community = rdr.read_asn_octetstring().ok()?;
        let ident = rdr.peek_byte().ok()?;
        if ident == snmp::MSG_TRAP_V1 {
            return Some(Header::Community { version, req_id: 0 });
        }
        let mut pdu = AsnReader::from_bytes(rdr.read_raw(ident).ok()?);
        let req_id = i32::try_from(pdu.read_asn_integer().ok()?).ok()?;
        return Some(Header::Community { version, req_id });
    }
    let mut global = AsnReader::from_bytes(rdr.read_raw(asn1::TYPE_SEQUENCE).ok()?);
    let msg_id = i32::try_from(global.read_asn_integer().ok()?).ok()?;
    let _max = global.read_asn_integer().ok()?;
    let flags = *global.read_asn_octetstring().ok()?.first()?;
    if global.read_asn_integer().ok()? != 3 {
        return None; // not USM
    }
    let params = rdr.read_asn_octetstring().ok()?;
    let mut usm = AsnReader::from_bytes(
        AsnReader::from_bytes(params)
            .read_raw(asn1::TYPE_SEQUENCE)
            .ok()?,
    );
    let header = UsmHeader {
        engine_id: usm.read_asn_octetstring().ok()?.to_vec(),
        boots: usm.read_asn_integer().ok()?,
        time: usm.read_asn_integer().ok()?,
        username: usm.read_asn_octetstring().ok()?.to_vec(),
    };
    let auth_params = usm.read_asn_octetstring().ok()?;
    let priv_params = usm.read_asn_octetstring().ok()?;
    let data = if flags & snmp::V3_MSG_FLAGS_PRIVACY != 0 {
        rdr.read_asn_octetstring().ok()?
    } else {
        let rest = &message[message.len() - rdr.bytes_left()..];
        rdr.read_raw(asn1::TYPE_SEQUENCE).ok()?;
        &rest[..rest.len() - rdr.bytes_left()]
    };
    Some(Header::V3(V3In {
        msg_id,
        flags,
        usm: header,
        auth_params,
        auth_at: offset(bytes, auth_params),
        priv_params,
        data,
    }))
}

/// A plaintext scoped PDU taken apart.
pub struct Scoped<'a> {
    pub context_engine: &'a [u8],
    pub context_name: &'a [u8],
    /// The PDU inside a v2c message, for snmp2 to parse (it reads PDUs only
    /// inside messages).
    pub message: Vec<u8>,
}

pub fn scoped(scoped: &[u8]) -> Option<Scoped<'_>> {
    let contents = AsnReader::from_bytes(scoped)
        .read_raw(asn1::TYPE_SEQUENCE)
        .ok()?;
    let mut rdr = AsnReader::from_bytes(contents);
    let context_engine = rdr.read_asn_octetstring().ok()?;
    let context_name = rdr.read_asn_octetstring().ok()?;
    let pdu = &contents[contents.len() - rdr.bytes_left()..];
    let tag = rdr.peek_byte().ok()?;
    rdr.read_raw(tag).ok()?;
    let pdu = &pdu[..pdu.len() - rdr.bytes_left()];
    Some(Scoped {
        context_engine,
        context_name,
        message: community_message(1, b"", pdu),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_shortest_twos_complement() {
        let enc = |n| {
            let mut out = Vec::new();
            int(&mut out, 2, n);
            hex::encode(out)
        };
        assert_eq!(enc(0), "020100");
        assert_eq!(enc(127), "02017f");
        assert_eq!(enc(128), "02020080");
        assert_eq!(enc(-1), "0201ff");
        assert_eq!(enc(-129), "0202ff7f");
        let mut out = Vec::new();
        uint(&mut out, 0x46, u64::MAX);
        assert_eq!(hex::encode(out), "460900ffffffffffffffff");
        let mut out = Vec::new();
        uint(&mut out, 0x41, 0x8000_0000);
        assert_eq!(hex::encode(out), "41050080000000");
    }

    #[test]
    fn snmp2_reads_back_a_v2c_request() {
        let oid: Oid = "1.3.6.1.2.1.1.5.0".parse().unwrap();
        let mut p = Vec::new();
        pdu(
            &mut p,
            snmp::MSG_SET,
            42,
            0,
            0,
            &[(oid.clone(), Value::OctetString(b"lab".to_vec()))],
        );
        let msg = community_message(1, b"private", &p);
        let parsed = snmp2::Pdu::from_bytes(&msg).unwrap();
        assert_eq!(parsed.req_id, 42);
        assert_eq!(parsed.community, b"private");
        let (name, v) = parsed.varbinds.clone().next().unwrap();
        assert_eq!(Oid::try_from(&name).unwrap(), oid);
        assert_eq!(
            Value::from_wire(&v),
            Some(Value::OctetString(b"lab".to_vec()))
        );
        assert_eq!(
            header(&msg),
            Some(Header::Community {
                version: 1,
                req_id: 42
            })
        );
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let mut out = Vec::new();
        tlv(&mut out, 4, &[7u8; 300]);
        assert_eq!(&out[..4], &[4, 0x82, 0x01, 0x2c]);
        let mut out = Vec::new();
        push_len(&mut out, 200);
        assert_eq!(out, [0x81, 200]);
    }
}
