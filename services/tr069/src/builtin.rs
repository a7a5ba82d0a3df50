//! The TR-069 API on rdm's own ACS: one CPE of a tenant, answering the
//! service's questions (tasks, faults, the cached tree, files) in the shape
//! of an external ACS's documents, so every RPC works the same on both.
use crate::{
    acs::{Outcome, Page},
    cwmp::{Acs, new_task, tenant},
    store::{self, TaskRow},
};
use rdm_kit::{Error, ErrorCode, Result, db::TenantTx};
use serde_json::{Map, Value, json};
use std::{sync::Arc, time::Duration};

/// One CPE of a tenant on rdm's ACS.
pub struct Builtin {
    pub acs: Arc<Acs>,
    pub tenant_id: String,
    pub device_id: String,
    pub acs_id: String,
    /// The tenant's allowed networks (its connection request URL passes them).
    pub allowed: Vec<String>,
}

/// Milliseconds since the epoch as ISO 8601 (the documents' times).
pub fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Builtin {
    async fn tx(&self) -> Result<TenantTx> {
        self.acs.db.begin(tenant(&self.tenant_id)).await
    }

    async fn write(&self) -> Result<TenantTx> {
        self.acs.db.begin_write(tenant(&self.tenant_id)).await
    }

    /// Queues `task` for the CPE; with `wait`, sends a connection request
    /// and waits that long for the session to run it.
    pub async fn add_task(&self, task: &Value, wait: Option<Duration>) -> Result<Outcome> {
        let mut body = task.clone();
        let user = body["rdm_user"].as_str().unwrap_or_default().to_owned();
        if let Some(o) = body.as_object_mut() {
            o.retain(|k, _| !k.starts_with("rdm_"));
        }
        let row = new_task(&self.tenant_id, &self.device_id, &user, body);
        let mut tx = self.write().await?;
        store::insert_task(&mut tx, &row).await?;
        let cpe = store::cpe(&mut tx, &self.tenant_id, &self.device_id).await?;
        tx.commit().await?;
        let queued = |row: &TaskRow| Ok(Outcome::Queued(self.task_doc(row)));
        let (Some(wait), Some(cpe)) = (wait, cpe) else {
            return queued(&row);
        };
        if let Err(e) = self.acs.connection_request(&cpe, &self.allowed).await {
            tracing::info!(tenant_id = %self.tenant_id, device_id = %self.device_id, error = %e.message, "the task stays queued");
            return queued(&row);
        }
        match self.acs.settled(&self.tenant_id, &row.id, wait).await? {
            Some(done) if done.status == "FAULTED" => Ok(Outcome::Faulted(self.task_doc(&done))),
            Some(done) => Ok(Outcome::Done(self.task_doc(&done))),
            None => queued(&row),
        }
    }

    /// A task as an ACS's task document.
    fn task_doc(&self, row: &TaskRow) -> Value {
        let mut doc: Value = serde_json::from_str(&row.task).unwrap_or_else(|_| json!({}));
        doc["_id"] = row.id.clone().into();
        doc["device"] = self.acs_id.clone().into();
        doc["rdm_tenant"] = row.tenant_id.clone().into();
        doc["rdm_user"] = row.user_id.clone().into();
        doc["timestamp"] = iso(row.create_time).into();
        doc["status"] = row.status.clone().into();
        if let Ok(t @ Value::Object(_)) = serde_json::from_str::<Value>(&row.transfer) {
            doc["transfer"] = t;
        }
        doc
    }

    fn fault_doc(&self, row: &TaskRow) -> Option<Value> {
        let mut fault: Value = serde_json::from_str(&row.fault).ok()?;
        fault["_id"] = format!("{}:task_{}", self.acs_id, row.id).into();
        fault["device"] = self.acs_id.clone().into();
        Some(fault)
    }

    /// The CPE's cached tree under the projection's paths (all of it
    /// without one), as an ACS's device document.
    async fn device_doc(&self, projection: &str) -> Result<Option<Value>> {
        let mut tx = self.tx().await?;
        let Some(cpe) = store::cpe(&mut tx, &self.tenant_id, &self.device_id).await? else {
            return Ok(None);
        };
        let prefixes: Vec<&str> = match projection {
            "" => vec![""],
            p => p.split(',').filter(|p| !p.starts_with('_')).collect(),
        };
        let mut doc = summary(&cpe);
        for prefix in prefixes {
            for row in
                store::params_under(&mut tx, &self.tenant_id, &self.device_id, prefix).await?
            {
                insert(&mut doc, &row);
            }
        }
        Ok(Some(doc))
    }

    /// An ACS collection's documents that match `query`, paged.
    pub async fn find(
        &self,
        collection: &str,
        query: &Value,
        projection: &str,
        skip: u64,
        limit: u64,
    ) -> Result<Page> {
        let id = by_id(query);
        let mut tx = self.tx().await?;
        let docs: Vec<Value> = match collection {
            "devices" if id.as_deref() == Some(self.acs_id.as_str()) => {
                drop(tx);
                self.device_doc(projection).await?.into_iter().collect()
            }
            "devices" => store::cpes(&mut tx, &self.tenant_id)
                .await?
                .iter()
                .map(summary)
                .collect(),
            "tasks" => match id {
                Some(id) => store::task(&mut tx, &self.tenant_id, &id)
                    .await?
                    .filter(|t| t.device_id == self.device_id)
                    .map(|t| self.task_doc(&t))
                    .into_iter()
                    .collect(),
                None => store::pending_tasks(&mut tx, &self.tenant_id, &self.device_id)
                    .await?
                    .iter()
                    .map(|t| self.task_doc(t))
                    .collect(),
            },
            "faults" => store::pending_tasks(&mut tx, &self.tenant_id, &self.device_id)
                .await?
                .iter()
                .filter(|t| t.status == "FAULTED")
                .filter_map(|t| self.fault_doc(t))
                .collect(),
            "files" => store::files(&mut tx, &self.tenant_id)
                .await?
                .into_iter()
                .map(|f| json!({"_id": f.name, "length": f.size}))
                .collect(),
            other => {
                return Err(Error::internal(
                    "reading rdm's ACS",
                    format!("no collection {other}"),
                ));
            }
        };
        let mut matched = Vec::new();
        for doc in docs {
            if matches(&doc, query)? {
                matched.push(doc);
            }
        }
        let total = matched.len() as u64;
        let items = matched
            .into_iter()
            .skip(skip as usize)
            .take(limit as usize)
            .collect();
        Ok(Page { items, total })
    }

    /// A task the CPE has faulted goes back to the queue.
    pub async fn retry_task(&self, id: &str, missing: &str) -> Result<()> {
        let mut tx = self.write().await?;
        let mut task = self.pending(&mut tx, id, missing).await?;
        task.status = "QUEUED".into();
        task.fault.clear();
        task.step = 0;
        task.update_time = rdm_kit::db::now_millis();
        store::update_task(&mut tx, &task).await?;
        tx.commit().await
    }

    /// Drops a pending task (a faulted one's fault with it); a task the
    /// CPE has now is DEVICE_BUSY.
    pub async fn delete_task(&self, id: &str, missing: &str) -> Result<()> {
        let mut tx = self.write().await?;
        self.pending(&mut tx, id, missing).await?;
        store::delete_task(&mut tx, &self.tenant_id, id).await?;
        tx.commit().await
    }

    async fn pending(&self, tx: &mut TenantTx, id: &str, missing: &str) -> Result<TaskRow> {
        let task = store::task(tx, &self.tenant_id, id)
            .await?
            .filter(|t| t.device_id == self.device_id && t.status != "DONE")
            .ok_or_else(|| Error::not_found(missing))?;
        if task.status == "RUNNING" {
            return Err(Error::new(
                ErrorCode::DeviceBusy,
                "the CPE is in session with the ACS: try again when it is over",
            )
            .with_meta("retry_after_s", "5"));
        }
        Ok(task)
    }
}

