//! capture's errors and how they become gRPC statuses.

use leadflow_platform::pii::PiiError;
use leadflow_platform::validation::FieldViolations;
use tonic::Status;
use tonic_types::StatusExt;

use crate::store::StoreError;

/// Everything a capture operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The request had bad fields; nothing was stored.
    #[error("request rejected")]
    Rejected(FieldViolations),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A rate limit is spent; retry after the duration.
    #[error("rate limited")]
    RateLimited(std::time::Duration),
    /// Something on our side failed; logged once, masked for the caller.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<FieldViolations> for CaptureError {
    fn from(violations: FieldViolations) -> Self {
        CaptureError::Rejected(violations)
    }
}

/// Returns whether `source` is the database pool running out of connections: the service is
/// overloaded, and the caller may retry later.
pub fn is_overloaded(source: &anyhow::Error) -> bool {
    source.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::PoolTimedOut)
        )
    })
}

fn internal(source: &anyhow::Error) -> Status {
    if is_overloaded(source) {
        tracing::warn!("capture overloaded: no database connection in time");
        return Status::unavailable("capture is overloaded; retry with backoff");
    }
    let missing_key = source
        .chain()
        .filter_map(|cause| cause.downcast_ref::<PiiError>())
        .any(PiiError::is_missing_key);
    if missing_key {
        // A configuration problem, not a bug: say so, so it is not mistaken for damaged data.
        tracing::error!(
            error = format!("{source:#}"),
            "personal data is wrapped by a key-encryption key capture is not configured with: \
             add it to CAPTURE_PII_PREVIOUS_KEYS (see README, Rotating the PII key)"
        );
        return Status::internal(
            "this lead's personal data is wrapped by a key-encryption key the server is not configured with",
        );
    }
    leadflow_platform::grpc::failure_status(source, "capture failed")
}

impl From<CaptureError> for Status {
    fn from(err: CaptureError) -> Self {
        match err {
            CaptureError::Rejected(violations) => violations.into_status("request rejected"),
            CaptureError::Store(StoreError::Duplicate(lead_id)) => {
                Status::already_exists(format!("duplicate of lead {lead_id}"))
            }
            CaptureError::Store(StoreError::Suppressed) => Status::failed_precondition(
                "this person asked to be erased; capture them again only with fresh consent",
            ),
            CaptureError::Store(StoreError::IdempotencyMismatch) => {
                let mut violations = FieldViolations::new();
                violations.reject(
                    "idempotency-key",
                    "IDEMPOTENCY_KEY_REUSED",
                    "was used before with a different request",
                );
                violations.into_status("request rejected")
            }
            CaptureError::Store(StoreError::ActivityIdReused) => {
                let mut violations = FieldViolations::new();
                violations.reject(
                    "activity_id",
                    "ACTIVITY_ID_REUSED",
                    "was recorded before with a different request",
                );
                violations.into_status("request rejected")
            }
            CaptureError::Store(StoreError::NotFound) => Status::not_found("lead not found"),
            CaptureError::Store(StoreError::Missing(what)) => {
                Status::not_found(format!("{what} not found"))
            }
            CaptureError::RateLimited(wait) => Status::with_error_details(
                tonic::Code::ResourceExhausted,
                "rate limit reached; retry later",
                tonic_types::ErrorDetails::with_retry_info(Some(wait)),
            ),
            // The capture use case answers a replay itself; reaching here means the first
            // answer vanished in between (its lead was erased): the client may retry.
            CaptureError::Store(StoreError::Replay) => Status::aborted("retry the request"),
            CaptureError::Store(StoreError::FailedPrecondition(why)) => {
                Status::failed_precondition(why)
            }
            CaptureError::Store(StoreError::Internal(source)) | CaptureError::Internal(source) => {
                internal(&source)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(error: sqlx::Error) -> tonic::Code {
        let error = anyhow::Error::new(error).context("select known lead");
        Status::from(CaptureError::Store(StoreError::Internal(error))).code()
    }

    #[test]
    fn a_database_gone_away_is_unavailable_and_a_failing_statement_internal() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(status_of(sqlx::Error::Io(reset)), tonic::Code::Unavailable);
        assert_eq!(
            status_of(sqlx::Error::PoolTimedOut),
            tonic::Code::Unavailable
        );
        assert_eq!(status_of(sqlx::Error::PoolClosed), tonic::Code::Unavailable);
        assert_eq!(status_of(sqlx::Error::RowNotFound), tonic::Code::Internal);
        assert_eq!(
            status_of(sqlx::Error::Protocol("unexpected message".to_owned())),
            tonic::Code::Internal
        );
    }
}
