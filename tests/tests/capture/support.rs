//! Helpers shared by the capture tests.

use std::time::Duration;

use leadflow_e2e::{StreamEntry, Suite, eventually};
use leadflow_proto::capture::v1::{
    CaptureLeadRequest, ConsentChannel, ConsentInput, DedupeMode, DedupePolicy, GetLeadRequest,
    Lead, LeadInput, LegalBasis, RecordActivityRequest, SourceKind, SourceSettings,
};
use leadflow_proto::events::v1::Envelope;
use prost::Message;
use sqlx::PgConnection;
use tonic::Status;
use tonic_types::StatusExt;

/// Longest wait for anything asynchronous (the outbox relay publishing, mostly).
pub const WAIT: Duration = Duration::from_secs(20);
/// capture's stream.
pub const CAPTURE_STREAM: &str = "leadflow.capture.v1";

/// A lead through the `website` source with the given contact details.
pub fn person(email: &str, phone: &str) -> LeadInput {
    LeadInput {
        email: email.into(),
        phone: phone.into(),
        source: leadflow_e2e::WEBSITE_SOURCE.into(),
        channel: "web".into(),
        ..LeadInput::default()
    }
}

/// A capture request of `lead` alone.
pub fn capture_of(lead: LeadInput) -> CaptureLeadRequest {
    CaptureLeadRequest {
        lead: Some(lead),
        ..CaptureLeadRequest::default()
    }
}

/// A consent to email and SMS with the given IP and user agent.
pub fn consent(ip_address: &str, user_agent: &str) -> ConsentInput {
    ConsentInput {
        channels: vec![ConsentChannel::Email.into(), ConsentChannel::Sms.into()],
        disclosure_text: "I agree that Acme may contact me by email and text message.".into(),
        form_url: "https://acme.example/contact".into(),
        form_version: "v7".into(),
        ip_address: ip_address.into(),
        user_agent: user_agent.into(),
        legal_basis: LegalBasis::Consent.into(),
        given_at: None,
    }
}

/// Returns `message` as a request carrying `idempotency-key: key`.
pub fn with_idempotency_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "idempotency-key",
        key.parse().expect("ascii idempotency key"),
    );
    request
}

/// Returns the `(field, reason)` of each BadRequest violation of `status`, in order.
pub fn violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|details| {
            details
                .field_violations
                .into_iter()
                .map(|violation| (violation.field, violation.reason))
                .collect()
        })
        .unwrap_or_default()
}

/// Returns the fields named by the BadRequest violations of `status`, in order.
pub fn violated_fields(status: &Status) -> Vec<String> {
    violations(status)
        .into_iter()
        .map(|(field, _)| field)
        .collect()
}

/// One event on capture's stream, decoded.
#[derive(Debug, Clone)]
pub struct Published {
    pub entry: StreamEntry,
    pub envelope: Envelope,
}

impl Published {
    /// Decodes the payload as `T`.
    pub fn payload<T: Message + Default>(&self) -> anyhow::Result<T> {
        Ok(T::decode(self.envelope.payload.as_slice())?)
    }
}

/// Returns every event on capture's stream so far.
pub async fn published(suite: &Suite) -> anyhow::Result<Vec<Published>> {
    suite
        .env
        .stream_entries(CAPTURE_STREAM)
        .await?
        .into_iter()
        .map(|entry| {
            let envelope = Envelope::decode(entry.field("envelope").unwrap_or_default())?;
            let event_type = entry.field("type").unwrap_or_default();
            anyhow::ensure!(
                event_type == envelope.event_type.as_bytes(),
                "entry {} has type {:?} but its envelope says {}",
                entry.id,
                String::from_utf8_lossy(event_type),
                envelope.event_type
            );
            Ok(Published { entry, envelope })
        })
        .collect()
}

