//! The `leadflow.capture.v1.CaptureService` handlers: they parse, call the store, translate.

pub mod convert;

use std::sync::Arc;

use leadflow_platform::auth::{Authenticator, Caller, Scope};
use leadflow_platform::validation::{FieldViolations, require_uuid};
use leadflow_proto::capture::v1::capture_service_server::CaptureService;
use leadflow_proto::capture::v1::*;
use leadflow_proto::events::v1::RejectionReason;
use prost::Message;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};

use crate::domain::evidence::{parse_attribution, parse_consent};
use crate::domain::lead::{NewLead, NormalizeConfig, parse_token};
use crate::domain::source::SourcePolicy;
use crate::error::CaptureError;
use crate::store::leads::Idempotency;
use crate::store::{CaptureRequest, Captured, LeadStore, Outcome, SourceStore, StoreError};

/// Metadata key of a request's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// Serves capture's RPCs.
#[derive(Clone)]
pub struct CaptureApi {
    config: Arc<NormalizeConfig>,
    leads: LeadStore,
    sources: SourceStore,
    auth: Authenticator,
    key_env: String,
}

impl CaptureApi {
    /// Returns the API.
    pub fn new(
        config: Arc<NormalizeConfig>,
        leads: LeadStore,
        sources: SourceStore,
        auth: Authenticator,
        key_env: String,
    ) -> Self {
        Self {
            config,
            leads,
            sources,
            auth,
            key_env,
        }
    }

    /// Parses a capture request against its source; every bad field is reported.
    async fn parse_capture(
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
            },
        ))
    }
}

fn caller<T>(request: &Request<T>, scope: Scope) -> Result<Caller, Status> {
    Caller::require(request, scope).cloned()
}

fn idempotency_key<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default().trim().to_owned();
    if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS {
        let mut violations = FieldViolations::new();
        violations.reject(
            IDEMPOTENCY_KEY,
            "INVALID",
            "must be 1–128 printable ASCII characters",
        );
        return Err(violations.into_status("request rejected"));
    }
    Ok(Some(key))
}

fn capture_response(captured: &Captured, unmask: bool) -> CaptureLeadResponse {
    CaptureLeadResponse {
        lead: Some(convert::lead(captured.lead.clone(), unmask)),
        outcome: match captured.outcome {
            Outcome::Created => CaptureOutcome::Created,
            Outcome::Merged => CaptureOutcome::Merged,
        }
        .into(),
    }
}

