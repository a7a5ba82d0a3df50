//! SQL for devices, their labels and endpoints, portable between SQLite and
//! PostgreSQL. Every query names the tenant.
use rdm_kit::{
    Error, ErrorCode, Result,
    db::{Backend, TenantTx, now_millis},
};
use sqlx::FromRow;
use std::collections::{BTreeMap, HashMap};

macro_rules! device_columns {
    () => {
        "d.id, d.tenant_id, d.name, d.serial, d.manufacturer, d.model, d.firmware, d.notes, d.address, \
         d.create_time, d.update_time"
    };
}

#[derive(Clone, Debug, Default, FromRow)]
pub struct DeviceRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub serial: String,
    pub manufacturer: String,
    pub model: String,
    pub firmware: String,
    pub notes: String,
    pub address: String,
    pub create_time: i64,
    pub update_time: i64,
}

/// One term of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Missing(String),
}

/// What a device list is narrowed by.
#[derive(Clone, Debug, Default)]
pub struct DeviceFilter {
    pub name_prefix: String,
    pub labels: Vec<LabelTerm>,
    pub protocol: Option<String>,
}

pub async fn insert_device(tx: &mut TenantTx, row: &DeviceRow) -> Result<()> {
    sqlx::query(
        "insert into devices (id, tenant_id, name, serial, manufacturer, model, firmware, notes, address, \
         create_time, update_time) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind(&row.id)
    .bind(&row.tenant_id)
    .bind(&row.name)
    .bind(&row.serial)
    .bind(&row.manufacturer)
    .bind(&row.model)
    .bind(&row.firmware)
    .bind(&row.notes)
    .bind(&row.address)
    .bind(row.create_time)
    .execute(tx.conn())
    .await
    .map_err(|e| name_taken(e, &row.name))?;
    Ok(())
}

fn name_taken(e: sqlx::Error, name: &str) -> Error {
    match Error::from(e) {
        e if e.code == rdm_kit::ErrorCode::AlreadyExists => Error::new(
            rdm_kit::ErrorCode::AlreadyExists,
            format!("a device named {name:?} already exists"),
        )
        .with_meta("field", "name"),
        e => e,
    }
}

pub async fn update_device(tx: &mut TenantTx, row: &DeviceRow) -> Result<()> {
    sqlx::query(
        "update devices set name = $3, serial = $4, manufacturer = $5, model = $6, firmware = $7, notes = $8, \
         address = $9, update_time = $10 where tenant_id = $1 and id = $2",
    )
    .bind(&row.tenant_id)
    .bind(&row.id)
    .bind(&row.name)
    .bind(&row.serial)
    .bind(&row.manufacturer)
    .bind(&row.model)
    .bind(&row.firmware)
    .bind(&row.notes)
    .bind(&row.address)
    .bind(now_millis())
    .execute(tx.conn())
    .await
    .map_err(|e| name_taken(e, &row.name))?;
    Ok(())
}

pub async fn device(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<Option<DeviceRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        device_columns!(),
        " from devices d where d.tenant_id = $1 and d.id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(tx.conn())
    .await?)
}

