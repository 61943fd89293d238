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
    /// Reads the configuration from `ANALYTICS_*` variables; API keys are checked, so
    /// `ANALYTICS_API_KEY_PEPPER` is required.
    pub fn from_env() -> Result<Self, ConfigError> {
        let common: CommonConfig = leadflow_platform::config::load(PREFIX)?;
        common.check_api_keys(PREFIX)?;
        Ok(Self { common })
    }
}
