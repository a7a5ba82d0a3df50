//! A Mellophone authentication server, written from PEERS.md's "Mellophone
//! auth server": every endpoint of its table with the parameters it names,
//! XML replies, plain-text 403s for logic errors, 500 for a missing
//! parameter, lock-out after N failed logins in the lock-out window
//! (5 and 10 minutes until setsettings changes them), state per session
//! that moves with changeappsesid, and server tokens for setsettings and
//! user management.
//!
//! Where PEERS.md is silent this simulator decides, and says so here:
//! - the 403 texts are `bad session`, `bad credentials`, `permission
//!   denied` and `user <login> is locked out`;
//! - a session's "linked sessions" are the other sessions of its user:
//!   logout ends them all;
//! - changeuserpwd needs a session whose user has `admin="true"`;
//! - an unknown user in changeuserpwd, update and delete is 404 `no such
//!   user`; creating an existing sid or login is 400 `user exists`;
//! - a login's failures count from the first in the window; a correct
//!   password while locked is refused too;
//! - users carry any attributes; `pwd` is never sent back, `admin` is.
// Handlers answer early with the server's whole reply as their error.
#![allow(clippy::result_large_err)]
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A user: every attribute, `sid`, `login` and `pwd` included.
pub type User = BTreeMap<String, String>;

/// A login provider and the users it holds.
#[derive(Clone, Debug)]
pub struct Provider {
    pub id: String,
    pub kind: String,
    pub url: String,
    /// The provider groups it is in.
    pub groups: Vec<String>,
    pub users: Vec<User>,
}

/// The server's settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub providers: Vec<Provider>,
    /// The token setsettings wants.
    pub settings_token: String,
    /// The token user management and getuserlist want.
    pub user_manage_token: String,
}

/// A user from `(name, value)` pairs.
pub fn user(attributes: &[(&str, &str)]) -> User {
    attributes
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

impl Config {
    /// One provider (`ldap1`, in group `main`) with these users.
    pub fn with_users(users: Vec<User>) -> Self {
        Self {
            providers: vec![Provider {
                id: "ldap1".into(),
                kind: "ldap".into(),
                url: "ldap://ldap.example:389".into(),
                groups: vec!["main".into()],
                users,
            }],
            settings_token: "settings-secret".into(),
            user_manage_token: "manage-secret".into(),
        }
    }
}

/// A reply that replaces the server's own (for hostile-reply tests).
#[derive(Clone, Debug)]
pub enum Forced {
    /// This body, with status 200.
    Body(String),
    /// A body of this many bytes, streamed.
    Huge(usize),
    /// This status and text.
    Status(u16, String),
}

struct Session {
    login: String,
    ip: String,
}

struct Server {
    config: Config,
    sessions: HashMap<String, Session>,
    states: HashMap<String, Bytes>,
    /// Per login: failures in the window and when the window began.
    failures: HashMap<String, (u32, Instant)>,
    attempts_allowed: u32,
    lockout: Duration,
    forced: Option<Forced>,
    requests: u64,
}

type Shared = Arc<Mutex<Server>>;

/// A running server.
pub struct MellophoneSim {
    pub addr: SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MellophoneSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MellophoneSim {
    /// The base URL (`http://127.0.0.1:port/mellophone`).
    pub fn base_url(&self) -> String {
        format!("http://{}/mellophone", self.addr)
    }

    /// Answers every request with `forced` instead (None: the real replies).
    pub fn force(&self, forced: Option<Forced>) {
        self.state.lock().unwrap().forced = forced;
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Sessions open now.
    pub fn sessions(&self) -> usize {
        self.state.lock().unwrap().sessions.len()
    }

    /// The lock-out policy now: (attempts allowed, lock-out).
    pub fn lockout_policy(&self) -> (u32, Duration) {
        let s = self.state.lock().unwrap();
        (s.attempts_allowed, s.lockout)
    }

    /// A user's attributes by login (the password included).
    pub fn user(&self, login: &str) -> Option<User> {
        self.state.lock().unwrap().find(login).cloned()
    }
}

pub async fn start(addr: SocketAddr, config: Config) -> std::io::Result<MellophoneSim> {
    let state = Arc::new(Mutex::new(Server {
        config,
        sessions: HashMap::new(),
        states: HashMap::new(),
        failures: HashMap::new(),
        attempts_allowed: 5,
        lockout: Duration::from_secs(600),
        forced: None,
        requests: 0,
    }));
    let routes = Router::new()
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/isauthenticated", get(is_authenticated))
        .route("/checkcredentials", get(check_credentials))
        .route("/checkname", get(check_name))
        .route("/changepwd", get(change_pwd))
        .route("/changeuserpwd", get(change_user_pwd))
        .route("/changeappsesid", get(change_app_sesid))
        .route("/importgroupsproviders", get(import_groups_providers))
        .route("/getproviderlist", get(provider_list))
        .route("/getuserlist", get(user_list))
        .route("/setsettings", get(set_settings))
        .route("/user/create", post(create_user))
        .route("/user/{sid}", post(update_user).delete(delete_user))
        .route("/setstate", post(set_state))
        .route("/getstate", get(get_state))
        .layer(axum::middleware::from_fn_with_state(state.clone(), forced))
        .with_state(state.clone());
    let app = Router::new().nest("/mellophone", routes);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(MellophoneSim { addr, state, task })
}

/// Counts the request and answers with the forced reply when one is set.
async fn forced(
    State(state): State<Shared>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let forced = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        s.forced.clone()
    };
    match forced {
        None => next.run(req).await,
        Some(Forced::Body(body)) => body.into_response(),
        Some(Forced::Status(status, text)) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            text,
        )
            .into_response(),
        Some(Forced::Huge(len)) => {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = len.div_ceil(chunk.len());
            let stream = futures::stream::iter(
                (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
            );
            Body::from_stream(stream).into_response()
        }
    }
}

type Reply = Result<Response, Response>;
type Params = Query<HashMap<String, String>>;

fn forbidden(reason: &str) -> Response {
    (StatusCode::FORBIDDEN, reason.to_owned()).into_response()
}

fn xml(body: String) -> Response {
    ([("content-type", "text/xml; charset=utf-8")], body).into_response()
}

/// A parameter the call needs: 500 when it is missing, as Mellophone does.
fn need<'a>(q: &'a HashMap<String, String>, name: &str) -> Result<&'a str, Response> {
    q.get(name).map(String::as_str).ok_or_else(|| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("java.lang.NullPointerException: parameter {name}"),
        )
            .into_response()
    })
}

