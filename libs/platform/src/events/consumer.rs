//! The consuming half: a runner on Redis consumer groups that applies each event exactly once
//! per group (the event id is recorded in the same transaction as the effect), takes over the
//! pending entries of dead consumers with `XAUTOCLAIM`, recreates its group after `NOGROUP`,
//! bounds every blocking read with a timeout, and parks entries that keep failing in
//! `<stream>.dlq` (reliability §1.3–1.4).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use leadflow_proto::events::v1::Envelope;
use prost::Message;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::outbox::OutboxWake;
use super::{DLQ_SUFFIX, ENVELOPE_FIELD, TYPE_FIELD};

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Retrying cannot help (unknown schema version, undecodable payload): dead-letter now.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
    /// Retrying may help (a dependency is down, an event it needs has not arrived yet).
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
}

impl HandleError {
    fn class(&self) -> &'static str {
        match self {
            HandleError::Permanent(_) => "permanent",
            HandleError::Transient(_) => "transient",
        }
    }
}

impl From<sqlx::Error> for HandleError {
    fn from(err: sqlx::Error) -> Self {
        HandleError::Transient(err.into())
    }
}

/// Applies events of the streams a consumer reads.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `envelope` (read from `stream`) inside `tx`; the runner commits it together
    /// with the record that the event was processed, wakes the outbox relay (the handler
    /// may have added events), then acknowledges the entry.
    async fn handle(
        &self,
        tx: &mut PgConnection,
        stream: &str,
        envelope: &Envelope,
    ) -> Result<(), HandleError>;
}

/// How a consumer reads.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Consumer group, one per service (`qualification`, …).
    pub group: String,
    /// This replica's name within the group.
    pub consumer: String,
    /// Full stream names to read.
    pub streams: Vec<String>,
    /// How long one blocking read waits for new entries.
    pub block: Duration,
    /// Entries per read.
    pub batch_size: usize,
    /// Idle time after which a pending entry is taken over (and a failed one retried).
    pub min_idle: Duration,
    /// Deliveries after which an entry is parked in the dead-letter stream.
    pub max_deliveries: usize,
}

impl ConsumerSettings {
    fn claim_interval(&self) -> Duration {
        (self.min_idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
    }
}

/// Runs a handler over consumer groups until stopped.
pub struct Consumer<H> {
    pool: PgPool,
    client: redis::Client,
    commands: ConnectionManager,
    schema: &'static str,
    settings: ConsumerSettings,
    handler: Arc<H>,
    /// Wakes the relay after a handler's transaction commits, for the events it added.
    outbox_wake: OutboxWake,
    /// Last error per entry id, reported when the entry is dead-lettered.
    last_errors: HashMap<String, String>,
}

enum Outcome {
    Applied,
    AlreadyApplied,
}

impl<H: EventHandler> Consumer<H> {
    /// Returns a consumer whose processed-events ledger lives in `schema` and that wakes the
    /// outbox relay through `outbox_wake` after each applied event.
    pub fn new(
        pool: PgPool,
        client: redis::Client,
        commands: ConnectionManager,
        schema: &'static str,
        settings: ConsumerSettings,
        handler: Arc<H>,
        outbox_wake: OutboxWake,
    ) -> Self {
        Self {
            pool,
            client,
            commands,
            schema,
            settings,
            handler,
            outbox_wake,
            last_errors: HashMap::new(),
        }
    }

