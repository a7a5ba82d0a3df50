//! The USP service's tables: the subscriptions rdm made on tenants' agents
//! and the notifications they brought. Every query names the tenant, and
//! PostgreSQL's row-level security filters again. The migrations keep their
//! own table (`_usp_migrations`).
use base64::{Engine, engine::general_purpose::STANDARD};
use prost::Message;
use rdm_kit::{
    Error, Result,
    db::{TenantTx, timestamp},
};
use rdm_proto::{usp_msg as msg, usp_v1 as pb};

rdm_kit::service_migrations! {
    /// The USP service's migrations (after the inventory's: its tables refer to
    /// tenants and devices).
    pub static MIGRATIONS = "_usp_migrations";
}

type SubscriptionRow = (String, String, String, String, String, i64, String, i64);

const SUBSCRIPTION: &str = "select id, device_id, endpoint_id, notif_type, reference_list, \
     notif_retry, obj_path, create_time from usp_subscriptions";

fn subscription(
    (id, device_id, endpoint_id, notif_type, refs, retry, obj_path, created): SubscriptionRow,
) -> pb::Subscription {
    pb::Subscription {
        id,
        device_id,
        endpoint_id,
        notif_type,
        reference_list: refs.split(',').map(str::to_owned).collect(),
        notif_retry: retry != 0,
        obj_path,
        create_time: Some(timestamp(created)),
    }
}

/// Keeps subscription `s`, made by user `user_id` of `tenant_id`.
pub async fn put_subscription(
    tx: &mut TenantTx,
    tenant_id: &str,
    user_id: &str,
    s: &pb::Subscription,
    created: i64,
) -> Result<()> {
    sqlx::query(
        "insert into usp_subscriptions (tenant_id, id, device_id, endpoint_id, notif_type, \
         reference_list, notif_retry, obj_path, create_time, user_id) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(tenant_id)
    .bind(&s.id)
    .bind(&s.device_id)
    .bind(&s.endpoint_id)
    .bind(&s.notif_type)
    .bind(s.reference_list.join(","))
    .bind(i64::from(s.notif_retry))
    .bind(&s.obj_path)
    .bind(created)
    .bind(user_id)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Every tenant's devices with subscriptions, each with a user who made
/// one: (tenant, device, user), in the platform's scope.
pub async fn subscribed_devices(tx: &mut TenantTx) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as(
        "select tenant_id, device_id, min(user_id) from usp_subscriptions \
         where user_id <> '' group by tenant_id, device_id",
    )
    .fetch_all(tx.conn())
    .await?)
}

/// Records the instance the agent made for a subscription.
pub async fn set_obj_path(
    tx: &mut TenantTx,
    tenant_id: &str,
    id: &str,
    obj_path: &str,
) -> Result<()> {
    sqlx::query("update usp_subscriptions set obj_path = $3 where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .bind(obj_path)
        .execute(tx.conn())
        .await?;
    Ok(())
}

pub async fn subscription_by_id(
    tx: &mut TenantTx,
    tenant_id: &str,
    id: &str,
) -> Result<Option<pb::Subscription>> {
    let row: Option<SubscriptionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SUBSCRIPTION} where tenant_id = $1 and id = $2"
    )))
    .bind(tenant_id)
    .bind(id)
    .fetch_optional(tx.conn())
    .await?;
    Ok(row.map(subscription))
}

/// Up to `limit` of the tenant's subscriptions after ID `after`, by ID
/// (only `device_id`'s when it is not empty).
pub async fn subscriptions(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<pb::Subscription>> {
    let rows: Vec<SubscriptionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SUBSCRIPTION} where tenant_id = $1 and ($2 = '' or device_id = $2) and id > $3 order by id limit $4"
    )))
    .bind(tenant_id)
    .bind(device_id)
    .bind(after)
    .bind(limit)
    .fetch_all(tx.conn())
    .await?;
    Ok(rows.into_iter().map(subscription).collect())
}

