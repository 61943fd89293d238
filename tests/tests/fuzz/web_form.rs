//! Generated web-form posts through real sockets (R8, issue #4): form-urlencoded and JSON
//! bodies, valid leads mixed with hostile posts — bad content types and encodings, invalid
//! UTF-8, wrong JSON shapes, duplicate keys, bodies at and over the size limit, control
//! characters, unknown and mapped fields, filled honeypots, missing and garbage form keys.
//! No 5xx, no dropped connection, valid leads accepted, every lead rejection names its fields,
//! and a filled honeypot looks accepted but stores nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use leadflow_e2e::{Service, Suite};
use leadflow_proto::capture::v1::{DedupeMode, DedupePolicy, SourceKind, SourceSettings, WebForm};
use proptest::prelude::*;
use proptest::sample::Index;
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio_stream::wrappers::ReceiverStream;
use tonic_health::pb::health_check_response::ServingStatus;

use super::{cases, generate, regex, text};

/// The site the forms are on: the one origin they allow.
const SITE: &str = "https://www.fuzz.example";
const THANK_YOU_URL: &str = "https://www.fuzz.example/thanks";
const HONEYPOT: &str = "nickname";
/// What a form post gets when its source names no thank-you page (capture's `page::THANK_YOU`).
const THANK_YOU_TEXT: &str = "Thank you! We received your details.\n";
/// capture's body limit (`http::MAX_BODY_BYTES`).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// Posts in flight at once.
const IN_FLIGHT: usize = 12;
/// A post not answered within this counts as a hang.
const HANG: Duration = Duration::from_secs(10);
/// The forms' field mapping: their name → ours.
const MAPPING: [(&str, &str); 4] = [
    ("E-Mail", "email"),
    ("Vorname", "first_name"),
    ("Telefon", "phone"),
    ("Firma", "company"),
];
/// Names capture reads from a post under its own names (README, web-to-lead).
const KNOWN_FIELDS: [&str; 25] = [
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
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "gclid",
    "fbclid",
    "landing_page",
    "referrer",
    "consent_email",
    "consent_sms",
    "consent_call",
    "consent_text",
    "form_version",
];
const FORM_TYPES: [&str; 4] = [
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
    "Application/X-WWW-Form-Urlencoded",
    "application/x-www-form-urlencoded;",
];
const JSON_TYPES: [&str; 4] = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/json;",
];
const OTHER_TYPES: [&str; 6] = [
    "text/plain",
    "multipart/form-data; boundary=fuzz",
    "application/xml",
    "application/vnd.api+json",
    "",
    "application/x-www-form-urlencodedjson",
];
const DENIED_ORIGINS: [&str; 4] = [
    "https://evil.example",
    "https://www.fuzz.example.evil.example",
    "http://www.fuzz.example",
    "null",
];

/// The two forms a post may go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Redirects to the thank-you page and has the honeypot.
    Redirecting,
    /// Names neither: a plain thank-you for form posts, and `nickname` is just another field.
    Plain,
}

