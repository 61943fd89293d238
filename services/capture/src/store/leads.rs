//! Leads: capture with race-safe dedupe and merge, idempotent answers, reads with decryption,
//! erasure and returns, and the activities of leads and of the visitors linked to them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use leadflow_platform::events::outbox::Outbox;
use leadflow_platform::events::types;
use leadflow_platform::pii::{DataKey, Keyring};
use leadflow_proto::capture::v1::Attribution;
use leadflow_proto::events::v1::{
    EmailDomainKind, LeadCaptured, LeadErased, LeadMerged, LeadRejected, LeadReturned,
};
use prost::Message as _;
use sqlx::{FromRow as _, PgConnection, PgPool, Row as _};
use uuid::Uuid;

use crate::domain::evidence::Consent;
use crate::domain::lead::{EmailKind, NewLead, identity_hash};
use crate::domain::source::{Dedupe, SourcePolicy};

mod activity;
mod batch;
mod lineage;
mod read;

pub use activity::{ActivityPage, ActivityRow, ListedActivity, Recorded, StoredActivity};
pub use batch::{BatchRow, Batched, Sealed};
pub use lineage::{MergeReview, Resolution, Resolved, ReviewReason};

/// Event types capture emits beyond the shared ones.
mod event_types {
    pub const LEAD_MERGED: &str = "lead.merged";
    pub const LEAD_REJECTED: &str = "lead.rejected";
    pub const LEAD_ERASED: &str = "lead.erased";
    pub const LEAD_RETURNED: &str = "lead.returned";
    pub const LEAD_UNMERGED: &str = "lead.unmerged";
    pub const LEAD_ACTIVITY: &str = "lead.activity";
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The person was captured from this source within its reject window.
    #[error("duplicate of lead {0}")]
    Duplicate(Uuid),
    /// The person asked to be erased and the capture carries no fresh consent.
    #[error("person is suppressed")]
    Suppressed,
    /// The idempotency key was used before with a different request.
    #[error("idempotency key reused with a different request")]
    IdempotencyMismatch,
    /// The activity id was recorded before with a different request.
    #[error("activity id reused with a different request")]
    ActivityIdReused,
    /// No such lead (or it was erased, for operations that need its data).
    #[error("lead not found")]
    NotFound,
    /// No such merge review or merge.
    #[error("{0} not found")]
    Missing(&'static str),
    /// A concurrent first request with the same idempotency key committed first: answer with
    /// its stored response.
    #[error("answered by the first request with this idempotency key")]
    Replay,
    /// The operation is not allowed in the lead's state.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        StoreError::Internal(err.into())
    }
}

/// Everything a capture stores.
#[derive(Debug, Clone)]
pub struct CaptureRequest {
    pub lead: NewLead,
    pub attribution: Attribution,
    pub consent: Option<Consent>,
    /// The request as it arrived (an encoded `CaptureLeadRequest`), kept sealed when the
    /// capture is held for review.
    pub raw: Vec<u8>,
    /// Who captured (API key id, or `form:<source>`).
    pub caller: String,
}

/// Whether a capture made a new lead, merged into a known one, or was held for review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Merged,
    /// Held in the merge review queue under this id; nothing else was stored.
    InReview(Uuid),
}

/// The result of a capture.
#[derive(Debug, Clone)]
pub struct Captured {
    pub outcome: Outcome,
    /// The lead created, merged into, or matched (in review).
    pub lead: LeadView,
    /// The merge in the lead's lineage, for a merge.
    pub merge_id: Option<Uuid>,
}

/// Who decides what a capture of a known person does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// The source's dedupe policy, holding for review what would mix leads or consents.
    Policy,
    /// A reviewer decided to merge.
    Merge { review_id: Uuid },
    /// A reviewer decided the capture is a lead of its own.
    KeepSeparate,
}

/// What a merge folds in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeKind {
    /// A re-capture's own record.
    Capture,
    /// A whole lead, after a review.
    Lead,
}

impl MergeKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MergeKind::Capture => "capture",
            MergeKind::Lead => "lead",
        }
    }
}

/// An email being folded into a lead, opened.
#[derive(Debug, Clone)]
struct IncomingEmail {
    address: String,
    kind: String,
    role: bool,
    bidx: Vec<u8>,
}

/// A phone being folded into a lead, opened.
#[derive(Debug, Clone)]
struct IncomingPhone {
    e164: String,
    region: String,
    line_type: String,
    bidx: Vec<u8>,
}

/// A row being folded into a lead: a re-capture's record or a whole lead, opened.
#[derive(Debug, Clone)]
struct Incoming {
    row_id: Uuid,
    kind: MergeKind,
    /// Captures it counts for.
    touches: i32,
    source_id: String,
    channel: String,
    campaign: String,
    email: Option<IncomingEmail>,
    phone: Option<IncomingPhone>,
    first_name: String,
    last_name: String,
    company: String,
    country: String,
    website: String,
    job_title: String,
    quality_score: i32,
}

impl Incoming {
    /// A re-capture stored as record `row_id`.
    fn capture(
        row_id: Uuid,
        source: &SourcePolicy,
        request: &CaptureRequest,
        email_bidx: Option<&[u8]>,
        phone_bidx: Option<&[u8]>,
    ) -> Self {
        let lead = &request.lead;
        Self {
            row_id,
            kind: MergeKind::Capture,
            touches: 1,
            source_id: source.source_id.clone(),
            channel: lead.channel.clone(),
            campaign: lead.campaign.clone(),
            email: lead
                .email
                .as_ref()
                .zip(email_bidx)
                .map(|(email, bidx)| IncomingEmail {
                    address: email.address.clone(),
                    kind: email.kind.as_str().to_owned(),
                    role: email.role,
                    bidx: bidx.to_vec(),
                }),
            phone: lead
                .phone
                .as_ref()
                .zip(phone_bidx)
                .map(|(phone, bidx)| IncomingPhone {
                    e164: phone.e164.clone(),
                    region: phone.region.clone().unwrap_or_default(),
                    line_type: phone.line_type.unwrap_or_default().to_owned(),
                    bidx: bidx.to_vec(),
                }),
            first_name: lead.first_name.clone(),
            last_name: lead.last_name.clone(),
            company: lead.company.clone(),
            country: lead.country.clone(),
            website: lead.website.clone(),
            job_title: lead.job_title.clone(),
            quality_score: lead.quality_score(),
        }
    }
}

