//! Sources and the acceptance rules a lead must pass at the door.

use std::str::FromStr;

use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::{ConsentChannel, DedupeMode, SourceKind, SourceSettings};
use phonenumber::country::Id as Region;

use crate::domain::evidence::Consent;
use crate::domain::lead::{EmailKind, NewLead, parse_token};

/// Lead fields a source may require or map onto.
pub const LEAD_FIELDS: [&str; 13] = [
    "email",
    "phone",
    "first_name",
    "last_name",
    "company",
    "source",
    "channel",
    "campaign",
    "phone_region",
    "country",
    "website",
    "job_title",
    "visitor_id",
];

const MAX_RATE_PER_MINUTE: i32 = 1_000_000;
const MAX_WINDOW_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// What to do when a known person is captured again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dedupe {
    /// Merge into the existing lead.
    Merge,
    /// Reject when the person was captured within the window, merge when older.
    RejectWithin(chrono::Duration),
}

/// A registered source's settings, checked.
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    pub source_id: String,
    pub settings: SourceSettings,
    pub default_region: Option<Region>,
    pub dedupe: Dedupe,
}

impl SourcePolicy {
    /// Checks `settings` for source `source_id`; every bad field is reported.
    pub fn parse(
        source_id: &str,
        settings: Option<SourceSettings>,
    ) -> Result<Self, FieldViolations> {
        let mut violations = FieldViolations::new();
        let source_id = parse_token(&mut violations, "source_id", source_id, true);
        let Some(settings) = settings else {
            violations.reject("settings", "REQUIRED", "is required");
            return Err(violations);
        };
        if settings.name.trim().is_empty() || settings.name.chars().count() > 200 {
            violations.reject(
                "settings.name",
                "REQUIRED",
                "is required, at most 200 characters",
            );
        }
        if SourceKind::try_from(settings.kind).unwrap_or_default() == SourceKind::Unspecified {
            violations.reject(
                "settings.kind",
                "REQUIRED",
                "must be FORM, VENDOR, PARTNER or IMPORT",
            );
        }
        for (theirs, ours) in &settings.field_mapping {
            if theirs.trim().is_empty() || theirs.chars().count() > 128 {
                violations.reject(
                    "settings.field_mapping",
                    "INVALID_MAPPING",
                    "source field names are 1–128 characters",
                );
            }
            if !LEAD_FIELDS.contains(&ours.as_str()) {
                violations.reject(
                    "settings.field_mapping",
                    "UNKNOWN_FIELD",
                    format!("`{ours}` is not a lead field ({})", LEAD_FIELDS.join(", ")),
                );
            }
        }
        let default_region = match settings.default_phone_region.trim() {
            "" => None,
            region => Region::from_str(&region.to_uppercase()).ok().or_else(|| {
                violations.reject(
                    "settings.default_phone_region",
                    "INVALID_REGION",
                    "must be an ISO 3166-1 alpha-2 region",
                );
                None
            }),
        };
        for required in &settings.required_fields {
            if !LEAD_FIELDS.contains(&required.as_str()) {
                violations.reject(
                    "settings.required_fields",
                    "UNKNOWN_FIELD",
                    format!("`{required}` is not a lead field"),
                );
            }
        }
        let rules = settings.rules.clone().unwrap_or_default();
        for country in &rules.countries {
            if country.len() != 2 || Region::from_str(&country.to_uppercase()).is_err() {
                violations.reject(
                    "settings.rules.countries",
                    "INVALID_COUNTRY",
                    format!("`{country}` is not an ISO 3166-1 alpha-2 country"),
                );
            }
        }
        if rules.required_consent.iter().any(|channel| {
            ConsentChannel::try_from(*channel).unwrap_or_default() == ConsentChannel::Unspecified
        }) {
            violations.reject(
                "settings.rules.required_consent",
                "INVALID_CHANNEL",
                "must be EMAIL, SMS or CALL",
            );
        }
        let policy = settings.dedupe.unwrap_or_default();
        let dedupe = match DedupeMode::try_from(policy.mode).unwrap_or_default() {
            DedupeMode::Merge | DedupeMode::Unspecified => Dedupe::Merge,
            DedupeMode::Reject => {
                if !(1..=MAX_WINDOW_SECONDS).contains(&policy.window_seconds) {
                    violations.reject(
                        "settings.dedupe.window_seconds",
                        "OUT_OF_RANGE",
                        "must be 1 second to 10 years for REJECT",
                    );
                }
                Dedupe::RejectWithin(chrono::Duration::seconds(
                    policy.window_seconds.clamp(1, MAX_WINDOW_SECONDS),
                ))
            }
        };
        if !(0..=MAX_RATE_PER_MINUTE).contains(&settings.rate_limit_per_minute) {
            violations.reject(
                "settings.rate_limit_per_minute",
                "OUT_OF_RANGE",
                "must be 0 (no limit) to 1,000,000",
            );
        }
        if settings.cost_per_lead_micros < 0 {
            violations.reject(
                "settings.cost_per_lead_micros",
                "OUT_OF_RANGE",
                "must not be negative",
            );
        }
        let currency = settings.currency.trim();
        let currency_ok = currency.is_empty()
            || (currency.len() == 3 && currency.chars().all(|c| c.is_ascii_uppercase()));
        if !currency_ok {
            violations.reject(
                "settings.currency",
                "INVALID_CURRENCY",
                "must be an ISO 4217 code such as USD",
            );
        }
        if let Some(form) = &settings.web_form {
            for origin in &form.allowed_origins {
                let valid = url::Url::parse(origin).is_ok_and(|url| {
                    matches!(url.scheme(), "http" | "https")
                        && url.host_str().is_some()
                        && url.path() == "/"
                        && !origin.ends_with('/')
                });
                if !valid {
                    violations.reject(
                        "settings.web_form.allowed_origins",
                        "INVALID_ORIGIN",
                        format!("`{origin}` is not an origin such as https://www.example.com"),
                    );
                }
            }
            if !form.thank_you_url.is_empty()
                && crate::domain::lead::parse_url(&form.thank_you_url).is_err()
            {
                violations.reject(
                    "settings.web_form.thank_you_url",
                    "INVALID_URL",
                    "must be an http(s) URL",
                );
            }
            let honeypot = form.honeypot_field.trim();
            if honeypot.chars().count() > 64
                || honeypot
                    .chars()
                    .any(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            {
                violations.reject(
                    "settings.web_form.honeypot_field",
                    "INVALID",
                    "must be a field name of at most 64 of a-z, 0-9, `_`, `-`",
                );
            }
        }
        if !(0..=3650).contains(&settings.return_window_days) {
            violations.reject(
                "settings.return_window_days",
                "OUT_OF_RANGE",
                "must be 0 to 3650 days",
            );
        }
        violations.into_result(SourcePolicy {
            source_id,
            settings,
            default_region,
            dedupe,
        })
    }

    /// Returns the public key of the source's web form, when it has one.
    pub fn form_key(&self) -> Option<&str> {
        self.settings
            .web_form
            .as_ref()
            .map(|form| form.form_key.as_str())
            .filter(|key| !key.is_empty())
    }

    /// Checks a parsed lead against the source's required fields and acceptance rules; every
    /// failure is reported under `prefix`.
    pub fn check(
        &self,
        lead: &NewLead,
        consent: Option<&Consent>,
        prefix: &str,
    ) -> FieldViolations {
        let mut violations = FieldViolations::new();
        let field = |name: &str| format!("{prefix}.{name}");
        for required in &self.settings.required_fields {
            let present = match required.as_str() {
                "email" => lead.email.is_some(),
                "phone" => lead.phone.is_some(),
                "first_name" => !lead.first_name.is_empty(),
                "last_name" => !lead.last_name.is_empty(),
                "company" => !lead.company.is_empty(),
                "campaign" => !lead.campaign.is_empty(),
                "country" => !lead.country.is_empty(),
                "website" => !lead.website.is_empty(),
                "job_title" => !lead.job_title.is_empty(),
                "visitor_id" => lead.visitor_id.is_some(),
                _ => true,
            };
            if !present {
                violations.reject(field(required), "REQUIRED", "is required by the source");
            }
        }
        let rules = self.settings.rules.clone().unwrap_or_default();
        if !rules.countries.is_empty() {
            let accepted = lead.effective_country().is_some_and(|country| {
                rules
                    .countries
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(country))
            });
            if !accepted {
                violations.reject(
                    field("country"),
                    "COUNTRY_NOT_ACCEPTED",
                    format!("must be one of {}", rules.countries.join(", ")),
                );
            }
        }
        if let Some(email) = &lead.email {
            if rules.reject_disposable_email && email.kind == EmailKind::Disposable {
                violations.reject(
                    field("email"),
                    "DISPOSABLE_EMAIL",
                    "disposable email domains are not accepted",
                );
            }
            if rules.reject_free_email && email.kind == EmailKind::Free {
                violations.reject(
                    field("email"),
                    "FREE_EMAIL",
                    "free mailbox domains are not accepted",
                );
            }
        }
        if rules.require_mobile_phone && !lead.phone.as_ref().is_some_and(|phone| phone.is_mobile())
        {
            violations.reject(
                field("phone"),
                "PHONE_NOT_MOBILE",
                "a mobile phone number is required",
            );
        }
        for channel in &rules.required_consent {
            let covered = consent.is_some_and(|consent| consent.channels.contains(channel));
            if !covered {
                let name = ConsentChannel::try_from(*channel)
                    .map(|channel| {
                        channel
                            .as_str_name()
                            .trim_start_matches("CONSENT_CHANNEL_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                violations.reject(
                    "consent.channels",
                    "CONSENT_REQUIRED",
                    format!("consent to {name} is required by the source"),
                );
            }
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use leadflow_proto::capture::v1::{AcceptanceRules, DedupePolicy, LeadInput};

    use super::*;

    fn settings() -> SourceSettings {
        SourceSettings {
            name: "Acme vendor".into(),
            kind: SourceKind::Vendor.into(),
            currency: "USD".into(),
            ..SourceSettings::default()
        }
    }

    fn lead(email: &str, phone: &str, country: &str) -> NewLead {
        let input = LeadInput {
            email: email.into(),
            phone: phone.into(),
            country: country.into(),
            source: "acme".into(),
            channel: "web".into(),
            ..LeadInput::default()
        };
        NewLead::parse(&input, Region::US, "lead").expect("valid lead")
    }

    fn reasons(violations: &FieldViolations) -> Vec<(String, String)> {
        violations
            .violations()
            .iter()
            .map(|v| (v.field.clone(), v.reason.clone()))
            .collect()
    }

    #[test]
    fn bad_settings_are_named_field_by_field() {
        let bad = SourceSettings {
            name: String::new(),
            kind: 0,
            field_mapping: [("E-Mail".to_owned(), "mail".to_owned())].into(),
            default_phone_region: "XX".into(),
            required_fields: vec!["shoe_size".into()],
            dedupe: Some(DedupePolicy {
                mode: DedupeMode::Reject.into(),
                window_seconds: 0,
            }),
            rate_limit_per_minute: -1,
            currency: "dollars".into(),
            ..SourceSettings::default()
        };
        let violations = SourcePolicy::parse("Bad Source!", Some(bad)).expect_err("bad settings");
        let fields: Vec<&str> = violations
            .violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "source_id",
                "settings.name",
                "settings.kind",
                "settings.field_mapping",
                "settings.default_phone_region",
                "settings.required_fields",
                "settings.dedupe.window_seconds",
                "settings.rate_limit_per_minute",
                "settings.currency",
            ]
        );
    }

    #[test]
    fn rules_reject_with_one_reason_each() {
        let policy = SourcePolicy::parse(
            "acme",
            Some(SourceSettings {
                required_fields: vec!["first_name".into()],
                rules: Some(AcceptanceRules {
                    countries: vec!["GB".into()],
                    reject_disposable_email: true,
                    require_mobile_phone: true,
                    required_consent: vec![ConsentChannel::Sms.into()],
                    ..AcceptanceRules::default()
                }),
                ..settings()
            }),
        )
        .expect("valid settings");
        let violations = policy.check(
            &lead("x@mailinator.com", "+44 20 7946 0018", "US"),
            None,
            "lead",
        );
        assert_eq!(
            reasons(&violations),
            [
                ("lead.first_name".to_owned(), "REQUIRED".to_owned()),
                ("lead.country".to_owned(), "COUNTRY_NOT_ACCEPTED".to_owned()),
                ("lead.email".to_owned(), "DISPOSABLE_EMAIL".to_owned()),
                ("lead.phone".to_owned(), "PHONE_NOT_MOBILE".to_owned()),
                ("consent.channels".to_owned(), "CONSENT_REQUIRED".to_owned()),
            ]
        );
    }

    #[test]
    fn the_phone_region_stands_in_for_a_missing_country() {
        let policy = SourcePolicy::parse(
            "acme",
            Some(SourceSettings {
                rules: Some(AcceptanceRules {
                    countries: vec!["GB".into()],
                    ..AcceptanceRules::default()
                }),
                ..settings()
            }),
        )
        .expect("valid settings");
        assert!(
            policy
                .check(&lead("", "+44 7400 123456", ""), None, "lead")
                .is_empty()
        );
        assert!(
            !policy
                .check(&lead("", "+1 415 555 0132", ""), None, "lead")
                .is_empty()
        );
    }

    #[test]
    fn reject_dedupe_needs_a_window() {
        let policy = SourcePolicy::parse(
            "acme",
            Some(SourceSettings {
                dedupe: Some(DedupePolicy {
                    mode: DedupeMode::Reject.into(),
                    window_seconds: 3600,
                }),
                ..settings()
            }),
        )
        .expect("valid settings");
        assert_eq!(
            policy.dedupe,
            Dedupe::RejectWithin(chrono::Duration::hours(1))
        );
    }
}
