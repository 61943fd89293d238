//! qualification's configuration, read from `QUALIFICATION_*` variables.

use leadflow_platform::config::{CommonConfig, ConfigError};
use serde::Deserialize;

/// Environment prefix of this service.
pub const PREFIX: &str = "QUALIFICATION_";

/// Everything qualification reads from the environment.
#[derive(Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Config {
    /// Reads the configuration from `QUALIFICATION_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        leadflow_platform::config::load(PREFIX)
    }
}
