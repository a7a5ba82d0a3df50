//! The WebSocket MTP, controller side (TR-369 "WebSocket Binding", in
//! `proto/third_party/usp/mtp-websocket.md`): agents connect to rdm's
//! `GET /usp?eid=<endpoint id>` with the `v1.usp` subprotocol (new agents
//! of a tenant with auto-registration: its `/usp/onboard/<secret>`), or rdm
//! connects to an agent that is a WebSocket server; either way the
//! connection carries each Record as one binary frame in both directions,
//! and rdm pings it (RFC 6455) to keep it open. A frame that is not a USP
//! Record closes the connection with 1003. Either side may speak TLS
//! ([`crate::tls`]).
use crate::{
    inbox::{Back, Delivered, Inbox, RequestError},
    onboarding::WEBSOCKET_PATH,
    record, store,
};
use futures::{SinkExt, StreamExt};
use rdm_kit::db::{Db, Scope};
use rdm_proto::usp_msg as msg;
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        client::IntoClientRequest,
        handshake::server::{ErrorResponse, Request, Response},
        http::{HeaderValue, StatusCode},
        protocol::{CloseFrame, WebSocketConfig, frame::coding::CloseCode},
    },
};

/// The subprotocol both ends name.
pub const SUBPROTOCOL: &str = "v1.usp";
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a connection may take to finish its handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
const PROTOCOL_HEADER: &str = "sec-websocket-protocol";

/// An agent's WebSocket server, as rdm connects to it.
pub struct Dial {
    pub url: String,
    /// Its host, resolved and vetted by the address policy.
    pub addr: SocketAddr,
}

#[derive(Clone)]
struct Conn {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
}

/// Where this replica records the agents whose WebSocket it holds, so the
/// other replicas relay their requests for them here.
pub struct Registry {
    pub db: Db,
    /// This replica's gRPC URL, as the others reach it.
    pub url: String,
}

/// The agents' WebSocket connections, by endpoint id (the newest wins).
pub struct Sockets {
    inbox: Arc<Inbox>,
    /// For agents' `wss://` servers.
    tls: Arc<rustls::ClientConfig>,
    conns: Mutex<HashMap<String, Conn>>,
    next: AtomicU64,
    registry: Option<Registry>,
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(record::MAX_RECORD))
        .max_frame_size(Some(record::MAX_RECORD))
}

