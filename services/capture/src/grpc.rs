//! The `leadflow.capture.v1.CaptureService` handlers: they parse, call the store, translate.

pub mod convert;

use leadflow_platform::auth::{Authenticator, Caller, Scope};
use leadflow_platform::validation::{FieldViolations, parse_uuid, require_uuid};
use leadflow_proto::capture::v1::capture_service_server::CaptureService;
use leadflow_proto::capture::v1::*;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::domain::lead::parse_token;
use crate::domain::source::SourcePolicy;
use crate::error::CaptureError;
use crate::service::{Capturer, Origin, PreparedImport};
use crate::store::StoreError;
use crate::store::leads::{Batched, Resolution};

/// Metadata key of a request's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// Rows of one import stored together, at most: larger batches gain little and every pooled
/// connection that stores one keeps buffers of its size (1,000 rows: RSS over 100 MB).
const IMPORT_BATCH: usize = 500;
/// How long a part-filled batch waits for more rows.
const IMPORT_LINGER: Duration = Duration::from_millis(20);

/// Serves capture's RPCs.
#[derive(Clone)]
pub struct CaptureApi {
    capturer: Capturer,
    auth: Authenticator,
    key_env: String,
    key_rate_per_minute: u32,
}

impl CaptureApi {
    /// Returns the API.
    pub fn new(
        capturer: Capturer,
        auth: Authenticator,
        key_env: String,
        key_rate_per_minute: u32,
    ) -> Self {
        Self {
            capturer,
            auth,
            key_env,
            key_rate_per_minute,
        }
    }

    fn origin<T>(&self, request: &Request<T>, scope: Scope) -> Result<Origin, Status> {
        let caller = caller(request, scope)?;
        Ok(Origin {
            unmask: caller.has(Scope::PiiRead),
            caller: caller.key_id,
            caller_rate_per_minute: self.key_rate_per_minute,
        })
    }
}

/// Returns a new public web-form key: `wf_` and 24 random base62 characters.
fn new_form_key() -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    let random: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("wf_{random}")
}

/// Says what happened to one imported row; a row's failure never fails the stream.
fn import_result(row: i64, stored: Result<Batched, CaptureError>) -> ImportLeadsResponse {
    let mut result = ImportLeadsResponse {
        row,
        ..ImportLeadsResponse::default()
    };
    match stored {
        Ok(Batched::Created(lead_id)) => {
            result.outcome = ImportOutcome::Accepted.into();
            result.lead_id = lead_id.to_string();
        }
        Ok(Batched::Merged(lead_id)) => {
            result.outcome = ImportOutcome::Merged.into();
            result.lead_id = lead_id.to_string();
        }
        Ok(Batched::InReview { lead_id, review_id }) => {
            result.outcome = ImportOutcome::InReview.into();
            result.lead_id = lead_id.to_string();
            result.review_id = review_id.to_string();
        }
        Err(CaptureError::Rejected(violations)) => {
            result.outcome = ImportOutcome::Rejected.into();
            result.violations = violations
                .violations()
                .iter()
                .map(|violation| RowViolation {
                    field: violation.field.clone(),
                    reason: violation.reason.clone(),
                    description: violation.description.clone(),
                })
                .collect();
        }
        Err(CaptureError::Store(StoreError::Duplicate(lead_id))) => {
            result.outcome = ImportOutcome::Duplicate.into();
            result.lead_id = lead_id.to_string();
        }
        Err(err) => {
            let status = Status::from(err);
            result.outcome = ImportOutcome::Failed.into();
            result.message = status.message().to_owned();
        }
    }
    result
}

/// Parses a chunk of rows; the rows and what became of those that cannot be stored.
async fn prepare_chunk(
    capturer: Capturer,
    origin: Origin,
    chunk: Vec<Result<ImportLeadsRequest, Status>>,
) -> (Vec<i64>, Result<PreparedImport, String>, Option<Status>) {
    let mut numbers = Vec::with_capacity(chunk.len());
    let mut requests = Vec::with_capacity(chunk.len());
    let mut broken = None;
    for row in chunk {
        match row {
            Ok(row) => {
                numbers.push(row.row);
                requests.push(row.capture.unwrap_or_default());
            }
            // The client's stream broke: answer the rows before it, then end.
            Err(status) => {
                broken = Some(status);
                break;
            }
        }
    }
    let prepared = capturer
        .prepare_import(&origin, requests)
        .await
        .map_err(|err| Status::from(err).message().to_owned());
    (numbers, prepared, broken)
}

