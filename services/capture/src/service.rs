//! The capture use case shared by every channel (gRPC, imports, web forms): parse against the
//! source, check rate limits, store with dedupe and idempotency, answer. Activities (gRPC and
//! the tracking snippet's endpoint) go through here too.

use std::collections::HashMap;
use std::sync::Arc;

use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::{
    ActivityOutcome, CaptureLeadRequest, CaptureLeadResponse, CaptureOutcome, LeadInput,
    RecordActivityRequest, RecordActivityResponse,
};
use leadflow_proto::events::v1::{LeadRejected, RejectionReason};
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::activity::{NewActivity, kind_name};
use crate::domain::evidence::{parse_attribution, parse_consent};
use crate::domain::lead::{NewLead, NormalizeConfig, parse_token};
use crate::domain::source::SourcePolicy;
use crate::error::CaptureError;
use crate::grpc::convert;
use crate::limits::RateLimits;
use crate::rejections::{RejectionWriter, Rejections};
use crate::store::leads::{BatchRow, Batched, Idempotency, Resolution, Resolved, Sealed};
use crate::store::{
    CaptureRequest, Captured, LeadStore, Outcome, Recorded, SourceStore, StoreError,
};

/// Who captures: the API key id (or `form:<source>` for web forms) and whether they may see
/// personal data.
#[derive(Debug, Clone)]
pub struct Origin {
    pub caller: String,
    pub unmask: bool,
    /// Captures per minute allowed for this caller; 0 means unlimited.
    pub caller_rate_per_minute: u32,
}

/// One import row, parsed.
pub enum ParsedRow {
    /// Ready to store under its source.
    Ready(Arc<SourcePolicy>, Box<(CaptureRequest, Sealed)>),
    /// Refused at the door, with the event that says so.
    Rejected(FieldViolations, LeadRejected),
    /// Could not be parsed for another reason.
    Failed(CaptureError),
}

/// A chunk of import rows, parsed, in order.
pub struct PreparedImport {
    rows: Vec<ParsedRow>,
}

/// Captures leads for every channel.
#[derive(Clone)]
pub struct Capturer {
    config: Arc<NormalizeConfig>,
    leads: LeadStore,
    sources: SourceStore,
    limits: RateLimits,
    rejections: Rejections,
}

fn response(captured: &Captured, unmask: bool) -> CaptureLeadResponse {
    let (outcome, review_id) = match captured.outcome {
        Outcome::Created => (CaptureOutcome::Created, String::new()),
        Outcome::Merged => (CaptureOutcome::Merged, String::new()),
        Outcome::InReview(review_id) => (CaptureOutcome::InReview, review_id.to_string()),
    };
    CaptureLeadResponse {
        lead: Some(convert::lead(captured.lead.clone(), unmask)),
        outcome: outcome.into(),
        review_id,
    }
}

fn decode_replay(bytes: &[u8]) -> Result<CaptureLeadResponse, CaptureError> {
    CaptureLeadResponse::decode(bytes)
        .map_err(|err| CaptureError::Internal(anyhow::anyhow!("decode stored response: {err}")))
}

/// The source a request names, when it names one well-formed.
fn source_id_of(request: &CaptureLeadRequest) -> Option<String> {
    let input = request.lead.as_ref()?;
    let mut violations = FieldViolations::new();
    let source_id = parse_token(&mut violations, "lead.source", &input.source, true);
    violations.is_empty().then_some(source_id)
}

/// The `lead.rejected` event of a refused capture: where it came from and why, no personal
/// data.
fn rejected_event(request: &CaptureLeadRequest, violations: &FieldViolations) -> LeadRejected {
    let unnamed = LeadInput::default();
    let input = request.lead.as_ref().unwrap_or(&unnamed);
    LeadRejected {
        source: input.source.trim().to_lowercase(),
        channel: input.channel.trim().to_lowercase(),
        campaign: input.campaign.trim().to_owned(),
        reasons: violations
            .violations()
            .iter()
            .map(|violation| RejectionReason {
                field: violation.field.clone(),
                code: violation.reason.to_lowercase(),
            })
            .collect(),
    }
}

impl Capturer {
    /// Returns the use case over the stores, and the writer of its `lead.rejected` events
    /// (to run beside it).
    pub fn new(
        config: Arc<NormalizeConfig>,
        leads: LeadStore,
        sources: SourceStore,
    ) -> (Self, RejectionWriter) {
        let (rejections, writer) = Rejections::new(leads.clone());
        let capturer = Self {
            config,
            leads,
            sources,
            limits: RateLimits::default(),
            rejections,
        };
        (capturer, writer)
    }

