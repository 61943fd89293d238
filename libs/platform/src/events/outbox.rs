//! The producing half of the transactional outbox: events are rows written in the same
//! transaction as the state they describe (reliability §1.1).

use anyhow::Context;
use leadflow_proto::events::v1::Envelope;
use prost::Message;
use sqlx::PgConnection;
use uuid::Uuid;

/// Writes a service's events into its outbox table.
#[derive(Debug, Clone)]
pub struct Outbox {
    schema: &'static str,
    producer: &'static str,
    stream: String,
}

impl Outbox {
    /// Returns an outbox for `producer`, whose table lives in `schema` and whose events go to
    /// the stream named `stream` (already prefixed).
    pub fn new(schema: &'static str, producer: &'static str, stream: String) -> Self {
        Self {
            schema,
            producer,
            stream,
        }
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
    /// [`Outbox::add_many`].
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
