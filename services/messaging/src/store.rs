//! Storage of sent messages and inbound contact in the `messaging` schema.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A message as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SentMessage {
    pub message_id: Uuid,
    pub lead_id: Uuid,
    pub channel: String,
    pub template: String,
    pub provider: String,
    pub subject: String,
    pub sent_at: DateTime<Utc>,
}

/// Inbound contact to record.
#[derive(Debug, Clone)]
pub struct NewInbound {
    pub lead_id: Uuid,
    pub channel: &'static str,
    pub kind: &'static str,
    pub body: String,
    pub idempotency_key: Option<String>,
}

/// Returns whether message `message_id` was already sent.
pub async fn message_exists(tx: &mut PgConnection, message_id: Uuid) -> Result<bool, sqlx::Error> {
    let found: Option<(Uuid,)> =
        sqlx::query_as("SELECT message_id FROM messaging.messages WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(&mut *tx)
            .await?;
    Ok(found.is_some())
}

/// Records a sent message.
pub async fn insert_message(
    tx: &mut PgConnection,
    message: &SentMessage,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO messaging.messages (message_id, lead_id, channel, template, provider, subject, sent_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(message.message_id)
    .bind(message.lead_id)
    .bind(&message.channel)
    .bind(&message.template)
    .bind(&message.provider)
    .bind(&message.subject)
    .bind(message.sent_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// What recording inbound contact did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundOutcome {
    /// A new record with this id.
    Recorded(Uuid),
    /// A retry with a known idempotency key: the first record's id, nothing new written.
    Replayed(Uuid),
    /// The idempotency key was already used for another lead.
    KeyReused,
}

/// Records inbound contact, once per idempotency key.
pub async fn insert_inbound(
    tx: &mut PgConnection,
    inbound: &NewInbound,
) -> anyhow::Result<InboundOutcome> {
    let inbound_id = Uuid::now_v7();
    let inserted: Option<(Uuid,)> = sqlx::query_as(
        "INSERT INTO messaging.inbound (inbound_id, lead_id, channel, kind, body, idempotency_key) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (idempotency_key) DO NOTHING RETURNING inbound_id",
    )
    .bind(inbound_id)
    .bind(inbound.lead_id)
    .bind(inbound.channel)
    .bind(inbound.kind)
    .bind(&inbound.body)
    .bind(inbound.idempotency_key.as_deref())
    .fetch_optional(&mut *tx)
    .await
    .context("insert inbound")?;
    if let Some((id,)) = inserted {
        return Ok(InboundOutcome::Recorded(id));
    }
    let (existing_id, existing_lead): (Uuid, Uuid) = sqlx::query_as(
        "SELECT inbound_id, lead_id FROM messaging.inbound WHERE idempotency_key = $1",
    )
    .bind(inbound.idempotency_key.as_deref())
    .fetch_one(&mut *tx)
    .await
    .context("select inbound by idempotency key")?;
    if existing_lead != inbound.lead_id {
        return Ok(InboundOutcome::KeyReused);
    }
    Ok(InboundOutcome::Replayed(existing_id))
}

/// Reads messages for the API.
#[derive(Debug, Clone)]
pub struct MessageStore {
    pool: PgPool,
}

impl MessageStore {
    /// Returns a store on `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Returns the pool, for handlers that write in their own transaction.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Returns the messages sent to `lead_id`, oldest first.
    pub async fn list(&self, lead_id: Uuid) -> anyhow::Result<Vec<SentMessage>> {
        sqlx::query_as(
            "SELECT message_id, lead_id, channel, template, provider, subject, sent_at \
             FROM messaging.messages WHERE lead_id = $1 ORDER BY sent_at, message_id",
        )
        .bind(lead_id)
        .fetch_all(&self.pool)
        .await
        .context("select messages")
    }
}
