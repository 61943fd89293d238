//! An activity as a client reports it (a page visit, a download, webinar attendance, …),
//! parsed: who did it, what, where and when. Nothing personal survives parsing but the
//! identity used to find the person: the page's query string and fragment are dropped here.

use chrono::{DateTime, Duration, SubsecRound, Utc};
use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::{ActivityKind, RecordActivityRequest};
use phonenumber::country::Id as Region;
use uuid::Uuid;

use crate::domain::lead::{
    Email, Phone, parse_email, parse_phone, parse_region, parse_text, parse_token,
};

/// Longest page title kept.
const MAX_TITLE_CHARS: usize = 300;
/// Longest asset (file, webinar, video) name.
const MAX_ASSET_CHARS: usize = 200;
/// Longest URL accepted, before it is reduced.
const MAX_URL_CHARS: usize = 2048;
/// How far ahead of the server's clock an activity may be dated (clients' clocks drift).
const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);
/// What a path segment that looks like it carries an email address becomes.
const REDACTED_SEGMENT: &str = "redacted";

/// Who did it: exactly one of these names the person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Person {
    /// A lead's id (a lead merged into another names the lead it is part of).
    Lead(Uuid),
    /// A browser's tracking cookie.
    Visitor(Uuid),
    /// Contact details, normalized as capture normalizes them; at least one is present.
    Identity {
        email: Option<Email>,
        phone: Option<Phone>,
    },
}

impl Person {
    /// Returns how the person was named, for logs: `lead`, `visitor` or `identity`.
    pub fn named_by(&self) -> &'static str {
        match self {
            Person::Lead(_) => "lead",
            Person::Visitor(_) => "visitor",
            Person::Identity { .. } => "identity",
        }
    }
}

/// An activity ready to store: every field checked, the URL reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewActivity {
    /// The client's id for it, making retries idempotent; `None` when it chose none.
    pub activity_id: Option<Uuid>,
    pub person: Person,
    pub kind: ActivityKind,
    /// For [`ActivityKind::Other`]: a token naming it; empty otherwise.
    pub name: String,
    /// The file, webinar or video; empty when none.
    pub asset: String,
    /// Scheme, host and path of the page; empty when none.
    pub url: String,
    pub title: String,
    pub occurred_at: DateTime<Utc>,
    /// The source, as a token (whether it is registered is checked by the caller).
    pub source: String,
}

/// Returns the stored name of a kind (`page_visit`, `pricing_page_view`, …); empty for
/// [`ActivityKind::Unspecified`].
pub fn kind_name(kind: ActivityKind) -> String {
    if kind == ActivityKind::Unspecified {
        return String::new();
    }
    kind.as_str_name()
        .trim_start_matches("ACTIVITY_KIND_")
        .to_lowercase()
}

/// Returns the kind a stored or posted name (`page_visit`, any case) stands for.
pub fn kind_from_name(name: &str) -> Option<ActivityKind> {
    let upper = name.trim().to_uppercase();
    if upper.is_empty() || !upper.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return None;
    }
    ActivityKind::from_str_name(&format!("ACTIVITY_KIND_{upper}"))
        .filter(|kind| *kind != ActivityKind::Unspecified)
}

