//! The merge review queue, merge lineage and unmerge.
//!
//! A capture that would mix two leads (its email is one lead's, its phone another's) or two
//! consent states is held, sealed under its own data key, until someone decides. A lead can
//! fold in a whole other lead only through such a decision; every merge keeps the lead's
//! columns before and after it, so `unmerge` puts back exactly what the merge changed.

use anyhow::Context;
use chrono::{DateTime, Utc};
use leadflow_proto::events::v1::{EmailDomainKind, LeadCaptured, LeadUnmerged};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    CaptureRequest, Decision, Incoming, IncomingEmail, IncomingPhone, Known, LeadStore, LeadView,
    MergeKind, StoreError, event_types,
};
use crate::domain::lead::identity_hash;
use crate::domain::source::SourcePolicy;

/// Why a capture was held instead of merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewReason {
    /// Its email belongs to one lead and its phone to another.
    IdentityConflict,
    /// Its consent covers other channels than the lead's consent records.
    ConsentMismatch,
}

impl ReviewReason {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewReason::IdentityConflict => "identity_conflict",
            ReviewReason::ConsentMismatch => "consent_mismatch",
        }
    }
}

/// A reviewer's decision on a held capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Merge it, first folding in the other lead it matched.
    Merge,
    /// Make it a lead of its own.
    KeepSeparate,
    /// Drop it.
    Discard,
}

impl Resolution {
    /// The review status it leads to.
    pub fn status(self) -> &'static str {
        match self {
            Resolution::Merge => "merged",
            Resolution::KeepSeparate => "kept_separate",
            Resolution::Discard => "discarded",
        }
    }
}

/// Why a capture is to be held.
#[derive(Debug, Clone)]
pub(super) struct Hold {
    reason: ReviewReason,
    other_lead_id: Option<Uuid>,
    lead_channels: Vec<String>,
    capture_channels: Vec<String>,
}

/// A held capture; its request opened while it is pending.
#[derive(Debug, Clone)]
pub struct MergeReview {
    pub review_id: Uuid,
    pub reason: String,
    pub status: String,
    pub lead_id: Uuid,
    pub other_lead_id: Option<Uuid>,
    pub source_id: String,
    pub caller: String,
    /// The encoded `CaptureLeadRequest`; `None` once resolved.
    pub request: Option<Vec<u8>>,
    pub lead_consent_channels: Vec<String>,
    pub capture_consent_channels: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub note: String,
    pub result_lead_id: Option<Uuid>,
    pub merge_id: Option<Uuid>,
}

/// A review as stored.
#[derive(Debug, sqlx::FromRow)]
struct ReviewRow {
    review_id: Uuid,
    reason: String,
    status: String,
    lead_id: Uuid,
    other_lead_id: Option<Uuid>,
    source_id: String,
    caller: String,
    data_key: Option<Vec<u8>>,
    request_sealed: Option<Vec<u8>>,
    lead_consent_channels: Vec<String>,
    capture_consent_channels: Vec<String>,
    created_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    resolved_by: Option<String>,
    note: String,
    result_lead_id: Option<Uuid>,
    merge_id: Option<Uuid>,
}

/// The columns of `ReviewRow`.
macro_rules! review_columns {
    () => {
        "review_id, reason, status, lead_id, other_lead_id, source_id, caller, data_key, request_sealed, \
         lead_consent_channels, capture_consent_channels, created_at, resolved_at, resolved_by, note, \
         result_lead_id, merge_id"
    };
}

/// A decided review and the lead its capture now belongs to.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub review: MergeReview,
    pub lead: Option<LeadView>,
}

/// A row opened for folding or describing.
#[derive(Debug, sqlx::FromRow)]
struct OpenRow {
    data_key: Option<Vec<u8>>,
    source_id: String,
    channel: String,
    campaign: String,
    email_sealed: Option<Vec<u8>>,
    phone_sealed: Option<Vec<u8>>,
    first_name_sealed: Option<Vec<u8>>,
    last_name_sealed: Option<Vec<u8>>,
    email_kind: String,
    email_role: bool,
    phone_region: String,
    phone_line_type: String,
    company: String,
    country: String,
    website: String,
    job_title: String,
    quality_score: i32,
    touch_count: i32,
    email_bidx: Option<Vec<u8>>,
    phone_bidx: Option<Vec<u8>>,
    email_digest: Option<Vec<u8>>,
    phone_digest: Option<Vec<u8>>,
}

