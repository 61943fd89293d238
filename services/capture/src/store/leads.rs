//! Leads: capture with race-safe dedupe and merge, idempotent answers, reads with decryption,
//! erasure and returns.

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
    RejectionReason,
};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::evidence::Consent;
use crate::domain::lead::{EmailKind, NewLead, identity_hash};
use crate::domain::source::{Dedupe, SourcePolicy};

/// Event types capture emits beyond the shared ones.
mod event_types {
    pub const LEAD_MERGED: &str = "lead.merged";
    pub const LEAD_REJECTED: &str = "lead.rejected";
    pub const LEAD_ERASED: &str = "lead.erased";
    pub const LEAD_RETURNED: &str = "lead.returned";
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
    /// No such lead (or it was erased, for operations that need its data).
    #[error("lead not found")]
    NotFound,
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
}

/// Whether a capture made a new lead or merged into a known one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Merged,
}

/// The result of a capture.
#[derive(Debug, Clone)]
pub struct Captured {
    pub outcome: Outcome,
    pub lead: LeadView,
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
/// What erasure reads first: blind indexes and whether it is already erased.
type EraseRow = (Option<Vec<u8>>, Option<Vec<u8>>, Option<DateTime<Utc>>);

/// A lead's row as read.
#[derive(Debug, sqlx::FromRow)]
struct LeadRow {
    data_key: Option<Vec<u8>>,
    email_sealed: Option<Vec<u8>>,
    phone_sealed: Option<Vec<u8>>,
    first_name_sealed: Option<Vec<u8>>,
    last_name_sealed: Option<Vec<u8>>,
    company: String,
    source_id: String,
    channel: String,
    campaign: String,
    email_kind: String,
    email_role: bool,
    phone_line_type: String,
    country: String,
    website: String,
    job_title: String,
    quality_score: i32,
    touch_count: i32,
    erased_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

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

    /// Returns whether any of the person's identities is suppressed.
    async fn suppressed(&self, bidxs: &[Vec<u8>]) -> Result<bool, StoreError> {
        let found: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM capture.suppressions WHERE bidx = ANY($1) LIMIT 1")
                .bind(bidxs)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
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
        let email_bidx = request
            .lead
            .email
            .as_ref()
            .map(|email| self.keyring.blind_index("email", &email.address));
        let phone_bidx = request
            .lead
            .phone
            .as_ref()
            .map(|phone| self.keyring.blind_index("phone", &phone.e164));
        let identities: Vec<Vec<u8>> = email_bidx
            .iter()
            .chain(phone_bidx.iter())
            .cloned()
            .collect();
        if self.suppressed(&identities).await? {
            // An erased person comes back only with fresh consent, which lifts the suppression.
            if request.consent.is_none() {
                return Err(StoreError::Suppressed);
            }
            sqlx::query("DELETE FROM capture.suppressions WHERE bidx = ANY($1)")
                .bind(&identities)
                .execute(&self.pool)
                .await?;
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
        attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(2))
                    .with_max_delay(Duration::from_millis(100))
                    .with_max_times(8)
                    .with_jitter(),
            )
            .when(is_retryable)
            .notify(|_, after| {
                let retries = self.retries.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(
                    retries,
                    after_ms = after.as_millis() as u64,
                    "capture retried after a conflict"
                );
            })
            .await
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
        let mut tx = self.pool.begin().await?;
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
        let known: Vec<Known> = sqlx::query_as(
            "SELECT lead_id, source_id, data_key, email_bidx, phone_bidx, first_name_sealed, last_name_sealed, \
                    company, country, website, job_title, last_captured_at \
             FROM capture.leads WHERE (email_bidx = $1 OR phone_bidx = $2) AND erased_at IS NULL \
             ORDER BY (email_bidx = $1) DESC NULLS LAST, created_at FOR UPDATE",
        )
        .bind(email_bidx)
        .bind(phone_bidx)
        .fetch_all(&mut *tx)
        .await?;
        let (outcome, lead_id, key) = match known.first() {
            None => {
                let (lead_id, key) = self
                    .insert_lead(
                        &mut tx,
                        source,
                        request,
                        NewRow::lead(email_bidx, phone_bidx),
                    )
                    .await?;
                (Outcome::Created, lead_id, key)
            }
            Some(existing) => {
                if let Dedupe::RejectWithin(window) = source.dedupe
                    && existing.last_captured_at > Utc::now() - window
                {
                    tx.rollback().await?;
                    return Err(StoreError::Duplicate(existing.lead_id));
                }
                // A phone that belongs to another lead stays there (see #4: review queue).
                let phone_free = known.len() == 1;
                let key = self
                    .merge(
                        &mut tx,
                        source,
                        request,
                        existing,
                        email_bidx,
                        phone_bidx.filter(|_| phone_free),
                    )
                    .await?;
                (Outcome::Merged, existing.lead_id, key)
            }
        };
        self.insert_touch(&mut tx, lead_id, source, request).await?;
        if let Some(consent) = &request.consent {
            self.insert_consent(&mut tx, lead_id, &key, consent).await?;
        }
        let lead = self
            .view(&mut tx, lead_id)
            .await?
            .ok_or(StoreError::NotFound)?;
        let captured = Captured { outcome, lead };
        if let Some(idempotency) = idempotency {
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
        tx.commit().await?;
        Ok(captured)
    }

