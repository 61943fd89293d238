//! Realistic, unique leads for the benchmarks, made from a number: names with accents, an email
//! (business or free domains), a phone from one of six regions in the formats people type, a
//! company, UTM attribution and consent. The same number always makes the same lead, so a
//! duplicate row is simply an earlier number again. [`Lead::normalized`] is what capture stores
//! for it, which the SQL references bind.

use std::sync::atomic::{AtomicU64, Ordering};

use leadflow_proto::capture::v1::{
    Attribution, CaptureLeadRequest, ConsentChannel, ConsentInput, LeadInput, LegalBasis,
};

/// The source every benchmark captures through (merge policy).
pub const SOURCE: &str = "bench-web";

/// splitmix64: a fast, well-mixed function of a number.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small deterministic random stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(mix(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        mix(self.0)
    }

    /// Returns a number below `bound` (> 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Returns true with probability `percent` %.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
        (0..len).map(|_| char::from(*self.pick(ALPHABET))).collect()
    }
}

/// Hands out lead numbers, unique within a run.
#[derive(Debug, Default)]
pub struct Numbers(AtomicU64);

impl Numbers {
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// Maps `index` (below `space`) to a scattered number below `space`, one to one: the
/// multiplier is odd and not a multiple of 5, so it is coprime to the powers of 10 (and
/// 8 × 10⁶) used as spaces.
fn scatter(index: u64, space: u64) -> u64 {
    (index % space)
        .wrapping_mul(7_919_891)
        .wrapping_add(1_234_567)
        % space
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Us,
    Gb,
    De,
    Fr,
    Au,
    Br,
}

const REGIONS: [Region; 6] = [
    Region::Us,
    Region::Gb,
    Region::De,
    Region::Fr,
    Region::Au,
    Region::Br,
];

const US_AREAS: [&str; 16] = [
    "212", "213", "305", "310", "312", "404", "415", "503", "512", "602", "617", "646", "702",
    "713", "718", "206",
];

impl Region {
    fn code(self) -> &'static str {
        match self {
            Region::Us => "US",
            Region::Gb => "GB",
            Region::De => "DE",
            Region::Fr => "FR",
            Region::Au => "AU",
            Region::Br => "BR",
        }
    }

