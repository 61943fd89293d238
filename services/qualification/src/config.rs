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
    /// Reads the configuration from `QUALIFICATION_*` variables; API keys are checked, so
    /// `QUALIFICATION_API_KEY_PEPPER` is required.
    pub fn from_env() -> Result<Self, ConfigError> {
        let common: CommonConfig = leadflow_platform::config::load(PREFIX)?;
        common.check_api_keys(PREFIX)?;
        Ok(Self { common })
    }
}
