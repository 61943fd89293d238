//! capture's errors and how they become gRPC statuses.

use leadflow_platform::validation::FieldViolations;
use tonic::Status;

/// Everything a capture operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The request had bad fields; nothing was stored.
    #[error("request rejected")]
    Rejected(FieldViolations),
    /// No lead has that id.
    #[error("lead not found")]
    NotFound,
    /// Something on our side failed; logged once, masked for the caller.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<FieldViolations> for CaptureError {
    fn from(violations: FieldViolations) -> Self {
        CaptureError::Rejected(violations)
    }
}

impl From<CaptureError> for Status {
    fn from(err: CaptureError) -> Self {
        match err {
            CaptureError::Rejected(violations) => violations.into_status("request rejected"),
            CaptureError::NotFound => Status::not_found("lead not found"),
            CaptureError::Internal(source) => {
                tracing::error!(error = format!("{source:#}"), "capture failed");
                Status::internal("internal error")
            }
        }
    }
}
