//! The MQTT 5 MTP, controller side (TR-369 "MQTT Binding", in
//! `proto/third_party/usp/mtp-mqtt.md`): one connection to a broker, shared
//! by every agent on it. The CONNECT carries the `usp-endpoint-id` user
//! property; each request Record goes to the agent's topic with Content
//! Type `usp.msg` and the controller's own topic as Response Topic, and the
//! reply is matched by the agent's endpoint id and the Msg id. Notify
//! messages (on the controller topic agents are configured with) go to the
//! service, which answers them.
use crate::{
    inbox::{Back, Inbox, RequestError},
    record,
};
use bytes::Bytes;
use rdm_proto::usp_msg as msg;
use rumqttc::v5::{
    AsyncClient, Event, EventLoop, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{ConnectProperties, Packet, PublishProperties},
    },
};
use std::{sync::Arc, time::Duration};

/// The content types a USP Record is published with.
pub const CONTENT_TYPE: &str = "usp.msg";
const CONTENT_TYPE_OLD: &str = "application/vnd.bbf.usp.msg";

/// How rdm connects to one broker (no Debug: it holds the password).
#[derive(Clone)]
pub struct BrokerSettings {
    pub host: String,
    pub port: u16,
    /// The MQTT client id; rdm's own when empty.
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// rdm's USP endpoint id as a controller (`self::rdm-...`).
    pub endpoint_id: String,
    /// The topic rdm receives replies on.
    pub topic: String,
    /// The topic agents send notifications to, when not `topic`.
    pub notify_topic: String,
    /// TLS (mqtts://), checking the broker's certificate.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// rdm's own broker: agents announce themselves on it (onboarding
    /// topics are read only here).
    pub own: bool,
}

/// Publishes a Record with Content Type `usp.msg` (and a Response Topic).
pub(crate) async fn publish(
    client: &AsyncClient,
    topic: &str,
    record: Vec<u8>,
    response_topic: Option<String>,
) -> Result<(), rumqttc::v5::ClientError> {
    let properties = PublishProperties {
        content_type: Some(CONTENT_TYPE.into()),
        response_topic,
        ..Default::default()
    };
    client
        .publish_bytes_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            Bytes::from(record),
            properties,
        )
        .await
}