    /// Inserts a capture as a row of its own under a new data key: a new lead claiming the
    /// identities in `row`, or a record merged into `row.merged_into` claiming none.
    async fn insert_lead(
        &self,
        tx: &mut PgConnection,
        source: &SourcePolicy,
        request: &CaptureRequest,
        row: NewRow<'_>,
    ) -> Result<(Uuid, DataKey), StoreError> {
        let lead = &request.lead;
        let lead_id = Uuid::now_v7();
        let owner = lead_id.as_bytes();
        let (key, wrapped) = self.keyring.new_data_key(owner).context("new data key")?;
        let seal =
            |field: &str, text: &str| key.seal_text(owner, field, text).context("seal field");
        sqlx::query(
            "INSERT INTO capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, phone_bidx, \
               email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, phone_region, \
               phone_line_type, company, country, website, job_title, quality_score, email_digest, phone_digest, \
               merged_into, merged_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, \
               $23, CASE WHEN $23::uuid IS NULL THEN NULL ELSE now() END)",
        )
        .bind(lead_id)
        .bind(&source.source_id)
        .bind(&lead.channel)
        .bind(&lead.campaign)
        .bind(wrapped)
        .bind(row.email_digest.filter(|_| row.claim_email))
        .bind(row.phone_digest.filter(|_| row.claim_phone))
        .bind(seal("email", lead.email.as_ref().map_or("", |email| &email.address))?)
        .bind(seal("phone", lead.phone.as_ref().map_or("", |phone| &phone.e164))?)
        .bind(seal("first_name", &lead.first_name)?)
        .bind(seal("last_name", &lead.last_name)?)
        .bind(lead.email.as_ref().map_or("none", |email| email.kind.as_str()))
        .bind(lead.email.as_ref().is_some_and(|email| email.role))
        .bind(lead.phone.as_ref().and_then(|phone| phone.region.as_deref()).unwrap_or_default())
        .bind(lead.phone.as_ref().and_then(|phone| phone.line_type).unwrap_or_default())
        .bind(&lead.company)
        .bind(&lead.country)
        .bind(&lead.website)
        .bind(&lead.job_title)
        .bind(lead.quality_score())
        .bind(row.email_digest)
        .bind(row.phone_digest)
        .bind(row.merged_into)
        .execute(&mut *tx)
        .await
        .context("insert lead")?;
        if row.merged_into.is_none() {
            let event = self.captured_event(lead_id, request);
            self.outbox
                .add(tx, types::LEAD_CAPTURED, lead_id, &event)
                .await?;
        }
        Ok((lead_id, key))
    }

