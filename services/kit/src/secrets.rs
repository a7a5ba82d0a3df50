//! Secrets at rest: XChaCha20-Poly1305 under a keyring. The first key seals,
//! every key opens, so a key can be rotated while services run: add the new
//! key first, re-encrypt, then retire the old one. Each ciphertext names its
//! key and is bound (as associated data) to where it is stored, so a sealed
//! value copied to another tenant's row does not open.
use crate::error::{Error, Result};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use chacha20poly1305::{
    KeyInit, XChaCha20Poly1305, XNonce,
    aead::{Aead, AeadCore, Payload, rand_core::OsRng},
};
use sha2::{Digest, Sha256};
use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

/// One key: its id (from its digest) and the cipher.
#[derive(Clone)]
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            bytes.len() == 32,
            "a secret key is 32 bytes (base64), not {}",
            bytes.len()
        );
        let id = Sha256::digest(bytes)
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self {
            id,
            cipher: XChaCha20Poly1305::new_from_slice(bytes)?,
        })
    }
}

/// The keys, and the file they came from: a running service re-reads it
/// when it changes, so `rdm rotate-secret-key` needs no restart.
#[derive(Clone)]
pub struct Keyring {
    keys: Arc<RwLock<Vec<Key>>>,
    file: Option<Arc<KeyFile>>,
}

struct KeyFile {
    path: PathBuf,
    seen: Mutex<Option<SystemTime>>,
}

