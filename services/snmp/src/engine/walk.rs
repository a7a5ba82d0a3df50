//! Walking a subtree: GETBULK with adaptive max-repetitions (halved on
//! tooBig), GETNEXT on v1, where GETBULK fails, or where an agent that has
//! answered stops answering large requests; stopping at the subtree's end
//! and refusing agents whose OIDs do not increase. An agent that never
//! answers costs one round of attempts, not more. A root with nothing
//! under it is read with a GET, as snmpwalk does (a leaf walks to itself).
//!
//! A serial walker leaves the agent idle while each reply travels and is
//! read. This one keeps up to the target's `max_in_flight` requests at the
//! agent: once a part of the tree has answered, the rest of it is split
//! off at the next sibling of the shallowest branch the answer lies in,
//! and the parts are walked side by side, each up to where the next one
//! starts. Their replies are released in OID order, so the stream is the
//! serial walk's, batch boundaries aside. The first timeout or tooBig makes
//! the rest of the walk serial.
use crate::engine::{
    Engine, Op,
    error::SnmpError,
    oid::Oid,
    target::{Target, Version},
    value::{Value, VarBind},
};
use futures::{Stream, StreamExt, stream::FuturesUnordered};
use std::sync::Arc;

pub fn walk(
    engine: Arc<Engine>,
    target: Target,
    root: Oid,
    max_repetitions: u32,
) -> impl Stream<Item = Result<Vec<VarBind>, SnmpError>> + Send {
    async_stream::try_stream! {
        let mut walk = Walk::new(&target, root.clone(), max_repetitions);
        // Once serial, a request takes the whole agent, as a serial call's do.
        let serial = Target { max_in_flight: 1, ..target.clone() };
        let mut pending = FuturesUnordered::new();
        loop {
            while let Some((id, op, from)) = walk.next_request(pending.len()) {
                let target = if walk.serial { &serial } else { &target };
                let engine = &engine;
                pending.push(async move {
                    (id, engine.request(target, op, &[(from, Value::Null)]).await)
                });
            }
            for batch in walk.ready() {
                yield batch;
            }
            let Some((id, reply)) = pending.next().await else {
                break;
            };
            walk.take(id, reply)?;
        }
        // Nothing under the root: it may be a leaf itself. As snmpwalk does,
        // GET it: its value, or the exception that says it is not there.
        if !walk.found && root.arcs().len() > 1 {
            match engine.request(&target, Op::Get, &[(root.clone(), Value::Null)]).await {
                Ok(varbinds) => yield varbinds,
                // v1 says noSuchName where v2 has exceptions: nothing there.
                Err(SnmpError::Status { status: "noSuchName", .. }) => {}
                Err(e) => Err(e)?,
            }
        }
    }
}

/// One part of the tree, walked on its own: the OIDs after `after` up to
/// and including `end` (the root's end when None).
struct Part {
    id: u64,
    after: Oid,
    end: Option<Oid>,
    /// `after` is an OID the agent returned (where a split may start).
    answered: bool,
    busy: bool,
    done: bool,
    /// Replies not yet released (an earlier part is still walking).
    batches: Vec<Vec<VarBind>>,
}

/// The state of a walk: its parts in OID order and how it asks.
struct Walk {
    root: Oid,
    parts: Vec<Part>,
    next_id: u64,
    bulk: bool,
    reps: u32,
    max_in_flight: usize,
    /// After a timeout or tooBig: one request at a time, no more splits.
    serial: bool,
    /// The agent has answered (anything, an error status too).
    answered: bool,
    /// Some OID under the root was found.
    found: bool,
    addr: std::net::SocketAddr,
}

impl Walk {
    fn new(target: &Target, root: Oid, max_repetitions: u32) -> Self {
        let max_in_flight = target.max_in_flight.clamp(1, Target::MAX_IN_FLIGHT) as usize;
        Self {
            parts: vec![Part {
                id: 0,
                after: root.walk_start(),
                end: None,
                answered: false,
                busy: false,
                done: false,
                batches: Vec::new(),
            }],
            root,
            next_id: 1,
            bulk: target.version != Version::V1,
            reps: max_repetitions.clamp(1, 1000),
            serial: max_in_flight == 1,
            max_in_flight,
            answered: false,
            found: false,
            addr: target.addr,
        }
    }

    fn op(&self) -> Op {
        if self.bulk {
            Op::GetBulk {
                non_repeaters: 0,
                max_repetitions: self.reps,
            }
        } else {
            Op::GetNext
        }
    }

