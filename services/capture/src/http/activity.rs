//! What the tracking snippet posts, turned into a `RecordActivity` request: a flat JSON object
//! naming the browser by its visitor id only. Pure: no I/O.
//!
//! The endpoint is public (a form key is no secret), so it takes neither a lead id nor an email
//! or phone: anyone could otherwise file activity under any person, and learn from the answer
//! whether they are known.

use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::{ActivityKind, RecordActivityRequest};

use crate::domain::activity::{kind_from_name, kind_name};
use crate::http::form::Posted;

/// A beacon read into a request, with the problems only the HTTP names can describe (an
/// unknown kind token, no visitor id).
#[derive(Debug, Clone, PartialEq)]
pub struct Beacon {
    pub request: RecordActivityRequest,
    /// Reported instead of the request's own violations of the same fields.
    pub violations: FieldViolations,
}

/// The kinds as the endpoint names them, for messages.
fn kind_tokens() -> String {
    (1..)
        .map_while(|number| ActivityKind::try_from(number).ok())
        .map(kind_name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the request of a beacon posted to `source_id`'s endpoint: `visitor_id`, `kind` (a
/// token such as `page_visit`), `url`, `title`, `asset`, `name`, `activity_id`; anything else
/// is ignored, the person's identity included.
pub fn activity_request(source_id: &str, posted: &Posted) -> Beacon {
    let mut violations = FieldViolations::new();
    let text = |name: &str| posted.value(name).unwrap_or_default().to_owned();
    let visitor_id = text("visitor_id");
    if visitor_id.is_empty() {
        violations.reject(
            "visitor_id",
            "REQUIRED",
            "the browser's visitor id (the lf_vid cookie) is required",
        );
    }
    let kind = match posted.value("kind") {
        None => {
            violations.reject(
                "kind",
                "REQUIRED",
                format!("must be one of {}", kind_tokens()),
            );
            ActivityKind::Unspecified
        }
        Some(token) => kind_from_name(token).unwrap_or_else(|| {
            violations.reject(
                "kind",
                "INVALID",
                format!("must be one of {}", kind_tokens()),
            );
            ActivityKind::Unspecified
        }),
    };
    Beacon {
        request: RecordActivityRequest {
            visitor_id,
            kind: kind.into(),
            name: text("name"),
            url: text("url"),
            title: text("title"),
            asset: text("asset"),
            source: source_id.to_owned(),
            activity_id: text("activity_id"),
            ..RecordActivityRequest::default()
        },
        violations,
    }
}

impl Beacon {
    /// Returns every problem of the beacon: its own first, then those the request was refused
    /// for, but for the fields this beacon already described (and the request's demand for a
    /// person, which here is the visitor id).
    pub fn all_violations(&self, refused: FieldViolations) -> FieldViolations {
        let mut all = self.violations.clone();
        let mut rest = refused.without("lead_id");
        for field in self.violations.violations() {
            rest = rest.without(&field.field);
        }
        all.extend(rest);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted(pairs: &[(&str, &str)]) -> Posted {
        Posted::from_pairs(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
    }

    #[test]
    fn a_beacon_names_the_visitor_only() {
        let beacon = activity_request(
            "website",
            &posted(&[
                ("visitor_id", "6f1c1e8e-2a44-4c55-9a3e-0d5c7f1f9b21"),
                ("kind", "Pricing_Page_View"),
                ("url", "https://acme.example/pricing?email=a@b.example"),
                ("title", " Pricing "),
                ("email", "a@b.example"),
                ("lead_id", "0190c1e8-0000-7000-8000-000000000000"),
            ]),
        );
        assert!(beacon.violations.is_empty());
        let request = beacon.request;
        assert_eq!(request.kind(), ActivityKind::PricingPageView);
        assert_eq!(request.visitor_id, "6f1c1e8e-2a44-4c55-9a3e-0d5c7f1f9b21");
        assert_eq!(request.title, "Pricing");
        assert_eq!(request.source, "website");
        assert_eq!(
            (request.email.as_str(), request.lead_id.as_str()),
            ("", ""),
            "never an identity from a public endpoint"
        );
    }

    #[test]
    fn its_own_problems_replace_the_requests_of_the_same_fields() {
        let beacon = activity_request("website", &posted(&[("kind", "visit")]));
        let fields: Vec<&str> = beacon
            .violations
            .violations()
            .iter()
            .map(|violation| violation.field.as_str())
            .collect();
        assert_eq!(fields, ["visitor_id", "kind"]);
        let mut refused = FieldViolations::new();
        refused.reject("lead_id", "REQUIRED", "name the person");
        refused.reject("kind", "REQUIRED", "must be one of …");
        refused.reject("url", "REQUIRED", "a page's URL is required");
        let all: Vec<(String, String)> = beacon
            .all_violations(refused)
            .violations()
            .iter()
            .map(|violation| (violation.field.clone(), violation.reason.clone()))
            .collect();
        assert_eq!(
            all,
            [
                ("visitor_id".to_owned(), "REQUIRED".to_owned()),
                ("kind".to_owned(), "INVALID".to_owned()),
                ("url".to_owned(), "REQUIRED".to_owned()),
            ]
        );
    }
}