pub async fn delete_device(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<bool> {
    let done = sqlx::query("delete from devices where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Devices in id order after `after`, at most `limit`, narrowed by `filter`.
pub async fn list_devices(
    tx: &mut TenantTx,
    tenant_id: &str,
    filter: &DeviceFilter,
    after: &str,
    limit: i64,
) -> Result<Vec<DeviceRow>> {
    // Built from fixed fragments only; every value is a bind parameter.
    let mut sql = String::from(concat!(
        "select ",
        device_columns!(),
        " from devices d where d.tenant_id = $1 and d.id > $2 and substr(d.name, 1, length($3)) = $3"
    ));
    let mut binds: Vec<&str> = vec![tenant_id, after, &filter.name_prefix];
    // The placeholder of the value just pushed.
    let param = |binds: &Vec<&str>| format!("${}", binds.len());
    for term in &filter.labels {
        let (negate, key, value) = match term {
            LabelTerm::Equals(k, v) => (false, k, Some(v)),
            LabelTerm::NotEquals(k, v) => (true, k, Some(v)),
            LabelTerm::Exists(k) => (false, k, None),
            LabelTerm::Missing(k) => (true, k, None),
        };
        binds.push(key);
        let key_param = param(&binds);
        sql.push_str(if negate {
            " and not exists"
        } else {
            " and exists"
        });
        sql.push_str(&format!(
            " (select 1 from device_labels l where l.tenant_id = $1 and l.device_id = d.id and l.key = {key_param}"
        ));
        if let Some(value) = value {
            binds.push(value);
            sql.push_str(&format!(" and l.value = {}", param(&binds)));
        }
        sql.push(')');
    }
    if let Some(protocol) = &filter.protocol {
        binds.push(protocol);
        sql.push_str(&format!(
            " and exists (select 1 from endpoints e where e.tenant_id = $1 and e.device_id = d.id and e.protocol = {})",
            param(&binds)
        ));
    }
    sql.push_str(&format!(" order by d.id limit {limit}"));
    let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
    for value in binds {
        query = query.bind(value);
    }
    Ok(query.fetch_all(tx.conn()).await?)
}

pub async fn set_labels(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    labels: &BTreeMap<String, String>,
) -> Result<()> {
    sqlx::query("delete from device_labels where tenant_id = $1 and device_id = $2")
        .bind(tenant_id)
        .bind(device_id)
        .execute(tx.conn())
        .await?;
    for (key, value) in labels {
        sqlx::query(
            "insert into device_labels (tenant_id, device_id, key, value) values ($1, $2, $3, $4)",
        )
        .bind(tenant_id)
        .bind(device_id)
        .bind(key)
        .bind(value)
        .execute(tx.conn())
        .await?;
    }
    Ok(())
}

/// Labels and endpoint protocols of the devices whose ids lie in
/// `first..=last` (a page is one id range: one query each, not one per device).
pub async fn details(
    tx: &mut TenantTx,
    tenant_id: &str,
    first: &str,
    last: &str,
) -> Result<(
    HashMap<String, BTreeMap<String, String>>,
    HashMap<String, Vec<String>>,
)> {
    let labels: Vec<(String, String, String)> = sqlx::query_as(
        "select device_id, key, value from device_labels where tenant_id = $1 and device_id >= $2 and device_id <= $3",
    )
    .bind(tenant_id)
    .bind(first)
    .bind(last)
    .fetch_all(tx.conn())
    .await?;
    let protocols: Vec<(String, String)> = sqlx::query_as(
        "select device_id, protocol from endpoints where tenant_id = $1 and device_id >= $2 and device_id <= $3 \
         order by protocol",
    )
    .bind(tenant_id)
    .bind(first)
    .bind(last)
    .fetch_all(tx.conn())
    .await?;
    let mut by_device: HashMap<String, BTreeMap<String, String>> = HashMap::new();
    for (device, key, value) in labels {
        by_device.entry(device).or_default().insert(key, value);
    }
    let mut protos: HashMap<String, Vec<String>> = HashMap::new();
    for (device, protocol) in protocols {
        protos.entry(device).or_default().push(protocol);
    }
    Ok((by_device, protos))
}

#[derive(Clone, Debug, FromRow)]
pub struct EndpointRow {
    pub tenant_id: String,
    pub device_id: String,
    pub protocol: String,
    /// The settings without secrets, as JSON.
    pub config: String,
    /// JSON object: secret name -> ciphertext.
    pub secrets: String,
    pub update_time: i64,
}

pub async fn endpoint(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    protocol: &str,
) -> Result<Option<EndpointRow>> {
    Ok(sqlx::query_as(
        "select tenant_id, device_id, protocol, config, secrets, update_time from endpoints \
         where tenant_id = $1 and device_id = $2 and protocol = $3",
    )
    .bind(tenant_id)
    .bind(device_id)
    .bind(protocol)
    .fetch_optional(tx.conn())
    .await?)
}

/// A device with its endpoint for one protocol and its tenant's policy:
/// what resolving a target reads, in one query.
#[derive(FromRow)]
pub struct ResolveRow {
    #[sqlx(flatten)]
    pub device: DeviceRow,
    pub endpoint_config: Option<String>,
    pub endpoint_secrets: Option<String>,
    pub endpoint_update_time: Option<i64>,
    pub inline_cidrs: String,
    pub settings: String,
}

impl ResolveRow {
    /// The endpoint, when the device has one for the protocol.
    pub fn endpoint(&self, protocol: &str) -> Option<EndpointRow> {
        Some(EndpointRow {
            tenant_id: self.device.tenant_id.clone(),
            device_id: self.device.id.clone(),
            protocol: protocol.to_owned(),
            config: self.endpoint_config.clone()?,
            secrets: self.endpoint_secrets.clone()?,
            update_time: self.endpoint_update_time?,
        })
    }
}

pub async fn device_to_resolve(
    tx: &mut TenantTx,
    tenant_id: &str,
    id: &str,
    protocol: &str,
) -> Result<Option<ResolveRow>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        device_columns!(),
        ", e.config as endpoint_config, e.secrets as endpoint_secrets, \
         e.update_time as endpoint_update_time, t.inline_cidrs, t.settings \
         from devices d join tenants t on t.id = d.tenant_id \
         left join endpoints e on e.tenant_id = d.tenant_id and e.device_id = d.id and e.protocol = $3 \
         where d.tenant_id = $1 and d.id = $2"
    ))
    .bind(tenant_id)
    .bind(id)
    .bind(protocol)
    .fetch_optional(tx.conn())
    .await?)
}

