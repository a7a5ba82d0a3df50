//! One signed-in session per router, shared by every caller: signed in when
//! first needed (one sign-in however many callers wait for it), kept alive
//! with heartbeats at the router's interval while in use, signed out when
//! idle or at shutdown, and signed in again when the router forgot it.
//! Writes are serialised on the session: each spends the CSRF token the
//! previous one was given. A refused password or a lock-out holds further
//! sign-ins back, so rdm never locks a router out by retrying.
use crate::router::{LoggedIn, Refused, Router, Scheme};
use rdm_kit::{Error, ErrorCode, Result};
use serde_json::Value;
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// How long a refused password holds sign-ins back (unless the endpoint's
/// password changes): the router locks the user out after three refusals.
const PASSWORD_HOLD: Duration = Duration::from_secs(60);
/// The heartbeat interval until the router says its own.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// What a session is for: a tenant's router, signing in as a user with a
/// password (by its digest: a new password is a new session).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    pub tenant_id: String,
    pub origin: String,
    pub username: String,
    pub password_digest: [u8; 32],
    pub scheme: Scheme,
}

/// Every session of this replica.
#[derive(Clone)]
pub struct Sessions(Arc<Pool>);

struct Pool {
    map: Mutex<HashMap<Key, Arc<Session>>>,
    /// Unused this long, a session is signed out.
    idle: Duration,
    /// Set at shutdown: sessions are signed out, not kept.
    closing: AtomicBool,
}

pub struct Session {
    key: Key,
    password: String,
    state: tokio::sync::Mutex<State>,
    last_used: Mutex<Instant>,
    pool: Weak<Pool>,
}

struct State {
    router: Router,
    login: Option<LoggedIn>,
    /// No sign-in before this instant, and the error to answer meanwhile.
    hold: Option<(Instant, Error)>,
    interval: Duration,
    keeping_alive: bool,
}

impl Sessions {
    /// Sessions held before idle ones are swept out.
    const SWEEP_AT: usize = 1024;

    pub fn new(idle: Duration) -> Self {
        Self(Arc::new(Pool {
            map: Mutex::default(),
            idle,
            closing: AtomicBool::new(false),
        }))
    }

    /// The session for `key`, made when there is none; `router` (a client
    /// vetted just now) serves its next requests.
    pub fn get(&self, key: Key, password: &str, router: Router) -> Arc<Session> {
        let mut map = self.0.map.lock().unwrap_or_else(|e| e.into_inner());
        // Sessions that never signed in (a wrong address, a refused
        // password) have no keep-alive to drop them: the idle ones go here.
        if map.len() >= Self::SWEEP_AT {
            map.retain(|_, s| {
                let signed_out = s
                    .state
                    .try_lock()
                    .is_ok_and(|st| st.login.is_none() && !st.keeping_alive);
                !(signed_out && s.idle_for() >= self.0.idle)
            });
        }
        let session = map
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Session {
                    key,
                    password: password.to_owned(),
                    state: tokio::sync::Mutex::new(State {
                        router: router.clone(),
                        login: None,
                        hold: None,
                        interval: DEFAULT_INTERVAL,
                        keeping_alive: false,
                    }),
                    last_used: Mutex::new(Instant::now()),
                    pool: Arc::downgrade(&self.0),
                })
            })
            .clone();
        drop(map);
        session.touch();
        if let Ok(mut state) = session.state.try_lock() {
            state.router = router;
        }
        session
    }

    /// Signs every session out (at shutdown), and keeps none from now on.
    pub async fn close_all(&self) {
        self.0.closing.store(true, Ordering::Relaxed);
        let all: Vec<Arc<Session>> = {
            let mut map = self.0.map.lock().unwrap_or_else(|e| e.into_inner());
            map.drain().map(|(_, s)| s).collect()
        };
        let n = all.len();
        futures::future::join_all(all.iter().map(|s| s.logout())).await;
        if n > 0 {
            tracing::info!(sessions = n, "signed out of every router at shutdown");
        }
    }
}