    fn tld(self) -> &'static str {
        match self {
            Region::Us => "com",
            Region::Gb => "co.uk",
            Region::De => "de",
            Region::Fr => "fr",
            Region::Au => "com.au",
            Region::Br => "com.br",
        }
    }

    fn first_names(self) -> &'static [&'static str] {
        match self {
            Region::Us => &[
                "James", "Mary", "Olivia", "Liam", "Sophia", "Noah", "Ava", "Ethan", "Zoë",
            ],
            Region::Gb => &[
                "Oliver", "Amelia", "George", "Isla", "Harry", "Freya", "Siobhán",
            ],
            Region::De => &[
                "Jürgen", "Lukas", "Mia", "Felix", "Hannah", "Jonas", "Björn",
            ],
            Region::Fr => &["Chloé", "Léa", "Hugo", "Louis", "Camille", "Théo", "Anaïs"],
            Region::Au => &["Jack", "Charlotte", "William", "Ruby", "Matilda", "Lachlan"],
            Region::Br => &[
                "João",
                "Maria",
                "Gabriel",
                "Ana",
                "Lucas",
                "Júlia",
                "Conceição",
            ],
        }
    }

    fn last_names(self) -> &'static [&'static str] {
        match self {
            Region::Us => &[
                "Smith", "Johnson", "Williams", "Brown", "García", "Miller", "Nguyen",
            ],
            Region::Gb => &["Taylor", "Davies", "Evans", "Wilson", "O'Brien", "Thompson"],
            Region::De => &["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Groß"],
            Region::Fr => &[
                "Martin", "Bernard", "Dubois", "Lefèvre", "Moreau", "Gauthier",
            ],
            Region::Au => &["Nguyen", "Kelly", "Thompson", "White", "Walker", "Ryan"],
            Region::Br => &[
                "Silva",
                "Santos",
                "Oliveira",
                "Souza",
                "Gonçalves",
                "Araújo",
            ],
        }
    }

    fn company_suffix(self) -> &'static str {
        match self {
            Region::Us => "Inc.",
            Region::Gb => "Ltd",
            Region::De => "GmbH",
            Region::Fr => "SAS",
            Region::Au => "Pty Ltd",
            Region::Br => "Ltda",
        }
    }

    fn free_domains(self) -> &'static [&'static str] {
        match self {
            Region::Us => &["gmail.com", "yahoo.com", "outlook.com", "icloud.com"],
            Region::Gb => &["gmail.com", "hotmail.co.uk", "btinternet.com"],
            Region::De => &["gmx.de", "web.de", "gmail.com"],
            Region::Fr => &["orange.fr", "free.fr", "gmail.com"],
            Region::Au => &["bigpond.com", "gmail.com", "outlook.com"],
            Region::Br => &["uol.com.br", "bol.com.br", "gmail.com"],
        }
    }

    /// Returns (as typed, region typed with it, E.164, line type) of the region's `index`th
    /// number; distinct indexes give distinct numbers (below 10⁷ per region).
    ///
    /// Numbers outside the US always carry their region, even when typed with `+`: capture
    /// reads numbers in the source's default region (US) when none is given, and
    /// `phonenumber` 0.3.10 then strips a `1` after a foreign country code
    /// ("+49 151 …" → "+49 51…", "+55 11 9…" invalid); see the unit test below.
    fn phone(self, index: u64, style: u64) -> (String, &'static str, String, &'static str) {
        match self {
            Region::Us => {
                let area = US_AREAS[(index % 16) as usize];
                let local = scatter(index / 16, 8_000_000);
                let exchange = 200 + local / 10_000;
                let line = local % 10_000;
                let e164 = format!("+1{area}{exchange}{line:04}");
                let typed = match style % 3 {
                    0 => (format!("({area}) {exchange}-{line:04}"), "US"),
                    1 => (format!("{area}.{exchange}.{line:04}"), ""),
                    _ => (format!("+1 {area} {exchange} {line:04}"), ""),
                };
                (typed.0, typed.1, e164, "fixed_line_or_mobile")
            }
            Region::Gb => {
                let digits = format!("{:08}", scatter(index, 100_000_000));
                let e164 = format!("+4471{digits}");
                let typed = if style.is_multiple_of(2) {
                    (format!("071{} {}", &digits[..2], &digits[2..]), "GB")
                } else {
                    (format!("+44 71{} {}", &digits[..2], &digits[2..]), "GB")
                };
                (typed.0, typed.1, e164, "mobile")
            }
            Region::De => {
                let digits = format!("{:08}", scatter(index, 100_000_000));
                let e164 = format!("+49151{digits}");
                let typed = if style.is_multiple_of(2) {
                    (format!("0151 {digits}"), "DE")
                } else {
                    (format!("+49 151 {} {}", &digits[..4], &digits[4..]), "DE")
                };
                (typed.0, typed.1, e164, "mobile")
            }
            Region::Fr => {
                let digits = format!("{:07}", scatter(index, 10_000_000));
                let e164 = format!("+3361{digits}");
                let typed = (
                    format!(
                        "06 1{} {} {} {}",
                        &digits[..1],
                        &digits[1..3],
                        &digits[3..5],
                        &digits[5..]
                    ),
                    "FR",
                );
                (typed.0, typed.1, e164, "mobile")
            }
            Region::Au => {
                let digits = format!("{:07}", scatter(index, 10_000_000));
                let e164 = format!("+6141{digits}");
                let typed = (
                    format!("041{} {} {}", &digits[..1], &digits[1..4], &digits[4..]),
                    "AU",
                );
                (typed.0, typed.1, e164, "mobile")
            }
            Region::Br => {
                let digits = format!("{:08}", scatter(index, 100_000_000));
                let e164 = format!("+55119{digits}");
                let typed = if style.is_multiple_of(2) {
                    (format!("+55 11 9{}-{}", &digits[..4], &digits[4..]), "BR")
                } else {
                    (format!("(11) 9{}-{}", &digits[..4], &digits[4..]), "BR")
                };
                (typed.0, typed.1, e164, "mobile")
            }
        }
    }
}

