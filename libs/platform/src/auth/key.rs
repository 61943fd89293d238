//! The API key format `lf_<env>_<id>_<secret><checksum>`: generating keys and parsing them
//! without a database lookup (reliability §1.6).
//!
//! - `env` is 1–16 lowercase letters or digits starting with a letter (`live`, `test`, `dev`);
//! - `id` is [`KEY_ID_LEN`] base62 characters, the public identifier logs may carry;
//! - `secret` is [`SECRET_LEN`] base62 characters (≈ 190 random bits from the OS RNG);
//! - `checksum` is the CRC32 of everything before it, [`CHECKSUM_LEN`] base62 characters,
//!   zero-padded, so a mistyped or truncated key is rejected before any lookup.
//!
//! Base62 has no `_`, so the key splits on `_` unambiguously.

use rand::TryRngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};

/// First segment of every key.
pub const PREFIX: &str = "lf";
/// Length of the public key id.
pub const KEY_ID_LEN: usize = 12;
/// Length of the secret: 32 base62 characters carry 32 × log2(62) ≈ 190 bits.
pub const SECRET_LEN: usize = 32;
/// Length of the checksum: 62^6 ≈ 5.7 × 10^10 covers every CRC32 value.
pub const CHECKSUM_LEN: usize = 6;
/// Longest environment token.
pub const MAX_ENV_LEN: usize = 16;
/// Longest well-formed key; anything longer is malformed without further work.
pub const MAX_KEY_LEN: usize =
    PREFIX.len() + 1 + MAX_ENV_LEN + 1 + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Random bytes at or above this are rejected so that `byte % 62` stays uniform.
const UNIFORM_BOUND: u8 = 62 * 4;

/// Why a key could not be generated or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The text does not have the shape of a key (prefix, segments, lengths, alphabet).
    #[error("malformed api key")]
    Malformed,
    /// The text has the shape of a key but its checksum does not match: a typo or truncation.
    #[error("api key checksum mismatch")]
    BadChecksum,
    /// The environment is not 1–16 lowercase letters or digits starting with a letter.
    #[error("invalid api key environment: expected 1-16 lowercase letters or digits")]
    InvalidEnv,
    /// The operating system's random number generator failed.
    #[error("read the os random number generator: {0}")]
    Rng(String),
}

/// A freshly generated key. `plaintext` is shown to its owner once and never stored.
#[derive(Debug)]
pub struct GeneratedKey {
    /// Public identifier of the key.
    pub key_id: String,
    /// The whole key, `lf_<env>_<id>_<secret><checksum>`.
    pub plaintext: SecretString,
    /// The secret part, the input of the stored hash.
    pub secret: SecretString,
}

/// The parts of a well-formed key whose checksum matched.
#[derive(Debug)]
pub struct ParsedKey {
    /// Environment token, e.g. `live`.
    pub env: String,
    /// Public identifier of the key.
    pub key_id: String,
    /// The secret part, to be checked against the stored hash.
    pub secret: SecretString,
}

/// Generates a key for `env` from the operating system's random number generator.
pub fn generate(env: &str) -> Result<GeneratedKey, KeyError> {
    validate_env(env)?;
    let key_id = random_base62(KEY_ID_LEN)?;
    let secret = random_base62(SECRET_LEN)?;
    let plaintext = assemble(env, &key_id, &secret)?;
    Ok(GeneratedKey {
        key_id,
        plaintext,
        secret: SecretString::from(secret),
    })
}

/// Returns the key made of these parts, with its checksum; [`KeyError::Malformed`] when a
/// part has the wrong length or alphabet. [`generate`] is the way to make a new key; this
/// rebuilds one from its parts (tools, tests).
pub fn assemble(env: &str, key_id: &str, secret: &str) -> Result<SecretString, KeyError> {
    validate_env(env)?;
    if key_id.len() != KEY_ID_LEN
        || !is_base62(key_id)
        || secret.len() != SECRET_LEN
        || !is_base62(secret)
    {
        return Err(KeyError::Malformed);
    }
    let mut plaintext = format!("{PREFIX}_{env}_{key_id}_{secret}");
    let checksum = encode_checksum(crc32fast::hash(plaintext.as_bytes()));
    plaintext.push_str(&checksum);
    Ok(SecretString::from(plaintext))
}

