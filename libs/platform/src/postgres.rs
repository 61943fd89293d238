//! Postgres pools that work inside the service's own schema.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use backon::Retryable;
use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Transaction};

/// Tables every service has: the outbox and the processed-events ledger of its consumers.
static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Session settings for a service whose statements all find their rows through an index
/// (capture's lookups by identity, lead id or lineage link).
///
/// Postgres caches a generic plan per prepared statement and connection once it looks as
/// good as the custom ones; made while a table is nearly empty (a fresh install, the first
/// minute of an import or a load test), that plan scans the whole table, and it is kept
/// until an ANALYZE invalidates it, costing a little more with every row the table gains
/// (measured: capture's rate fell from 1,000 to 260 leads/s within a minute of a fresh
/// database, every lookup a sequential scan). With sequential scans a last resort the plan
/// made on an empty table is the index plan; a table with no usable index is still scanned.
pub const INDEXED_LOOKUPS: &[(&str, &str)] = &[("enable_seqscan", "off")];

/// Returns a pool whose connections use `schema` as their search path.
pub async fn connect(url: &SecretString, schema: &'static str) -> anyhow::Result<PgPool> {
    connect_with_limit(url, schema, 16, &[]).await
}

/// Returns a pool of at most `max_connections` connections in `schema`.
///
/// JIT compilation is off: the services run short statements, for which compiling costs more
/// than it saves, and a statement whose estimate is off (a table just emptied or filled, a
/// recursive lineage query) can spend tens of milliseconds compiling a plan that runs in one.
/// `settings` are further session settings (e.g. [`INDEXED_LOOKUPS`]).
pub async fn connect_with_limit(
    url: &SecretString,
    schema: &'static str,
    max_connections: u32,
    settings: &[(&str, &str)],
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url.expose_secret())
        .context("parse database url")?
        .application_name(schema)
        .options([("search_path", schema), ("jit", "off")])
        .options(settings.iter().copied());
    pool_options(max_connections)
        .connect_with(options)
        .await
        .context("connect to postgres")
}

/// A pooled connection idle for at least this long is pinged before it is handed out.
///
/// sqlx already pings every connection as it goes back into the pool (a broken one is closed
/// there), so one that has been idle for less than this answered moments ago; pinging it again
/// on the way out cost every transaction a round trip of its own (one of the six a new lead
/// took). A connection the server dropped within that second fails its first statement
/// instead, with an error [`is_unavailable`] recognizes, and the release ping then closes it.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// The pool settings of every service: at most `max_connections` (at least 2), a 5 s acquire
/// timeout, and a ping before handing out a connection idle for [`PING_AFTER_IDLE`] or more.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_AFTER_IDLE {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Begins a transaction on a connection from `pool`.
///
/// A connection handed out unpinged (see [`PING_AFTER_IDLE`]) that the server has dropped
/// fails at `BEGIN`, before anything of the transaction ran, so `BEGIN` is tried again on the
/// next connection, once per connection the pool may hold: after a database restart the
/// callers see no error for the connections it dropped. A pool that gave no connection in time
/// is not tried again (that wait is already over).
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    (|| pool.begin())
        .retry(begin_retries(pool))
        .when(is_dropped_connection)
        .await
}

/// [`begin`], running `statement` (e.g. `BEGIN; SET LOCAL …`) instead of `BEGIN`.
pub async fn begin_with(
    pool: &PgPool,
    statement: &'static str,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    (|| pool.begin_with(statement))
        .retry(begin_retries(pool))
        .when(is_dropped_connection)
        .await
}

/// Straight away, as many times as the pool may hold connections.
fn begin_retries(pool: &PgPool) -> backon::ConstantBuilder {
    backon::ConstantBuilder::default()
        .with_delay(Duration::ZERO)
        .with_max_times(usize::try_from(pool.options().get_max_connections()).unwrap_or(16))
}

/// An error of a connection that went away, as opposed to the pool giving none.
fn is_dropped_connection(error: &sqlx::Error) -> bool {
    is_unavailable(error) && !matches!(error, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

/// Returns whether `error` says the database could not be reached or went away, rather than
/// refusing the statement: a dropped or refused connection, a server shutting down or starting
/// up (SQLSTATE class 08, 57P01–57P03), too many connections (53300), or no pooled connection
/// in time. The operation may succeed if retried later (gRPC `UNAVAILABLE`).
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Returns whether any cause of `error` is a [`sqlx::Error`] that [`is_unavailable`].
pub fn caused_by_unavailable(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .any(is_unavailable)
}

/// Creates the schema, then applies the platform's and the service's migrations to it.
///
/// The schema must exist before migrating so that `_sqlx_migrations` lands in it (IOx does
/// the same). Both migrators share that table, so each ignores the other's versions.
pub async fn migrate(
    pool: &PgPool,
    schema: &'static str,
    service: &Migrator,
) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(pool)
    .await
    .context("create schema")?;
    for (name, source) in [("platform", &PLATFORM_MIGRATOR), ("service", service)] {
        let mut migrator = Migrator::with_migrations(source.iter().cloned().collect());
        migrator.set_ignore_missing(true);
        migrator
            .run(pool)
            .await
            .with_context(|| format!("apply {name} migrations"))?;
    }
    Ok(())
}
