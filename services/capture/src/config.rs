//! capture's configuration, read from `CAPTURE_*` variables.

use std::net::SocketAddr;
use std::str::FromStr;

use leadflow_platform::config::{CommonConfig, ConfigError};
use leadflow_platform::pii::{Kek, Keyring};
use phonenumber::country::Id as Region;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::lead::NormalizeConfig;

/// Environment prefix of this service.
pub const PREFIX: &str = "CAPTURE_";

/// Everything capture reads from the environment.
#[derive(Debug)]
pub struct Config {
    pub common: CommonConfig,
    pub settings: Settings,
}

/// capture's own settings.
#[derive(Debug, Deserialize)]
pub struct Settings {
    /// Region used to read phone numbers written without a country code (ISO 3166-1 alpha-2),
    /// unless the source sets its own.
    #[serde(default = "default_phone_region")]
    pub default_phone_region: String,
    /// Key of the keyed hashes that stand for email and phone in events (at least 32 bytes).
    pub identity_hash_key: SecretString,
    /// Key-encryption key wrapping each lead's data key: 32 bytes as 64 hex characters. It
    /// wraps every new data key (the primary key).
    pub pii_key: SecretString,
    /// Earlier key-encryption keys, comma-separated, each 64 hex characters: they still unwrap
    /// data keys not yet re-wrapped by `capture rotate-keys`, and never wrap new ones.
    pub pii_previous_keys: Option<SecretString>,
    /// Key of the blind indexes used to find people by email and phone: 64 hex characters.
    pub blind_index_key: SecretString,
    /// Calls per minute allowed per API key on `CaptureLead`, and again (a budget of its own)
    /// on `RecordActivity`; 0 means unlimited. Imports are not limited.
    #[serde(default)]
    pub key_rate_per_minute: u32,
    /// Address of the web-to-lead HTTP endpoint ([`DEFAULT_HTTP_ADDR`] when unset); port 0
    /// picks a free port.
    pub http_addr: Option<SocketAddr>,
    /// Whether web-form consent records take the client IP from the first `X-Forwarded-For`
    /// entry instead of the socket peer: only behind a proxy that sets that header itself.
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// Seconds between sweeps deleting idempotent answers older than 24 hours (and anonymous
    /// activity past its retention).
    #[serde(default = "default_idempotency_sweep_seconds")]
    pub idempotency_sweep_seconds: u64,
    /// Days an anonymous visitor's activity is kept while no capture links the visitor to a
    /// lead (and a visitor never linked, after it was last seen); 0 keeps it for good.
    #[serde(default = "default_anonymous_activity_days")]
    pub anonymous_activity_days: u32,
    /// Whether the phone-number metadata and the patterns of the default region's and every
    /// source's country code are prepared before the service reports itself serving (else
    /// the first numbers of each country code pay for it).
    #[serde(default = "default_warm_phone_patterns")]
    pub warm_phone_patterns: bool,
}

fn default_warm_phone_patterns() -> bool {
    true
}

fn default_anonymous_activity_days() -> u32 {
    90
}

fn default_idempotency_sweep_seconds() -> u64 {
    600
}

/// Address of the web-to-lead HTTP endpoint unless `CAPTURE_HTTP_ADDR` says otherwise.
pub const DEFAULT_HTTP_ADDR: SocketAddr = leadflow_platform::host::localhost(8081);

fn default_phone_region() -> String {
    "US".to_owned()
}

/// Checked settings the service runs with.
pub struct Checked {
    pub normalize: NormalizeConfig,
    pub keyring: Keyring,
}

