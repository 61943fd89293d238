//! Personal data at rest: envelope encryption and blind indexes (reliability §1.7).
//!
//! Each lead gets its own random data key; fields are sealed with AES-256-GCM under it, bound
//! to their row and field name as associated data. The data key is stored wrapped (sealed)
//! by a key-encryption key (KEK) from the environment. Destroying a lead's wrapped data key
//! makes every copy of its ciphertext unreadable (crypto-shredding). Lookups go through blind
//! indexes: HMAC-SHA-256 of the normalized value under a separate key.
//!
//! A keyring holds one primary KEK, which wraps every new data key, and any number of previous
//! KEKs, which only unwrap. A wrapped data key names the KEK that wrapped it by its [`KeyId`],
//! a fingerprint of the KEK, so rotation is: make a new KEK primary, keep the old one as
//! previous, re-wrap every data key under the primary ([`Keyring::rewrap_data_key`]), then drop
//! the old KEK. Re-wrapping changes only the wrapping: the data key, and so every field sealed
//! under it, stays the same.
//!
//! Wrapped data keys have two layouts, told apart by length:
//! - v1 (69 bytes): `0x01 ‖ key id (8) ‖ nonce (12) ‖ AES-256-GCM(KEK, data key) (48)`, the
//!   associated data `owner ‖ 0 ‖ "data-key" ‖ 0 ‖ 0x01 ‖ key id`;
//! - legacy (60 bytes, written before key ids): `nonce (12) ‖ AES-256-GCM(KEK, data key) (48)`,
//!   associated data `owner ‖ 0 ‖ "data-key"`. It is opened by trying each configured KEK, and
//!   rewritten as v1 by re-wrapping.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const DATA_KEY_FIELD: &[u8] = b"data-key";

/// Length of a [`KeyId`] in bytes.
pub const KEY_ID_LEN: usize = 8;
/// First byte of a wrapped data key in the v1 layout.
pub const WRAPPED_V1_VERSION: u8 = 1;
/// Length of a wrapped data key in the v1 layout: version, key id, nonce, ciphertext and tag.
pub const WRAPPED_V1_LEN: usize = 1 + KEY_ID_LEN + WRAPPED_LEGACY_LEN;
/// Length of a wrapped data key in the legacy layout (no key id): nonce, ciphertext and tag.
pub const WRAPPED_LEGACY_LEN: usize = NONCE_LEN + KEY_LEN + TAG_LEN;

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
    /// The data key was wrapped by a KEK the keyring does not hold.
    #[error(
        "data key is wrapped by key-encryption key {0}, which is neither the primary nor a previous key"
    )]
    UnknownKey(KeyId),
    /// A data key in the legacy layout opens under none of the keyring's KEKs.
    #[error("data key in the legacy layout (no key id) opens under none of the configured keys")]
    NoLegacyKey,
}

impl PiiError {
    /// Returns whether the error means the keyring lacks the KEK a data key was wrapped by
    /// (a configuration problem), rather than a damaged ciphertext.
    pub fn is_missing_key(&self) -> bool {
        matches!(self, PiiError::UnknownKey(_) | PiiError::NoLegacyKey)
    }
}

fn parse_key(hex_key: &SecretString) -> Result<[u8; KEY_LEN], PiiError> {
    let bytes = hex::decode(hex_key.expose_secret().trim()).map_err(|_| PiiError::BadKey)?;
    bytes.try_into().map_err(|_| PiiError::BadKey)
}

/// The fingerprint of a key-encryption key that wrapped data keys carry: the first 8 bytes of
/// HMAC-SHA-256 under the KEK of a fixed label. It names the KEK without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    /// Returns the key id from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// Returns the key id's bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_ID_LEN] {
        &self.0
    }

    /// Returns the first bytes of every data key this KEK wraps (version and key id).
    pub fn wrapped_prefix(&self) -> [u8; 1 + KEY_ID_LEN] {
        let mut prefix = [WRAPPED_V1_VERSION; 1 + KEY_ID_LEN];
        prefix[1..].copy_from_slice(&self.0);
        prefix
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "KeyId({self})")
    }
}

