//! The pepper API key secrets are hashed under: HMAC-SHA-256(pepper, secret), compared in
//! constant time (reliability §1.6).

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Shortest pepper accepted, in bytes.
pub const MIN_PEPPER_LEN: usize = 32;

/// Length of a stored secret hash (SHA-256).
pub const SECRET_HASH_LEN: usize = 32;

/// Why a pepper was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PepperError {
    /// Fewer than [`MIN_PEPPER_LEN`] bytes.
    #[error("api key pepper must be at least {MIN_PEPPER_LEN} bytes")]
    TooShort,
}

/// The server-side key of the secret hashes; cheap to clone, never printed.
///
/// Its UTF-8 bytes are the HMAC key as given: generate it with e.g. `openssl rand -base64 48`.
/// Changing it invalidates every stored key.
#[derive(Clone)]
pub struct Pepper(Arc<SecretString>);

impl Pepper {
    /// Returns a pepper, or [`PepperError::TooShort`] below [`MIN_PEPPER_LEN`] bytes.
    pub fn new(pepper: SecretString) -> Result<Self, PepperError> {
        if pepper.expose_secret().len() < MIN_PEPPER_LEN {
            return Err(PepperError::TooShort);
        }
        Ok(Self(Arc::new(pepper)))
    }

    /// Returns HMAC-SHA-256(pepper, secret).
    pub(crate) fn hash(&self, secret: &str) -> [u8; SECRET_HASH_LEN] {
        self.mac(secret).finalize().into_bytes().into()
    }

    /// Returns whether `stored` is the hash of `secret`, comparing in constant time.
    pub(crate) fn verify(&self, secret: &str, stored: &[u8]) -> bool {
        self.hash(secret).as_slice().ct_eq(stored).into()
    }

    fn mac(&self, secret: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("hmac accepts keys of any length"));
        mac.update(secret.as_bytes());
        mac
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper(text: &str) -> Pepper {
        Pepper::new(SecretString::from(text.to_owned())).expect("pepper")
    }

    #[test]
    fn a_short_pepper_is_refused() {
        let short = "x".repeat(MIN_PEPPER_LEN - 1);
        assert_eq!(
            Pepper::new(SecretString::from(short)).err(),
            Some(PepperError::TooShort)
        );
        assert!(Pepper::new(SecretString::from("x".repeat(MIN_PEPPER_LEN))).is_ok());
    }

    #[test]
    fn the_hash_is_hmac_sha256_of_the_secret_under_the_pepper() {
        let key = "k".repeat(40);
        let expected: [u8; 32] = {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("mac");
            mac.update(b"the secret");
            mac.finalize().into_bytes().into()
        };
        assert_eq!(pepper(&key).hash("the secret"), expected);
    }

    #[test]
    fn verification_needs_the_same_secret_and_pepper() {
        let first = pepper(&"a".repeat(32));
        let second = pepper(&"b".repeat(32));
        let stored = first.hash("secret");

        assert!(first.verify("secret", &stored));
        assert!(!first.verify("secreT", &stored));
        assert!(!second.verify("secret", &stored));
        assert!(!first.verify("secret", &stored[..31]));
        assert!(!first.verify("secret", &[]));
    }

    #[test]
    fn debug_output_hides_the_pepper() {
        let text = "p".repeat(32);
        assert!(!format!("{:?}", pepper(&text)).contains(&text));
    }
}
