//! A lead as a client sends it, parsed into normalized, validated values.

use std::str::FromStr;
use std::sync::LazyLock;

use email_address::EmailAddress;
use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::LeadInput;
use phonenumber::country::Id as Region;

use super::phone_patterns;

const MAX_NAME_CHARS: usize = 200;
const MAX_TOKEN_CHARS: usize = 64;
const MAX_CAMPAIGN_CHARS: usize = 128;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_PHONE_CHARS: usize = 32;
const MAX_URL_CHARS: usize = 2048;

static FREE_EMAIL_DOMAINS: LazyLock<std::collections::HashSet<&'static str>> =
    LazyLock::new(|| {
        include_str!("free_email_domains.txt")
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .collect()
    });

/// mailchecker's list of throwaway domains, hashed once: its own `is_valid` scans the whole
/// list (about 55,000 names) for every suffix of every address.
static DISPOSABLE_DOMAINS: LazyLock<std::collections::HashSet<&'static str>> =
    LazyLock::new(|| mailchecker::blacklist().into_iter().collect());

/// Whether `domain` or a parent domain of it (of two labels or more) is a throwaway domain,
/// as mailchecker decides it.
fn is_disposable_domain(domain: &str) -> bool {
    let mut suffix = domain;
    loop {
        if DISPOSABLE_DOMAINS.contains(suffix) {
            return true;
        }
        match suffix.split_once('.') {
            Some((_, parent)) if parent.contains('.') => suffix = parent,
            _ => return false,
        }
    }
}

/// Settings of normalization that do not depend on the source.
#[derive(Debug, Clone)]
pub struct NormalizeConfig {
    /// Region for phone numbers written without a country code, unless the source sets one.
    pub default_region: Region,
    /// Key of the identity hashes carried by events instead of email and phone.
    pub identity_hash_key: Vec<u8>,
}

/// Kind of an email address's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailKind {
    Business,
    Free,
    Disposable,
}

impl EmailKind {
    /// Returns the name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::Business => "business",
            EmailKind::Free => "free",
            EmailKind::Disposable => "disposable",
        }
    }
}

/// A validated, normalized email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Lower-cased address.
    pub address: String,
    pub kind: EmailKind,
    /// The local part names a role (`info@`, `sales@`), not a person.
    pub role: bool,
}

/// A validated phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone {
    /// E.164 form, e.g. `+14155550100`.
    pub e164: String,
    /// ISO 3166-1 alpha-2 region of the number, when known.
    pub region: Option<String>,
    /// Line type (`mobile`, `fixed_line`, `fixed_line_or_mobile`, …), when known.
    pub line_type: Option<&'static str>,
}

impl Phone {
    /// Returns whether the number can receive text messages as far as we can tell.
    pub fn is_mobile(&self) -> bool {
        matches!(self.line_type, Some("mobile" | "fixed_line_or_mobile"))
    }
}

/// A lead ready to store: every field normalized and valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLead {
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub first_name: String,
    pub last_name: String,
    pub company: String,
    /// ISO 3166-1 alpha-2, upper case; empty when unknown.
    pub country: String,
    /// Normalized `http(s)` URL; empty when none.
    pub website: String,
    pub job_title: String,
    pub source: String,
    pub channel: String,
    pub campaign: String,
    /// The tracking cookie of the browser the lead was captured in, when known.
    pub visitor_id: Option<uuid::Uuid>,
}

