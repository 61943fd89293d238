//! The producing half of the transactional outbox: events are rows written in the same
//! transaction as the state they describe (reliability §1.1), and the in-process wake that
//! tells the relay when such a transaction has committed.

use std::sync::Arc;

use anyhow::Context;
use leadflow_proto::events::v1::Envelope;
use prost::Message;
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

/// Wakes the relay of this process after a transaction that wrote outbox rows commits.
///
/// It replaces the `pg_notify` trigger: `NOTIFY` takes Postgres's cluster-wide notify-queue
/// lock at commit and holds it through the WAL flush, so every committing transaction in the
/// cluster queued behind it. Rows committed by other replicas have no wake here; their own
/// relay publishes them, and every relay polls as a fallback.
///
/// A wake is never lost: it is a [`Notify`] permit. When the relay is waiting, the wake ends
/// the wait; when it is not (it is draining), the permit is stored and its next wait returns
/// at once, so a row that committed after the draining pass took its snapshot is claimed by
/// the pass that follows. Wakes given meanwhile collapse into that one permit, which is all
/// that is needed: a pass claims every row committed before it started. A wait the relay
/// abandons because its poll timer fired first hands a wake it had taken on to the next
/// wait (tokio's `Notified` does so when dropped).
#[derive(Debug, Clone, Default)]
pub struct OutboxWake {
    notify: Arc<Notify>,
}

impl OutboxWake {
    /// Returns a wake that no relay listens to yet; clones share it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wakes the relay, now or, when it is busy, as soon as it next waits.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Commits `tx`, then wakes the relay.
    ///
    /// Wakes when the commit fails too: a commit whose answer was lost may have committed,
    /// and a wake with nothing to publish costs the relay one empty claim.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> sqlx::Result<()> {
        let committed = tx.commit().await;
        self.wake();
        committed
    }

    /// Returns once woken; a wake given while nobody waited returns at once.
    pub(crate) async fn woken(&self) {
        self.notify.notified().await;
    }
}

/// Writes a service's events into its outbox table.
#[derive(Debug, Clone)]
pub struct Outbox {
    schema: &'static str,
    producer: &'static str,
    stream: String,
    wake: OutboxWake,
}

impl Outbox {
    /// Returns an outbox for `producer`, whose table lives in `schema` and whose events go to
    /// the stream named `stream` (already prefixed); [`Outbox::commit`] wakes the relay
    /// through `wake`.
    pub fn new(
        schema: &'static str,
        producer: &'static str,
        stream: String,
        wake: OutboxWake,
    ) -> Self {
        Self {
            schema,
            producer,
            stream,
            wake,
        }
    }

    /// Commits `tx`, which added events, and wakes the relay so that they are published now
    /// rather than at its next poll. Every transaction that adds events commits here.
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> sqlx::Result<()> {
        self.wake.commit(tx).await
    }

    /// Wakes the relay after a statement that added events committed on its own
    /// (autocommit), without a transaction to pass to [`Outbox::commit`].
    pub fn wake(&self) {
        self.wake.wake();
    }

    /// Returns the stream this outbox publishes to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Adds an event about `lead_id` inside the caller's transaction and returns its envelope.
    pub async fn add(
        &self,
        tx: &mut PgConnection,
        event_type: &str,
        lead_id: Uuid,
        payload: &impl Message,
    ) -> anyhow::Result<Envelope> {
        self.add_event(tx, event_type, Some(lead_id), payload).await
    }

    /// Adds an event about no lead in particular (its envelope's `lead_id` is empty).
    pub async fn add_without_lead(
        &self,
        tx: &mut PgConnection,
        event_type: &str,
        payload: &impl Message,
    ) -> anyhow::Result<Envelope> {
        self.add_event(tx, event_type, None, payload).await
    }

    /// Returns the envelope of an event about `lead_id` (or none), to be added with
    /// [`Outbox::add_many`], or by a statement of the service's own that writes the row
    /// `Outbox::add` would (`event_id`, `stream`, `event_type`, `envelope`) with other rows.
    pub fn envelope(
        &self,
        event_type: &str,
        lead_id: Option<Uuid>,
        payload: &impl Message,
    ) -> Envelope {
        super::envelope(self.producer, event_type, lead_id, payload)
    }

    /// Adds many events inside the caller's transaction in one statement, in the given order
    /// (the relay publishes them in that order).
    pub async fn add_many(
        &self,
        tx: &mut PgConnection,
        envelopes: &[Envelope],
    ) -> anyhow::Result<()> {
        if envelopes.is_empty() {
            return Ok(());
        }
        let mut event_ids = Vec::with_capacity(envelopes.len());
        let mut event_types = Vec::with_capacity(envelopes.len());
        let mut bodies = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            event_ids.push(Uuid::parse_str(&envelope.event_id).context("parse event id")?);
            event_types.push(envelope.event_type.as_str());
            bodies.push(envelope.encode_to_vec());
        }
        // WITH ORDINALITY keeps the ids (and so the publishing order) in the given order.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.outbox (event_id, stream, event_type, envelope) \
             SELECT e.event_id, $1, e.event_type, e.envelope \
             FROM UNNEST($2::uuid[], $3::text[], $4::bytea[]) WITH ORDINALITY AS e (event_id, event_type, envelope, n) \
             ORDER BY e.n",
            self.schema
        )))
        .bind(&self.stream)
        .bind(&event_ids)
        .bind(&event_types)
        .bind(&bodies)
        .execute(&mut *tx)
        .await
        .context("insert outbox rows")?;
        Ok(())
    }

    async fn add_event(
        &self,
        tx: &mut PgConnection,
        event_type: &str,
        lead_id: Option<Uuid>,
        payload: &impl Message,
    ) -> anyhow::Result<Envelope> {
        let envelope = super::envelope(self.producer, event_type, lead_id, payload);
        let event_id = Uuid::parse_str(&envelope.event_id).context("parse own event id")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {}.outbox (event_id, stream, event_type, envelope) VALUES ($1, $2, $3, $4)",
            self.schema
        )))
        .bind(event_id)
        .bind(&self.stream)
        .bind(event_type)
        .bind(envelope.encode_to_vec())
        .execute(&mut *tx)
        .await
        .context("insert outbox row")?;
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::OutboxWake;

    #[test]
    fn a_wake_given_while_nobody_waits_ends_the_next_wait_at_once() {
        let wake = OutboxWake::new();
        wake.wake();
        wake.wake();

        assert!(
            wake.woken().now_or_never().is_some(),
            "the wake given while the relay drained is kept"
        );
        assert!(
            wake.woken().now_or_never().is_none(),
            "wakes given meanwhile collapse into one"
        );
    }

    #[test]
    fn a_wake_taken_by_an_abandoned_wait_ends_the_next_wait_at_once() {
        let wake = OutboxWake::new();
        // The relay's wait, polled once and then dropped because its poll timer fired first.
        let mut waiting = Box::pin(wake.woken());
        assert!(waiting.as_mut().now_or_never().is_none());
        wake.wake();
        drop(waiting);

        assert!(
            wake.woken().now_or_never().is_some(),
            "the wake is handed on, not lost with the abandoned wait"
        );
    }
}
