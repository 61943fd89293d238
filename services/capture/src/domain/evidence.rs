//! Consent evidence and attribution touches, parsed from requests.

use std::net::IpAddr;

use leadflow_platform::validation::{FieldViolations, has_control_characters};
use leadflow_proto::capture::v1::{Attribution, ConsentChannel, ConsentInput, LegalBasis};
use sha2::{Digest, Sha256};

const MAX_DISCLOSURE_CHARS: usize = 20_000;
const MAX_TEXT_CHARS: usize = 2_048;

/// A consent record to store: exactly what the person agreed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    /// `ConsentChannel` numbers, deduplicated, in order.
    pub channels: Vec<i32>,
    pub disclosure_text: String,
    /// SHA-256 of the disclosure text, hex.
    pub disclosure_sha256: String,
    pub form_url: String,
    pub form_version: String,
    pub ip_address: Option<IpAddr>,
    pub user_agent: String,
    pub legal_basis: LegalBasis,
    pub given_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Consent {
    /// Returns the client IP address as recorded, empty when none was given.
    pub fn ip_text(&self) -> String {
        self.ip_address.map(|ip| ip.to_string()).unwrap_or_default()
    }

    /// Returns the channel names (`email`, `sms`, `call`).
    pub fn channel_names(&self) -> Vec<String> {
        self.channels
            .iter()
            .filter_map(|channel| ConsentChannel::try_from(*channel).ok())
            .map(|channel| {
                channel
                    .as_str_name()
                    .trim_start_matches("CONSENT_CHANNEL_")
                    .to_lowercase()
            })
            .collect()
    }
}

/// Parses an optional consent; an absent one is `None`.
pub fn parse_consent(input: Option<&ConsentInput>) -> Result<Option<Consent>, FieldViolations> {
    let Some(input) = input else {
        return Ok(None);
    };
    let mut violations = FieldViolations::new();
    let mut channels = Vec::new();
    for channel in &input.channels {
        match ConsentChannel::try_from(*channel) {
            Ok(ConsentChannel::Unspecified) | Err(_) => {
                violations.reject(
                    "consent.channels",
                    "INVALID_CHANNEL",
                    "must be EMAIL, SMS or CALL",
                );
            }
            Ok(_) if !channels.contains(channel) => channels.push(*channel),
            Ok(_) => {}
        }
    }
    if channels.is_empty() && violations.is_empty() {
        violations.reject(
            "consent.channels",
            "REQUIRED",
            "name at least one channel the consent covers",
        );
    }
    if input.disclosure_text.trim().is_empty() {
        violations.reject(
            "consent.disclosure_text",
            "REQUIRED",
            "the exact text the person agreed to is required",
        );
    } else if input.disclosure_text.chars().count() > MAX_DISCLOSURE_CHARS {
        violations.reject(
            "consent.disclosure_text",
            "TOO_LONG",
            "must be at most 20,000 characters",
        );
    } else if has_control_characters(&input.disclosure_text) {
        violations.reject(
            "consent.disclosure_text",
            "CONTROL_CHARACTERS",
            "must not contain control characters other than line breaks and tabs",
        );
    }
    for (field, value) in [
        ("consent.form_url", &input.form_url),
        ("consent.form_version", &input.form_version),
        ("consent.user_agent", &input.user_agent),
    ] {
        if value.chars().count() > MAX_TEXT_CHARS || value.chars().any(char::is_control) {
            violations.reject(
                field,
                "INVALID",
                "must be at most 2,048 printable characters",
            );
        }
    }
    let ip_address = match input.ip_address.trim() {
        "" => None,
        given => given.parse::<IpAddr>().map(Some).unwrap_or_else(|_| {
            violations.reject(
                "consent.ip_address",
                "INVALID_IP",
                "must be an IPv4 or IPv6 address",
            );
            None
        }),
    };
    let legal_basis = LegalBasis::try_from(input.legal_basis).unwrap_or_default();
    if legal_basis == LegalBasis::Unspecified {
        violations.reject(
            "consent.legal_basis",
            "REQUIRED",
            "must be CONSENT, LEGITIMATE_INTEREST or CONTRACT",
        );
    }
    let given_at = match &input.given_at {
        None => None,
        Some(timestamp) => chrono::DateTime::from_timestamp(
            timestamp.seconds,
            timestamp.nanos.clamp(0, 999_999_999) as u32,
        )
        .map(Some)
        .unwrap_or_else(|| {
            violations.reject("consent.given_at", "INVALID_TIME", "is not a valid time");
            None
        }),
    };
    let disclosure_sha256 = hex::encode(Sha256::digest(input.disclosure_text.as_bytes()));
    violations.into_result(Some(Consent {
        channels,
        disclosure_text: input.disclosure_text.clone(),
        disclosure_sha256,
        form_url: input.form_url.trim().to_owned(),
        form_version: input.form_version.trim().to_owned(),
        ip_address,
        user_agent: input.user_agent.trim().to_owned(),
        legal_basis,
        given_at,
    }))
}

