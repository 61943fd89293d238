//! The publishing half of the outbox: claims and marks unpublished rows with `FOR UPDATE SKIP
//! LOCKED` (safe with several replicas) and `XADD`s them, in one transaction that commits only
//! once Redis has them.
//!
//! Rows are never selected by `id > last_seen`: ids are allocated before commit, so a row
//! committing after a higher id would be skipped forever (reliability §1.2). A crash between
//! `XADD` and the commit republishes the batch; consumers deduplicate on the event id.
//!
//! Passes woken by commits do start from a floor, [`FLOOR_MARGIN`] ids below the highest id
//! the relay has published: marking rows published leaves their entries in the partial index
//! of unpublished rows until a vacuum, and a claim from the start of the index stepped over
//! every row published since (1.1–2.4 ms per claim in `EXPLAIN ANALYZE` once 94,000 rows were
//! published, with a pass every 5 ms under load). A row committing further behind than the margin is not lost:
//! at least every poll interval a pass starts from the beginning, however often wakes come.
//!
//! The relay is woken in process by the transactions that commit events ([`OutboxWake`]),
//! not by `LISTEN/NOTIFY`, and polls for everything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::outbox::OutboxWake;
use super::{ENVELOPE_FIELD, TYPE_FIELD};

/// Publishes a service's outbox to Redis Streams.
#[derive(Clone)]
pub struct Relay {
    pool: PgPool,
    redis: ConnectionManager,
    schema: &'static str,
    batch_size: i64,
    poll_interval: Duration,
    min_interval: Duration,
    retention: Option<Duration>,
    stream_max_len: usize,
    wake: OutboxWake,
    /// Where woken passes start: [`FLOOR_MARGIN`] below the highest id published.
    floor: Arc<AtomicI64>,
}

/// How far below the highest id it has published a woken pass starts claiming. Rows that
/// commit after rows this many ids newer (at 2,500 events/s, transactions open for over 1.5 s)
/// wait for the next pass from the start, at most a poll interval.
pub const FLOOR_MARGIN: i64 = 4_096;

/// Published rows deleted per statement by the retention sweep.
const SWEEP_BATCH: i64 = 5_000;
/// How often a running relay sweeps published rows past their retention.
const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);

impl Relay {
    /// Returns a relay for the outbox in `schema`, woken by `wake` (shared with the
    /// process's [`Outbox`](super::outbox::Outbox)es and consumers) and polling every
    /// `poll_interval`.
    pub fn new(
        pool: PgPool,
        redis: ConnectionManager,
        schema: &'static str,
        poll_interval: Duration,
        stream_max_len: usize,
        wake: OutboxWake,
    ) -> Self {
        Self {
            pool,
            redis,
            schema,
            batch_size: 256,
            poll_interval,
            min_interval: Duration::ZERO,
            retention: None,
            stream_max_len,
            wake,
            floor: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Spaces the starts of passes by at least `min_interval`: a relay woken right after a
    /// pass waits out the rest of it, so under load one pass publishes the events of several
    /// commits (and the transactions being answered are not competing with a pass per event),
    /// while an idle relay still publishes a woken event at once.
    pub fn with_min_interval(mut self, min_interval: Duration) -> Self {
        self.min_interval = min_interval;
        self
    }

    /// Keeps published rows for `retention` (the window in which `republish` can send them
    /// again), then deletes them: a running relay sweeps when it starts and every ten minutes.
    /// `None` keeps them for good.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Deletes rows published before `before`, a batch at a time (rows another replica is
    /// deleting are skipped); returns how many went. Unpublished rows stay, however old.
    pub async fn sweep_published(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<u64> {
        let mut total = 0;
        loop {
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {schema}.outbox WHERE id IN \
                   (SELECT id FROM {schema}.outbox WHERE published_at < $1 \
                    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)",
                schema = self.schema
            )))
            .bind(before)
            .bind(SWEEP_BATCH)
            .execute(&self.pool)
            .await
            .context("delete published outbox rows")?
            .rows_affected();
            total += deleted;
            if i64::try_from(deleted).unwrap_or(i64::MAX) < SWEEP_BATCH {
                return Ok(total);
            }
        }
    }

