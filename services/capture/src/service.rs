//! The capture use case shared by every channel (gRPC, imports, web forms): parse against the
//! source, check rate limits, store with dedupe and idempotency, answer.

use std::sync::Arc;

use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::{CaptureLeadRequest, CaptureLeadResponse, CaptureOutcome};
use leadflow_proto::events::v1::RejectionReason;
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::evidence::{parse_attribution, parse_consent};
use crate::domain::lead::{NewLead, NormalizeConfig, parse_token};
use crate::domain::source::SourcePolicy;
use crate::error::CaptureError;
use crate::grpc::convert;
use crate::limits::RateLimits;
use crate::store::leads::{Idempotency, Resolution, Resolved};
use crate::store::{CaptureRequest, Captured, LeadStore, Outcome, SourceStore, StoreError};

/// Who captures: the API key id (or `form:<source>` for web forms) and whether they may see
/// personal data.
#[derive(Debug, Clone)]
pub struct Origin {
    pub caller: String,
    pub unmask: bool,
    /// Captures per minute allowed for this caller; 0 means unlimited.
    pub caller_rate_per_minute: u32,
}

/// Captures leads for every channel.
#[derive(Clone)]
pub struct Capturer {
    config: Arc<NormalizeConfig>,
    leads: LeadStore,
    sources: SourceStore,
    limits: RateLimits,
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

fn rejection_reasons(violations: &FieldViolations) -> Vec<RejectionReason> {
    violations
        .violations()
        .iter()
        .map(|violation| RejectionReason {
            field: violation.field.clone(),
            code: violation.reason.to_lowercase(),
        })
        .collect()
}

impl Capturer {
    /// Returns the use case over the stores.
    pub fn new(config: Arc<NormalizeConfig>, leads: LeadStore, sources: SourceStore) -> Self {
        Self {
            config,
            leads,
            sources,
            limits: RateLimits::default(),
        }
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
        match self
            .leads
            .capture(&source, &capture, idempotency.as_ref(), &respond)
            .await
        {
            Ok(captured) => {
                tracing::info!(lead_id = %captured.lead.lead_id, source = %source.source_id, outcome = ?captured.outcome, "lead captured");
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

    async fn record_rejection(&self, request: &CaptureLeadRequest, violations: &FieldViolations) {
        let input = request.lead.clone().unwrap_or_default();
        let recorded = self
            .leads
            .record_rejection(
                &input.source.trim().to_lowercase(),
                &input.channel.trim().to_lowercase(),
                input.campaign.trim(),
                rejection_reasons(violations),
            )
            .await;
        if let Err(err) = recorded {
            tracing::warn!(error = format!("{err:#}"), "record lead.rejected");
        }
    }

    /// Parses a capture request against its source; every bad field is reported.
    async fn parse(
        &self,
        request: &CaptureLeadRequest,
    ) -> Result<(SourcePolicy, CaptureRequest), CaptureError> {
        let mut violations = FieldViolations::new();
        let Some(input) = &request.lead else {
            violations.reject("lead", "REQUIRED", "is required");
            return Err(violations.into());
        };
        let source_id = parse_token(&mut violations, "lead.source", &input.source, true);
        let source = if violations.is_empty() {
            self.sources.get(&source_id).await?
        } else {
            None
        };
        let Some(source) = source else {
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
        let policy = source.policy;
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
        Ok((
            policy,
            CaptureRequest {
                lead,
                attribution,
                consent,
                raw: request.encode_to_vec(),
                caller: String::new(),
            },
        ))
    }
}