/// What wrapped a stored data key, read from its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrappedBy {
    /// The legacy layout, which does not say.
    Legacy,
    /// The KEK with this id.
    Key(KeyId),
}

impl WrappedBy {
    /// Reads which KEK wrapped `wrapped` without opening it.
    pub fn of(wrapped: &[u8]) -> Result<Self, PiiError> {
        if wrapped.len() == WRAPPED_LEGACY_LEN {
            return Ok(WrappedBy::Legacy);
        }
        if wrapped.len() != WRAPPED_V1_LEN || wrapped[0] != WRAPPED_V1_VERSION {
            return Err(PiiError::Undecryptable);
        }
        let id: [u8; KEY_ID_LEN] = wrapped[1..=KEY_ID_LEN]
            .try_into()
            .map_err(|_| PiiError::Undecryptable)?;
        Ok(WrappedBy::Key(KeyId(id)))
    }
}

/// A key-encryption key with its id.
#[derive(Clone)]
pub struct Kek {
    id: KeyId,
    cipher: Aes256Gcm,
}

impl fmt::Debug for Kek {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "Kek({})", self.id)
    }
}

impl Kek {
    /// Returns the KEK given as 64 hex characters.
    pub fn from_hex(hex_key: &SecretString) -> Result<Self, PiiError> {
        let key = parse_key(hex_key)?;
        let fingerprint = keyed_hash(&key, "leadflow-kek-id", "v1");
        let mut id = [0; KEY_ID_LEN];
        id.copy_from_slice(&fingerprint[..KEY_ID_LEN]);
        Ok(Self {
            id: KeyId(id),
            cipher: Aes256Gcm::new_from_slice(&key).map_err(|_| PiiError::BadKey)?,
        })
    }

    /// Returns the KEK's id, the fingerprint its wrapped data keys carry.
    pub fn id(&self) -> KeyId {
        self.id
    }

    fn wrap(&self, owner: &[u8], data_key: &[u8]) -> Result<Vec<u8>, PiiError> {
        let prefix = self.id.wrapped_prefix();
        let sealed = seal(&self.cipher, owner, &v1_field(&prefix), data_key)?;
        Ok([&prefix[..], &sealed].concat())
    }
}

/// Returns the field a v1 wrapping is bound to: `data-key ‖ 0 ‖ version ‖ key id`, so the
/// header cannot be changed or stripped without the unwrap failing.
fn v1_field(prefix: &[u8]) -> Vec<u8> {
    [DATA_KEY_FIELD, b"\0", prefix].concat()
}

/// The keys of a service: the primary key-encryption key, previous ones that only unwrap, and
/// the blind-index key.
#[derive(Clone)]
pub struct Keyring {
    primary: Kek,
    previous: Vec<Kek>,
    blind_index_key: [u8; KEY_LEN],
}

impl fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Keyring(..)")
    }
}

impl Keyring {
    /// Returns a keyring from two hex-encoded 32-byte keys: the KEK, primary, and the
    /// blind-index key.
    pub fn new(kek: &SecretString, blind_index_key: &SecretString) -> Result<Self, PiiError> {
        Self::with_keys(Kek::from_hex(kek)?, Vec::new(), blind_index_key)
    }

    /// Returns a keyring wrapping under `primary`, also unwrapping under `previous`, with the
    /// hex-encoded blind-index key. A previous key equal to the primary, or to another
    /// previous one, is kept once.
    pub fn with_keys(
        primary: Kek,
        previous: Vec<Kek>,
        blind_index_key: &SecretString,
    ) -> Result<Self, PiiError> {
        let mut unique: Vec<Kek> = Vec::with_capacity(previous.len());
        for kek in previous {
            if kek.id != primary.id && unique.iter().all(|kept| kept.id != kek.id) {
                unique.push(kek);
            }
        }
        Ok(Self {
            primary,
            previous: unique,
            blind_index_key: parse_key(blind_index_key)?,
        })
    }