/// The columns of a known lead (see `Known`).
macro_rules! known_columns {
    () => {
        "lead_id, source_id, data_key, email_bidx, phone_bidx, first_name_sealed, last_name_sealed, company, \
         country, website, job_title, last_captured_at"
    };
}

impl LeadStore {
    /// Returns why a capture matching `known` (the email's lead first) must wait for a
    /// review, if it must: it matched two leads, or it carries consent for other channels
    /// than the lead's consent records cover.
    pub(super) async fn needs_review(
        &self,
        tx: &mut PgConnection,
        known: &[Known],
        request: &CaptureRequest,
    ) -> Result<Option<Hold>, StoreError> {
        let Some(existing) = known.first() else {
            return Ok(None);
        };
        let other_lead_id = known.get(1).map(|lead| lead.lead_id);
        let mut capture_channels = request
            .consent
            .as_ref()
            .map(|consent| consent.channel_names())
            .unwrap_or_default();
        capture_channels.sort();
        if other_lead_id.is_none() && capture_channels.is_empty() {
            return Ok(None);
        }
        let lead_channels = self.consent_channels(tx, existing.lead_id).await?;
        let reason = if other_lead_id.is_some() {
            ReviewReason::IdentityConflict
        } else if !lead_channels.is_empty() && lead_channels != capture_channels {
            ReviewReason::ConsentMismatch
        } else {
            return Ok(None);
        };
        Ok(Some(Hold {
            reason,
            other_lead_id,
            lead_channels,
            capture_channels,
        }))
    }

    /// Channels covered by the consent records of a lead's family, sorted.
    async fn consent_channels(
        &self,
        tx: &mut PgConnection,
        lead_id: Uuid,
    ) -> Result<Vec<String>, StoreError> {
        let (channels,): (Vec<String>,) = sqlx::query_as(
            "WITH RECURSIVE family AS ( \
               SELECT $1::uuid AS lead_id \
               UNION ALL \
               SELECT l.lead_id FROM capture.leads l JOIN family f ON l.merged_into = f.lead_id) \
             SELECT COALESCE(array_agg(DISTINCT channel ORDER BY channel), '{}') \
             FROM capture.consents c, unnest(c.channels) AS channel \
             WHERE c.lead_id IN (SELECT lead_id FROM family)",
        )
        .bind(lead_id)
        .fetch_one(&mut *tx)
        .await?;
        Ok(channels)
    }

