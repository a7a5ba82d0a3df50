//! The MQTT 5 MTP, controller side (TR-369 "MQTT Binding", in
//! `proto/third_party/usp/mtp-mqtt.md`): one connection to a broker, shared
//! by every agent on it. The CONNECT carries the `usp-endpoint-id` user
//! property; each request Record goes to the agent's topic with Content
//! Type `usp.msg` and the controller's own topic as Response Topic, and the
//! reply is matched by the agent's endpoint id and the Msg id. Notify
//! messages (on the controller topic agents are configured with) go to the
//! service, which answers them.
use crate::record::{self, Received};
use bytes::Bytes;
use rdm_proto::usp_msg as msg;
use rumqttc::v5::{
    AsyncClient, Event, EventLoop, MqttOptions,
    mqttbytes::{
        QoS,
        v5::{ConnectProperties, Packet, PublishProperties},
    },
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

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
}

/// A Notify an agent sent: from whom, its Msg id, and how to answer it.
pub struct Notified {
    pub from: String,
    pub msg_id: String,
    pub notify: msg::Notify,
    /// The agent's topic for the answer (the publish's Response Topic).
    reply_topic: Option<String>,
    client: AsyncClient,
    endpoint_id: String,
}

impl Notified {
    /// Sends the agent its NotifyResp (when the Notify asked for one).
    pub async fn answer(&self) {
        if !self.notify.send_resp {
            return;
        }
        let Some(topic) = &self.reply_topic else {
            tracing::info!(agent = %self.from, "a Notify asking for a NotifyResp had no Response Topic");
            return;
        };
        let resp = msg::Msg {
            header: Some(msg::Header {
                msg_id: self.msg_id.clone(),
                msg_type: msg::header::MsgType::NotifyResp as i32,
            }),
            body: Some(msg::Body {
                msg_body: Some(msg::body::MsgBody::Response(msg::Response {
                    resp_type: Some(msg::response::RespType::NotifyResp(msg::NotifyResp {
                        subscription_id: self.notify.subscription_id.clone(),
                    })),
                })),
            }),
        };
        let bytes = record::wrap(&self.endpoint_id, &self.from, &resp);
        if let Err(e) = publish(&self.client, topic, bytes, None).await {
            tracing::warn!(agent = %self.from, error = %e, "cannot send a NotifyResp");
        }
    }
}

/// Publishes a Record with Content Type `usp.msg` (and a Response Topic).
async fn publish(
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

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the broker did not take the request: {0}")]
    Broker(String),
    #[error("no reply from the agent within {0:?}")]
    Timeout(Duration),
}

type Pending = Arc<Mutex<HashMap<(String, String), oneshot::Sender<msg::Msg>>>>;

/// A connection to one broker, its replies matched to their requests.
pub struct Broker {
    client: AsyncClient,
    settings: BrokerSettings,
    pending: Pending,
    next_id: AtomicU64,
    /// Records received that answered no request (late, unknown, or bad).
    pub dropped: Arc<AtomicU64>,
    /// Subscribed to the controller topic (replies can arrive).
    subscribed: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Broker {
    /// Connects (in the background, again after each loss) and subscribes
    /// to `settings.topic` (and `notify_topic`); Notify messages go to
    /// `notifications`.
    pub fn connect(settings: BrokerSettings, notifications: mpsc::Sender<Notified>) -> Self {
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
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            options.set_credentials(user.clone(), password.clone());
        }
        options.set_connect_properties(ConnectProperties {
            user_properties: vec![("usp-endpoint-id".into(), settings.endpoint_id.clone())],
            ..ConnectProperties::new()
        });
        let (client, events) = AsyncClient::new(options, 256);
        let pending = Pending::default();
        let dropped = Arc::new(AtomicU64::new(0));
        let (subscribed_tx, subscribed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(
            events,
            Inbox {
                client: client.clone(),
                settings: settings.clone(),
                pending: pending.clone(),
                dropped: dropped.clone(),
                notifications,
            },
            subscribed_tx,
        ));
        Self {
            client,
            settings,
            pending,
            next_id: AtomicU64::new(1),
            dropped,
            subscribed,
            task,
        }
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.settings
    }

    /// A Msg id no other request of this process has.
    pub fn msg_id(&self) -> String {
        format!(
            "rdm-{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Sends `request` to the agent `agent_id` on `agent_topic`; its reply.
    /// While the controller is not subscribed to its topic (connecting, or
    /// after a loss) the request waits, within `timeout`.
    pub async fn request(
        &self,
        agent_id: &str,
        agent_topic: &str,
        request: msg::Msg,
        timeout: Duration,
    ) -> Result<msg::Msg, RequestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut subscribed = self.subscribed.clone();
        if tokio::time::timeout_at(deadline, subscribed.wait_for(|s| *s))
            .await
            .is_err()
        {
            return Err(RequestError::Broker(format!(
                "not connected to the MQTT broker {}:{} within {timeout:?}",
                self.settings.host, self.settings.port
            )));
        }
        let key = (agent_id.to_owned(), record::msg_id(&request).to_owned());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(key.clone(), tx);
        let _forget = Forget(&self.pending, &key);
        let bytes = record::wrap(&self.settings.endpoint_id, agent_id, &request);
        publish(
            &self.client,
            agent_topic,
            bytes,
            Some(self.settings.topic.clone()),
        )
        .await
        .map_err(|e| RequestError::Broker(e.to_string()))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(RequestError::Timeout(timeout)),
        }
    }
}