impl Config {
    /// Reads the configuration from `CAPTURE_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        // Read apart, not flattened: serde's flatten loses the field path that names the variable.
        let config = Self {
            common: leadflow_platform::config::load(PREFIX)?,
            settings: leadflow_platform::config::load(PREFIX)?,
        };
        config.check()?;
        config.common.check_api_keys(PREFIX)?;
        Ok(config)
    }

    /// Returns the checked settings.
    pub fn check(&self) -> Result<Checked, ConfigError> {
        let region = self.settings.default_phone_region.trim().to_uppercase();
        let default_region = Region::from_str(&region).map_err(|_| ConfigError {
            variable: format!("{PREFIX}DEFAULT_PHONE_REGION"),
            message: format!(
                "`{}` is not an ISO 3166-1 alpha-2 region",
                self.settings.default_phone_region
            ),
        })?;
        let key = self
            .settings
            .identity_hash_key
            .expose_secret()
            .as_bytes()
            .to_vec();
        if key.len() < 32 {
            return Err(ConfigError {
                variable: format!("{PREFIX}IDENTITY_HASH_KEY"),
                message: "must be at least 32 bytes".to_owned(),
            });
        }
        let keyring = self.settings.keyring()?;
        Ok(Checked {
            normalize: NormalizeConfig {
                default_region,
                identity_hash_key: key,
            },
            keyring,
        })
    }
}

impl Settings {
    /// Returns the keyring: the primary KEK, the previous ones and the blind-index key, each
    /// checked apart so an error names its variable (never its value).
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        let invalid = |variable: &str, message: String| ConfigError {
            variable: format!("{PREFIX}{variable}"),
            message,
        };
        let primary =
            Kek::from_hex(&self.pii_key).map_err(|err| invalid("PII_KEY", err.to_string()))?;
        let previous_keys = self
            .pii_previous_keys
            .as_ref()
            .map(split_keys)
            .unwrap_or_default();
        let count = previous_keys.len();
        let previous = previous_keys
            .iter()
            .enumerate()
            .map(|(index, key)| {
                Kek::from_hex(key).map_err(|err| {
                    invalid(
                        "PII_PREVIOUS_KEYS",
                        format!("key {} of {count}: {err}", index + 1),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Keyring::with_keys(primary, previous, &self.blind_index_key)
            .map_err(|err| invalid("BLIND_INDEX_KEY", err.to_string()))
    }
}

/// Returns the comma-separated keys of `keys`, blanks dropped (an empty variable is no key).
fn split_keys(keys: &SecretString) -> Vec<SecretString> {
    keys.expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(|key| SecretString::from(key.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pii_key: &str, previous: Option<&str>) -> Settings {
        serde_json::from_value(serde_json::json!({
            "identity_hash_key": "i".repeat(32),
            "pii_key": pii_key,
            "pii_previous_keys": previous,
            "blind_index_key": "22".repeat(32),
        }))
        .expect("settings")
    }

    #[test]
    fn previous_keys_are_comma_separated_and_only_unwrap() {
        let keyring = settings(
            &"11".repeat(32),
            Some(&format!(" {} ,{},", "33".repeat(32), "44".repeat(32))),
        )
        .keyring()
        .expect("valid keys");
        assert_eq!(keyring.previous_key_ids().len(), 2);
        for blank in [None, Some(""), Some(" , ")] {
            let keyring = settings(&"11".repeat(32), blank).keyring().expect("valid");
            assert!(keyring.previous_key_ids().is_empty(), "{blank:?}");
        }
    }

    #[test]
    fn a_bad_key_is_named_by_its_variable_and_never_shown() {
        let cases = [
            (settings("zz", None), "CAPTURE_PII_KEY", "zz"),
            (
                settings(
                    &"11".repeat(32),
                    Some(&format!("{},0123abcd", "33".repeat(32))),
                ),
                "CAPTURE_PII_PREVIOUS_KEYS",
                "0123abcd",
            ),
        ];
        for (settings, variable, secret) in cases {
            let err = settings.keyring().expect_err("a bad key is refused");
            assert_eq!(err.variable, variable);
            assert!(!err.to_string().contains(secret), "{err}");
        }
        let err = settings(
            &"11".repeat(32),
            Some(&format!("{},0123abcd", "33".repeat(32))),
        )
        .keyring()
        .expect_err("bad");
        assert!(err.message.contains("key 2 of 2"), "{}", err.message);
    }
}
