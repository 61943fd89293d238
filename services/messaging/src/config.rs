//! messaging's configuration, read from `MESSAGING_*` variables.

use std::path::PathBuf;

use leadflow_platform::config::{CommonConfig, ConfigError};
use serde::Deserialize;

/// Environment prefix of this service.
pub const PREFIX: &str = "MESSAGING_";

/// Everything messaging reads from the environment.
#[derive(Debug)]
pub struct Config {
    pub common: CommonConfig,
    pub settings: Settings,
}

/// messaging's own settings.
#[derive(Debug, Deserialize)]
pub struct Settings {
    /// Folder where the local sink provider writes each message as a file.
    #[serde(default = "default_sink_dir")]
    pub sink_dir: PathBuf,
    /// URL of the capture service, asked for a lead's contact details at send time.
    #[serde(default = "default_capture_url")]
    pub capture_url: String,
    /// API key messaging calls capture with (scopes `leads:read`, `pii:read`).
    pub capture_api_key: secrecy::SecretString,
    /// Sender of emails.
    #[serde(default = "default_from_address")]
    pub from_address: String,
}

fn default_sink_dir() -> PathBuf {
    std::env::temp_dir().join("leadflow-sink")
}

fn default_capture_url() -> String {
    "http://127.0.0.1:50051".to_owned()
}

fn default_from_address() -> String {
    "leadflow <hello@leadflow.localhost>".to_owned()
}

impl Config {
    /// Reads the configuration from `MESSAGING_*` variables; API keys are checked, so
    /// `MESSAGING_API_KEY_PEPPER` is required.
    pub fn from_env() -> Result<Self, ConfigError> {
        // Read apart, not flattened: serde's flatten loses the field path that names the variable.
        let config = Self {
            common: leadflow_platform::config::load(PREFIX)?,
            settings: leadflow_platform::config::load(PREFIX)?,
        };
        config.common.check_api_keys(PREFIX)?;
        if !config.settings.capture_url.starts_with("http://")
            && !config.settings.capture_url.starts_with("https://")
        {
            return Err(ConfigError {
                variable: format!("{PREFIX}CAPTURE_URL"),
                message: "must be an http:// or https:// URL".to_owned(),
            });
        }
        Ok(config)
    }
}