impl Session {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// Signs in unless signed in; whether it signed in now.
    pub async fn login(self: &Arc<Self>) -> Result<(LoggedIn, bool)> {
        let mut state = self.state.lock().await;
        self.ensure(&mut state).await
    }

    async fn ensure(self: &Arc<Self>, state: &mut State) -> Result<(LoggedIn, bool)> {
        if let Some(login) = &state.login {
            return Ok((login.clone(), false));
        }
        let now = Instant::now();
        if let Some((until, e)) = &state.hold {
            if now < *until {
                let wait = (*until - now).as_secs().max(1);
                return Err(e.clone().with_meta("retry_after_s", wait.to_string()));
            }
            state.hold = None;
        }
        let refused = match state
            .router
            .login(self.key.scheme, &self.key.username, &self.password)
            .await?
        {
            Ok(login) => {
                metrics::counter!("rdm_hg630_logins_total", "outcome" => "ok").increment(1);
                state.login = Some(login.clone());
                if !state.keeping_alive {
                    state.keeping_alive = true;
                    tokio::spawn(keep_alive(Arc::downgrade(self)));
                }
                return Ok((login, true));
            }
            Err(refused) => refused,
        };
        let (e, hold) = match refused {
            Refused::Password(count) => (
                Error::new(
                    ErrorCode::UpstreamAuth,
                    format!(
                        "the router refused the stored password for {} (failed sign-ins: {count}); no sign-in is tried again for {} s unless the endpoint's password changes",
                        self.key.username,
                        PASSWORD_HOLD.as_secs()
                    ),
                )
                .with_meta("failure_count", count.to_string()),
                Some(PASSWORD_HOLD),
            ),
            Refused::Locked(wait) => (
                Error::new(
                    ErrorCode::DeviceLocked,
                    format!(
                        "the router locked {} out after failed sign-ins for {} s; no sign-in is tried before that",
                        self.key.username,
                        wait.as_secs()
                    ),
                )
                .with_meta("wait_s", wait.as_secs().to_string()),
                Some(wait),
            ),
            Refused::Busy(why) => (
                Error::new(
                    ErrorCode::DeviceBusy,
                    format!("the router refused the sign-in: {why} (another session is open on it)"),
                )
                .with_meta("retry_after_s", "5"),
                None,
            ),
            Refused::Other(why) => (
                Error::new(
                    ErrorCode::DeviceError,
                    format!("the router refused the sign-in: {why}"),
                ),
                None,
            ),
        };
        metrics::counter!("rdm_hg630_logins_total", "outcome" => e.code.reason()).increment(1);
        if let Some(hold) = hold {
            state.hold = Some((now + hold, e.clone()));
        }
        Err(e)
    }

    /// A read on the shared session, signing in (again) as needed.
    pub async fn read(self: &Arc<Self>, path: &str) -> Result<Value> {
        for _ in 0..2 {
            let (router, cookie) = {
                let mut state = self.state.lock().await;
                let (login, _) = self.ensure(&mut state).await?;
                (state.router.clone(), login.cookie)
            };
            match router.read(path, &cookie).await? {
                Some(reply) => return Ok(reply),
                None => self.forget(&cookie).await,
            }
        }
        Err(gone())
    }

    /// A write with the session's CSRF token; the reply carries the next.
    /// Writes wait for each other: a token is spent once.
    pub async fn write(self: &Arc<Self>, path: &str, data: Option<Value>) -> Result<Value> {
        let mut state = self.state.lock().await;
        for _ in 0..2 {
            let (login, _) = self.ensure(&mut state).await?;
            let reply = state
                .router
                .write(path, &login.cookie, &login.csrf, data.clone())
                .await?;
            let Some(reply) = reply else {
                state.login = None;
                continue;
            };
            if let (Some(next), Some(login)) = (crate::router::csrf_of(&reply), &mut state.login) {
                login.csrf = next;
            }
            return match reply["errcode"].as_i64() {
                Some(0) | None => Ok(reply),
                Some(code) => Err(Error::new(
                    ErrorCode::DeviceError,
                    format!("the router refused {path}: errcode {code}"),
                )
                .with_meta("errcode", code.to_string())),
            };
        }
        Err(gone())
    }

