//! Test environment for the platform's integration tests: a fresh Postgres database migrated
//! into [`SCHEMA`], a Redis stream prefix of its own, and bounded waits.
//!
//! The database is `lf_test_<uuid>`, created through `LEADFLOW_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and dropped, with the Redis keys under the
//! prefix, when the [`TestEnv`] is dropped (also when the test panics). Redis is
//! `LEADFLOW_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`). `TEST_LOG=1` prints the
//! library's logs.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Once;
use std::time::{Duration, Instant};

use leadflow_platform::events::consumer::{ConsumerSettings, EventHandler, HandleError};
use leadflow_platform::events::{ENVELOPE_FIELD, TYPE_FIELD, types};
use leadflow_proto::events::v1::{Envelope, LeadCaptured};
use prost::Message;
use redis::aio::ConnectionManager;
use redis::streams::{StreamId, StreamInfoGroupsReply, StreamPendingCountReply, StreamRangeReply};
use secrecy::SecretString;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor, PgConnection, PgPool};
use uuid::Uuid;

/// Schema the platform's tables are migrated into; the database is fresh, so a fixed name is safe.
pub const SCHEMA: &str = "testsvc";
/// Producer name written into envelopes.
pub const PRODUCER: &str = "testsvc";
/// Upper bound of every wait: a bug fails the test instead of hanging it.
pub const DEADLINE: Duration = Duration::from_secs(10);

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The service migrations of the test schema: none besides the platform's.
static SERVICE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

/// A fresh database and stream prefix for one test.
pub struct TestEnv {
    pub pool: PgPool,
    pub redis_client: redis::Client,
    pub redis: ConnectionManager,
    prefix: String,
    database: String,
    admin_options: PgConnectOptions,
    redis_url: String,
}

impl TestEnv {
    /// Creates and migrates a database of its own, plus the `effects` table the test handlers
    /// write to. A missing Postgres or Redis fails the test.
    pub async fn new() -> Self {
        init_logs();
        let admin_url = std::env::var("LEADFLOW_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
        let redis_url = std::env::var("LEADFLOW_TEST_REDIS_URL")
            .unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
        let id = Uuid::new_v4().simple().to_string();
        let database = format!("lf_test_{id}");

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
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {SCHEMA}.effects (event_id UUID PRIMARY KEY, n INT NOT NULL)"
        )))
        .execute(&pool)
        .await
        .expect("create effects table");

        let redis_client =
            redis::Client::open(redis_url.as_str()).expect("parse LEADFLOW_TEST_REDIS_URL");
        let redis = leadflow_platform::redis::manager(&redis_client)
            .await
            .expect("connect to the test Redis (LEADFLOW_TEST_REDIS_URL)");

        Self {
            pool,
            redis_client,
            redis,
            prefix: format!("lf-test-{id}:"),
            database,
            admin_options,
            redis_url,
        }
    }

    /// Returns a stream name unique to this test.
    pub fn stream(&self, name: &str) -> String {
        leadflow_platform::events::stream_name(&self.prefix, name)
    }

    /// Returns a redis connection for the test's own commands.
    pub fn conn(&self) -> ConnectionManager {
        self.redis.clone()
    }

    pub async fn exists(&self, key: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut self.conn())
            .await
            .expect("exists")
            == 1
    }

    pub async fn xlen(&self, stream: &str) -> usize {
        redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut self.conn())
            .await
            .expect("xlen")
    }

    /// Every entry of `stream`, oldest first.
    pub async fn entries(&self, stream: &str) -> Vec<StreamId> {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query_async(&mut self.conn())
            .await
            .expect("xrange");
        reply.ids
    }

    /// The event ids of the envelopes on `stream`, oldest first.
    pub async fn event_ids(&self, stream: &str) -> Vec<String> {
        self.envelopes(stream)
            .await
            .into_iter()
            .map(|envelope| envelope.event_id)
            .collect()
    }

    /// The decoded envelopes of `stream`, oldest first.
    pub async fn envelopes(&self, stream: &str) -> Vec<Envelope> {
        self.entries(stream)
            .await
            .iter()
            .map(|entry| {
                let bytes: Vec<u8> = entry
                    .get(ENVELOPE_FIELD)
                    .expect("entry has an envelope field");
                Envelope::decode(bytes.as_slice()).expect("decode envelope")
            })
            .collect()
    }

    /// Appends an entry as the relay writes it; returns the entry id.
    pub async fn xadd(&self, stream: &str, event_type: &str, envelope: &[u8]) -> String {
        redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(TYPE_FIELD)
            .arg(event_type)
            .arg(ENVELOPE_FIELD)
            .arg(envelope)
            .query_async(&mut self.conn())
            .await
            .expect("xadd")
    }

    /// Appends `envelope`, encoded, as the relay would; returns the entry id.
    pub async fn publish(&self, stream: &str, envelope: &Envelope) -> String {
        self.xadd(stream, &envelope.event_type, &envelope.encode_to_vec())
            .await
    }

    /// Entries delivered to `group` and not acknowledged (0 when the group does not exist).
    pub async fn pending(&self, stream: &str, group: &str) -> usize {
        self.group(stream, group)
            .await
            .map_or(0, |group| group.pending)
    }

    /// Entries pending for `consumer` in `group`.
    pub async fn pending_of(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
    ) -> Vec<redis::streams::StreamPendingId> {
        let reply: redis::RedisResult<StreamPendingCountReply> = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(10_000)
            .arg(consumer)
            .query_async(&mut self.conn())
            .await;
        match reply {
            Ok(reply) => reply.ids,
            Err(err) if err.code() == Some("NOGROUP") => Vec::new(),
            Err(err) => panic!("xpending: {err}"),
        }
    }

    /// The group's `XINFO GROUPS` line, if the stream and group exist.
    pub async fn group(
        &self,
        stream: &str,
        group: &str,
    ) -> Option<redis::streams::StreamInfoGroup> {
        if !self.exists(stream).await {
            return None;
        }
        let reply: StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.conn())
            .await
            .expect("xinfo groups");
        reply.groups.into_iter().find(|g| g.name == group)
    }

    /// `n` of every row in the `effects` table, by event id.
    pub async fn effects(&self) -> HashMap<Uuid, i32> {
        sqlx::query_as::<_, (Uuid, i32)>(sqlx::AssertSqlSafe(format!(
            "SELECT event_id, n FROM {SCHEMA}.effects"
        )))
        .fetch_all(&self.pool)
        .await
        .expect("read effects")
        .into_iter()
        .collect()
    }

    /// Rows of the processed-events ledger.
    pub async fn processed_count(&self) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {SCHEMA}.processed_events"
        )))
        .fetch_one(&self.pool)
        .await
        .expect("count processed events")
    }

    /// `(id, published_at IS NOT NULL)` of the outbox row holding `event_id`.
    pub async fn outbox_row(&self, event_id: &str) -> (i64, bool) {
        let event_id = Uuid::parse_str(event_id).expect("event id is a uuid");
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT id, published_at IS NOT NULL FROM {SCHEMA}.outbox WHERE event_id = $1"
        )))
        .bind(event_id)
        .fetch_one(&self.pool)
        .await
        .expect("read outbox row")
    }

    /// Count of outbox rows not yet published.
    pub async fn unpublished(&self) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {SCHEMA}.outbox WHERE published_at IS NULL"
        )))
        .fetch_one(&self.pool)
        .await
        .expect("count unpublished rows")
    }

    /// Consumer settings fast enough for tests: 200 ms blocks, 300 ms min idle, 5 deliveries.
    pub fn settings(&self, group: &str, consumer: &str, streams: &[&str]) -> ConsumerSettings {
        ConsumerSettings {
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            streams: streams.iter().map(|s| (*s).to_owned()).collect(),
            block: Duration::from_millis(200),
            batch_size: 32,
            min_idle: Duration::from_millis(300),
            max_deliveries: 5,
        }
    }
}