impl NewLead {
    /// Parses `input`, reading national phone numbers in `default_region` unless the input
    /// names one; every bad field is reported under `prefix` (e.g. `lead.email`).
    pub fn parse(
        input: &LeadInput,
        default_region: Region,
        prefix: &str,
    ) -> Result<Self, FieldViolations> {
        let mut violations = FieldViolations::new();
        let field = |name: &str| format!("{prefix}.{name}");

        let email = parse_email(&input.email).unwrap_or_else(|reason| {
            violations.reject(field("email"), "INVALID_EMAIL", reason);
            None
        });
        let region = match input.phone_region.trim() {
            "" => Some(default_region),
            given => parse_region(given).or_else(|| {
                violations.reject(
                    field("phone_region"),
                    "INVALID_REGION",
                    "must be an ISO 3166-1 alpha-2 region",
                );
                None
            }),
        };
        let phone = match region {
            Some(region) => parse_phone(&input.phone, region).unwrap_or_else(|reason| {
                violations.reject(field("phone"), "INVALID_PHONE", reason);
                None
            }),
            None => None,
        };
        if input.email.trim().is_empty() && input.phone.trim().is_empty() {
            violations.reject(
                field("email"),
                "REQUIRED",
                "an email or a phone is required",
            );
        }
        let first_name = parse_text(
            &mut violations,
            &field("first_name"),
            &input.first_name,
            MAX_NAME_CHARS,
        );
        let last_name = parse_text(
            &mut violations,
            &field("last_name"),
            &input.last_name,
            MAX_NAME_CHARS,
        );
        let company = parse_text(
            &mut violations,
            &field("company"),
            &input.company,
            MAX_NAME_CHARS,
        );
        let job_title = parse_text(
            &mut violations,
            &field("job_title"),
            &input.job_title,
            MAX_NAME_CHARS,
        );
        let country = match input.country.trim() {
            "" => String::new(),
            given => parse_region(given)
                .map(|region| region.as_ref().to_owned())
                .unwrap_or_else(|| {
                    violations.reject(
                        field("country"),
                        "INVALID_COUNTRY",
                        "must be an ISO 3166-1 alpha-2 country",
                    );
                    String::new()
                }),
        };
        let website = parse_url(&input.website).unwrap_or_else(|reason| {
            violations.reject(field("website"), "INVALID_URL", reason);
            String::new()
        });
        let source = parse_token(&mut violations, &field("source"), &input.source, true);
        let channel = parse_token(&mut violations, &field("channel"), &input.channel, true);
        let campaign = parse_text(
            &mut violations,
            &field("campaign"),
            &input.campaign,
            MAX_CAMPAIGN_CHARS,
        );
        let visitor_id = match input.visitor_id.trim() {
            "" => None,
            given => match uuid::Uuid::parse_str(given) {
                Ok(id) if !id.is_nil() => Some(id),
                _ => {
                    violations.reject(
                        field("visitor_id"),
                        "INVALID_VISITOR_ID",
                        "must be a UUID (the tracking cookie's value)",
                    );
                    None
                }
            },
        };
        violations.into_result(NewLead {
            email,
            phone,
            first_name,
            last_name,
            company,
            country,
            website,
            job_title,
            source,
            channel,
            campaign,
            visitor_id,
        })
    }

    /// Returns the normalized email address, empty when none.
    pub fn email_address(&self) -> &str {
        self.email.as_ref().map_or("", |email| &email.address)
    }

    /// Returns the E.164 phone number, empty when none.
    pub fn phone_e164(&self) -> &str {
        self.phone.as_ref().map_or("", |phone| &phone.e164)
    }

    /// Returns the email domain's kind as stored: `none` without an email.
    pub fn email_kind_name(&self) -> &'static str {
        self.email
            .as_ref()
            .map_or("none", |email| email.kind.as_str())
    }

    /// Returns whether the email is a role address (`sales@`, …).
    pub fn email_role(&self) -> bool {
        self.email.as_ref().is_some_and(|email| email.role)
    }

    /// Returns the phone's line type as stored: empty when unknown or without a phone.
    pub fn phone_line_type(&self) -> &'static str {
        self.phone
            .as_ref()
            .and_then(|phone| phone.line_type)
            .unwrap_or_default()
    }

    /// Returns the country of the person: the given one, else the phone's region.
    pub fn effective_country(&self) -> Option<&str> {
        if !self.country.is_empty() {
            return Some(&self.country);
        }
        self.phone
            .as_ref()
            .and_then(|phone| phone.region.as_deref())
    }

    /// Returns how complete and valid the contact details are, 0–100.
    pub fn quality_score(&self) -> i32 {
        let email = match &self.email {
            None => 0,
            Some(email) if email.kind == EmailKind::Disposable => 5,
            Some(email) if email.role => 20,
            Some(_) => 30,
        };
        let phone = match &self.phone {
            None => 0,
            Some(phone) if phone.is_mobile() => 30,
            Some(_) => 25,
        };
        let filled = |text: &str, points: i32| if text.is_empty() { 0 } else { points };
        email
            + phone
            + filled(&self.first_name, 10)
            + filled(&self.last_name, 10)
            + filled(&self.company, 8)
            + filled(&self.country, 4)
            + filled(&self.job_title, 4)
            + filled(&self.website, 4)
    }
}

