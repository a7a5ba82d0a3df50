//! Agents that register themselves. A tenant that turns auto-registration
//! on gets a secret, in an MQTT topic under rdm's controller topic
//! (`<topic>/onboard/<secret>`, on the broker at `RDM_USP_MQTT_URL`) and
//! in a WebSocket path (`/usp/onboard/<secret>`). An agent that is no
//! device yet and sends an OnBoardRequest or a Boot! event there becomes a
//! device of that tenant: made through the inventory as the admin who
//! turned it on (with the roles they have now), with the tenant's label and
//! a usp endpoint for the MTP it came over. Only a hash of the secret is
//! kept.
use crate::{inbox::Notified, store};
use rdm_kit::{
    Error, ErrorCode, Principal, Result, Role,
    auth::Verifier,
    client::Forward,
    db::{Db, Scope, now_millis, timestamp},
    targets::{Inventory, TargetRef},
};
use rdm_proto::{
    inventory::{self as inv, device_service_client::DeviceServiceClient},
    usp_msg::notify::Notification,
    usp_v1::{self as pb, UspEndpoint, UspMqtt},
};
use sha2::{Digest, Sha256};

/// The WebSocket path agents of a tenant announce themselves on, before
/// the secret.
pub const WEBSOCKET_PATH: &str = "/usp/onboard/";
/// What comes between the controller topic and the secret.
const TOPIC_SEGMENT: &str = "/onboard/";

/// The MTP an announcing agent came over, as its usp endpoint will say.
pub enum Came {
    /// The broker rdm has for it, and the agent's reply topic.
    Mqtt {
        topic: Option<String>,
        v311: bool,
    },
    WebSocket,
}

