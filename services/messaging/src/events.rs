//! What messaging does with the events it consumes: a welcome email for each captured lead.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use leadflow_platform::events::consumer::{EventHandler, HandleError};
use leadflow_platform::events::outbox::Outbox;
use leadflow_platform::events::types;
use leadflow_proto::events::v1::{Envelope, MessageChannel, MessageSent};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::capture::{CaptureClient, LookupError};
use crate::domain::message_id;
use crate::domain::template::{Templates, WELCOME};
use crate::provider::{Outgoing, Provider};
use crate::store::{self, SentMessage};

/// Schema version of the payloads this handler understands.
const SCHEMA_VERSION: u32 = 1;

/// Sends follow-ups for the events messaging consumes.
pub struct MessagingHandler {
    outbox: Outbox,
    templates: Arc<Templates>,
    provider: Arc<dyn Provider>,
    capture: CaptureClient,
    from_address: String,
}

impl MessagingHandler {
    /// Returns a handler sending through `provider`.
    pub fn new(
        outbox: Outbox,
        templates: Arc<Templates>,
        provider: Arc<dyn Provider>,
        capture: CaptureClient,
        from_address: String,
    ) -> Self {
        Self {
            outbox,
            templates,
            provider,
            capture,
            from_address,
        }
    }

    async fn welcome(
        &self,
        tx: &mut PgConnection,
        envelope: &Envelope,
        lead_id: Uuid,
    ) -> Result<(), HandleError> {
        let cause = Uuid::parse_str(&envelope.event_id)
            .context("parse event id")
            .map_err(HandleError::Permanent)?;
        let message_id = message_id(cause, WELCOME);
        if store::message_exists(tx, message_id).await? {
            return Ok(());
        }
        let contact = match self.capture.contact(lead_id).await {
            Ok(contact) => contact,
            Err(LookupError::NotFound) => {
                tracing::warn!("lead unknown to capture; no welcome sent");
                return Ok(());
            }
            Err(LookupError::Unavailable(err)) => return Err(HandleError::Transient(err)),
        };
        let Some(to) = contact.email else {
            tracing::info!("lead has no email address; no welcome sent");
            return Ok(());
        };
        let rendered = self
            .templates
            .render(WELCOME, &contact.context)
            .map_err(HandleError::Permanent)?;
        let outgoing = Outgoing {
            message_id,
            lead_id,
            from: self.from_address.clone(),
            to,
            subject: rendered.subject,
            body: rendered.body,
        };
        self.provider
            .send(&outgoing)
            .await
            .map_err(HandleError::Transient)?;
        let sent = SentMessage {
            message_id,
            lead_id,
            channel: "email".to_owned(),
            template: WELCOME.to_owned(),
            provider: self.provider.name().to_owned(),
            subject: outgoing.subject,
            sent_at: chrono::Utc::now(),
        };
        store::insert_message(tx, &sent).await?;
        let event = MessageSent {
            message_id: message_id.to_string(),
            lead_id: lead_id.to_string(),
            channel: MessageChannel::Email.into(),
            template: WELCOME.to_owned(),
            provider: sent.provider.clone(),
        };
        self.outbox
            .add(tx, types::MESSAGE_SENT, lead_id, &event)
            .await
            .map_err(HandleError::Transient)?;
        tracing::info!(message_id = %message_id, template = WELCOME, "message sent");
        Ok(())
    }
}

#[async_trait]
impl EventHandler for MessagingHandler {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        _stream: &str,
        envelope: &Envelope,
    ) -> Result<(), HandleError> {
        if envelope.event_type != types::LEAD_CAPTURED {
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
        self.welcome(tx, envelope, lead_id).await
    }
}