/// The `_id` a query asks for, if it names one.
fn by_id(query: &Value) -> Option<String> {
    if let Some(id) = query["_id"].as_str() {
        return Some(id.to_owned());
    }
    query["$and"].as_array()?.iter().find_map(by_id)
}

/// Whether `doc` matches an equality query (`{"a.b": value, "$and": [...]}`);
/// other operators are refused.
fn matches(doc: &Value, query: &Value) -> Result<bool> {
    let Some(fields) = query.as_object() else {
        return Err(refused());
    };
    for (key, want) in fields {
        let ok = match key.as_str() {
            "$and" => {
                let mut all = true;
                for q in want.as_array().ok_or_else(refused)? {
                    all &= matches(doc, q)?;
                }
                all
            }
            k if k.starts_with('$') || want.is_object() => return Err(refused()),
            k => {
                let got = k.split('.').try_fold(doc, |d, part| d.get(part));
                match got {
                    Some(Value::Array(items)) => items.contains(want),
                    Some(got) => got == want || got.get("_value") == Some(want),
                    None => false,
                }
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

fn refused() -> Error {
    Error::invalid(
        "query",
        "rdm's own ACS takes equality queries only, such as {\"_deviceId._SerialNumber\":\"SN1\"}",
    )
}

/// A CPE's own fields, as an ACS's device document has them.
fn summary(cpe: &store::CpeRow) -> Value {
    json!({
        "_id": cpe.acs_id,
        "_deviceId": {
            "_Manufacturer": cpe.manufacturer,
            "_OUI": cpe.oui,
            "_ProductClass": cpe.product_class,
            "_SerialNumber": cpe.serial_number,
        },
        "_lastInform": iso(cpe.last_inform),
        "_tags": [],
    })
}

/// Puts a cached parameter (or object) into a device document's tree.
fn insert(doc: &mut Value, row: &store::ParamRow) {
    let object = row.name.ends_with('.');
    let mut node = doc;
    for part in row.name.trim_end_matches('.').split('.') {
        let Some(map) = node.as_object_mut() else {
            return;
        };
        node = map
            .entry(part)
            .or_insert_with(|| Value::Object(Map::from_iter([("_object".into(), true.into())])));
    }
    let Some(map) = node.as_object_mut() else {
        return;
    };
    if row.writable >= 0 {
        map.insert("_writable".into(), (row.writable == 1).into());
    }
    if !object {
        map.remove("_object");
        map.insert("_value".into(), row.value.clone().into());
        map.insert("_type".into(), row.xsd_type.clone().into());
        map.insert("_timestamp".into(), iso(row.update_time).into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equality_queries_match_and_others_are_refused() {
        let doc = json!({"_id": "A-B-1", "_tags": ["x"], "_deviceId": {"_SerialNumber": "1"}});
        assert!(matches(&doc, &json!({})).unwrap());
        assert!(matches(&doc, &json!({"_tags": "x", "_deviceId._SerialNumber": "1"})).unwrap());
        assert!(!matches(&doc, &json!({"$and": [{"_id": "A-B-1"}, {"_tags": "y"}]})).unwrap());
        assert_eq!(
            matches(&doc, &json!({"_id": {"$ne": 1}}))
                .unwrap_err()
                .field(),
            Some("query")
        );
        assert_eq!(
            by_id(&json!({"$and": [{"_id": "z"}, {"a": 1}]})).as_deref(),
            Some("z")
        );
    }

    #[test]
    fn cached_rows_make_a_tree_the_reader_reads() {
        let mut doc = json!({"_id": "x"});
        for (name, value, writable) in [
            ("Device.NAT.PortMapping.", "", 1),
            ("Device.NAT.PortMapping.1.", "", 1),
            ("Device.NAT.PortMapping.1.Enable", "true", 1),
            ("Device.DeviceInfo.SoftwareVersion", "1.0", -1),
        ] {
            let row = store::ParamRow {
                name: name.into(),
                value: value.into(),
                xsd_type: "xsd:string".into(),
                writable,
                update_time: 0,
            };
            insert(&mut doc, &row);
        }
        let leaves = crate::tree::leaves(&doc);
        assert_eq!(leaves.len(), 2);
        assert_eq!(leaves[1].name, "Device.NAT.PortMapping.1.Enable");
        assert!(leaves[1].writable);
        assert_eq!(crate::tree::instances(&doc, "Device.NAT.PortMapping."), [1]);
        assert!(crate::tree::names(&doc).contains(&("Device.NAT.PortMapping.".into(), true)));
    }
}
