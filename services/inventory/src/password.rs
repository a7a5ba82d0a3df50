//! Password hashing (argon2id, PHC strings) off the async threads, a few at
//! a time: each hash holds argon2's 19 MiB, and anyone may ask for one by
//! trying to sign in. More than the cores can run wait their turn, briefly;
//! past that the caller is told to come back (503 + Retry-After).
use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, Version,
    password_hash::{Output, ParamsString, SaltString, rand_core::OsRng},
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
    jobs: std::sync::mpsc::Sender<Job>,
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
            jobs: tx,
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
        .send(job)
        .map_err(|e| Error::internal(what, e))?;
    rx.await.map_err(|e| Error::internal(what, e))
}

/// Checked against when there is no user, so an unknown user costs the same.
static DUMMY: LazyLock<String> = LazyLock::new(|| hash_now("not a password of anyone"));

/// argon2's working memory, in blocks of 1 KiB: 33 MiB, above glibc's
/// largest mmap threshold (32 MiB), so each hash's memory is a mapping of its
/// own, returned to the system when the hash is done. (19 MiB, what the
/// default parameters use, would come from the heap after the first hash
/// and stay there: +25 MB of idle RSS after `rdm up` hashed two passwords.)
const WORK_BLOCKS: usize = 33 * 1024;

/// argon2id (v0x13) of `password` with `params` into `out`.
fn raw_hash(password: &[u8], salt: &[u8], params: &Params, out: &mut [u8]) -> bool {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let memory = vec![Block::default(); WORK_BLOCKS.max(params.block_count())];
    argon2
        .hash_password_into_with_memory(password, salt, out, memory)
        .is_ok()
}

/// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`), as argon2's
/// own `hash_password` writes it.
fn hash_now(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_buf = [0u8; 64];
    let params = Params::default();
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    // Cannot fail: a generated salt decodes, default params are valid, and
    // the output has the default length.
    let salt_bytes = salt
        .decode_b64(&mut salt_buf)
        .expect("a generated salt decodes");
    assert!(raw_hash(password.as_bytes(), salt_bytes, &params, &mut out));
    PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).expect("default params encode"),
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).expect("32 bytes is a valid output")),
    }
    .to_string()
}

/// Whether `password` matches a PHC string argon2id wrote.
fn verify_now(password: &str, hash: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return false;
    };
    let (Ok(params), true) = (
        Params::try_from(&parsed),
        parsed.algorithm == argon2::ARGON2ID_IDENT,
    ) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    // Output compares in constant time.
    raw_hash(password.as_bytes(), salt_bytes, &params, &mut out)
        && Output::new(&out).is_ok_and(|o| o == expected)
}

pub async fn hash(password: String) -> Result<String> {
    in_turn("hashing a password", move || hash_now(&password)).await
}

/// True when `password` matches `hash`; with no hash, false after the same work.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool> {
    in_turn("checking a password", move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        verify_now(&password, &hash) && known
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

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

    #[test]
    fn hashes_are_argon2s_own_phc_strings_both_ways() {
        let ours = hash_now("correct horse");
        assert!(
            ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{ours}"
        );
        assert!(verify_now("correct horse", &ours));
        assert!(!verify_now("wrong horse", &ours));
        // The crate's own verifier accepts ours, and we accept its hashes
        // (the ones stored before this change).
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        let theirs = Argon2::default()
            .hash_password(b"battery staple", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        assert!(verify_now("battery staple", &theirs));
        assert!(!verify_now("battery", &theirs));
        assert!(!verify_now("x", "not a hash"));
    }
}
