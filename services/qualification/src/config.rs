//! qualification's configuration, read from `QUALIFICATION_*` variables.

use leadflow_platform::config::{CommonConfig, ConfigError};

/// Environment prefix of this service.
pub const PREFIX: &str = "QUALIFICATION_";

/// Everything qualification reads from the environment.
#[derive(Debug)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    /// Reads the configuration from `QUALIFICATION_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            common: leadflow_platform::config::load(PREFIX)?,
        })
    }
}