/// Auto-registration: the tenants' settings and the inventory they register
/// devices with.
pub struct Onboarding {
    pub db: Db,
    pub inventory: Inventory,
    pub verifier: Verifier,
    /// rdm has a broker of its own (`RDM_USP_MQTT_URL`), where agents
    /// announce themselves over MQTT.
    pub own_broker: bool,
    pub controller_topic: String,
    /// The agents whose announcement was refused, to log each once.
    pub logged: crate::inbox::Once,
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The secret an MQTT topic name holds (`.../onboard/<secret>`, before any
/// MQTT 3.1.1 `/reply-to=`).
pub fn secret_in_topic(topic: &str) -> Option<&str> {
    let topic = topic.split("/reply-to=").next()?;
    let (_, secret) = topic.rsplit_once(TOPIC_SEGMENT)?;
    (!secret.is_empty()).then_some(secret)
}

impl Onboarding {
    /// The tenant's auto-registration as its admin sees it: the topic and
    /// path only with a `secret` just made.
    fn shown(
        &self,
        row: &store::AutoRegistrationRow,
        secret: Option<&str>,
    ) -> pb::AutoRegistration {
        pb::AutoRegistration {
            label: row.label.clone(),
            mqtt_topic: match secret {
                Some(s) if self.own_broker => {
                    format!("{}{TOPIC_SEGMENT}{s}", self.controller_topic)
                }
                _ => String::new(),
            },
            websocket_path: secret.map_or(String::new(), |s| format!("{WEBSOCKET_PATH}{s}")),
            user_id: row.user_id.clone(),
            update_time: Some(timestamp(row.update_time)),
        }
    }

    pub async fn get(&self, p: &Principal) -> Result<pb::AutoRegistration> {
        let mut tx = self.db.begin(Scope::of(p)).await?;
        let row = store::auto_registration(&mut tx, &p.tenant_id).await?;
        let row = row.ok_or_else(|| Error::not_found("the tenant has no auto-registration"))?;
        Ok(self.shown(&row, None))
    }

    /// Turns it on for `p`'s tenant, as `p` (a new secret the first time,
    /// or when asked).
    pub async fn update(
        &self,
        p: &Principal,
        label: &str,
        new_secret: bool,
    ) -> Result<pb::AutoRegistration> {
        let mut tx = self.db.begin_write(Scope::of(p)).await?;
        let (secret, secret_hash) = match store::auto_registration(&mut tx, &p.tenant_id).await? {
            Some(had) if !new_secret => (None, had.secret_hash),
            _ => {
                let secret = uuid::Uuid::new_v4().simple().to_string();
                let hashed = hash(&secret);
                (Some(secret), hashed)
            }
        };
        let row = store::AutoRegistrationRow {
            tenant_id: p.tenant_id.clone(),
            label: label.to_owned(),
            secret_hash,
            user_id: p.user_id.clone(),
            update_time: now_millis(),
        };
        store::put_auto_registration(&mut tx, &row).await?;
        tx.commit().await?;
        Ok(self.shown(&row, secret.as_deref()))
    }

    pub async fn delete(&self, p: &Principal) -> Result<()> {
        let mut tx = self.db.begin_write(Scope::of(p)).await?;
        if !store::delete_auto_registration(&mut tx, &p.tenant_id).await? {
            return Err(Error::not_found("the tenant has no auto-registration"));
        }
        tx.commit().await
    }

    /// Registers the agent of an announcement (an OnBoardRequest or a
    /// Boot! event) that came with a tenant's `secret`; whether it is a
    /// device of that tenant now (then it is answered).
    pub async fn register(&self, n: &Notified, secret: &str) -> bool {
        let announces = match &n.notify.notification {
            Some(Notification::OnBoardReq(_)) => true,
            Some(Notification::Event(e)) => e.event_name == "Boot!",
            _ => false,
        };
        if !announces {
            return false;
        }
        let outcome = self.registered(n, secret).await;
        let label = match &outcome {
            Ok(true) => "registered",
            Ok(false) => "known",
            Err(_) => "refused",
        };
        metrics::counter!("rdm_usp_registrations_total", "outcome" => label).increment(1);
        match outcome {
            Ok(_) => true,
            Err(e) => {
                if self.logged.first(&n.from) {
                    tracing::warn!(agent = %n.from, error = %e, "a USP agent announcing itself was not registered (said once per agent)");
                }
                false
            }
        }
    }

    /// Makes the device (true), or finds the agent is one already (false).
    async fn registered(&self, n: &Notified, secret: &str) -> Result<bool> {
        let row = {
            let mut tx = self.db.begin(Scope::Platform).await?;
            store::auto_registration_by_secret(&mut tx, &hash(secret)).await?
        };
        let row = row.ok_or_else(|| {
            Error::not_found("no tenant has this onboarding secret (changed or turned off?)")
        })?;
        let p = self
            .inventory
            .user(&self.verifier, &row.tenant_id, &row.user_id)
            .await?;
        if !p.has_role(Role::Admin) {
            return Err(Error::permission_denied(format!(
                "user {} who turned auto-registration on is no admin now",
                row.user_id
            )));
        }
        let agent = TargetRef::UspAgent(n.from.clone());
        match self.inventory.resolve(&p, agent).await {
            Ok(_) => return Ok(false),
            Err(e) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(e),
        }
        let came = n.came();
        let endpoint = UspEndpoint {
            endpoint_id: Some(n.from.clone()),
            transport: Some(match came {
                Came::Mqtt { .. } => "mqtt".into(),
                Came::WebSocket => "websocket".into(),
            }),
            mqtt: match came {
                // No broker_url: rdm's own.
                Came::Mqtt { topic, v311 } => Some(UspMqtt {
                    agent_topic: Some(topic.ok_or_else(|| {
                        Error::invalid("response_topic", "the agent gave no topic to reply on")
                    })?),
                    version: v311.then(|| "3.1.1".into()),
                    ..Default::default()
                }),
                Came::WebSocket => None,
            },
            ..Default::default()
        };
        let (key, value) = row.label.split_once('=').unwrap_or((&row.label, ""));
        let (serial, manufacturer, model) = match &n.notify.notification {
            Some(Notification::OnBoardReq(o)) => (
                o.serial_number.clone(),
                o.oui.clone(),
                o.product_class.clone(),
            ),
            _ => Default::default(),
        };
        let mut devices = DeviceServiceClient::with_interceptor(
            self.inventory.backend.clone(),
            Forward::new(Some(&p), None),
        );
        let made = devices
            .create_device(inv::CreateDeviceRequest {
                name: n.from.clone(),
                serial,
                manufacturer,
                model,
                labels: [(key.to_owned(), value.to_owned())].into(),
                notes: "registered itself over USP".into(),
                ..Default::default()
            })
            .await
            .map_err(|s| Error::from_status(&s))?
            .into_inner()
            .device
            .ok_or_else(|| Error::internal("creating a device", "no device in the reply"))?;
        let put = devices
            .put_endpoint(inv::PutEndpointRequest {
                device_id: made.id.clone(),
                settings: Some(inv::put_endpoint_request::Settings::Usp(endpoint)),
            })
            .await;
        if let Err(status) = put {
            let _ = devices
                .delete_device(inv::DeleteDeviceRequest { device_id: made.id })
                .await;
            return Err(Error::from_status(&status));
        }
        tracing::info!(agent = %n.from, tenant_id = %row.tenant_id, device_id = %made.id, "USP agent registered itself");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_in_topic_names() {
        use super::secret_in_topic as s;
        assert_eq!(s("usp/controller/rdm/onboard/abc"), Some("abc"));
        assert_eq!(
            s("usp/controller/rdm/onboard/abc/reply-to=usp%2Fagent"),
            Some("abc")
        );
        assert_eq!(s("usp/controller/rdm"), None);
        assert_eq!(s("usp/controller/rdm/onboard/"), None);
    }
}
