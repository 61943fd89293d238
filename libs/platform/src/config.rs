//! Configuration from the environment, one prefix per service (see style §5).

use std::net::SocketAddr;
use std::time::Duration;

use figment::Figment;
use figment::providers::Env;
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Exit code for a configuration error (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// Longest API-key cache TTL accepted: a day. A revocation should not wait longer, and the
/// cache panics on absurd durations.
pub const MAX_API_KEY_CACHE_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// A configuration error naming the environment variable at fault.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct ConfigError {
    /// The environment variable, e.g. `CAPTURE_DATABASE_URL`.
    pub variable: String,
    /// What is wrong with it.
    pub message: String,
}

/// Reads `T` from the environment variables starting with `prefix`.
pub fn load<T: DeserializeOwned>(prefix: &str) -> Result<T, ConfigError> {
    Figment::new()
        .merge(Env::prefixed(prefix))
        .extract()
        .map_err(|err| describe(prefix, err))
}

fn describe(prefix: &str, err: figment::Error) -> ConfigError {
    let mut key = err.path.join("_");
    let message = match &err.kind {
        figment::error::Kind::MissingField(field) => {
            if key.is_empty() {
                key = field.to_string();
            }
            "is required but not set".to_owned()
        }
        other => other.to_string(),
    };
    let variable = if key.is_empty() {
        format!("{prefix}*")
    } else {
        format!("{prefix}{}", key.to_uppercase())
    };
    ConfigError { variable, message }
}

/// Returns the loaded value, or prints the error naming the variable and exits with 64.
pub fn or_exit<T>(service: &str, loaded: Result<T, ConfigError>) -> T {
    loaded.unwrap_or_else(|err| {
        eprintln!("{service}: configuration error: {err}");
        std::process::exit(EXIT_CONFIG);
    })
}

/// Settings every service has, read under the service's prefix.
#[derive(Debug, Deserialize)]
pub struct CommonConfig {
    /// Address the gRPC server binds; port 0 picks a free port.
    pub grpc_addr: Option<SocketAddr>,
    /// Postgres URL; the service works in its own schema.
    pub database_url: SecretString,
    /// Most Postgres connections this process opens.
    #[serde(default = "default_database_max_connections")]
    pub database_max_connections: u32,
    /// Redis URL for the event streams.
    pub redis_url: SecretString,
    /// Prefix for every stream name (isolates test runs and tenants); empty by default.
    #[serde(default)]
    pub stream_prefix: String,
    /// Applies migrations when the server starts (development); `migrate` does it otherwise.
    #[serde(default)]
    pub migrate_on_start: bool,
    /// Largest accepted request message, in bytes.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Time allowed for in-flight calls, consumers and the outbox to drain on shutdown.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// Consumer name within the consumer group; unique per replica (the pod name).
    pub consumer_name: Option<String>,
    /// Idle time after which another consumer takes over a pending entry (`XAUTOCLAIM`).
    #[serde(default = "default_consumer_min_idle_ms")]
    pub consumer_min_idle_ms: u64,
    /// Deliveries after which an entry is parked in `<stream>.dlq`.
    #[serde(default = "default_consumer_max_deliveries")]
    pub consumer_max_deliveries: usize,
    /// How long one blocking stream read waits.
    #[serde(default = "default_consumer_block_ms")]
    pub consumer_block_ms: u64,
    /// How often health checks Postgres and Redis.
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// How often the outbox relay polls for events no wake of this process announced (other
    /// replicas' rows, or a pass that failed).
    #[serde(default = "default_relay_poll_ms")]
    pub relay_poll_ms: u64,
    /// The shortest time between the starts of two relay passes: an idle relay publishes a
    /// woken event at once; one that has just published waits out the rest of this interval,
    /// so events committed meanwhile go out together in one pass (0: a pass per wake).
    #[serde(default = "default_relay_min_interval_ms")]
    pub relay_min_interval_ms: u64,
    /// Hours a published outbox row is kept (the window `republish` can send again), after
    /// which the relay deletes it; 0 keeps published rows for good.
    #[serde(default = "default_outbox_retention_hours")]
    pub outbox_retention_hours: u64,
    /// Approximate length each stream is trimmed to (`XADD MAXLEN ~`).
    #[serde(default = "default_stream_max_len")]
    pub stream_max_len: usize,
    /// Pepper of the API-key secret hashes (at least 32 bytes); services that check keys
    /// require it.
    pub api_key_pepper: Option<SecretString>,
    /// Environment named in new API keys (`lf_<env>_…`): `dev`, `test`, `live`; imported keys
    /// must name it too.
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// How long a looked-up API key is trusted without asking Postgres again: a key revoked
    /// by another process (`revoke-api-key`, another replica) stops working within this time.
    #[serde(default = "default_api_key_cache_ttl_ms")]
    pub api_key_cache_ttl_ms: u64,
    /// Whether gRPC reflection is open to callers without a key (else it needs `admin`).
    #[serde(default = "default_true")]
    pub reflection_open: bool,
}

fn default_database_max_connections() -> u32 {
    16
}

fn default_api_key_env() -> String {
    "dev".to_owned()
}
fn default_api_key_cache_ttl_ms() -> u64 {
    crate::auth::authenticator::DEFAULT_CACHE_TTL.as_millis() as u64
}
fn default_true() -> bool {
    true
}

