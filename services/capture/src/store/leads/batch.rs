//! Set-based capture for imports: a batch of parsed rows is stored with one statement per
//! table instead of a transaction per row, with exactly the outcomes the rows would have had
//! one by one.
//!
//! The batch is planned in row order against the locked leads of every identity it holds:
//! a row whose person nobody holds becomes a lead, a row of a known person (in the database or
//! earlier in the batch) becomes a record merged into that lead, a vendor's re-capture within
//! its window is a duplicate. A row the plan cannot decide alone (a suppressed person, a
//! capture that would be held for review, a row carrying a visitor id, whose visitor is linked
//! and whose anonymous activities are handed over as a capture does it) ends the set-based
//! prefix; it goes through the
//! one-row path, and planning starts again after it. Merges into one lead are applied in
//! waves (the n-th merge of every lead in the n-th statement), so each keeps its own lineage
//! snapshot before and after.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use leadflow_platform::events::types;
use leadflow_platform::pii::DataKey;
use leadflow_proto::events::v1::{Envelope, LeadMerged};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{CaptureRequest, Captured, LeadStore, Outcome, StoreError, event_types, is_retryable};
use crate::domain::evidence::Consent;
use crate::domain::source::{Dedupe, SourcePolicy};

/// What became of one row of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batched {
    /// A new lead.
    Created(Uuid),
    /// Merged into this lead.
    Merged(Uuid),
    /// Held for review; the lead it matched.
    InReview { lead_id: Uuid, review_id: Uuid },
}

/// A row to store: its source, the parsed capture and its sealed values.
pub type BatchRow<'a> = (&'a SourcePolicy, &'a CaptureRequest, &'a Sealed);

/// A row's own values, sealed before it is stored (on the thread that parses the next batch,
/// not on the storing path): the id of the row it becomes (a new lead, or a record merged into
/// one), its data key, its sealed personal data and consent evidence, its identities.
pub struct Sealed {
    row_id: Uuid,
    key: DataKey,
    wrapped: Vec<u8>,
    identities: Identities,
    email: Option<Vec<u8>>,
    phone: Option<Vec<u8>>,
    first_name: Option<Vec<u8>>,
    last_name: Option<Vec<u8>>,
    consent: Option<SealedConsent>,
}

/// A consent record's id, with its IP address and user agent sealed.
struct SealedConsent {
    consent_id: Uuid,
    ip_address: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
}

/// A row's blind indexes: email, phone.
type Identities = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A known lead, locked for the batch.
#[derive(Debug, sqlx::FromRow)]
struct KnownLead {
    lead_id: Uuid,
    data_key: Option<Vec<u8>>,
    email_bidx: Option<Vec<u8>>,
    phone_bidx: Option<Vec<u8>>,
    has_first_name: bool,
    has_last_name: bool,
    has_company: bool,
    has_country: bool,
    has_website: bool,
    has_job_title: bool,
    last_captured_at: DateTime<Utc>,
}

/// A lead rows are merged into, as it will be after the rows planned so far.
struct Target {
    lead_id: Uuid,
    /// Its wrapped data key, for a lead already stored.
    wrapped: Option<Vec<u8>>,
    /// Its data key, once known (at once for a lead created by the batch).
    key: Option<DataKey>,
    has_email: bool,
    has_phone: bool,
    has_first_name: bool,
    has_last_name: bool,
    has_company: bool,
    has_country: bool,
    has_website: bool,
    has_job_title: bool,
    last_captured_at: DateTime<Utc>,
    /// Channels covered by the consent records of its family, sorted.
    channels: Vec<String>,
    /// Merges planned into it so far.
    merges: usize,
}

/// Which target claims each identity (only leads claim identities, as the unique blind
/// indexes have it); looked up by slice, without copying the identity.
#[derive(Default)]
struct Claims {
    email: HashMap<Vec<u8>, usize>,
    phone: HashMap<Vec<u8>, usize>,
}

impl Claims {
    /// The targets claiming a row's email and phone.
    fn of(&self, (email, phone): &Identities) -> (Option<usize>, Option<usize>) {
        (
            email
                .as_deref()
                .and_then(|bidx| self.email.get(bidx).copied()),
            phone
                .as_deref()
                .and_then(|bidx| self.phone.get(bidx).copied()),
        )
    }

    /// Records that `target` claims `email` and `phone` (those given).
    fn claim(&mut self, email: Option<&Vec<u8>>, phone: Option<&Vec<u8>>, target: usize) {
        if let Some(bidx) = email {
            self.email.insert(bidx.clone(), target);
        }
        if let Some(bidx) = phone {
            self.phone.insert(bidx.clone(), target);
        }
    }
}

/// The values a merge fills in.
#[derive(Debug, Clone, Copy, Default)]
struct Fills {
    email: bool,
    phone: bool,
    first_name: bool,
    last_name: bool,
    company: bool,
    country: bool,
    website: bool,
    job_title: bool,
}

impl Fills {
    fn names(self) -> Vec<&'static str> {
        [
            (self.email, "email"),
            (self.phone, "phone"),
            (self.first_name, "first_name"),
            (self.last_name, "last_name"),
            (self.company, "company"),
            (self.country, "country"),
            (self.website, "website"),
            (self.job_title, "job_title"),
        ]
        .into_iter()
        .filter_map(|(fill, name)| fill.then_some(name))
        .collect()
    }
}