impl Sockets {
    pub fn new(
        inbox: Arc<Inbox>,
        registry: Option<Registry>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Arc<Self> {
        Arc::new(Self {
            inbox,
            tls,
            conns: Mutex::default(),
            next: AtomicU64::new(1),
            registry,
        })
    }

    /// The gRPC URL of the replica holding `agent`'s WebSocket, when it is
    /// another replica (None: this one holds it, or none does).
    pub async fn elsewhere(&self, agent: &str) -> rdm_kit::Result<Option<String>> {
        let Some(registry) = &self.registry else {
            return Ok(None);
        };
        if self.conns.lock().unwrap().contains_key(agent) {
            return Ok(None);
        }
        let mut tx = registry.db.begin(Scope::Platform).await?;
        let url = store::connection(&mut tx, agent).await?;
        Ok(url.filter(|u| *u != registry.url))
    }

    /// Records (or forgets) in the database that this replica holds
    /// `agent`'s WebSocket.
    async fn announce(&self, agent: &str, held: bool) {
        let Some(registry) = &self.registry else {
            return;
        };
        let done = async {
            let mut tx = registry.db.begin_write(Scope::Platform).await?;
            if held {
                store::put_connection(&mut tx, agent, &registry.url).await?;
            } else {
                store::delete_connection(&mut tx, agent, &registry.url).await?;
            }
            tx.commit().await
        };
        if let Err(e) = done.await {
            tracing::warn!(%agent, error = %e, "cannot record where the agent's WebSocket is");
        }
    }

    /// Takes agents' connections on `addr`, at most `max` at once (one
    /// more is closed at once: nobody has signed in on this port), over
    /// TLS with `tls`, and then (`by_certificate`) only for an endpoint id
    /// the agent's certificate names; the address it listens on.
    pub async fn listen(
        self: &Arc<Self>,
        addr: SocketAddr,
        max: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
        by_certificate: bool,
    ) -> std::io::Result<SocketAddr> {
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let this = self.clone();
        let room = Arc::new(tokio::sync::Semaphore::new(max));
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = room.clone().try_acquire_owned() else {
                            metrics::counter!("rdm_usp_websockets_refused_total").increment(1);
                            tracing::warn!(%peer, max, "USP WebSocket connections are at their limit: one refused");
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        let (this, tls) = (this.clone(), tls.clone());
                        tokio::spawn(async move {
                            match tls {
                                None => this.accept(tcp, peer, None).await,
                                Some(tls) => this.accept_tls(&tls, tcp, peer, by_certificate).await,
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "USP WebSocket listener cannot accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(local)
    }

    /// One agent's connection over TLS: the TLS handshake, then as
    /// [`Self::accept`], for the endpoint ids its certificate names when
    /// `by_certificate`.
    async fn accept_tls(
        self: Arc<Self>,
        tls: &tokio_rustls::TlsAcceptor,
        tcp: TcpStream,
        peer: SocketAddr,
        by_certificate: bool,
    ) {
        match tokio::time::timeout(HANDSHAKE, tls.accept(tcp)).await {
            Ok(Ok(stream)) => {
                let ids = by_certificate.then(|| {
                    let certs = stream.get_ref().1.peer_certificates();
                    let first = certs.and_then(|c| c.first());
                    first.map(crate::tls::endpoint_ids).unwrap_or_default()
                });
                self.accept(stream, peer, ids).await
            }
            Ok(Err(e)) => tracing::info!(%peer, error = %e, "a TLS handshake failed"),
            Err(_) => tracing::info!(%peer, "a TLS handshake took too long"),
        }
    }

    /// One agent's connection: the handshake (path `/usp`, `eid`, which
    /// must be one of `ids` when the agent's certificate names them, the
    /// subprotocol), then its frames.
    async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        ids: Option<Vec<String>>,
    ) {
        let mut eid = String::new();
        let mut onboarding = None;
        // The handshake callback's type is tungstenite's.
        #[allow(clippy::result_large_err)]
        let check = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
            let refuse = |status: StatusCode, why: &str| {
                let mut e = ErrorResponse::new(Some(why.to_owned()));
                *e.status_mut() = status;
                e
            };
            let path = req.uri().path();
            if let Some(secret) = path.strip_prefix(WEBSOCKET_PATH) {
                if secret.is_empty() || secret.len() > 64 {
                    return Err(refuse(StatusCode::NOT_FOUND, "no such onboarding path"));
                }
                onboarding = Some(secret.to_owned());
            } else if path != "/usp" {
                return Err(refuse(
                    StatusCode::NOT_FOUND,
                    "USP agents connect to /usp (or their tenant's onboarding path)",
                ));
            }
            eid = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .find(|(k, _)| k == "eid")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if eid.is_empty() || eid.len() > 256 {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "the agent's endpoint id goes in ?eid=",
                ));
            }
            if let Some(ids) = &ids
                && !ids.contains(&eid)
            {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "the agent's certificate does not name this endpoint id (urn:bbf:usp:id:...)",
                ));
            }
            if !offers_subprotocol(req.headers().get(PROTOCOL_HEADER)) {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "the subprotocol v1.usp is required",
                ));
            }
            resp.headers_mut()
                .insert(PROTOCOL_HEADER, HeaderValue::from_static(SUBPROTOCOL));
            Ok(resp)
        };
        let handshake =
            tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config()));
        match tokio::time::timeout(HANDSHAKE, handshake).await {
            Err(_) => tracing::info!(%peer, "a WebSocket handshake took too long"),
            Ok(Ok(ws)) => {
                tracing::info!(agent = %eid, %peer, "USP agent connected over WebSocket");
                let (conn, rx) = self.register(&eid);
                self.announce(&eid, true).await;
                self.run(ws, eid, onboarding, conn, rx).await;
            }
            Ok(Err(e)) => tracing::info!(%peer, error = %e, "a WebSocket handshake failed"),
        }
    }

    /// A new connection for `agent`, replacing any other it had.
    fn register(&self, agent: &str) -> (Conn, mpsc::Receiver<Vec<u8>>) {
        let (tx, rx) = mpsc::channel(64);
        let conn = Conn {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            tx,
        };
        self.conns
            .lock()
            .unwrap()
            .insert(agent.to_owned(), conn.clone());
        (conn, rx)
    }

    /// Runs a connection until either end closes it: frames in to the
    /// inbox (with the `onboarding` secret of its path), Records for the
    /// agent out, a ping now and then.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        ws: WebSocketStream<S>,
        agent: String,
        onboarding: Option<String>,
        conn: Conn,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) {
        let (mut sink, mut frames) = ws.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let close = loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(Ok(Message::Binary(bytes))) => {
                        let back = Back::Socket(conn.tx.clone());
                        if self.inbox.deliver(&bytes, back, onboarding.as_deref()) == Delivered::Bad {
                            break Some("not a USP Record");
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        self.inbox.count_dropped("bad_record");
                        break Some("USP Records come in binary frames");
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                    Some(Ok(_)) => {}
                },
                out = rx.recv() => match out {
                    Some(record) => {
                        if sink.send(Message::Binary(record.into())).await.is_err() {
                            break None;
                        }
                    }
                    None => break None,
                },
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break None;
                    }
                }
            }
        };
        if let Some(reason) = close {
            tracing::info!(%agent, reason, "closing a USP agent's WebSocket (1003)");
            let frame = CloseFrame {
                code: CloseCode::Unsupported,
                reason: reason.into(),
            };
            let _ = sink.send(Message::Close(Some(frame))).await;
        }
        let gone = {
            let mut conns = self.conns.lock().unwrap();
            let current = conns.get(&agent).is_some_and(|c| c.id == conn.id);
            if current {
                conns.remove(&agent);
            }
            current
        };
        if gone {
            self.announce(&agent, false).await;
        }
        tracing::info!(%agent, "USP agent's WebSocket closed");
    }

    /// Sends `request` to `agent` on its connection (made first, to `dial`,
    /// when the agent is a server rdm connects to); its reply.
    pub async fn request(
        self: &Arc<Self>,
        agent: &str,
        dial: Option<&Dial>,
        request: msg::Msg,
        timeout: Duration,
    ) -> Result<msg::Msg, RequestError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let open = self.conns.lock().unwrap().get(agent).cloned();
        let conn = match (open, dial) {
            (Some(conn), _) => conn,
            (None, Some(dial)) => self.dial(agent, dial, deadline).await?,
            (None, None) => {
                return Err(RequestError::Offline(format!(
                    "USP agent {agent} is not connected to rdm over WebSocket"
                )));
            }
        };
        let bytes = record::wrap(&self.inbox.endpoint_id, agent, &request);
        let send = async {
            conn.tx
                .send(bytes)
                .await
                .map_err(|_| RequestError::Offline(format!("USP agent {agent}'s WebSocket closed")))
        };
        self.inbox
            .exchange(agent, &request, deadline, timeout, send)
            .await
    }

    /// Connects to an agent's WebSocket server; the connection, kept for
    /// the requests that follow.
    async fn dial(
        self: &Arc<Self>,
        agent: &str,
        dial: &Dial,
        deadline: tokio::time::Instant,
    ) -> Result<Conn, RequestError> {
        let failed = |why: String| {
            RequestError::Offline(format!(
                "cannot connect to USP agent {agent} at {}: {why}",
                dial.url
            ))
        };
        let mut request = dial
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| failed(e.to_string()))?;
        request
            .headers_mut()
            .insert(PROTOCOL_HEADER, HeaderValue::from_static(SUBPROTOCOL));
        let connect = async {
            let tcp = TcpStream::connect(dial.addr)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let _ = tcp.set_nodelay(true);
            // TLS for wss:// (checked for the URL's host), none for ws://.
            let tls = tokio_tungstenite::Connector::Rustls(self.tls.clone());
            tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(config()), Some(tls))
                .await
                .map_err(|e| failed(e.to_string()))
        };
        let (ws, response) = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| failed("no answer in time".into()))??;
        if !offers_subprotocol(response.headers().get(PROTOCOL_HEADER)) {
            return Err(failed("it did not take the subprotocol v1.usp".into()));
        }
        let (conn, rx) = self.register(agent);
        let (this, agent) = (self.clone(), agent.to_owned());
        let kept = conn.clone();
        tokio::spawn(async move { this.run(ws, agent, None, kept, rx).await });
        Ok(conn)
    }
}

/// Whether a Sec-WebSocket-Protocol header names v1.usp.
fn offers_subprotocol(header: Option<&HeaderValue>) -> bool {
    header
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.split(',').any(|p| p.trim() == SUBPROTOCOL))
}