/// The idempotency of one request: who asked, their key, and a hash of what they sent.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub caller: String,
    pub key: String,
    pub request_sha256: Vec<u8>,
}

/// One capture's attribution.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TouchRow {
    pub source_id: String,
    pub channel: String,
    pub campaign: String,
    pub utm_source: String,
    pub utm_medium: String,
    pub utm_campaign: String,
    pub utm_term: String,
    pub utm_content: String,
    pub gclid: String,
    pub fbclid: String,
    pub referrer: String,
    pub landing_page: String,
    pub captured_at: DateTime<Utc>,
}

/// A stored consent record, opened.
#[derive(Debug, Clone)]
pub struct ConsentRow {
    pub consent_id: Uuid,
    pub channels: Vec<String>,
    pub disclosure_text: String,
    pub disclosure_sha256: String,
    pub form_url: String,
    pub form_version: String,
    pub ip_address: String,
    pub user_agent: String,
    pub legal_basis: String,
    pub given_at: DateTime<Utc>,
}

/// A lead with its personal data opened.
#[derive(Debug, Clone)]
pub struct LeadView {
    pub lead_id: Uuid,
    pub email: String,
    pub phone: String,
    pub first_name: String,
    pub last_name: String,
    pub company: String,
    pub source_id: String,
    pub channel: String,
    pub campaign: String,
    pub email_kind: String,
    pub email_role: bool,
    pub phone_line_type: String,
    pub country: String,
    pub website: String,
    pub job_title: String,
    pub quality_score: i32,
    pub touch_count: i32,
    pub erased: bool,
    pub created_at: DateTime<Utc>,
    pub first_touch: Option<TouchRow>,
    pub latest_touch: Option<TouchRow>,
    pub consents: Vec<ConsentRow>,
    /// Its lineage: merges into it or into rows merged into it, oldest first.
    pub merges: Vec<MergeRow>,
}

/// One merge in a lead's lineage.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MergeRow {
    pub merge_id: Uuid,
    pub lead_id: Uuid,
    pub merged_lead_id: Uuid,
    pub kind: String,
    pub source_id: String,
    pub fields_filled: Vec<String>,
    pub merged_at: DateTime<Utc>,
    pub unmerged_at: Option<DateTime<Utc>>,
    pub review_id: Option<Uuid>,
}

/// What a return credits.
#[derive(Debug, Clone)]
pub struct ReturnOutcome {
    pub returned_at: DateTime<Utc>,
    pub credit_micros: i64,
    pub currency: String,
}

/// The row of a known person, locked for a merge.
#[derive(Debug, sqlx::FromRow)]
struct Known {
    lead_id: Uuid,
    source_id: String,
    data_key: Option<Vec<u8>>,
    email_bidx: Option<Vec<u8>>,
    phone_bidx: Option<Vec<u8>>,
    first_name_sealed: Option<Vec<u8>>,
    last_name_sealed: Option<Vec<u8>>,
    company: String,
    country: String,
    website: String,
    job_title: String,
    last_captured_at: DateTime<Utc>,
}

/// A capture's row as inserted.
struct Inserted {
    /// The new lead's or record's id.
    row_id: Uuid,
    /// Its data key.
    key: DataKey,
    created_at: DateTime<Utc>,
    /// Its consent record, when the capture carried consent.
    consent_id: Option<Uuid>,
}

/// How a capture's row is inserted: its identities, which of them it claims, and the lead it
/// is merged into when it is a record.
#[derive(Debug, Clone, Copy)]
struct NewRow<'a> {
    email_digest: Option<&'a [u8]>,
    phone_digest: Option<&'a [u8]>,
    claim_email: bool,
    claim_phone: bool,
    merged_into: Option<Uuid>,
}

impl<'a> NewRow<'a> {
    /// A new lead claiming every identity it has.
    fn lead(email: Option<&'a [u8]>, phone: Option<&'a [u8]>) -> Self {
        Self {
            email_digest: email,
            phone_digest: phone,
            claim_email: true,
            claim_phone: true,
            merged_into: None,
        }
    }
}

/// An idempotent answer: request hash, lead, sealed response, the lead's wrapped data key.
type ReplayRow = (Vec<u8>, Option<Uuid>, Option<Vec<u8>>, Option<Vec<u8>>);

/// Leads in the `capture` schema.
#[derive(Clone)]
pub struct LeadStore {
    pool: PgPool,
    outbox: Outbox,
    keyring: Keyring,
    identity_key: Arc<Vec<u8>>,
    /// Serialization, deadlock and unique-violation retries so far (printed by benchmarks).
    retries: Arc<AtomicU64>,
}

/// A capture's row, its touch, its consent record (when `$34` is set) and its `lead.captured`
/// event (when `$44` is set), inside the caller's transaction.
const INSERT_CAPTURE: &str = "WITH lead AS (INSERT INTO capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, \
               phone_bidx, email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, \
               phone_region, phone_line_type, company, country, website, job_title, quality_score, email_digest, \
               phone_digest, merged_into, merged_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
               $23, CASE WHEN $23::uuid IS NULL THEN NULL ELSE now() END) \
             RETURNING created_at), \
             touch AS (INSERT INTO capture.touches (touch_id, lead_id, source_id, channel, campaign, utm_source, \
               utm_medium, utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page) \
             VALUES ($24, $1, $2, $3, $4, $25, $26, $27, $28, $29, $30, $31, $32, $33)), \
             consent AS (INSERT INTO capture.consents (consent_id, lead_id, channels, disclosure_text, \
               disclosure_sha256, form_url, form_version, ip_sealed, user_agent_sealed, legal_basis, given_at) \
             SELECT $34, $1, $35, $36, $37, $38, $39, $40, $41, $42, COALESCE($43, now()) WHERE $34::uuid IS NOT NULL), \
             event AS (INSERT INTO capture.outbox (event_id, stream, event_type, envelope) \
             SELECT $44, $45, $46, $47 WHERE $44::uuid IS NOT NULL) \
             SELECT created_at FROM lead";