/// What the plan does with a row.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A new lead: target `target`, created by this row.
    Create { target: usize },
    /// A record merged into target `target`, in wave `wave`.
    Merge {
        target: usize,
        wave: usize,
        fills: Fills,
    },
    /// A vendor's re-capture within the window: nothing stored.
    Duplicate(Uuid),
}

/// Sorted consent channel names of a capture.
fn channels_of(request: &CaptureRequest) -> Vec<String> {
    let mut channels = request
        .consent
        .as_ref()
        .map(Consent::channel_names)
        .unwrap_or_default();
    channels.sort();
    channels
}

/// Columns of the rows a batch inserts into `capture.leads`.
#[derive(Default)]
struct LeadColumns {
    lead_id: Vec<Uuid>,
    source_id: Vec<String>,
    channel: Vec<String>,
    campaign: Vec<String>,
    data_key: Vec<Vec<u8>>,
    email_bidx: Vec<Option<Vec<u8>>>,
    phone_bidx: Vec<Option<Vec<u8>>>,
    email_sealed: Vec<Option<Vec<u8>>>,
    phone_sealed: Vec<Option<Vec<u8>>>,
    first_name_sealed: Vec<Option<Vec<u8>>>,
    last_name_sealed: Vec<Option<Vec<u8>>>,
    email_kind: Vec<&'static str>,
    email_role: Vec<bool>,
    phone_region: Vec<String>,
    phone_line_type: Vec<&'static str>,
    company: Vec<String>,
    country: Vec<String>,
    website: Vec<String>,
    job_title: Vec<String>,
    quality_score: Vec<i32>,
    email_digest: Vec<Option<Vec<u8>>>,
    phone_digest: Vec<Option<Vec<u8>>>,
    merged_into: Vec<Option<Uuid>>,
}

/// Columns of the touches a batch inserts.
#[derive(Default)]
struct TouchColumns {
    touch_id: Vec<Uuid>,
    lead_id: Vec<Uuid>,
    source_id: Vec<String>,
    channel: Vec<String>,
    campaign: Vec<String>,
    utm_source: Vec<String>,
    utm_medium: Vec<String>,
    utm_campaign: Vec<String>,
    utm_term: Vec<String>,
    utm_content: Vec<String>,
    gclid: Vec<String>,
    fbclid: Vec<String>,
    referrer: Vec<String>,
    landing_page: Vec<String>,
}

/// Columns of the consent records a batch inserts.
#[derive(Default)]
struct ConsentColumns {
    consent_id: Vec<Uuid>,
    lead_id: Vec<Uuid>,
    /// Channel names joined by commas (arrays of arrays must be rectangular).
    channels: Vec<String>,
    disclosure_text: Vec<String>,
    disclosure_sha256: Vec<String>,
    form_url: Vec<String>,
    form_version: Vec<String>,
    ip_sealed: Vec<Option<Vec<u8>>>,
    user_agent_sealed: Vec<Option<Vec<u8>>>,
    legal_basis: Vec<&'static str>,
    given_at: Vec<Option<DateTime<Utc>>>,
}

/// Columns of one wave of merges.
#[derive(Default)]
struct MergeColumns {
    lead_id: Vec<Uuid>,
    fill_email: Vec<bool>,
    email_bidx: Vec<Option<Vec<u8>>>,
    email_sealed: Vec<Option<Vec<u8>>>,
    email_kind: Vec<&'static str>,
    email_role: Vec<bool>,
    fill_phone: Vec<bool>,
    phone_bidx: Vec<Option<Vec<u8>>>,
    phone_sealed: Vec<Option<Vec<u8>>>,
    phone_region: Vec<String>,
    phone_line_type: Vec<&'static str>,
    first_name_sealed: Vec<Option<Vec<u8>>>,
    last_name_sealed: Vec<Option<Vec<u8>>>,
    company: Vec<String>,
    country: Vec<String>,
    website: Vec<String>,
    job_title: Vec<String>,
    quality_score: Vec<i32>,
    merge_id: Vec<Uuid>,
    merged_lead_id: Vec<Uuid>,
    source_id: Vec<String>,
    /// Field names joined by commas.
    fields_filled: Vec<String>,
    /// The batch row of each merge.
    row: Vec<usize>,
}

impl LeadStore {
    /// Seals a parsed capture's own values under a new data key, ready for
    /// [`LeadStore::capture_batch`].
    pub fn seal_row(&self, request: &CaptureRequest) -> Result<Sealed, StoreError> {
        let row_id = Uuid::now_v7();
        let owner = row_id.as_bytes();
        let (key, wrapped) = self.keyring.new_data_key(owner).context("new data key")?;
        let seal =
            |field: &str, text: &str| key.seal_text(owner, field, text).context("seal field");
        let lead = &request.lead;
        let consent = match &request.consent {
            Some(consent) => {
                let consent_id = Uuid::now_v7();
                let owner = consent_id.as_bytes();
                let ip = consent.ip_text();
                Some(SealedConsent {
                    consent_id,
                    ip_address: key.seal_text(owner, "ip_address", &ip).context("seal ip")?,
                    user_agent: key
                        .seal_text(owner, "user_agent", &consent.user_agent)
                        .context("seal user agent")?,
                })
            }
            None => None,
        };
        Ok(Sealed {
            row_id,
            identities: self.identities(request),
            email: seal("email", lead.email_address())?,
            phone: seal("phone", lead.phone_e164())?,
            first_name: seal("first_name", &lead.first_name)?,
            last_name: seal("last_name", &lead.last_name)?,
            consent,
            key,
            wrapped,
        })
    }