/// Checks a page size: 1–500, 0 meaning 50.
fn page_size(violations: &mut FieldViolations, requested: i32) -> i32 {
    if !(0..=500).contains(&requested) {
        violations.reject("page_size", "OUT_OF_RANGE", "must be 1 to 500 (0 for 50)");
    }
    if requested <= 0 {
        50
    } else {
        requested.min(500)
    }
}

/// Parses a page token: empty for the first page, else the id the previous page ended at.
fn page_token(violations: &mut FieldViolations, token: &str) -> Option<uuid::Uuid> {
    match token.trim() {
        "" => None,
        token => uuid::Uuid::parse_str(token).map(Some).unwrap_or_else(|_| {
            violations.reject(
                "page_token",
                "INVALID",
                "is not a token from a previous page",
            );
            None
        }),
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

#[tonic::async_trait]
impl CaptureService for CaptureApi {
    async fn capture_lead(
        &self,
        request: Request<CaptureLeadRequest>,
    ) -> Result<Response<CaptureLeadResponse>, Status> {
        let origin = self.origin(&request, Scope::LeadsWrite)?;
        let key = idempotency_key(&request)?;
        let answer = self
            .capturer
            .capture(&origin, request.get_ref(), key, true)
            .await?;
        Ok(Response::new(answer))
    }

    type ImportLeadsStream =
        Pin<Box<dyn Stream<Item = Result<ImportLeadsResponse, Status>> + Send + 'static>>;

    async fn import_leads(
        &self,
        request: Request<Streaming<ImportLeadsRequest>>,
    ) -> Result<Response<Self::ImportLeadsStream>, Status> {
        let origin = self.origin(&request, Scope::LeadsWrite)?;
        let mut rows = request.into_inner();
        // A reader keeps taking rows off the connection while a batch is stored (the channel
        // bounds memory whatever the number of rows); batches are parsed one ahead on a
        // blocking thread and stored one after the other, in order, so a row sees every row
        // before it.
        let (sender, receiver) = tokio::sync::mpsc::channel(IMPORT_BATCH * 2);
        tokio::spawn(async move {
            while let Some(row) = rows.next().await {
                let broken = row.is_err();
                if sender.send(row).await.is_err() || broken {
                    return;
                }
            }
        });
        let capturer = self.capturer.clone();
        let storer = self.capturer.clone();
        let parser_origin = origin.clone();
        let chunks = tokio_stream::StreamExt::chunks_timeout(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
            IMPORT_BATCH,
            IMPORT_LINGER,
        );
        let results = chunks
            .map(move |chunk| {
                tokio::spawn(prepare_chunk(
                    capturer.clone(),
                    parser_origin.clone(),
                    chunk,
                ))
            })
            .buffered(2)
            .then(move |prepared| {
                let capturer = storer.clone();
                async move {
                    let (numbers, prepared, broken) = prepared
                        .map_err(|err| Status::internal(format!("parse import rows: {err}")))?;
                    let mut results: Vec<Result<ImportLeadsResponse, Status>> = match prepared {
                        Ok(prepared) => {
                            let stored = capturer.store_import(prepared).await;
                            numbers
                                .into_iter()
                                .zip(stored)
                                .map(|(row, stored)| Ok(import_result(row, stored)))
                                .collect()
                        }
                        Err(message) => numbers
                            .into_iter()
                            .map(|row| {
                                Ok(ImportLeadsResponse {
                                    row,
                                    outcome: ImportOutcome::Failed.into(),
                                    message: message.clone(),
                                    ..ImportLeadsResponse::default()
                                })
                            })
                            .collect(),
                    };
                    results.extend(broken.map(Err));
                    Ok::<_, Status>(futures::stream::iter(results))
                }
            })
            .flat_map(|answered| match answered {
                Ok(results) => results.left_stream(),
                Err(status) => futures::stream::once(async { Err(status) }).right_stream(),
            });
        Ok(Response::new(Box::pin(results)))
    }

    async fn record_activity(
        &self,
        request: Request<RecordActivityRequest>,
    ) -> Result<Response<RecordActivityResponse>, Status> {
        let origin = self.origin(&request, Scope::LeadsWrite)?;
        let answer = self
            .capturer
            .record_activity(&origin, request.get_ref(), true)
            .await?;
        Ok(Response::new(answer))
    }

    async fn list_activities(
        &self,
        request: Request<ListActivitiesRequest>,
    ) -> Result<Response<ListActivitiesResponse>, Status> {
        let caller = caller(&request, Scope::LeadsRead)?;
        let request = request.into_inner();
        let mut violations = FieldViolations::new();
        let lead_id = parse_uuid(&mut violations, "lead_id", &request.lead_id);
        let page_size = page_size(&mut violations, request.page_size);
        let after = page_token(&mut violations, &request.page_token);
        let Some(lead_id) = lead_id.filter(|_| violations.is_empty()) else {
            return Err(violations.into_status("request rejected"));
        };
        tracing::Span::current().record("lead_id", tracing::field::display(lead_id));
        let (lead_id, activities, next) = self
            .capturer
            .leads()
            .list_activities(lead_id, page_size, after)
            .await
            .map_err(CaptureError::from)?
            .ok_or(CaptureError::Store(StoreError::NotFound))?;
        let unmask = caller.has(Scope::PiiRead);
        Ok(Response::new(ListActivitiesResponse {
            lead_id: lead_id.to_string(),
            activities: activities
                .into_iter()
                .map(|activity| convert::activity(activity, unmask))
                .collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_leads(
        &self,
        request: Request<ListLeadsRequest>,
    ) -> Result<Response<ListLeadsResponse>, Status> {
        let caller = caller(&request, Scope::LeadsRead)?;
        let request = request.into_inner();
        let mut violations = FieldViolations::new();
        let source = parse_token(&mut violations, "source", &request.source, false);
        let page_size = page_size(&mut violations, request.page_size);
        let after = page_token(&mut violations, &request.page_token);
        if !violations.is_empty() {
            return Err(violations.into_status("request rejected"));
        }
        let (leads, next) = self
            .capturer
            .leads()
            .list(
                Some(source.as_str()).filter(|source| !source.is_empty()),
                page_size,
                after,
            )
            .await
            .map_err(CaptureError::from)?;
        let unmask = caller.has(Scope::PiiRead);
        Ok(Response::new(ListLeadsResponse {
            leads: leads
                .into_iter()
                .map(|view| convert::lead(view, unmask))
                .collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_lead(
        &self,
        request: Request<GetLeadRequest>,
    ) -> Result<Response<GetLeadResponse>, Status> {
        let caller = caller(&request, Scope::LeadsRead)?;
        let lead_id =
            require_uuid("lead_id", &request.get_ref().lead_id).map_err(CaptureError::from)?;
        tracing::Span::current().record("lead_id", tracing::field::display(lead_id));
        let view = self
            .capturer
            .leads()
            .get(lead_id)
            .await
            .map_err(CaptureError::from)?;
        let view = view.ok_or(CaptureError::Store(StoreError::NotFound))?;
        Ok(Response::new(GetLeadResponse {
            lead: Some(convert::lead(view, caller.has(Scope::PiiRead))),
        }))
    }

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
            .capturer
            .leads()
            .erase(lead_id, reason, &caller.key_id)
            .await
            .map_err(CaptureError::from)?;
        // The call's span names the caller and the lead.
        tracing::info!("lead erased");
        Ok(Response::new(EraseLeadResponse {
            lead_id: lead_id.to_string(),
            erased_at: Some(convert::timestamp(erased_at)),
        }))
    }

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
            .capturer
            .leads()
            .source_of(lead_id)
            .await
            .map_err(CaptureError::from)?;
        let source_id = source_id.ok_or(CaptureError::Store(StoreError::NotFound))?;
        let source = self
            .capturer
            .sources()
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
            .capturer
            .leads()
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

    async fn list_merge_reviews(
        &self,
        request: Request<ListMergeReviewsRequest>,
    ) -> Result<Response<ListMergeReviewsResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let request = request.into_inner();
        let mut violations = FieldViolations::new();
        let status = match MergeReviewStatus::try_from(request.status) {
            Ok(status) => convert::review_status_name(status).unwrap_or("pending"),
            Err(_) => {
                violations.reject(
                    "status",
                    "INVALID",
                    "must be PENDING, MERGED, KEPT_SEPARATE or DISCARDED",
                );
                "pending"
            }
        };
        let page_size = page_size(&mut violations, request.page_size);
        let after = page_token(&mut violations, &request.page_token);
        if !violations.is_empty() {
            return Err(violations.into_status("request rejected"));
        }
        let (reviews, next) = self
            .capturer
            .leads()
            .list_reviews(status, page_size, after)
            .await
            .map_err(CaptureError::from)?;
        Ok(Response::new(ListMergeReviewsResponse {
            reviews: reviews.into_iter().map(convert::merge_review).collect(),
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn resolve_merge_review(
        &self,
        request: Request<ResolveMergeReviewRequest>,
    ) -> Result<Response<ResolveMergeReviewResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let request = request.into_inner();
        let mut violations = FieldViolations::new();
        let review_id = leadflow_platform::validation::parse_uuid(
            &mut violations,
            "review_id",
            &request.review_id,
        );
        let resolution = match MergeResolution::try_from(request.resolution) {
            Ok(MergeResolution::Merge) => Some(Resolution::Merge),
            Ok(MergeResolution::KeepSeparate) => Some(Resolution::KeepSeparate),
            Ok(MergeResolution::Discard) => Some(Resolution::Discard),
            Ok(MergeResolution::Unspecified) | Err(_) => {
                violations.reject(
                    "resolution",
                    "REQUIRED",
                    "must be MERGE, KEEP_SEPARATE or DISCARD",
                );
                None
            }
        };
        let note = request.note.trim();
        if note.chars().count() > 500 || leadflow_platform::validation::has_control_characters(note)
        {
            violations.reject(
                "note",
                "INVALID",
                "must be at most 500 printable characters",
            );
        }
        let (Some(review_id), Some(resolution)) = (review_id, resolution) else {
            return Err(violations.into_status("request rejected"));
        };
        if !violations.is_empty() {
            return Err(violations.into_status("request rejected"));
        }
        tracing::Span::current().record("review_id", tracing::field::display(review_id));
        let resolved = self
            .capturer
            .resolve_review(&caller.key_id, review_id, resolution, note)
            .await?;
        let unmask = caller.has(Scope::PiiRead);
        Ok(Response::new(ResolveMergeReviewResponse {
            review: Some(convert::merge_review(resolved.review)),
            lead: resolved.lead.map(|view| convert::lead(view, unmask)),
        }))
    }

    async fn unmerge_lead(
        &self,
        request: Request<UnmergeLeadRequest>,
    ) -> Result<Response<UnmergeLeadResponse>, Status> {
        let caller = caller(&request, Scope::Admin)?;
        let merge_id =
            require_uuid("merge_id", &request.get_ref().merge_id).map_err(CaptureError::from)?;
        tracing::Span::current().record("merge_id", tracing::field::display(merge_id));
        let (lead, restored) = self
            .capturer
            .leads()
            .unmerge(merge_id, &caller.key_id)
            .await
            .map_err(CaptureError::from)?;
        let unmask = caller.has(Scope::PiiRead);
        Ok(Response::new(UnmergeLeadResponse {
            lead: Some(convert::lead(lead, unmask)),
            restored: Some(convert::lead(restored, unmask)),
        }))
    }

    async fn create_source(
        &self,
        request: Request<CreateSourceRequest>,
    ) -> Result<Response<CreateSourceResponse>, Status> {
        caller(&request, Scope::Admin)?;
        let request = request.into_inner();
        let mut policy = SourcePolicy::parse(&request.source_id, request.settings)
            .map_err(CaptureError::from)?;
        if let Some(form) = policy.settings.web_form.as_mut() {
            form.form_key = new_form_key();
        }
        let created = self
            .capturer
            .sources()
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
        let mut policy = SourcePolicy::parse(&request.source_id, request.settings)
            .map_err(CaptureError::from)?;
        let existing = self
            .capturer
            .sources()
            .get(&policy.source_id)
            .await
            .map_err(CaptureError::from)?;
        let existing =
            existing.ok_or_else(|| Status::not_found(format!("no source {}", policy.source_id)))?;
        if let Some(form) = policy.settings.web_form.as_mut() {
            // The form key is the form's address: it stays as it was, or is made now.
            form.form_key = existing
                .policy
                .form_key()
                .map(str::to_owned)
                .unwrap_or_else(new_form_key);
        }
        let updated = self
            .capturer
            .sources()
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
        let sources = self
            .capturer
            .sources()
            .list()
            .await
            .map_err(CaptureError::from)?;
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
        if request.name.trim().is_empty()
            || request.name.chars().count() > 200
            || request.name.chars().any(char::is_control)
        {
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
