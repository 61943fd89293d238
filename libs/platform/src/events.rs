//! Events between services: stream names, envelopes, the transactional outbox and its relay,
//! and the consumer-group runner.

pub mod consumer;
pub mod outbox;
pub mod relay;

use leadflow_proto::events::v1::Envelope;
use prost::Message;
use uuid::Uuid;

/// Stream of capture's events.
pub const CAPTURE_STREAM: &str = "leadflow.capture.v1";
/// Stream of qualification's events.
pub const QUALIFICATION_STREAM: &str = "leadflow.qualification.v1";
/// Stream of messaging's events.
pub const MESSAGING_STREAM: &str = "leadflow.messaging.v1";
/// Suffix of the dead-letter stream beside each stream.
pub const DLQ_SUFFIX: &str = ".dlq";
/// Field of a stream entry holding the encoded envelope.
pub const ENVELOPE_FIELD: &str = "envelope";
/// Field of a stream entry repeating the event type, so readers can filter without decoding.
pub const TYPE_FIELD: &str = "type";

/// Event type names, as carried in `Envelope.event_type`.
pub mod types {
    pub const LEAD_CAPTURED: &str = "lead.captured";
    pub const LEAD_SCORED: &str = "lead.scored";
    pub const LEAD_STAGE_CHANGED: &str = "lead.stage_changed";
    pub const MESSAGE_SENT: &str = "message.sent";
    pub const MESSAGE_INBOUND: &str = "message.inbound";
}

/// Returns the full name of `stream` under `prefix` (empty in production).
pub fn stream_name(prefix: &str, stream: &str) -> String {
    format!("{prefix}{stream}")
}

/// Builds an envelope for `payload` with a fresh UUIDv7 and the current trace context.
/// `lead_id` is `None` for events about no lead (e.g. `lead.rejected`): the envelope's
/// `lead_id` is then empty.
pub fn envelope(
    producer: &str,
    event_type: &str,
    lead_id: Option<Uuid>,
    payload: &impl Message,
) -> Envelope {
    let now = std::time::SystemTime::now();
    Envelope {
        event_id: Uuid::now_v7().to_string(),
        event_type: event_type.to_owned(),
        occurred_at: Some(prost_types::Timestamp::from(now)),
        producer: producer.to_owned(),
        lead_id: lead_id.map(|id| id.to_string()).unwrap_or_default(),
        traceparent: crate::telemetry::current_traceparent(),
        schema_version: 1,
        payload: payload.encode_to_vec(),
    }
}