    /// Stores a batch of parsed captures, in order, each with the outcome it would have had
    /// alone: set-based where the outcome is plain (a new lead, a merge, a vendor duplicate),
    /// one by one where it is not (a suppressed person, a capture held for review, a visitor to
    /// link). A batch that conflicts with a concurrent capture is finished one row at a time.
    pub async fn capture_batch(&self, rows: &[BatchRow<'_>]) -> Vec<Result<Batched, StoreError>> {
        let mut results = Vec::with_capacity(rows.len());
        let one_row = match self.suppressed_rows(rows).await {
            // Linking a visitor is left to the one-row path: rows that carry one are few.
            Ok(suppressed) => suppressed
                .into_iter()
                .zip(rows)
                .map(|(suppressed, (_, request, _))| {
                    suppressed || request.lead.visitor_id.is_some()
                })
                .collect(),
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "batch suppression lookup failed; storing row by row"
                );
                vec![true; rows.len()]
            }
        };
        let mut set_based = true;
        let mut next = 0;
        while next < rows.len() {
            if set_based && !one_row[next] {
                let attempt = self.store_prefix(&rows[next..], &one_row[next..]).await;
                match attempt {
                    Ok(stored) => {
                        next += stored.len();
                        results.extend(stored);
                        if next == rows.len() {
                            break;
                        }
                    }
                    Err(err) => {
                        if is_retryable(&err) {
                            let retries = self.count_retry();
                            tracing::info!(
                                retries,
                                "import batch stored row by row after a conflict"
                            );
                        } else {
                            tracing::warn!(
                                error = format!("{err:#}"),
                                "set-based import failed; storing row by row"
                            );
                        }
                        set_based = false;
                    }
                }
            }
            // The row the plan could not decide (or every row, once the batch conflicted).
            let (source, request, _) = rows[next];
            results.push(self.capture_row(source, request).await);
            next += 1;
        }
        results
    }

    /// Stores one row through the one-row path.
    async fn capture_row(
        &self,
        source: &SourcePolicy,
        request: &CaptureRequest,
    ) -> Result<Batched, StoreError> {
        let respond = |_: &Captured| Vec::new();
        let captured = self.capture(source, request, None, &respond).await?;
        let lead_id = captured.lead.lead_id;
        Ok(match captured.outcome {
            Outcome::Created => Batched::Created(lead_id),
            Outcome::Merged => Batched::Merged(lead_id),
            Outcome::InReview(review_id) => Batched::InReview { lead_id, review_id },
        })
    }

    /// Returns, per row, whether any of its identities is suppressed.
    async fn suppressed_rows(&self, rows: &[BatchRow<'_>]) -> Result<Vec<bool>, StoreError> {
        let identities = rows.iter().map(|(_, _, sealed)| &sealed.identities);
        let all: Vec<&[u8]> = identities
            .clone()
            .flat_map(|(email, phone)| [email.as_deref(), phone.as_deref()])
            .flatten()
            .collect();
        let found: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT bidx FROM capture.suppressions WHERE bidx = ANY($1)")
                .bind(&all)
                .fetch_all(&self.pool)
                .await?;
        if found.is_empty() {
            return Ok(vec![false; rows.len()]);
        }
        let found: std::collections::HashSet<Vec<u8>> =
            found.into_iter().map(|(bidx,)| bidx).collect();
        Ok(identities
            .map(|(email, phone)| {
                [email, phone]
                    .into_iter()
                    .flatten()
                    .any(|bidx| found.contains(bidx))
            })
            .collect())
    }

    /// Plans and stores the longest prefix of `rows` the plan can decide, in one transaction;
    /// returns its outcomes (fewer than `rows` when the next row needs the one-row path).
    async fn store_prefix(
        &self,
        rows: &[BatchRow<'_>],
        one_row: &[bool],
    ) -> Result<Vec<Result<Batched, StoreError>>, StoreError> {
        // Every statement below finds rows by a key (an identity, a lead id, a lineage link),
        // a few per row of the batch; but a table an import is filling has no statistics yet,
        // and the planner, believing it small, hashes or merges the whole table once per
        // statement per batch (growing with the table). Capture's sessions already make
        // whole-table scans a last resort (`postgres::INDEXED_LOOKUPS`); for this transaction
        // hash and merge joins are too, so lookups go through the indexes.
        let mut tx = leadflow_platform::postgres::begin_with(
            &self.pool,
            "BEGIN; SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off",
        )
        .await?;
        let emails: Vec<&[u8]> = rows
            .iter()
            .filter_map(|(_, _, sealed)| sealed.identities.0.as_deref())
            .collect();
        let phones: Vec<&[u8]> = rows
            .iter()
            .filter_map(|(_, _, sealed)| sealed.identities.1.as_deref())
            .collect();
        // Locked in one order, so two batches cannot deadlock on each other's leads.
        let known: Vec<KnownLead> = sqlx::query_as(
            "SELECT lead_id, data_key, email_bidx, phone_bidx, first_name_sealed IS NOT NULL AS has_first_name, \
               last_name_sealed IS NOT NULL AS has_last_name, company <> '' AS has_company, \
               country <> '' AS has_country, website <> '' AS has_website, job_title <> '' AS has_job_title, \
               last_captured_at \
             FROM capture.leads WHERE (email_bidx = ANY($1) OR phone_bidx = ANY($2)) AND erased_at IS NULL \
             ORDER BY lead_id FOR UPDATE",
        )
        .bind(&emails)
        .bind(&phones)
        .fetch_all(&mut *tx)
        .await
        .context("lock known leads")?;
        let mut channels =
            if known.is_empty() || rows.iter().all(|(_, request, _)| request.consent.is_none()) {
                HashMap::new()
            } else {
                self.family_channels(&mut tx, &known).await?
            };
        let mut targets: Vec<Target> = Vec::with_capacity(known.len() + rows.len());
        let mut claims = Claims::default();
        for lead in known {
            claims.claim(
                lead.email_bidx.as_ref(),
                lead.phone_bidx.as_ref(),
                targets.len(),
            );
            targets.push(Target {
                lead_id: lead.lead_id,
                wrapped: lead.data_key,
                key: None,
                has_email: lead.email_bidx.is_some(),
                has_phone: lead.phone_bidx.is_some(),
                has_first_name: lead.has_first_name,
                has_last_name: lead.has_last_name,
                has_company: lead.has_company,
                has_country: lead.has_country,
                has_website: lead.has_website,
                has_job_title: lead.has_job_title,
                last_captured_at: lead.last_captured_at,
                channels: channels.remove(&lead.lead_id).unwrap_or_default(),
                merges: 0,
            });
        }
        let steps = self.plan(rows, one_row, &mut targets, &mut claims)?;
        let planned = &rows[..steps.len()];
        let outcomes = self.apply(&mut tx, planned, &steps, &mut targets).await?;
        self.outbox.commit(tx).await?;
        Ok(outcomes)
    }

    /// Channels covered by the consent records of each known lead's family, sorted.
    async fn family_channels(
        &self,
        tx: &mut PgConnection,
        known: &[KnownLead],
    ) -> Result<HashMap<Uuid, Vec<String>>, StoreError> {
        let roots: Vec<Uuid> = known.iter().map(|lead| lead.lead_id).collect();
        let rows: Vec<(Uuid, Vec<String>)> = sqlx::query_as(
            "WITH RECURSIVE family (root, lead_id) AS ( \
               SELECT root, root FROM UNNEST($1::uuid[]) AS r (root) \
               UNION ALL \
               SELECT f.root, l.lead_id FROM capture.leads l JOIN family f ON l.merged_into = f.lead_id) \
             SELECT f.root, array_agg(DISTINCT channel ORDER BY channel) \
             FROM family f JOIN capture.consents c ON c.lead_id = f.lead_id, unnest(c.channels) AS channel \
             GROUP BY f.root",
        )
        .bind(&roots)
        .fetch_all(&mut *tx)
        .await
        .context("read consent channels of known leads")?;
        Ok(rows.into_iter().collect())
    }

    /// Decides, in row order, what each row does, until a row needs the one-row path.
    fn plan(
        &self,
        rows: &[BatchRow<'_>],
        one_row: &[bool],
        targets: &mut Vec<Target>,
        claims: &mut Claims,
    ) -> Result<Vec<Step>, StoreError> {
        let now = Utc::now();
        let mut steps = Vec::with_capacity(rows.len());
        for ((source, request, sealed), one_row) in rows.iter().zip(one_row) {
            if *one_row {
                break;
            }
            let (email, phone) = &sealed.identities;
            let target = match claims.of(&sealed.identities) {
                // Two leads: an identity conflict, held for review by the one-row path.
                (Some(one), Some(other)) if one != other => break,
                (Some(index), _) | (None, Some(index)) => Some(index),
                (None, None) => None,
            };
            let capture_channels = channels_of(request);
            let Some(index) = target else {
                let lead = &request.lead;
                let index = targets.len();
                targets.push(Target {
                    lead_id: sealed.row_id,
                    wrapped: Some(sealed.wrapped.clone()),
                    key: Some(sealed.key.clone()),
                    has_email: email.is_some(),
                    has_phone: phone.is_some(),
                    has_first_name: !lead.first_name.is_empty(),
                    has_last_name: !lead.last_name.is_empty(),
                    has_company: !lead.company.is_empty(),
                    has_country: !lead.country.is_empty(),
                    has_website: !lead.website.is_empty(),
                    has_job_title: !lead.job_title.is_empty(),
                    last_captured_at: now,
                    channels: capture_channels,
                    merges: 0,
                });
                claims.claim(email.as_ref(), phone.as_ref(), index);
                steps.push(Step::Create { target: index });
                continue;
            };
            let target = &mut targets[index];
            if let Dedupe::RejectWithin(window) = source.dedupe
                && target.last_captured_at > now - window
            {
                steps.push(Step::Duplicate(target.lead_id));
                continue;
            }
            if !capture_channels.is_empty()
                && !target.channels.is_empty()
                && target.channels != capture_channels
            {
                // A consent mismatch, held for review by the one-row path.
                break;
            }
            let lead = &request.lead;
            let fills = Fills {
                email: !target.has_email && email.is_some(),
                phone: !target.has_phone && phone.is_some(),
                first_name: !target.has_first_name && !lead.first_name.is_empty(),
                last_name: !target.has_last_name && !lead.last_name.is_empty(),
                company: !target.has_company && !lead.company.is_empty(),
                country: !target.has_country && !lead.country.is_empty(),
                website: !target.has_website && !lead.website.is_empty(),
                job_title: !target.has_job_title && !lead.job_title.is_empty(),
            };
            target.has_email |= fills.email;
            target.has_phone |= fills.phone;
            target.has_first_name |= fills.first_name;
            target.has_last_name |= fills.last_name;
            target.has_company |= fills.company;
            target.has_country |= fills.country;
            target.has_website |= fills.website;
            target.has_job_title |= fills.job_title;
            target.last_captured_at = now;
            if target.channels.is_empty() {
                target.channels = capture_channels;
            }
            let wave = target.merges;
            target.merges += 1;
            claims.claim(
                email.as_ref().filter(|_| fills.email),
                phone.as_ref().filter(|_| fills.phone),
                index,
            );
            steps.push(Step::Merge {
                target: index,
                wave,
                fills,
            });
        }
        Ok(steps)
    }

    /// Stores the planned rows inside `tx`: their rows, touches and consents, the merges
    /// wave by wave, and their events in row order.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        rows: &[BatchRow<'_>],
        steps: &[Step],
        targets: &mut [Target],
    ) -> Result<Vec<Result<Batched, StoreError>>, StoreError> {
        let mut leads = LeadColumns::default();
        let mut touches = TouchColumns::default();
        let mut consents = ConsentColumns::default();
        let mut waves: Vec<MergeColumns> = Vec::new();
        // Per merged row: its merge in the lineage.
        let mut merge_ids: HashMap<usize, Uuid> = HashMap::new();
        for (row, ((source, request, sealed), step)) in rows.iter().zip(steps).enumerate() {
            let row_id = sealed.row_id;
            let (email_bidx, phone_bidx) = &sealed.identities;
            let merged_into = match *step {
                Step::Duplicate(_) => continue,
                Step::Create { .. } => None,
                Step::Merge {
                    target,
                    wave,
                    fills,
                } => {
                    let record_id = row_id;
                    let target_key = self.target_key(&mut targets[target])?;
                    let lead_id = targets[target].lead_id;
                    if waves.len() <= wave {
                        waves.resize_with(wave + 1, MergeColumns::default);
                    }
                    let merge_id = self.push_merge(
                        &mut waves[wave],
                        row,
                        lead_id,
                        &target_key,
                        record_id,
                        source,
                        request,
                        (email_bidx, phone_bidx),
                        fills,
                    )?;
                    merge_ids.insert(row, merge_id);
                    Some(lead_id)
                }
            };
            let lead = &request.lead;
            let claim = merged_into.is_none();
            leads.lead_id.push(row_id);
            leads.source_id.push(source.source_id.clone());
            leads.channel.push(lead.channel.clone());
            leads.campaign.push(lead.campaign.clone());
            leads.data_key.push(sealed.wrapped.clone());
            leads.email_bidx.push(email_bidx.clone().filter(|_| claim));
            leads.phone_bidx.push(phone_bidx.clone().filter(|_| claim));
            leads.email_sealed.push(sealed.email.clone());
            leads.phone_sealed.push(sealed.phone.clone());
            leads.first_name_sealed.push(sealed.first_name.clone());
            leads.last_name_sealed.push(sealed.last_name.clone());
            leads.email_kind.push(lead.email_kind_name());
            leads.email_role.push(lead.email_role());
            leads.phone_region.push(
                lead.phone
                    .as_ref()
                    .and_then(|phone| phone.region.clone())
                    .unwrap_or_default(),
            );
            leads.phone_line_type.push(lead.phone_line_type());
            leads.company.push(lead.company.clone());
            leads.country.push(lead.country.clone());
            leads.website.push(lead.website.clone());
            leads.job_title.push(lead.job_title.clone());
            leads.quality_score.push(lead.quality_score());
            leads.email_digest.push(email_bidx.clone());
            leads.phone_digest.push(phone_bidx.clone());
            leads.merged_into.push(merged_into);

            let attribution = &request.attribution;
            touches.touch_id.push(Uuid::now_v7());
            touches.lead_id.push(row_id);
            touches.source_id.push(source.source_id.clone());
            touches.channel.push(lead.channel.clone());
            touches.campaign.push(lead.campaign.clone());
            touches.utm_source.push(attribution.utm_source.clone());
            touches.utm_medium.push(attribution.utm_medium.clone());
            touches.utm_campaign.push(attribution.utm_campaign.clone());
            touches.utm_term.push(attribution.utm_term.clone());
            touches.utm_content.push(attribution.utm_content.clone());
            touches.gclid.push(attribution.gclid.clone());
            touches.fbclid.push(attribution.fbclid.clone());
            touches.referrer.push(attribution.referrer.clone());
            touches.landing_page.push(attribution.landing_page.clone());

            if let (Some(consent), Some(evidence)) = (&request.consent, &sealed.consent) {
                consents.consent_id.push(evidence.consent_id);
                consents.lead_id.push(row_id);
                consents.channels.push(consent.channel_names().join(","));
                consents
                    .disclosure_text
                    .push(consent.disclosure_text.clone());
                consents
                    .disclosure_sha256
                    .push(consent.disclosure_sha256.clone());
                consents.form_url.push(consent.form_url.clone());
                consents.form_version.push(consent.form_version.clone());
                consents.ip_sealed.push(evidence.ip_address.clone());
                consents.user_agent_sealed.push(evidence.user_agent.clone());
                consents.legal_basis.push(consent.legal_basis.as_str_name());
                consents.given_at.push(consent.given_at);
            }
        }
        insert_leads(tx, &leads).await?;
        insert_touches(tx, &touches).await?;
        insert_consents(tx, &consents).await?;
        // Per row: the lead's touch count after its merge.
        let mut touch_counts: HashMap<usize, i32> = HashMap::new();
        for wave in &waves {
            let counts = fold_wave(tx, wave).await?;
            for (row, lead_id) in wave.row.iter().zip(&wave.lead_id) {
                let count = counts
                    .get(lead_id)
                    .ok_or_else(|| anyhow::anyhow!("merge returned no touch count"))?;
                touch_counts.insert(*row, *count);
            }
        }
        let mut envelopes: Vec<Envelope> = Vec::with_capacity(rows.len());
        let mut outcomes = Vec::with_capacity(rows.len());
        for (row, ((source, request, sealed), step)) in rows.iter().zip(steps).enumerate() {
            match *step {
                Step::Duplicate(lead_id) => outcomes.push(Err(StoreError::Duplicate(lead_id))),
                Step::Create { target } => {
                    let lead_id = targets[target].lead_id;
                    let event = self.captured_event(lead_id, request);
                    envelopes.push(self.outbox.envelope(
                        types::LEAD_CAPTURED,
                        Some(lead_id),
                        &event,
                    ));
                    outcomes.push(Ok(Batched::Created(lead_id)));
                }
                Step::Merge { target, fills, .. } => {
                    let lead_id = targets[target].lead_id;
                    let (Some(merge_id), Some(touch_count)) =
                        (merge_ids.get(&row), touch_counts.get(&row))
                    else {
                        return Err(anyhow::anyhow!("planned merge missing").into());
                    };
                    let event = LeadMerged {
                        lead_id: lead_id.to_string(),
                        source: source.source_id.clone(),
                        channel: request.lead.channel.clone(),
                        campaign: request.lead.campaign.clone(),
                        fields_filled: fills.names().into_iter().map(str::to_owned).collect(),
                        touch_count: *touch_count,
                        merge_id: merge_id.to_string(),
                        merged_lead_id: sealed.row_id.to_string(),
                        merged_lead_was_lead: false,
                    };
                    envelopes.push(self.outbox.envelope(
                        event_types::LEAD_MERGED,
                        Some(lead_id),
                        &event,
                    ));
                    outcomes.push(Ok(Batched::Merged(lead_id)));
                }
            }
        }
        self.outbox.add_many(tx, &envelopes).await?;
        Ok(outcomes)
    }

    /// Returns a target's data key, unwrapping a stored lead's once.
    fn target_key(&self, target: &mut Target) -> Result<DataKey, StoreError> {
        if let Some(key) = &target.key {
            return Ok(key.clone());
        }
        let wrapped = target
            .wrapped
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("active lead without a data key"))?;
        let key = self
            .keyring
            .unwrap_data_key(target.lead_id.as_bytes(), wrapped)
            .context("unwrap data key")?;
        target.key = Some(key.clone());
        Ok(key)
    }

    /// Adds one merge to its wave, its values sealed under the lead's key; returns the merge's
    /// id.
    #[allow(clippy::too_many_arguments)]
    fn push_merge(
        &self,
        wave: &mut MergeColumns,
        row: usize,
        lead_id: Uuid,
        key: &DataKey,
        record_id: Uuid,
        source: &SourcePolicy,
        request: &CaptureRequest,
        (email_bidx, phone_bidx): (&Option<Vec<u8>>, &Option<Vec<u8>>),
        fills: Fills,
    ) -> Result<Uuid, StoreError> {
        let owner = lead_id.as_bytes();
        let seal =
            |field: &str, text: &str| key.seal_text(owner, field, text).context("seal field");
        let lead = &request.lead;
        let email = lead.email.as_ref().filter(|_| email_bidx.is_some());
        let phone = lead.phone.as_ref().filter(|_| phone_bidx.is_some());
        wave.lead_id.push(lead_id);
        wave.fill_email.push(fills.email);
        wave.email_bidx.push(email_bidx.clone());
        wave.email_sealed
            .push(seal("email", email.map_or("", |email| &email.address))?);
        wave.email_kind
            .push(email.map_or("none", |email| email.kind.as_str()));
        wave.email_role.push(email.is_some_and(|email| email.role));
        wave.fill_phone.push(fills.phone);
        wave.phone_bidx.push(phone_bidx.clone());
        wave.phone_sealed
            .push(seal("phone", phone.map_or("", |phone| &phone.e164))?);
        wave.phone_region.push(
            phone
                .and_then(|phone| phone.region.clone())
                .unwrap_or_default(),
        );
        wave.phone_line_type
            .push(phone.and_then(|phone| phone.line_type).unwrap_or_default());
        wave.first_name_sealed
            .push(seal("first_name", &lead.first_name)?);
        wave.last_name_sealed
            .push(seal("last_name", &lead.last_name)?);
        wave.company.push(lead.company.clone());
        wave.country.push(lead.country.clone());
        wave.website.push(lead.website.clone());
        wave.job_title.push(lead.job_title.clone());
        wave.quality_score.push(lead.quality_score());
        let merge_id = Uuid::now_v7();
        wave.merge_id.push(merge_id);
        wave.merged_lead_id.push(record_id);
        wave.source_id.push(source.source_id.clone());
        wave.fields_filled.push(fills.names().join(","));
        wave.row.push(row);
        Ok(merge_id)
    }
}