/// Waits (bounded) until capture's stream has an event of `event_type` whose payload
/// satisfies `wanted`, and returns it with its payload.
pub async fn wait_for_event<T, F>(
    suite: &Suite,
    event_type: &str,
    wanted: F,
) -> anyhow::Result<(Published, T)>
where
    T: Message + Default,
    F: Fn(&T) -> bool,
{
    let wanted = &wanted;
    eventually(
        &format!("{event_type} on the stream"),
        WAIT,
        || async move {
            for event in published(suite).await? {
                if event.envelope.event_type != event_type {
                    continue;
                }
                let payload: T = event.payload()?;
                if wanted(&payload) {
                    return Ok(Some((event, payload)));
                }
            }
            Ok(None)
        },
    )
    .await
}

/// Returns every row of every table of schema `capture`, as `(table, row::text)`; bytea
/// columns render as `\x` hex.
pub async fn capture_rows(db: &mut PgConnection) -> anyhow::Result<Vec<(String, String)>> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'capture' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&mut *db)
    .await?;
    anyhow::ensure!(
        tables.iter().any(|(table,)| table == "leads"),
        "schema capture has no leads table: {tables:?}"
    );
    let mut rows = Vec::new();
    for (table,) in tables {
        let texts: Vec<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM capture.\"{table}\" t"
        )))
        .fetch_all(&mut *db)
        .await?;
        rows.extend(
            texts
                .into_iter()
                .map(|(text,)| (table.clone(), text.unwrap_or_default())),
        );
    }
    Ok(rows)
}

/// Fails naming the table and row when any canary appears in `rows`, as text (any case) or
/// as the hex of its bytes (how bytea renders).
pub fn assert_no_canary(rows: &[(String, String)], canaries: &[&str]) {
    for canary in canaries {
        let text = canary.to_lowercase();
        let hex_text = hex::encode(canary.as_bytes());
        for (table, row) in rows {
            let row = row.to_lowercase();
            assert!(
                !row.contains(&text),
                "canary {canary:?} is stored in plain text in capture.{table}: {row}"
            );
            assert!(
                !row.contains(&hex_text),
                "canary {canary:?} is stored as bytes in capture.{table}: {row}"
            );
        }
    }
}

/// Returns a scalar count.
pub async fn count(db: &mut PgConnection, sql: &'static str) -> anyhow::Result<i64> {
    let (count,): (i64,) = sqlx::query_as(sql).fetch_one(&mut *db).await?;
    Ok(count)
}

/// An authenticated capture client.
pub type Client =
    leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient<leadflow_e2e::Authed>;

/// Returns the stored lead `lead_id` (unmasked with a `pii:read` key).
pub async fn get_lead(client: &mut Client, lead_id: &str) -> anyhow::Result<Lead> {
    client
        .get_lead(GetLeadRequest {
            lead_id: lead_id.to_owned(),
        })
        .await?
        .into_inner()
        .lead
        .ok_or_else(|| anyhow::anyhow!("GetLead without a lead"))
}

/// A vendor source that rejects a person captured again within the hour, at $4 a lead.
pub fn vendor_settings() -> SourceSettings {
    SourceSettings {
        name: "Acme leads".into(),
        kind: SourceKind::Vendor.into(),
        dedupe: Some(DedupePolicy {
            mode: DedupeMode::Reject.into(),
            window_seconds: 3600,
        }),
        cost_per_lead_micros: 4_000_000,
        currency: "USD".into(),
        ..SourceSettings::default()
    }
}

/// An activity request naming the person by lead id.
pub fn by_lead(lead_id: &str) -> RecordActivityRequest {
    RecordActivityRequest {
        lead_id: lead_id.to_owned(),
        ..RecordActivityRequest::default()
    }
}

/// An activity request naming the person by the browser's visitor id.
pub fn by_visitor(visitor_id: uuid::Uuid) -> RecordActivityRequest {
    RecordActivityRequest {
        visitor_id: visitor_id.to_string(),
        ..RecordActivityRequest::default()
    }
}
