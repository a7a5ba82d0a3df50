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
use std::{fmt, path::Path};

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

#[derive(Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    // By hand: ids only, never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|k| &k.id))
            .finish()
    }
}

/// A new random key, base64.
pub fn generate_key() -> String {
    B64.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

impl Keyring {
    /// Keys in base64, the sealing key first.
    pub fn from_base64<S: AsRef<str>>(keys: &[S]) -> anyhow::Result<Self> {
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
        Ok(Self { keys })
    }

    /// A key file: one base64 key a line, the sealing key first. Created
    /// (mode 0600) with a new key when missing, as `rdm up` does.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            crate::auth::write_private(path, format!("{}\n", generate_key()).as_bytes())?;
            tracing::info!(path = %path.display(), "created secret key file");
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read secret key file {}: {e}", path.display()))?;
        Self::from_base64(&text.lines().collect::<Vec<_>>())
    }

    /// The id of the sealing key.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plaintext` for the place `aad` names (`tenant/device/protocol/field`).
    pub fn seal(&self, plaintext: &str, aad: &str) -> Result<String> {
        let key = &self.keys[0];
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
    }

    /// Opens what `seal` made for the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<String> {
        let fail = |why: &str| Error::internal("opening a stored secret", why);
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(fail("not a sealed secret"));
        };
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| fail("sealed under a key not in the keyring"))?;
        let bytes = B64.decode(body).map_err(|_| fail("bad encoding"))?;
        if bytes.len() < 24 {
            return Err(fail("too short"));
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let plain = key
            .cipher
            .decrypt(
                &XNonce::from(<[u8; 24]>::try_from(nonce).map_err(|_| fail("bad nonce"))?),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| fail("does not open with its key for this place"))?;
        String::from_utf8(plain).map_err(|_| fail("not text"))
    }

    /// Whether `sealed` is under the sealing key already.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed.split('.').nth(1) == Some(self.current_id())
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
}
