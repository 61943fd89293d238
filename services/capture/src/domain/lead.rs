//! A lead as a client sends it, parsed into normalized, validated values.

use std::str::FromStr;
use std::sync::LazyLock;

use email_address::EmailAddress;
use hmac::{Hmac, Mac};
use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::LeadInput;
use phonenumber::Mode;
use phonenumber::country::Id as Region;
use sha2::Sha256;

const MAX_NAME_CHARS: usize = 200;
const MAX_TOKEN_CHARS: usize = 64;
const MAX_CAMPAIGN_CHARS: usize = 128;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_PHONE_CHARS: usize = 32;

static FREE_EMAIL_DOMAINS: LazyLock<std::collections::HashSet<&'static str>> =
    LazyLock::new(|| {
        include_str!("free_email_domains.txt")
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect()
    });

/// Settings of normalization.
#[derive(Debug, Clone)]
pub struct NormalizeConfig {
    /// Region for phone numbers written without a country code.
    pub default_region: Region,
    /// Key of the identity hashes carried by events instead of email and phone.
    pub identity_hash_key: Vec<u8>,
}

/// A validated, normalized email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Lower-cased address.
    pub address: String,
    /// Whether the domain belongs to a free mailbox provider.
    pub free: bool,
}

/// A validated phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    /// E.164 form, e.g. `+14155550100`.
    pub e164: String,
    /// ISO 3166-1 alpha-2 region of the number, when known.
    pub region: Option<String>,
}

/// A lead ready to store: every field normalized and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLead {
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub first_name: String,
    pub last_name: String,
    pub company: String,
    pub source: String,
    pub channel: String,
    pub campaign: String,
}

impl NewLead {
    /// Parses `input`; every bad field is reported under `prefix` (e.g. `lead.email`).
    pub fn parse(
        input: &LeadInput,
        config: &NormalizeConfig,
        prefix: &str,
    ) -> Result<Self, FieldViolations> {
        let mut violations = FieldViolations::new();
        let field = |name: &str| format!("{prefix}.{name}");

        let email = parse_email(&input.email).unwrap_or_else(|reason| {
            violations.add(field("email"), reason);
            None
        });
        let region = match input.phone_region.trim() {
            "" => Some(config.default_region),
            given => match Region::from_str(&given.to_uppercase()) {
                Ok(region) => Some(region),
                Err(_) => {
                    violations.add(
                        field("phone_region"),
                        "must be an ISO 3166-1 alpha-2 region",
                    );
                    None
                }
            },
        };
        let phone = match region {
            Some(region) => parse_phone(&input.phone, region).unwrap_or_else(|reason| {
                violations.add(field("phone"), reason);
                None
            }),
            None => None,
        };
        if input.email.trim().is_empty() && input.phone.trim().is_empty() {
            violations.add(field("email"), "an email or a phone is required");
        }
        let first_name = parse_name(&mut violations, &field("first_name"), &input.first_name);
        let last_name = parse_name(&mut violations, &field("last_name"), &input.last_name);
        let company = parse_name(&mut violations, &field("company"), &input.company);
        let source = parse_token(&mut violations, &field("source"), &input.source, true);
        let channel = parse_token(&mut violations, &field("channel"), &input.channel, true);
        let campaign = input.campaign.trim().to_owned();
        if campaign.chars().count() > MAX_CAMPAIGN_CHARS {
            violations.add(
                field("campaign"),
                format!("must be at most {MAX_CAMPAIGN_CHARS} characters"),
            );
        } else if campaign.chars().any(char::is_control) {
            violations.add(field("campaign"), "must not contain control characters");
        }
        violations.into_result(NewLead {
            email,
            phone,
            first_name,
            last_name,
            company,
            source,
            channel,
            campaign,
        })
    }
}

/// Parses an optional email address: trimmed, lower-cased, RFC 5321/5322 syntax, a dotted domain.
pub fn parse_email(raw: &str) -> Result<Option<Email>, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.chars().count() > MAX_EMAIL_CHARS {
        return Err("must be at most 254 characters");
    }
    let lowered = trimmed.to_lowercase();
    let parsed = EmailAddress::from_str(&lowered).map_err(|_| "is not a valid email address")?;
    let domain = parsed.domain();
    // Addresses at bare hosts (`a@localhost`) or IP literals cannot receive our mail.
    if !domain.contains('.') || domain.starts_with('[') || domain.ends_with('.') {
        return Err("is not a valid email address");
    }
    let free = FREE_EMAIL_DOMAINS.contains(domain);
    Ok(Some(Email {
        address: parsed.email(),
        free,
    }))
}

/// Parses an optional phone number into E.164, reading national numbers in `region`.
pub fn parse_phone(raw: &str, region: Region) -> Result<Option<Phone>, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.chars().count() > MAX_PHONE_CHARS {
        return Err("must be at most 32 characters");
    }
    let number = phonenumber::parse(Some(region), trimmed).map_err(|_| "is not a phone number")?;
    if !number.is_valid() {
        return Err("is not a valid phone number");
    }
    Ok(Some(Phone {
        e164: number.format().mode(Mode::E164).to_string(),
        region: number.country().id().map(|id| id.as_ref().to_owned()),
    }))
}

fn parse_name(violations: &mut FieldViolations, field: &str, raw: &str) -> String {
    let trimmed = raw.trim();
    if trimmed.chars().count() > MAX_NAME_CHARS {
        violations.add(
            field,
            format!("must be at most {MAX_NAME_CHARS} characters"),
        );
    } else if trimmed.chars().any(char::is_control) {
        violations.add(field, "must not contain control characters");
    }
    trimmed.to_owned()
}