const ROLE_LOCAL_PARTS: [&str; 22] = [
    "admin",
    "billing",
    "careers",
    "contact",
    "enquiries",
    "hello",
    "help",
    "hr",
    "info",
    "inquiries",
    "jobs",
    "marketing",
    "no-reply",
    "noreply",
    "office",
    "postmaster",
    "sales",
    "service",
    "support",
    "team",
    "webmaster",
    "abuse",
];

pub(crate) fn parse_region(given: &str) -> Option<Region> {
    let upper = given.trim().to_uppercase();
    if upper.len() != 2 {
        return None;
    }
    Region::from_str(&upper).ok()
}

/// Parses an optional email address: trimmed, lower-cased, RFC 5321/5322 syntax, a dotted
/// domain; flags free, disposable and role addresses.
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
    let address = parsed.email();
    let kind = if FREE_EMAIL_DOMAINS.contains(domain) {
        EmailKind::Free
    } else if is_disposable_domain(domain) {
        EmailKind::Disposable
    } else {
        EmailKind::Business
    };
    let local = parsed.local_part();
    let role = ROLE_LOCAL_PARTS.contains(&local);
    Ok(Some(Email {
        address,
        kind,
        role,
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
    // A number in international form carries its own country: reading it "in" the default
    // region makes phonenumber 0.3 strip that region's national prefix from it (+49 151… lost
    // its 1 when read in the US).
    let international = trimmed.starts_with('+');
    if !international {
        phone_patterns::prepare_region(region);
    }
    let number = phonenumber::parse((!international).then_some(region), trimmed)
        .map_err(|_| "is not a phone number")?;
    let code = number.code().value();
    // phonenumber reads region and type from its national number's digits, leading zeros
    // dropped (`value()`); so does `classify`, which answers as it does.
    let national = number.national().value().to_string();
    let (region, kind) = phone_patterns::classify(code, &national).unwrap_or_else(|| {
        (
            number.country().id(),
            number.number_type(&phonenumber::metadata::DATABASE),
        )
    });
    // `is_valid` is "has a known type" in phonenumber 0.3.
    if kind == phonenumber::Type::Unknown {
        return Err("is not a valid phone number");
    }
    let line_type = match kind {
        phonenumber::Type::Mobile => Some("mobile"),
        phonenumber::Type::FixedLine => Some("fixed_line"),
        phonenumber::Type::FixedLineOrMobile => Some("fixed_line_or_mobile"),
        phonenumber::Type::TollFree => Some("toll_free"),
        phonenumber::Type::Voip => Some("voip"),
        phonenumber::Type::PremiumRate => Some("premium_rate"),
        phonenumber::Type::SharedCost => Some("shared_cost"),
        phonenumber::Type::PersonalNumber => Some("personal_number"),
        phonenumber::Type::Pager => Some("pager"),
        _ => None,
    };
    Ok(Some(Phone {
        // E.164 is `+`, the country code and the national number (phonenumber's formatter
        // writes exactly this, after matching every national format's patterns for nothing).
        e164: format!("+{code}{}", number.national()),
        region: region.map(|id| id.as_ref().to_owned()),
        line_type,
    }))
}

/// Parses an optional website: `http(s)` with a dotted host; a bare host gets `https://`.
pub fn parse_url(raw: &str) -> Result<String, &'static str> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.chars().count() > MAX_URL_CHARS {
        return Err("must be at most 2048 characters");
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("https://{trimmed}")
    };
    let parsed = url::Url::parse(&with_scheme).map_err(|_| "is not a URL")?;
    let host_ok = parsed.host_str().is_some_and(|host| host.contains('.'));
    if !matches!(parsed.scheme(), "http" | "https") || !host_ok {
        return Err("must be an http(s) URL with a domain");
    }
    Ok(parsed.to_string())
}

