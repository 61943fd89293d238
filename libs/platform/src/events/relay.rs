//! The publishing half of the outbox: claims unpublished rows with `FOR UPDATE SKIP LOCKED`
//! (safe with several replicas), `XADD`s them and marks them published, in one transaction.
//!
//! Rows are never selected by `id > last_seen`: ids are allocated before commit, so a row
//! committing after a higher id would be skipped forever (reliability §1.2). A crash between
//! `XADD` and the commit republishes the batch; consumers deduplicate on the event id.
//!
//! The relay is woken in process by the transactions that commit events ([`OutboxWake`]),
//! not by `LISTEN/NOTIFY`, and polls for everything else.

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
    stream_max_len: usize,
    wake: OutboxWake,
}

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
            stream_max_len,
            wake,
        }
    }

    /// Publishes one batch of unpublished rows; returns how many were published.
    pub async fn publish_batch(&self) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await.context("begin relay transaction")?;
        let rows: Vec<(i64, String, String, Vec<u8>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT id, stream, event_type, envelope FROM {}.outbox \
             WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.schema
            )))
            .bind(self.batch_size)
            .fetch_all(&mut *tx)
            .await
            .context("claim outbox rows")?;
        if rows.is_empty() {
            return Ok(0);
        }
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
        let ids: Vec<i64> = rows.iter().map(|(id, ..)| *id).collect();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {}.outbox SET published_at = now() WHERE id = ANY($1)",
            self.schema
        )))
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .context("mark outbox rows published")?;
        tx.commit().await.context("commit relay transaction")?;
        tracing::debug!(published = rows.len(), "outbox batch published");
        Ok(rows.len())
    }

    /// Publishes until the outbox is empty; returns how many rows were published.
    pub async fn drain(&self) -> anyhow::Result<usize> {
        let mut total = 0;
        loop {
            let published = self.publish_batch().await?;
            total += published;
            if published == 0 {
                return Ok(total);
            }
        }
    }

    /// Runs until `stop` is cancelled, then drains what is left once.
    ///
    /// Drains whenever this process commits events ([`OutboxWake`]) and at least every poll
    /// interval, which publishes the rows no wake announces here: those of other replicas,
    /// and any left behind by a failed pass. A wake given while a pass runs is kept for the
    /// next wait (see [`OutboxWake`]), so it cannot be lost between the pass's last claim and
    /// the wait.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.drain().await {
                Ok(_) => {}
                Err(err) => tracing::warn!(error = format!("{err:#}"), "publish outbox"),
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.poll_interval) => {}
                () = self.wake.woken() => {}
            }
        }
        match self.drain().await {
            Ok(published) => tracing::info!(published, "outbox flushed on shutdown"),
            Err(err) => tracing::error!(error = format!("{err:#}"), "flush outbox on shutdown"),
        }
    }
}