/// [`INSERT_CAPTURE`] of a new lead on its own, autocommitted: nothing is inserted when the
/// person is suppressed, already has a lead, or gets one from a concurrent capture before
/// this one commits (`ON CONFLICT DO NOTHING` on the unique identities), and then no row
/// comes back.
const INSERT_NEW_LEAD: &str = "WITH known AS (SELECT EXISTS (SELECT 1 FROM capture.suppressions WHERE bidx IN ($6, $7)) \
               OR EXISTS (SELECT 1 FROM capture.leads WHERE (email_bidx = $6 OR phone_bidx = $7) AND erased_at IS NULL) \
               AS known), \
             lead AS (INSERT INTO capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, \
               phone_bidx, email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, \
               phone_region, phone_line_type, company, country, website, job_title, quality_score, email_digest, \
               phone_digest, merged_into, merged_at) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
               $23, CASE WHEN $23::uuid IS NULL THEN NULL ELSE now() END WHERE NOT (SELECT known FROM known) \
             ON CONFLICT DO NOTHING RETURNING created_at), \
             touch AS (INSERT INTO capture.touches (touch_id, lead_id, source_id, channel, campaign, utm_source, \
               utm_medium, utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page) \
             SELECT $24, $1, $2, $3, $4, $25, $26, $27, $28, $29, $30, $31, $32, $33 FROM lead), \
             consent AS (INSERT INTO capture.consents (consent_id, lead_id, channels, disclosure_text, \
               disclosure_sha256, form_url, form_version, ip_sealed, user_agent_sealed, legal_basis, given_at) \
             SELECT $34, $1, $35, $36, $37, $38, $39, $40, $41, $42, COALESCE($43, now()) FROM lead WHERE $34::uuid IS NOT NULL), \
             event AS (INSERT INTO capture.outbox (event_id, stream, event_type, envelope) \
             SELECT $44, $45, $46, $47 FROM lead WHERE $44::uuid IS NOT NULL) \
             SELECT created_at FROM lead";

/// Rows a sweep deletes per statement, so no transaction holds many locks.
const SWEEP_BATCH: i64 = 5_000;

/// Runs `delete`, a `DELETE … WHERE key IN (SELECT key … older than $1 … LIMIT $2 FOR UPDATE
/// SKIP LOCKED)`, until a batch comes back short; returns how many rows went.
async fn delete_in_batches(
    pool: &PgPool,
    delete: &'static str,
    before: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let deleted = sqlx::query(delete)
            .bind(before)
            .bind(SWEEP_BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += deleted;
        if deleted < SWEEP_BATCH.unsigned_abs() {
            return Ok(total);
        }
    }
}

const RETRYABLE_SQLSTATES: [&str; 3] = ["40001", "40P01", "23505"];

fn is_retryable(err: &StoreError) -> bool {
    let StoreError::Internal(err) = err else {
        return false;
    };
    err.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|err| err.as_database_error())
            .and_then(|err| err.code())
            .is_some_and(|code| RETRYABLE_SQLSTATES.contains(&code.as_ref()))
    })
}

/// How conflicting transactions are retried.
fn conflict_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(2))
        .with_max_delay(Duration::from_millis(100))
        .with_max_times(8)
        .with_jitter()
}

