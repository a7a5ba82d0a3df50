//! Walking a subtree: GETBULK with adaptive max-repetitions (halved on
//! tooBig), GETNEXT on v1, where GETBULK fails, or where an agent that has
//! answered stops answering large requests; stopping at the subtree's end
//! and refusing agents whose OIDs do not increase. An agent that never
//! answers costs one round of attempts, not more. A root with nothing
//! under it is read with a GET, as snmpwalk does (a leaf walks to itself).
use crate::engine::{
    Engine, Op,
    error::SnmpError,
    oid::Oid,
    target::{Target, Version},
    value::{Value, VarBind},
};
use futures::Stream;
use std::sync::Arc;

pub fn walk(
    engine: Arc<Engine>,
    target: Target,
    root: Oid,
    max_repetitions: u32,
) -> impl Stream<Item = Result<Vec<VarBind>, SnmpError>> + Send {
    async_stream::try_stream! {
        let mut bulk = target.version != Version::V1;
        let mut reps = max_repetitions.clamp(1, 1000);
        let mut answered = false;
        let mut found = false;
        let mut last: Option<Oid> = None;
        loop {
            let from = last.clone().unwrap_or_else(|| root.walk_start());
            let op = if bulk {
                Op::GetBulk { non_repeaters: 0, max_repetitions: reps }
            } else {
                Op::GetNext
            };
            let reply = engine.request(&target, op, &[(from, Value::Null)]).await;
            // Any reply, an error status too, shows the agent is there.
            answered |= !matches!(reply, Err(SnmpError::Timeout { .. }));
            let varbinds = match reply {
                Ok(v) => v,
                Err(SnmpError::Status { status: "tooBig", .. }) if bulk => {
                    if reps == 1 {
                        bulk = false;
                    }
                    reps = (reps / 2).max(1);
                    continue;
                }
                Err(SnmpError::Timeout { .. }) if bulk && answered => {
                    // It answered before: a large reply may be what the
                    // agent or the path drops. One variable at a time.
                    tracing::debug!(addr = %target.addr, "getbulk timed out mid-walk; walking with getnext");
                    bulk = false;
                    continue;
                }
                Err(SnmpError::Status { status, .. }) if bulk && status != "noSuchName" => {
                    tracing::debug!(addr = %target.addr, status, "getbulk failed; walking with getnext");
                    bulk = false;
                    continue;
                }
                // v1 ends a walk with noSuchName past the last variable.
                Err(SnmpError::Status { status: "noSuchName", .. }) if !bulk => break,
                Err(e) => Err(e)?,
            };
            let mut batch = Vec::with_capacity(varbinds.len());
            let mut done = varbinds.is_empty();
            for vb in varbinds {
                if vb.value == Value::EndOfMibView || !vb.oid.starts_with(&root) {
                    done = true;
                    break;
                }
                if let Some(prev) = &last
                    && vb.oid <= *prev
                {
                        Err(SnmpError::Protocol {
                            op: "walk",
                            addr: target.addr,
                            reason: format!("the agent returned {} after {prev}: OIDs must increase", vb.oid),
                        })?;
                    }
                last = Some(vb.oid.clone());
                batch.push(vb);
            }
            if !batch.is_empty() {
                found = true;
                yield batch;
            }
            if done {
                break;
            }
        }
        // Nothing under the root: it may be a leaf itself. As snmpwalk does,
        // GET it: its value, or the exception that says it is not there.
        if !found && root.arcs().len() > 1 {
            match engine.request(&target, Op::Get, &[(root.clone(), Value::Null)]).await {
                Ok(varbinds) => yield varbinds,
                // v1 says noSuchName where v2 has exceptions: nothing there.
                Err(SnmpError::Status { status: "noSuchName", .. }) => {}
                Err(e) => Err(e)?,
            }
        }
    }
}