pub(crate) fn parse_text(
    violations: &mut FieldViolations,
    field: &str,
    raw: &str,
    max_chars: usize,
) -> String {
    let trimmed = raw.trim();
    if trimmed.chars().count() > max_chars {
        violations.reject(
            field,
            "TOO_LONG",
            format!("must be at most {max_chars} characters"),
        );
    } else if trimmed.chars().any(char::is_control) {
        violations.reject(
            field,
            "CONTROL_CHARACTERS",
            "must not contain control characters",
        );
    }
    trimmed.to_owned()
}

/// Parses a token field (`source`, `channel`): lower-cased `a-z0-9_-.`, 1–64 characters.
pub fn parse_token(
    violations: &mut FieldViolations,
    field: &str,
    raw: &str,
    required: bool,
) -> String {
    let token = raw.trim().to_lowercase();
    if token.is_empty() {
        if required {
            violations.reject(field, "REQUIRED", "is required");
        }
        return token;
    }
    let well_formed = token.chars().count() <= MAX_TOKEN_CHARS
        && token
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
    if !well_formed {
        violations.reject(
            field,
            "INVALID_TOKEN",
            "must be 1–64 of a-z, 0-9, `_`, `-`, `.`",
        );
    }
    token
}

/// Returns the keyed hash (HMAC-SHA-256, hex) that stands for `value` outside capture.
pub fn identity_hash(key: &[u8], kind: &str, value: &str) -> String {
    hex::encode(leadflow_platform::pii::keyed_hash(key, kind, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const US: Region = Region::US;

    #[test]
    fn e164_is_what_phonenumbers_formatter_writes() {
        // Every example number of every region, written in international form.
        let mut compared = 0;
        for metadata in phonenumber::metadata::DATABASE.iter() {
            let examples = crate::domain::phone_patterns::descriptors(metadata)
                .filter_map(|descriptor| descriptor.example());
            for example in examples {
                let raw = format!("+{} {example}", metadata.country_code());
                let Ok(number) = phonenumber::parse(None, &raw) else {
                    continue;
                };
                let theirs = number.format().mode(phonenumber::Mode::E164).to_string();
                if let Ok(Some(phone)) = parse_phone(&raw, US) {
                    assert_eq!(phone.e164, theirs, "{raw}");
                    compared += 1;
                }
            }
        }
        assert!(compared > 1_000, "only {compared} numbers compared");
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
            ..LeadInput::default()
        }
    }

    #[test]
    fn normalizes_email_phone_names_and_tokens() {
        let lead = NewLead::parse(&input(), US, "lead").expect("valid lead");
        assert_eq!(
            lead.email,
            Some(Email {
                address: "ada.lovelace@example.com".into(),
                kind: EmailKind::Business,
                role: false,
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
        let lead = NewLead::parse(&given, US, "lead").expect("valid lead");
        assert_eq!(
            (lead.first_name.as_str(), lead.last_name.as_str()),
            ("Zoë", "Ōtani-Łukasz")
        );
    }

    #[test]
    fn free_mail_domains_are_flagged() {
        assert_eq!(
            parse_email("someone@gmail.com").unwrap().unwrap().kind,
            EmailKind::Free
        );
        assert_eq!(
            parse_email("someone@acme.io").unwrap().unwrap().kind,
            EmailKind::Business
        );
        assert_eq!(
            parse_email("someone@mailinator.com").unwrap().unwrap().kind,
            EmailKind::Disposable
        );
        assert!(parse_email("sales@acme.io").unwrap().unwrap().role);
        assert!(!parse_email("ada@acme.io").unwrap().unwrap().role);
    }

    #[test]
    fn throwaway_domains_are_flagged_as_mailchecker_flags_them() {
        // Every listed domain, a subdomain of it, and a near miss, against mailchecker's own
        // (slow) check; a sample of the list keeps the test quick.
        let list = mailchecker::blacklist();
        for domain in list.iter().step_by(97) {
            for candidate in [
                domain.to_string(),
                format!("mx.{domain}"),
                format!("{domain}x.org"),
                format!("x{domain}"),
            ] {
                let address = format!("someone@{candidate}");
                assert_eq!(
                    is_disposable_domain(&candidate),
                    !mailchecker::is_valid(&address),
                    "{address}"
                );
            }
        }
        assert!(!is_disposable_domain("acme.io"));
        assert!(is_disposable_domain("mail.mailinator.com"));
    }

    #[test]
    fn a_phone_is_accepted_exactly_when_phonenumber_calls_it_valid() {
        let mut seen = (0, 0);
        for (prefix, region) in [
            ("+1 415 555 ", Region::US),
            ("+1 202 ", Region::US),
            ("+44 7700 9", Region::GB),
            ("+49 151 2", Region::DE),
            ("+49 30 9", Region::DE),
            ("+33 6 12 3", Region::FR),
            ("+61 4 12 3", Region::AU),
            ("+55 11 9", Region::BR),
            ("+800 1234 ", Region::US),
        ] {
            for n in (0..100_000).step_by(997) {
                let raw = format!("{prefix}{n:05}");
                let valid = phonenumber::parse(None, &raw).is_ok_and(|number| number.is_valid());
                assert_eq!(parse_phone(&raw, region).is_ok(), valid, "{raw}");
                if valid {
                    seen.0 += 1;
                } else {
                    seen.1 += 1;
                }
            }
        }
        assert!(
            seen.0 > 0 && seen.1 > 0,
            "both valid and invalid numbers: {seen:?}"
        );
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
            let violations = NewLead::parse(&bad, US, "lead").expect_err(field);
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
        let violations = NewLead::parse(&both, US, "lead").expect_err("two bad fields");
        let fields: Vec<&str> = violations
            .violations()
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["lead.email", "lead.phone"]);
    }

    #[test]
    fn quality_rewards_complete_and_valid_contact_details() {
        let full = NewLead::parse(
            &LeadInput {
                country: "gb".into(),
                website: "analytical.example".into(),
                job_title: "CTO".into(),
                ..input()
            },
            US,
            "lead",
        )
        .expect("valid");
        assert_eq!(full.country, "GB");
        assert_eq!(full.website, "https://analytical.example/");
        let sparse = NewLead::parse(
            &LeadInput {
                phone: String::new(),
                first_name: String::new(),
                company: String::new(),
                ..input()
            },
            US,
            "lead",
        )
        .expect("valid");
        assert!(full.quality_score() > sparse.quality_score());
        assert!((0..=100).contains(&full.quality_score()));
        let disposable = NewLead::parse(
            &LeadInput {
                email: "x@mailinator.com".into(),
                ..input()
            },
            US,
            "lead",
        )
        .expect("valid");
        assert!(
            disposable.quality_score()
                < NewLead::parse(&input(), US, "lead")
                    .expect("valid")
                    .quality_score()
        );
    }

    #[test]
    fn mobile_numbers_are_recognised() {
        let mobile = parse_phone("+44 7400 123456", Region::GB).unwrap().unwrap();
        assert!(mobile.is_mobile(), "{mobile:?}");
        let landline = parse_phone("+44 20 7946 0018", Region::GB)
            .unwrap()
            .unwrap();
        assert_eq!(landline.line_type, Some("fixed_line"));
        assert!(!landline.is_mobile());
    }

    #[test]
    fn international_numbers_keep_every_digit_whatever_the_default_region() {
        for (raw, e164) in [
            ("+49 151 2345 6789", "+4915123456789"),
            ("+55 11 91234 5678", "+5511912345678"),
        ] {
            let phone = parse_phone(raw, Region::US).unwrap_or_else(|err| panic!("{raw}: {err}"));
            assert_eq!(
                phone.map(|phone| phone.e164).as_deref(),
                Some(e164),
                "{raw}"
            );
        }
    }

    #[test]
    fn websites_must_be_http_urls_with_a_domain() {
        assert_eq!(
            parse_url("https://acme.io/about").unwrap(),
            "https://acme.io/about"
        );
        assert!(parse_url("ftp://acme.io").is_err());
        assert!(parse_url("localhost").is_err());
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
                email: email.clone(), phone: phone.clone(), first_name: name.clone(), last_name: name.clone(), company: name,
                source: token.clone(), channel: token.clone(), campaign: token.clone(), phone_region: region.clone(),
                country: region, website: email, job_title: phone, visitor_id: token,
            };
            match NewLead::parse(&given, US, "lead") {
                Ok(lead) => prop_assert!(lead.email.is_some() || lead.phone.is_some()),
                Err(violations) => prop_assert!(!violations.is_empty()),
            }
        }
    }
}