fn default_max_request_bytes() -> usize {
    256 * 1024
}
fn default_shutdown_grace_ms() -> u64 {
    20_000
}
fn default_consumer_min_idle_ms() -> u64 {
    30_000
}
fn default_consumer_max_deliveries() -> usize {
    5
}
fn default_consumer_block_ms() -> u64 {
    2_000
}
fn default_health_interval_ms() -> u64 {
    1_000
}
fn default_relay_poll_ms() -> u64 {
    500
}
fn default_relay_min_interval_ms() -> u64 {
    5
}
fn default_outbox_retention_hours() -> u64 {
    24 * 7
}
fn default_stream_max_len() -> usize {
    1_000_000
}

impl CommonConfig {
    /// Returns the shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Returns how long a looked-up API key is cached.
    pub fn api_key_cache_ttl(&self) -> Duration {
        Duration::from_millis(self.api_key_cache_ttl_ms)
    }

    /// Checks the settings of a service that verifies API keys, read under `prefix`: the pepper
    /// is set and long enough, the key environment is a valid token and the cache TTL at most
    /// [`MAX_API_KEY_CACHE_TTL_MS`]. The error names the variable.
    pub fn check_api_keys(&self, prefix: &str) -> Result<(), ConfigError> {
        let error = |name: &str, message: String| ConfigError {
            variable: format!("{prefix}{name}"),
            message,
        };
        let Some(pepper) = &self.api_key_pepper else {
            return Err(error(
                "API_KEY_PEPPER",
                "is required but not set".to_owned(),
            ));
        };
        crate::auth::Pepper::new(pepper.clone())
            .map_err(|err| error("API_KEY_PEPPER", err.to_string()))?;
        crate::auth::key::validate_env(&self.api_key_env)
            .map_err(|err| error("API_KEY_ENV", err.to_string()))?;
        if self.api_key_cache_ttl_ms > MAX_API_KEY_CACHE_TTL_MS {
            return Err(error(
                "API_KEY_CACHE_TTL_MS",
                format!("must be at most {MAX_API_KEY_CACHE_TTL_MS} (a day)"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        database_url: String,
        #[allow(dead_code)]
        #[serde(default)]
        port: u16,
    }

    #[test]
    fn missing_variable_is_named_with_its_prefix() {
        let err = Figment::new()
            .extract::<Sample>()
            .map_err(|err| describe("SAMPLE_", err))
            .unwrap_err();
        assert_eq!(err.variable, "SAMPLE_DATABASE_URL");
        assert!(err.message.contains("required"), "{}", err.message);
    }

    /// Returns the settings of the two required variables alone: defaults for the rest.
    fn minimal() -> CommonConfig {
        Figment::new()
            .merge(("database_url", "postgres://localhost/x"))
            .merge(("redis_url", "redis://localhost"))
            .extract()
            .expect("common config")
    }

    /// Returns settings with the given API-key fields and defaults for the rest.
    fn common(pepper: Option<&str>, env: &str, cache_ttl_ms: u64) -> CommonConfig {
        let mut config = minimal();
        config.api_key_pepper = pepper.map(|pepper| SecretString::from(pepper.to_owned()));
        config.api_key_env = env.to_owned();
        config.api_key_cache_ttl_ms = cache_ttl_ms;
        config
    }

    #[test]
    fn api_key_settings_are_checked_naming_the_variable() {
        let pepper = "p".repeat(crate::auth::pepper::MIN_PEPPER_LEN);
        let short = "p".repeat(crate::auth::pepper::MIN_PEPPER_LEN - 1);
        let cases = [
            (Some(pepper.as_str()), "live", 30_000, None),
            (Some(pepper.as_str()), "live", 0, None),
            (None, "live", 30_000, Some("SAMPLE_API_KEY_PEPPER")),
            (
                Some(short.as_str()),
                "live",
                30_000,
                Some("SAMPLE_API_KEY_PEPPER"),
            ),
            (
                Some(pepper.as_str()),
                "Live",
                30_000,
                Some("SAMPLE_API_KEY_ENV"),
            ),
            (
                Some(pepper.as_str()),
                "live",
                MAX_API_KEY_CACHE_TTL_MS + 1,
                Some("SAMPLE_API_KEY_CACHE_TTL_MS"),
            ),
        ];
        for (pepper, env, cache_ttl_ms, expected) in cases {
            let checked = common(pepper, env, cache_ttl_ms).check_api_keys("SAMPLE_");
            assert_eq!(
                checked.err().map(|err| err.variable),
                expected.map(str::to_owned),
                "{pepper:?} {env} {cache_ttl_ms}"
            );
        }
        assert_eq!(
            minimal().api_key_cache_ttl(),
            crate::auth::authenticator::DEFAULT_CACHE_TTL
        );
    }

    #[test]
    fn bad_value_is_named_with_its_prefix() {
        let err = Figment::new()
            .merge(("database_url", "x"))
            .merge(("port", "not-a-port"))
            .extract::<Sample>()
            .map_err(|err| describe("SAMPLE_", err))
            .unwrap_err();
        assert_eq!(err.variable, "SAMPLE_PORT");
    }
}
