//! Postgres pools that work inside the service's own schema.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

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
    PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connect to postgres")
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