    /// Sweeps published rows past the retention every [`SWEEP_EVERY`], from the start, until
    /// `stop` is cancelled; beside the publishing loop, so that a long first sweep (an outbox
    /// that grew for a while) does not hold back publishing.
    async fn sweep_until(self, retention: Duration, stop: CancellationToken) {
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        loop {
            match self.sweep_published(chrono::Utc::now() - retention).await {
                Ok(0) => {}
                Ok(deleted) => {
                    tracing::info!(deleted, "published outbox rows past retention deleted");
                }
                Err(err) => tracing::warn!(error = format!("{err:#}"), "sweep the outbox"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }

    /// Publishes one batch of unpublished rows; returns how many were published.
    ///
    /// One transaction of three round trips: `BEGIN`, one `UPDATE … RETURNING` that claims
    /// (`FOR UPDATE SKIP LOCKED`) and marks the rows, then, once Redis has them, `COMMIT`. A
    /// failed `XADD` rolls the marks back with the transaction.
    ///
    /// The commit does not wait for its WAL flush (`synchronous_commit = off`, this transaction
    /// only): a mark lost to a crash republishes its rows, which is already what a crash
    /// between `XADD` and `COMMIT` does and what consumers deduplicate, so waiting would buy
    /// nothing but a disk flush per pass, one per event at low rates.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        self.publish_from(0).await
    }

    /// Publishes one batch of the unpublished rows whose id is at least `from`.
    async fn publish_from(&self, from: i64) -> anyhow::Result<usize> {
        let mut tx =
            crate::postgres::begin_with(&self.pool, "BEGIN; SET LOCAL synchronous_commit = off")
                .await
                .context("begin relay transaction")?;
        let mut rows: Vec<(i64, String, String, Vec<u8>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE {schema}.outbox SET published_at = now() WHERE id IN \
                   (SELECT id FROM {schema}.outbox WHERE published_at IS NULL AND id >= $2 \
                    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, stream, event_type, envelope",
                schema = self.schema
            )))
            .bind(self.batch_size)
            .bind(from)
            .fetch_all(&mut *tx)
            .await
            .context("claim outbox rows")?;
        if rows.is_empty() {
            return Ok(0);
        }
        // RETURNING has no order; a stream gets its events in commit-id order.
        rows.sort_unstable_by_key(|(id, ..)| *id);
        let mut pipeline = redis::pipe();
        for (_, stream, event_type, envelope) in &rows {
            pipeline
                .cmd("XADD")
                .arg(stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.stream_max_len)
                .arg("*")
                .arg(TYPE_FIELD)
                .arg(event_type)
                .arg(ENVELOPE_FIELD)
                .arg(envelope.as_slice())
                .ignore();
        }
        let mut redis = self.redis.clone();
        pipeline
            .query_async::<()>(&mut redis)
            .await
            .context("xadd outbox rows")?;
        tx.commit().await.context("commit relay transaction")?;
        if let Some((highest, ..)) = rows.last() {
            self.floor
                .fetch_max(highest.saturating_sub(FLOOR_MARGIN), Ordering::Relaxed);
        }
        tracing::debug!(published = rows.len(), "outbox batch published");
        Ok(rows.len())
    }

    /// Publishes until a batch comes back short of a full one; returns how many rows were
    /// published. A short batch means no unclaimed row was left when it was claimed: a row
    /// committed since then woke this relay again ([`OutboxWake`] keeps a wake given during
    /// a pass) or, from another replica, is found by the next poll; so no empty pass is
    /// spent confirming it.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        self.drain_from(false).await
    }

    /// Drains from the floor (re-read per batch as it rises) when `floored`, else from the
    /// start.
    async fn drain_from(&self, floored: bool) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let from = if floored {
                self.floor.load(Ordering::Relaxed)
            } else {
                0
            };
            let published = self.publish_from(from).await?;
            total += published;
            if i64::try_from(published).unwrap_or(i64::MAX) < self.batch_size {
                return Ok(total);
            }
        }
    }

    /// Publishes until a pass finds nothing, catching rows committed during the passes
    /// before (the last thing a stopping relay does); returns how many rows were published.
    pub async fn flush(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let published = self.publish_batch().await?;
            if published == 0 {
                return Ok(total);
            }
            total += published;
        }
    }

    /// Runs until `stop` is cancelled, then flushes what is left ([`Relay::flush`]).
    ///
    /// Drains whenever this process commits events ([`OutboxWake`]) and at least every poll
    /// interval, which publishes the rows no wake announces here: those of other replicas,
    /// and any left behind by a failed pass. Woken passes start from the floor; one pass at
    /// least every poll interval starts from the beginning, however often wakes come. A wake
    /// given while a pass runs is kept for the next wait (see [`OutboxWake`]), so it cannot be
    /// lost between the pass's last claim and the wait.
    pub async fn run(self, stop: CancellationToken) {
        let sweeper = self
            .retention
            .map(|retention| tokio::spawn(self.clone().sweep_until(retention, stop.clone())));
        let mut full_due = tokio::time::Instant::now();
        loop {
            let started = tokio::time::Instant::now();
            // From the start at least every poll interval, even when wakes never stop.
            let floored = started < full_due;
            if !floored {
                full_due = started + self.poll_interval;
            }
            match self.drain_from(floored).await {
                Ok(_) => {}
                Err(err) => tracing::warn!(error = format!("{err:#}"), "publish outbox"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.poll_interval) => {}
                () = self.wake.woken() => {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep_until(started + self.min_interval) => {}
                    }
                }
            }
        }
        match self.flush().await {
            Ok(published) => tracing::info!(published, "outbox flushed on shutdown"),
            Err(err) => tracing::error!(error = format!("{err:#}"), "flush outbox on shutdown"),
        }
        if let Some(sweeper) = sweeper {
            // A sweep cut off mid-statement is rolled back; the next start sweeps again.
            sweeper.abort();
        }
    }
}

/// Marks this service's outbox rows created at or after `since` unpublished again, so that the
/// running relays publish them anew (after Redis lost entries); returns how many. Consumers
/// apply each event once, by its event id, so what they had already is not applied twice.
/// Only rows still within the retention can be sent again.
pub async fn republish_since(
    pool: &PgPool,
    schema: &str,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<u64> {
    let marked = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {schema}.outbox SET published_at = NULL \
         WHERE created_at >= $1 AND published_at IS NOT NULL"
    )))
    .bind(since)
    .execute(pool)
    .await
    .context("mark outbox rows unpublished")?
    .rows_affected();
    Ok(marked)
}
