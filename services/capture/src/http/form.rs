//! What a web form posted, turned into a capture request: the source's field mapping, our own
//! field names, attribution, and consent evidence from checkboxes and the request's headers.
//! Pure: no I/O.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;
use axum::http::header::{REFERER, USER_AGENT};
use leadflow_proto::capture::v1::{
    Attribution, CaptureLeadRequest, ConsentChannel, ConsentInput, LeadInput, LegalBasis,
};

/// Channel of a web-form lead that names none.
pub const DEFAULT_CHANNEL: &str = "web";

/// Longest header value copied into evidence or attribution; longer ones are cut, so a long
/// `Referer` never gets a lead rejected (capture bounds these fields at 2,048 characters).
const MAX_HEADER_CHARS: usize = 2_048;

/// Name of the header carrying the client's address through a proxy.
const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The hidden field the tracking snippet adds to forms: the browser's visitor id.
pub const VISITOR_FIELD: &str = "lf_visitor";

/// Lead fields a form may post under our own names (`source` is always the form's source).
const LEAD_FIELDS: [&str; 11] = [
    "email",
    "phone",
    "first_name",
    "last_name",
    "company",
    "country",
    "website",
    "job_title",
    "campaign",
    "channel",
    "phone_region",
];

/// The checkboxes that grant consent, with the channel each covers.
const CONSENT_FIELDS: [(&str, ConsentChannel); 3] = [
    ("consent_email", ConsentChannel::Email),
    ("consent_sms", ConsentChannel::Sms),
    ("consent_call", ConsentChannel::Call),
];

/// The fields of one post by name. A repeated name keeps its last value, so the usual hidden
/// `0` before a checkbox of the same name is overridden when the box is ticked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Posted(HashMap<String, String>);

impl Posted {
    /// Collects `pairs` in the order they were posted.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        Self(pairs.into_iter().collect())
    }

    /// Returns the value posted under `name`, trimmed; `None` when absent or blank.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(|value| value.trim())
            .filter(|value| !value.is_empty())
    }
}

/// What the request itself says about the person posting, beside the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    pub user_agent: String,
    /// The `Referer` header: the page the form was on.
    pub referer: String,
}

impl Client {
    /// Reads the client from the socket peer and the request headers; the first
    /// `X-Forwarded-For` entry counts only when `trust_forwarded_for`.
    pub fn from_request(peer: SocketAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> Self {
        Self {
            ip: client_ip(peer, headers, trust_forwarded_for),
            user_agent: header_text(headers, USER_AGENT.as_str()),
            referer: header_text(headers, REFERER.as_str()),
        }
    }
}

/// Returns the client's IP: the first `X-Forwarded-For` entry when trusted and readable,
/// else the socket peer (IPv4-mapped IPv6 shown as IPv4).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> IpAddr {
    let forwarded = trust_forwarded_for
        .then(|| headers.get(X_FORWARDED_FOR))
        .flatten()
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(str::trim)
        .and_then(|first| {
            first
                .parse::<IpAddr>()
                .ok()
                .or_else(|| first.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        });
    forwarded.unwrap_or(peer.ip()).to_canonical()
}

/// Returns a header's value as text, control characters dropped, cut at 2,048 characters.
fn header_text(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_HEADER_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// Returns whether a checkbox value means ticked: `on` (what browsers send), `true`, `1`, `yes`.
pub fn ticked(value: &str) -> bool {
    ["on", "true", "1", "yes"]
        .iter()
        .any(|yes| value.trim().eq_ignore_ascii_case(yes))
}

/// A capture request built from a post, and which posted field each request field came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub request: CaptureLeadRequest,
    /// Dotted request field (`lead.email`) → the posted field name its value came from
    /// (`E-Mail` through the mapping), to name problems as the form named them.
    pub posted_names: BTreeMap<String, String>,
}

/// Finds the value of our field `ours`: first a posted field the source maps onto it (their
/// names in sorted order), then a posted field named `ours` itself.
fn lookup<'a>(
    posted: &'a Posted,
    mapping: &'a BTreeMap<&'a str, &'a str>,
    ours: &'a str,
) -> Option<(&'a str, &'a str)> {
    mapping
        .iter()
        .filter(|(_, target)| **target == ours)
        .find_map(|(theirs, _)| posted.value(theirs).map(|value| (*theirs, value)))
        .or_else(|| posted.value(ours).map(|value| (ours, value)))
}