/// The tenant's devices among `ids` and their endpoints for `protocol`
/// (a device without one is in the first list only).
pub async fn devices_and_endpoints(
    tx: &mut TenantTx,
    tenant_id: &str,
    ids: &[String],
    protocol: &str,
) -> Result<(Vec<DeviceRow>, Vec<EndpointRow>)> {
    let (mut devices, mut endpoints) = (Vec::new(), Vec::new());
    for chunk in ids.chunks(BATCH) {
        let backend = tx.backend();
        let param = |n| placeholder(backend, n);
        let list = |first: usize| {
            (first..first + chunk.len())
                .map(param)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql = format!(
            concat!(
                "select ",
                device_columns!(),
                " from devices d where d.tenant_id = {} and d.id in ({})"
            ),
            param(1),
            list(2)
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(tenant_id);
        for id in chunk {
            query = query.bind(id);
        }
        devices.extend(query.fetch_all(tx.conn()).await?);
        let sql = format!(
            "select tenant_id, device_id, protocol, config, secrets, update_time from endpoints \
             where tenant_id = {} and protocol = {} and device_id in ({})",
            param(1),
            param(2),
            list(3)
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(tenant_id)
            .bind(protocol);
        for id in chunk {
            query = query.bind(id);
        }
        endpoints.extend(query.fetch_all(tx.conn()).await?);
    }
    Ok((devices, endpoints))
}

pub async fn put_endpoint(tx: &mut TenantTx, row: &EndpointRow) -> Result<()> {
    sqlx::query(
        "insert into endpoints (tenant_id, device_id, protocol, config, secrets, update_time) \
         values ($1, $2, $3, $4, $5, $6) on conflict (device_id, protocol) \
         do update set config = $4, secrets = $5, update_time = $6",
    )
    .bind(&row.tenant_id)
    .bind(&row.device_id)
    .bind(&row.protocol)
    .bind(&row.config)
    .bind(&row.secrets)
    .bind(row.update_time)
    .execute(tx.conn())
    .await
    .map_err(|e| match &e {
        // The one unique index on settings: a USP agent's endpoint id.
        sqlx::Error::Database(db) if db.is_unique_violation() && row.protocol == "usp" => {
            Error::new(
                ErrorCode::AlreadyExists,
                "another device has this USP endpoint_id: an agent belongs to one device",
            )
            .with_meta("field", "usp.endpoint_id")
        }
        _ => Error::from(e),
    })?;
    Ok(())
}

/// The device of the tenant whose usp endpoint names agent `endpoint_id`.
pub async fn usp_agent_device(
    tx: &mut TenantTx,
    tenant_id: &str,
    endpoint_id: &str,
) -> Result<Option<String>> {
    // The expression of the unique index on it (migration 0009).
    let agent = config_field(tx.backend(), "endpoint_id");
    device_where(tx, tenant_id, "usp", &format!("{agent} = $2"), endpoint_id).await
}

/// The device of the tenant whose builtin tr069 endpoint names CPE
/// `acs_id` (the unique index of migration 0010).
pub async fn cwmp_device(
    tx: &mut TenantTx,
    tenant_id: &str,
    acs_id: &str,
) -> Result<Option<String>> {
    let (id, acs) = (
        config_field(tx.backend(), "device_id"),
        config_field(tx.backend(), "acs"),
    );
    let condition = format!("{id} = $2 and {acs} = 'builtin'");
    device_where(tx, tenant_id, "tr069", &condition, acs_id).await
}

/// A top-level field of an endpoint's stored settings, as SQL.
fn config_field(backend: Backend, name: &str) -> String {
    match backend {
        Backend::Sqlite => format!("json_extract(config, '$.{name}')"),
        Backend::Postgres => format!("((config::jsonb) ->> '{name}')"),
    }
}

async fn device_where(
    tx: &mut TenantTx,
    tenant_id: &str,
    protocol: &'static str,
    condition: &str,
    value: &str,
) -> Result<Option<String>> {
    let sql = format!(
        "select device_id from endpoints where tenant_id = $1 and protocol = '{protocol}' and {condition}"
    );
    let row: Option<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant_id)
        .bind(value)
        .fetch_optional(tx.conn())
        .await?;
    Ok(row.map(|(id,)| id))
}

pub async fn delete_endpoint(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    protocol: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "delete from endpoints where tenant_id = $1 and device_id = $2 and protocol = $3",
    )
    .bind(tenant_id)
    .bind(device_id)
    .bind(protocol)
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Endpoints of the devices in `first..=last`, for export.
pub async fn endpoints_between(
    tx: &mut TenantTx,
    tenant_id: &str,
    first: &str,
    last: &str,
) -> Result<Vec<EndpointRow>> {
    Ok(sqlx::query_as(
        "select tenant_id, device_id, protocol, config, secrets, update_time from endpoints \
         where tenant_id = $1 and device_id >= $2 and device_id <= $3 order by device_id, protocol",
    )
    .bind(tenant_id)
    .bind(first)
    .bind(last)
    .fetch_all(tx.conn())
    .await?)
}

pub async fn device_names(tx: &mut TenantTx, tenant_id: &str) -> Result<Vec<String>> {
    let names: Vec<(String,)> = sqlx::query_as("select name from devices where tenant_id = $1")
        .bind(tenant_id)
        .fetch_all(tx.conn())
        .await?;
    Ok(names.into_iter().map(|(n,)| n).collect())
}

/// Rows per multi-row insert: few round trips, well under every back-end's
/// limit on bind parameters.
const BATCH: usize = 400;

/// The `n`th bind parameter (from 1), for parameters bound in order:
/// SQLite gets plain `?`, as it looks each numbered parameter up by walking
/// a list, which makes a big batch quadratic.
fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_owned(),
        Backend::Postgres => format!("${n}"),
    }
}

