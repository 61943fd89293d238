//! What qualification does with the events it consumes.

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use leadflow_platform::events::consumer::{EventHandler, HandleError};
use leadflow_platform::events::outbox::Outbox;
use leadflow_platform::events::types;
use leadflow_proto::events::v1::{
    Envelope, LeadCaptured, LeadScored, LeadStage, LeadStageChanged, MessageInbound, RuleHit,
};
use prost::Message;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::scoring::Model;
use crate::domain::stage::Stage;
use crate::store::{self, Transition};

/// Schema version of the payloads this handler understands.
const SCHEMA_VERSION: u32 = 1;

/// Scores captured leads and moves them on two-way contact.
pub struct QualificationHandler {
    outbox: Outbox,
    model: Model,
}

impl QualificationHandler {
    /// Returns a handler emitting through `outbox` and scoring with `model`.
    pub fn new(outbox: Outbox, model: Model) -> Self {
        Self { outbox, model }
    }

    async fn on_captured(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
        lead_id: Uuid,
    ) -> Result<(), HandleError> {
        let captured = decode::<LeadCaptured>(envelope)?;
        let score = self.model.score(&captured);
        let cause = Uuid::parse_str(&envelope.event_id).ok();
        let transition = Transition {
            lead_id,
            from: None,
            to: Stage::Lead,
            actor: "rule:captured".to_owned(),
            cause_event_id: cause,
        };
        let inserted = store::insert_lead(tx, &transition, &captured.channel, &score).await?;
        let Some(sequence) = inserted else {
            // Already known: a replayed capture changes nothing.
            return Ok(());
        };
        let scored = LeadScored {
            lead_id: lead_id.to_string(),
            model_version: score.model_version.to_owned(),
            fit_score: score.fit,
            engagement_score: score.engagement,
            total_score: score.total(),
            hits: score
                .hits
                .iter()
                .map(|hit| RuleHit {
                    rule_id: hit.rule_id.clone(),
                    points: hit.points,
                    description: hit.description.clone(),
                })
                .collect(),
        };
        self.outbox
            .add(tx, types::LEAD_SCORED, lead_id, &scored)
            .await
            .map_err(HandleError::Transient)?;
        self.emit_stage_changed(tx, &transition, sequence, &captured.channel)
            .await
    }

    async fn on_inbound(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
        lead_id: Uuid,
    ) -> Result<(), HandleError> {
        let _inbound = decode::<MessageInbound>(envelope)?;
        let Some(current) = store::lock_lead(tx, lead_id).await? else {
            // Streams are not ordered with each other: the capture may still be on its way.
            return Err(HandleError::Transient(anyhow!("lead not known yet")));
        };
        let Some(next) = current.stage.on_two_way_contact() else {
            return Ok(());
        };
        let transition = Transition {
            lead_id,
            from: Some(current.stage),
            to: next,
            actor: "rule:two_way_contact".to_owned(),
            cause_event_id: Uuid::parse_str(&envelope.event_id).ok(),
        };
        let sequence = store::move_lead(tx, &transition, current.stage_sequence).await?;
        tracing::info!(
            from = current.stage.as_str(),
            to = next.as_str(),
            "stage changed"
        );
        self.emit_stage_changed(tx, &transition, sequence, &current.channel)
            .await
    }

    async fn emit_stage_changed(
        &self,
        tx: &mut PgConnection,
        transition: &Transition,
        sequence: i32,
        channel: &str,
    ) -> Result<(), HandleError> {
        let changed = LeadStageChanged {
            lead_id: transition.lead_id.to_string(),
            from_stage: transition
                .from
                .map_or(LeadStage::Unspecified, LeadStage::from)
                .into(),
            to_stage: LeadStage::from(transition.to).into(),
            sequence: u32::try_from(sequence).unwrap_or_default(),
            cause_event_id: transition
                .cause_event_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            actor: transition.actor.clone(),
            channel: channel.to_owned(),
        };
        self.outbox
            .add(tx, types::LEAD_STAGE_CHANGED, transition.lead_id, &changed)
            .await
            .map_err(HandleError::Transient)?;
        Ok(())
    }
}

#[async_trait]
impl EventHandler for QualificationHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        _stream: &str,
        envelope: &Envelope,
    ) -> Result<(), HandleError> {
        let relevant = matches!(
            envelope.event_type.as_str(),
            types::LEAD_CAPTURED | types::MESSAGE_INBOUND
        );
        if !relevant {
            return Ok(());
        }
        if envelope.schema_version != SCHEMA_VERSION {
            return Err(HandleError::Permanent(anyhow!(
                "unknown schema version {} of {}",
                envelope.schema_version,
                envelope.event_type
            )));
        }
        let lead_id = Uuid::parse_str(&envelope.lead_id)
            .context("parse lead id")
            .map_err(HandleError::Permanent)?;
        match envelope.event_type.as_str() {
            types::LEAD_CAPTURED => self.on_captured(tx, envelope, lead_id).await,
            _ => self.on_inbound(tx, envelope, lead_id).await,
        }
    }
}

fn decode<T: Message + Default>(envelope: &Envelope) -> Result<T, HandleError> {
    T::decode(envelope.payload.as_slice())
        .with_context(|| format!("decode {} payload", envelope.event_type))
        .map_err(HandleError::Permanent)
}
