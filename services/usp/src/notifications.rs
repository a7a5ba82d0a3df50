//! Subscriptions' notifications: each Notify an agent sends for a
//! subscription rdm made is stored for the tenant that made it (found by
//! the tenant in the subscription's ID, and only when the agent is the one
//! it was made on), answered with a NotifyResp when it asks, and streamed
//! to the tenant's watchers. Watchers read the database, so a notification
//! received by any replica reaches the watchers of every replica.
use crate::{inbox::Notified, store};
use rdm_kit::{
    Principal, Result,
    db::{Db, Scope, now_millis, timestamp},
};
use rdm_proto::usp_v1 as pb;
use std::{sync::Arc, time::Duration};
use tokio::sync::{mpsc, watch};

/// How often a watcher looks for what other replicas stored.
const POLL: Duration = Duration::from_secs(1);

pub struct Notifications {
    pub db: Db,
    /// How long notifications are kept.
    pub retention: Duration,
    /// Moves each time this replica stores one.
    pub stored: watch::Sender<u64>,
    /// The agents whose Notify for no subscription was logged.
    pub logged: crate::inbox::Once,
    /// Where agents that are no device yet register themselves.
    pub onboarding: crate::onboarding::Onboarding,
}

/// A new subscription ID for `tenant_id` (at most 57 characters: TR-181's
/// Subscription.ID is a string(64); no dots, so no agent misreads it in a
/// search expression). The tenant is in it, so the Notify naming it finds
/// its tenant's rows.
pub fn new_id(tenant_id: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("rdm-{tenant_id}-{}", &random[..16])
}

fn tenant_of(id: &str) -> Option<&str> {
    id.strip_prefix("rdm-")?.rsplit_once('-').map(|(t, _)| t)
}

impl Notifications {
    /// Forgets, every minute, the notifications older than the retention.
    pub async fn prune(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let before = now_millis() - self.retention.as_millis() as i64;
            let pruned = async {
                let mut tx = self.db.begin_write(Scope::Platform).await?;
                let n = store::prune_notifications(&mut tx, before).await?;
                tx.commit().await?;
                Ok::<_, rdm_kit::Error>(n)
            };
            match pruned.await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(pruned = n, "old USP notifications forgotten"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old USP notifications"),
            }
        }
    }

    /// Takes the Notify messages the brokers hand over, one at a time.
    pub async fn run(self: Arc<Self>, mut inbound: mpsc::Receiver<Notified>) {
        while let Some(n) = inbound.recv().await {
            match self.receive(&n).await {
                Ok(true) => n.answer().await,
                // An agent announcing itself where a tenant registers them.
                Ok(false)
                    if match &n.onboarding {
                        Some(secret) => self.onboarding.register(&n, secret).await,
                        None => false,
                    } =>
                {
                    n.answer().await
                }
                Ok(false) => {
                    metrics::counter!("rdm_usp_records_dropped_total", "reason" => "unsubscribed")
                        .increment(1);
                    if self.logged.first(&n.from) {
                        tracing::info!(agent = %n.from, subscription = %n.notify.subscription_id, "a Notify for no subscription of this agent's: dropped (said once per agent)");
                    }
                }
                // Not answered: an agent with NotifRetry sends it again.
                Err(e) => {
                    tracing::warn!(agent = %n.from, error = %e, "cannot store a notification")
                }
            }
        }
    }

    /// Stores a Notify for the tenant whose subscription it names; false
    /// when no tenant made that subscription on that agent.
    async fn receive(&self, n: &Notified) -> Result<bool> {
        let id = &n.notify.subscription_id;
        let Some(tenant_id) = tenant_of(id) else {
            return Ok(false);
        };
        let scope = Scope::Tenant {
            tenant_id,
            user_id: "",
        };
        let mut tx = self.db.begin_write(scope).await?;
        let Some(sub) = store::subscription_by_id(&mut tx, tenant_id, id).await? else {
            return Ok(false);
        };
        if sub.endpoint_id != n.from {
            return Ok(false);
        }
        let now = now_millis();
        let note = pb::WatchNotificationsResponse {
            sequence: 0,
            receive_time: Some(timestamp(now)),
            device_id: sub.device_id,
            endpoint_id: sub.endpoint_id,
            notify: Some(n.notify.clone()),
        };
        let new = store::put_notification(&mut tx, tenant_id, &note, &n.msg_id).await?;
        tx.commit().await?;
        if new {
            metrics::counter!("rdm_usp_notifications_total", "type" => notif_type(&n.notify))
                .increment(1);
            self.stored.send_modify(|v| *v += 1);
        }
        Ok(true)
    }

    /// `p`'s tenant's notifications (only `device_id`'s when given): those
    /// of the last `replay_minutes`, then each as it is stored.
    pub fn watch(
        self: &Arc<Self>,
        p: Principal,
        device_id: String,
        replay_minutes: u32,
    ) -> impl futures::Stream<Item = Result<pb::WatchNotificationsResponse>> + use<> {
        let replay = Duration::from_secs(u64::from(replay_minutes) * 60).min(self.retention);
        let since = now_millis() - replay.as_millis() as i64;
        let mut stored = self.stored.subscribe();
        let this = self.clone();
        async_stream::try_stream! {
            let mut after = 0;
            loop {
                let mut tx = this.db.begin(Scope::of(&p)).await?;
                let batch = store::notifications(&mut tx, &p.tenant_id, &device_id, after, since).await?;
                drop(tx);
                let full = batch.len() == store::BATCH;
                for n in batch {
                    after = n.sequence;
                    yield n;
                }
                if !full {
                    tokio::select! {
                        _ = stored.changed() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        }
    }
}

/// The kind of a Notify's notification, as Subscription.NotifType names it.
fn notif_type(n: &rdm_proto::usp_msg::Notify) -> &'static str {
    use rdm_proto::usp_msg::notify::Notification as N;
    match n.notification {
        Some(N::Event(_)) => "Event",
        Some(N::ValueChange(_)) => "ValueChange",
        Some(N::ObjCreation(_)) => "ObjectCreation",
        Some(N::ObjDeletion(_)) => "ObjectDeletion",
        Some(N::OperComplete(_)) => "OperationComplete",
        Some(N::OnBoardReq(_)) => "OnBoardRequest",
        None => "none",
    }
}