fn decode_replay(bytes: &[u8]) -> Result<Response<CaptureLeadResponse>, Status> {
    CaptureLeadResponse::decode(bytes)
        .map(Response::new)
        .map_err(|err| {
            CaptureError::Internal(anyhow::anyhow!("decode stored response: {err}")).into()
        })
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

#[tonic::async_trait]
impl CaptureService for CaptureApi {
    #[tracing::instrument(skip_all, fields(lead_id, key_id))]
    async fn capture_lead(
        &self,
        request: Request<CaptureLeadRequest>,
    ) -> Result<Response<CaptureLeadResponse>, Status> {
        let caller = caller(&request, Scope::LeadsWrite)?;
        tracing::Span::current().record("key_id", caller.key_id.as_str());
        let unmask = caller.has(Scope::PiiRead);
        let key = idempotency_key(&request)?;
        let request = request.into_inner();
        let idempotency = key.map(|key| Idempotency {
            caller: caller.key_id.clone(),
            key,
            request_sha256: Sha256::digest(request.encode_to_vec()).to_vec(),
        });
        if let Some(idempotency) = &idempotency
            && let Some(bytes) = self
                .leads
                .replay(idempotency)
                .await
                .map_err(CaptureError::from)?
        {
            return decode_replay(&bytes);
        }
        let (source, capture) = match self.parse_capture(&request).await {
            Ok(parsed) => parsed,
            Err(CaptureError::Rejected(violations)) => {
                let input = request.lead.clone().unwrap_or_default();
                let recorded = self
                    .leads
                    .record_rejection(
                        &input.source.trim().to_lowercase(),
                        &input.channel.trim().to_lowercase(),
                        input.campaign.trim(),
                        rejection_reasons(&violations),
                    )
                    .await;
                if let Err(err) = recorded {
                    tracing::warn!(error = format!("{err:#}"), "record lead.rejected");
                }
                return Err(CaptureError::Rejected(violations).into());
            }
            Err(err) => return Err(err.into()),
        };
        let respond = move |captured: &Captured| capture_response(captured, unmask).encode_to_vec();
        let captured = match self
            .leads
            .capture(&source, &capture, idempotency.as_ref(), &respond)
            .await
        {
            Ok(captured) => captured,
            Err(StoreError::FailedPrecondition(why)) if why == "replay" => {
                // A concurrent first request with this key committed first: answer as it did.
                let idempotency = idempotency
                    .as_ref()
                    .ok_or_else(|| Status::internal("internal error"))?;
                let bytes = self
                    .leads
                    .replay(idempotency)
                    .await
                    .map_err(CaptureError::from)?;
                return decode_replay(&bytes.ok_or_else(|| Status::aborted("retry"))?);
            }
            Err(err) => return Err(CaptureError::from(err).into()),
        };
        tracing::Span::current().record("lead_id", tracing::field::display(captured.lead.lead_id));
        tracing::info!(source = %source.source_id, outcome = ?captured.outcome, "lead captured");
        Ok(Response::new(capture_response(&captured, unmask)))
    }

    #[tracing::instrument(skip_all, fields(lead_id))]
    async fn get_lead(
        &self,
        request: Request<GetLeadRequest>,
    ) -> Result<Response<GetLeadResponse>, Status> {
        let caller = caller(&request, Scope::LeadsRead)?;
        let lead_id =
            require_uuid("lead_id", &request.get_ref().lead_id).map_err(CaptureError::from)?;
        tracing::Span::current().record("lead_id", tracing::field::display(lead_id));
        let view = self.leads.get(lead_id).await.map_err(CaptureError::from)?;
        let view = view.ok_or(CaptureError::Store(StoreError::NotFound))?;
        Ok(Response::new(GetLeadResponse {
            lead: Some(convert::lead(view, caller.has(Scope::PiiRead))),
        }))
    }

    #[tracing::instrument(skip_all, fields(lead_id))]
    async fn erase_lead(
        &self,
        request: Request<EraseLeadRequest>,
    ) -> Result<Response<EraseLeadResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let request = request.into_inner();
        let lead_id = require_uuid("lead_id", &request.lead_id);
        let reason = request.reason.trim();
        let mut violations = FieldViolations::new();
        if reason.is_empty() || reason.chars().count() > 200 || reason.chars().any(char::is_control)
        {
            violations.reject(
                "reason",
                "REQUIRED",
                "say why, in at most 200 printable characters",
            );
        }
        let lead_id = match lead_id {
            Ok(lead_id) if violations.is_empty() => lead_id,
            Ok(_) => return Err(violations.into_status("request rejected")),
            Err(mut bad) => {
                bad.extend(violations);
                return Err(bad.into_status("request rejected"));
            }
        };
        tracing::Span::current().record("lead_id", tracing::field::display(lead_id));
        let erased_at = self
            .leads
            .erase(lead_id, reason, &caller.key_id)
            .await
            .map_err(CaptureError::from)?;
        tracing::info!(key_id = %caller.key_id, "lead erased");
        Ok(Response::new(EraseLeadResponse {
            lead_id: lead_id.to_string(),
            erased_at: Some(convert::timestamp(erased_at)),
        }))
    }

    #[tracing::instrument(skip_all, fields(lead_id))]
    async fn return_lead(
        &self,
        request: Request<ReturnLeadRequest>,
    ) -> Result<Response<ReturnLeadResponse>, Status> {
        caller(&request, Scope::LeadsWrite)?;
        let request = request.into_inner();
        let mut violations = FieldViolations::new();
        let lead_id =
            leadflow_platform::validation::parse_uuid(&mut violations, "lead_id", &request.lead_id);
        let reason = ReturnReason::try_from(request.reason).unwrap_or_default();
        if reason == ReturnReason::Unspecified {
            violations.reject(
                "reason",
                "REQUIRED",
                "must be BAD_DATA, DUPLICATE, NOT_INTERESTED, FRAUD or OUT_OF_AREA",
            );
        }
        if request.note.chars().count() > 2000 {
            violations.reject("note", "TOO_LONG", "must be at most 2,000 characters");
        }
        let lead_id = violations
            .into_result(lead_id)
            .map_err(CaptureError::from)?;
        let Some(lead_id) = lead_id else {
            return Err(Status::invalid_argument("lead_id is required"));
        };
        let source_id = self
            .leads
            .source_of(lead_id)
            .await
            .map_err(CaptureError::from)?;
        let source_id = source_id.ok_or(CaptureError::Store(StoreError::NotFound))?;
        let source = self
            .sources
            .get(&source_id)
            .await
            .map_err(CaptureError::from)?;
        let source = source
            .ok_or_else(|| CaptureError::Internal(anyhow::anyhow!("lead's source is gone")))?;
        let reason_code = reason
            .as_str_name()
            .trim_start_matches("RETURN_REASON_")
            .to_lowercase();
        let returned = self
            .leads
            .return_lead(lead_id, &source.policy, &reason_code)
            .await
            .map_err(CaptureError::from)?;
        Ok(Response::new(ReturnLeadResponse {
            lead_id: lead_id.to_string(),
            returned_at: Some(convert::timestamp(returned.returned_at)),
            credit_micros: returned.credit_micros,
            currency: returned.currency,
        }))
    }

    async fn create_source(
        &self,
        request: Request<CreateSourceRequest>,
    ) -> Result<Response<CreateSourceResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let request = request.into_inner();
        let policy = SourcePolicy::parse(&request.source_id, request.settings)
            .map_err(CaptureError::from)?;
        let created = self
            .sources
            .create(&policy)
            .await
            .map_err(CaptureError::from)?;
        let created = created
            .ok_or_else(|| Status::already_exists(format!("source {} exists", policy.source_id)))?;
        tracing::info!(source = %policy.source_id, "source created");
        Ok(Response::new(CreateSourceResponse {
            source: Some(convert::source(created)),
        }))
    }

    async fn update_source(
        &self,
        request: Request<UpdateSourceRequest>,
    ) -> Result<Response<UpdateSourceResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let request = request.into_inner();
        let policy = SourcePolicy::parse(&request.source_id, request.settings)
            .map_err(CaptureError::from)?;
        let updated = self
            .sources
            .update(&policy)
            .await
            .map_err(CaptureError::from)?;
        let updated =
            updated.ok_or_else(|| Status::not_found(format!("no source {}", policy.source_id)))?;
        Ok(Response::new(UpdateSourceResponse {
            source: Some(convert::source(updated)),
        }))
    }

    async fn list_sources(
        &self,
        request: Request<ListSourcesRequest>,
    ) -> Result<Response<ListSourcesResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let sources = self.sources.list().await.map_err(CaptureError::from)?;
        Ok(Response::new(ListSourcesResponse {
            sources: sources.into_iter().map(convert::source).collect(),
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let request = request.into_inner();
        let mut violations = FieldViolations::new();
        if request.name.trim().is_empty() || request.name.chars().count() > 200 {
            violations.reject("name", "REQUIRED", "is required, at most 200 characters");
        }
        let mut scopes = Vec::new();
        for name in &request.scopes {
            match name.parse::<Scope>() {
                Ok(scope) => scopes.push(scope),
                Err(_) => violations.reject(
                    "scopes",
                    "UNKNOWN_SCOPE",
                    format!("`{name}` is not leads:write, leads:read, pii:read or admin"),
                ),
            }
        }
        if request.scopes.is_empty() {
            violations.reject("scopes", "REQUIRED", "name at least one scope");
        }
        let expires_at = match &request.expires_at {
            None => None,
            Some(at) => match chrono::DateTime::from_timestamp(
                at.seconds,
                at.nanos.clamp(0, 999_999_999) as u32,
            ) {
                Some(at) if at > chrono::Utc::now() => Some(at),
                _ => {
                    violations.reject("expires_at", "IN_THE_PAST", "must be a time in the future");
                    None
                }
            },
        };
        if !violations.is_empty() {
            return Err(violations.into_status("request rejected"));
        }
        let (info, secret) = self
            .auth
            .store()
            .create(request.name.trim(), &self.key_env, &scopes, expires_at)
            .await
            .map_err(|err| CaptureError::Internal(err.into()))?;
        Ok(Response::new(CreateApiKeyResponse {
            key: Some(convert::api_key(info)),
            secret: secrecy::ExposeSecret::expose_secret(&secret).to_owned(),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let key_id = request.into_inner().key_id.trim().to_owned();
        if key_id.is_empty() {
            let mut violations = FieldViolations::new();
            violations.reject("key_id", "REQUIRED", "is required");
            return Err(violations.into_status("request rejected"));
        }
        let store = self.auth.store();
        store
            .revoke(&key_id)
            .await
            .map_err(|err| CaptureError::Internal(err.into()))?;
        self.auth.forget(&key_id).await;
        let info = store
            .get(&key_id)
            .await
            .map_err(|err| CaptureError::Internal(err.into()))?;
        let info = info.ok_or_else(|| Status::not_found("no such api key"))?;
        Ok(Response::new(RevokeApiKeyResponse {
            key: Some(convert::api_key(info)),
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let keys = self
            .auth
            .store()
            .list()
            .await
            .map_err(|err| CaptureError::Internal(err.into()))?;
        Ok(Response::new(ListApiKeysResponse {
            keys: keys.into_iter().map(convert::api_key).collect(),
        }))
    }
}