/// Takes a request's slot back, whatever became of it.
struct Forget<'a>(&'a Pending, &'a (String, String));

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(self.1);
    }
}

/// What the event loop hands received Records to.
struct Inbox {
    client: AsyncClient,
    settings: BrokerSettings,
    pending: Pending,
    dropped: Arc<AtomicU64>,
    notifications: mpsc::Sender<Notified>,
}

/// The connection's event loop: subscribes at each CONNACK (and says so
/// when the broker has taken every subscription), hands replies to their
/// requests and Notify messages to the service, reconnects after a loss
/// (backing off to 10 s).
async fn run(mut events: EventLoop, inbox: Inbox, subscribed: tokio::sync::watch::Sender<bool>) {
    let settings = &inbox.settings;
    let mut topics = vec![settings.topic.clone()];
    if !settings.notify_topic.is_empty() && settings.notify_topic != settings.topic {
        topics.push(settings.notify_topic.clone());
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
                    if let Err(e) = inbox
                        .client
                        .subscribe(topic.clone(), QoS::AtLeastOnce)
                        .await
                    {
                        tracing::warn!(error = %e, %topic, "cannot subscribe to a controller topic");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                unacked = unacked.saturating_sub(1);
                if unacked == 0 {
                    subscribed.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let content_type = p
                    .properties
                    .as_ref()
                    .and_then(|p| p.content_type.as_deref());
                if content_type.is_some_and(|c| c != CONTENT_TYPE && c != CONTENT_TYPE_OLD) {
                    count_dropped(&inbox.dropped, "content_type");
                    tracing::debug!(?content_type, "not a USP record: dropped");
                    continue;
                }
                let reply_topic = p.properties.and_then(|p| p.response_topic);
                inbox.deliver(&p.payload, reply_topic);
            }
            Ok(_) => {}
            Err(rumqttc::v5::ConnectionError::RequestsDone) => return,
            Err(e) => {
                subscribed.send_replace(false);
                tracing::warn!(host = %settings.host, port = settings.port, error = %e, retry_ms = backoff.as_millis() as u64, "MQTT broker connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Counts a dropped Record (`rdm_usp_records_dropped_total{reason}`).
fn count_dropped(dropped: &AtomicU64, reason: &'static str) {
    dropped.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("rdm_usp_records_dropped_total", "reason" => reason).increment(1);
}

impl Inbox {
    /// Hands a received Record's Msg to the request it answers, or a
    /// Notify to the service.
    fn deliver(&self, payload: &[u8], reply_topic: Option<String>) {
        let drop = |reason: &'static str, why: &dyn std::fmt::Display| {
            count_dropped(&self.dropped, reason);
            tracing::info!(reason = %why, "USP record dropped");
        };
        match record::read(payload) {
            Ok(Received::Msg { from, to, msg }) => {
                if to != self.settings.endpoint_id {
                    return drop(
                        "misaddressed",
                        &format!("addressed to {to:?}, not this controller"),
                    );
                }
                let msg_id = record::msg_id(&msg).to_owned();
                if let Some(msg::body::MsgBody::Request(msg::Request {
                    req_type: Some(msg::request::ReqType::Notify(notify)),
                })) = msg.body.as_ref().and_then(|b| b.msg_body.as_ref())
                {
                    let notified = Notified {
                        from,
                        msg_id,
                        notify: notify.clone(),
                        reply_topic,
                        client: self.client.clone(),
                        endpoint_id: self.settings.endpoint_id.clone(),
                    };
                    if self.notifications.try_send(notified).is_err() {
                        drop("busy", &"too many notifications waiting to be stored");
                    }
                    return;
                }
                let key = (from, msg_id);
                match self.pending.lock().unwrap().remove(&key) {
                    Some(tx) => {
                        let _ = tx.send(msg);
                    }
                    None => drop(
                        "unanswered",
                        &format!(
                            "msg {:?} from {:?} answers no request (late or unknown)",
                            key.1, key.0
                        ),
                    ),
                }
            }
            Ok(Received::Connect { from }) => {
                tracing::info!(agent = %from, "USP agent connected");
            }
            Ok(Received::Disconnect { from, reason }) => {
                tracing::info!(agent = %from, %reason, "USP agent disconnected");
            }
            Err(e) => drop("bad_record", &e),
        }
    }
}
