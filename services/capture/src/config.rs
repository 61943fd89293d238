//! capture's configuration, read from `CAPTURE_*` variables.

use leadflow_platform::config::{CommonConfig, ConfigError};
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
    /// Region used to read phone numbers written without a country code (ISO 3166-1 alpha-2).
    #[serde(default = "default_phone_region")]
    pub default_phone_region: String,
    /// Key of the keyed hashes that stand for email and phone in events (at least 32 bytes).
    pub identity_hash_key: SecretString,
}

fn default_phone_region() -> String {
    "US".to_owned()
}

impl Config {
    /// Reads the configuration from `CAPTURE_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        // Read apart, not flattened: serde's flatten loses the field path that names the variable.
        let config = Self {
            common: leadflow_platform::config::load(PREFIX)?,
            settings: leadflow_platform::config::load(PREFIX)?,
        };
        config.domain()?;
        Ok(config)
    }

    /// Returns the checked settings of the domain logic.
    pub fn domain(&self) -> Result<NormalizeConfig, ConfigError> {
        let default_region = self
            .settings
            .default_phone_region
            .trim()
            .to_uppercase()
            .parse()
            .map_err(|_| ConfigError {
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
        Ok(NormalizeConfig {
            default_region,
            identity_hash_key: key,
        })
    }
}