    /// Holds a capture for review, sealed under a data key of its own.
    pub(super) async fn hold(
        &self,
        tx: &mut PgConnection,
        source: &SourcePolicy,
        request: &CaptureRequest,
        existing: &Known,
        hold: Hold,
    ) -> Result<Uuid, StoreError> {
        let review_id = Uuid::now_v7();
        let owner = review_id.as_bytes();
        let (key, wrapped) = self.keyring.new_data_key(owner).context("new data key")?;
        let sealed = key
            .seal(owner, "request", &request.raw)
            .context("seal held request")?;
        sqlx::query(
            "INSERT INTO capture.merge_reviews (review_id, reason, lead_id, other_lead_id, source_id, caller, data_key, \
               request_sealed, lead_consent_channels, capture_consent_channels) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(review_id)
        .bind(hold.reason.as_str())
        .bind(existing.lead_id)
        .bind(hold.other_lead_id)
        .bind(&source.source_id)
        .bind(&request.caller)
        .bind(wrapped)
        .bind(sealed)
        .bind(&hold.lead_channels)
        .bind(&hold.capture_channels)
        .execute(&mut *tx)
        .await
        .context("hold capture for review")?;
        tracing::info!(%review_id, lead_id = %existing.lead_id, reason = hold.reason.as_str(), "capture held for merge review");
        Ok(review_id)
    }

    fn open_review(&self, row: ReviewRow) -> Result<MergeReview, StoreError> {
        let owner = row.review_id.as_bytes();
        let request = match (&row.data_key, &row.request_sealed) {
            (Some(wrapped), Some(sealed)) => {
                let key = self
                    .keyring
                    .unwrap_data_key(owner, wrapped)
                    .context("unwrap review data key")?;
                Some(
                    key.open(owner, "request", sealed)
                        .context("open held request")?,
                )
            }
            _ => None,
        };
        Ok(MergeReview {
            review_id: row.review_id,
            reason: row.reason,
            status: row.status,
            lead_id: row.lead_id,
            other_lead_id: row.other_lead_id,
            source_id: row.source_id,
            caller: row.caller,
            request,
            lead_consent_channels: row.lead_consent_channels,
            capture_consent_channels: row.capture_consent_channels,
            created_at: row.created_at,
            resolved_at: row.resolved_at,
            resolved_by: row.resolved_by,
            note: row.note,
            result_lead_id: row.result_lead_id,
            merge_id: row.merge_id,
        })
    }

    /// Returns a review with its held request opened (while pending).
    pub async fn review(&self, review_id: Uuid) -> Result<Option<MergeReview>, StoreError> {
        let row: Option<ReviewRow> = sqlx::query_as(concat!(
            "SELECT ",
            review_columns!(),
            " FROM capture.merge_reviews WHERE review_id = $1"
        ))
        .bind(review_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| self.open_review(row)).transpose()
    }

    /// Returns a page of reviews in `status`, oldest first, after `after` when given, with
    /// the id to continue from when there may be more.
    pub async fn list_reviews(
        &self,
        status: &str,
        page_size: i32,
        after: Option<Uuid>,
    ) -> Result<(Vec<MergeReview>, Option<Uuid>), StoreError> {
        let rows: Vec<ReviewRow> = sqlx::query_as(concat!(
            "SELECT ",
            review_columns!(),
            " FROM capture.merge_reviews \
             WHERE status = $1 AND ($2::uuid IS NULL OR review_id > $2) ORDER BY review_id LIMIT $3"
        ))
        .bind(status)
        .bind(after)
        .bind(i64::from(page_size))
        .fetch_all(&self.pool)
        .await?;
        let full = rows.len() == usize::try_from(page_size).unwrap_or_default();
        let reviews = rows
            .into_iter()
            .map(|row| self.open_review(row))
            .collect::<Result<Vec<_>, _>>()?;
        let next = full
            .then(|| reviews.last().map(|review| review.review_id))
            .flatten();
        Ok((reviews, next))
    }

    /// Decides a held capture. `held` is the capture parsed again against its source (not
    /// needed to discard). Deciding a decided review the same way answers as the first time.
    pub async fn resolve(
        &self,
        review_id: Uuid,
        resolution: Resolution,
        caller: &str,
        note: &str,
        held: Option<(&SourcePolicy, &CaptureRequest)>,
    ) -> Result<Resolved, StoreError> {
        let attempt = || async {
            self.resolve_once(review_id, resolution, caller, note, held)
                .await
        };
        self.retry_conflicts("review resolution", attempt).await?;
        let review = self
            .review(review_id)
            .await?
            .ok_or(StoreError::Missing("merge review"))?;
        let lead = match review.result_lead_id {
            Some(lead_id) => self.get(lead_id).await?,
            None => None,
        };
        Ok(Resolved { review, lead })
    }

    async fn resolve_once(
        &self,
        review_id: Uuid,
        resolution: Resolution,
        caller: &str,
        note: &str,
        held: Option<(&SourcePolicy, &CaptureRequest)>,
    ) -> Result<(), StoreError> {
        let mut tx = leadflow_platform::postgres::begin(&self.pool).await?;
        let row: Option<(String, Uuid, Option<Uuid>)> = sqlx::query_as(
            "SELECT status, lead_id, other_lead_id FROM capture.merge_reviews WHERE review_id = $1 FOR UPDATE",
        )
        .bind(review_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((status, lead_id, other_lead_id)) = row else {
            return Err(StoreError::Missing("merge review"));
        };
        if status != "pending" {
            tx.rollback().await?;
            if status == resolution.status() {
                return Ok(());
            }
            return Err(StoreError::FailedPrecondition(format!(
                "the review was already resolved: {status}"
            )));
        }
        let (result_lead_id, merge_id) = match resolution {
            Resolution::Discard => (None, None),
            Resolution::Merge | Resolution::KeepSeparate => {
                let (source, request) =
                    held.ok_or_else(|| anyhow::anyhow!("the held capture was not given"))?;
                let decision = if resolution == Resolution::Merge {
                    if let Some(other_lead_id) = other_lead_id {
                        self.absorb(&mut tx, lead_id, other_lead_id, review_id)
                            .await?;
                    }
                    Decision::Merge { review_id }
                } else {
                    Decision::KeepSeparate
                };
                let (email_bidx, phone_bidx) = self.identities(request);
                let (captured, _) = self
                    .capture_in(
                        &mut tx,
                        source,
                        request,
                        email_bidx.as_deref(),
                        phone_bidx.as_deref(),
                        decision,
                    )
                    .await?;
                (Some(captured.lead.lead_id), captured.merge_id)
            }
        };
        sqlx::query(
            "UPDATE capture.merge_reviews SET status = $2, resolved_at = now(), resolved_by = $3, note = $4, \
               result_lead_id = $5, merge_id = $6, data_key = NULL, request_sealed = NULL \
             WHERE review_id = $1",
        )
        .bind(review_id)
        .bind(resolution.status())
        .bind(caller)
        .bind(note)
        .bind(result_lead_id)
        .bind(merge_id)
        .execute(&mut *tx)
        .await?;
        self.outbox.commit(tx).await?;
        tracing::info!(%review_id, status = resolution.status(), key_id = caller, "merge review resolved");
        Ok(())
    }

    /// Folds lead `other` (or the lead it is now part of) into lead `target` (likewise):
    /// `other` gives up its identities, which `target` takes where it has none, and becomes
    /// part of `target` with its touches and consents.
    async fn absorb(
        &self,
        tx: &mut PgConnection,
        target: Uuid,
        other: Uuid,
        review_id: Uuid,
    ) -> Result<(), StoreError> {
        let (Some((target, _)), Some((other, _))) = (
            self.family(tx, target).await?,
            self.family(tx, other).await?,
        ) else {
            return Err(StoreError::NotFound);
        };
        if target == other {
            return Ok(());
        }
        let locked: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT lead_id FROM capture.leads WHERE lead_id = ANY($1) AND erased_at IS NULL \
             ORDER BY lead_id FOR UPDATE",
        )
        .bind([target, other])
        .fetch_all(&mut *tx)
        .await?;
        if locked.len() != 2 {
            return Err(StoreError::FailedPrecondition(
                "a lead of this review was erased".to_owned(),
            ));
        }
        let known: Known = sqlx::query_as(concat!(
            "SELECT ",
            known_columns!(),
            " FROM capture.leads WHERE lead_id = $1"
        ))
        .bind(target)
        .fetch_one(&mut *tx)
        .await?;
        let incoming = self.open_row(tx, other, MergeKind::Lead).await?;
        sqlx::query(
            "UPDATE capture.leads SET email_bidx = NULL, phone_bidx = NULL, merged_into = $2, merged_at = now(), \
               updated_at = now() WHERE lead_id = $1",
        )
        .bind(other)
        .bind(target)
        .execute(&mut *tx)
        .await?;
        let key = self
            .open_key(target, known.data_key.as_deref())?
            .ok_or_else(|| anyhow::anyhow!("active lead without a data key"))?;
        self.fold(tx, &known, &key, &incoming, Some(review_id))
            .await?;
        Ok(())
    }

    /// Opens row `lead_id` as something to fold into a lead (`MergeKind::Lead`: only the
    /// identities it claims) or to describe (`MergeKind::Capture`: every identity it has).
    async fn open_row(
        &self,
        tx: &mut PgConnection,
        lead_id: Uuid,
        kind: MergeKind,
    ) -> Result<Incoming, StoreError> {
        let row: OpenRow = sqlx::query_as(
            "SELECT data_key, source_id, channel, campaign, email_sealed, phone_sealed, first_name_sealed, \
                    last_name_sealed, email_kind, email_role, phone_region, phone_line_type, company, country, \
                    website, job_title, quality_score, touch_count, email_bidx, phone_bidx, email_digest, phone_digest \
             FROM capture.leads WHERE lead_id = $1",
        )
        .bind(lead_id)
        .fetch_one(&mut *tx)
        .await?;
        let owner = lead_id.as_bytes();
        let key = self
            .open_key(lead_id, row.data_key.as_deref())?
            .ok_or_else(|| anyhow::anyhow!("row without a data key"))?;
        let open = |field: &str, sealed: &Option<Vec<u8>>| -> Result<String, StoreError> {
            Ok(key
                .open_text(owner, field, sealed.as_deref())
                .context("open field")?)
        };
        let (email_id, phone_id) = match kind {
            MergeKind::Lead => (row.email_bidx, row.phone_bidx),
            MergeKind::Capture => (row.email_digest, row.phone_digest),
        };
        let email = match email_id {
            Some(bidx) => Some(IncomingEmail {
                address: open("email", &row.email_sealed)?,
                kind: row.email_kind,
                role: row.email_role,
                bidx,
            }),
            None => None,
        };
        let phone = match phone_id {
            Some(bidx) => Some(IncomingPhone {
                e164: open("phone", &row.phone_sealed)?,
                region: row.phone_region,
                line_type: row.phone_line_type,
                bidx,
            }),
            None => None,
        };
        Ok(Incoming {
            row_id: lead_id,
            kind,
            touches: row.touch_count,
            source_id: row.source_id,
            channel: row.channel,
            campaign: row.campaign,
            email,
            phone,
            first_name: open("first_name", &row.first_name_sealed)?,
            last_name: open("last_name", &row.last_name_sealed)?,
            company: row.company,
            country: row.country,
            website: row.website,
            job_title: row.job_title,
            quality_score: row.quality_score,
        })
    }

    /// Undoes a merge: the lead gets back what the merge changed (unless changed since) and
    /// the merged row becomes a lead again, claiming the identities nobody holds. Undoing an
    /// undone merge answers as the first time. Returns the lead and the restored row.
    pub async fn unmerge(
        &self,
        merge_id: Uuid,
        caller: &str,
    ) -> Result<(LeadView, LeadView), StoreError> {
        let attempt = || async { self.unmerge_once(merge_id, caller).await };
        let (lead_id, restored_id) = self.retry_conflicts("unmerge", attempt).await?;
        let lead = self.get(lead_id).await?.ok_or(StoreError::NotFound)?;
        let restored = self.get(restored_id).await?.ok_or(StoreError::NotFound)?;
        Ok((lead, restored))
    }

    async fn unmerge_once(&self, merge_id: Uuid, caller: &str) -> Result<(Uuid, Uuid), StoreError> {
        let mut tx = leadflow_platform::postgres::begin(&self.pool).await?;
        let row: Option<(Uuid, Uuid, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT lead_id, merged_lead_id, unmerged_at FROM capture.merges WHERE merge_id = $1 FOR UPDATE",
        )
        .bind(merge_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((lead_id, merged_lead_id, unmerged_at)) = row else {
            return Err(StoreError::Missing("merge"));
        };
        if unmerged_at.is_some() {
            tx.rollback().await?;
            return Ok((lead_id, merged_lead_id));
        }
        let locked: Vec<(Uuid, Option<DateTime<Utc>>, Option<Uuid>)> = sqlx::query_as(
            "SELECT lead_id, erased_at, merged_into FROM capture.leads WHERE lead_id = ANY($1) \
             ORDER BY lead_id FOR UPDATE",
        )
        .bind([lead_id, merged_lead_id])
        .fetch_all(&mut *tx)
        .await?;
        if locked.iter().any(|(_, erased_at, _)| erased_at.is_some()) {
            return Err(StoreError::FailedPrecondition(
                "the lead was erased; its merges can no longer be undone".to_owned(),
            ));
        }
        if !locked
            .iter()
            .any(|(id, _, into)| *id == merged_lead_id && *into == Some(lead_id))
        {
            return Err(anyhow::anyhow!(
                "merge {merge_id}: the merged row is not part of the lead"
            )
            .into());
        }
        // Each value the merge set goes back, unless something changed it since.
        sqlx::query(
            "UPDATE capture.leads l SET \
               email_bidx = CASE WHEN l.email_sealed IS NOT DISTINCT FROM a.email_sealed THEN b.email_bidx ELSE l.email_bidx END, \
               email_digest = CASE WHEN l.email_sealed IS NOT DISTINCT FROM a.email_sealed THEN b.email_digest ELSE l.email_digest END, \
               email_sealed = CASE WHEN l.email_sealed IS NOT DISTINCT FROM a.email_sealed THEN b.email_sealed ELSE l.email_sealed END, \
               email_kind = CASE WHEN l.email_sealed IS NOT DISTINCT FROM a.email_sealed THEN b.email_kind ELSE l.email_kind END, \
               email_role = CASE WHEN l.email_sealed IS NOT DISTINCT FROM a.email_sealed THEN b.email_role ELSE l.email_role END, \
               phone_bidx = CASE WHEN l.phone_sealed IS NOT DISTINCT FROM a.phone_sealed THEN b.phone_bidx ELSE l.phone_bidx END, \
               phone_digest = CASE WHEN l.phone_sealed IS NOT DISTINCT FROM a.phone_sealed THEN b.phone_digest ELSE l.phone_digest END, \
               phone_sealed = CASE WHEN l.phone_sealed IS NOT DISTINCT FROM a.phone_sealed THEN b.phone_sealed ELSE l.phone_sealed END, \
               phone_region = CASE WHEN l.phone_sealed IS NOT DISTINCT FROM a.phone_sealed THEN b.phone_region ELSE l.phone_region END, \
               phone_line_type = CASE WHEN l.phone_sealed IS NOT DISTINCT FROM a.phone_sealed THEN b.phone_line_type ELSE l.phone_line_type END, \
               first_name_sealed = CASE WHEN l.first_name_sealed IS NOT DISTINCT FROM a.first_name_sealed THEN b.first_name_sealed ELSE l.first_name_sealed END, \
               last_name_sealed = CASE WHEN l.last_name_sealed IS NOT DISTINCT FROM a.last_name_sealed THEN b.last_name_sealed ELSE l.last_name_sealed END, \
               company = CASE WHEN l.company = a.company THEN b.company ELSE l.company END, \
               country = CASE WHEN l.country = a.country THEN b.country ELSE l.country END, \
               website = CASE WHEN l.website = a.website THEN b.website ELSE l.website END, \
               job_title = CASE WHEN l.job_title = a.job_title THEN b.job_title ELSE l.job_title END, \
               quality_score = CASE WHEN l.quality_score = a.quality_score THEN b.quality_score ELSE l.quality_score END, \
               touch_count = GREATEST(1, l.touch_count - r.touch_count), \
               updated_at = now() \
             FROM capture.merges m \
               CROSS JOIN LATERAL jsonb_populate_record(NULL::capture.leads, m.before) AS b \
               CROSS JOIN LATERAL jsonb_populate_record(NULL::capture.leads, m.after) AS a, \
               capture.leads r \
             WHERE m.merge_id = $1 AND l.lead_id = m.lead_id AND r.lead_id = m.merged_lead_id",
        )
        .bind(merge_id)
        .execute(&mut *tx)
        .await
        .context("restore the lead")?;
        sqlx::query(
            "UPDATE capture.leads r SET merged_into = NULL, merged_at = NULL, updated_at = now(), \
               email_bidx = CASE WHEN NOT EXISTS (SELECT 1 FROM capture.leads o WHERE o.email_bidx = r.email_digest) \
                            THEN r.email_digest END, \
               phone_bidx = CASE WHEN NOT EXISTS (SELECT 1 FROM capture.leads o WHERE o.phone_bidx = r.phone_digest) \
                            THEN r.phone_digest END \
             WHERE r.lead_id = $1",
        )
        .bind(merged_lead_id)
        .execute(&mut *tx)
        .await
        .context("restore the merged row")?;
        // What the person did through the restored row (its id, or a browser its capture
        // identified) while it was merged is its own again; what was recorded for it while it
        // was a lead never left it.
        let moved: Vec<(Uuid,)> = sqlx::query_as(
            "WITH RECURSIVE restored (lead_id) AS ( \
               SELECT $1::uuid \
               UNION ALL \
               SELECT l.lead_id FROM capture.leads l JOIN restored r ON l.merged_into = r.lead_id) \
             UPDATE capture.activities a SET lead_id = $1 \
             WHERE a.record_id IN (SELECT lead_id FROM restored) \
               AND a.lead_id NOT IN (SELECT lead_id FROM restored) \
             RETURNING a.activity_id",
        )
        .bind(merged_lead_id)
        .fetch_all(&mut *tx)
        .await
        .context("give the restored row its activities")?;
        let mut activity_ids: Vec<Uuid> = moved.into_iter().map(|(id,)| id).collect();
        activity_ids.sort_unstable();
        sqlx::query(
            "UPDATE capture.merges SET unmerged_at = now(), unmerged_by = $2 WHERE merge_id = $1",
        )
        .bind(merge_id)
        .bind(caller)
        .execute(&mut *tx)
        .await?;
        let event = LeadUnmerged {
            lead_id: lead_id.to_string(),
            merge_id: merge_id.to_string(),
            restored: Some(self.describe(&mut tx, merged_lead_id).await?),
            activity_ids: activity_ids.iter().map(Uuid::to_string).collect(),
        };
        self.outbox
            .add(&mut tx, event_types::LEAD_UNMERGED, lead_id, &event)
            .await?;
        self.outbox.commit(tx).await?;
        tracing::info!(
            %lead_id,
            %merge_id,
            restored_lead_id = %merged_lead_id,
            activities = activity_ids.len(),
            key_id = caller,
            "merge undone"
        );
        Ok((lead_id, merged_lead_id))
    }

    /// Describes row `lead_id` as `lead.captured` describes a new lead (no personal data).
    async fn describe(
        &self,
        tx: &mut PgConnection,
        lead_id: Uuid,
    ) -> Result<LeadCaptured, StoreError> {
        let row = self.open_row(tx, lead_id, MergeKind::Capture).await?;
        let consent_channels = self.consent_channels(tx, lead_id).await?;
        let email_domain_kind = match row.email.as_ref().map(|email| email.kind.as_str()) {
            None => EmailDomainKind::None,
            Some("business") => EmailDomainKind::Business,
            Some(_) => EmailDomainKind::Free,
        };
        let country = if row.country.is_empty() {
            row.phone
                .as_ref()
                .map(|phone| phone.region.clone())
                .unwrap_or_default()
        } else {
            row.country.clone()
        };
        Ok(LeadCaptured {
            lead_id: lead_id.to_string(),
            source: row.source_id,
            channel: row.channel,
            campaign: row.campaign,
            email_domain_kind: email_domain_kind.into(),
            has_phone: row.phone.is_some(),
            has_company: !row.company.is_empty(),
            email_hash: row
                .email
                .as_ref()
                .map(|email| identity_hash(&self.identity_key, "email", &email.address))
                .unwrap_or_default(),
            phone_hash: row
                .phone
                .as_ref()
                .map(|phone| identity_hash(&self.identity_key, "phone", &phone.e164))
                .unwrap_or_default(),
            phone_region: row
                .phone
                .as_ref()
                .map(|phone| phone.region.clone())
                .unwrap_or_default(),
            quality_score: row.quality_score,
            country,
            consent_channels,
        })
    }
}