/// Every kind but `UNSPECIFIED`, as `PAGE_VISIT, …` for messages.
fn kind_names() -> String {
    (1..)
        .map_while(|number| ActivityKind::try_from(number).ok())
        .map(|kind| kind.as_str_name().trim_start_matches("ACTIVITY_KIND_"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a kind is about a page, whose URL is then required.
fn needs_url(kind: ActivityKind) -> bool {
    matches!(
        kind,
        ActivityKind::PageVisit | ActivityKind::PricingPageView
    )
}

/// Whether a kind is about a thing (file, webinar, video), whose name is then required.
fn needs_asset(kind: ActivityKind) -> bool {
    matches!(
        kind,
        ActivityKind::Download
            | ActivityKind::WebinarRegistered
            | ActivityKind::WebinarAttended
            | ActivityKind::VideoWatched
    )
}

/// Reduces a page URL to scheme, host (and port) and path: the query string, fragment and any
/// user name or password are dropped, and a path segment carrying an `@` (an email address,
/// most likely) is replaced. Empty stays empty.
pub fn reduce_url(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.chars().count() > MAX_URL_CHARS {
        return Err("must be at most 2048 characters");
    }
    let mut parsed = url::Url::parse(trimmed).map_err(|_| "is not an absolute URL")?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("must be an http(s) URL with a host");
    }
    parsed.set_query(None);
    parsed.set_fragment(None);
    // Cannot fail on an http(s) URL with a host.
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    let personal = |segment: &str| segment.contains('@') || segment.to_lowercase().contains("%40");
    let segments: Option<Vec<String>> = parsed.path_segments().map(|segments| {
        segments
            .map(|segment| {
                if personal(segment) {
                    REDACTED_SEGMENT.to_owned()
                } else {
                    segment.to_owned()
                }
            })
            .collect()
    });
    if let Some(segments) = segments
        && segments.iter().any(|segment| segment == REDACTED_SEGMENT)
    {
        parsed.set_path(&format!("/{}", segments.join("/")));
    }
    Ok(parsed.to_string())
}

/// Parses an optional UUID field; a nil UUID is refused as well.
fn parse_optional_uuid(
    violations: &mut FieldViolations,
    field: &str,
    reason: &str,
    raw: &str,
) -> Option<Uuid> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return None;
    }
    match Uuid::parse_str(trimmed) {
        Ok(id) if !id.is_nil() => Some(id),
        _ => {
            violations.reject(field, reason, "must be a UUID");
            None
        }
    }
}

/// Parses when it happened: `now` when absent; never more than [`MAX_CLOCK_SKEW`] ahead of
/// `now`, nor before 2000.
fn parse_occurred_at(
    violations: &mut FieldViolations,
    given: Option<&prost_types::Timestamp>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let Some(given) = given else {
        return now;
    };
    let at = u32::try_from(given.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(given.seconds, nanos));
    let earliest = DateTime::from_timestamp(946_684_800, 0).unwrap_or(now);
    match at {
        Some(at) if at > now + MAX_CLOCK_SKEW => {
            violations.reject(
                "occurred_at",
                "IN_THE_FUTURE",
                "must not be more than 5 minutes ahead of the server's clock",
            );
            now
        }
        Some(at) if at < earliest => {
            violations.reject("occurred_at", "OUT_OF_RANGE", "must be after 2000-01-01");
            now
        }
        Some(at) => at,
        None => {
            violations.reject("occurred_at", "OUT_OF_RANGE", "is not a valid timestamp");
            now
        }
    }
}

