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