impl fmt::Debug for Keyring {
    // By hand: ids only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

/// A new random key, base64.
pub fn generate_key() -> String {
    B64.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn parse_keys<S: AsRef<str>>(keys: &[S]) -> anyhow::Result<Vec<Key>> {
    let keys = keys
        .iter()
        .map(|k| k.as_ref().trim())
        .filter(|k| !k.is_empty())
        .map(|k| {
            Key::from_bytes(
                &B64.decode(k)
                    .map_err(|_| anyhow::anyhow!("a secret key is not base64"))?,
            )
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!keys.is_empty(), "no secret key");
    Ok(keys)
}

/// The base64 keys of a key file, the sealing key first.
pub fn read_key_file(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read secret key file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Replaces a key file in one step (write, then rename), mode 0600.
pub fn write_key_file(path: &Path, keys_base64: &[String]) -> anyhow::Result<()> {
    parse_keys(keys_base64)?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    crate::auth::write_private(&tmp, format!("{}\n", keys_base64.join("\n")).as_bytes())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Keyring {
    /// Keys in base64, the sealing key first.
    pub fn from_base64<S: AsRef<str>>(keys: &[S]) -> anyhow::Result<Self> {
        Ok(Self {
            keys: Arc::new(RwLock::new(parse_keys(keys)?)),
            file: None,
        })
    }

    /// A key file: one base64 key a line, the sealing key first. Created
    /// (mode 0600) with a new key when missing, as `rdm up` does.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            crate::auth::write_private(path, format!("{}\n", generate_key()).as_bytes())?;
            tracing::info!(path = %path.display(), "created secret key file");
        }
        Self::load(path)
    }

    /// A key file that must exist (`rdm serve`: a new key would open none
    /// of the stored secrets).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let seen = modified(path);
        let keys = parse_keys(&read_key_file(path)?)?;
        Ok(Self {
            keys: Arc::new(RwLock::new(keys)),
            file: Some(Arc::new(KeyFile {
                path: path.to_owned(),
                seen: Mutex::new(seen),
            })),
        })
    }

    /// Re-reads the key file when it changed since it was read.
    fn refresh(&self) {
        let Some(file) = &self.file else { return };
        let now = modified(&file.path);
        let Ok(mut seen) = file.seen.lock() else {
            return;
        };
        if *seen == now {
            return;
        }
        match read_key_file(&file.path).and_then(|k| parse_keys(&k)) {
            Ok(keys) => {
                if let Ok(mut current) = self.keys.write() {
                    *current = keys;
                }
                *seen = now;
                tracing::info!(keys = ?self.ids(), "secret key file reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "secret key file changed but cannot be read; keeping the keys in use")
            }
        }
    }

    fn with_keys<T>(&self, f: impl FnOnce(&[Key]) -> T) -> T {
        self.refresh();
        match self.keys.read() {
            Ok(keys) => f(&keys),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// Key ids, the sealing key first.
    pub fn ids(&self) -> Vec<String> {
        self.keys
            .read()
            .map(|keys| keys.iter().map(|k| k.id.clone()).collect())
            .unwrap_or_default()
    }

    /// The id of the sealing key.
    pub fn current_id(&self) -> String {
        self.with_keys(|keys| keys[0].id.clone())
    }

    /// Seals `plaintext` for the place `aad` names (`tenant/device/protocol/field`).
    pub fn seal(&self, plaintext: &str, aad: &str) -> Result<String> {
        self.with_keys(|keys| {
            let key = &keys[0];
            let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
            let sealed = key
                .cipher
                .encrypt(
                    &nonce,
                    Payload {
                        msg: plaintext.as_bytes(),
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| Error::internal("sealing a secret", "aead failure"))?;
            let mut out = nonce.to_vec();
            out.extend_from_slice(&sealed);
            Ok(format!("v1.{}.{}", key.id, B64.encode(out)))
        })
    }

    /// Opens what `seal` made for the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<String> {
        let fail = |why: &str| Error::internal("opening a stored secret", why);
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fail("not a sealed secret"));
        };
        let bytes = B64.decode(body).map_err(|_| fail("bad encoding"))?;
        if bytes.len() < 24 {
            return Err(fail("too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let nonce = XNonce::from(<[u8; 24]>::try_from(nonce).map_err(|_| fail("bad nonce"))?);
        self.with_keys(|keys| {
            let key = keys
                .iter()
                .find(|k| k.id == id)
                .ok_or_else(|| fail("sealed under a key not in the keyring"))?;
            let plain = key
                .cipher
                .decrypt(
                    &nonce,
                    Payload {
                        msg: ciphertext,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| fail("does not open with its key for this place"))?;
            String::from_utf8(plain).map_err(|_| fail("not text"))
        })
    }

    /// Whether `sealed` is under the sealing key already.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) == Some(self.current_id().as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_in_their_place_and_with_their_key() {
        let (old_key, new_key) = (generate_key(), generate_key());
        let old = Keyring::from_base64(&[&old_key]).unwrap();
        let place = "t1/d1/snmp/community";
        let sealed = old.seal("public", place).unwrap();
        assert!(!sealed.contains("public"));
        assert_eq!(old.open(&sealed, place).unwrap(), "public");
        assert!(
            old.open(&sealed, "t2/d1/snmp/community").is_err(),
            "bound to its row"
        );

        let rotated = Keyring::from_base64(&[&new_key, &old_key]).unwrap();
        assert_eq!(
            rotated.open(&sealed, place).unwrap(),
            "public",
            "old ciphertexts still open"
        );
        let resealed = rotated.seal("public", place).unwrap();
        assert!(rotated.is_current(&resealed) && !rotated.is_current(&sealed));
        assert!(
            old.open(&resealed, place).is_err(),
            "the old key alone cannot open new ones"
        );
        assert!(
            Keyring::from_base64(&["c2hvcnQ="]).is_err(),
            "short keys are refused"
        );
    }

    #[test]
    fn a_key_file_is_reread_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let ring = Keyring::load_or_create(&path).unwrap();
        let old = read_key_file(&path).unwrap().remove(0);
        let sealed = ring.seal("s3cret", "here").unwrap();
        let new = generate_key();
        // mtime granularity: make sure the change is visible.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write_key_file(&path, &[new.clone(), old]).unwrap();
        let resealed = ring.seal("s3cret", "here").unwrap();
        assert!(
            ring.is_current(&resealed) && !ring.is_current(&sealed),
            "seals with the new key now"
        );
        assert_eq!(
            ring.open(&sealed, "here").unwrap(),
            "s3cret",
            "the old key still opens"
        );
        assert_eq!(
            Keyring::from_base64(&[new])
                .unwrap()
                .open(&resealed, "here")
                .unwrap(),
            "s3cret"
        );
    }
}