impl LeadStore {
    /// Returns a store sealing personal data with `keyring`.
    pub fn new(pool: PgPool, outbox: Outbox, keyring: Keyring, identity_key: Vec<u8>) -> Self {
        Self {
            pool,
            outbox,
            keyring,
            identity_key: Arc::new(identity_key),
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Runs `attempt` again, with backoff, while it fails on a serialization, deadlock or
    /// unique conflict; each retry is counted and logged as `<what> retried after a conflict`.
    async fn retry_conflicts<T, F, Fut>(&self, what: &str, attempt: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        attempt
            .retry(conflict_backoff())
            .when(is_retryable)
            .notify(|_, after| {
                let retries = self.count_retry();
                tracing::info!(
                    retries,
                    after_ms = after.as_millis() as u64,
                    "{what} retried after a conflict"
                );
            })
            .await
    }

    /// Counts one more conflict retried; returns how many so far.
    fn count_retry(&self) -> u64 {
        self.retries.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Returns how many conflicting transactions were retried so far.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Returns the first answer to an idempotent request, if one was given within 24 hours.
    pub async fn replay(&self, idempotency: &Idempotency) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<ReplayRow> = sqlx::query_as(
            "SELECT i.request_sha256, i.lead_id, i.response_sealed, l.data_key \
             FROM capture.idempotency i LEFT JOIN capture.leads l ON l.lead_id = i.lead_id \
             WHERE i.caller = $1 AND i.idempotency_key = $2 AND i.created_at > now() - interval '24 hours'",
        )
        .bind(&idempotency.caller)
        .bind(&idempotency.key)
        .fetch_optional(&self.pool)
        .await?;
        let Some((request_sha256, lead_id, sealed, data_key)) = row else {
            return Ok(None);
        };
        if request_sha256 != idempotency.request_sha256 {
            return Err(StoreError::IdempotencyMismatch);
        }
        let (Some(lead_id), Some(sealed), Some(data_key)) = (lead_id, sealed, data_key) else {
            // The lead was erased since: its answer went with its data key.
            return Err(StoreError::NotFound);
        };
        let owner = lead_id.as_bytes();
        let key = self
            .keyring
            .unwrap_data_key(owner, &data_key)
            .context("unwrap data key")?;
        let response = key
            .open(owner, "idempotent-response", &sealed)
            .context("open stored response")?;
        Ok(Some(response))
    }

    /// Returns the blind indexes of a capture's email and phone.
    fn identities(&self, request: &CaptureRequest) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        (
            request
                .lead
                .email
                .as_ref()
                .map(|email| self.keyring.blind_index("email", &email.address)),
            request
                .lead
                .phone
                .as_ref()
                .map(|phone| self.keyring.blind_index("phone", &phone.e164)),
        )
    }

    /// Deletes idempotent answers older than 24 hours (they are never replayed), a batch at a
    /// time; returns how many went.
    pub async fn sweep_idempotency(&self) -> Result<u64, StoreError> {
        delete_in_batches(
            &self.pool,
            "DELETE FROM capture.idempotency WHERE (caller, idempotency_key) IN ( \
               SELECT caller, idempotency_key FROM capture.idempotency \
               WHERE created_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            Utc::now() - chrono::Duration::hours(24),
        )
        .await
    }

    /// Sweeps old idempotent answers every `every` until `stop` is cancelled, and anonymous
    /// activity (and visitors never linked) older than `anonymous_retention` when set.
    pub async fn run_sweeper(
        self,
        every: Duration,
        anonymous_retention: Option<chrono::Duration>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.sweep_idempotency().await {
                Ok(0) => {}
                Ok(swept) => tracing::info!(swept, "swept idempotent answers older than 24 hours"),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "sweep idempotent answers"),
            }
            let Some(retention) = anonymous_retention else {
                continue;
            };
            match self.sweep_anonymous_activity(Utc::now() - retention).await {
                Ok((0, 0)) => {}
                Ok((activities, visitors)) => tracing::info!(
                    activities,
                    visitors,
                    "swept anonymous activity past its retention"
                ),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "sweep anonymous activity"),
            }
        }
    }

    /// Stores a capture: a new lead, or a merge into the person's lead, with its touch,
    /// consent and event; retried on conflicts so concurrent captures of one person make one
    /// lead. `respond` turns the result into the answer stored for `idempotency`.
    pub async fn capture(
        &self,
        source: &SourcePolicy,
        request: &CaptureRequest,
        idempotency: Option<&Idempotency>,
        respond: &(dyn Fn(&Captured) -> Vec<u8> + Send + Sync),
    ) -> Result<Captured, StoreError> {
        let (email_bidx, phone_bidx) = self.identities(request);
        // A person nobody holds yet, without an idempotency key or a visitor to link, is
        // stored by one autocommitted statement; anyone else (or a person stored by a
        // concurrent capture meanwhile) goes through the transaction below.
        if idempotency.is_none() && request.lead.visitor_id.is_none() {
            let row = NewRow::lead(email_bidx.as_deref(), phone_bidx.as_deref());
            let fresh = || async {
                self.insert_with(&self.pool, INSERT_NEW_LEAD, source, request, row)
                    .await
            };
            let stored = self.retry_conflicts("capture", fresh).await;
            // As `Outbox::commit`: an error may hide a statement that committed.
            if !matches!(stored, Ok(None)) {
                self.outbox.wake();
            }
            if let Some(inserted) = stored? {
                let lead = new_lead_view(
                    inserted.row_id,
                    source,
                    request,
                    inserted.created_at,
                    inserted.consent_id,
                );
                return Ok(Captured {
                    outcome: Outcome::Created,
                    lead,
                    merge_id: None,
                });
            }
        }
        let attempt = || async {
            self.capture_once(
                source,
                request,
                email_bidx.as_deref(),
                phone_bidx.as_deref(),
                idempotency,
                respond,
            )
            .await
        };
        self.retry_conflicts("capture", attempt).await
    }

    async fn capture_once(
        &self,
        source: &SourcePolicy,
        request: &CaptureRequest,
        email_bidx: Option<&[u8]>,
        phone_bidx: Option<&[u8]>,
        idempotency: Option<&Idempotency>,
        respond: &(dyn Fn(&Captured) -> Vec<u8> + Send + Sync),
    ) -> Result<Captured, StoreError> {
        let mut tx = leadflow_platform::postgres::begin(&self.pool).await?;
        if let Some(idempotency) = idempotency {
            sqlx::query(
                "DELETE FROM capture.idempotency WHERE caller = $1 AND idempotency_key = $2 \
                 AND created_at <= now() - interval '24 hours'",
            )
            .bind(&idempotency.caller)
            .bind(&idempotency.key)
            .execute(&mut *tx)
            .await?;
            // A concurrent first request holds this row until it commits; then we conflict.
            let claimed = sqlx::query(
                "INSERT INTO capture.idempotency (caller, idempotency_key, request_sha256) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&idempotency.caller)
            .bind(&idempotency.key)
            .bind(&idempotency.request_sha256)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() == 0 {
                tx.rollback().await?;
                return Err(StoreError::Replay);
            }
        }
        let (captured, key) = self
            .capture_in(
                &mut tx,
                source,
                request,
                email_bidx,
                phone_bidx,
                Decision::Policy,
            )
            .await?;
        if let Some(idempotency) = idempotency {
            let lead_id = captured.lead.lead_id;
            let sealed = key
                .seal(
                    lead_id.as_bytes(),
                    "idempotent-response",
                    &respond(&captured),
                )
                .context("seal idempotent response")?;
            sqlx::query(
                "UPDATE capture.idempotency SET lead_id = $3, response_sealed = $4 \
                 WHERE caller = $1 AND idempotency_key = $2",
            )
            .bind(&idempotency.caller)
            .bind(&idempotency.key)
            .bind(lead_id)
            .bind(sealed)
            .execute(&mut *tx)
            .await?;
        }
        self.outbox.commit(tx).await?;
        Ok(captured)
    }

    /// Stores a capture inside `tx` as `decision` says: a new lead, a merge into the known
    /// person's lead, or a capture held for review. Returns what happened and the data key of
    /// the lead answered with.
    async fn capture_in(
        &self,
        tx: &mut PgConnection,
        source: &SourcePolicy,
        request: &CaptureRequest,
        email_bidx: Option<&[u8]>,
        phone_bidx: Option<&[u8]>,
        decision: Decision,
    ) -> Result<(Captured, DataKey), StoreError> {
        // One round trip: whether the person is suppressed, and their leads, locked.
        let rows = sqlx::query(
            "SELECT s.suppressed, k.* \
             FROM (SELECT EXISTS (SELECT 1 FROM capture.suppressions WHERE bidx IN ($1, $2)) AS suppressed) s \
             LEFT JOIN LATERAL (SELECT lead_id, source_id, data_key, email_bidx, phone_bidx, first_name_sealed, \
                 last_name_sealed, company, country, website, job_title, last_captured_at, \
                 email_bidx = $1 AS by_email, created_at \
               FROM capture.leads WHERE (email_bidx = $1 OR phone_bidx = $2) AND erased_at IS NULL FOR UPDATE) k ON true \
             ORDER BY k.by_email DESC NULLS LAST, k.created_at",
        )
        .bind(email_bidx)
        .bind(phone_bidx)
        .fetch_all(&mut *tx)
        .await?;
        let suppressed = match rows.first() {
            Some(row) => row.try_get::<bool, _>("suppressed")?,
            None => false,
        };
        if suppressed && decision == Decision::Policy {
            // An erased person comes back only with fresh consent, which lifts the suppression.
            if request.consent.is_none() {
                return Err(StoreError::Suppressed);
            }
            sqlx::query("DELETE FROM capture.suppressions WHERE bidx IN ($1, $2)")
                .bind(email_bidx)
                .bind(phone_bidx)
                .execute(&mut *tx)
                .await?;
        }
        let mut known = Vec::with_capacity(rows.len());
        for row in &rows {
            if row.try_get::<Option<Uuid>, _>("lead_id")?.is_some() {
                known.push(Known::from_row(row)?);
            }
        }
        let existing = match (known.first(), decision) {
            (_, Decision::KeepSeparate) | (None, _) => {
                // A lead of its own claims the identities nobody holds (all, when new).
                let held: Vec<&[u8]> = known
                    .iter()
                    .flat_map(|lead| [lead.email_bidx.as_deref(), lead.phone_bidx.as_deref()])
                    .flatten()
                    .collect();
                let row = NewRow {
                    claim_email: email_bidx.is_some_and(|bidx| !held.contains(&bidx)),
                    claim_phone: phone_bidx.is_some_and(|bidx| !held.contains(&bidx)),
                    ..NewRow::lead(email_bidx, phone_bidx)
                };
                let inserted = self.insert_capture(tx, source, request, row).await?;
                let (lead_id, key, consent_id) =
                    (inserted.row_id, inserted.key, inserted.consent_id);
                if let Some(visitor_id) = request.lead.visitor_id {
                    self.link_visitor(tx, visitor_id, lead_id, lead_id).await?;
                }
                // Answered from what was just written rather than read back: every value
                // is one this transaction stored, and its `now()` is `created_at`.
                let lead = new_lead_view(lead_id, source, request, inserted.created_at, consent_id);
                let captured = Captured {
                    outcome: Outcome::Created,
                    lead,
                    merge_id: None,
                };
                return Ok((captured, key));
            }
            (Some(existing), _) => existing,
        };
        let owner = existing.lead_id.as_bytes();
        let wrapped = existing
            .data_key
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("active lead without a data key"))?;
        let key = self
            .keyring
            .unwrap_data_key(owner, wrapped)
            .context("unwrap data key")?;
        let review_id = match decision {
            Decision::Merge { review_id } => Some(review_id),
            _ => None,
        };
        if review_id.is_none() {
            if let Dedupe::RejectWithin(window) = source.dedupe
                && existing.last_captured_at > Utc::now() - window
            {
                return Err(StoreError::Duplicate(existing.lead_id));
            }
            if let Some(hold) = self.needs_review(tx, &known, request).await? {
                let review_id = self.hold(tx, source, request, existing, hold).await?;
                let lead = self
                    .view(tx, existing.lead_id)
                    .await?
                    .ok_or(StoreError::NotFound)?;
                let captured = Captured {
                    outcome: Outcome::InReview(review_id),
                    lead,
                    merge_id: None,
                };
                return Ok((captured, key));
            }
        }
        // The capture is kept as a record of its own, folded into the lead.
        let row = NewRow {
            claim_email: false,
            claim_phone: false,
            merged_into: Some(existing.lead_id),
            ..NewRow::lead(email_bidx, phone_bidx)
        };
        let record_id = self.insert_capture(tx, source, request, row).await?.row_id;
        let incoming = Incoming::capture(record_id, source, request, email_bidx, phone_bidx);
        let merge_id = self.fold(tx, existing, &key, &incoming, review_id).await?;
        if let Some(visitor_id) = request.lead.visitor_id {
            self.link_visitor(tx, visitor_id, record_id, existing.lead_id)
                .await?;
        }
        let lead = self
            .view(tx, existing.lead_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let captured = Captured {
            outcome: Outcome::Merged,
            lead,
            merge_id: Some(merge_id),
        };
        Ok((captured, key))
    }
    /// Inserts a capture as a row of its own under a new data key, in one statement with
    /// its touch, its consent record (when it carries consent) and, for a new lead, its
    /// `lead.captured` event: a new lead claiming the identities in `row`, or a record merged
    /// into `row.merged_into` claiming none. The outbox row is the one `Outbox::add` writes,
    /// and the transaction commits through `Outbox::commit` as every other.
    async fn insert_capture(
        &self,
        tx: &mut PgConnection,
        source: &SourcePolicy,
        request: &CaptureRequest,
        row: NewRow<'_>,
    ) -> Result<Inserted, StoreError> {
        self.insert_with(&mut *tx, INSERT_CAPTURE, source, request, row)
            .await?
            .ok_or_else(|| anyhow::anyhow!("insert capture: no row returned").into())
    }

    /// Runs `sql` ([`INSERT_CAPTURE`] or [`INSERT_NEW_LEAD`], which bind the same values) on
    /// `executor` for `row`; `None` when the statement inserted nothing.
    async fn insert_with<'e, E>(
        &self,
        executor: E,
        sql: &'static str,
        source: &SourcePolicy,
        request: &CaptureRequest,
        row: NewRow<'_>,
    ) -> Result<Option<Inserted>, StoreError>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let lead = &request.lead;
        let attribution = &request.attribution;
        let lead_id = Uuid::now_v7();
        let owner = lead_id.as_bytes();
        let (key, wrapped) = self.keyring.new_data_key(owner).context("new data key")?;
        let seal =
            |field: &str, text: &str| key.seal_text(owner, field, text).context("seal field");
        let consent = request.consent.as_ref();
        let consent_id = consent.map(|_| Uuid::now_v7());
        let seal_consent = |field: &str, text: &str| match consent_id {
            Some(consent_id) => key
                .seal_text(consent_id.as_bytes(), field, text)
                .context("seal consent field"),
            None => Ok(None),
        };
        let event = match row.merged_into {
            None => {
                let payload = self.captured_event(lead_id, request);
                let envelope = self
                    .outbox
                    .envelope(types::LEAD_CAPTURED, Some(lead_id), &payload);
                let event_id = Uuid::parse_str(&envelope.event_id).context("parse event id")?;
                Some((event_id, envelope.encode_to_vec()))
            }
            Some(_) => None,
        };
        let created_at: Option<DateTime<Utc>> = sqlx::query_scalar(sql)
            .bind(lead_id)
            .bind(&source.source_id)
            .bind(&lead.channel)
            .bind(&lead.campaign)
            .bind(wrapped)
            .bind(row.email_digest.filter(|_| row.claim_email))
            .bind(row.phone_digest.filter(|_| row.claim_phone))
            .bind(seal("email", lead.email_address())?)
            .bind(seal("phone", lead.phone_e164())?)
            .bind(seal("first_name", &lead.first_name)?)
            .bind(seal("last_name", &lead.last_name)?)
            .bind(lead.email_kind_name())
            .bind(lead.email_role())
            .bind(
                lead.phone
                    .as_ref()
                    .and_then(|phone| phone.region.as_deref())
                    .unwrap_or_default(),
            )
            .bind(lead.phone_line_type())
            .bind(&lead.company)
            .bind(&lead.country)
            .bind(&lead.website)
            .bind(&lead.job_title)
            .bind(lead.quality_score())
            .bind(row.email_digest)
            .bind(row.phone_digest)
            .bind(row.merged_into)
            .bind(Uuid::now_v7())
            .bind(&attribution.utm_source)
            .bind(&attribution.utm_medium)
            .bind(&attribution.utm_campaign)
            .bind(&attribution.utm_term)
            .bind(&attribution.utm_content)
            .bind(&attribution.gclid)
            .bind(&attribution.fbclid)
            .bind(&attribution.referrer)
            .bind(&attribution.landing_page)
            .bind(consent_id)
            .bind(consent.map(Consent::channel_names))
            .bind(consent.map(|consent| &consent.disclosure_text))
            .bind(consent.map(|consent| &consent.disclosure_sha256))
            .bind(consent.map(|consent| &consent.form_url))
            .bind(consent.map(|consent| &consent.form_version))
            .bind(seal_consent(
                "ip_address",
                &consent.map(Consent::ip_text).unwrap_or_default(),
            )?)
            .bind(seal_consent(
                "user_agent",
                consent.map_or("", |consent| &consent.user_agent),
            )?)
            .bind(consent.map(|consent| consent.legal_basis.as_str_name()))
            .bind(consent.and_then(|consent| consent.given_at))
            .bind(event.as_ref().map(|(event_id, _)| *event_id))
            .bind(self.outbox.stream())
            .bind(types::LEAD_CAPTURED)
            .bind(event.map(|(_, envelope)| envelope))
            .fetch_optional(executor)
            .await
            .context("insert capture")?;
        Ok(created_at.map(|created_at| Inserted {
            row_id: lead_id,
            key,
            created_at,
            consent_id,
        }))
    }

    /// Folds a row into a known lead: its empty fields are filled (sealed under the lead's
    /// key), its touch count grows, and the merge is kept in the lineage with the lead's
    /// columns before and after; emits `lead.merged`. Returns the merge's id.
    async fn fold(
        &self,
        tx: &mut PgConnection,
        existing: &Known,
        key: &DataKey,
        incoming: &Incoming,
        review_id: Option<Uuid>,
    ) -> Result<Uuid, StoreError> {
        let lead_id = existing.lead_id;
        let owner = lead_id.as_bytes();
        let mut filled = Vec::new();
        let fill_email = existing.email_bidx.is_none() && incoming.email.is_some();
        let fill_phone = existing.phone_bidx.is_none() && incoming.phone.is_some();
        let fill_first = existing.first_name_sealed.is_none() && !incoming.first_name.is_empty();
        let fill_last = existing.last_name_sealed.is_none() && !incoming.last_name.is_empty();
        for (fill, name) in [
            (fill_email, "email"),
            (fill_phone, "phone"),
            (fill_first, "first_name"),
            (fill_last, "last_name"),
        ] {
            if fill {
                filled.push(name.to_owned());
            }
        }
        for (existing_value, new_value, name) in [
            (&existing.company, &incoming.company, "company"),
            (&existing.country, &incoming.country, "country"),
            (&existing.website, &incoming.website, "website"),
            (&existing.job_title, &incoming.job_title, "job_title"),
        ] {
            if existing_value.is_empty() && !new_value.is_empty() {
                filled.push(name.to_owned());
            }
        }
        let seal =
            |field: &str, text: &str| key.seal_text(owner, field, text).context("seal field");
        let email = incoming.email.as_ref();
        let phone = incoming.phone.as_ref();
        let merge_id = Uuid::now_v7();
        let (touch_count,): (i32,) = sqlx::query_as(
            "WITH old AS (SELECT to_jsonb(o) AS snapshot FROM capture.leads o WHERE o.lead_id = $1), \
             new AS (UPDATE capture.leads l SET \
               email_bidx = CASE WHEN $2 THEN $3 ELSE email_bidx END, \
               email_digest = CASE WHEN $2 THEN $3 ELSE email_digest END, \
               email_sealed = CASE WHEN $2 THEN $4 ELSE email_sealed END, \
               email_kind = CASE WHEN $2 THEN $5 ELSE email_kind END, \
               email_role = CASE WHEN $2 THEN $6 ELSE email_role END, \
               phone_bidx = CASE WHEN $7 THEN $8 ELSE phone_bidx END, \
               phone_digest = CASE WHEN $7 THEN $8 ELSE phone_digest END, \
               phone_sealed = CASE WHEN $7 THEN $9 ELSE phone_sealed END, \
               phone_region = CASE WHEN $7 THEN $10 ELSE phone_region END, \
               phone_line_type = CASE WHEN $7 THEN $11 ELSE phone_line_type END, \
               first_name_sealed = COALESCE(first_name_sealed, $12), \
               last_name_sealed = COALESCE(last_name_sealed, $13), \
               company = CASE WHEN company = '' THEN $14 ELSE company END, \
               country = CASE WHEN country = '' THEN $15 ELSE country END, \
               website = CASE WHEN website = '' THEN $16 ELSE website END, \
               job_title = CASE WHEN job_title = '' THEN $17 ELSE job_title END, \
               quality_score = GREATEST(quality_score, $18), \
               touch_count = touch_count + $19, last_captured_at = now(), updated_at = now() \
             WHERE l.lead_id = $1 RETURNING l.touch_count, to_jsonb(l) AS snapshot), \
             lineage AS (INSERT INTO capture.merges \
               (merge_id, lead_id, merged_lead_id, kind, source_id, fields_filled, before, after, review_id) \
               SELECT $20, $1, $21, $22, $23, $24, old.snapshot, new.snapshot, $25 FROM old, new) \
             SELECT touch_count FROM new",
        )
        .bind(lead_id)
        .bind(fill_email)
        .bind(email.map(|email| email.bidx.as_slice()))
        .bind(seal("email", email.map_or("", |email| &email.address))?)
        .bind(email.map_or("none", |email| email.kind.as_str()))
        .bind(email.is_some_and(|email| email.role))
        .bind(fill_phone)
        .bind(phone.map(|phone| phone.bidx.as_slice()))
        .bind(seal("phone", phone.map_or("", |phone| &phone.e164))?)
        .bind(phone.map_or("", |phone| phone.region.as_str()))
        .bind(phone.map_or("", |phone| phone.line_type.as_str()))
        .bind(seal("first_name", &incoming.first_name)?)
        .bind(seal("last_name", &incoming.last_name)?)
        .bind(&incoming.company)
        .bind(&incoming.country)
        .bind(&incoming.website)
        .bind(&incoming.job_title)
        .bind(incoming.quality_score)
        .bind(incoming.touches)
        .bind(merge_id)
        .bind(incoming.row_id)
        .bind(incoming.kind.as_str())
        .bind(&incoming.source_id)
        .bind(&filled)
        .bind(review_id)
        .fetch_one(&mut *tx)
        .await
        .context("merge into lead")?;
        let event = LeadMerged {
            lead_id: lead_id.to_string(),
            source: incoming.source_id.clone(),
            channel: incoming.channel.clone(),
            campaign: incoming.campaign.clone(),
            fields_filled: filled,
            touch_count,
            merge_id: merge_id.to_string(),
            merged_lead_id: incoming.row_id.to_string(),
            merged_lead_was_lead: incoming.kind == MergeKind::Lead,
        };
        self.outbox
            .add(tx, event_types::LEAD_MERGED, lead_id, &event)
            .await?;
        tracing::info!(lead_id = %lead_id, %merge_id, kind = incoming.kind.as_str(), first_source = %existing.source_id, "merged into known lead");
        Ok(merge_id)
    }
    fn captured_event(&self, lead_id: Uuid, request: &CaptureRequest) -> LeadCaptured {
        let lead = &request.lead;
        let email_domain_kind = match &lead.email {
            None => EmailDomainKind::None,
            Some(email) if email.kind == EmailKind::Business => EmailDomainKind::Business,
            Some(_) => EmailDomainKind::Free,
        };
        LeadCaptured {
            lead_id: lead_id.to_string(),
            source: lead.source.clone(),
            channel: lead.channel.clone(),
            campaign: lead.campaign.clone(),
            email_domain_kind: email_domain_kind.into(),
            has_phone: lead.phone.is_some(),
            has_company: !lead.company.is_empty(),
            email_hash: lead
                .email
                .as_ref()
                .map(|email| identity_hash(&self.identity_key, "email", &email.address))
                .unwrap_or_default(),
            phone_hash: lead
                .phone
                .as_ref()
                .map(|phone| identity_hash(&self.identity_key, "phone", &phone.e164))
                .unwrap_or_default(),
            phone_region: lead
                .phone
                .as_ref()
                .and_then(|phone| phone.region.clone())
                .unwrap_or_default(),
            quality_score: lead.quality_score(),
            country: lead.effective_country().unwrap_or_default().to_owned(),
            consent_channels: request
                .consent
                .as_ref()
                .map(Consent::channel_names)
                .unwrap_or_default(),
        }
    }

    /// Records that many captures were refused at the door, in one transaction.
    pub async fn record_rejections(&self, events: &[LeadRejected]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let envelopes: Vec<_> = events
            .iter()
            .map(|event| {
                self.outbox
                    .envelope(event_types::LEAD_REJECTED, None, event)
            })
            .collect();
        let mut tx = leadflow_platform::postgres::begin(&self.pool)
            .await
            .context("begin rejection transaction")?;
        self.outbox.add_many(&mut tx, &envelopes).await?;
        self.outbox.commit(tx).await.context("commit rejections")?;
        Ok(())
    }

    /// Erases a person: the lead `lead_id` is part of and every row merged into it lose their
    /// data keys (so every sealed copy becomes unreadable), sealed columns, identities and
    /// free-text attribution; their visitors are deleted and their activities lose URL, title
    /// and visitor; their identities stay as suppression records, pending reviews of them are
    /// discarded, and `lead.erased` is emitted for the lead (and for each lead folded into it).
    /// Erasing twice is a no-op.
    pub async fn erase(
        &self,
        lead_id: Uuid,
        reason: &str,
        caller: &str,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = leadflow_platform::postgres::begin(&self.pool).await?;
        let Some((root, _)) = self.family(&mut tx, lead_id).await? else {
            return Err(StoreError::NotFound);
        };
        let (erased_at,): (Option<DateTime<Utc>>,) =
            sqlx::query_as("SELECT erased_at FROM capture.leads WHERE lead_id = $1 FOR UPDATE")
                .bind(root)
                .fetch_one(&mut *tx)
                .await?;
        if let Some(erased_at) = erased_at {
            return Ok(erased_at);
        }
        // Read again under the lock: nothing merges into a locked lead meanwhile.
        let (_, family) = self
            .family(&mut tx, root)
            .await?
            .ok_or(StoreError::NotFound)?;
        sqlx::query(
            "INSERT INTO capture.suppressions (bidx, kind, reason) \
             SELECT identity.bidx, identity.kind, 'erased' FROM capture.leads l \
               CROSS JOIN LATERAL (VALUES (l.email_digest, 'email'), (l.phone_digest, 'phone')) AS identity (bidx, kind) \
             WHERE l.lead_id = ANY($1) AND identity.bidx IS NOT NULL \
             ON CONFLICT DO NOTHING",
        )
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE capture.leads SET data_key = NULL, email_bidx = NULL, phone_bidx = NULL, email_digest = NULL, \
               phone_digest = NULL, email_sealed = NULL, phone_sealed = NULL, first_name_sealed = NULL, \
               last_name_sealed = NULL, company = '', website = '', job_title = '', erased_at = now(), updated_at = now() \
             WHERE lead_id = ANY($1)",
        )
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE capture.touches SET referrer = '', landing_page = '', gclid = '', fbclid = '', utm_term = '', \
               utm_content = '' WHERE lead_id = ANY($1)",
        )
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        // The person's browsers no longer resolve to them; their activities keep what they
        // were (kind, asset, source, time) but not which page, its title or which browser. An
        // activity being recorded for the person holds the lead (FOR KEY SHARE) until it
        // commits, so the lock taken above waited for it and it is cleared here too.
        sqlx::query("DELETE FROM capture.visitors WHERE lead_id = ANY($1)")
            .bind(&family)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE capture.activities SET visitor_id = NULL, url = '', title = '' WHERE lead_id = ANY($1)",
        )
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        // The lineage keeps who was merged when, not the sealed values.
        sqlx::query(
            "UPDATE capture.merges SET before = '{}', after = '{}' \
             WHERE lead_id = ANY($1) OR merged_lead_id = ANY($1)",
        )
        .bind(&family)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE capture.merge_reviews SET status = 'discarded', data_key = NULL, request_sealed = NULL, \
               resolved_at = now(), resolved_by = $2, note = 'the lead was erased' \
             WHERE status = 'pending' AND (lead_id = ANY($1) OR other_lead_id = ANY($1))",
        )
        .bind(&family)
        .bind(caller)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM capture.idempotency WHERE lead_id = ANY($1)")
            .bind(&family)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO capture.erasures (lead_id, reason, caller) VALUES ($1, $2, $3)")
            .bind(root)
            .bind(reason)
            .bind(caller)
            .execute(&mut *tx)
            .await?;
        // Leads folded in were leads downstream too.
        let absorbed: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT merged_lead_id FROM capture.merges \
             WHERE kind = 'lead' AND unmerged_at IS NULL AND merged_lead_id = ANY($1) ORDER BY merged_at",
        )
        .bind(&family)
        .fetch_all(&mut *tx)
        .await?;
        for erased in std::iter::once(root).chain(absorbed.into_iter().map(|(id,)| id)) {
            let event = LeadErased {
                lead_id: erased.to_string(),
            };
            self.outbox
                .add(&mut tx, event_types::LEAD_ERASED, erased, &event)
                .await?;
        }
        let (erased_at,): (DateTime<Utc>,) =
            sqlx::query_as("SELECT erased_at FROM capture.leads WHERE lead_id = $1")
                .bind(root)
                .fetch_one(&mut *tx)
                .await?;
        self.outbox.commit(tx).await?;
        Ok(erased_at)
    }

    /// Returns a lead to its source within the source's return window.
    pub async fn return_lead(
        &self,
        lead_id: Uuid,
        source: &SourcePolicy,
        reason: &str,
    ) -> Result<ReturnOutcome, StoreError> {
        let mut tx = leadflow_platform::postgres::begin(&self.pool).await?;
        let row: Option<(DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT created_at, returned_at FROM capture.leads WHERE lead_id = $1 FOR UPDATE",
        )
        .bind(lead_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((created_at, returned_at)) = row else {
            return Err(StoreError::NotFound);
        };
        if returned_at.is_some() {
            return Err(StoreError::FailedPrecondition(
                "lead was already returned".to_owned(),
            ));
        }
        let window = chrono::Duration::days(i64::from(source.settings.return_window_days));
        if source.settings.return_window_days == 0 || Utc::now() > created_at + window {
            return Err(StoreError::FailedPrecondition(
                "the source's return window has passed".to_owned(),
            ));
        }
        let (returned_at,): (DateTime<Utc>,) = sqlx::query_as(
            "UPDATE capture.leads SET returned_at = now(), return_reason = $2, updated_at = now() WHERE lead_id = $1 \
             RETURNING returned_at",
        )
        .bind(lead_id)
        .bind(reason)
        .fetch_one(&mut *tx)
        .await?;
        let outcome = ReturnOutcome {
            returned_at,
            credit_micros: source.settings.cost_per_lead_micros,
            currency: source.settings.currency.clone(),
        };
        let event = LeadReturned {
            lead_id: lead_id.to_string(),
            source: source.source_id.clone(),
            reason: reason.to_owned(),
            credit_micros: outcome.credit_micros,
            currency: outcome.currency.clone(),
        };
        self.outbox
            .add(&mut tx, event_types::LEAD_RETURNED, lead_id, &event)
            .await?;
        self.outbox.commit(tx).await?;
        Ok(outcome)
    }

    /// Returns the source a lead came through.
    pub async fn source_of(&self, lead_id: Uuid) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT source_id FROM capture.leads WHERE lead_id = $1")
                .bind(lead_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(source_id,)| source_id))
    }
}