fn escape(value: &str) -> String {
    value
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn user_xml(u: &User) -> String {
    let attrs: String = u
        .iter()
        .filter(|(k, _)| k.as_str() != "pwd")
        .map(|(k, v)| format!(" {k}=\"{}\"", escape(v)))
        .collect();
    format!("<user{attrs}/>")
}

impl Server {
    fn users(&self) -> impl Iterator<Item = &User> {
        self.config.providers.iter().flat_map(|p| &p.users)
    }

    fn find(&self, login: &str) -> Option<&User> {
        self.users()
            .find(|u| u.get("login").map(String::as_str) == Some(login))
    }

    fn find_mut(&mut self, key: &str, value: &str) -> Option<&mut User> {
        self.config
            .providers
            .iter_mut()
            .flat_map(|p| &mut p.users)
            .find(|u| u.get(key).map(String::as_str) == Some(value))
    }

    /// Checks a login and password, counting failures toward the lock-out.
    fn check(&mut self, login: &str, pwd: &str) -> Result<User, Response> {
        let now = Instant::now();
        if let Some((n, since)) = self.failures.get(login) {
            if now.duration_since(*since) >= self.lockout {
                self.failures.remove(login);
            } else if *n >= self.attempts_allowed {
                return Err(forbidden(&format!("user {login} is locked out")));
            }
        }
        let found = self
            .find(login)
            .filter(|u| u.get("pwd").map(String::as_str) == Some(pwd))
            .cloned();
        match found {
            Some(u) => {
                self.failures.remove(login);
                Ok(u)
            }
            None => {
                self.failures.entry(login.to_owned()).or_insert((0, now)).0 += 1;
                Err(forbidden("bad credentials"))
            }
        }
    }

    /// The user of a signed-in session.
    fn session_user(&self, sesid: &str) -> Result<User, Response> {
        self.sessions
            .get(sesid)
            .and_then(|s| self.find(&s.login))
            .cloned()
            .ok_or_else(|| forbidden("bad session"))
    }

    fn token(&self, q: &HashMap<String, String>, want: &str) -> Result<(), Response> {
        if need(q, "token")? == want {
            Ok(())
        } else {
            Err(forbidden("permission denied"))
        }
    }

    /// Ends the sessions of `login` and their states.
    fn end_sessions_of(&mut self, login: &str) {
        let ended: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.login == login)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            self.sessions.remove(&id);
            self.states.remove(&id);
        }
    }
}

