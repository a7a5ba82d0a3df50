//! What can go wrong talking to an agent, by kind; the service maps each
//! kind once to the kit's error codes.
use crate::engine::oid::Oid;
use std::{net::SocketAddr, time::Duration};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnmpError {
    #[error("snmp {op} timed out after {attempts} attempts to {addr} ({waited:?} in all)")]
    Timeout {
        op: &'static str,
        addr: SocketAddr,
        attempts: u32,
        waited: Duration,
    },
    #[error("snmp {op} could not reach {addr}: {reason}")]
    Unreachable {
        op: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    /// A USM report or a reply that fails its checks: wrong user, digest,
    /// privacy password or security level.
    #[error("snmp {op} to {addr} was refused: {reason}")]
    Auth {
        op: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    /// The agent's error-status, with the 1-based index of the varbind at fault.
    #[error("snmp {op} on {addr} failed: {status} at varbind {index}{}", oid.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
    Status {
        op: &'static str,
        addr: SocketAddr,
        status: &'static str,
        index: u32,
        oid: Option<Oid>,
    },
    /// The request does not fit in one UDP datagram: nothing was sent.
    #[error(
        "snmp {op} to {addr}: the request is {bytes} bytes, more than one UDP datagram holds ({max}); send fewer or shorter variables"
    )]
    TooLarge {
        op: &'static str,
        addr: SocketAddr,
        bytes: usize,
        max: usize,
    },
    /// The agent answered something we cannot use (non-increasing OIDs in a
    /// walk, undecodable replies, a report we do not know).
    #[error("snmp {op} on {addr}: {reason}")]
    Protocol {
        op: &'static str,
        addr: SocketAddr,
        reason: String,
    },
}

/// RFC 3416 error-status names.
pub fn status_name(status: u32) -> &'static str {
    const NAMES: [&str; 19] = [
        "noError",
        "tooBig",
        "noSuchName",
        "badValue",
        "readOnly",
        "genErr",
        "noAccess",
        "wrongType",
        "wrongLength",
        "wrongEncoding",
        "wrongValue",
        "noCreation",
        "inconsistentValue",
        "resourceUnavailable",
        "commitFailed",
        "undoFailed",
        "authorizationError",
        "notWritable",
        "inconsistentName",
    ];
    NAMES
        .get(status as usize)
        .copied()
        .unwrap_or("unknownError")
}
