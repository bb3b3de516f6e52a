//! Credentials at rest: AES-256-GCM with a random 96-bit nonce per value, stored as
//! `nonce || ciphertext`. The key id names the key generation so keys can be rotated: decrypt
//! with any known key, encrypt with the current one (see the README, "Rotating the master key").

use aes_gcm::aead::{Aead, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::StoreError;

/// Encrypts and decrypts credentials. `Debug` never shows key material.
#[derive(Clone)]
pub struct SecretBox {
    current: (String, Aes256Gcm),
    previous: Vec<(String, Aes256Gcm)>,
    /// Per key (current first): a root for keys derived for other purposes (token signing).
    roots: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SecretBox")
            .field("key_id", &self.current.0)
            .finish_non_exhaustive()
    }
}

/// Decodes a master key given as 32 bytes in base64 (standard or URL-safe) or 64 hex digits.
pub fn decode_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|e| e.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .map_err(|_| "the master key must be 32 bytes as base64 or 64 hex digits".to_owned())?
    };
    bytes
        .try_into()
        .map_err(|_| "the master key must be exactly 32 bytes".to_owned())
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

fn key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::digest(key);
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl SecretBox {
    /// A box that encrypts with `current` and can still decrypt with `previous` keys.
    pub fn new(current: [u8; 32], previous: &[[u8; 32]]) -> Self {
        let cipher = |key: &[u8; 32]| Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
        let root = |key: &[u8; 32]| (key_id(key), hmac_sha256(key, b"shipgate/derive/v1"));
        SecretBox {
            current: (key_id(&current), cipher(&current)),
            previous: previous.iter().map(|k| (key_id(k), cipher(k))).collect(),
            roots: std::iter::once(&current)
                .chain(previous)
                .map(root)
                .collect(),
        }
    }

    /// Keys for `purpose` (e.g. signing API tokens) derived from the master key and from each
    /// previous key, current first, each with its key id: sign with the first, accept any, so a
    /// master-key rotation keeps issued tokens valid while the old key is still listed.
    pub fn derive(&self, purpose: &str) -> Vec<(String, [u8; 32])> {
        self.roots
            .iter()
            .map(|(id, root)| (id.clone(), hmac_sha256(root, purpose.as_bytes())))
            .collect()
    }

    /// The id of the key new values are encrypted with.
    pub fn key_id(&self) -> &str {
        &self.current.0
    }

    /// Encrypts a value.
    pub fn seal(&self, plaintext: &str) -> Result<Vec<u8>, StoreError> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let mut sealed = nonce.to_vec();
        let ciphertext = self
            .current
            .1
            .encrypt(&nonce, plaintext.as_bytes())
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        sealed.extend(ciphertext);
        Ok(sealed)
    }

    /// Decrypts a value sealed under the key `key_id`.
    pub fn open(&self, key_id: &str, sealed: &[u8]) -> Result<String, StoreError> {
        let cipher = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(id, _)| id == key_id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| {
                StoreError::Crypto(format!(
                    "credential was sealed with key {key_id}, which is not configured"
                ))
            })?;
        if sealed.len() < 12 {
            return Err(StoreError::Crypto("sealed value is too short".into()));
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let plaintext = cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| StoreError::Crypto("credential does not decrypt with its key".into()))?;
        String::from_utf8(plaintext).map_err(|_| StoreError::Crypto("not UTF-8".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_the_same_or_a_previous_key_only() {
        let old = [7u8; 32];
        let new = [9u8; 32];
        let before = SecretBox::new(old, &[]);
        let sealed = before.seal("hrku-123").unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"hrku-123"));
        let rotated = SecretBox::new(new, &[old]);
        assert_eq!(rotated.open(before.key_id(), &sealed).unwrap(), "hrku-123");
        let stranger = SecretBox::new(new, &[]);
        assert!(stranger.open(before.key_id(), &sealed).is_err());
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_survive_rotation() {
        let old = SecretBox::new([7u8; 32], &[]);
        let rotated = SecretBox::new([9u8; 32], &[[7u8; 32]]);
        assert_ne!(old.derive("a")[0].1, old.derive("b")[0].1);
        assert_ne!(old.derive("a")[0].1, [7u8; 32]);
        assert_eq!(rotated.derive("a")[1], old.derive("a")[0]);
        assert_ne!(rotated.derive("a")[0].1, old.derive("a")[0].1);
    }

    #[test]
    fn keys_decode_from_base64_or_hex() {
        let hex = "00".repeat(32);
        assert_eq!(decode_key(&hex).unwrap(), [0u8; 32]);
        let b64 = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
        assert_eq!(decode_key(&b64).unwrap(), [1u8; 32]);
        assert!(decode_key("short").is_err());
    }
}