/// Parses `token` into its parts; never panics, whatever the input.
///
/// Returns [`KeyError::Malformed`] when the shape is wrong and [`KeyError::BadChecksum`] when
/// the shape is right but the checksum does not match.
pub fn parse(token: &str) -> Result<ParsedKey, KeyError> {
    if token.len() > MAX_KEY_LEN {
        return Err(KeyError::Malformed);
    }
    let Some(rest) = token
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.strip_prefix('_'))
    else {
        return Err(KeyError::Malformed);
    };
    let mut segments = rest.split('_');
    let (Some(env), Some(key_id), Some(tail), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(KeyError::Malformed);
    };
    if validate_env(env).is_err()
        || key_id.len() != KEY_ID_LEN
        || !is_base62(key_id)
        || tail.len() != SECRET_LEN + CHECKSUM_LEN
        || !is_base62(tail)
    {
        return Err(KeyError::Malformed);
    }
    // Every byte checked is ASCII, so these byte offsets are character boundaries.
    let (secret, checksum) = tail.split_at(SECRET_LEN);
    let checked = &token[..token.len() - CHECKSUM_LEN];
    if encode_checksum(crc32fast::hash(checked.as_bytes())) != checksum {
        return Err(KeyError::BadChecksum);
    }
    Ok(ParsedKey {
        env: env.to_owned(),
        key_id: key_id.to_owned(),
        secret: SecretString::from(secret.to_owned()),
    })
}

/// Checks that `env` is 1–16 lowercase ASCII letters or digits starting with a letter.
pub fn validate_env(env: &str) -> Result<(), KeyError> {
    let mut bytes = env.bytes();
    let starts_with_letter = bytes.next().is_some_and(|first| first.is_ascii_lowercase());
    let rest_ok = bytes.all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit());
    if starts_with_letter && rest_ok && env.len() <= MAX_ENV_LEN {
        Ok(())
    } else {
        Err(KeyError::InvalidEnv)
    }
}

impl ParsedKey {
    /// Returns the secret's text, for hashing.
    pub(crate) fn secret_text(&self) -> &str {
        self.secret.expose_secret()
    }
}

fn is_base62(text: &str) -> bool {
    text.bytes().all(|byte| byte.is_ascii_alphanumeric())
}

/// Encodes `value` as [`CHECKSUM_LEN`] base62 digits, most significant first.
fn encode_checksum(value: u32) -> String {
    let mut digits = [b'0'; CHECKSUM_LEN];
    let mut remaining = u64::from(value);
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(remaining % 62) as usize];
        remaining /= 62;
    }
    digits.iter().map(|&digit| char::from(digit)).collect()
}