/// Builds the capture request for a post to `source_id`'s form: `field_mapping` (their name →
/// ours) is applied before our own names; the channel defaults to `web`; consent evidence is
/// recorded when any consent checkbox is ticked.
pub fn capture_request(
    source_id: &str,
    field_mapping: &HashMap<String, String>,
    posted: &Posted,
    client: &Client,
) -> Mapped {
    let mapping: BTreeMap<&str, &str> = field_mapping
        .iter()
        .map(|(theirs, ours)| (theirs.as_str(), ours.as_str()))
        .collect();
    let mut posted_names = BTreeMap::new();
    let mut lead_values: HashMap<&str, String> = HashMap::new();
    for ours in LEAD_FIELDS {
        if let Some((name, value)) = lookup(posted, &mapping, ours) {
            posted_names.insert(format!("lead.{ours}"), name.to_owned());
            lead_values.insert(ours, value.to_owned());
        }
    }
    // A visitor id that is not one (a stale or tampered cookie) is left out rather than
    // costing the person their lead; only what the snippet sets, or a field mapped onto it.
    let visitor_id = lookup(posted, &mapping, "visitor_id")
        .map(|(_, value)| value)
        .or_else(|| posted.value(VISITOR_FIELD))
        .and_then(|value| uuid::Uuid::parse_str(value).ok())
        .filter(|id| !id.is_nil())
        .map(|id| id.to_string())
        .unwrap_or_default();
    let mut lead_field = |name: &str| lead_values.remove(name).unwrap_or_default();
    let channel = lead_field("channel");
    let lead = LeadInput {
        email: lead_field("email"),
        phone: lead_field("phone"),
        first_name: lead_field("first_name"),
        last_name: lead_field("last_name"),
        company: lead_field("company"),
        source: source_id.to_owned(),
        channel: if channel.is_empty() {
            DEFAULT_CHANNEL.to_owned()
        } else {
            channel
        },
        campaign: lead_field("campaign"),
        phone_region: lead_field("phone_region"),
        country: lead_field("country"),
        website: lead_field("website"),
        job_title: lead_field("job_title"),
        visitor_id,
    };

    let mut attribution_field = |name: &str| match posted.value(name) {
        Some(value) => {
            posted_names.insert(format!("attribution.{name}"), name.to_owned());
            value.to_owned()
        }
        None => String::new(),
    };
    let mut attribution = Attribution {
        utm_source: attribution_field("utm_source"),
        utm_medium: attribution_field("utm_medium"),
        utm_campaign: attribution_field("utm_campaign"),
        utm_term: attribution_field("utm_term"),
        utm_content: attribution_field("utm_content"),
        gclid: attribution_field("gclid"),
        fbclid: attribution_field("fbclid"),
        landing_page: attribution_field("landing_page"),
        referrer: attribution_field("referrer"),
    };
    if attribution.referrer.is_empty() {
        attribution.referrer = client.referer.clone();
    }

    let consent = consent(posted, client, &mut posted_names);
    Mapped {
        request: CaptureLeadRequest {
            lead: Some(lead),
            attribution: (attribution != Attribution::default()).then_some(attribution),
            consent,
        },
        posted_names,
    }
}

