//! Field-level validation errors that become `INVALID_ARGUMENT` with `google.rpc.BadRequest`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// One bad field: its dotted path (e.g. `lead.email`), a reason code (SCREAMING_SNAKE,
/// e.g. `REQUIRED`) and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub reason: String,
    pub description: String,
}

/// Collects every bad field of a request before answering, so a client fixes all at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldViolations(Vec<FieldViolation>);

impl FieldViolations {
    /// Returns an empty collection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is bad because of `description` (reason `INVALID`).
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.reject(field, "INVALID", description);
    }

    /// Records that `field` is bad for `reason` (a SCREAMING_SNAKE code), explained by
    /// `description`.
    pub fn reject(
        &mut self,
        field: impl Into<String>,
        reason: &str,
        description: impl Into<String>,
    ) {
        self.0.push(FieldViolation {
            field: field.into(),
            reason: reason.to_owned(),
            description: description.into(),
        });
    }

    /// Returns these violations but those of `field`.
    pub fn without(self, field: &str) -> Self {
        Self(
            self.0
                .into_iter()
                .filter(|violation| violation.field != field)
                .collect(),
        )
    }

    /// Appends every violation of `other`.
    pub fn extend(&mut self, other: FieldViolations) {
        self.0.extend(other.0);
    }

    /// Returns whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the recorded violations in order.
    pub fn violations(&self) -> &[FieldViolation] {
        &self.0
    }

    /// Returns `Ok(value)` when nothing was recorded, else the violations.
    pub fn into_result<T>(self, value: T) -> Result<T, FieldViolations> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Converts into an `INVALID_ARGUMENT` status carrying a `BadRequest`.
    pub fn into_status(self, message: &str) -> Status {
        let violations: Vec<tonic_types::FieldViolation> = self
            .0
            .into_iter()
            .map(|violation| tonic_types::FieldViolation {
                field: violation.field,
                description: violation.description,
                reason: violation.reason,
                localized_message: None,
            })
            .collect();
        Status::with_error_details(
            Code::InvalidArgument,
            message,
            ErrorDetails::with_bad_request(violations),
        )
    }
}

/// Returns whether `text` has control characters other than line breaks and tabs. Free text
/// with them is refused: NUL cannot even be stored in Postgres text.
pub fn has_control_characters(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// Parses a UUID request field, recording a violation when it is missing or malformed.
pub fn parse_uuid(
    violations: &mut FieldViolations,
    field: &str,
    value: &str,
) -> Option<uuid::Uuid> {
    if value.trim().is_empty() {
        violations.reject(field, "REQUIRED", "is required");
        return None;
    }
    match uuid::Uuid::parse_str(value.trim()) {
        Ok(id) => Some(id),
        Err(_) => {
            violations.add(field, "must be a UUID");
            None
        }
    }
}

/// Parses a required UUID field on its own, for requests whose only input is an id.
pub fn require_uuid(field: &str, value: &str) -> Result<uuid::Uuid, FieldViolations> {
    let mut violations = FieldViolations::new();
    match parse_uuid(&mut violations, field, value) {
        Some(id) => Ok(id),
        None => Err(violations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_one_violation_per_field_in_order() {
        let mut violations = FieldViolations::new();
        violations.add("lead.email", "is not an email address");
        violations.add("lead.phone", "is not a phone number");
        let status = violations.into_status("lead rejected");
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("bad request details")
            .field_violations
            .into_iter()
            .map(|violation| violation.field)
            .collect();
        assert_eq!(fields, ["lead.email", "lead.phone"]);
    }

    #[test]
    fn uuid_fields_are_required_and_parsed() {
        let mut violations = FieldViolations::new();
        assert_eq!(parse_uuid(&mut violations, "lead_id", ""), None);
        assert_eq!(parse_uuid(&mut violations, "lead_id", "nope"), None);
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            parse_uuid(&mut violations, "lead_id", &id.to_string()),
            Some(id)
        );
        let descriptions: Vec<&str> = violations
            .violations()
            .iter()
            .map(|violation| violation.description.as_str())
            .collect();
        assert_eq!(descriptions, ["is required", "must be a UUID"]);
    }
}