    /// Reads and applies events until `stop` is cancelled. The entry in hand is finished and
    /// acknowledged before returning.
    pub async fn run(mut self, stop: CancellationToken) {
        if let Err(err) = self.ensure_groups().await {
            tracing::warn!(error = format!("{err:#}"), "create consumer groups");
        }
        let mut reader: Option<MultiplexedConnection> = None;
        let mut backoff = Backoff::default();
        let mut pending_done = false;
        let mut last_claim: Option<Instant> = None;
        while !stop.is_cancelled() {
            let connection = match reader.as_mut() {
                Some(connection) => connection,
                None => match crate::redis::blocking_connection(&self.client).await {
                    Ok(connection) => reader.insert(connection),
                    Err(err) => {
                        tracing::warn!(error = format!("{err:#}"), "connect consumer");
                        backoff.wait(&stop).await;
                        continue;
                    }
                },
            };
            if !pending_done {
                // Our own pending entries come first: they were delivered before a restart.
                match self.process_own_pending(connection, &stop).await {
                    Ok(()) => pending_done = true,
                    Err(err) => {
                        self.recover(err, &mut reader).await;
                        backoff.wait(&stop).await;
                        continue;
                    }
                }
            }
            if last_claim.is_none_or(|at| at.elapsed() >= self.settings.claim_interval()) {
                last_claim = Some(Instant::now());
                if let Err(err) = self.reclaim().await {
                    self.recover(err, &mut reader).await;
                    backoff.wait(&stop).await;
                    continue;
                }
            }
            let Some(connection) = reader.as_mut() else {
                continue;
            };
            let read = self.read_new(connection);
            let limit = self.settings.block + Duration::from_secs(2);
            let result = tokio::select! {
                () = stop.cancelled() => break,
                result = tokio::time::timeout(limit, read) => result,
            };
            match result {
                Err(_elapsed) => {
                    // A read blocked past its own timeout: the connection is dead (reliability §1.3).
                    tracing::warn!("blocking stream read timed out; reconnecting");
                    reader = None;
                }
                Ok(Err(err)) => {
                    self.recover(err, &mut reader).await;
                    backoff.wait(&stop).await;
                }
                Ok(Ok(entries)) => {
                    backoff.reset();
                    for (stream, entry) in entries {
                        self.process(&stream, entry).await;
                    }
                }
            }
        }
        tracing::info!(group = %self.settings.group, "consumer stopped");
    }

    async fn recover(&mut self, err: anyhow::Error, reader: &mut Option<MultiplexedConnection>) {
        if is_nogroup(&err) {
            tracing::warn!(group = %self.settings.group, "consumer group missing; recreating");
            if let Err(err) = self.ensure_groups().await {
                tracing::warn!(error = format!("{err:#}"), "recreate consumer groups");
            }
        } else {
            tracing::warn!(error = format!("{err:#}"), "read stream");
            *reader = None;
        }
    }

    /// Creates the group on every stream (and the stream itself), from the stream's start.
    async fn ensure_groups(&mut self) -> anyhow::Result<()> {
        for stream in &self.settings.streams {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&self.settings.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.commands)
                .await;
            match created {
                Ok(()) => {
                    tracing::info!(stream = %stream, group = %self.settings.group, "consumer group created")
                }
                Err(err) if err.code() == Some("BUSYGROUP") => {}
                Err(err) => return Err(err).context("create consumer group"),
            }
        }
        Ok(())
    }