impl NewActivity {
    /// Parses `request`, reading national phone numbers in `default_region` unless the request
    /// names one and dating it `now` unless it says when; every bad field is reported.
    pub fn parse(
        request: &RecordActivityRequest,
        default_region: Region,
        now: DateTime<Utc>,
    ) -> Result<Self, FieldViolations> {
        let mut violations = FieldViolations::new();

        // Who: exactly one way of naming the person.
        let named: Vec<&str> = [
            ("lead_id", request.lead_id.trim().is_empty()),
            ("visitor_id", request.visitor_id.trim().is_empty()),
            (
                "email",
                request.email.trim().is_empty() && request.phone.trim().is_empty(),
            ),
        ]
        .into_iter()
        .filter(|(_, blank)| !blank)
        .map(|(field, _)| field)
        .collect();
        match named.as_slice() {
            [] => violations.reject(
                "lead_id",
                "REQUIRED",
                "name the person: lead_id, visitor_id, or email and/or phone",
            ),
            [_] => {}
            [_, others @ ..] => {
                for other in others {
                    let field = if *other == "email" && request.email.trim().is_empty() {
                        "phone"
                    } else {
                        other
                    };
                    violations.reject(
                        field,
                        "ONE_PERSON",
                        "name the person one way only: lead_id, visitor_id, or email and/or phone",
                    );
                }
            }
        }
        let lead_id = parse_optional_uuid(&mut violations, "lead_id", "INVALID", &request.lead_id);
        let visitor_id = parse_optional_uuid(
            &mut violations,
            "visitor_id",
            "INVALID_VISITOR_ID",
            &request.visitor_id,
        );
        let email = parse_email(&request.email).unwrap_or_else(|reason| {
            violations.reject("email", "INVALID_EMAIL", reason);
            None
        });
        let region = match request.phone_region.trim() {
            "" => Some(default_region),
            given => parse_region(given).or_else(|| {
                violations.reject(
                    "phone_region",
                    "INVALID_REGION",
                    "must be an ISO 3166-1 alpha-2 region",
                );
                None
            }),
        };
        let phone = match region {
            Some(region) => parse_phone(&request.phone, region).unwrap_or_else(|reason| {
                violations.reject("phone", "INVALID_PHONE", reason);
                None
            }),
            None => None,
        };

        // What.
        let kind = match ActivityKind::try_from(request.kind) {
            Ok(ActivityKind::Unspecified) => {
                violations.reject(
                    "kind",
                    "REQUIRED",
                    format!("must be one of {}", kind_names()),
                );
                ActivityKind::Unspecified
            }
            Ok(kind) => kind,
            Err(_) => {
                violations.reject(
                    "kind",
                    "INVALID",
                    format!("must be one of {}", kind_names()),
                );
                ActivityKind::Unspecified
            }
        };
        let name = if kind == ActivityKind::Other {
            parse_token(&mut violations, "name", &request.name, true)
        } else {
            if !request.name.trim().is_empty() {
                violations.reject(
                    "name",
                    "NOT_ALLOWED",
                    "only OTHER activities carry a name; the kind says what this one is",
                );
            }
            String::new()
        };
        let url = reduce_url(&request.url).unwrap_or_else(|reason| {
            violations.reject("url", "INVALID_URL", reason);
            String::new()
        });
        if needs_url(kind) && request.url.trim().is_empty() {
            violations.reject("url", "REQUIRED", "a page's URL is required");
        }
        let title = parse_text(&mut violations, "title", &request.title, MAX_TITLE_CHARS);
        let asset = parse_text(&mut violations, "asset", &request.asset, MAX_ASSET_CHARS);
        if needs_asset(kind) && asset.is_empty() {
            violations.reject(
                "asset",
                "REQUIRED",
                "name the file, webinar or video it was about",
            );
        }

        // When, through which source, under which id.
        // Postgres keeps microseconds: the answer says what a retry will read back.
        let occurred_at =
            parse_occurred_at(&mut violations, request.occurred_at.as_ref(), now).trunc_subsecs(6);
        let source = parse_token(&mut violations, "source", &request.source, true);
        let activity_id = parse_optional_uuid(
            &mut violations,
            "activity_id",
            "INVALID",
            &request.activity_id,
        );

        if !violations.is_empty() {
            return Err(violations);
        }
        let person = match (lead_id, visitor_id) {
            (Some(lead_id), _) => Person::Lead(lead_id),
            (None, Some(visitor_id)) => Person::Visitor(visitor_id),
            (None, None) if email.is_some() || phone.is_some() => Person::Identity { email, phone },
            (None, None) => {
                violations.reject(
                    "lead_id",
                    "REQUIRED",
                    "name the person: lead_id, visitor_id, or email and/or phone",
                );
                return Err(violations);
            }
        };
        Ok(NewActivity {
            activity_id,
            person,
            kind,
            name,
            asset,
            url,
            title,
            occurred_at,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("time")
    }

    fn visit() -> RecordActivityRequest {
        RecordActivityRequest {
            visitor_id: "6f1c1e8e-2a44-4c55-9a3e-0d5c7f1f9b21".into(),
            kind: ActivityKind::PageVisit.into(),
            url: "https://www.acme.example/pricing?email=a%40b.example#top".into(),
            title: "Pricing".into(),
            source: "website".into(),
            ..RecordActivityRequest::default()
        }
    }

    fn fields(violations: &FieldViolations) -> Vec<(&str, &str)> {
        violations
            .violations()
            .iter()
            .map(|violation| (violation.field.as_str(), violation.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_page_visit_keeps_scheme_host_and_path_only() {
        let parsed = NewActivity::parse(&visit(), Region::US, now()).expect("valid");
        assert_eq!(parsed.url, "https://www.acme.example/pricing");
        assert_eq!(
            parsed.person,
            Person::Visitor(Uuid::parse_str("6f1c1e8e-2a44-4c55-9a3e-0d5c7f1f9b21").expect("id"))
        );
        assert_eq!(
            parsed.occurred_at,
            now(),
            "dated now when the client says nothing"
        );
        assert_eq!(parsed.kind, ActivityKind::PageVisit);
    }

    #[test]
    fn urls_lose_what_may_be_personal() {
        for (raw, reduced) in [
            ("https://acme.example", "https://acme.example/"),
            (
                "HTTPS://User:Secret@WWW.Acme.Example:8443/a/b?x=1#frag",
                "https://www.acme.example:8443/a/b",
            ),
            (
                "https://acme.example/unsubscribe/ada%40example.com/confirm",
                "https://acme.example/unsubscribe/redacted/confirm",
            ),
            (
                "https://acme.example/u/ada@example.com",
                "https://acme.example/u/redacted",
            ),
            (
                "http://127.0.0.1:3000/page.html?q=1",
                "http://127.0.0.1:3000/page.html",
            ),
            ("", ""),
        ] {
            assert_eq!(reduce_url(raw).as_deref(), Ok(reduced), "{raw}");
        }
        for bad in [
            "acme.example/page",
            "ftp://acme.example/file",
            "javascript:alert(1)",
            "mailto:ada@example.com",
            "https://",
        ] {
            assert!(reduce_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases: Vec<(RecordActivityRequest, Vec<(&str, &str)>)> = vec![
            (
                RecordActivityRequest {
                    visitor_id: String::new(),
                    ..visit()
                },
                vec![("lead_id", "REQUIRED")],
            ),
            (
                RecordActivityRequest {
                    lead_id: uuid::Uuid::now_v7().to_string(),
                    email: "ada@acme.example".into(),
                    ..visit()
                },
                vec![("visitor_id", "ONE_PERSON"), ("email", "ONE_PERSON")],
            ),
            (
                RecordActivityRequest {
                    visitor_id: "not-a-uuid".into(),
                    ..visit()
                },
                vec![("visitor_id", "INVALID_VISITOR_ID")],
            ),
            (
                RecordActivityRequest {
                    visitor_id: Uuid::nil().to_string(),
                    ..visit()
                },
                vec![("visitor_id", "INVALID_VISITOR_ID")],
            ),
            (
                RecordActivityRequest {
                    visitor_id: String::new(),
                    email: "nope".into(),
                    phone: "12".into(),
                    ..visit()
                },
                vec![("email", "INVALID_EMAIL"), ("phone", "INVALID_PHONE")],
            ),
            (
                RecordActivityRequest {
                    visitor_id: String::new(),
                    phone: "415 555 0100".into(),
                    phone_region: "XX".into(),
                    ..visit()
                },
                vec![("phone_region", "INVALID_REGION")],
            ),
            (
                RecordActivityRequest { kind: 0, ..visit() },
                vec![("kind", "REQUIRED")],
            ),
            (
                RecordActivityRequest {
                    kind: 99,
                    ..visit()
                },
                vec![("kind", "INVALID")],
            ),
            (
                RecordActivityRequest {
                    name: "signup".into(),
                    ..visit()
                },
                vec![("name", "NOT_ALLOWED")],
            ),
            (
                RecordActivityRequest {
                    kind: ActivityKind::Other.into(),
                    url: String::new(),
                    ..visit()
                },
                vec![("name", "REQUIRED")],
            ),
            (
                RecordActivityRequest {
                    kind: ActivityKind::Other.into(),
                    name: "Trial Started!".into(),
                    ..visit()
                },
                vec![("name", "INVALID_TOKEN")],
            ),
            (
                RecordActivityRequest {
                    url: String::new(),
                    ..visit()
                },
                vec![("url", "REQUIRED")],
            ),
            (
                RecordActivityRequest {
                    url: "javascript:alert(1)".into(),
                    ..visit()
                },
                vec![("url", "INVALID_URL")],
            ),
            (
                RecordActivityRequest {
                    title: "x".repeat(301),
                    ..visit()
                },
                vec![("title", "TOO_LONG")],
            ),
            (
                RecordActivityRequest {
                    kind: ActivityKind::Download.into(),
                    ..visit()
                },
                vec![("asset", "REQUIRED")],
            ),
            (
                RecordActivityRequest {
                    asset: "a\u{0}b".into(),
                    ..visit()
                },
                vec![("asset", "CONTROL_CHARACTERS")],
            ),
            (
                RecordActivityRequest {
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: now().timestamp() + 3600,
                        nanos: 0,
                    }),
                    ..visit()
                },
                vec![("occurred_at", "IN_THE_FUTURE")],
            ),
            (
                RecordActivityRequest {
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: 0,
                        nanos: -1,
                    }),
                    ..visit()
                },
                vec![("occurred_at", "OUT_OF_RANGE")],
            ),
            (
                RecordActivityRequest {
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: 100,
                        nanos: 0,
                    }),
                    ..visit()
                },
                vec![("occurred_at", "OUT_OF_RANGE")],
            ),
            (
                RecordActivityRequest {
                    source: String::new(),
                    ..visit()
                },
                vec![("source", "REQUIRED")],
            ),
            (
                RecordActivityRequest {
                    activity_id: "retry-1".into(),
                    ..visit()
                },
                vec![("activity_id", "INVALID")],
            ),
        ];
        for (request, expected) in cases {
            let violations =
                NewActivity::parse(&request, Region::US, now()).expect_err("a bad request");
            assert_eq!(fields(&violations), expected, "{request:?}");
        }
    }

    #[test]
    fn identities_are_normalized_as_capture_normalizes_them() {
        let parsed = NewActivity::parse(
            &RecordActivityRequest {
                visitor_id: String::new(),
                email: " Ada@Acme.Example ".into(),
                phone: "030 901820".into(),
                ..visit()
            },
            Region::DE,
            now(),
        )
        .expect("valid");
        let Person::Identity { email, phone } = parsed.person else {
            panic!("named by identity");
        };
        assert_eq!(
            email.map(|email| email.address).as_deref(),
            Some("ada@acme.example")
        );
        assert_eq!(
            phone.map(|phone| phone.e164).as_deref(),
            Some("+4930901820")
        );
    }

    #[test]
    fn kind_names_round_trip() {
        for number in 1..=7 {
            let kind = ActivityKind::try_from(number).expect("kind");
            assert_eq!(kind_from_name(&kind_name(kind)), Some(kind));
        }
        assert_eq!(
            kind_name(ActivityKind::PricingPageView),
            "pricing_page_view"
        );
        assert_eq!(kind_from_name("Download"), Some(ActivityKind::Download));
        for bad in [
            "",
            "unspecified",
            "page visit",
            "PAGE-VISIT",
            "ACTIVITY_KIND_DOWNLOAD",
        ] {
            assert_eq!(kind_from_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_event_kind_has_the_same_values() {
        for number in 0..=7 {
            let ours = ActivityKind::try_from(number).expect("kind");
            let theirs = leadflow_proto::events::v1::ActivityKind::try_from(number).expect("kind");
            assert_eq!(ours.as_str_name(), theirs.as_str_name());
        }
        assert!(ActivityKind::try_from(8).is_err());
        assert!(leadflow_proto::events::v1::ActivityKind::try_from(8).is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_never_keeps_a_query(
            url in ".{0,80}", text in ".{0,40}", id in ".{0,40}", kind in -2..10i32,
            seconds in proptest::num::i64::ANY, nanos in proptest::num::i32::ANY,
        ) {
            let request = RecordActivityRequest {
                lead_id: id.clone(),
                visitor_id: id.clone(),
                email: text.clone(),
                phone: text.clone(),
                phone_region: text.clone(),
                kind,
                name: text.clone(),
                url: url.clone(),
                title: text.clone(),
                asset: text.clone(),
                occurred_at: Some(prost_types::Timestamp { seconds, nanos }),
                source: text,
                activity_id: id,
            };
            match NewActivity::parse(&request, Region::US, now()) {
                Ok(parsed) => {
                    prop_assert!(!parsed.url.contains('?') && !parsed.url.contains('#'));
                    prop_assert!(!parsed.url.contains('@'));
                }
                Err(violations) => prop_assert!(!violations.is_empty()),
            }
            if let Ok(reduced) = reduce_url(&url) {
                prop_assert!(!reduced.contains('?') && !reduced.contains('#') && !reduced.contains('@'));
            }
        }
    }
}