async fn insert_leads(tx: &mut PgConnection, leads: &LeadColumns) -> Result<(), StoreError> {
    if leads.lead_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO capture.leads (lead_id, source_id, channel, campaign, data_key, email_bidx, phone_bidx, \
           email_sealed, phone_sealed, first_name_sealed, last_name_sealed, email_kind, email_role, phone_region, \
           phone_line_type, company, country, website, job_title, quality_score, email_digest, phone_digest, \
           merged_into, merged_at) \
         SELECT r.lead_id, r.source_id, r.channel, r.campaign, r.data_key, r.email_bidx, r.phone_bidx, \
           r.email_sealed, r.phone_sealed, r.first_name_sealed, r.last_name_sealed, r.email_kind, r.email_role, \
           r.phone_region, r.phone_line_type, r.company, r.country, r.website, r.job_title, r.quality_score, \
           r.email_digest, r.phone_digest, r.merged_into, CASE WHEN r.merged_into IS NULL THEN NULL ELSE now() END \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::bytea[], $7::bytea[], \
           $8::bytea[], $9::bytea[], $10::bytea[], $11::bytea[], $12::text[], $13::bool[], $14::text[], $15::text[], \
           $16::text[], $17::text[], $18::text[], $19::text[], $20::int4[], $21::bytea[], $22::bytea[], $23::uuid[]) \
           AS r (lead_id, source_id, channel, campaign, data_key, email_bidx, phone_bidx, email_sealed, phone_sealed, \
             first_name_sealed, last_name_sealed, email_kind, email_role, phone_region, phone_line_type, company, \
             country, website, job_title, quality_score, email_digest, phone_digest, merged_into)",
    )
    .bind(&leads.lead_id)
    .bind(&leads.source_id)
    .bind(&leads.channel)
    .bind(&leads.campaign)
    .bind(&leads.data_key)
    .bind(&leads.email_bidx)
    .bind(&leads.phone_bidx)
    .bind(&leads.email_sealed)
    .bind(&leads.phone_sealed)
    .bind(&leads.first_name_sealed)
    .bind(&leads.last_name_sealed)
    .bind(&leads.email_kind)
    .bind(&leads.email_role)
    .bind(&leads.phone_region)
    .bind(&leads.phone_line_type)
    .bind(&leads.company)
    .bind(&leads.country)
    .bind(&leads.website)
    .bind(&leads.job_title)
    .bind(&leads.quality_score)
    .bind(&leads.email_digest)
    .bind(&leads.phone_digest)
    .bind(&leads.merged_into)
    .execute(&mut *tx)
    .await
    .context("insert batch of leads")?;
    Ok(())
}