/// Parses attribution: every field trimmed and bounded.
pub fn parse_attribution(input: Option<&Attribution>) -> Result<Attribution, FieldViolations> {
    let mut violations = FieldViolations::new();
    let input = input.cloned().unwrap_or_default();
    let fields = [
        ("attribution.utm_source", &input.utm_source),
        ("attribution.utm_medium", &input.utm_medium),
        ("attribution.utm_campaign", &input.utm_campaign),
        ("attribution.utm_term", &input.utm_term),
        ("attribution.utm_content", &input.utm_content),
        ("attribution.gclid", &input.gclid),
        ("attribution.fbclid", &input.fbclid),
        ("attribution.referrer", &input.referrer),
        ("attribution.landing_page", &input.landing_page),
    ];
    for (field, value) in fields {
        if value.chars().count() > MAX_TEXT_CHARS || value.chars().any(char::is_control) {
            violations.reject(
                field,
                "INVALID",
                "must be at most 2,048 printable characters",
            );
        }
    }
    let trimmed = Attribution {
        utm_source: input.utm_source.trim().to_owned(),
        utm_medium: input.utm_medium.trim().to_owned(),
        utm_campaign: input.utm_campaign.trim().to_owned(),
        utm_term: input.utm_term.trim().to_owned(),
        utm_content: input.utm_content.trim().to_owned(),
        gclid: input.gclid.trim().to_owned(),
        fbclid: input.fbclid.trim().to_owned(),
        referrer: input.referrer.trim().to_owned(),
        landing_page: input.landing_page.trim().to_owned(),
    };
    violations.into_result(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent() -> ConsentInput {
        ConsentInput {
            channels: vec![
                ConsentChannel::Email.into(),
                ConsentChannel::Sms.into(),
                ConsentChannel::Email.into(),
            ],
            disclosure_text: "I agree to be contacted by email and text.".into(),
            form_url: "https://acme.example/contact".into(),
            form_version: "v3".into(),
            ip_address: "203.0.113.7".into(),
            user_agent: "Mozilla/5.0".into(),
            legal_basis: LegalBasis::Consent.into(),
            given_at: None,
        }
    }

    #[test]
    fn consent_keeps_the_exact_text_and_its_hash() {
        let parsed = parse_consent(Some(&consent()))
            .expect("valid")
            .expect("present");
        assert_eq!(parsed.channel_names(), ["email", "sms"]);
        assert_eq!(
            parsed.disclosure_sha256,
            hex::encode(Sha256::digest(
                b"I agree to be contacted by email and text."
            ))
        );
        assert_eq!(parsed.ip_address, Some("203.0.113.7".parse().expect("ip")));
    }

    #[test]
    fn disclosure_text_keeps_line_breaks_but_not_other_control_characters() {
        let multi_line = ConsentInput {
            disclosure_text: "Line one.\nLine two.\tEnd.".into(),
            ..consent()
        };
        assert!(parse_consent(Some(&multi_line)).is_ok());
        let with_nul = ConsentInput {
            disclosure_text: "I agree\0".into(),
            ..consent()
        };
        let violations = parse_consent(Some(&with_nul)).expect_err("nul is refused");
        assert_eq!(violations.violations()[0].reason, "CONTROL_CHARACTERS");
    }

    #[test]
    fn bad_consent_is_named_field_by_field() {
        let bad = ConsentInput {
            channels: vec![],
            disclosure_text: " ".into(),
            ip_address: "999.1.1.1".into(),
            legal_basis: 0,
            ..consent()
        };
        let violations = parse_consent(Some(&bad)).expect_err("bad consent");
        let fields: Vec<&str> = violations
            .violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(
            fields,
            [
                "consent.channels",
                "consent.disclosure_text",
                "consent.ip_address",
                "consent.legal_basis"
            ]
        );
    }
}