async fn login(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    let (sesid, login, pwd) = (need(&q, "sesid")?, need(&q, "login")?, need(&q, "pwd")?);
    // The session id is signed out first, whatever comes next.
    s.sessions.remove(sesid);
    s.check(login, pwd)?;
    if let Some(gp) = q.get("gp").filter(|g| !g.is_empty()) {
        let in_group = s
            .config
            .providers
            .iter()
            .filter(|p| p.groups.contains(gp))
            .any(|p| {
                p.users
                    .iter()
                    .any(|u| u.get("login").map(String::as_str) == Some(login))
            });
        if !in_group {
            return Err(forbidden("bad credentials"));
        }
    }
    let ip = q.get("ip").cloned().unwrap_or_default();
    s.sessions.insert(
        sesid.to_owned(),
        Session {
            login: login.to_owned(),
            ip,
        },
    );
    Ok(StatusCode::OK.into_response())
}

async fn logout(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    let sesid = need(&q, "sesid")?;
    let login = s
        .sessions
        .get(sesid)
        .map(|session| session.login.clone())
        .ok_or_else(|| forbidden("bad session"))?;
    s.end_sessions_of(&login);
    Ok(StatusCode::OK.into_response())
}

async fn is_authenticated(State(s): State<Shared>, Query(q): Params) -> Reply {
    let s = s.lock().unwrap();
    let sesid = need(&q, "sesid")?;
    let user = s.session_user(sesid)?;
    let ip = q.get("ip").map(String::as_str).unwrap_or_default();
    let bound = &s.sessions[sesid].ip;
    if !ip.is_empty() && !bound.is_empty() && ip != bound {
        return Err(forbidden("bad session: signed in from another address"));
    }
    Ok(xml(user_xml(&user)))
}

async fn check_credentials(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    let user = s.check(need(&q, "login")?, need(&q, "pwd")?)?;
    Ok(xml(user_xml(&user)))
}

async fn check_name(State(s): State<Shared>, Query(q): Params) -> Reply {
    let s = s.lock().unwrap();
    s.session_user(need(&q, "sesid")?)?;
    Ok(match s.find(need(&q, "name")?) {
        Some(u) => xml(user_xml(u)),
        None => StatusCode::OK.into_response(),
    })
}

async fn change_pwd(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    let user = s.session_user(need(&q, "sesid")?)?;
    let login = user["login"].clone();
    s.check(&login, need(&q, "oldpwd")?)?;
    let new = need(&q, "newpwd")?.to_owned();
    if let Some(u) = s.find_mut("login", &login) {
        u.insert("pwd".into(), new);
    }
    Ok(StatusCode::OK.into_response())
}

async fn change_user_pwd(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    let me = s.session_user(need(&q, "sesid")?)?;
    if me.get("admin").map(String::as_str) != Some("true") {
        return Err(forbidden("permission denied"));
    }
    let (username, new) = (need(&q, "username")?, need(&q, "newpwd")?.to_owned());
    let u = s
        .find_mut("login", username)
        .ok_or_else(|| (StatusCode::NOT_FOUND, "no such user").into_response())?;
    u.insert("pwd".into(), new);
    Ok(StatusCode::OK.into_response())
}

async fn change_app_sesid(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    let (old, new) = (need(&q, "oldsesid")?, need(&q, "newsesid")?);
    let session = s
        .sessions
        .remove(old)
        .ok_or_else(|| forbidden("bad session"))?;
    s.sessions.insert(new.to_owned(), session);
    if let Some(state) = s.states.remove(old) {
        s.states.insert(new.to_owned(), state);
    }
    Ok(StatusCode::OK.into_response())
}

async fn import_groups_providers(State(s): State<Shared>) -> Reply {
    let s = s.lock().unwrap();
    let mut groups: Vec<&str> = s
        .config
        .providers
        .iter()
        .flat_map(|p| p.groups.iter().map(String::as_str))
        .collect();
    groups.sort();
    groups.dedup();
    Ok(groups.join(" ").into_response())
}

async fn provider_list(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    s.check(need(&q, "login")?, need(&q, "pwd")?)?;
    let gp = q.get("gp").map(String::as_str).unwrap_or_default();
    let providers: String = s
        .config
        .providers
        .iter()
        .filter(|p| gp.is_empty() || p.groups.iter().any(|g| g == gp))
        .map(|p| {
            format!(
                "<provider id=\"{}\" type=\"{}\" url=\"{}\" groups=\"{}\"/>",
                escape(&p.id),
                escape(&p.kind),
                escape(&p.url),
                escape(&p.groups.join(" "))
            )
        })
        .collect();
    Ok(xml(format!("<providers>{providers}</providers>")))
}