impl Drop for TestEnv {
    /// Drops the database (forcing out connections still open) and the prefix's Redis keys,
    /// on a thread of its own so that it also runs while a test unwinds.
    fn drop(&mut self) {
        let database = self.database.clone();
        let admin_options = self.admin_options.clone();
        let redis_url = self.redis_url.clone();
        let pattern = format!("{}*", self.prefix);
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
                if let Ok(client) = redis::Client::open(redis_url.as_str())
                    && let Ok(mut conn) = client.get_multiplexed_async_connection().await
                {
                    let mut cursor: u64 = 0;
                    loop {
                        let scanned: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut conn)
                            .await;
                        let Ok((next, keys)) = scanned else { break };
                        if !keys.is_empty() {
                            let _: redis::RedisResult<i64> =
                                redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
                        }
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
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

/// Polls `probe` every 25 ms until it returns `true`; panics naming `what` after [`DEADLINE`].
pub async fn wait_until<F, Fut>(what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A `lead.captured` envelope about a fresh lead.
pub fn lead_captured() -> Envelope {
    let lead_id = Uuid::now_v7();
    leadflow_platform::events::envelope(
        PRODUCER,
        types::LEAD_CAPTURED,
        Some(lead_id),
        &LeadCaptured {
            lead_id: lead_id.to_string(),
            source: "test".to_owned(),
            channel: "web".to_owned(),
            ..LeadCaptured::default()
        },
    )
}

/// Parses an envelope's event id.
pub fn event_id(envelope: &Envelope) -> Uuid {
    Uuid::parse_str(&envelope.event_id).expect("event id is a uuid")
}

/// Records each event it applies in `effects`, counting applications in `n`; fails
/// transiently for the event ids in `poison`, counting those attempts.
#[derive(Default)]
pub struct Recorder {
    pub poison: Vec<Uuid>,
    pub poison_attempts: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl EventHandler for Recorder {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        _stream: &str,
        envelope: &Envelope,
    ) -> Result<(), HandleError> {
        let event_id = Uuid::parse_str(&envelope.event_id)
            .map_err(|err| HandleError::Permanent(err.into()))?;
        if self.poison.contains(&event_id) {
            self.poison_attempts
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(HandleError::Transient(anyhow::anyhow!(
                "poison event {event_id}"
            )));
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {SCHEMA}.effects (event_id, n) VALUES ($1, 1) \
             ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1"
        )))
        .bind(event_id)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }
}

/// Never finishes an event, like a consumer hung inside its handler; counts the events it got.
#[derive(Default)]
pub struct Stuck {
    pub entered: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl EventHandler for Stuck {
    async fn handle(
        &self,
        _tx: &mut PgConnection,
        _stream: &str,
        _envelope: &Envelope,
    ) -> Result<(), HandleError> {
        self.entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending::<()>().await;
        Ok(())
    }
}
