//! analytics's configuration, read from `ANALYTICS_*` variables.

use leadflow_platform::config::{CommonConfig, ConfigError};
use serde::Deserialize;

/// Environment prefix of this service.
pub const PREFIX: &str = "ANALYTICS_";

/// Everything analytics reads from the environment.
#[derive(Debug, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
}

impl Config {
    /// Reads the configuration from `ANALYTICS_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        leadflow_platform::config::load(PREFIX)
    }
}
