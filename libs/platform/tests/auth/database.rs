//! A fresh Postgres database per test, migrated with the platform's migrations into
//! [`SCHEMA`]; Postgres only (the auth tests need no Redis).
//!
//! The database is `lf_test_<uuid>`, created through `LEADFLOW_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped when the [`TestDatabase`] is
//! dropped, also when the test panics. A missing Postgres fails the test. `TEST_LOG=1` prints
//! the library's logs.

use std::str::FromStr;
use std::sync::Once;

use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgPool};
use uuid::Uuid;

/// Schema the platform's tables are migrated into; the database is fresh, so a fixed name is safe.
pub const SCHEMA: &str = "testsvc";

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The service migrations of the test schema: none besides the platform's.
static SERVICE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

/// A database of one test's own.
pub struct TestDatabase {
    pub pool: PgPool,
    database: String,
    admin_options: PgConnectOptions,
}

impl TestDatabase {
    /// Creates a database and applies the platform's migrations to [`SCHEMA`].
    pub async fn new() -> Self {
        init_logs();
        let admin_url = std::env::var("LEADFLOW_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        let database = format!("lf_test_{}", Uuid::new_v4().simple());
        let admin_options =
            PgConnectOptions::from_str(&admin_url).expect("parse LEADFLOW_TEST_DATABASE_URL");
        let mut admin = admin_options
            .connect()
            .await
            .expect("connect to the test Postgres (LEADFLOW_TEST_DATABASE_URL)");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");

        let url = SecretString::from(with_database(&admin_url, &database));
        let pool = leadflow_platform::postgres::connect(&url, SCHEMA)
            .await
            .expect("connect to the test database");
        leadflow_platform::postgres::migrate(&pool, SCHEMA, &SERVICE_MIGRATOR)
            .await
            .expect("migrate the test database");
        Self {
            pool,
            database,
            admin_options,
        }
    }
}

impl Drop for TestDatabase {
    /// Drops the database (forcing out connections still open), on a thread of its own so
    /// that it also runs while a test unwinds.
    fn drop(&mut self) {
        let database = self.database.clone();
        let admin_options = self.admin_options.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build cleanup runtime");
            runtime.block_on(async move {
                if let Ok(mut admin) = admin_options.connect().await {
                    let dropped = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                        )))
                        .await;
                    if let Err(err) = dropped {
                        eprintln!("drop test database {database}: {err}");
                    }
                    let _ = admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Replaces the database of a `postgres://` URL.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |at| at + 3);
    let (base, query) = match url.find('?') {
        Some(at) => (&url[..at], &url[at..]),
        None => (url, ""),
    };
    let base = match base[authority_start..].find('/') {
        Some(at) => &base[..authority_start + at],
        None => base,
    };
    format!("{base}/{database}{query}")
}

fn init_logs() {
    static INIT: Once = Once::new();
    if std::env::var_os("TEST_LOG").is_some() {
        INIT.call_once(|| {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .with_test_writer()
                .try_init();
        });
    }
}
