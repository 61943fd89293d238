//! capture's configuration, read from `CAPTURE_*` variables.

use std::net::SocketAddr;
use std::str::FromStr;

use leadflow_platform::config::{CommonConfig, ConfigError};
use leadflow_platform::pii::Keyring;
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
    /// Key-encryption key wrapping each lead's data key: 32 bytes as 64 hex characters.
    pub pii_key: SecretString,
    /// Key of the blind indexes used to find people by email and phone: 64 hex characters.
    pub blind_index_key: SecretString,
    /// Captures per minute allowed per API key on `CaptureLead`; 0 means unlimited.
    #[serde(default)]
    pub key_rate_per_minute: u32,
    /// Address of the web-to-lead HTTP endpoint ([`DEFAULT_HTTP_ADDR`] when unset); port 0
    /// picks a free port.
    pub http_addr: Option<SocketAddr>,
    /// Whether web-form consent records take the client IP from the first `X-Forwarded-For`
    /// entry instead of the socket peer: only behind a proxy that sets that header itself.
    #[serde(default)]
    pub trust_forwarded_for: bool,
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
        let keyring = Keyring::new(&self.settings.pii_key, &self.settings.blind_index_key)
            .map_err(|err| {
                let variable =
                    if Keyring::new(&self.settings.pii_key, &self.settings.pii_key).is_err() {
                        "PII_KEY"
                    } else {
                        "BLIND_INDEX_KEY"
                    };
                ConfigError {
                    variable: format!("{PREFIX}{variable}"),
                    message: err.to_string(),
                }
            })?;
        Ok(Checked {
            normalize: NormalizeConfig {
                default_region,
                identity_hash_key: key,
            },
            keyring,
        })
    }
}