const COMPANIES: [&str; 16] = [
    "Northwind Traders",
    "Globex",
    "Initech",
    "Umbrella Logistics",
    "Stark Industrial",
    "Wayne Biotech",
    "Acme Analytics",
    "Hooli Cloud",
    "Vandelay Imports",
    "Soylent Foods",
    "Tyrell Robotics",
    "Cyberdyne Systems",
    "Massive Dynamic",
    "Wonka Confections",
    "Oceanic Freight",
    "Pied Piper",
];

const JOB_TITLES: [&str; 8] = [
    "Head of Marketing",
    "VP Sales",
    "Operations Manager",
    "CTO",
    "Procurement Lead",
    "Founder",
    "Office Manager",
    "Growth Marketer",
];

/// (channel, utm_source, utm_medium, referrer)
const TOUCHPOINTS: [(&str, &str, &str, &str); 6] = [
    ("paid_search", "google", "cpc", "https://www.google.com/"),
    (
        "paid_social",
        "facebook",
        "paid_social",
        "https://l.facebook.com/",
    ),
    (
        "paid_social",
        "linkedin",
        "paid_social",
        "https://www.linkedin.com/",
    ),
    ("email", "newsletter", "email", ""),
    ("web", "google", "organic", "https://www.google.com/"),
    (
        "referral",
        "partner-portal",
        "referral",
        "https://partners.example.net/",
    ),
];

const CAMPAIGNS: [&str; 5] = [
    "spring-promo-2026",
    "webinar-q2",
    "brand-search",
    "retargeting-eu",
    "ebook-lead-gen",
];

const TERMS: [&str; 4] = ["crm software", "lead management", "sales pipeline tool", ""];

const CONTENTS: [&str; 3] = ["hero-cta", "sidebar-form", "exit-intent"];

const USER_AGENTS: [&str; 4] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36",
];

const DISCLOSURES: [&str; 3] = [
    "By submitting this form you agree that Example SaaS Ltd may contact you by email and text message about our products and services. You can unsubscribe at any time. See our privacy policy for how we process your personal data.",
    "Yes, I would like to receive product news, event invitations and offers from Example SaaS by email, SMS and phone. I understand I can withdraw my consent at any time by clicking unsubscribe or replying STOP.",
    "I agree to be contacted about my enquiry. Example SaaS processes your data to answer your request and, with your consent, to send you relevant content. Consent can be withdrawn at any time; see www.example-saas.com/privacy.",
];