async fn insert_touches(tx: &mut PgConnection, touches: &TouchColumns) -> Result<(), StoreError> {
    if touches.touch_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO capture.touches (touch_id, lead_id, source_id, channel, campaign, utm_source, utm_medium, \
           utm_campaign, utm_term, utm_content, gclid, fbclid, referrer, landing_page) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
           $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])",
    )
    .bind(&touches.touch_id)
    .bind(&touches.lead_id)
    .bind(&touches.source_id)
    .bind(&touches.channel)
    .bind(&touches.campaign)
    .bind(&touches.utm_source)
    .bind(&touches.utm_medium)
    .bind(&touches.utm_campaign)
    .bind(&touches.utm_term)
    .bind(&touches.utm_content)
    .bind(&touches.gclid)
    .bind(&touches.fbclid)
    .bind(&touches.referrer)
    .bind(&touches.landing_page)
    .execute(&mut *tx)
    .await
    .context("insert batch of touches")?;
    Ok(())
}

async fn insert_consents(
    tx: &mut PgConnection,
    consents: &ConsentColumns,
) -> Result<(), StoreError> {
    if consents.consent_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO capture.consents (consent_id, lead_id, channels, disclosure_text, disclosure_sha256, \
           form_url, form_version, ip_sealed, user_agent_sealed, legal_basis, given_at) \
         SELECT r.consent_id, r.lead_id, string_to_array(r.channels, ','), r.disclosure_text, r.disclosure_sha256, \
           r.form_url, r.form_version, r.ip_sealed, r.user_agent_sealed, r.legal_basis, COALESCE(r.given_at, now()) \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
           $8::bytea[], $9::bytea[], $10::text[], $11::timestamptz[]) \
           AS r (consent_id, lead_id, channels, disclosure_text, disclosure_sha256, form_url, form_version, \
             ip_sealed, user_agent_sealed, legal_basis, given_at)",
    )
    .bind(&consents.consent_id)
    .bind(&consents.lead_id)
    .bind(&consents.channels)
    .bind(&consents.disclosure_text)
    .bind(&consents.disclosure_sha256)
    .bind(&consents.form_url)
    .bind(&consents.form_version)
    .bind(&consents.ip_sealed)
    .bind(&consents.user_agent_sealed)
    .bind(&consents.legal_basis)
    .bind(&consents.given_at)
    .execute(&mut *tx)
    .await
    .context("insert batch of consents")?;
    Ok(())
}

