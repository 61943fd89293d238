//! How analytics folds events into its aggregates. The runner records each event id in the
//! same transaction, so a redelivered event changes nothing.

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use leadflow_platform::events::consumer::{EventHandler, HandleError};
use leadflow_platform::events::types;
use leadflow_proto::events::v1::{Envelope, LeadCaptured, LeadStage, LeadStageChanged};
use prost::Message;
use sqlx::PgConnection;
use uuid::Uuid;

/// Schema version of the payloads this folder understands.
const SCHEMA_VERSION: u32 = 1;

/// Folds every stream into the funnel.
pub struct FunnelFolder;

#[async_trait]
impl EventHandler for FunnelFolder {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        _stream: &str,
        envelope: &Envelope,
    ) -> Result<(), HandleError> {
        if envelope.schema_version != SCHEMA_VERSION {
            return Err(HandleError::Permanent(anyhow!(
                "unknown schema version {} of {}",
                envelope.schema_version,
                envelope.event_type
            )));
        }
        sqlx::query(
            "INSERT INTO analytics.event_counts (event_type, events) VALUES ($1, 1) \
             ON CONFLICT (event_type) DO UPDATE SET events = analytics.event_counts.events + 1",
        )
        .bind(&envelope.event_type)
        .execute(&mut *tx)
        .await?;
        match envelope.event_type.as_str() {
            types::LEAD_CAPTURED => {
                let captured = decode::<LeadCaptured>(envelope)?;
                let lead_id = lead_id(envelope)?;
                // A capture is the lead's first stage; a stage change that raced ahead wins.
                sqlx::query(
                    "INSERT INTO analytics.lead_funnel (lead_id, channel, stage, stage_sequence) VALUES ($1, $2, $3, 0) \
                     ON CONFLICT (lead_id) DO UPDATE SET channel = EXCLUDED.channel, updated_at = now()",
                )
                .bind(lead_id)
                .bind(&captured.channel)
                .bind(LeadStage::Lead as i16)
                .execute(&mut *tx)
                .await?;
            }
            types::LEAD_STAGE_CHANGED => {
                let changed = decode::<LeadStageChanged>(envelope)?;
                let lead_id = lead_id(envelope)?;
                let stage = i16::try_from(changed.to_stage)
                    .context("stage out of range")
                    .map_err(HandleError::Permanent)?;
                let sequence = i32::try_from(changed.sequence)
                    .context("sequence out of range")
                    .map_err(HandleError::Permanent)?;
                sqlx::query(
                    "INSERT INTO analytics.lead_funnel (lead_id, channel, stage, stage_sequence) VALUES ($1, NULLIF($2, ''), $3, $4) \
                     ON CONFLICT (lead_id) DO UPDATE SET \
                       stage = CASE WHEN EXCLUDED.stage_sequence > analytics.lead_funnel.stage_sequence \
                                    THEN EXCLUDED.stage ELSE analytics.lead_funnel.stage END, \
                       stage_sequence = GREATEST(EXCLUDED.stage_sequence, analytics.lead_funnel.stage_sequence), \
                       channel = COALESCE(analytics.lead_funnel.channel, EXCLUDED.channel), \
                       updated_at = now()",
                )
                .bind(lead_id)
                .bind(&changed.channel)
                .bind(stage)
                .bind(sequence)
                .execute(&mut *tx)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

fn lead_id(envelope: &Envelope) -> Result<Uuid, HandleError> {
    Uuid::parse_str(&envelope.lead_id)
        .context("parse lead id")
        .map_err(HandleError::Permanent)
}

fn decode<T: Message + Default>(envelope: &Envelope) -> Result<T, HandleError> {
    T::decode(envelope.payload.as_slice())
        .with_context(|| format!("decode {} payload", envelope.event_type))
        .map_err(HandleError::Permanent)
}