/// Returns `len` uniformly random base62 characters from the OS RNG.
fn random_base62(len: usize) -> Result<String, KeyError> {
    let mut out = String::with_capacity(len);
    let mut buffer = [0u8; 64];
    while out.len() < len {
        OsRng
            .try_fill_bytes(&mut buffer)
            .map_err(|err| KeyError::Rng(err.to_string()))?;
        for &byte in &buffer {
            if out.len() == len {
                break;
            }
            if byte < UNIFORM_BOUND {
                out.push(char::from(BASE62[usize::from(byte % 62)]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(env: &str) -> String {
        generate(env)
            .expect("generate")
            .plaintext
            .expose_secret()
            .to_owned()
    }

    /// Replaces the character at `at` with another character of the same class.
    fn flip(token: &str, at: usize) -> String {
        let mut bytes = token.as_bytes().to_vec();
        let original = bytes[at];
        bytes[at] = if original.is_ascii_lowercase() {
            if original == b'z' { b'a' } else { original + 1 }
        } else if original.is_ascii_uppercase() {
            if original == b'Z' { b'A' } else { original + 1 }
        } else if original.is_ascii_digit() {
            if original == b'9' { b'0' } else { original + 1 }
        } else {
            original
        };
        String::from_utf8(bytes).expect("ascii")
    }

    #[test]
    fn a_generated_key_parses_back_to_its_parts() {
        let generated = generate("live").expect("generate");
        let plaintext = generated.plaintext.expose_secret();

        let parsed = parse(plaintext).expect("parse");

        assert_eq!(parsed.env, "live");
        assert_eq!(parsed.key_id, generated.key_id);
        assert_eq!(
            parsed.secret.expose_secret(),
            generated.secret.expose_secret()
        );
        assert!(plaintext.starts_with(&format!("lf_live_{}_", generated.key_id)));
        assert_eq!(
            plaintext.len(),
            "lf_live_".len() + KEY_ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN
        );
    }

    #[test]
    fn the_secret_carries_at_least_128_random_bits() {
        let bits = SECRET_LEN as f64 * 62f64.log2();
        assert!(bits >= 128.0, "{bits} bits");
        assert!(62u64.pow(CHECKSUM_LEN as u32) > u64::from(u32::MAX));
    }

    #[test]
    fn generated_keys_differ() {
        let first = generate("test").expect("generate");
        let second = generate("test").expect("generate");
        assert_ne!(first.key_id, second.key_id);
        assert_ne!(first.secret.expose_secret(), second.secret.expose_secret());
    }

    #[test]
    fn any_flipped_character_after_the_prefix_fails_the_checksum() {
        let token = key("dev");
        for at in "lf_".len()..token.len() {
            if token.as_bytes()[at] == b'_' {
                continue;
            }
            let flipped = flip(&token, at);
            assert_ne!(flipped, token);
            assert_eq!(
                parse(&flipped).err(),
                Some(KeyError::BadChecksum),
                "flipped at {at}"
            );
        }
    }

    #[test]
    fn malformed_keys_are_told_apart_from_bad_checksums() {
        let token = key("live");
        let truncated = &token[..token.len() - 1];
        let extended = format!("{token}A");
        let wrong_prefix = format!("lx{}", &token[2..]);
        let upper_prefix = format!("LF{}", &token[2..]);
        let extra_segment = token.replacen("lf_live_", "lf_live_x_", 1);
        let upper_env = token.replacen("lf_live_", "lf_LIVE_", 1);
        let bad_alphabet = format!("{}-{}", &token[..20], &token[21..]);
        let cases = [
            "",
            "lf",
            "lf_",
            "lf___",
            "Bearer lf_live_x",
            truncated,
            &extended,
            &wrong_prefix,
            &upper_prefix,
            &extra_segment,
            &upper_env,
            &bad_alphabet,
            &format!(" {token}"),
        ];
        for case in cases {
            assert_eq!(parse(case).err(), Some(KeyError::Malformed), "{case:?}");
        }
    }

    #[test]
    fn environments_are_short_lowercase_tokens() {
        for good in ["live", "test", "dev", "eu1", "abcdefghijklmnop"] {
            assert_eq!(validate_env(good), Ok(()), "{good}");
            assert!(generate(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Live",
            "1live",
            "li_ve",
            "li-ve",
            "abcdefghijklmnopq",
            "é",
        ] {
            assert_eq!(validate_env(bad), Err(KeyError::InvalidEnv), "{bad:?}");
            assert_eq!(generate(bad).err(), Some(KeyError::InvalidEnv), "{bad:?}");
        }
    }

    #[test]
    fn assembling_parts_gives_a_key_that_parses_back_to_them() {
        let key_id = "A".repeat(KEY_ID_LEN);
        let secret = "b".repeat(SECRET_LEN);
        let assembled = assemble("test", &key_id, &secret).expect("assemble");
        let parsed = parse(assembled.expose_secret()).expect("parse");
        assert_eq!(
            (parsed.env.as_str(), parsed.key_id.as_str()),
            ("test", key_id.as_str())
        );
        assert_eq!(parsed.secret.expose_secret(), secret);

        assert_eq!(
            assemble("test", "short", &secret).err(),
            Some(KeyError::Malformed)
        );
        assert_eq!(
            assemble("test", &key_id, &"_".repeat(SECRET_LEN)).err(),
            Some(KeyError::Malformed)
        );
        assert_eq!(
            assemble("TEST", &key_id, &secret).err(),
            Some(KeyError::InvalidEnv)
        );
    }

    #[test]
    fn checksums_are_fixed_width() {
        assert_eq!(encode_checksum(0), "000000");
        assert_eq!(encode_checksum(61), "00000z");
        assert_eq!(encode_checksum(u32::MAX).len(), CHECKSUM_LEN);
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let generated = generate("live").expect("generate");
        let secret = generated.secret.expose_secret().to_owned();
        let parsed = parse(generated.plaintext.expose_secret()).expect("parse");
        assert!(!format!("{generated:?}").contains(&secret));
        assert!(!format!("{parsed:?}").contains(&secret));
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_near_keys(
            text in "lf_[a-z0-9_]{0,20}_[A-Za-z0-9_é]{0,20}_[A-Za-z0-9_é]{0,50}"
        ) {
            let _ = parse(&text);
        }

        #[test]
        fn any_single_substitution_is_rejected(at in 0usize..64, replacement in any::<char>()) {
            let token = key("live");
            let at = at % token.len();
            let mut chars: Vec<char> = token.chars().collect();
            prop_assume!(chars[at] != replacement);
            chars[at] = replacement;
            let mutated: String = chars.into_iter().collect();
            prop_assert!(parse(&mutated).is_err());
        }
    }
}