    /// The next request to send with `in_flight` already out: a part
    /// waiting for its next request (the earliest first), else a new part
    /// split off one that has answered.
    fn next_request(&mut self, in_flight: usize) -> Option<(u64, Op, Oid)> {
        let limit = if self.serial { 1 } else { self.max_in_flight };
        if in_flight >= limit {
            return None;
        }
        let op = self.op();
        if let Some(part) = self.parts.iter_mut().find(|p| !p.done && !p.busy) {
            part.busy = true;
            return Some((part.id, op, part.after.clone()));
        }
        if self.serial {
            return None;
        }
        let at = self.split()?;
        let part = &mut self.parts[at];
        part.busy = true;
        Some((part.id, op, part.after.clone()))
    }

    /// Splits the part whose position lies in the shallowest branch that
    /// has a next sibling before the part's end: the new part takes the
    /// rest from that sibling on. Its index, or None when no part can be
    /// split.
    fn split(&mut self) -> Option<usize> {
        let depth = self.root.arcs().len();
        let (at, start) = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.answered && !p.done)
            .filter_map(|(i, p)| {
                let arcs = p.after.arcs();
                // The sibling after each branch from just under the root down to
                // the position's parent (never the position's own level: a
                // sibling there can be an instance itself).
                (depth + 1..arcs.len()).find_map(|d| {
                    let mut next = arcs[..d].to_vec();
                    next[d - 1] = next[d - 1].checked_add(1)?;
                    let next = Oid::try_from_arcs(&next)?;
                    p.end
                        .as_ref()
                        .is_none_or(|e| next < *e)
                        .then_some((d, i, next))
                })
            })
            // The shallowest split cuts off the most; among equals the last part.
            .min_by_key(|(d, i, _)| (*d, std::cmp::Reverse(*i)))
            .map(|(_, i, next)| (i, next))?;
        let end = self.parts[at].end.replace(start.clone());
        let id = self.next_id;
        self.next_id += 1;
        // The earlier part ends at `start` inclusive; the new one asks after it.
        self.parts.insert(
            at + 1,
            Part {
                id,
                after: start,
                end,
                answered: false,
                busy: false,
                done: false,
                batches: Vec::new(),
            },
        );
        Some(at + 1)
    }

    /// What may be streamed now: the first part's replies, and those of the
    /// parts after it once every part before them is done.
    fn ready(&mut self) -> Vec<Vec<VarBind>> {
        let mut out = Vec::new();
        while let Some(first) = self.parts.first_mut() {
            out.append(&mut first.batches);
            if !first.done {
                break;
            }
            self.parts.remove(0);
        }
        out
    }

    /// A reply for part `id`.
    fn take(&mut self, id: u64, reply: Result<Vec<VarBind>, SnmpError>) -> Result<(), SnmpError> {
        // Any reply, an error status too, shows the agent is there.
        self.answered |= !matches!(reply, Err(SnmpError::Timeout { .. }));
        let Some(part) = self.parts.iter_mut().find(|p| p.id == id) else {
            return Ok(());
        };
        part.busy = false;
        let varbinds = match reply {
            Ok(v) => v,
            Err(SnmpError::Status {
                status: "tooBig", ..
            }) if self.bulk => {
                if self.reps == 1 {
                    self.bulk = false;
                }
                self.reps = (self.reps / 2).max(1);
                self.serial = true;
                return Ok(());
            }
            Err(SnmpError::Timeout { .. }) if self.bulk && self.answered => {
                // It answered before: a large reply, or several at once, may
                // be what the agent or the path drops. One variable, one
                // request at a time.
                tracing::debug!(addr = %self.addr, "getbulk timed out mid-walk; walking serially with getnext");
                self.bulk = false;
                self.serial = true;
                return Ok(());
            }
            Err(SnmpError::Status { status, .. }) if self.bulk && status != "noSuchName" => {
                tracing::debug!(addr = %self.addr, status, "getbulk failed; walking with getnext");
                self.bulk = false;
                return Ok(());
            }
            // v1 ends a walk with noSuchName past the last variable.
            Err(SnmpError::Status {
                status: "noSuchName",
                ..
            }) if !self.bulk => {
                part.done = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let mut batch = Vec::with_capacity(varbinds.len());
        part.done = varbinds.is_empty();
        for vb in varbinds {
            if vb.value == Value::EndOfMibView
                || !vb.oid.starts_with(&self.root)
                || part.end.as_ref().is_some_and(|e| vb.oid > *e)
            {
                part.done = true;
                break;
            }
            let before = batch.last().map_or(&part.after, |v: &VarBind| &v.oid);
            if vb.oid <= *before {
                return Err(SnmpError::Protocol {
                    op: "walk",
                    addr: self.addr,
                    reason: format!(
                        "the agent returned {} after {before}: OIDs must increase",
                        vb.oid
                    ),
                });
            }
            batch.push(vb);
        }
        if let Some(last) = batch.last() {
            part.after = last.oid.clone();
            part.answered = true;
            self.found = true;
            part.batches.push(batch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(s: &str) -> Oid {
        s.parse().unwrap()
    }

    fn walk(max_in_flight: u32) -> Walk {
        let mut target = Target::community(([127, 0, 0, 1], 161).into(), Version::V2c, "public");
        target.max_in_flight = max_in_flight;
        Walk::new(&target, oid("1.3.6.1"), 25)
    }

    fn reply(oids: &[&str]) -> Result<Vec<VarBind>, SnmpError> {
        Ok(oids
            .iter()
            .map(|o| VarBind {
                oid: oid(o),
                value: Value::Integer(1),
            })
            .collect())
    }

    fn oids(batches: &[Vec<VarBind>]) -> Vec<String> {
        batches
            .iter()
            .flatten()
            .map(|v| v.oid.to_string())
            .collect()
    }

    #[test]
    fn parts_split_at_the_shallowest_sibling_and_stream_in_order() {
        let mut w = walk(3);
        let (first, _, from) = w.next_request(0).unwrap();
        assert_eq!(from, oid("1.3.6.1"));
        // No split before the first part has answered.
        assert!(w.next_request(1).is_none());
        w.take(first, reply(&["1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.2.0"]))
            .unwrap();
        // Split after 1.3.6.1.2 (the shallowest branch under the root).
        let (second, _, from) = w.next_request(0).unwrap();
        assert_eq!(from, oid("1.3.6.1.2.1.1.2.0"), "the first part goes on");
        let (third, _, from) = w.next_request(1).unwrap();
        assert_eq!(from, oid("1.3.6.1.3"));
        assert_eq!(w.parts[0].end, Some(oid("1.3.6.1.3")));
        // The first part splits again, a level deeper (1.3.6.1.3 is taken).
        let (fourth, _, from) = w.next_request(2).unwrap();
        assert_eq!(from, oid("1.3.6.1.2.2"));
        assert!(w.next_request(3).is_none(), "three in flight");
        w.take(fourth, reply(&["1.3.6.1.4.1.1.0"])).unwrap();
        // The later part answers first: held back until the first is done;
        // the first part's reply beyond its end is dropped.
        w.take(third, reply(&["1.3.6.1.4.1.1.0", "1.3.6.1.6.3.1.0"]))
            .unwrap();
        assert_eq!(oids(&w.ready()), ["1.3.6.1.2.1.1.1.0", "1.3.6.1.2.1.1.2.0"]);
        w.take(second, reply(&["1.3.6.1.2.1.2.1.0", "1.3.6.1.4.1.1.0"]))
            .unwrap();
        assert_eq!(
            oids(&w.ready()),
            ["1.3.6.1.2.1.2.1.0", "1.3.6.1.4.1.1.0", "1.3.6.1.6.3.1.0"]
        );
        assert_eq!(w.parts.len(), 1);
    }

    #[test]
    fn one_in_flight_is_the_serial_walk_and_a_timeout_makes_it_serial() {
        let mut w = walk(1);
        let (id, _, _) = w.next_request(0).unwrap();
        w.take(id, reply(&["1.3.6.1.2.1.1.1.0"])).unwrap();
        assert!(w.next_request(1).is_none());
        let (id, _, _) = w.next_request(0).unwrap();
        w.take(id, reply(&["1.3.6.1.2.1.1.2.0"])).unwrap();
        assert_eq!(w.parts.len(), 1, "never split");

        let mut w = walk(3);
        let (id, _, _) = w.next_request(0).unwrap();
        w.take(id, reply(&["1.3.6.1.2.1.1.1.0"])).unwrap();
        let (a, _, _) = w.next_request(0).unwrap();
        let (_b, _, _) = w.next_request(1).unwrap();
        let timeout = SnmpError::Timeout {
            op: "getbulk",
            addr: w.addr,
            attempts: 2,
            waited: std::time::Duration::from_secs(3),
        };
        w.take(a, Err(timeout)).unwrap();
        assert!(w.serial && !w.bulk);
        assert!(w.next_request(1).is_none(), "one at a time from now on");

        // tooBig: fewer repetitions, one at a time.
        let mut w = walk(3);
        let (id, _, _) = w.next_request(0).unwrap();
        let too_big = SnmpError::Status {
            op: "getbulk",
            addr: w.addr,
            status: "tooBig",
            index: 0,
            oid: None,
        };
        w.take(id, Err(too_big)).unwrap();
        assert!(w.serial && w.bulk && w.reps == 12);
    }

    #[test]
    fn oids_that_do_not_increase_within_a_part_are_refused() {
        let mut w = walk(3);
        let (id, _, _) = w.next_request(0).unwrap();
        let e = w
            .take(id, reply(&["1.3.6.1.2.1.1.2.0", "1.3.6.1.2.1.1.1.0"]))
            .unwrap_err();
        assert!(matches!(e, SnmpError::Protocol { .. }), "{e}");
    }
}
