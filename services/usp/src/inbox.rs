//! What comes back from agents, whatever MTP brought it: a reply goes to
//! the request waiting for it (matched by agent and Msg id), a Notify to
//! the service with the way back to its agent, and anything else is
//! dropped and counted.
use crate::record::{self, Received};
use rdm_proto::usp_msg as msg;
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{mpsc, oneshot};

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The MTP could not take the request (no broker, no connection).
    #[error("{0}")]
    Transport(String),
    /// The agent is not connected (WebSocket).
    #[error("{0}")]
    Offline(String),
    #[error("no reply from the agent within {0:?}")]
    Timeout(Duration),
}

/// How to send a Record back to the agent a Record came from.
#[derive(Clone)]
pub enum Back {
    /// Publish on this MQTT connection to the agent's reply topic.
    Mqtt {
        client: rumqttc::v5::AsyncClient,
        topic: Option<String>,
        /// The agent speaks MQTT 3.1.1 (its reply topic came in the topic name).
        v311: bool,
    },
    /// Send on the agent's WebSocket connection.
    Socket(mpsc::Sender<Vec<u8>>),
}

impl Back {
    pub async fn send(&self, record: Vec<u8>) -> Result<(), String> {
        match self {
            Back::Mqtt { client, topic, .. } => {
                let topic = topic.as_deref().ok_or("the agent gave no Response Topic")?;
                crate::mqtt::publish(client, topic, record, None)
                    .await
                    .map_err(|e| e.to_string())
            }
            Back::Socket(tx) => tx
                .send(record)
                .await
                .map_err(|_| "the agent's connection is closed".to_owned()),
        }
    }
}

/// A Notify an agent sent: from whom, its Msg id, and how to answer it.
pub struct Notified {
    pub from: String,
    pub msg_id: String,
    pub notify: msg::Notify,
    /// The onboarding secret of the topic or path it came on, if any.
    pub onboarding: Option<String>,
    back: Back,
    endpoint_id: String,
}

impl Notified {
    /// The MTP it came over, as a usp endpoint for its agent would say.
    pub fn came(&self) -> crate::onboarding::Came {
        match &self.back {
            Back::Mqtt { topic, v311, .. } => crate::onboarding::Came::Mqtt {
                topic: topic.clone(),
                v311: *v311,
            },
            Back::Socket(_) => crate::onboarding::Came::WebSocket,
        }
    }

    /// Sends the agent its NotifyResp (when the Notify asked for one).
    pub async fn answer(&self) {
        if !self.notify.send_resp {
            return;
        }
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
        if let Err(e) = self.back.send(bytes).await {
            tracing::warn!(agent = %self.from, error = %e, "cannot send a NotifyResp");
        }
    }
}

/// Says whether a key is new, to log what strangers send once per sender
/// rather than once per record (it forgets all after 10,000 keys).
#[derive(Default)]
pub struct Once(Mutex<std::collections::HashSet<String>>);

impl Once {
    pub fn first(&self, key: &str) -> bool {
        let mut seen = self.0.lock().unwrap();
        if seen.len() >= 10_000 {
            seen.clear();
        }
        seen.insert(key.to_owned())
    }
}

/// The controller's inbox: one per service, shared by every MTP connection.
pub struct Inbox {
    /// rdm's endpoint id: what Records to it are addressed to.
    pub endpoint_id: String,
    pending: Mutex<HashMap<(String, String), oneshot::Sender<msg::Msg>>>,
    notifications: mpsc::Sender<Notified>,
    next_id: AtomicU64,
    /// Records received that answered no request (late, unknown, or bad).
    pub dropped: AtomicU64,
    /// The agents that said they were disconnecting (a DisconnectRecord),
    /// with their reason, until they speak again.
    gone: Mutex<HashMap<String, String>>,
    /// The agents whose unanswerable records were logged.
    logged: Once,
}

/// What became of a received Record.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// A reply, a Notify, or an MTP record: taken.
    Taken,
    /// Read, but for nobody here (misaddressed, late, unknown, no room).
    Dropped,
    /// Not a USP Record rdm reads.
    Bad,
}

impl Inbox {
    pub fn new(endpoint_id: String, notifications: mpsc::Sender<Notified>) -> Self {
        Self {
            endpoint_id,
            pending: Mutex::default(),
            notifications,
            next_id: AtomicU64::new(1),
            dropped: AtomicU64::new(0),
            gone: Mutex::default(),
            logged: Once::default(),
        }
    }

