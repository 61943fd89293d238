//! Redis connections: a shared, self-healing one for commands, and dedicated ones for
//! blocking reads (a blocking read must never hold up other commands; see reliability §1.3).

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client};
use secrecy::{ExposeSecret, SecretString};

/// Opens a Redis client (no connection yet).
pub fn client(url: &SecretString) -> anyhow::Result<Client> {
    Client::open(url.expose_secret()).context("parse redis url")
}

/// Returns a shared connection that reconnects by itself after Redis restarts.
pub async fn manager(client: &Client) -> anyhow::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2);
    client
        .get_connection_manager_with_config(config)
        .await
        .context("connect to redis")
}

/// Returns a connection of its own for blocking reads, without a response timeout:
/// callers bound each blocking read with `tokio::time::timeout` themselves.
pub async fn blocking_connection(client: &Client) -> anyhow::Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(None);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .context("connect to redis for blocking reads")
}
