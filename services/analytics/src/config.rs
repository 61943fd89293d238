//! analytics's configuration, read from `ANALYTICS_*` variables.

use leadflow_platform::config::{CommonConfig, ConfigError};

/// Environment prefix of this service.
pub const PREFIX: &str = "ANALYTICS_";

/// Everything analytics reads from the environment.
#[derive(Debug)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    /// Reads the configuration from `ANALYTICS_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: leadflow_platform::config::load(PREFIX)?,
        })
    }
}