    /// A Msg id no other request of this process has.
    pub fn msg_id(&self) -> String {
        format!(
            "rdm-{}-{}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Why `agent` is known to be away: it said it was disconnecting (a
    /// DisconnectRecord) and has not spoken since.
    pub fn away(&self, agent: &str) -> Option<RequestError> {
        let gone = self.gone.lock().unwrap();
        gone.get(agent).map(|reason| {
            RequestError::Offline(format!(
                "USP agent {agent} said it was disconnecting ({reason:?}) and has not reconnected"
            ))
        })
    }

    /// Sends `request` to `agent` with `send`, and waits until `deadline`
    /// for its reply.
    pub async fn exchange(
        &self,
        agent: &str,
        request: &msg::Msg,
        deadline: tokio::time::Instant,
        timeout: Duration,
        send: impl Future<Output = Result<(), RequestError>>,
    ) -> Result<msg::Msg, RequestError> {
        let key = (agent.to_owned(), record::msg_id(request).to_owned());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(key.clone(), tx);
        let _forget = Forget(&self.pending, &key);
        send.await?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(RequestError::Timeout(timeout)),
        }
    }

    /// Counts a dropped Record (`rdm_usp_records_dropped_total{reason}`).
    pub fn count_dropped(&self, reason: &'static str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rdm_usp_records_dropped_total", "reason" => reason).increment(1);
    }

    /// Hands a received Record's Msg to the request it answers, or a
    /// Notify to the service (with `back`, the way to answer it, and the
    /// `onboarding` secret of the topic or path it came on).
    pub fn deliver(&self, payload: &[u8], back: Back, onboarding: Option<&str>) -> Delivered {
        let drop = |reason: &'static str, why: &dyn std::fmt::Display| {
            self.count_dropped(reason);
            tracing::info!(reason = %why, "USP record dropped");
        };
        match record::read(payload) {
            Ok(Received::Msg { from, to, msg }) => {
                if to != self.endpoint_id {
                    drop(
                        "misaddressed",
                        &format!("addressed to {to:?}, not this controller"),
                    );
                    return Delivered::Dropped;
                }
                let msg_id = record::msg_id(&msg).to_owned();
                // It speaks, so it is there.
                self.gone.lock().unwrap().remove(&from);
                if let Some(msg::body::MsgBody::Request(msg::Request {
                    req_type: Some(msg::request::ReqType::Notify(notify)),
                })) = msg.body.as_ref().and_then(|b| b.msg_body.as_ref())
                {
                    let notified = Notified {
                        from,
                        msg_id,
                        notify: notify.clone(),
                        onboarding: onboarding.map(str::to_owned),
                        back,
                        endpoint_id: self.endpoint_id.clone(),
                    };
                    if self.notifications.try_send(notified).is_err() {
                        drop("busy", &"too many notifications waiting to be stored");
                        return Delivered::Dropped;
                    }
                    return Delivered::Taken;
                }
                let key = (from, msg_id);
                let waiting = self.pending.lock().unwrap().remove(&key);
                match waiting {
                    Some(tx) => {
                        let _ = tx.send(msg);
                        Delivered::Taken
                    }
                    None if !self.logged.first(&key.0) => {
                        self.count_dropped("unanswered");
                        Delivered::Dropped
                    }
                    None => {
                        drop(
                            "unanswered",
                            &format!(
                                "msg {:?} from {:?} answers no request (late or unknown; said once per agent)",
                                key.1, key.0
                            ),
                        );
                        Delivered::Dropped
                    }
                }
            }
            Ok(Received::Connect { from, to }) if to == self.endpoint_id => {
                tracing::info!(agent = %from, "USP agent connected");
                self.gone.lock().unwrap().remove(&from);
                Delivered::Taken
            }
            Ok(Received::Disconnect { from, to, reason }) if to == self.endpoint_id => {
                tracing::info!(agent = %from, %reason, "USP agent disconnected");
                self.gone.lock().unwrap().insert(from, reason);
                Delivered::Taken
            }
            Ok(Received::Connect { to, .. } | Received::Disconnect { to, .. }) => {
                drop(
                    "misaddressed",
                    &format!("addressed to {to:?}, not this controller"),
                );
                Delivered::Dropped
            }
            Err(e) => {
                drop("bad_record", &e);
                Delivered::Bad
            }
        }
    }
}

/// Takes a request's slot back, whatever became of it.
struct Forget<'a>(
    &'a Mutex<HashMap<(String, String), oneshot::Sender<msg::Msg>>>,
    &'a (String, String),
);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap().remove(self.1);
    }
}