/// Returns the consent evidence of a post: `None` unless a consent checkbox is ticked.
fn consent(
    posted: &Posted,
    client: &Client,
    posted_names: &mut BTreeMap<String, String>,
) -> Option<ConsentInput> {
    let channels: Vec<i32> = CONSENT_FIELDS
        .iter()
        .filter(|(name, _)| posted.value(name).is_some_and(ticked))
        .map(|(_, channel)| i32::from(*channel))
        .collect();
    if channels.is_empty() {
        return None;
    }
    posted_names.insert(
        "consent.disclosure_text".to_owned(),
        "consent_text".to_owned(),
    );
    posted_names.insert("consent.form_version".to_owned(), "form_version".to_owned());
    Some(ConsentInput {
        channels,
        // The exact text, untrimmed: it is evidence of what the page showed.
        disclosure_text: posted.0.get("consent_text").cloned().unwrap_or_default(),
        form_url: client.referer.clone(),
        form_version: posted.value("form_version").unwrap_or_default().to_owned(),
        ip_address: client.ip.to_string(),
        user_agent: client.user_agent.clone(),
        legal_basis: LegalBasis::Consent.into(),
        given_at: None,
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use axum::http::HeaderValue;

    use super::*;

    fn posted(pairs: &[(&str, &str)]) -> Posted {
        Posted::from_pairs(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
    }

    fn client() -> Client {
        Client {
            ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            user_agent: "Mozilla/5.0 (test)".into(),
            referer: "https://www.example.com/contact".into(),
        }
    }

    fn mapping(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(theirs, ours)| ((*theirs).to_owned(), (*ours).to_owned()))
            .collect()
    }

    #[test]
    fn the_field_mapping_comes_before_our_own_names() {
        let post = posted(&[
            ("E-Mail", "mapped@example.com"),
            ("email", "direct@example.com"),
            ("Vorname", "  Jürgen "),
            ("last_name", "Muster"),
            ("source", "someone-else"),
        ]);
        let mapped = capture_request(
            "web-contact",
            &mapping(&[("E-Mail", "email"), ("Vorname", "first_name")]),
            &post,
            &client(),
        );
        let lead = mapped.request.lead.expect("lead");
        assert_eq!(lead.email, "mapped@example.com");
        assert_eq!(lead.first_name, "Jürgen");
        assert_eq!(lead.last_name, "Muster");
        assert_eq!(
            lead.source, "web-contact",
            "the form's source, never posted"
        );
        assert_eq!(lead.channel, "web");
        assert_eq!(mapped.posted_names["lead.email"], "E-Mail");
        assert_eq!(mapped.posted_names["lead.last_name"], "last_name");
    }

    #[test]
    fn a_blank_mapped_field_falls_back_to_our_name() {
        let post = posted(&[("E-Mail", " "), ("email", "direct@example.com")]);
        let mapped = capture_request(
            "web-contact",
            &mapping(&[("E-Mail", "email")]),
            &post,
            &client(),
        );
        assert_eq!(
            mapped.request.lead.expect("lead").email,
            "direct@example.com"
        );
        assert_eq!(mapped.posted_names["lead.email"], "email");
    }

    #[test]
    fn a_posted_channel_wins_over_the_default() {
        let mapped = capture_request(
            "web-contact",
            &HashMap::new(),
            &posted(&[("channel", "paid_search"), ("campaign", "spring")]),
            &client(),
        );
        let lead = mapped.request.lead.expect("lead");
        assert_eq!(lead.channel, "paid_search");
        assert_eq!(lead.campaign, "spring");
    }

    #[test]
    fn attribution_takes_utm_fields_and_the_referer_header_as_fallback() {
        let mapped = capture_request(
            "web-contact",
            &HashMap::new(),
            &posted(&[
                ("utm_source", "google"),
                ("utm_medium", "cpc"),
                ("gclid", "abc123"),
                ("landing_page", "https://www.example.com/pricing"),
            ]),
            &client(),
        );
        let attribution = mapped.request.attribution.expect("attribution");
        assert_eq!(attribution.utm_source, "google");
        assert_eq!(attribution.utm_medium, "cpc");
        assert_eq!(attribution.gclid, "abc123");
        assert_eq!(attribution.landing_page, "https://www.example.com/pricing");
        assert_eq!(attribution.referrer, "https://www.example.com/contact");

        let posted_referrer = capture_request(
            "web-contact",
            &HashMap::new(),
            &posted(&[("referrer", "https://news.example.org/")]),
            &client(),
        );
        assert_eq!(
            posted_referrer
                .request
                .attribution
                .expect("attribution")
                .referrer,
            "https://news.example.org/"
        );
    }

    #[test]
    fn the_snippets_visitor_field_is_taken_when_it_is_a_uuid() {
        let visitor = "6f1c1e8e-2a44-4c55-9a3e-0d5c7f1f9b21";
        let mapped = capture_request(
            "web-contact",
            &HashMap::new(),
            &posted(&[("email", "a@example.com"), (VISITOR_FIELD, visitor)]),
            &client(),
        );
        assert_eq!(mapped.request.lead.expect("lead").visitor_id, visitor);
        let mapped = capture_request(
            "web-contact",
            &mapping(&[("hutk", "visitor_id")]),
            &posted(&[("hutk", &visitor.to_uppercase())]),
            &client(),
        );
        assert_eq!(
            mapped.request.lead.expect("lead").visitor_id,
            visitor,
            "through the mapping, normalized"
        );
        for tampered in ["", "x", "00000000-0000-0000-0000-000000000000", "<script>"] {
            let mapped = capture_request(
                "web-contact",
                &HashMap::new(),
                &posted(&[("email", "a@example.com"), (VISITOR_FIELD, tampered)]),
                &client(),
            );
            assert_eq!(
                mapped.request.lead.expect("lead").visitor_id,
                "",
                "{tampered:?} is left out"
            );
        }
    }

    #[test]
    fn no_attribution_at_all_is_none() {
        let bare = Client {
            referer: String::new(),
            ..client()
        };
        let mapped = capture_request("web-contact", &HashMap::new(), &posted(&[]), &bare);
        assert_eq!(mapped.request.attribution, None);
    }

    #[test]
    fn checkbox_values_people_and_browsers_send_are_understood() {
        for yes in ["on", "ON", "true", "True", "1", "yes", " Yes "] {
            assert!(ticked(yes), "{yes:?} is ticked");
        }
        for no in ["", "off", "0", "false", "no", "y", "checked?"] {
            assert!(!ticked(no), "{no:?} is not ticked");
        }
    }

    #[test]
    fn a_ticked_box_records_consent_evidence_from_the_request() {
        let mapped = capture_request(
            "web-contact",
            &HashMap::new(),
            &posted(&[
                ("email", "a@example.com"),
                ("consent_email", "0"),
                ("consent_email", "on"),
                ("consent_sms", "off"),
                ("consent_call", "1"),
                ("consent_text", "I agree to calls and emails. "),
                ("form_version", "v3"),
            ]),
            &client(),
        );
        let consent = mapped.request.consent.expect("consent");
        assert_eq!(
            consent.channels,
            [
                i32::from(ConsentChannel::Email),
                i32::from(ConsentChannel::Call)
            ]
        );
        assert_eq!(consent.disclosure_text, "I agree to calls and emails. ");
        assert_eq!(consent.form_version, "v3");
        assert_eq!(consent.form_url, "https://www.example.com/contact");
        assert_eq!(consent.ip_address, "203.0.113.7");
        assert_eq!(consent.user_agent, "Mozilla/5.0 (test)");
        assert_eq!(consent.legal_basis(), LegalBasis::Consent);
    }

    #[test]
    fn no_ticked_box_means_no_consent_record() {
        let mapped = capture_request(
            "web-contact",
            &HashMap::new(),
            &posted(&[("consent_email", "0"), ("consent_text", "I agree.")]),
            &client(),
        );
        assert_eq!(mapped.request.consent, None);
    }

    #[test]
    fn forwarded_for_counts_only_when_trusted() {
        let peer: SocketAddr = "10.0.0.5:41000".parse().expect("addr");
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("198.51.100.9, 10.0.0.1"),
        );
        assert_eq!(client_ip(peer, &headers, false).to_string(), "10.0.0.5");
        assert_eq!(client_ip(peer, &headers, true).to_string(), "198.51.100.9");

        headers.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("[2001:db8::1]:443"),
        );
        assert_eq!(client_ip(peer, &headers, true).to_string(), "2001:db8::1");

        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("unknown"));
        assert_eq!(client_ip(peer, &headers, true).to_string(), "10.0.0.5");

        let mapped_v4: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().expect("addr");
        assert_eq!(
            client_ip(mapped_v4, &HeaderMap::new(), false).to_string(),
            "127.0.0.1"
        );
    }

    #[test]
    fn long_headers_are_cut_not_rejected() {
        let mut headers = HeaderMap::new();
        let long = format!("https://www.example.com/?q={}", "x".repeat(5_000));
        headers.insert(REFERER, HeaderValue::from_str(&long).expect("header"));
        headers.insert(USER_AGENT, HeaderValue::from_static("  Agent/1.0\t"));
        let client = Client::from_request("127.0.0.1:1".parse().expect("addr"), &headers, false);
        assert_eq!(client.referer.chars().count(), MAX_HEADER_CHARS);
        assert_eq!(client.user_agent, "Agent/1.0");
    }
}