#[derive(Debug, Clone)]
enum Target {
    Form(Form),
    /// `/v1/forms/` with no key at all.
    NoKey,
    /// A well-formed key no source has.
    UnknownKey(String),
    /// Any bytes, percent-encoded into the path.
    GarbageKey(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Absent,
    /// The form's own site.
    Allowed,
    Denied(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Form,
    Json,
}

#[derive(Debug, Clone)]
enum Declared {
    /// One spelling of the body's own content type.
    Matching(usize),
    /// The other kind's content type.
    Swapped,
    Missing,
    Other(&'static str),
}

/// A posted value; JSON keeps its type, a form sends its text.
#[derive(Debug, Clone)]
enum Field {
    Text(String),
    Number(&'static str),
    Bool(bool),
    Null,
    List,
    Object,
}

impl Field {
    fn text(value: &str) -> Self {
        Field::Text(value.to_owned())
    }

    /// Returns the value a form posts, `None` for a field it leaves out.
    fn form_text(&self) -> Option<String> {
        match self {
            Field::Text(text) => Some(text.clone()),
            Field::Number(number) => Some((*number).to_owned()),
            Field::Bool(flag) => Some(flag.to_string()),
            Field::Null => None,
            Field::List | Field::Object => Some(self.json()),
        }
    }

    fn json(&self) -> String {
        match self {
            Field::Text(text) => Value::from(text.as_str()).to_string(),
            Field::Number(number) => (*number).to_owned(),
            Field::Bool(flag) => flag.to_string(),
            Field::Null => "null".to_owned(),
            Field::List => r#"["a@fuzz.example", 1, [null]]"#.to_owned(),
            Field::Object => r#"{"email": "a@fuzz.example", "n": {}}"#.to_owned(),
        }
    }
}

/// How a body is spoiled after it is written.
#[derive(Debug, Clone)]
enum Mangle {
    None,
    /// Form: raw bytes spliced in (bad escapes, invalid UTF-8, stray delimiters).
    Splice(&'static [u8], Index),
    /// JSON: the whole body replaced by a value that is not an object.
    NotAnObject(&'static str),
    /// JSON: cut short.
    Truncated(Index),
    /// JSON: a raw 0xFF byte inside the first string.
    InvalidUtf8,
    /// JSON: a field nested deeper than the parser allows.
    Deep(usize),
    /// JSON: a field whose value is an unpaired UTF-16 surrogate escape.
    LoneSurrogate,
    /// JSON: a number out of range.
    HugeNumber,
    /// JSON: text after the object.
    Trailing,
    /// JSON: a UTF-8 byte order mark first.
    ByteOrderMark,
}

#[derive(Debug, Clone, Copy)]
enum Size {
    Natural,
    /// Padded with an extra field to exactly this many bytes.
    Exactly(usize),
}

#[derive(Debug, Clone, Copy)]
enum Idempotency {
    Absent,
    /// A key of this post alone.
    Unique,
    /// One of a few keys many posts share.
    Shared(u8),
    /// A header value the endpoint refuses.
    Invalid(usize),
}

/// One generated post.
#[derive(Debug, Clone)]
struct Post {
    target: Target,
    origin: Origin,
    kind: Kind,
    declared: Declared,
    fields: Vec<(String, Field)>,
    /// The fields make a valid lead.
    clean: bool,
    /// A honeypot field inserted among the fields.
    honeypot: Option<(Index, Field)>,
    size: Size,
    mangle: Mangle,
    idempotency: Idempotency,
    referer: Option<usize>,
    user_agent: Option<usize>,
}

/// What the endpoint must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// No route: 404.
    NoRoute,
    /// A key that cannot be one: some 4xx.
    BadKey,
    /// Refused before any field is read: this status and `{"error": …}`.
    Refused(StatusCode),
    /// 422 naming exactly these JSON fields as not text.
    NotText(Vec<String>),
    /// 422 naming the `idempotency-key` header.
    BadIdempotencyKey,
    /// Looks accepted, stores nothing.
    Honeypot,
    /// A valid lead: accepted.
    Accepted,
    /// Accepted, or rejected with the fields named.
    Judged,
}

/// A post as sent, with what must come back.
struct Rendered {
    url: String,
    headers: HeaderMap,
    body: Vec<u8>,
    form: Option<Form>,
    /// The kind of answer: by the declared content type.
    answers_as: Option<Kind>,
    origin: Origin,
    expect: Expect,
}

/// What a post was answered, for the tally and the store checks.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Created(String),
    Merged(String),
    /// Held for merge review (JSON `in_review`, no lead id).
    Held,
    Redirected,
    Thanked,
    Honeypot(Option<String>),
    Rejected,
    Refused,
}

fn one_of<T: Clone + std::fmt::Debug + 'static>(values: &[T]) -> BoxedStrategy<T> {
    prop::sample::select(values.to_vec()).boxed()
}

fn name_value(
    names: &'static [&'static str],
    value: impl Strategy<Value = String> + 'static,
) -> impl Strategy<Value = (String, Field)> {
    (one_of(names), value).prop_map(|(name, value)| (name.to_owned(), Field::Text(value)))
}

/// Fields of a valid lead, under our names and the mapped ones, with unknown extras.
fn clean_fields() -> BoxedStrategy<Vec<(String, Field)>> {
    let email = (
        prop_oneof![3 => regex("[a-z]{4,12}(\\.[a-z]{2,8})?"), 1 => regex("[a-c]{1,2}")],
        regex("[a-z]{3,10}"),
        one_of(&["", " ", "  "]),
    )
        .prop_map(|(local, domain, space)| format!("{space}{local}@{domain}.example{space}"));
    let email = (one_of(&["email", "E-Mail"]), email)
        .prop_map(|(name, email)| vec![(name.to_owned(), Field::Text(email))]);
    let optional = (
        prop::option::of(name_value(
            &["first_name", "Vorname"],
            regex("[A-Za-zÀ-ÿ' -]{1,30}"),
        )),
        prop::option::of(name_value(&["last_name"], regex("[A-Za-zÀ-ÿ' -]{1,30}"))),
        prop::option::of(name_value(
            &["company", "Firma"],
            regex("[A-Za-z0-9&., -]{1,30}"),
        )),
        prop::option::of(name_value(&["job_title"], regex("[A-Za-z ]{1,30}"))),
        prop::option::of(name_value(
            &["phone", "Telefon"],
            one_of(&["+1 415 555 0142", "(415) 555-0199", "+44 7400 123456"])
                .prop_map(str::to_owned),
        )),
        prop::option::of(name_value(
            &["country"],
            one_of(&["GB", "DE", "US"]).prop_map(str::to_owned),
        )),
        prop::option::of(name_value(
            &["channel"],
            one_of(&["web", "paid_search", "referral"]).prop_map(str::to_owned),
        )),
        prop::option::of(name_value(&["campaign"], regex("[a-z0-9-]{1,20}"))),
        prop::option::of(name_value(
            &["website"],
            one_of(&["https://www.acme.example/", "acme.example"]).prop_map(str::to_owned),
        )),
        prop::collection::vec(
            name_value(
                &[
                    "utm_source",
                    "utm_medium",
                    "utm_campaign",
                    "gclid",
                    "fbclid",
                ],
                regex("[A-Za-z0-9_-]{1,40}"),
            ),
            0..3,
        ),
        prop::option::of(name_value(
            &["landing_page", "referrer"],
            regex("https://www\\.fuzz\\.example/[a-z]{0,10}"),
        )),
    )
        .prop_map(|fields| {
            let (first, last, company, job, phone, country, channel, campaign, website, utm, page) =
                fields;
            let mut pairs: Vec<(String, Field)> = [
                first, last, company, job, phone, country, channel, campaign, website, page,
            ]
            .into_iter()
            .flatten()
            .collect();
            pairs.extend(utm);
            pairs
        });
    let consent = prop::option::of((
        prop::sample::subsequence(vec!["consent_email", "consent_sms", "consent_call"], 1..=3),
        prop_oneof![
            one_of(&["on", "ON", "true", "1", "yes", " Yes "]).prop_map(Field::text),
            Just(Field::Bool(true)),
            Just(Field::Number("1")),
        ],
        any::<bool>(),
        one_of(&[
            "I agree that Fuzz Inc may contact me.",
            "Ich stimme zu.\nDanke.",
        ]),
        prop::option::of(prop_oneof![
            Just(Field::text("v3")),
            Just(Field::Number("3"))
        ]),
    ))
    .prop_map(|consent| {
        let Some((boxes, ticked, hidden_zero, disclosure, version)) = consent else {
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for name in boxes {
            if hidden_zero {
                pairs.push((name.to_owned(), Field::text("0")));
            }
            pairs.push((name.to_owned(), ticked.clone()));
        }
        pairs.push(("consent_text".to_owned(), Field::text(disclosure)));
        pairs.extend(version.map(|version| ("form_version".to_owned(), version)));
        pairs
    });
    // Fields nobody reads: anything goes in them.
    let unknown = prop::collection::vec(
        (
            regex("x_[a-z_]{1,10}"),
            prop_oneof![
                3 => text().prop_map(Field::Text),
                1 => Just(Field::text("Send")),
                1 => Just(Field::Null),
            ],
        ),
        0..3,
    );
    (email, optional, consent, unknown)
        .prop_map(|(email, optional, consent, unknown)| {
            let mut pairs = email;
            pairs.extend(optional);
            pairs.extend(consent);
            pairs.extend(unknown);
            pairs
        })
        .boxed()
}

/// Fields anyone might post: any name capture reads or not, any value.
fn hostile_fields() -> BoxedStrategy<Vec<(String, Field)>> {
    let mapped: Vec<&str> = MAPPING.iter().map(|(theirs, _)| *theirs).collect();
    let name = prop_oneof![
        6 => one_of(&KNOWN_FIELDS).prop_map(str::to_owned),
        2 => one_of(&mapped).prop_map(str::to_owned),
        1 => Just(HONEYPOT.to_owned()),
        2 => regex("x_[a-z_]{1,12}"),
        1 => regex("\\PC{0,20}"),
        1 => regex("[\\x00-\\x1f]{1,4}"),
        1 => Just(String::new()),
        1 => regex("[a-z]{300}"),
    ];
    let value = prop_oneof![
        12 => text().prop_map(Field::Text),
        2 => Just(Field::text("on")),
        1 => one_of(&["0", "-1", "4155550142", "1.5e3", "-0.0", "123456789012345678901234567890"])
            .prop_map(Field::Number),
        1 => any::<bool>().prop_map(Field::Bool),
        1 => Just(Field::Null),
        1 => Just(Field::List),
        1 => Just(Field::Object),
    ];
    prop::collection::vec((name, value), 0..10).boxed()
}

/// Fields and whether they make a valid lead.
fn fields() -> BoxedStrategy<(Vec<(String, Field)>, bool)> {
    prop_oneof![
        6 => clean_fields().prop_shuffle().prop_map(|fields| (fields, true)),
        3 => hostile_fields().prop_map(|fields| (fields, false)),
        1 => (clean_fields(), hostile_fields()).prop_map(|(mut fields, hostile)| {
            fields.extend(hostile);
            (fields, false)
        }),
    ]
    .boxed()
}

fn honeypot() -> BoxedStrategy<Option<(Index, Field)>> {
    let filled = prop_oneof![
        one_of(&["x", "Buy cheap stuff", " http://spam.example/ ", "0"]).prop_map(Field::text),
        Just(Field::Number("7")),
        any::<bool>().prop_map(Field::Bool),
    ];
    let blank = prop_oneof![
        one_of(&["", "   "]).prop_map(Field::text),
        Just(Field::Null)
    ];
    prop::option::weighted(0.12, (any::<Index>(), prop_oneof![2 => filled, 1 => blank])).boxed()
}

fn target() -> BoxedStrategy<Target> {
    prop_oneof![
        75 => Just(Target::Form(Form::Redirecting)),
        15 => Just(Target::Form(Form::Plain)),
        2 => Just(Target::NoKey),
        4 => regex("wf_[a-z0-9]{24}").prop_map(Target::UnknownKey),
        4 => prop_oneof![
            regex("\\PC{1,80}").prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 1..40),
            regex("wf_[a-z0-9]{0,8}").prop_map(|key| format!("{key}\0").into_bytes()),
        ]
        .prop_map(Target::GarbageKey),
    ]
    .boxed()
}

fn mangle(kind: Kind) -> BoxedStrategy<Mangle> {
    let spliced: &[&[u8]] = &[
        b"%",
        b"%zz",
        b"%e9",
        b"%ff%fe",
        b"\xff\xfe",
        b"&&",
        b"==",
        b"%00",
        b"+%2",
        b"&=&",
    ];
    match kind {
        Kind::Form => prop_oneof![
            6 => Just(Mangle::None),
            1 => (one_of(spliced), any::<Index>())
                .prop_map(|(bytes, at)| Mangle::Splice(bytes, at)),
        ]
        .boxed(),
        Kind::Json => prop_oneof![
            24 => Just(Mangle::None),
            1 => one_of(&["[]", "42", "\"a@fuzz.example\"", "null", "true",
                          "[{\"email\": \"a@fuzz.example\"}]", ""])
                .prop_map(Mangle::NotAnObject),
            1 => any::<Index>().prop_map(Mangle::Truncated),
            1 => Just(Mangle::InvalidUtf8),
            1 => (200..3_000usize).prop_map(Mangle::Deep),
            1 => Just(Mangle::LoneSurrogate),
            1 => Just(Mangle::HugeNumber),
            1 => Just(Mangle::Trailing),
            1 => Just(Mangle::ByteOrderMark),
        ]
        .boxed(),
    }
}

fn post() -> BoxedStrategy<Post> {
    let kind = prop_oneof![Just(Kind::Form), Just(Kind::Json)];
    let body = kind.prop_flat_map(|kind| (Just(kind), mangle(kind)));
    let declared = prop_oneof![
        92 => (0..FORM_TYPES.len()).prop_map(Declared::Matching),
        2 => Just(Declared::Swapped),
        3 => Just(Declared::Missing),
        3 => one_of(&OTHER_TYPES).prop_map(Declared::Other),
    ];
    let origin = prop_oneof![
        70 => Just(Origin::Absent),
        25 => Just(Origin::Allowed),
        5 => one_of(&DENIED_ORIGINS).prop_map(Origin::Denied),
    ];
    let size = prop_oneof![
        96 => Just(Size::Natural),
        2 => prop_oneof![
            (MAX_BODY_BYTES - 2_048..MAX_BODY_BYTES).prop_map(Size::Exactly),
            Just(Size::Exactly(MAX_BODY_BYTES)),
        ],
        2 => prop_oneof![
            Just(Size::Exactly(MAX_BODY_BYTES + 1)),
            (MAX_BODY_BYTES + 2..MAX_BODY_BYTES + 16_384).prop_map(Size::Exactly),
            (256 * 1024..1024 * 1024usize).prop_map(Size::Exactly),
        ],
    ];
    let idempotency = prop_oneof![
        70 => Just(Idempotency::Absent),
        20 => Just(Idempotency::Unique),
        5 => (0..3u8).prop_map(Idempotency::Shared),
        5 => (0..INVALID_KEYS).prop_map(Idempotency::Invalid),
    ];
    (
        (target(), origin, body, declared),
        (fields(), honeypot(), size, idempotency),
        prop::option::of(0..REFERERS),
        prop::option::of(0..USER_AGENTS),
    )
        .prop_map(
            |(
                (target, origin, (kind, mangle), declared),
                ((fields, clean), honeypot, size, idempotency),
                referer,
                user_agent,
            )| Post {
                target,
                origin,
                kind,
                declared,
                fields,
                clean,
                honeypot,
                size,
                mangle,
                idempotency,
                referer,
                user_agent,
            },
        )
        .boxed()
}

const INVALID_KEYS: usize = 5;

fn invalid_key(which: usize) -> Vec<u8> {
    match which {
        0 => Vec::new(),
        1 => b"has space".to_vec(),
        2 => b"tab\tinside".to_vec(),
        3 => vec![b'k'; 129],
        _ => "clé".as_bytes().to_vec(),
    }
}

const REFERERS: usize = 4;
const USER_AGENTS: usize = 3;

fn referer(which: usize) -> Vec<u8> {
    match which {
        0 => b"https://www.fuzz.example/contact?offer=spring".to_vec(),
        1 => format!("https://www.fuzz.example/?q={}", "x".repeat(5_000)).into_bytes(),
        2 => b"https://www.fuzz.example/caf\xe9".to_vec(),
        _ => b"not a url".to_vec(),
    }
}

fn user_agent(which: usize) -> Vec<u8> {
    match which {
        0 => b"Mozilla/5.0 (X11; Linux x86_64) leadflow-fuzz".to_vec(),
        1 => "Agent/\t1.0 ä".as_bytes().to_vec(),
        _ => "a".repeat(3_000).into_bytes(),
    }
}

/// Returns `bytes` percent-encoded as one path segment.
fn path_segment(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(*byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Writes `fields` as a body of `kind`, in order, repeated names and all.
fn encode(kind: Kind, fields: &[(String, Field)]) -> Vec<u8> {
    match kind {
        Kind::Form => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (name, field) in fields {
                if let Some(value) = field.form_text() {
                    form.append_pair(name, &value);
                }
            }
            form.finish().into_bytes()
        }
        Kind::Json => {
            let members: Vec<String> = fields
                .iter()
                .map(|(name, field)| format!("{}:{}", Value::from(name.as_str()), field.json()))
                .collect();
            format!("{{{}}}", members.join(",")).into_bytes()
        }
    }
}

/// Returns the fields with the honeypot in place and the padding field last, and the body.
fn body(post: &Post) -> (Vec<(String, Field)>, Vec<u8>) {
    let mut fields = post.fields.clone();
    if let Some((at, value)) = &post.honeypot {
        fields.insert(
            at.index(fields.len() + 1),
            (HONEYPOT.to_owned(), value.clone()),
        );
    }
    let Size::Exactly(size) = post.size else {
        let body = encode(post.kind, &fields);
        return (fields, body);
    };
    fields.push((pad_field(size).to_owned(), Field::text("")));
    let unpadded = encode(post.kind, &fields).len();
    if let Some((_, pad)) = fields.last_mut() {
        *pad = Field::Text("x".repeat(size.saturating_sub(unpadded)));
    }
    let body = encode(post.kind, &fields);
    (fields, body)
}

/// Spoils `body`; returns whether it did.
fn spoil(mangle: &Mangle, body: &mut Vec<u8>) -> bool {
    let splice_after_brace = |body: &mut Vec<u8>, member: &[u8]| {
        let at = usize::from(!body.is_empty());
        body.splice(at..at, member.iter().copied());
    };
    match mangle {
        Mangle::None => return false,
        Mangle::Splice(bytes, at) => {
            let at = at.index(body.len() + 1);
            body.splice(at..at, bytes.iter().copied());
        }
        Mangle::NotAnObject(value) => *body = value.as_bytes().to_vec(),
        Mangle::Truncated(at) => body.truncate(at.index(body.len())),
        Mangle::InvalidUtf8 => {
            let at = body
                .iter()
                .position(|byte| *byte == b'"')
                .map_or(1, |quote| quote + 1);
            body.insert(at.min(body.len()), 0xFF);
        }
        Mangle::Deep(depth) => {
            *body =
                format!("{{\"email\":{}{}}}", "[".repeat(*depth), "]".repeat(*depth)).into_bytes();
        }
        Mangle::LoneSurrogate => splice_after_brace(body, br#""first_name":"\ud800","#),
        Mangle::HugeNumber => splice_after_brace(body, br#""phone":1e400,"#),
        Mangle::Trailing => body.extend_from_slice(b" {}"),
        Mangle::ByteOrderMark => {
            body.splice(0..0, [0xEF, 0xBB, 0xBF]);
        }
    }
    true
}

/// Returns the value the endpoint reads for `name` (the last one posted, trimmed), `None`
/// when absent or blank.
fn posted(kind: Kind, fields: &[(String, Field)], name: &str) -> Option<String> {
    let last = fields.iter().rev().find(|(posted, field)| {
        posted == name && (kind == Kind::Json || field.form_text().is_some())
    })?;
    let text = last.1.form_text()?;
    let trimmed = text.trim();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// Returns the JSON fields whose final value is not text (nor a number, a boolean or null).
fn not_text(fields: &[(String, Field)]) -> Vec<String> {
    let mut last: BTreeMap<&str, &Field> = BTreeMap::new();
    for (name, field) in fields {
        last.insert(name, field);
    }
    last.into_iter()
        .filter(|(_, field)| matches!(field, Field::List | Field::Object))
        .map(|(name, _)| name.to_owned())
        .collect()
}

/// The URLs of the two forms and of the endpoint.
struct Urls {
    base: String,
    redirecting: String,
    plain: String,
}

fn render(post: &Post, index: usize, urls: &Urls) -> Rendered {
    let (fields, mut body) = body(post);
    let spoiled = spoil(&post.mangle, &mut body);
    let mut headers = HeaderMap::new();
    let (form, url) = match &post.target {
        Target::Form(Form::Redirecting) => (Some(Form::Redirecting), urls.redirecting.clone()),
        Target::Form(Form::Plain) => (Some(Form::Plain), urls.plain.clone()),
        Target::NoKey => (None, format!("{}/v1/forms/", urls.base)),
        Target::UnknownKey(key) => (None, format!("{}/v1/forms/{key}", urls.base)),
        Target::GarbageKey(key) => (
            None,
            format!("{}/v1/forms/{}", urls.base, path_segment(key)),
        ),
    };
    let other = match post.kind {
        Kind::Form => Kind::Json,
        Kind::Json => Kind::Form,
    };
    let content_type = |kind: Kind, which: usize| match kind {
        Kind::Form => FORM_TYPES[which % FORM_TYPES.len()],
        Kind::Json => JSON_TYPES[which % JSON_TYPES.len()],
    };
    let (declared, answers_as) = match post.declared {
        Declared::Matching(which) => (Some(content_type(post.kind, which)), Some(post.kind)),
        Declared::Swapped => (Some(content_type(other, 0)), Some(other)),
        Declared::Missing => (None, None),
        Declared::Other(content_type) => (Some(content_type), None),
    };
    if let Some(declared) = declared {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(declared));
    }
    match post.origin {
        Origin::Allowed => headers.insert(header::ORIGIN, HeaderValue::from_static(SITE)),
        Origin::Denied(origin) => headers.insert(header::ORIGIN, HeaderValue::from_static(origin)),
        Origin::Absent => None,
    };
    let key = match post.idempotency {
        Idempotency::Absent => None,
        Idempotency::Unique => Some(format!("fuzz-{index}").into_bytes()),
        Idempotency::Shared(which) => Some(format!("shared-{which}").into_bytes()),
        Idempotency::Invalid(which) => Some(invalid_key(which)),
    };
    for (name, value) in [
        (HeaderName::from_static("idempotency-key"), key),
        (header::REFERER, post.referer.map(referer)),
        (header::USER_AGENT, post.user_agent.map(user_agent)),
    ] {
        if let Some(value) = value {
            let value = HeaderValue::from_bytes(&value).expect("the header tables hold values");
            headers.insert(name, value);
        }
    }

    let expect = match (form, &post.target) {
        (_, Target::NoKey) => Expect::NoRoute,
        (_, Target::UnknownKey(_)) => Expect::Refused(StatusCode::NOT_FOUND),
        (None, _) => Expect::BadKey,
        (Some(form), _) => expect(post, form, &fields, body.len(), spoiled, answers_as),
    };
    Rendered {
        url,
        headers,
        body,
        form,
        answers_as,
        origin: post.origin,
        expect,
    }
}

/// Returns what the endpoint must answer a post to `form`, checking what it checks in order.
fn expect(
    post: &Post,
    form: Form,
    fields: &[(String, Field)],
    body_len: usize,
    spoiled: bool,
    answers_as: Option<Kind>,
) -> Expect {
    if matches!(post.origin, Origin::Denied(_)) {
        return Expect::Refused(StatusCode::FORBIDDEN);
    }
    let Some(answers_as) = answers_as else {
        return Expect::Refused(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    };
    if body_len > MAX_BODY_BYTES {
        return Expect::Refused(StatusCode::PAYLOAD_TOO_LARGE);
    }
    match (answers_as, post.kind, spoiled) {
        // Form decoding takes anything: a spoiled or JSON body is just odd fields.
        (Kind::Form, Kind::Form, true) | (Kind::Form, Kind::Json, _) => return Expect::Judged,
        (Kind::Json, Kind::Json, true) | (Kind::Json, Kind::Form, _) => {
            return Expect::Refused(StatusCode::BAD_REQUEST);
        }
        (Kind::Form, Kind::Form, false) | (Kind::Json, Kind::Json, false) => {}
    }
    if post.kind == Kind::Json {
        let not_text = not_text(fields);
        if !not_text.is_empty() {
            return Expect::NotText(not_text);
        }
    }
    if form == Form::Redirecting && posted(post.kind, fields, HONEYPOT).is_some() {
        return Expect::Honeypot;
    }
    match post.idempotency {
        Idempotency::Invalid(_) => Expect::BadIdempotencyKey,
        Idempotency::Absent | Idempotency::Unique if post.clean && !pads_a_field(post) => {
            Expect::Accepted
        }
        _ => Expect::Judged,
    }
}

/// Returns the field that pads a body to `size` bytes: an unknown one mostly, so a padded valid
/// lead stays valid; now and then one capture reads.
fn pad_field(size: usize) -> &'static str {
    if size.is_multiple_of(5) {
        "company"
    } else {
        "notes"
    }
}

/// Returns whether the post's padding went into a field capture reads.
fn pads_a_field(post: &Post) -> bool {
    matches!(post.size, Size::Exactly(size) if pad_field(size) != "notes")
}

/// An answer as read off the socket.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap_or("<not text>"))
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }

    fn json(&self) -> Result<Value, String> {
        if !self
            .header(header::CONTENT_TYPE)
            .is_some_and(|content_type| content_type.starts_with("application/json"))
        {
            return Err(format!("not JSON: {:?}", self.header(header::CONTENT_TYPE)));
        }
        serde_json::from_slice(&self.body).map_err(|err| format!("unreadable JSON: {err}"))
    }
}

fn status_is(answer: &Answer, expected: StatusCode) -> Result<(), String> {
    if answer.status == expected {
        return Ok(());
    }
    Err(format!(
        "expected {expected}, got {}: {}",
        answer.status,
        answer.text()
    ))
}

/// Checks `{"error": "…"}`.
fn error_json(answer: &Answer) -> Result<(), String> {
    let body = answer.json()?;
    match body["error"].as_str() {
        Some(error) if !error.is_empty() => Ok(()),
        _ => Err(format!("no error message: {body}")),
    }
}

/// Checks a 422 with at least one reason, as JSON or as a page; returns the fields named.
fn rejection(rendered: &Rendered, answer: &Answer) -> Result<Vec<String>, String> {
    status_is(answer, StatusCode::UNPROCESSABLE_ENTITY)?;
    if rendered.answers_as == Some(Kind::Form) {
        if !answer
            .header(header::CONTENT_TYPE)
            .is_some_and(|content_type| content_type.starts_with("text/html"))
        {
            return Err(format!("a form rejection is not a page: {}", answer.text()));
        }
        let page = String::from_utf8_lossy(&answer.body);
        let fields: Vec<String> = page
            .split("<li><strong>")
            .skip(1)
            .filter_map(|item| {
                item.split_once("</strong>")
                    .map(|(field, _)| field.to_owned())
            })
            .collect();
        if fields.is_empty() {
            return Err(format!("a rejection page lists no field: {page}"));
        }
        return Ok(fields);
    }
    let body = answer.json()?;
    let violations = body["violations"].as_array().cloned().unwrap_or_default();
    let named = violations.iter().all(|v| {
        ["field", "reason", "description"]
            .iter()
            .all(|key| v[key].is_string())
    }) && violations.iter().all(|v| v["reason"] != "");
    if body["error"] != "rejected" || violations.is_empty() || !named {
        return Err(format!("a rejection without field reasons: {body}"));
    }
    Ok(violations
        .iter()
        .filter_map(|v| v["field"].as_str().map(str::to_owned))
        .collect())
}

/// Checks an accepted answer: 201 with the lead, a 303 to the thank-you page, or the plain
/// thank-you of a form without one.
fn accepted(rendered: &Rendered, answer: &Answer) -> Result<Seen, String> {
    match (rendered.answers_as, rendered.form) {
        (Some(Kind::Json), _) => {
            status_is(answer, StatusCode::CREATED)?;
            let body = answer.json()?;
            let lead_id = body["lead_id"].as_str().unwrap_or_default().to_owned();
            // A known person with other consent is held for review, naming no lead.
            if body["outcome"] == "in_review" {
                return if lead_id.is_empty() {
                    Ok(Seen::Held)
                } else {
                    Err(format!("a held post names a lead: {body}"))
                };
            }
            if uuid::Uuid::parse_str(&lead_id).is_err() {
                return Err(format!("no lead id: {body}"));
            }
            match body["outcome"].as_str() {
                Some("created") => Ok(Seen::Created(lead_id)),
                Some("merged") => Ok(Seen::Merged(lead_id)),
                _ => Err(format!("no outcome: {body}")),
            }
        }
        (_, Some(Form::Redirecting)) => {
            status_is(answer, StatusCode::SEE_OTHER)?;
            match answer.header(header::LOCATION) {
                Some(THANK_YOU_URL) => Ok(Seen::Redirected),
                other => Err(format!("303 to {other:?}")),
            }
        }
        _ => {
            status_is(answer, StatusCode::OK)?;
            if answer.body != THANK_YOU_TEXT.as_bytes() {
                return Err(format!("not the thank-you text: {}", answer.text()));
            }
            Ok(Seen::Thanked)
        }
    }
}

/// Checks `Vary: Origin` on every answer of the form route and `Access-Control-Allow-Origin`
/// exactly for the allowed origin.
fn check_cors(rendered: &Rendered, answer: &Answer) -> Result<(), String> {
    let routed =
        rendered.form.is_some() || rendered.expect == Expect::Refused(StatusCode::NOT_FOUND);
    if !routed {
        return Ok(());
    }
    let varies = answer.headers.get_all(header::VARY).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|vary| vary.to_lowercase().contains("origin"))
    });
    if !varies {
        return Err("no `Vary: Origin`".to_owned());
    }
    let allowed = answer.header(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    let expected = (rendered.form.is_some() && rendered.origin == Origin::Allowed).then_some(SITE);
    if allowed != expected {
        return Err(format!(
            "Access-Control-Allow-Origin {allowed:?}, expected {expected:?}"
        ));
    }
    Ok(())
}

/// Checks one answer against what the post must get.
fn check(rendered: &Rendered, answer: &Answer) -> Result<Seen, String> {
    if answer.status.is_server_error() {
        return Err(format!("{}: {}", answer.status, answer.text()));
    }
    check_cors(rendered, answer)?;
    match &rendered.expect {
        Expect::NoRoute => status_is(answer, StatusCode::NOT_FOUND).map(|()| Seen::Refused),
        Expect::BadKey if answer.status.is_client_error() => Ok(Seen::Refused),
        Expect::BadKey => Err(format!("a bad key got {}", answer.status)),
        Expect::Refused(status) => {
            status_is(answer, *status)?;
            error_json(answer)?;
            Ok(Seen::Refused)
        }
        Expect::NotText(fields) => {
            let mut named = rejection(rendered, answer)?;
            named.sort();
            if named != *fields {
                return Err(format!("named {named:?}, not the fields {fields:?}"));
            }
            Ok(Seen::Rejected)
        }
        Expect::BadIdempotencyKey => {
            let named = rejection(rendered, answer)?;
            if !named.iter().any(|field| field == "idempotency-key") {
                return Err(format!("named {named:?}, not `idempotency-key`"));
            }
            Ok(Seen::Rejected)
        }
        Expect::Honeypot => match accepted(rendered, answer)? {
            Seen::Created(fake_id) => Ok(Seen::Honeypot(Some(fake_id))),
            Seen::Merged(_) => Err("a honeypot post answered `merged`".to_owned()),
            _ => Ok(Seen::Honeypot(None)),
        },
        Expect::Accepted => accepted(rendered, answer),
        Expect::Judged if answer.status == StatusCode::UNPROCESSABLE_ENTITY => {
            rejection(rendered, answer).map(|_| Seen::Rejected)
        }
        Expect::Judged => accepted(rendered, answer),
    }
}

/// Sends one post; the error says how the exchange failed (a hang, a dropped connection).
async fn send(client: &reqwest::Client, rendered: &Rendered) -> Result<Answer, String> {
    let transport = |err: reqwest::Error| format!("{:#}", anyhow::Error::from(err));
    let response = client
        .post(&rendered.url)
        .headers(rendered.headers.clone())
        .body(rendered.body.clone())
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.bytes().await.map_err(transport)?.to_vec();
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// One post, sent and checked.
struct Checked {
    index: usize,
    post: Post,
    rendered: Rendered,
    status: Option<StatusCode>,
    elapsed: Duration,
    seen: Result<Seen, String>,
}

/// Sends posts as they come, `IN_FLIGHT` at a time, and checks each answer.
async fn send_all(
    client: &reqwest::Client,
    posts: impl futures::Stream<Item = (usize, Post, Rendered)>,
) -> Vec<Checked> {
    posts
        .map(|(index, post, rendered)| async move {
            let started = Instant::now();
            let answer = send(client, &rendered).await;
            let elapsed = started.elapsed();
            let (status, seen) = match answer {
                Ok(answer) => (Some(answer.status), check(&rendered, &answer)),
                Err(err) => (None, Err(err)),
            };
            Checked {
                index,
                post,
                rendered,
                status,
                elapsed,
                seen,
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

/// Settings of a fuzzed form: the mapping, the one allowed origin, and for the redirecting
/// one the thank-you page and the honeypot.
fn form_settings(form: Form) -> SourceSettings {
    let redirecting = form == Form::Redirecting;
    SourceSettings {
        name: format!("Fuzzed {form:?} form"),
        kind: SourceKind::Form.into(),
        field_mapping: MAPPING
            .iter()
            .map(|(theirs, ours)| ((*theirs).to_owned(), (*ours).to_owned()))
            .collect(),
        dedupe: Some(DedupePolicy {
            mode: DedupeMode::Merge.into(),
            window_seconds: 0,
        }),
        web_form: Some(WebForm {
            form_key: String::new(),
            allowed_origins: vec![SITE.into()],
            thank_you_url: if redirecting {
                THANK_YOU_URL.into()
            } else {
                String::new()
            },
            honeypot_field: if redirecting {
                HONEYPOT.into()
            } else {
                String::new()
            },
        }),
        ..SourceSettings::default()
    }
}

/// Returns how many of `lead_ids` capture stored.
async fn stored_of(suite: &Suite, lead_ids: &[String]) -> anyhow::Result<i64> {
    let mut db = suite.env.connect().await?;
    let (count,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM capture.leads WHERE lead_id::text = ANY($1)")
            .bind(lead_ids)
            .fetch_one(&mut db)
            .await
            .context("count leads by id")?;
    Ok(count)
}

/// What the posts got.
struct Tally {
    /// Posts by status and outcome (`201 created`, `422 rejected`, …).
    outcomes: BTreeMap<String, usize>,
    /// The lead ids accepted posts were answered, once each.
    lead_ids: Vec<String>,
    /// The made-up lead ids honeypot posts were answered.
    honeypot_ids: Vec<String>,
}

impl Tally {
    fn of(checked: &[Checked]) -> Self {
        let mut outcomes = BTreeMap::<String, usize>::new();
        let mut lead_ids = Vec::new();
        let mut honeypot_ids = Vec::new();
        for result in checked {
            let label = match &result.seen {
                Ok(Seen::Created(lead_id)) => {
                    lead_ids.push(lead_id.clone());
                    "created"
                }
                Ok(Seen::Merged(lead_id)) => {
                    lead_ids.push(lead_id.clone());
                    "merged"
                }
                Ok(Seen::Held) => "in_review",
                Ok(Seen::Redirected) => "redirected",
                Ok(Seen::Thanked) => "thanked",
                Ok(Seen::Honeypot(fake_id)) => {
                    honeypot_ids.extend(fake_id.clone());
                    "honeypot"
                }
                Ok(Seen::Rejected) => "rejected",
                Ok(Seen::Refused) => "refused",
                Err(_) => "FAILED",
            };
            let status = result.status.as_ref().map_or("---", StatusCode::as_str);
            *outcomes.entry(format!("{status} {label}")).or_default() += 1;
        }
        lead_ids.sort();
        lead_ids.dedup();
        Self {
            outcomes,
            lead_ids,
            honeypot_ids,
        }
    }
}

/// Returns the median, 99th percentile and slowest answer time.
fn latencies(checked: &[Checked]) -> String {
    let mut latencies: Vec<Duration> = checked.iter().map(|result| result.elapsed).collect();
    latencies.sort();
    let percentile = |p: usize| {
        let at = (latencies.len() * p / 100).min(latencies.len().saturating_sub(1));
        latencies.get(at).copied().unwrap_or_default()
    };
    format!(
        "p50 {:.1?}, p99 {:.1?}, max {:.1?}",
        percentile(50),
        percentile(99),
        latencies.last().copied().unwrap_or_default()
    )
}

/// Returns one failure of each kind (what was expected, the answer's first words) with its
/// post, for an assertion message.
fn failures(checked: &[Checked]) -> Vec<String> {
    let mut kinds = BTreeMap::<String, String>::new();
    for result in checked {
        let Err(err) = &result.seen else {
            continue;
        };
        let expect = &result.rendered.expect;
        let kind = format!("{expect:?} → {}", err.chars().take(40).collect::<String>());
        kinds.entry(kind).or_insert_with(|| {
            let post = format!("{:?}", result.post);
            format!(
                "#{} {expect:?} → {err}\n    post: {}\n    body: {}",
                result.index,
                post.chars().take(600).collect::<String>(),
                String::from_utf8_lossy(&result.rendered.body)
                    .chars()
                    .take(300)
                    .collect::<String>(),
            )
        });
    }
    kinds.into_values().take(12).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_form_posts_never_fail_on_the_server() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let urls = Arc::new(Urls {
        base: suite.http_base()?,
        redirecting: suite
            .web_form_url("fuzz-form", form_settings(Form::Redirecting))
            .await?,
        plain: suite
            .web_form_url("fuzz-plain", form_settings(Form::Plain))
            .await?,
    });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(HANG)
        .build()?;

    // Posts are made on a thread of their own while earlier ones are sent: in a debug build
    // making them takes a good part of the time, and deep strategies want more stack than
    // the runtime's threads have left.
    let (sender, receiver) = tokio::sync::mpsc::channel(4 * IN_FLIGHT);
    let maker = {
        let urls = Arc::clone(&urls);
        tokio::task::spawn_blocking(move || {
            for (index, post) in generate(post(), cases()).enumerate() {
                let rendered = render(&post, index, &urls);
                if sender.blocking_send((index, post, rendered)).is_err() {
                    break;
                }
            }
        })
    };
    let started = Instant::now();
    let checked = send_all(&client, ReceiverStream::new(receiver)).await;
    let took = started.elapsed();
    maker.await?;

    let tally = Tally::of(&checked);
    eprintln!(
        "{} web-form posts in {took:.1?} ({:.0}/s, {IN_FLIGHT} in flight; {})",
        checked.len(),
        checked.len() as f64 / took.as_secs_f64(),
        latencies(&checked),
    );
    for (outcome, count) in &tally.outcomes {
        eprintln!("  {outcome:<16} {count:>6}");
    }

    let failed = failures(&checked);
    assert!(
        failed.is_empty(),
        "{} of {} posts answered wrongly (no 5xx, no dropped connection, reasons named):\n{}",
        checked.iter().filter(|result| result.seen.is_err()).count(),
        checked.len(),
        failed.join("\n")
    );
    for label in [
        "created",
        "merged",
        "redirected",
        "thanked",
        "honeypot",
        "rejected",
    ] {
        assert!(
            tally
                .outcomes
                .keys()
                .any(|outcome| outcome.ends_with(label)),
            "the generator reaches `{label}`: {:?}",
            tally.outcomes
        );
    }

    // Accepted ids are real leads; the ids honeypot posts got were never stored.
    assert_eq!(
        stored_of(&suite, &tally.lead_ids).await?,
        tally.lead_ids.len() as i64
    );
    assert_eq!(
        stored_of(&suite, &tally.honeypot_ids).await?,
        0,
        "honeypot ids stored"
    );
    // And sent again with nothing else in flight, the honeypot posts add no lead.
    let honeypots: Vec<(usize, Post, Rendered)> = checked
        .into_iter()
        .filter(|result| matches!(result.seen, Ok(Seen::Honeypot(_))))
        .map(|result| (result.index, result.post, result.rendered))
        .collect();
    let sent_again = honeypots.len();
    let before = suite.stored_leads().await?;
    let again = send_all(&client, futures::stream::iter(honeypots)).await;
    assert!(
        again
            .iter()
            .all(|result| matches!(result.seen, Ok(Seen::Honeypot(_)))),
        "honeypot posts look accepted again"
    );
    assert_eq!(
        suite.stored_leads().await?,
        before,
        "{sent_again} honeypot posts stored leads"
    );

    let capture = &suite.services[&Service::Capture];
    assert_eq!(capture.health().await?, ServingStatus::Serving);
    let alive = client
        .post(&urls.redirecting)
        .json(&serde_json::json!({ "email": "still.alive@fuzz.example" }))
        .send()
        .await?;
    assert_eq!(
        alive.status(),
        StatusCode::CREATED,
        "the endpoint still takes leads"
    );
    let alarming: Vec<String> = capture
        .logs()
        .into_iter()
        .filter(|line| line.contains("panicked") || line.contains(r#""level":"ERROR""#))
        .take(5)
        .collect();
    assert!(
        alarming.is_empty(),
        "panics or errors logged: {alarming:#?}"
    );
    Ok(())
}
