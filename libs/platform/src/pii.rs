//! Personal data at rest: envelope encryption and blind indexes (reliability §1.7).
//!
//! Each lead gets its own random data key; fields are sealed with AES-256-GCM under it, bound
//! to their row and field name as associated data. The data key is stored wrapped (sealed)
//! by a key-encryption key from the environment. Destroying a lead's wrapped data key makes
//! every copy of its ciphertext unreadable (crypto-shredding). Lookups go through blind
//! indexes: HMAC-SHA-256 of the normalized value under a separate key.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

/// Masks personal text for callers without `pii:read`: the first character stays.
pub fn mask(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => format!("{first}***"),
    }
}

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum PiiError {
    #[error("a key must be 32 bytes, given as 64 hex characters")]
    BadKey,
    #[error("ciphertext is malformed or was sealed under another key")]
    Undecryptable,
}

fn parse_key(hex_key: &SecretString) -> Result<[u8; KEY_LEN], PiiError> {
    let bytes = hex::decode(hex_key.expose_secret().trim()).map_err(|_| PiiError::BadKey)?;
    bytes.try_into().map_err(|_| PiiError::BadKey)
}

/// The keys of a service: the key-encryption key and the blind-index key.
#[derive(Clone)]
pub struct Keyring {
    kek: Aes256Gcm,
    blind_index_key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Keyring(..)")
    }
}

impl Keyring {
    /// Returns a keyring from two hex-encoded 32-byte keys.
    pub fn new(kek: &SecretString, blind_index_key: &SecretString) -> Result<Self, PiiError> {
        let kek = parse_key(kek)?;
        Ok(Self {
            kek: Aes256Gcm::new_from_slice(&kek).map_err(|_| PiiError::BadKey)?,
            blind_index_key: parse_key(blind_index_key)?,
        })
    }

    /// Returns a fresh data key and its wrapped form, to store beside the record `owner`.
    pub fn new_data_key(&self, owner: &[u8]) -> Result<(DataKey, Vec<u8>), PiiError> {
        let key = Aes256Gcm::generate_key(OsRng);
        let wrapped = seal(&self.kek, owner, b"data-key", &key[..])?;
        Ok((DataKey(Aes256Gcm::new(&key)), wrapped))
    }

    /// Unwraps the data key stored beside the record `owner`.
    pub fn unwrap_data_key(&self, owner: &[u8], wrapped: &[u8]) -> Result<DataKey, PiiError> {
        let key = open(&self.kek, owner, b"data-key", wrapped)?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| PiiError::Undecryptable)?;
        Ok(DataKey(cipher))
    }

    /// Returns the blind index of a normalized `value` of kind `kind` (`email`, `phone`).
    pub fn blind_index(&self, kind: &str, value: &str) -> Vec<u8> {
        keyed_hash(&self.blind_index_key, kind, value)
    }
}

/// Returns HMAC-SHA-256(key, kind ‖ 0 ‖ value).
pub fn keyed_hash(key: &[u8], kind: &str, value: &str) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        unreachable!("hmac accepts keys of any length")
    };
    mac.update(kind.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// One record's data key.
pub struct DataKey(Aes256Gcm);

impl DataKey {
    /// Seals `plaintext` of `field` in the record `owner`.
    pub fn seal(&self, owner: &[u8], field: &str, plaintext: &[u8]) -> Result<Vec<u8>, PiiError> {
        seal(&self.0, owner, field.as_bytes(), plaintext)
    }

    /// Opens a sealed `field` of the record `owner`.
    pub fn open(&self, owner: &[u8], field: &str, sealed: &[u8]) -> Result<Vec<u8>, PiiError> {
        open(&self.0, owner, field.as_bytes(), sealed)
    }

    /// Seals an optional text field; empty text stays `None`.
    pub fn seal_text(
        &self,
        owner: &[u8],
        field: &str,
        text: &str,
    ) -> Result<Option<Vec<u8>>, PiiError> {
        if text.is_empty() {
            return Ok(None);
        }
        self.seal(owner, field, text.as_bytes()).map(Some)
    }

    /// Opens an optional sealed text field; `None` is empty text.
    pub fn open_text(
        &self,
        owner: &[u8],
        field: &str,
        sealed: Option<&[u8]>,
    ) -> Result<String, PiiError> {
        match sealed {
            None => Ok(String::new()),
            Some(sealed) => {
                let bytes = self.open(owner, field, sealed)?;
                String::from_utf8(bytes).map_err(|_| PiiError::Undecryptable)
            }
        }
    }
}

fn seal(
    cipher: &Aes256Gcm,
    owner: &[u8],
    field: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PiiError> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = [owner, b"\0", field].concat();
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| PiiError::Undecryptable)?;
    Ok([&nonce[..], &ciphertext].concat())
}

fn open(
    cipher: &Aes256Gcm,
    owner: &[u8],
    field: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, PiiError> {
    if sealed.len() < NONCE_LEN {
        return Err(PiiError::Undecryptable);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| PiiError::Undecryptable)?;
    let aad = [owner, b"\0", field].concat();
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map_err(|_| PiiError::Undecryptable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(kek: u8, bidx: u8) -> Keyring {
        Keyring::new(
            &SecretString::from(hex::encode([kek; 32])),
            &SecretString::from(hex::encode([bidx; 32])),
        )
        .expect("valid keys")
    }

    #[test]
    fn sealed_fields_open_only_for_their_record_and_field() {
        let keys = keyring(1, 2);
        let (data_key, wrapped) = keys.new_data_key(b"lead-1").expect("data key");
        let sealed = data_key
            .seal(b"lead-1", "email", b"ada@example.com")
            .expect("seal");
        assert!(
            !sealed.windows(7).any(|window| window == b"example"),
            "no plaintext in ciphertext"
        );
        let reopened = keys.unwrap_data_key(b"lead-1", &wrapped).expect("unwrap");
        assert_eq!(
            reopened.open(b"lead-1", "email", &sealed).expect("open"),
            b"ada@example.com"
        );
        assert!(
            reopened.open(b"lead-1", "phone", &sealed).is_err(),
            "bound to the field"
        );
        assert!(
            reopened.open(b"lead-2", "email", &sealed).is_err(),
            "bound to the record"
        );
        assert!(
            keys.unwrap_data_key(b"lead-2", &wrapped).is_err(),
            "wrapped key bound to the record"
        );
        assert!(
            keyring(9, 2).unwrap_data_key(b"lead-1", &wrapped).is_err(),
            "another kek cannot unwrap"
        );
    }

    #[test]
    fn blind_indexes_are_deterministic_and_keyed() {
        let keys = keyring(1, 2);
        assert_eq!(
            keys.blind_index("email", "a@b.co"),
            keys.blind_index("email", "a@b.co")
        );
        assert_ne!(
            keys.blind_index("email", "a@b.co"),
            keys.blind_index("phone", "a@b.co")
        );
        assert_ne!(
            keys.blind_index("email", "a@b.co"),
            keyring(1, 3).blind_index("email", "a@b.co")
        );
    }

    #[test]
    fn keys_must_be_32_hex_bytes() {
        let short = SecretString::from("abcd".to_owned());
        let good = SecretString::from(hex::encode([1u8; 32]));
        assert!(Keyring::new(&short, &good).is_err());
        assert!(Keyring::new(&good, &SecretString::from("zz".repeat(32))).is_err());
    }
}