    /// Merges a re-capture into a known lead: first touch kept, empty fields filled.
    async fn merge(
        &self,
        tx: &mut PgConnection,
        source: &SourcePolicy,
        request: &CaptureRequest,
        existing: &Known,
        email_bidx: Option<&[u8]>,
        phone_bidx: Option<&[u8]>,
    ) -> Result<DataKey, StoreError> {
        let lead = &request.lead;
        let lead_id = existing.lead_id;
        let owner = lead_id.as_bytes();
        let wrapped = existing
            .data_key
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("active lead without a data key"))?;
        let key = self
            .keyring
            .unwrap_data_key(owner, wrapped)
            .context("unwrap data key")?;
        let mut filled = Vec::new();
        let fill_email = existing.email_bidx.is_none() && email_bidx.is_some();
        let fill_phone = existing.phone_bidx.is_none() && phone_bidx.is_some();
        let fill_first = existing.first_name_sealed.is_none() && !lead.first_name.is_empty();
        let fill_last = existing.last_name_sealed.is_none() && !lead.last_name.is_empty();
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
            (&existing.company, &lead.company, "company"),
            (&existing.country, &lead.country, "country"),
            (&existing.website, &lead.website, "website"),
            (&existing.job_title, &lead.job_title, "job_title"),
        ] {
            if existing_value.is_empty() && !new_value.is_empty() {
                filled.push(name.to_owned());
            }
        }
        let seal =
            |field: &str, text: &str| key.seal_text(owner, field, text).context("seal field");
        let (touch_count,): (i32,) = sqlx::query_as(
            "UPDATE capture.leads SET \
               email_bidx = CASE WHEN $2 THEN $3 ELSE email_bidx END, \
               email_sealed = CASE WHEN $2 THEN $4 ELSE email_sealed END, \
               email_kind = CASE WHEN $2 THEN $5 ELSE email_kind END, \
               email_role = CASE WHEN $2 THEN $6 ELSE email_role END, \
               phone_bidx = CASE WHEN $7 THEN $8 ELSE phone_bidx END, \
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
               touch_count = touch_count + 1, last_captured_at = now(), updated_at = now() \
             WHERE lead_id = $1 RETURNING touch_count",
        )
        .bind(lead_id)
        .bind(fill_email)
        .bind(email_bidx)
        .bind(seal(
            "email",
            lead.email.as_ref().map_or("", |email| &email.address),
        )?)
        .bind(
            lead.email
                .as_ref()
                .map_or("none", |email| email.kind.as_str()),
        )
        .bind(lead.email.as_ref().is_some_and(|email| email.role))
        .bind(fill_phone)
        .bind(phone_bidx)
        .bind(seal(
            "phone",
            lead.phone.as_ref().map_or("", |phone| &phone.e164),
        )?)
        .bind(
            lead.phone
                .as_ref()
                .and_then(|phone| phone.region.as_deref())
                .unwrap_or_default(),
        )
        .bind(
            lead.phone
                .as_ref()
                .and_then(|phone| phone.line_type)
                .unwrap_or_default(),
        )
        .bind(seal("first_name", &lead.first_name)?)
        .bind(seal("last_name", &lead.last_name)?)
        .bind(&lead.company)
        .bind(&lead.country)
        .bind(&lead.website)
        .bind(&lead.job_title)
        .bind(lead.quality_score())
        .fetch_one(&mut *tx)
        .await
        .context("merge into lead")?;
        let event = LeadMerged {
            lead_id: lead_id.to_string(),
            source: source.source_id.clone(),
            channel: lead.channel.clone(),
            campaign: lead.campaign.clone(),
            fields_filled: filled,
            touch_count,
        };
        self.outbox
            .add(tx, event_types::LEAD_MERGED, lead_id, &event)
            .await?;
        tracing::info!(lead_id = %lead_id, first_source = %existing.source_id, "capture merged into known lead");
        Ok(key)
    }

    async fn insert_touch(
        &self,
        tx: &mut PgConnection,
        lead_id: Uuid,
        source: &SourcePolicy,
        request: &CaptureRequest,
    ) -> Result<(), StoreError> {
        let attribution = &request.attribution;
        sqlx::query(
            "INSERT INTO capture.touches (touch_id, lead_id, source_id, channel, campaign, utm_source, utm_medium, \
               utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(Uuid::now_v7())
        .bind(lead_id)
        .bind(&source.source_id)
        .bind(&request.lead.channel)
        .bind(&request.lead.campaign)
        .bind(&attribution.utm_source)
        .bind(&attribution.utm_medium)
        .bind(&attribution.utm_campaign)
        .bind(&attribution.utm_term)
        .bind(&attribution.utm_content)
        .bind(&attribution.gclid)
        .bind(&attribution.fbclid)
        .bind(&attribution.referrer)
        .bind(&attribution.landing_page)
        .execute(&mut *tx)
        .await
        .context("insert touch")?;
        Ok(())
    }

    async fn insert_consent(
        &self,
        tx: &mut PgConnection,
        lead_id: Uuid,
        key: &DataKey,
        consent: &Consent,
    ) -> Result<(), StoreError> {
        let consent_id = Uuid::now_v7();
        let owner = consent_id.as_bytes();
        let ip = consent
            .ip_address
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO capture.consents (consent_id, lead_id, channels, disclosure_text, disclosure_sha256, \
               form_url, form_version, ip_sealed, user_agent_sealed, legal_basis, given_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, COALESCE($11, now()))",
        )
        .bind(consent_id)
        .bind(lead_id)
        .bind(consent.channel_names())
        .bind(&consent.disclosure_text)
        .bind(&consent.disclosure_sha256)
        .bind(&consent.form_url)
        .bind(&consent.form_version)
        .bind(key.seal_text(owner, "ip_address", &ip).context("seal ip")?)
        .bind(key.seal_text(owner, "user_agent", &consent.user_agent).context("seal user agent")?)
        .bind(consent.legal_basis.as_str_name())
        .bind(consent.given_at)
        .execute(&mut *tx)
        .await
        .context("insert consent")?;
        Ok(())
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

    /// Records that a capture was refused at the door (no personal data, no lead).
    pub async fn record_rejection(
        &self,
        source: &str,
        channel: &str,
        campaign: &str,
        reasons: Vec<RejectionReason>,
    ) -> anyhow::Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("begin rejection transaction")?;
        let event = LeadRejected {
            source: source.to_owned(),
            channel: channel.to_owned(),
            campaign: campaign.to_owned(),
            reasons,
        };
        self.outbox
            .add_without_lead(&mut tx, event_types::LEAD_REJECTED, &event)
            .await?;
        tx.commit().await.context("commit rejection")?;
        Ok(())
    }

    /// Returns a lead with its personal data opened (empty once erased).
    pub async fn get(&self, lead_id: Uuid) -> Result<Option<LeadView>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        self.view(&mut connection, lead_id).await
    }

    async fn view(
        &self,
        connection: &mut PgConnection,
        lead_id: Uuid,
    ) -> Result<Option<LeadView>, StoreError> {
        let row: Option<LeadRow> = sqlx::query_as(
            "SELECT data_key, email_sealed, phone_sealed, first_name_sealed, last_name_sealed, company, source_id, \
                    channel, campaign, email_kind, email_role, phone_line_type, country, website, job_title, \
                    quality_score, touch_count, erased_at, created_at \
             FROM capture.leads WHERE lead_id = $1",
        )
        .bind(lead_id)
        .fetch_optional(&mut *connection)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let data_key = row.data_key.clone();
        let owner = lead_id.as_bytes();
        let key = match &data_key {
            Some(wrapped) => Some(
                self.keyring
                    .unwrap_data_key(owner, wrapped)
                    .context("unwrap data key")?,
            ),
            None => None,
        };
        let open = |field: &str, sealed: Option<Vec<u8>>| -> Result<String, StoreError> {
            match &key {
                Some(key) => Ok(key
                    .open_text(owner, field, sealed.as_deref())
                    .context("open field")?),
                None => Ok(String::new()),
            }
        };
        let touches: Vec<TouchRow> = sqlx::query_as(
            "SELECT source_id, channel, campaign, utm_source, utm_medium, utm_campaign, utm_term, utm_content, \
                    gclid, fbclid, referrer, landing_page, captured_at \
             FROM ((SELECT * FROM capture.touches WHERE lead_id = $1 ORDER BY captured_at, touch_id LIMIT 1) \
                   UNION ALL \
                   (SELECT * FROM capture.touches WHERE lead_id = $1 ORDER BY captured_at DESC, touch_id DESC LIMIT 1)) \
                  AS first_and_latest ORDER BY captured_at, touch_id",
        )
        .bind(lead_id)
        .fetch_all(&mut *connection)
        .await?;
        type ConsentDbRow = (
            Uuid,
            Vec<String>,
            String,
            String,
            String,
            String,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            String,
            DateTime<Utc>,
        );
        let consent_rows: Vec<ConsentDbRow> = sqlx::query_as(
            "SELECT consent_id, channels, disclosure_text, disclosure_sha256, form_url, form_version, ip_sealed, \
                    user_agent_sealed, legal_basis, given_at \
             FROM capture.consents WHERE lead_id = $1 ORDER BY recorded_at, consent_id",
        )
        .bind(lead_id)
        .fetch_all(&mut *connection)
        .await?;
        let mut consents = Vec::with_capacity(consent_rows.len());
        for (
            consent_id,
            channels,
            disclosure_text,
            disclosure_sha256,
            form_url,
            form_version,
            ip,
            user_agent,
            legal_basis,
            given_at,
        ) in consent_rows
        {
            let consent_owner = consent_id.as_bytes();
            let (ip_address, user_agent) = match &key {
                Some(key) => (
                    key.open_text(consent_owner, "ip_address", ip.as_deref())
                        .context("open ip")?,
                    key.open_text(consent_owner, "user_agent", user_agent.as_deref())
                        .context("open user agent")?,
                ),
                None => (String::new(), String::new()),
            };
            consents.push(ConsentRow {
                consent_id,
                channels,
                disclosure_text,
                disclosure_sha256,
                form_url,
                form_version,
                ip_address,
                user_agent,
                legal_basis,
                given_at,
            });
        }
        Ok(Some(LeadView {
            lead_id,
            email: open("email", row.email_sealed)?,
            phone: open("phone", row.phone_sealed)?,
            first_name: open("first_name", row.first_name_sealed)?,
            last_name: open("last_name", row.last_name_sealed)?,
            company: row.company,
            source_id: row.source_id,
            channel: row.channel,
            campaign: row.campaign,
            email_kind: row.email_kind,
            email_role: row.email_role,
            phone_line_type: row.phone_line_type,
            country: row.country,
            website: row.website,
            job_title: row.job_title,
            quality_score: row.quality_score,
            touch_count: row.touch_count,
            erased: row.erased_at.is_some(),
            created_at: row.created_at,
            first_touch: touches.first().cloned(),
            latest_touch: touches.last().cloned(),
            consents,
        }))
    }

    /// Erases a lead's personal data: its data key (so every sealed copy becomes unreadable),
    /// sealed columns, blind indexes and free-text attribution; keeps a suppression record of
    /// its blind indexes and emits `lead.erased`. Erasing twice is a no-op.
    pub async fn erase(
        &self,
        lead_id: Uuid,
        reason: &str,
        caller: &str,
    ) -> Result<DateTime<Utc>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<EraseRow> = sqlx::query_as(
            "SELECT email_bidx, phone_bidx, erased_at FROM capture.leads WHERE lead_id = $1 FOR UPDATE",
        )
        .bind(lead_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((email_bidx, phone_bidx, erased_at)) = row else {
            return Err(StoreError::NotFound);
        };
        if let Some(erased_at) = erased_at {
            return Ok(erased_at);
        }
        for (bidx, kind) in [(email_bidx, "email"), (phone_bidx, "phone")] {
            if let Some(bidx) = bidx {
                sqlx::query("INSERT INTO capture.suppressions (bidx, kind, reason) VALUES ($1, $2, 'erased') ON CONFLICT DO NOTHING")
                    .bind(bidx)
                    .bind(kind)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let (erased_at,): (DateTime<Utc>,) = sqlx::query_as(
            "UPDATE capture.leads SET data_key = NULL, email_bidx = NULL, phone_bidx = NULL, email_sealed = NULL, \
               phone_sealed = NULL, first_name_sealed = NULL, last_name_sealed = NULL, company = '', website = '', \
               job_title = '', erased_at = now(), updated_at = now() \
             WHERE lead_id = $1 RETURNING erased_at",
        )
        .bind(lead_id)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE capture.touches SET referrer = '', landing_page = '', gclid = '', fbclid = '', utm_term = '', \
               utm_content = '' WHERE lead_id = $1",
        )
        .bind(lead_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM capture.idempotency WHERE lead_id = $1")
            .bind(lead_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO capture.erasures (lead_id, reason, caller) VALUES ($1, $2, $3)")
            .bind(lead_id)
            .bind(reason)
            .bind(caller)
            .execute(&mut *tx)
            .await?;
        let event = LeadErased {
            lead_id: lead_id.to_string(),
        };
        self.outbox
            .add(&mut tx, event_types::LEAD_ERASED, lead_id, &event)
            .await?;
        tx.commit().await?;
        Ok(erased_at)
    }

    /// Returns a lead to its source within the source's return window.
    pub async fn return_lead(
        &self,
        lead_id: Uuid,
        source: &SourcePolicy,
        reason: &str,
    ) -> Result<ReturnOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        tx.commit().await?;
        Ok(outcome)
    }

    /// Returns a page of leads, newest first (ids are UUIDv7, so id order is time order),
    /// after `after` when given, with the id to continue from when there may be more.
    pub async fn list(
        &self,
        source: Option<&str>,
        page_size: i32,
        after: Option<Uuid>,
    ) -> Result<(Vec<LeadView>, Option<Uuid>), StoreError> {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT lead_id FROM capture.leads WHERE ($1::text IS NULL OR source_id = $1) \
               AND ($2::uuid IS NULL OR lead_id < $2) ORDER BY lead_id DESC LIMIT $3",
        )
        .bind(source)
        .bind(after)
        .bind(i64::from(page_size))
        .fetch_all(&self.pool)
        .await?;
        let mut connection = self.pool.acquire().await?;
        let mut leads = Vec::with_capacity(ids.len());
        for (lead_id,) in &ids {
            if let Some(view) = self.view(&mut connection, *lead_id).await? {
                leads.push(view);
            }
        }
        let next = (ids.len() == usize::try_from(page_size).unwrap_or_default())
            .then(|| ids.last().map(|(lead_id,)| *lead_id))
            .flatten();
        Ok((leads, next))
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
