//! Password hashing (argon2id, PHC strings) off the async threads.
use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use rand::{Rng, distributions::Alphanumeric};
use rdm_kit::{Error, Result};
use std::sync::LazyLock;

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
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| Error::internal("hashing a password", e))
}

/// True when `password` matches `hash`; with no hash, false after the same work.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
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
    .map_err(|e| Error::internal("checking a password", e))
}

/// A new random password for the platform admin.
pub fn generate() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}