/// A connection to one broker, its replies matched to their requests.
pub struct Broker {
    client: AsyncClient,
    settings: BrokerSettings,
    inbox: Arc<Inbox>,
    /// Subscribed to the controller topic (replies can arrive), or why
    /// the connection failed last.
    subscribed: tokio::sync::watch::Receiver<Result<(), String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Broker {
    /// Connects (in the background, again after each loss) and subscribes
    /// to `settings.topic` (and `notify_topic`); what arrives goes to
    /// `inbox`.
    pub fn connect(settings: BrokerSettings, inbox: Arc<Inbox>) -> Self {
        let client_id = match settings.client_id.as_str() {
            "" => format!("rdm-{}", uuid::Uuid::new_v4().simple()),
            id => id.to_owned(),
        };
        let mut options = MqttOptions::new(client_id, settings.host.clone(), settings.port);
        options.set_keep_alive(Duration::from_secs(30));
        // Without it each small Record waits on Nagle and a delayed ACK (~40 ms).
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        options.set_max_packet_size(Some(record::MAX_RECORD as u32 + 1024));
        if let Some(tls) = &settings.tls {
            options.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            options.set_credentials(user.clone(), password.clone());
        }
        options.set_connect_properties(ConnectProperties {
            user_properties: vec![("usp-endpoint-id".into(), settings.endpoint_id.clone())],
            ..ConnectProperties::new()
        });
        let (client, events) = AsyncClient::new(options, 256);
        let (subscribed_tx, subscribed) = tokio::sync::watch::channel(Err("connecting".to_owned()));
        let task = tokio::spawn(run(
            events,
            client.clone(),
            settings.clone(),
            inbox.clone(),
            subscribed_tx,
        ));
        Self {
            client,
            settings,
            inbox,
            subscribed,
            task,
        }
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// Where what it receives goes.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Sends `request` to the agent `agent_id` on `agent_topic` (as to an
    /// MQTT 3.1.1 endpoint when `v311`: the reply topic in the topic name);
    /// its reply. While the controller is not subscribed to its topic
    /// (connecting, or after a loss) the request waits, within `timeout`.
    pub async fn request(
        &self,
        agent_id: &str,
        agent_topic: &str,
        v311: bool,
        request: msg::Msg,
        timeout: Duration,
    ) -> Result<msg::Msg, RequestError> {
        if let Some(away) = self.inbox.away(agent_id) {
            return Err(away);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut subscribed = self.subscribed.clone();
        if tokio::time::timeout_at(deadline, subscribed.wait_for(Result::is_ok))
            .await
            .is_err()
        {
            let why = subscribed.borrow().clone().err().unwrap_or_default();
            return Err(RequestError::Transport(format!(
                "not connected to the MQTT broker {}:{} within {timeout:?} ({why})",
                self.settings.host, self.settings.port
            )));
        }
        let bytes = record::wrap(&self.settings.endpoint_id, agent_id, &request);
        let topic = match v311 {
            true => format!(
                "{agent_topic}/reply-to={}",
                self.settings.topic.replace('/', "%2F")
            ),
            false => agent_topic.to_owned(),
        };
        let send = async {
            publish(
                &self.client,
                &topic,
                bytes,
                Some(self.settings.topic.clone()),
            )
            .await
            .map_err(|e| {
                RequestError::Transport(format!("the MQTT broker did not take the request: {e}"))
            })
        };
        self.inbox
            .exchange(agent_id, &request, deadline, timeout, send)
            .await
    }
}

/// The connection's event loop: subscribes at each CONNACK (and says so
/// when the broker has taken every subscription), hands replies to their
/// requests and Notify messages to the service, reconnects after a loss
/// (backing off to 10 s).
async fn run(
    mut events: EventLoop,
    client: AsyncClient,
    settings: BrokerSettings,
    inbox: Arc<Inbox>,
    subscribed: tokio::sync::watch::Sender<Result<(), String>>,
) {
    // Each topic with what is under it: MQTT 3.1.1 endpoints publish to
    // `<topic>/reply-to=<theirs>`.
    let mut topics = vec![format!("{}/#", settings.topic)];
    if !settings.notify_topic.is_empty() && settings.notify_topic != settings.topic {
        topics.push(format!("{}/#", settings.notify_topic));
    }
    let mut backoff = Duration::from_millis(100);
    let mut unacked = 0;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(host = %settings.host, port = settings.port, topics = ?topics, "USP controller connected to the MQTT broker");
                unacked = topics.len();
                for topic in &topics {
                    if let Err(e) = client.subscribe(topic.clone(), QoS::AtLeastOnce).await {
                        tracing::warn!(error = %e, %topic, "cannot subscribe to a controller topic");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                unacked = unacked.saturating_sub(1);
                if unacked == 0 {
                    subscribed.send_modify(|s| *s = Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let content_type = p
                    .properties
                    .as_ref()
                    .and_then(|p| p.content_type.as_deref());
                if content_type.is_some_and(|c| c != CONTENT_TYPE && c != CONTENT_TYPE_OLD) {
                    inbox.count_dropped("content_type");
                    tracing::debug!(?content_type, "not a USP record: dropped");
                    continue;
                }
                let (topic, v311) = match p.properties.and_then(|p| p.response_topic) {
                    Some(topic) => (Some(topic), false),
                    None => (reply_to(&p.topic), true),
                };
                let back = Back::Mqtt {
                    client: client.clone(),
                    topic,
                    v311,
                };
                let name = std::str::from_utf8(&p.topic).unwrap_or_default();
                let secret = settings
                    .own
                    .then(|| crate::onboarding::secret_in_topic(name))
                    .flatten();
                inbox.deliver(&p.payload, back, secret);
            }
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
            Err(e) => {
                subscribed.send_modify(|s| *s = Err(e.to_string()));
                tracing::warn!(host = %settings.host, port = settings.port, error = %e, retry_ms = backoff.as_millis() as u64, "MQTT broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// The reply topic an MQTT 3.1.1 endpoint names in a topic name
/// (`.../reply-to=usp%2Fagent%2Fx`: `usp/agent/x`).
fn reply_to(topic: &[u8]) -> Option<String> {
    let topic = std::str::from_utf8(topic).ok()?;
    let (_, escaped) = topic.rsplit_once("/reply-to=")?;
    Some(escaped.replace("%2F", "/").replace("%2f", "/")).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reply_to_topics_of_mqtt_3_1_1_endpoints() {
        assert_eq!(
            super::reply_to(b"usp/controller/rdm/reply-to=usp%2Fagents%2Fcid:3AA3F8:x").as_deref(),
            Some("usp/agents/cid:3AA3F8:x")
        );
        assert_eq!(super::reply_to(b"usp/controller/rdm"), None);
        assert_eq!(super::reply_to(b"usp/controller/rdm/reply-to="), None);
    }
}