    async fn read_new(
        &self,
        connection: &mut MultiplexedConnection,
    ) -> anyhow::Result<Vec<(String, StreamId)>> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.settings.group)
            .arg(&self.settings.consumer)
            .arg("COUNT")
            .arg(self.settings.batch_size)
            .arg("BLOCK")
            .arg(self.settings.block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.settings.streams);
        for _ in &self.settings.streams {
            command.arg(">");
        }
        let reply: Option<StreamReadReply> = command
            .query_async(connection)
            .await
            .context("xreadgroup")?;
        Ok(flatten(reply))
    }

    async fn process_own_pending(
        &mut self,
        connection: &mut MultiplexedConnection,
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        for stream in self.settings.streams.clone() {
            let mut after = "0".to_owned();
            while !stop.is_cancelled() {
                let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.settings.group)
                    .arg(&self.settings.consumer)
                    .arg("COUNT")
                    .arg(self.settings.batch_size)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&after)
                    .query_async(connection)
                    .await
                    .context("read own pending entries")?;
                let entries = flatten(reply);
                let Some((_, last)) = entries.last() else {
                    break;
                };
                after = last.id.clone();
                for (entry_stream, entry) in entries {
                    self.process(&entry_stream, entry).await;
                }
            }
        }
        Ok(())
    }

    /// Takes over entries idle longer than `min_idle` (a dead consumer's, or our own failed
    /// ones), parking those delivered too often.
    async fn reclaim(&mut self) -> anyhow::Result<()> {
        for stream in self.settings.streams.clone() {
            let mut cursor = "0-0".to_owned();
            for _round in 0..16 {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(&self.settings.group)
                    .arg(&self.settings.consumer)
                    .arg(self.settings.min_idle.as_millis() as u64)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(self.settings.batch_size)
                    .query_async(&mut self.commands)
                    .await
                    .context("xautoclaim")?;
                if !reply.claimed.is_empty() {
                    let ids: Vec<&str> = reply
                        .claimed
                        .iter()
                        .map(|entry| entry.id.as_str())
                        .collect();
                    let deliveries = self.delivery_counts(&stream, &ids).await?;
                    tracing::info!(stream = %stream, claimed = reply.claimed.len(), "took over idle entries");
                    for entry in reply.claimed {
                        let delivered = deliveries.get(&entry.id).copied().unwrap_or(1);
                        if delivered > self.settings.max_deliveries {
                            let error = self
                                .last_errors
                                .remove(&entry.id)
                                .unwrap_or_else(|| "no consumer finished it".to_owned());
                            self.dead_letter(&stream, &entry, "max_deliveries", &error, delivered)
                                .await;
                        } else {
                            self.process(&stream, entry).await;
                        }
                    }
                }
                cursor = reply.next_stream_id;
                if cursor == "0-0" {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Returns how often each of `ids` was delivered. One `XPENDING` per id (pipelined): a
    /// range query could be filled by other pending entries of ours and miss some.
    async fn delivery_counts(
        &mut self,
        stream: &str,
        ids: &[&str],
    ) -> anyhow::Result<HashMap<String, usize>> {
        let mut pipeline = redis::pipe();
        for id in ids {
            pipeline
                .cmd("XPENDING")
                .arg(stream)
                .arg(&self.settings.group)
                .arg(id)
                .arg(id)
                .arg(1);
        }
        let replies: Vec<StreamPendingCountReply> = pipeline
            .query_async(&mut self.commands)
            .await
            .context("xpending")?;
        Ok(replies
            .into_iter()
            .flat_map(|reply| reply.ids)
            .map(|pending| (pending.id, pending.times_delivered))
            .collect())
    }

    async fn process(&mut self, stream: &str, entry: StreamId) {
        let envelope = match decode(&entry) {
            Ok(envelope) => envelope,
            Err(err) => {
                self.dead_letter(stream, &entry, "undecodable", &format!("{err:#}"), 1)
                    .await;
                return;
            }
        };
        let span = tracing::info_span!(
            "consume",
            stream = %stream,
            group = %self.settings.group,
            event_type = %envelope.event_type,
            event_id = %envelope.event_id,
            lead_id = %envelope.lead_id,
        );
        crate::telemetry::set_parent_from_traceparent(&span, &envelope.traceparent);
        let outcome = self.apply(stream, &envelope).instrument(span.clone()).await;
        self.settle(stream, &entry, outcome).instrument(span).await;
    }

    /// Acknowledges, dead-letters or leaves pending an entry after applying it.
    async fn settle(
        &mut self,
        stream: &str,
        entry: &StreamId,
        outcome: Result<Outcome, HandleError>,
    ) {
        match outcome {
            Ok(Outcome::Applied) => {
                self.last_errors.remove(&entry.id);
                self.ack(stream, &entry.id).await;
            }
            Ok(Outcome::AlreadyApplied) => {
                tracing::info!("event already applied; acknowledging redelivery");
                self.last_errors.remove(&entry.id);
                self.ack(stream, &entry.id).await;
            }
            Err(err @ HandleError::Permanent(_)) => {
                self.dead_letter(stream, entry, err.class(), &err.to_string(), 1)
                    .await;
            }
            Err(err @ HandleError::Transient(_)) => {
                tracing::warn!(error = %err, "event failed; retried after min idle");
                self.last_errors.insert(entry.id.clone(), err.to_string());
            }
        }
    }

    async fn apply(&self, stream: &str, envelope: &Envelope) -> Result<Outcome, HandleError> {
        let event_id = Uuid::parse_str(&envelope.event_id).map_err(|err| {
            HandleError::Permanent(anyhow::anyhow!("event id is not a uuid: {err}"))
        })?;
        let mut tx = crate::postgres::begin(&self.pool).await?;
        let recorded = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.processed_events (consumer_group, event_id, stream, event_type) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            self.schema
        )))
        .bind(&self.settings.group)
        .bind(event_id)
        .bind(stream)
        .bind(&envelope.event_type)
        .execute(&mut *tx)
        .await?;
        if recorded.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(Outcome::AlreadyApplied);
        }
        self.handler.handle(&mut tx, stream, envelope).await?;
        // Handlers add their events through their own outbox inside `tx`.
        self.outbox_wake.commit(tx).await?;
        Ok(Outcome::Applied)
    }

    async fn ack(&mut self, stream: &str, id: &str) {
        let acked: redis::RedisResult<i64> = redis::cmd("XACK")
            .arg(stream)
            .arg(&self.settings.group)
            .arg(id)
            .query_async(&mut self.commands)
            .await;
        if let Err(err) = acked {
            // The entry stays pending and comes back; the ledger makes the retry a no-op.
            tracing::warn!(error = %err, stream = %stream, "xack");
        }
    }

    /// Copies the entry to `<stream>.dlq` with why it failed, then acknowledges it.
    async fn dead_letter(
        &mut self,
        stream: &str,
        entry: &StreamId,
        error_class: &str,
        error: &str,
        deliveries: usize,
    ) {
        let dlq = format!("{stream}{DLQ_SUFFIX}");
        let mut command = redis::cmd("XADD");
        command
            .arg(&dlq)
            .arg("*")
            .arg("stream")
            .arg(stream)
            .arg("entry_id")
            .arg(&entry.id)
            .arg("group")
            .arg(&self.settings.group)
            .arg("consumer")
            .arg(&self.settings.consumer)
            .arg("deliveries")
            .arg(deliveries)
            .arg("error_class")
            .arg(error_class)
            .arg("error")
            .arg(error);
        for field in [TYPE_FIELD, ENVELOPE_FIELD] {
            if let Some(redis::Value::BulkString(bytes)) = entry.map.get(field) {
                command.arg(field).arg(bytes.as_slice());
            }
        }
        let parked: redis::RedisResult<String> = command.query_async(&mut self.commands).await;
        match parked {
            Ok(_) => {
                tracing::error!(stream = %stream, entry_id = %entry.id, error_class, deliveries, "entry dead-lettered");
                self.last_errors.remove(&entry.id);
                self.ack(stream, &entry.id).await;
            }
            Err(err) => {
                tracing::error!(error = %err, stream = %stream, "park entry in dead-letter stream")
            }
        }
    }
}