/// Lower-cases and strips accents and punctuation, for the local part of an email.
fn ascii_fold(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            'á' | 'à' | 'â' | 'ä' | 'ã' => Some('a'),
            'é' | 'è' | 'ê' | 'ë' => Some('e'),
            'í' | 'ì' | 'î' | 'ï' => Some('i'),
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' => Some('o'),
            'ú' | 'ù' | 'û' | 'ü' => Some('u'),
            'ç' => Some('c'),
            'ß' => Some('s'),
            c if c.is_ascii_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

fn slug(text: &str) -> String {
    text.split_whitespace()
        .map(ascii_fold)
        .collect::<Vec<_>>()
        .join("-")
}

/// One generated lead, as typed and as stored.
#[derive(Debug, Clone)]
pub struct Lead {
    pub number: u64,
    pub request: CaptureLeadRequest,
    pub normalized: Normalized,
}

/// What capture stores for a lead (the values the SQL references bind).
#[derive(Debug, Clone)]
pub struct Normalized {
    pub email: String,
    pub email_kind: &'static str,
    pub phone_e164: String,
    pub phone_region: &'static str,
    pub phone_line_type: &'static str,
    pub first_name: String,
    pub last_name: String,
    pub company: String,
    pub country: String,
    pub website: String,
    pub job_title: String,
    pub channel: String,
    pub campaign: String,
    pub quality_score: i32,
    pub consent_channels: Vec<String>,
    pub ip_address: String,
    pub user_agent: String,
}

/// The phone number as typed with its region, and its expected E.164 and line type; for the
/// generator check against `phonenumber`.
pub struct PhoneSample {
    pub typed: String,
    pub region: String,
    pub e164: String,
    pub line_type: &'static str,
}

impl Lead {
    /// Returns lead number `number`: the same number always gives the same lead.
    pub fn new(number: u64) -> Self {
        let mut rng = Rng::new(number ^ 0x6c65_6164_666c_6f77);
        let region = REGIONS[(number % 6) as usize];
        let (phone_typed, phone_region_typed, e164, line_type) =
            region.phone(number / 6, rng.next_u64());
        let first_name = (*rng.pick(region.first_names())).to_owned();
        let last_name = (*rng.pick(region.last_names())).to_owned();
        let company_base = *rng.pick(&COMPANIES);
        let company = format!("{company_base} {}", region.company_suffix());
        let company_domain = format!("{}.{}", slug(company_base), region.tld());
        let business = rng.percent(60);
        let domain = if business {
            company_domain.clone()
        } else {
            (*rng.pick(region.free_domains())).to_owned()
        };
        let local = format!(
            "{}.{}{}",
            ascii_fold(&first_name),
            ascii_fold(&last_name),
            number
        );
        let email = format!("{local}@{domain}");
        // People type emails with capitals and spaces now and then; capture normalizes.
        let email_typed = if rng.percent(20) {
            format!(" {}@{} ", local.to_uppercase(), domain)
        } else {
            email.clone()
        };
        let with_country = rng.percent(70);
        let country = if with_country {
            region.code().to_owned()
        } else {
            String::new()
        };
        let with_website = business && rng.percent(70);
        let website_typed = if with_website {
            format!("www.{company_domain}")
        } else {
            String::new()
        };
        let website = if with_website {
            format!("https://www.{company_domain}/")
        } else {
            String::new()
        };
        let job_title = (*rng.pick(&JOB_TITLES)).to_owned();
        let (channel, utm_source, utm_medium, referrer) = *rng.pick(&TOUCHPOINTS);
        let campaign = (*rng.pick(&CAMPAIGNS)).to_owned();
        let term = (*rng.pick(&TERMS)).to_owned();
        let content = (*rng.pick(&CONTENTS)).to_owned();
        let gclid = if utm_source == "google" && utm_medium == "cpc" {
            format!("Cj0KCQjw{}", rng.token(72))
        } else {
            String::new()
        };
        let fbclid = if utm_source == "facebook" {
            format!("IwAR{}", rng.token(57))
        } else {
            String::new()
        };
        let landing_page = format!(
            "https://www.example-saas.com/lp/{campaign}?utm_source={utm_source}&utm_medium={utm_medium}&utm_campaign={campaign}"
        );
        let consent_channels: Vec<ConsentChannel> = match rng.below(3) {
            0 => vec![ConsentChannel::Email],
            1 => vec![ConsentChannel::Email, ConsentChannel::Sms],
            _ => vec![
                ConsentChannel::Email,
                ConsentChannel::Sms,
                ConsentChannel::Call,
            ],
        };
        let ip_address = if rng.percent(10) {
            format!(
                "2a02:810d:{:x}:{:x}::{:x}",
                rng.below(0xffff) + 1,
                rng.below(0xffff) + 1,
                rng.below(0xffff) + 1
            )
        } else {
            let first = *rng.pick(&[24u64, 73, 81, 92, 145, 176, 188, 203]);
            format!(
                "{first}.{}.{}.{}",
                rng.below(256),
                rng.below(256),
                1 + rng.below(254)
            )
        };
        let user_agent = (*rng.pick(&USER_AGENTS)).to_owned();
        let disclosure = (*rng.pick(&DISCLOSURES)).to_owned();
        let request = CaptureLeadRequest {
            lead: Some(LeadInput {
                email: email_typed,
                phone: phone_typed,
                first_name: first_name.clone(),
                last_name: last_name.clone(),
                company: company.clone(),
                source: SOURCE.to_owned(),
                channel: channel.to_owned(),
                campaign: campaign.clone(),
                phone_region: phone_region_typed.to_owned(),
                country: country.clone(),
                website: website_typed,
                job_title: job_title.clone(),
                visitor_id: String::new(),
            }),
            attribution: Some(Attribution {
                utm_source: utm_source.to_owned(),
                utm_medium: utm_medium.to_owned(),
                utm_campaign: campaign.clone(),
                utm_term: term,
                utm_content: content,
                gclid,
                fbclid,
                referrer: referrer.to_owned(),
                landing_page,
            }),
            consent: Some(ConsentInput {
                channels: consent_channels.iter().map(|c| *c as i32).collect(),
                disclosure_text: disclosure,
                form_url: "https://www.example-saas.com/contact".to_owned(),
                form_version: "2026-03".to_owned(),
                ip_address: ip_address.clone(),
                user_agent: user_agent.clone(),
                legal_basis: LegalBasis::Consent.into(),
                given_at: None,
            }),
        };
        let email_points = 30;
        let phone_points = if line_type == "mobile" { 30 } else { 25 };
        let filled = |text: &str, points: i32| if text.is_empty() { 0 } else { points };
        let normalized = Normalized {
            email,
            email_kind: if business { "business" } else { "free" },
            phone_e164: e164,
            phone_region: region.code(),
            phone_line_type: line_type,
            quality_score: email_points
                + phone_points
                + filled(&first_name, 10)
                + filled(&last_name, 10)
                + filled(&company, 8)
                + filled(&country, 4)
                + filled(&job_title, 4)
                + filled(&website, 4),
            first_name,
            last_name,
            company,
            country,
            website,
            job_title,
            channel: channel.to_owned(),
            campaign,
            consent_channels: consent_channels
                .iter()
                .map(|c| {
                    c.as_str_name()
                        .trim_start_matches("CONSENT_CHANNEL_")
                        .to_lowercase()
                })
                .collect(),
            ip_address,
            user_agent,
        };
        Self {
            number,
            request,
            normalized,
        }
    }

    /// Returns the phone as typed and as it should normalize.
    pub fn phone_sample(&self) -> PhoneSample {
        let input = self.request.lead.clone().unwrap_or_default();
        PhoneSample {
            typed: input.phone,
            region: input.phone_region,
            e164: self.normalized.phone_e164.clone(),
            line_type: self.normalized.phone_line_type,
        }
    }
}

/// Returns a capture request that fails validation (for B3c and the import's 5 % bad rows);
/// `variant` picks the kind of mistake.
pub fn invalid_request(number: u64, variant: u64) -> CaptureLeadRequest {
    let mut request = Lead::new(number).request;
    if let Some(lead) = request.lead.as_mut() {
        match variant % 4 {
            0 => {
                lead.email = "not-an-email".to_owned();
                lead.phone = "12".to_owned();
            }
            1 => {
                lead.email = String::new();
                lead.phone = String::new();
            }
            2 => {
                lead.email = format!("someone{number}@localhost");
                lead.country = "XX".to_owned();
            }
            _ => {
                lead.phone = "+1 555 0100 99999".to_owned();
                lead.website = "ftp://files".to_owned();
            }
        }
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_make_distinct_people_and_the_same_number_the_same_person() {
        let a = Lead::new(7);
        let b = Lead::new(7);
        assert_eq!(a.normalized.email, b.normalized.email);
        let mut phones = std::collections::HashSet::new();
        let mut emails = std::collections::HashSet::new();
        for number in 0..20_000 {
            let lead = Lead::new(number);
            assert!(phones.insert(lead.normalized.phone_e164.clone()));
            assert!(emails.insert(lead.normalized.email.clone()));
        }
    }

    #[test]
    fn phones_parse_valid_to_the_expected_e164() {
        let mut failures = Vec::new();
        for number in (0..3_000u64).chain((0..3_000).map(|n| mix(n) % 50_000_000)) {
            let sample = Lead::new(number).phone_sample();
            let region = if sample.region.is_empty() {
                "US"
            } else {
                &sample.region
            };
            let region = region.parse::<phonenumber::country::Id>().expect("region");
            let parsed = phonenumber::parse(Some(region), &sample.typed);
            let e164 = parsed
                .as_ref()
                .ok()
                .filter(|parsed| parsed.is_valid())
                .map(|parsed| parsed.format().mode(phonenumber::Mode::E164).to_string());
            if e164.as_deref() != Some(sample.e164.as_str()) {
                failures.push(format!(
                    "{:?} ({:?}) -> {e164:?}, want {}",
                    sample.typed, sample.region, sample.e164
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} failures, e.g. {:#?}",
            failures.len(),
            &failures[..failures.len().min(12)]
        );
    }

    #[test]
    fn scatter_is_one_to_one() {
        let mut seen = std::collections::HashSet::new();
        for index in 0..100_000 {
            assert!(seen.insert(scatter(index, 10_000_000)));
        }
    }
}