    /// Forgets the session `cookie` if it is still the current one.
    async fn forget(&self, cookie: &str) {
        let mut state = self.state.lock().await;
        if state.login.as_ref().is_some_and(|l| l.cookie == cookie) {
            state.login = None;
        }
    }

    /// Sends a heartbeat now; the router's interval.
    pub async fn heartbeat(self: &Arc<Self>) -> Result<Duration> {
        let reply = self.read("/api/system/heartbeat").await?;
        let interval = interval_of(&reply);
        self.state.lock().await.interval = interval;
        Ok(interval)
    }

    /// Whether a session is open that the router still accepts (checked
    /// with a heartbeat, which also keeps it alive).
    pub async fn is_logged_in(self: &Arc<Self>) -> Result<bool> {
        let (router, cookie) = {
            let state = self.state.lock().await;
            match &state.login {
                Some(login) => (state.router.clone(), login.cookie.clone()),
                None => return Ok(false),
            }
        };
        Ok(router
            .read("/api/system/heartbeat", &cookie)
            .await?
            .is_some())
    }

    /// Signs out; whether a session was open.
    pub async fn logout(&self) -> bool {
        let mut state = self.state.lock().await;
        let Some(login) = state.login.take() else {
            return false;
        };
        let done = state
            .router
            .write("/api/system/user_logout", &login.cookie, &login.csrf, None)
            .await;
        if let Err(e) = done {
            tracing::debug!(error = %e.message, "signing out of a router");
        }
        true
    }

    /// The level the router gave at sign-in.
    pub async fn level(&self) -> i32 {
        self.state
            .lock()
            .await
            .login
            .as_ref()
            .map_or(0, |l| l.level)
    }

    /// After a reboot the router has forgotten every session.
    pub async fn forget_all(&self) {
        self.state.lock().await.login = None;
    }
}

fn gone() -> Error {
    Error::new(
        ErrorCode::DeviceError,
        "the router dropped the session again right after signing in",
    )
}

/// The heartbeat interval a reply gives (`{"interval":"5000"}`, ms).
fn interval_of(reply: &Value) -> Duration {
    let ms = match &reply["interval"] {
        Value::String(s) => s.trim().parse().ok(),
        v => v.as_u64(),
    };
    Duration::from_millis(ms.unwrap_or(5000).clamp(100, 60_000))
}

/// Heartbeats while the session is in use (the first right after sign-in,
/// which tells the router's interval); signs out when it has been idle for
/// the pool's idle time, or at shutdown.
async fn keep_alive(session: Weak<Session>) {
    loop {
        let Some(s) = session.upgrade() else {
            return;
        };
        let Some(pool) = s.pool.upgrade() else {
            return;
        };
        if s.idle_for() >= pool.idle || pool.closing.load(Ordering::Relaxed) {
            pool.map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, other| !Arc::ptr_eq(other, &s));
            if s.logout().await {
                tracing::debug!(router = %s.key.origin, "signed out of an idle router");
            }
            s.state.lock().await.keeping_alive = false;
            return;
        }
        let (router, cookie) = {
            let mut state = s.state.lock().await;
            let Some(cookie) = state.login.as_ref().map(|l| l.cookie.clone()) else {
                state.keeping_alive = false;
                return;
            };
            (state.router.clone(), cookie)
        };
        match router.read("/api/system/heartbeat", &cookie).await {
            Ok(Some(reply)) => s.state.lock().await.interval = interval_of(&reply),
            Ok(None) => s.forget(&cookie).await,
            Err(e) => tracing::debug!(error = %e.message, "a router heartbeat failed"),
        }
        let interval = s.state.lock().await.interval;
        drop((s, pool));
        tokio::time::sleep(interval).await;
    }
}
