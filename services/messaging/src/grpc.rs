//! The `leadflow.messaging.v1.MessagingService` handlers.

use leadflow_platform::auth::{Caller, Scope};
use leadflow_platform::events::outbox::Outbox;
use leadflow_platform::events::types;
use leadflow_platform::validation::{
    FieldViolations, has_control_characters, parse_uuid, require_uuid,
};
use leadflow_proto::events::v1::{InboundKind, MessageChannel, MessageInbound};
use leadflow_proto::messaging::v1::messaging_service_server::MessagingService;
use leadflow_proto::messaging::v1::{
    ListMessagesRequest, ListMessagesResponse, Message, RecordInboundRequest, RecordInboundResponse,
};
use tonic::{Request, Response, Status};

use crate::capture::{CaptureClient, LookupError};
use crate::store::{InboundOutcome, MessageStore, NewInbound};

const MAX_TEXT_CHARS: usize = 10_000;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// Serves messaging's RPCs.
#[derive(Clone)]
pub struct MessagingApi {
    store: MessageStore,
    outbox: Outbox,
    capture: CaptureClient,
}

impl MessagingApi {
    /// Returns the API.
    pub fn new(store: MessageStore, outbox: Outbox, capture: CaptureClient) -> Self {
        Self {
            store,
            outbox,
            capture,
        }
    }
}

fn internal(err: anyhow::Error) -> Status {
    leadflow_platform::grpc::failure_status(&err, "messaging failed")
}

fn channel_name(channel: MessageChannel) -> Option<&'static str> {
    match channel {
        MessageChannel::Email => Some("email"),
        MessageChannel::Sms => Some("sms"),
        MessageChannel::Call => Some("call"),
        MessageChannel::Task => Some("task"),
        MessageChannel::Unspecified => None,
    }
}

fn kind_name(kind: InboundKind) -> Option<&'static str> {
    match kind {
        InboundKind::Reply => Some("reply"),
        InboundKind::CallAnswered => Some("call_answered"),
        InboundKind::MeetingBooked => Some("meeting_booked"),
        InboundKind::Unspecified => None,
    }
}

/// Parses a `RecordInbound` request, naming every bad field.
fn parse_inbound(request: &RecordInboundRequest) -> Result<NewInbound, FieldViolations> {
    let mut violations = FieldViolations::new();
    let lead_id = parse_uuid(&mut violations, "lead_id", &request.lead_id);
    let channel = MessageChannel::try_from(request.channel)
        .ok()
        .and_then(channel_name);
    if channel.is_none() {
        violations.add("channel", "must be EMAIL, SMS, CALL or TASK");
    }
    let kind = InboundKind::try_from(request.kind).ok().and_then(kind_name);
    if kind.is_none() {
        violations.add("kind", "must be REPLY, CALL_ANSWERED or MEETING_BOOKED");
    }
    if request.text.chars().count() > MAX_TEXT_CHARS {
        violations.add(
            "text",
            format!("must be at most {MAX_TEXT_CHARS} characters"),
        );
    } else if has_control_characters(&request.text) {
        violations.add(
            "text",
            "must not contain control characters other than line breaks and tabs",
        );
    }
    let key = request.idempotency_key.trim();
    if key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || key.chars().any(char::is_control) {
        violations.add(
            "idempotency_key",
            "must be at most 128 printable characters",
        );
    }
    match (lead_id, channel, kind) {
        (Some(lead_id), Some(channel), Some(kind)) if violations.is_empty() => Ok(NewInbound {
            lead_id,
            channel,
            kind,
            body: request.text.clone(),
            idempotency_key: Some(key.to_owned()).filter(|key| !key.is_empty()),
        }),
        _ => Err(violations),
    }
}

#[tonic::async_trait]
impl MessagingService for MessagingApi {
    async fn record_inbound(
        &self,
        request: Request<RecordInboundRequest>,
    ) -> Result<Response<RecordInboundResponse>, Status> {
        Caller::require(&request, Scope::LeadsWrite)?;
        let request = request.into_inner();
        let inbound = parse_inbound(&request)
            .map_err(|violations| violations.into_status("request rejected"))?;
        // Recorded once parsed: a malformed id could be anything a caller typed.
        tracing::Span::current().record("lead_id", tracing::field::display(inbound.lead_id));
        match self.capture.contact(inbound.lead_id).await {
            Ok(_) => {}
            Err(LookupError::NotFound) => return Err(Status::not_found("lead not found")),
            Err(LookupError::Unavailable(err)) => {
                tracing::warn!(error = format!("{err:#}"), "capture unavailable");
                return Err(Status::unavailable("capture unavailable; retry"));
            }
        }
        let mut tx = leadflow_platform::postgres::begin(self.store.pool())
            .await
            .map_err(|err| internal(err.into()))?;
        let outcome = crate::store::insert_inbound(&mut tx, &inbound)
            .await
            .map_err(internal)?;
        let inbound_id = match outcome {
            InboundOutcome::Replayed(inbound_id) => inbound_id,
            InboundOutcome::KeyReused => {
                let mut violations = FieldViolations::new();
                violations.add("idempotency_key", "was already used for another lead");
                return Err(violations.into_status("request rejected"));
            }
            InboundOutcome::Recorded(inbound_id) => {
                let event = MessageInbound {
                    inbound_id: inbound_id.to_string(),
                    lead_id: inbound.lead_id.to_string(),
                    channel: request.channel,
                    kind: request.kind,
                };
                self.outbox
                    .add(&mut tx, types::MESSAGE_INBOUND, inbound.lead_id, &event)
                    .await
                    .map_err(internal)?;
                inbound_id
            }
        };
        self.outbox
            .commit(tx)
            .await
            .map_err(|err| internal(err.into()))?;
        tracing::info!(inbound_id = %inbound_id, kind = inbound.kind, "inbound contact recorded");
        Ok(Response::new(RecordInboundResponse {
            inbound_id: inbound_id.to_string(),
        }))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let caller = Caller::require(&request, Scope::LeadsRead)?;
        // A subject can carry the lead's name ("Welcome, Ada").
        let unmask = caller.has(Scope::PiiRead);
        let lead_id = require_uuid("lead_id", &request.get_ref().lead_id)
            .map_err(|violations| violations.into_status("request rejected"))?;
        tracing::Span::current().record("lead_id", tracing::field::display(lead_id));
        let messages = self.store.list(lead_id).await.map_err(internal)?;
        Ok(Response::new(ListMessagesResponse {
            messages: messages
                .into_iter()
                .map(|message| Message {
                    message_id: message.message_id.to_string(),
                    lead_id: message.lead_id.to_string(),
                    channel: match message.channel.as_str() {
                        "email" => MessageChannel::Email,
                        "sms" => MessageChannel::Sms,
                        "call" => MessageChannel::Call,
                        "task" => MessageChannel::Task,
                        _ => MessageChannel::Unspecified,
                    }
                    .into(),
                    template: message.template,
                    provider: message.provider,
                    subject: if unmask {
                        message.subject
                    } else {
                        leadflow_platform::pii::mask(&message.subject)
                    },
                    sent_at: Some(prost_types::Timestamp {
                        seconds: message.sent_at.timestamp(),
                        nanos: message.sent_at.timestamp_subsec_nanos() as i32,
                    }),
                })
                .collect(),
        }))
    }
}