/// Applies one wave of merges (at most one per lead), keeping each lead's columns before and
/// after in its lineage; returns each lead's touch count after.
async fn fold_wave(
    tx: &mut PgConnection,
    wave: &MergeColumns,
) -> Result<HashMap<Uuid, i32>, StoreError> {
    let counts: Vec<(Uuid, i32)> = sqlx::query_as(
        "WITH input AS ( \
           SELECT * FROM UNNEST($1::uuid[], $2::bool[], $3::bytea[], $4::bytea[], $5::text[], $6::bool[], \
             $7::bool[], $8::bytea[], $9::bytea[], $10::text[], $11::text[], $12::bytea[], $13::bytea[], \
             $14::text[], $15::text[], $16::text[], $17::text[], $18::int4[], $19::uuid[], $20::uuid[], \
             $21::text[], $22::text[]) \
           AS i (lead_id, fill_email, email_bidx, email_sealed, email_kind, email_role, fill_phone, phone_bidx, \
             phone_sealed, phone_region, phone_line_type, first_name_sealed, last_name_sealed, company, country, \
             website, job_title, quality_score, merge_id, merged_lead_id, source_id, fields_filled)), \
         old AS (SELECT o.lead_id, to_jsonb(o) AS snapshot FROM capture.leads o \
           WHERE o.lead_id IN (SELECT lead_id FROM input)), \
         new AS (UPDATE capture.leads l SET \
           email_bidx = CASE WHEN i.fill_email THEN i.email_bidx ELSE l.email_bidx END, \
           email_digest = CASE WHEN i.fill_email THEN i.email_bidx ELSE l.email_digest END, \
           email_sealed = CASE WHEN i.fill_email THEN i.email_sealed ELSE l.email_sealed END, \
           email_kind = CASE WHEN i.fill_email THEN i.email_kind ELSE l.email_kind END, \
           email_role = CASE WHEN i.fill_email THEN i.email_role ELSE l.email_role END, \
           phone_bidx = CASE WHEN i.fill_phone THEN i.phone_bidx ELSE l.phone_bidx END, \
           phone_digest = CASE WHEN i.fill_phone THEN i.phone_bidx ELSE l.phone_digest END, \
           phone_sealed = CASE WHEN i.fill_phone THEN i.phone_sealed ELSE l.phone_sealed END, \
           phone_region = CASE WHEN i.fill_phone THEN i.phone_region ELSE l.phone_region END, \
           phone_line_type = CASE WHEN i.fill_phone THEN i.phone_line_type ELSE l.phone_line_type END, \
           first_name_sealed = COALESCE(l.first_name_sealed, i.first_name_sealed), \
           last_name_sealed = COALESCE(l.last_name_sealed, i.last_name_sealed), \
           company = CASE WHEN l.company = '' THEN i.company ELSE l.company END, \
           country = CASE WHEN l.country = '' THEN i.country ELSE l.country END, \
           website = CASE WHEN l.website = '' THEN i.website ELSE l.website END, \
           job_title = CASE WHEN l.job_title = '' THEN i.job_title ELSE l.job_title END, \
           quality_score = GREATEST(l.quality_score, i.quality_score), \
           touch_count = l.touch_count + 1, last_captured_at = now(), updated_at = now() \
         FROM input i WHERE l.lead_id = i.lead_id \
         RETURNING l.lead_id, l.touch_count, to_jsonb(l) AS snapshot), \
         lineage AS (INSERT INTO capture.merges \
           (merge_id, lead_id, merged_lead_id, kind, source_id, fields_filled, before, after, review_id) \
           SELECT i.merge_id, i.lead_id, i.merged_lead_id, 'capture', i.source_id, \
             string_to_array(i.fields_filled, ','), old.snapshot, new.snapshot, NULL \
           FROM input i JOIN old ON old.lead_id = i.lead_id JOIN new ON new.lead_id = i.lead_id) \
         SELECT lead_id, touch_count FROM new",
    )
    .bind(&wave.lead_id)
    .bind(&wave.fill_email)
    .bind(&wave.email_bidx)
    .bind(&wave.email_sealed)
    .bind(&wave.email_kind)
    .bind(&wave.email_role)
    .bind(&wave.fill_phone)
    .bind(&wave.phone_bidx)
    .bind(&wave.phone_sealed)
    .bind(&wave.phone_region)
    .bind(&wave.phone_line_type)
    .bind(&wave.first_name_sealed)
    .bind(&wave.last_name_sealed)
    .bind(&wave.company)
    .bind(&wave.country)
    .bind(&wave.website)
    .bind(&wave.job_title)
    .bind(&wave.quality_score)
    .bind(&wave.merge_id)
    .bind(&wave.merged_lead_id)
    .bind(&wave.source_id)
    .bind(&wave.fields_filled)
    .fetch_all(&mut *tx)
    .await
    .context("merge a wave into leads")?;
    if counts.len() != wave.lead_id.len() {
        return Err(anyhow::anyhow!(
            "a wave of {} merges updated {} leads",
            wave.lead_id.len(),
            counts.len()
        )
        .into());
    }
    Ok(counts.into_iter().collect())
}