async fn user_list(State(s): State<Shared>, Query(q): Params) -> Reply {
    let s = s.lock().unwrap();
    s.token(&q, &s.config.user_manage_token)?;
    let gp = need(&q, "gp")?;
    let pid = q.get("pid").map(String::as_str).unwrap_or_default();
    let blocks: String = s
        .config
        .providers
        .iter()
        .filter(|p| p.groups.iter().any(|g| g == gp) && (pid.is_empty() || p.id == pid))
        .map(|p| {
            let users: String = p.users.iter().map(user_xml).collect();
            format!("<users pid=\"{}\">{users}</users>", escape(&p.id))
        })
        .collect();
    Ok(xml(blocks))
}

async fn set_settings(State(s): State<Shared>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    s.token(&q, &s.config.settings_token.clone())?;
    let number = |name| -> Result<u64, Response> {
        need(&q, name)?.parse().map_err(|_| {
            (StatusCode::BAD_REQUEST, format!("{name} is not a number")).into_response()
        })
    };
    let (minutes, attempts) = (number("lockouttime")?, number("loginattemptsallowed")?);
    s.lockout = Duration::from_secs(minutes * 60);
    s.attempts_allowed = attempts.try_into().unwrap_or(u32::MAX);
    Ok(StatusCode::OK.into_response())
}

/// A `<user .../>` body's attributes.
fn parsed_user(body: &[u8]) -> Result<User, Response> {
    let bad = |why: String| (StatusCode::BAD_REQUEST, why).into_response();
    let text = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
    let doc = roxmltree::Document::parse(text).map_err(|e| bad(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("user") {
        return Err(bad("expected <user>".into()));
    }
    Ok(root
        .attributes()
        .map(|a| (a.name().to_owned(), a.value().to_owned()))
        .collect())
}

async fn create_user(State(s): State<Shared>, Query(q): Params, body: Bytes) -> Reply {
    let mut s = s.lock().unwrap();
    s.token(&q, &s.config.user_manage_token.clone())?;
    let user = parsed_user(&body)?;
    let field = |name: &str| {
        user.get(name)
            .cloned()
            .ok_or_else(|| (StatusCode::BAD_REQUEST, format!("{name} is required")).into_response())
    };
    let (sid, login) = (field("sid")?, field("login")?);
    if s.find_mut("sid", &sid).is_some() || s.find(&login).is_some() {
        return Err((StatusCode::BAD_REQUEST, "user exists").into_response());
    }
    s.config.providers[0].users.push(user);
    Ok(StatusCode::OK.into_response())
}

async fn update_user(
    State(s): State<Shared>,
    Path(sid): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> Reply {
    let mut s = s.lock().unwrap();
    s.token(&q, &s.config.user_manage_token.clone())?;
    let changes = parsed_user(&body)?;
    let user = s
        .find_mut("sid", &sid)
        .ok_or_else(|| (StatusCode::NOT_FOUND, "no such user").into_response())?;
    user.extend(changes);
    user.insert("sid".into(), sid);
    Ok(StatusCode::OK.into_response())
}

async fn delete_user(State(s): State<Shared>, Path(sid): Path<String>, Query(q): Params) -> Reply {
    let mut s = s.lock().unwrap();
    s.token(&q, &s.config.user_manage_token.clone())?;
    let login = s
        .find_mut("sid", &sid)
        .map(|u| u.get("login").cloned().unwrap_or_default())
        .ok_or_else(|| (StatusCode::NOT_FOUND, "no such user").into_response())?;
    for p in &mut s.config.providers {
        p.users.retain(|u| u.get("sid") != Some(&sid));
    }
    s.end_sessions_of(&login);
    Ok(StatusCode::OK.into_response())
}

async fn set_state(State(s): State<Shared>, Query(q): Params, body: Bytes) -> Reply {
    let mut s = s.lock().unwrap();
    let sesid = need(&q, "sesid")?;
    s.session_user(sesid)?;
    s.states.insert(sesid.to_owned(), body);
    Ok(StatusCode::OK.into_response())
}

async fn get_state(State(s): State<Shared>, Query(q): Params) -> Reply {
    let s = s.lock().unwrap();
    let sesid = need(&q, "sesid")?;
    s.session_user(sesid)?;
    Ok(s.states
        .get(sesid)
        .cloned()
        .unwrap_or_default()
        .into_response())
}