    /// Returns the id of the primary KEK, which wraps every new data key.
    pub fn primary_key_id(&self) -> KeyId {
        self.primary.id
    }

    /// Returns the ids of the previous KEKs, which only unwrap.
    pub fn previous_key_ids(&self) -> Vec<KeyId> {
        self.previous.iter().map(Kek::id).collect()
    }

    /// Returns whether the keyring holds the KEK with id `id`.
    pub fn holds(&self, id: KeyId) -> bool {
        self.kek(id).is_some()
    }

    fn kek(&self, id: KeyId) -> Option<&Kek> {
        std::iter::once(&self.primary)
            .chain(&self.previous)
            .find(|kek| kek.id == id)
    }

    /// Returns a fresh data key and its form wrapped by the primary KEK, to store beside the
    /// record `owner`.
    pub fn new_data_key(&self, owner: &[u8]) -> Result<(DataKey, Vec<u8>), PiiError> {
        let key: aes_gcm::Key<Aes256Gcm> = random_bytes::<32>().into();
        let wrapped = self.primary.wrap(owner, &key[..])?;
        Ok((DataKey(Aes256Gcm::new(&key)), wrapped))
    }

    /// Unwraps the data key stored beside the record `owner`, with the KEK its key id names
    /// (or, in the legacy layout, whichever configured KEK opens it).
    pub fn unwrap_data_key(&self, owner: &[u8], wrapped: &[u8]) -> Result<DataKey, PiiError> {
        let key = self.unwrap_key_bytes(owner, wrapped)?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| PiiError::Undecryptable)?;
        Ok(DataKey(cipher))
    }

    /// Returns the data key stored beside `owner` wrapped by the primary KEK in the v1 layout,
    /// or `None` when it already is. The data key itself does not change.
    pub fn rewrap_data_key(
        &self,
        owner: &[u8],
        wrapped: &[u8],
    ) -> Result<Option<Vec<u8>>, PiiError> {
        if WrappedBy::of(wrapped)? == WrappedBy::Key(self.primary.id) {
            return Ok(None);
        }
        let key = self.unwrap_key_bytes(owner, wrapped)?;
        self.primary.wrap(owner, &key).map(Some)
    }

    fn unwrap_key_bytes(&self, owner: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, PiiError> {
        match WrappedBy::of(wrapped)? {
            WrappedBy::Key(id) => {
                let kek = self.kek(id).ok_or(PiiError::UnknownKey(id))?;
                let (prefix, sealed) = wrapped.split_at(1 + KEY_ID_LEN);
                open(&kek.cipher, owner, &v1_field(prefix), sealed)
            }
            // Written before key ids: whichever KEK was primary then wrapped it.
            WrappedBy::Legacy => std::iter::once(&self.primary)
                .chain(&self.previous)
                .find_map(|kek| open(&kek.cipher, owner, DATA_KEY_FIELD, wrapped).ok())
                .ok_or(PiiError::NoLegacyKey),
        }
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
#[derive(Clone)]
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

/// Returns `N` bytes from the thread's CSPRNG (rand's `ThreadRng`: ChaCha12 seeded and
/// periodically reseeded from the operating system), without a `getrandom` call for each of
/// the half-dozen keys and nonces one capture needs.
fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore as _;
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

fn seal(
    cipher: &Aes256Gcm,
    owner: &[u8],
    field: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, PiiError> {
    let nonce: aes_gcm::Nonce<_> = random_bytes::<12>().into();
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

    fn kek(byte: u8) -> Kek {
        Kek::from_hex(&SecretString::from(hex::encode([byte; 32]))).expect("valid kek")
    }

    /// A keyring whose primary KEK is `[primary; 32]` with previous KEKs `[byte; 32]`.
    fn rotating(primary: u8, previous: &[u8]) -> Keyring {
        Keyring::with_keys(
            kek(primary),
            previous.iter().copied().map(kek).collect(),
            &SecretString::from(hex::encode([2u8; 32])),
        )
        .expect("valid keys")
    }

    /// Wraps `data_key` the way data keys were wrapped before key ids: no header, the KEK
    /// `[kek; 32]`, associated data `owner ‖ 0 ‖ "data-key"`.
    fn wrap_legacy(kek: u8, owner: &[u8], data_key: &[u8; 32]) -> Vec<u8> {
        let cipher = Aes256Gcm::new_from_slice(&[kek; 32]).expect("32-byte key");
        seal(&cipher, owner, b"data-key", data_key).expect("seal")
    }

    /// Returns a field sealed under `data_key` (raw bytes) for `owner`.
    fn sealed_with(data_key: &[u8; 32], owner: &[u8], text: &[u8]) -> Vec<u8> {
        let cipher = Aes256Gcm::new_from_slice(data_key).expect("32-byte key");
        seal(&cipher, owner, b"email", text).expect("seal")
    }

    #[test]
    fn new_data_keys_carry_the_primary_key_id_and_unwrap_with_it() {
        let keys = rotating(5, &[4]);
        let (data_key, wrapped) = keys.new_data_key(b"lead-1").expect("data key");
        assert_eq!(wrapped.len(), WRAPPED_V1_LEN);
        assert_eq!(wrapped[..9], kek(5).id().wrapped_prefix());
        assert_eq!(
            WrappedBy::of(&wrapped).expect("layout"),
            WrappedBy::Key(kek(5).id())
        );
        let sealed = data_key.seal(b"lead-1", "email", b"a@b.co").expect("seal");
        let unwrapped = rotating(5, &[]).unwrap_data_key(b"lead-1", &wrapped);
        assert_eq!(
            unwrapped
                .expect("the primary alone unwraps")
                .open(b"lead-1", "email", &sealed)
                .expect("open"),
            b"a@b.co"
        );
        assert!(
            rotating(5, &[])
                .unwrap_data_key(b"lead-2", &wrapped)
                .is_err(),
            "still bound to its owner"
        );
    }

    #[test]
    fn a_previous_key_unwraps_what_it_wrapped_and_a_missing_one_is_named() {
        let (_, wrapped_by_old) = rotating(4, &[]).new_data_key(b"lead-1").expect("data key");
        assert!(
            rotating(5, &[4])
                .unwrap_data_key(b"lead-1", &wrapped_by_old)
                .is_ok(),
            "unwrapped by the previous key its id names"
        );
        let Err(err) = rotating(5, &[6]).unwrap_data_key(b"lead-1", &wrapped_by_old) else {
            panic!("a keyring without the wrapping key must not unwrap");
        };
        assert!(
            matches!(err, PiiError::UnknownKey(id) if id == kek(4).id()),
            "{err}"
        );
        assert!(err.is_missing_key());
        assert!(
            err.to_string().contains(&kek(4).id().to_string()),
            "the error names the key id: {err}"
        );
    }

    #[test]
    fn legacy_data_keys_unwrap_under_any_configured_key() {
        let data_key = [7u8; 32];
        let legacy = wrap_legacy(4, b"lead-1", &data_key);
        assert_eq!(legacy.len(), WRAPPED_LEGACY_LEN);
        assert_eq!(WrappedBy::of(&legacy).expect("layout"), WrappedBy::Legacy);
        let sealed = sealed_with(&data_key, b"lead-1", b"a@b.co");
        for keys in [rotating(4, &[]), rotating(5, &[4]), rotating(5, &[6, 4])] {
            let unwrapped = keys.unwrap_data_key(b"lead-1", &legacy).expect("unwrap");
            assert_eq!(
                unwrapped.open(b"lead-1", "email", &sealed).expect("open"),
                b"a@b.co"
            );
        }
        let Err(err) = rotating(5, &[6]).unwrap_data_key(b"lead-1", &legacy) else {
            panic!("no configured key wrapped it");
        };
        assert!(matches!(err, PiiError::NoLegacyKey), "{err}");
        assert!(
            rotating(4, &[])
                .unwrap_data_key(b"lead-2", &legacy)
                .is_err(),
            "bound to its owner"
        );
    }

    #[test]
    fn rewrapping_moves_a_data_key_under_the_primary_and_keeps_it() {
        let data_key = [7u8; 32];
        let sealed = sealed_with(&data_key, b"lead-1", b"a@b.co");
        let legacy = wrap_legacy(4, b"lead-1", &data_key);
        let (old_key, by_old) = rotating(4, &[]).new_data_key(b"lead-1").expect("data key");
        let old_sealed = old_key.seal(b"lead-1", "email", b"c@d.co").expect("seal");
        let keys = rotating(5, &[4]);
        for (wrapped, sealed, text) in [
            (&legacy, &sealed, b"a@b.co"),
            (&by_old, &old_sealed, b"c@d.co"),
        ] {
            let rewrapped = keys
                .rewrap_data_key(b"lead-1", wrapped)
                .expect("rewrap")
                .expect("not current before");
            assert_eq!(
                WrappedBy::of(&rewrapped).expect("layout"),
                WrappedBy::Key(kek(5).id())
            );
            let primary_only = rotating(5, &[]);
            let unwrapped = primary_only
                .unwrap_data_key(b"lead-1", &rewrapped)
                .expect("the primary alone unwraps it now");
            assert_eq!(
                unwrapped.open(b"lead-1", "email", sealed).expect("open"),
                text,
                "the same data key"
            );
            assert!(
                keys.rewrap_data_key(b"lead-1", &rewrapped)
                    .expect("rewrap")
                    .is_none(),
                "already current"
            );
            assert!(primary_only.unwrap_data_key(b"lead-2", &rewrapped).is_err());
        }
        let Err(err) = rotating(5, &[]).rewrap_data_key(b"lead-1", &by_old) else {
            panic!("cannot rewrap without the old key");
        };
        assert!(err.is_missing_key(), "{err}");
    }

    #[test]
    fn a_changed_or_stripped_header_does_not_unwrap() {
        let keys = rotating(5, &[4]);
        let (_, wrapped) = keys.new_data_key(b"lead-1").expect("data key");
        let mut relabelled = wrapped.clone();
        relabelled[1..9].copy_from_slice(kek(4).id().as_bytes());
        assert!(keys.unwrap_data_key(b"lead-1", &relabelled).is_err());
        assert!(
            keys.unwrap_data_key(b"lead-1", &wrapped[9..]).is_err(),
            "the header is bound: stripped, it is no legacy key"
        );
        let mut versioned = wrapped.clone();
        versioned[0] = 2;
        assert!(matches!(
            keys.unwrap_data_key(b"lead-1", &versioned),
            Err(PiiError::Undecryptable)
        ));
        assert!(keys.unwrap_data_key(b"lead-1", &wrapped[..40]).is_err());
    }

    #[test]
    fn key_ids_are_stable_fingerprints_that_do_not_reveal_the_key() {
        assert_eq!(kek(4).id(), kek(4).id());
        assert_ne!(kek(4).id(), kek(5).id());
        assert_eq!(kek(4).id().to_string().len(), 16);
        let key_hex = hex::encode([4u8; 32]);
        assert!(!key_hex.contains(&kek(4).id().to_string()));
        assert!(!format!("{:?}", kek(4)).contains(&key_hex[..16]));
        let keys = rotating(5, &[4, 5, 4, 6]);
        assert_eq!(keys.primary_key_id(), kek(5).id());
        assert_eq!(
            keys.previous_key_ids(),
            [kek(4).id(), kek(6).id()],
            "the primary and repeats are kept once"
        );
        assert!(keys.holds(kek(6).id()) && !keys.holds(kek(7).id()));
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
