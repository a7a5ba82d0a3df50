//! Password hashing (argon2id, PHC strings) off the async threads, a few at
//! a time: each hash holds argon2's 19 MiB, and anyone may ask for one by
//! trying to sign in. More than the cores can run wait their turn, briefly;
//! past that the caller is told to come back (503 + Retry-After).
use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use rand::{Rng, distributions::Alphanumeric};
use rdm_kit::{Error, Result};
use std::{sync::LazyLock, time::Duration};
use tokio::sync::Semaphore;

/// Hashes running at once: one per core, each on a thread kept for hashing
/// (so argon2's memory is reused by the same few threads, not spread over
/// the blocking pool's many, each keeping what it freed).
static HASHERS: LazyLock<Hashers> =
    LazyLock::new(|| Hashers::start(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// How long an attempt may wait for a turn before it is turned away.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

type Job = Box<dyn FnOnce() + Send>;

struct Hashers {
    turns: Semaphore,
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
}

impl Hashers {
    fn start(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("rdm-hasher-{i}"))
                .spawn(move || {
                    loop {
                        // Poisoned or closed: nothing more to hash.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
        }
        Self {
            turns: Semaphore::new(threads),
            jobs: std::sync::Mutex::new(tx),
        }
    }
}

/// Runs `work` (a hash) on a hashing thread when a turn is free.
async fn in_turn<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let hashers = &*HASHERS;
    let _turn = tokio::time::timeout(QUEUE_WAIT, hashers.turns.acquire())
        .await
        .map_err(|_| {
            metrics::counter!("rdm_password_hash_shed_total").increment(1);
            Error::new(
                rdm_kit::ErrorCode::Unavailable,
                "too many sign-ins at once; try again in a moment",
            )
            .with_meta("retry_after_s", "1")
        })?
        .map_err(|e| Error::internal(what, e))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(work());
    });
    hashers
        .jobs
        .lock()
        .map_err(|_| Error::internal(what, "hasher queue poisoned"))?
        .send(job)
        .map_err(|e| Error::internal(what, e))?;
    rx.await.map_err(|e| Error::internal(what, e))
}

/// Checked against when there is no user, so an unknown user costs the same.
static DUMMY: LazyLock<String> = LazyLock::new(|| hash_now("not a password of anyone"));

fn hash_now(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        // Cannot fail: default params and a fresh salt are always valid.
        .expect("argon2 with default params hashes")
        .to_string()
}

pub async fn hash(password: String) -> Result<String> {
    in_turn("hashing a password", move || hash_now(&password)).await
}

/// True when `password` matches `hash`; with no hash, false after the same work.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool> {
    in_turn("checking a password", move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        let ok = PasswordHash::new(&hash)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await
}

/// A new random password for the platform admin.
pub fn generate() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}