fn flatten(reply: Option<StreamReadReply>) -> Vec<(String, StreamId)> {
    reply
        .map(|reply| {
            reply
                .keys
                .into_iter()
                .flat_map(|key| {
                    let stream = key.key;
                    key.ids.into_iter().map(move |id| (stream.clone(), id))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn decode(entry: &StreamId) -> anyhow::Result<Envelope> {
    match entry.map.get(ENVELOPE_FIELD) {
        Some(redis::Value::BulkString(bytes)) => {
            Envelope::decode(bytes.as_slice()).context("decode envelope")
        }
        Some(_) => anyhow::bail!("field `{ENVELOPE_FIELD}` is not a bulk string"),
        None => anyhow::bail!("entry has no `{ENVELOPE_FIELD}` field"),
    }
}

fn is_nogroup(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<redis::RedisError>()
            .is_some_and(|err| err.code() == Some("NOGROUP"))
    })
}

/// Exponential backoff with jitter between failed reads, 100 ms up to 5 s (backon).
struct Backoff {
    delays: backon::ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delays: Self::delays(),
        }
    }
}

impl Backoff {
    fn delays() -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    }

    async fn wait(&mut self, stop: &CancellationToken) {
        let delay = self.delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
    }

    fn reset(&mut self) {
        self.delays = Self::delays();
    }
}