/// The view of lead `lead_id` just stored by a capture of `request` through `source`, whose
/// transaction's `now()` is `created_at` (the touch's `captured_at` and a consent's default
/// `given_at` too), with consent record `consent_id` when it carried one: what reading it back
/// (`read.rs`) would return, without the reads.
fn new_lead_view(
    lead_id: Uuid,
    source: &SourcePolicy,
    request: &CaptureRequest,
    created_at: DateTime<Utc>,
    consent_id: Option<Uuid>,
) -> LeadView {
    let lead = &request.lead;
    let attribution = &request.attribution;
    let touch = TouchRow {
        source_id: source.source_id.clone(),
        channel: lead.channel.clone(),
        campaign: lead.campaign.clone(),
        utm_source: attribution.utm_source.clone(),
        utm_medium: attribution.utm_medium.clone(),
        utm_campaign: attribution.utm_campaign.clone(),
        utm_term: attribution.utm_term.clone(),
        utm_content: attribution.utm_content.clone(),
        gclid: attribution.gclid.clone(),
        fbclid: attribution.fbclid.clone(),
        referrer: attribution.referrer.clone(),
        landing_page: attribution.landing_page.clone(),
        captured_at: created_at,
    };
    let consents = request
        .consent
        .iter()
        .zip(consent_id)
        .map(|(consent, consent_id)| ConsentRow {
            consent_id,
            channels: consent.channel_names(),
            disclosure_text: consent.disclosure_text.clone(),
            disclosure_sha256: consent.disclosure_sha256.clone(),
            form_url: consent.form_url.clone(),
            form_version: consent.form_version.clone(),
            ip_address: consent.ip_text(),
            user_agent: consent.user_agent.clone(),
            legal_basis: consent.legal_basis.as_str_name().to_owned(),
            given_at: consent.given_at.unwrap_or(created_at),
        })
        .collect();
    LeadView {
        lead_id,
        email: lead.email_address().to_owned(),
        phone: lead.phone_e164().to_owned(),
        first_name: lead.first_name.clone(),
        last_name: lead.last_name.clone(),
        company: lead.company.clone(),
        source_id: source.source_id.clone(),
        channel: lead.channel.clone(),
        campaign: lead.campaign.clone(),
        email_kind: lead.email_kind_name().to_owned(),
        email_role: lead.email_role(),
        phone_line_type: lead.phone_line_type().to_owned(),
        country: lead.country.clone(),
        website: lead.website.clone(),
        job_title: lead.job_title.clone(),
        quality_score: lead.quality_score(),
        touch_count: 1,
        erased: false,
        created_at,
        first_touch: Some(touch.clone()),
        latest_touch: Some(touch),
        consents,
        merges: Vec::new(),
    }
}