/// Deletes one; whether there was one.
pub async fn delete_subscription(tx: &mut TenantTx, tenant_id: &str, id: &str) -> Result<bool> {
    let done = sqlx::query("delete from usp_subscriptions where tenant_id = $1 and id = $2")
        .bind(tenant_id)
        .bind(id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Keeps a notification, once per agent and Msg id (an agent sending it
/// again, or several replicas receiving it, store it once); whether it is
/// new.
pub async fn put_notification(
    tx: &mut TenantTx,
    tenant_id: &str,
    n: &pb::WatchNotificationsResponse,
    msg_id: &str,
) -> Result<bool> {
    let received = n
        .receive_time
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    let notify = STANDARD.encode(n.notify.clone().unwrap_or_default().encode_to_vec());
    let done = sqlx::query(
        "insert into usp_notifications (tenant_id, device_id, endpoint_id, msg_id, receive_time, notify) \
         values ($1, $2, $3, $4, $5, $6) on conflict (tenant_id, endpoint_id, msg_id) do nothing",
    )
    .bind(tenant_id)
    .bind(&n.device_id)
    .bind(&n.endpoint_id)
    .bind(msg_id)
    .bind(received)
    .bind(notify)
    .execute(tx.conn())
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Forgets every tenant's notifications received before `before` (in the
/// platform's scope); how many.
pub async fn prune_notifications(tx: &mut TenantTx, before: i64) -> Result<u64> {
    let done = sqlx::query("delete from usp_notifications where receive_time < $1")
        .bind(before)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected())
}

/// How many notifications one read returns at most.
pub const BATCH: usize = 256;

/// Up to [`BATCH`] of the tenant's notifications after `after` (a sequence)
/// received from `since` on, in order (only `device_id`'s when it is not
/// empty).
pub async fn notifications(
    tx: &mut TenantTx,
    tenant_id: &str,
    device_id: &str,
    after: i64,
    since: i64,
) -> Result<Vec<pb::WatchNotificationsResponse>> {
    let rows: Vec<(i64, String, String, i64, String)> = sqlx::query_as(
        "select seq, device_id, endpoint_id, receive_time, notify from usp_notifications \
         where tenant_id = $1 and ($2 = '' or device_id = $2) and seq > $3 and receive_time >= $4 \
         order by seq limit $5",
    )
    .bind(tenant_id)
    .bind(device_id)
    .bind(after)
    .bind(since)
    .bind(BATCH as i64)
    .fetch_all(tx.conn())
    .await?;
    rows.into_iter()
        .map(|(sequence, device_id, endpoint_id, received, notify)| {
            let bytes = STANDARD
                .decode(notify)
                .map_err(|e| Error::internal("reading a notification", e))?;
            Ok(pb::WatchNotificationsResponse {
                sequence,
                receive_time: Some(timestamp(received)),
                device_id,
                endpoint_id,
                notify: Some(
                    msg::Notify::decode(bytes.as_slice())
                        .map_err(|e| Error::internal("reading a notification", e))?,
                ),
            })
        })
        .collect()
}

/// Records that the replica at `url` holds `endpoint_id`'s WebSocket.
pub async fn put_connection(tx: &mut TenantTx, endpoint_id: &str, url: &str) -> Result<()> {
    sqlx::query(
        "insert into usp_connections (endpoint_id, url, connect_time) values ($1, $2, $3) \
         on conflict (endpoint_id) do update set url = $2, connect_time = $3",
    )
    .bind(endpoint_id)
    .bind(url)
    .bind(rdm_kit::db::now_millis())
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Forgets that the replica at `url` holds `endpoint_id`'s WebSocket (not
/// another replica's newer one).
pub async fn delete_connection(tx: &mut TenantTx, endpoint_id: &str, url: &str) -> Result<()> {
    sqlx::query("delete from usp_connections where endpoint_id = $1 and url = $2")
        .bind(endpoint_id)
        .bind(url)
        .execute(tx.conn())
        .await?;
    Ok(())
}

/// The replica that holds `endpoint_id`'s WebSocket.
pub async fn connection(tx: &mut TenantTx, endpoint_id: &str) -> Result<Option<String>> {
    let row: Option<(String,)> =
        sqlx::query_as("select url from usp_connections where endpoint_id = $1")
            .bind(endpoint_id)
            .fetch_optional(tx.conn())
            .await?;
    Ok(row.map(|(url,)| url))
}

/// A tenant's auto-registration: label, the hash of its onboarding secret,
/// the admin devices are made as, when it changed.
#[derive(sqlx::FromRow)]
pub struct AutoRegistrationRow {
    pub tenant_id: String,
    pub label: String,
    pub secret_hash: String,
    pub user_id: String,
    pub update_time: i64,
}

const AUTO_REGISTRATION: &str =
    "select tenant_id, label, secret_hash, user_id, update_time from usp_auto_registrations";

/// The tenant's auto-registration.
pub async fn auto_registration(
    tx: &mut TenantTx,
    tenant_id: &str,
) -> Result<Option<AutoRegistrationRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{AUTO_REGISTRATION} where tenant_id = $1"
    )))
    .bind(tenant_id)
    .fetch_optional(tx.conn())
    .await?)
}

/// The auto-registration whose secret hashes to `secret_hash` (in the
/// platform's scope: the secret names the tenant).
pub async fn auto_registration_by_secret(
    tx: &mut TenantTx,
    secret_hash: &str,
) -> Result<Option<AutoRegistrationRow>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{AUTO_REGISTRATION} where secret_hash = $1"
    )))
    .bind(secret_hash)
    .fetch_optional(tx.conn())
    .await?)
}

/// Makes or replaces the tenant's auto-registration.
pub async fn put_auto_registration(tx: &mut TenantTx, row: &AutoRegistrationRow) -> Result<()> {
    sqlx::query(
        "insert into usp_auto_registrations (tenant_id, label, secret_hash, user_id, update_time) \
         values ($1, $2, $3, $4, $5) on conflict (tenant_id) do update \
         set label = $2, secret_hash = $3, user_id = $4, update_time = $5",
    )
    .bind(&row.tenant_id)
    .bind(&row.label)
    .bind(&row.secret_hash)
    .bind(&row.user_id)
    .bind(row.update_time)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Ends the tenant's auto-registration; whether it had one.
pub async fn delete_auto_registration(tx: &mut TenantTx, tenant_id: &str) -> Result<bool> {
    let done = sqlx::query("delete from usp_auto_registrations where tenant_id = $1")
        .bind(tenant_id)
        .execute(tx.conn())
        .await?;
    Ok(done.rows_affected() > 0)
}