/// `insert into <table> (<columns>) values ($1, ..), ($n, ..), ...` for
/// `rows` rows.
fn multi_insert(backend: Backend, table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("insert into {table} ({}) values ", columns.join(", "));
    for r in 0..rows {
        let start = r * columns.len();
        let params: Vec<String> = (1..=columns.len())
            .map(|c| placeholder(backend, start + c))
            .collect();
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&params.join(", "));
        sql.push(')');
    }
    sql
}

/// Stores an import: devices, labels (device id, key, value) and endpoints,
/// in batches, in the caller's transaction.
pub async fn insert_many(
    tx: &mut TenantTx,
    tenant_id: &str,
    devices: &[DeviceRow],
    labels: &[(String, String, String)],
    endpoints: &[EndpointRow],
) -> Result<()> {
    const DEVICE: [&str; 11] = [
        "id",
        "tenant_id",
        "name",
        "serial",
        "manufacturer",
        "model",
        "firmware",
        "notes",
        "address",
        "create_time",
        "update_time",
    ];
    for chunk in devices.chunks(BATCH) {
        // Built from fixed fragments; every value is a bind parameter.
        let sql = multi_insert(tx.backend(), "devices", &DEVICE, chunk.len());
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for d in chunk {
            q = q
                .bind(&d.id)
                .bind(&d.tenant_id)
                .bind(&d.name)
                .bind(&d.serial)
                .bind(&d.manufacturer)
                .bind(&d.model)
                .bind(&d.firmware)
                .bind(&d.notes)
                .bind(&d.address)
                .bind(d.create_time)
                .bind(d.update_time);
        }
        q.execute(tx.conn()).await?;
    }
    for chunk in labels.chunks(BATCH) {
        let sql = multi_insert(
            tx.backend(),
            "device_labels",
            &["tenant_id", "device_id", "key", "value"],
            chunk.len(),
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (device, key, value) in chunk {
            q = q.bind(tenant_id).bind(device).bind(key).bind(value);
        }
        q.execute(tx.conn()).await?;
    }
    for chunk in endpoints.chunks(BATCH) {
        let columns = [
            "tenant_id",
            "device_id",
            "protocol",
            "config",
            "secrets",
            "update_time",
        ];
        let mut q = sqlx::query(sqlx::AssertSqlSafe(multi_insert(
            tx.backend(),
            "endpoints",
            &columns,
            chunk.len(),
        )));
        for e in chunk {
            q = q
                .bind(&e.tenant_id)
                .bind(&e.device_id)
                .bind(&e.protocol)
                .bind(&e.config)
                .bind(&e.secrets)
                .bind(e.update_time);
        }
        q.execute(tx.conn()).await?;
    }
    Ok(())
}

/// A page of every tenant's endpoints (platform scope), after `after`
/// (device id, protocol), for re-encryption.
pub async fn all_endpoints_after(
    tx: &mut TenantTx,
    after: (&str, &str),
    limit: i64,
) -> Result<Vec<EndpointRow>> {
    Ok(sqlx::query_as(
        "select tenant_id, device_id, protocol, config, secrets, update_time from endpoints \
         where device_id > $1 or (device_id = $1 and protocol > $2) order by device_id, protocol limit $3",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?)
}

pub async fn set_endpoint_secrets(tx: &mut TenantTx, row: &EndpointRow) -> Result<()> {
    sqlx::query("update endpoints set secrets = $4 where tenant_id = $1 and device_id = $2 and protocol = $3")
        .bind(&row.tenant_id)
        .bind(&row.device_id)
        .bind(&row.protocol)
        .bind(&row.secrets)
        .execute(tx.conn())
        .await?;
    Ok(())
}