    /// Returns the lead store.
    pub fn leads(&self) -> &LeadStore {
        &self.leads
    }

    /// Returns the source store.
    pub fn sources(&self) -> &SourceStore {
        &self.sources
    }

    /// Captures one lead. With an idempotency key, a retry returns the first answer.
    /// `rate_limited` applies the source's and the caller's rate limits (not for imports).
    pub async fn capture(
        &self,
        origin: &Origin,
        request: &CaptureLeadRequest,
        idempotency_key: Option<String>,
        rate_limited: bool,
    ) -> Result<CaptureLeadResponse, CaptureError> {
        let idempotency = idempotency_key.map(|key| Idempotency {
            caller: origin.caller.clone(),
            key,
            request_sha256: Sha256::digest(request.encode_to_vec()).to_vec(),
        });
        if let Some(idempotency) = &idempotency
            && let Some(bytes) = self.leads.replay(idempotency).await?
        {
            return decode_replay(&bytes);
        }
        if rate_limited {
            self.limits
                .check(
                    &format!("key:{}", origin.caller),
                    origin.caller_rate_per_minute,
                )
                .map_err(CaptureError::RateLimited)?;
        }
        let (source, mut capture) = match self.parse(request).await {
            Ok(parsed) => parsed,
            Err(CaptureError::Rejected(violations)) => {
                self.record_rejection(request, &violations).await;
                return Err(CaptureError::Rejected(violations));
            }
            Err(err) => return Err(err),
        };
        capture.caller = origin.caller.clone();
        if rate_limited {
            let per_minute =
                u32::try_from(source.settings.rate_limit_per_minute).unwrap_or_default();
            self.limits
                .check(&format!("source:{}", source.source_id), per_minute)
                .map_err(CaptureError::RateLimited)?;
        }
        let unmask = origin.unmask;
        let respond = move |captured: &Captured| response(captured, unmask).encode_to_vec();
        // Boxed: the store's future is several kB (every statement's binds, two retry
        // loops), and inline it was copied whole each time a future around it moved.
        match Box::pin(
            self.leads
                .capture(&source, &capture, idempotency.as_ref(), &respond),
        )
        .await
        {
            Ok(captured) => {
                // Debug, not info: a line per lead is the log's bulk under load (a write and
                // its JSON per call) and says what the `lead.captured`/`lead.merged` event and
                // the call's span already say.
                tracing::debug!(lead_id = %captured.lead.lead_id, source = %source.source_id, outcome = ?captured.outcome, "lead captured");
                Ok(response(&captured, unmask))
            }
            Err(StoreError::Replay) => {
                // A concurrent first request with this key committed first: answer as it did.
                let idempotency = idempotency
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("replay without a key"))?;
                let bytes = self.leads.replay(idempotency).await?;
                decode_replay(&bytes.ok_or_else(|| anyhow::anyhow!("first answer vanished"))?)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Parses a chunk of import rows against their sources (each source read once) and seals
    /// their personal data, on a blocking thread so this overlaps storing the chunk before.
    pub async fn prepare_import(
        &self,
        origin: &Origin,
        requests: Vec<CaptureLeadRequest>,
    ) -> Result<PreparedImport, CaptureError> {
        let caller = origin.caller.clone();
        let source_ids: Vec<Option<String>> = requests.iter().map(source_id_of).collect();
        let mut sources: HashMap<String, Option<Arc<SourcePolicy>>> = HashMap::new();
        for source_id in source_ids.iter().flatten() {
            if !sources.contains_key(source_id) {
                let source = self.sources.get(source_id).await?;
                sources.insert(
                    source_id.clone(),
                    source.map(|source| Arc::new(source.policy)),
                );
            }
        }
        let capturer = self.clone();
        let rows = tokio::task::spawn_blocking(move || {
            requests
                .into_iter()
                .zip(source_ids)
                .map(|(request, source_id)| {
                    let source = source_id.and_then(|id| sources.get(&id).cloned().flatten());
                    capturer.prepare_row(&request, source, &caller)
                })
                .collect()
        })
        .await
        .map_err(|err| anyhow::anyhow!("parse import rows: {err}"))?;
        Ok(PreparedImport { rows })
    }

    /// Parses and seals one import row against its source.
    fn prepare_row(
        &self,
        request: &CaptureLeadRequest,
        source: Option<Arc<SourcePolicy>>,
        caller: &str,
    ) -> ParsedRow {
        let parsed = self
            .parse_against(request, source.as_deref())
            .and_then(|mut capture| {
                let source = source.ok_or_else(|| anyhow::anyhow!("parsed without a source"))?;
                capture.caller = caller.to_owned();
                let sealed = self.leads.seal_row(&capture)?;
                Ok(ParsedRow::Ready(source, Box::new((capture, sealed))))
            });
        match parsed {
            Ok(ready) => ready,
            Err(CaptureError::Rejected(violations)) => {
                let event = rejected_event(request, &violations);
                ParsedRow::Rejected(violations, event)
            }
            Err(err) => ParsedRow::Failed(err),
        }
    }

    /// Stores a parsed chunk of import rows (set-based where it can) and says, per row and in
    /// order, what became of it.
    pub async fn store_import(
        &self,
        prepared: PreparedImport,
    ) -> Vec<Result<Batched, CaptureError>> {
        let mut rows = prepared.rows;
        let rejections: Vec<LeadRejected> = rows
            .iter_mut()
            .filter_map(|row| match row {
                ParsedRow::Rejected(_, event) => Some(std::mem::take(event)),
                _ => None,
            })
            .collect();
        if let Err(err) = self.leads.record_rejections(&rejections).await {
            tracing::warn!(error = format!("{err:#}"), "record lead.rejected");
        }
        let ready: Vec<BatchRow<'_>> = rows
            .iter()
            .filter_map(|row| match row {
                ParsedRow::Ready(source, ready) => Some((source.as_ref(), &ready.0, &ready.1)),
                _ => None,
            })
            .collect();
        let stored = self.leads.capture_batch(&ready).await;
        tracing::debug!(
            rows = rows.len(),
            stored = ready.len(),
            "import chunk stored"
        );
        let mut stored = stored.into_iter();
        rows.into_iter()
            .map(|row| match row {
                ParsedRow::Ready(..) => stored
                    .next()
                    .unwrap_or_else(|| Err(anyhow::anyhow!("a stored row went missing").into()))
                    .map_err(CaptureError::from),
                ParsedRow::Rejected(violations, _) => Err(CaptureError::Rejected(violations)),
                ParsedRow::Failed(err) => Err(err),
            })
            .collect()
    }

    /// Decides a held capture; merging it or keeping it parses it again against its source,
    /// whose rules it must still pass.
    pub async fn resolve_review(
        &self,
        caller: &str,
        review_id: Uuid,
        resolution: Resolution,
        note: &str,
    ) -> Result<Resolved, CaptureError> {
        let review = self
            .leads
            .review(review_id)
            .await?
            .ok_or(StoreError::Missing("merge review"))?;
        let held = match &review.request {
            Some(raw) if review.status == "pending" && resolution != Resolution::Discard => {
                let request = CaptureLeadRequest::decode(raw.as_slice())
                    .map_err(|err| anyhow::anyhow!("decode held request: {err}"))?;
                match self.parse(&request).await {
                    Ok((source, mut capture)) => {
                        capture.caller = review.caller.clone();
                        Some((source, capture))
                    }
                    Err(CaptureError::Rejected(violations)) => {
                        let reasons: Vec<String> = violations
                            .violations()
                            .iter()
                            .map(|violation| format!("{}: {}", violation.field, violation.reason))
                            .collect();
                        return Err(StoreError::FailedPrecondition(format!(
                            "the held capture no longer passes its source's rules ({}); discard it",
                            reasons.join(", ")
                        ))
                        .into());
                    }
                    Err(err) => return Err(err),
                }
            }
            _ => None,
        };
        let held = held.as_ref().map(|(source, capture)| (source, capture));
        Ok(self
            .leads
            .resolve(review_id, resolution, caller, note, held)
            .await?)
    }

    /// Records an activity of the person the request names (see `RecordActivity`), checked
    /// against its source; `rate_limited` applies the source's rate limit, in a budget of
    /// activities of its own so page views never use up the source's captures.
    pub async fn record_activity(
        &self,
        origin: &Origin,
        request: &RecordActivityRequest,
        rate_limited: bool,
    ) -> Result<RecordActivityResponse, CaptureError> {
        if rate_limited {
            // Activities have a budget of their own per key: a site's page views must not
            // spend the captures its forms are owed.
            self.limits
                .check(
                    &format!("activity-key:{}", origin.caller),
                    origin.caller_rate_per_minute,
                )
                .map_err(CaptureError::RateLimited)?;
        }
        // The source's own problems are reported by the parse below, with every other field.
        let mut source_violations = FieldViolations::new();
        let source_id = parse_token(&mut source_violations, "source", &request.source, true);
        let source = if source_violations.is_empty() {
            self.sources.get(&source_id).await?
        } else {
            None
        };
        let region = source
            .as_ref()
            .and_then(|source| source.policy.default_region)
            .unwrap_or(self.config.default_region);
        let parsed = NewActivity::parse(request, region, chrono::Utc::now());
        let mut violations = match &parsed {
            Ok(_) => FieldViolations::new(),
            Err(violations) => violations.clone(),
        };
        let source = match source {
            Some(source) => source.policy,
            None => {
                if !violations
                    .violations()
                    .iter()
                    .any(|violation| violation.field == "source")
                {
                    violations.reject("source", "UNKNOWN_SOURCE", "is not a registered source");
                }
                return Err(violations.into());
            }
        };
        let activity = match parsed {
            Ok(activity) if violations.is_empty() => activity,
            _ => return Err(violations.into()),
        };
        if rate_limited {
            let per_minute =
                u32::try_from(source.settings.rate_limit_per_minute).unwrap_or_default();
            self.limits
                .check(&format!("activity:{}", source.source_id), per_minute)
                .map_err(CaptureError::RateLimited)?;
        }
        let activity_id = activity.activity_id.unwrap_or_else(Uuid::now_v7);
        let fingerprint = self.leads.activity_fingerprint(&request.encode_to_vec());
        let stored = self
            .leads
            .record_activity(&activity, activity_id, &fingerprint, &origin.caller)
            .await?;
        let (outcome, lead_id) = match stored.recorded {
            Recorded::Lead(lead_id) => (ActivityOutcome::Recorded, lead_id.to_string()),
            Recorded::Anonymous => (ActivityOutcome::Anonymous, String::new()),
            Recorded::Suppressed => (ActivityOutcome::Suppressed, String::new()),
        };
        // What was done and how the person was named, never who or which page.
        tracing::info!(
            %activity_id,
            kind = kind_name(activity.kind),
            source = %source.source_id,
            named_by = activity.person.named_by(),
            outcome = outcome.as_str_name(),
            lead_id = %lead_id,
            "activity recorded"
        );
        Ok(RecordActivityResponse {
            activity_id: activity_id.to_string(),
            outcome: outcome.into(),
            lead_id,
            occurred_at: Some(convert::timestamp(stored.occurred_at)),
        })
    }

    async fn record_rejection(&self, request: &CaptureLeadRequest, violations: &FieldViolations) {
        self.rejections
            .record(rejected_event(request, violations))
            .await;
    }

    /// Parses a capture request against its source; every bad field is reported.
    async fn parse(
        &self,
        request: &CaptureLeadRequest,
    ) -> Result<(SourcePolicy, CaptureRequest), CaptureError> {
        let source = match source_id_of(request) {
            Some(source_id) => self.sources.get(&source_id).await?,
            None => None,
        };
        let policy = source.map(|source| source.policy);
        let capture = self.parse_against(request, policy.as_ref())?;
        let policy = policy.ok_or_else(|| anyhow::anyhow!("parsed without a source"))?;
        Ok((policy, capture))
    }

    /// Parses a capture request against its source (`None`: unknown or unnamed).
    fn parse_against(
        &self,
        request: &CaptureLeadRequest,
        source: Option<&SourcePolicy>,
    ) -> Result<CaptureRequest, CaptureError> {
        let mut violations = FieldViolations::new();
        let Some(input) = &request.lead else {
            violations.reject("lead", "REQUIRED", "is required");
            return Err(violations.into());
        };
        // Reported again here so an unnamed source is named among the violations.
        parse_token(&mut violations, "lead.source", &input.source, true);
        let Some(policy) = source.filter(|_| violations.is_empty()) else {
            if violations.is_empty() {
                violations.reject(
                    "lead.source",
                    "UNKNOWN_SOURCE",
                    "is not a registered source",
                );
            }
            // Still report every other bad field.
            if let Err(more) = NewLead::parse(input, self.config.default_region, "lead") {
                violations.extend(more.without("lead.source"));
            }
            return Err(violations.into());
        };
        let region = policy.default_region.unwrap_or(self.config.default_region);
        let lead = NewLead::parse(input, region, "lead");
        let consent = parse_consent(request.consent.as_ref());
        let attribution = parse_attribution(request.attribution.as_ref());
        let (lead, consent, attribution) = match (lead, consent, attribution) {
            (Ok(lead), Ok(consent), Ok(attribution)) => (lead, consent, attribution),
            (lead, consent, attribution) => {
                for failed in [lead.err(), consent.err(), attribution.err()]
                    .into_iter()
                    .flatten()
                {
                    violations.extend(failed);
                }
                return Err(violations.into());
            }
        };
        violations.extend(policy.check(&lead, consent.as_ref(), "lead"));
        if !violations.is_empty() {
            return Err(violations.into());
        }
        Ok(CaptureRequest {
            lead,
            attribution,
            consent,
            raw: request.encode_to_vec(),
            caller: String::new(),
        })
    }
}