fn parse_token(violations: &mut FieldViolations, field: &str, raw: &str, required: bool) -> String {
    let token = raw.trim().to_lowercase();
    if token.is_empty() {
        if required {
            violations.add(field, "is required");
        }
        return token;
    }
    let well_formed = token.chars().count() <= MAX_TOKEN_CHARS
        && token
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if !well_formed {
        violations.add(field, "must be 1–64 of a-z, 0-9, `_`, `-`, `.`");
    }
    token
}

/// Returns the keyed hash (HMAC-SHA-256, hex) that stands for `value` outside capture.
pub fn identity_hash(key: &[u8], kind: &str, value: &str) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
    mac.update(kind.as_bytes());
    mac.update(b"\0");
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn config() -> NormalizeConfig {
        NormalizeConfig {
            default_region: Region::US,
            identity_hash_key: vec![7; 32],
        }
    }

    fn input() -> LeadInput {
        LeadInput {
            email: " Ada.Lovelace@Example.COM ".into(),
            phone: "(415) 555-0132".into(),
            first_name: "  Ada ".into(),
            last_name: "Lovelace".into(),
            company: "Analytical Engines".into(),
            source: "Website-Form".into(),
            channel: "Web".into(),
            campaign: "spring-launch".into(),
            phone_region: String::new(),
        }
    }

    #[test]
    fn normalizes_email_phone_names_and_tokens() {
        let lead = NewLead::parse(&input(), &config(), "lead").expect("valid lead");
        assert_eq!(
            lead.email,
            Some(Email {
                address: "ada.lovelace@example.com".into(),
                free: false
            })
        );
        assert_eq!(
            lead.phone.as_ref().map(|phone| phone.e164.as_str()),
            Some("+14155550132")
        );
        assert_eq!(
            lead.phone.and_then(|phone| phone.region).as_deref(),
            Some("US")
        );
        assert_eq!(lead.first_name, "Ada");
        assert_eq!(lead.source, "website-form");
        assert_eq!(lead.channel, "web");
    }

    #[test]
    fn unicode_names_stay_as_given() {
        let mut given = input();
        given.first_name = "Zoë".into();
        given.last_name = "Ōtani-Łukasz".into();
        let lead = NewLead::parse(&given, &config(), "lead").expect("valid lead");
        assert_eq!(
            (lead.first_name.as_str(), lead.last_name.as_str()),
            ("Zoë", "Ōtani-Łukasz")
        );
    }

    #[test]
    fn free_mail_domains_are_flagged() {
        assert!(parse_email("someone@gmail.com").unwrap().unwrap().free);
        assert!(!parse_email("someone@acme.io").unwrap().unwrap().free);
    }

    #[test]
    fn phone_without_country_code_uses_the_given_region() {
        let phone = parse_phone("030 901820", Region::DE).unwrap().unwrap();
        assert_eq!(phone.e164, "+4930901820");
        assert_eq!(phone.region.as_deref(), Some("DE"));
    }

    #[test]
    fn every_bad_field_is_reported_in_order() {
        let bad_inputs = [
            (
                "email",
                LeadInput {
                    email: "nope".into(),
                    ..input()
                },
            ),
            (
                "email",
                LeadInput {
                    email: "a@localhost".into(),
                    ..input()
                },
            ),
            (
                "phone",
                LeadInput {
                    phone: "12".into(),
                    ..input()
                },
            ),
            (
                "phone_region",
                LeadInput {
                    phone_region: "XX".into(),
                    ..input()
                },
            ),
            (
                "source",
                LeadInput {
                    source: String::new(),
                    ..input()
                },
            ),
            (
                "channel",
                LeadInput {
                    channel: "web form!".into(),
                    ..input()
                },
            ),
            (
                "first_name",
                LeadInput {
                    first_name: "a\u{0}b".into(),
                    ..input()
                },
            ),
            (
                "company",
                LeadInput {
                    company: "x".repeat(201),
                    ..input()
                },
            ),
            (
                "email",
                LeadInput {
                    email: String::new(),
                    phone: String::new(),
                    ..input()
                },
            ),
        ];
        for (field, bad) in bad_inputs {
            let violations = NewLead::parse(&bad, &config(), "lead").expect_err(field);
            let fields: Vec<&str> = violations
                .violations()
                .iter()
                .map(|v| v.field.as_str())
                .collect();
            assert_eq!(fields, [format!("lead.{field}")], "input {bad:?}");
        }
        let both = LeadInput {
            email: "nope".into(),
            phone: "12".into(),
            ..input()
        };
        let violations = NewLead::parse(&both, &config(), "lead").expect_err("two bad fields");
        let fields: Vec<&str> = violations
            .violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["lead.email", "lead.phone"]);
    }

    #[test]
    fn identity_hash_is_keyed_and_kind_separated() {
        let one = identity_hash(&[1; 32], "email", "a@b.co");
        assert_eq!(one.len(), 64);
        assert_eq!(one, identity_hash(&[1; 32], "email", "a@b.co"));
        assert_ne!(one, identity_hash(&[2; 32], "email", "a@b.co"));
        assert_ne!(one, identity_hash(&[1; 32], "phone", "a@b.co"));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(email in ".{0,80}", phone in ".{0,40}", name in ".{0,60}", token in ".{0,70}", region in "[A-Za-z]{0,3}") {
            let given = LeadInput {
                email, phone, first_name: name.clone(), last_name: name.clone(), company: name,
                source: token.clone(), channel: token.clone(), campaign: token, phone_region: region,
            };
            match NewLead::parse(&given, &config(), "lead") {
                Ok(lead) => prop_assert!(lead.email.is_some() || lead.phone.is_some()),
                Err(violations) => prop_assert!(!violations.is_empty()),
            }
        }
    }
}
