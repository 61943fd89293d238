//! Generated activities through real sockets (R8, issue #4): `RecordActivity` requests naming
//! people every way (known and unknown, several at once, garbage), and beacons to the snippet's
//! endpoint (valid ones among wrong content types, malformed JSON, wrong shapes, foreign
//! origins). No `INTERNAL`, no 5xx, no hang; every rejection names its fields; no query string
//! is ever stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use leadflow_e2e::{Service, Suite};
use leadflow_proto::capture::v1::{
    CaptureLeadRequest, LeadInput, RecordActivityRequest, SourceKind, SourceSettings, WebForm,
};
use leadflow_proto::prost_types::Timestamp;
use proptest::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

use super::{cases, generate, regex, text};

/// The site the beacons come from: the one origin the source allows.
const SITE: &str = "https://www.fuzz.example";
/// A person captured before the run, named by email in some requests.
const KNOWN_EMAIL: &str = "known.person@fuzz.example";
const HANG: Duration = Duration::from_secs(10);

/// A page URL, often with a query string and fragment that must never be stored.
fn url() -> BoxedStrategy<String> {
    prop_oneof![
        8 => regex("https://www\\.fuzz\\.example/[a-z0-9/_-]{0,20}(\\?[a-z]{1,5}=[a-z0-9%@.]{0,20})?(#[a-z]{0,5})?"),
        1 => Just(String::new()),
        1 => text().boxed(),
    ]
    .boxed()
}

/// Mostly empty, sometimes anything.
fn seldom(strategy: BoxedStrategy<String>) -> BoxedStrategy<String> {
    prop_oneof![9 => Just(String::new()), 1 => strategy].boxed()
}

fn uuid() -> BoxedStrategy<String> {
    any::<u128>()
        .prop_map(|bits| uuid::Uuid::from_u128(bits).to_string())
        .boxed()
}

/// What a download, webinar or video is called: mostly a plausible name.
fn asset() -> BoxedStrategy<String> {
    prop_oneof![
        3 => regex("[A-Za-z0-9 ._-]{1,30}"),
        2 => Just(String::new()),
        1 => text().boxed(),
    ]
    .boxed()
}

/// Mostly a kind that exists (page kinds most), sometimes any number.
fn kind() -> BoxedStrategy<i32> {
    prop_oneof![6 => 1..=2i32, 3 => 3..=7i32, 1 => -1..9i32].boxed()
}

/// Who, as (lead id, visitor id, email, phone): mostly one way of naming a person, known or
/// not, sometimes several, none or garbage.
fn person(known_lead: String) -> BoxedStrategy<(String, String, String, String)> {
    prop_oneof![
        5 => uuid().prop_map(|visitor| (String::new(), visitor, String::new(), String::new())),
        2 => Just((known_lead, String::new(), String::new(), String::new())),
        1 => Just((String::new(), String::new(), KNOWN_EMAIL.to_owned(), String::new())),
        1 => prop_oneof![Just("+1 415 555 0150".to_owned()), Just("12".to_owned()), text()]
            .prop_map(|phone| (String::new(), String::new(), String::new(), phone)),
        1 => (uuid(), regex("[a-z]{1,10}@[a-z]{1,8}\\.example"))
            .prop_map(|(lead, email)| (lead, String::new(), email, String::new())),
        1 => (text(), text(), text(), text()),
    ]
    .boxed()
}

fn request(known_lead: String) -> impl Strategy<Value = RecordActivityRequest> {
    let occurred_at = prop::option::weighted(
        0.2,
        (any::<i64>(), any::<i32>(), 1_000_000_000..1_900_000_000i64).prop_map(
            |(seconds, nanos, plausible)| Timestamp {
                seconds: if seconds % 2 == 0 { plausible } else { seconds },
                nanos: if nanos % 3 == 0 { 0 } else { nanos },
            },
        ),
    );
    (
        (person(known_lead), seldom(text().boxed())),
        (
            kind(),
            seldom(regex("[a-z_]{1,12}")),
            url(),
            seldom(text().boxed()),
            asset(),
        ),
        (
            occurred_at,
            prop_oneof![9 => Just("website".to_owned()), 1 => text()],
            seldom(prop_oneof![uuid(), text().boxed()].boxed()),
        ),
    )
        .prop_map(
            |(
                ((lead_id, visitor_id, email, phone), phone_region),
                (kind, name, url, title, asset),
                (occurred_at, source, activity_id),
            )| RecordActivityRequest {
                lead_id,
                visitor_id,
                email,
                phone,
                phone_region,
                kind,
                name,
                url,
                title,
                asset,
                occurred_at,
                source,
                activity_id,
            },
        )
}

/// Fails when a stored URL kept a query string or fragment.
async fn assert_no_query_stored(suite: &Suite) -> anyhow::Result<()> {
    let mut db = suite.env.connect().await?;
    let (with_query,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM capture.activities WHERE url LIKE '%?%' OR url LIKE '%#%' OR url LIKE '%@%'",
    )
    .fetch_one(&mut db)
    .await?;
    anyhow::ensure!(with_query == 0, "{with_query} stored URLs kept a query");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_activity_requests_never_fail_internally() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let client = suite.capture().await?;
    let known_lead = client
        .clone()
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                email: KNOWN_EMAIL.into(),
                source: "website".into(),
                channel: "web".into(),
                ..LeadInput::default()
            }),
            ..CaptureLeadRequest::default()
        })
        .await?
        .into_inner()
        .lead
        .map(|lead| lead.lead_id)
        .unwrap_or_default();
    let requests: Vec<RecordActivityRequest> = generate(request(known_lead), cases()).collect();
    let started = Instant::now();
    let outcomes: Vec<(Code, Vec<String>)> = futures::stream::iter(requests)
        .map(|request| {
            let mut client = client.clone();
            async move {
                match tokio::time::timeout(HANG, client.record_activity(request)).await {
                    Err(_) => (Code::DeadlineExceeded, Vec::new()),
                    Ok(Ok(_)) => (Code::Ok, Vec::new()),
                    Ok(Err(status)) => {
                        let fields = status
                            .get_details_bad_request()
                            .map(|bad| {
                                bad.field_violations
                                    .into_iter()
                                    .map(|violation| violation.field)
                                    .collect()
                            })
                            .unwrap_or_default();
                        (status.code(), fields)
                    }
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut by_code = BTreeMap::<String, usize>::new();
    let mut by_field = BTreeMap::<&str, usize>::new();
    for (code, fields) in &outcomes {
        *by_code.entry(format!("{code:?}")).or_default() += 1;
        for field in fields {
            *by_field.entry(field.as_str()).or_default() += 1;
        }
    }
    eprintln!(
        "{} generated activities in {:.1?}: {by_code:?}; violations by field: {by_field:?}",
        outcomes.len(),
        started.elapsed()
    );
    let unexpected: Vec<&(Code, Vec<String>)> = outcomes
        .iter()
        .filter(|(code, _)| !matches!(code, Code::Ok | Code::InvalidArgument | Code::NotFound))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected codes (no INTERNAL, no hang): {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    assert!(
        outcomes
            .iter()
            .filter(|(code, _)| *code == Code::InvalidArgument)
            .all(|(_, fields)| !fields.is_empty()),
        "every rejection names at least one field"
    );
    assert!(
        by_code.contains_key("Ok") && by_code.contains_key("InvalidArgument"),
        "the generator reaches both outcomes: {by_code:?}"
    );
    assert_no_query_stored(&suite).await?;
    Ok(())
}

/// A body as posted: its content type, bytes, and whether it is a JSON object.
#[derive(Debug, Clone)]
struct Beacon {
    content_type: Option<&'static str>,
    body: Vec<u8>,
    object: bool,
    foreign: bool,
}

fn beacon() -> impl Strategy<Value = Beacon> {
    let fields = (
        prop_oneof![3 => uuid(), 1 => Just(String::new()), 1 => text().boxed()],
        prop_oneof![
            4 => prop_oneof![
                Just("page_visit"),
                Just("pricing_page_view"),
                Just("download"),
                Just("webinar_attended"),
                Just("other"),
            ]
            .prop_map(str::to_owned),
            1 => text().boxed(),
        ],
        url(),
        asset(),
        seldom(regex("[a-z_]{1,10}")),
        seldom(prop_oneof![uuid(), text().boxed()].boxed()),
    )
        .prop_map(|(visitor_id, kind, url, asset, name, activity_id)| {
            json!({
                "visitor_id": visitor_id, "kind": kind, "url": url, "asset": asset,
                "name": name, "activity_id": activity_id, "title": "Fuzz page",
                "email": "never.used@fuzz.example",
            })
            .to_string()
            .into_bytes()
        });
    let hostile = prop_oneof![
        Just(b"[]".to_vec()),
        Just(b"\"page_visit\"".to_vec()),
        Just(b"{\"visitor_id\": ".to_vec()),
        Just(b"{\"kind\": {\"nested\": true}}".to_vec()),
        Just(vec![0xff, 0xfe, b'{', b'}']),
        Just(b"visitor_id=1&kind=page_visit".to_vec()),
        text().prop_map(String::into_bytes),
    ];
    let content_type = prop_oneof![
        12 => Just(Some("text/plain;charset=UTF-8")),
        6 => Just(Some("application/json")),
        1 => Just(Some("application/x-www-form-urlencoded")),
        1 => Just(Some("multipart/form-data; boundary=x")),
        1 => Just(None),
    ];
    (
        prop_oneof![5 => fields.prop_map(|body| (body, true)), 1 => hostile.prop_map(|body| (body, false))],
        content_type,
        prop::bool::weighted(0.05),
    )
        .prop_map(|((body, object), content_type, foreign)| Beacon {
            content_type,
            body,
            object,
            foreign,
        })
}

/// Checks an answer against what the beacon was; `Err` says why it is wrong.
fn check(beacon: &Beacon, status: StatusCode, body: &[u8]) -> Result<(), String> {
    if status.is_server_error() {
        return Err(format!("{status}"));
    }
    let json_type = matches!(
        beacon.content_type,
        Some("text/plain;charset=UTF-8" | "application/json")
    );
    let expected_ok = if beacon.foreign {
        status == StatusCode::FORBIDDEN
    } else if !json_type {
        status == StatusCode::UNSUPPORTED_MEDIA_TYPE
    } else if beacon.object {
        status == StatusCode::NO_CONTENT || status == StatusCode::UNPROCESSABLE_ENTITY
    } else {
        matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
        )
    };
    if !expected_ok {
        return Err(format!("{status} for {beacon:?}"));
    }
    if status == StatusCode::UNPROCESSABLE_ENTITY {
        let answer: Value = serde_json::from_slice(body).map_err(|err| err.to_string())?;
        let named = answer["violations"].as_array().is_some_and(|violations| {
            !violations.is_empty()
                && violations
                    .iter()
                    .all(|violation| violation["field"].as_str().is_some_and(|f| !f.is_empty()))
        });
        if !named {
            return Err(format!("422 without named fields: {answer}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_beacons_never_fail_on_the_server() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let form = suite
        .web_form_url(
            "fuzz-site",
            SourceSettings {
                name: "Fuzz site".into(),
                kind: SourceKind::Form.into(),
                web_form: Some(WebForm {
                    allowed_origins: vec![SITE.into()],
                    ..WebForm::default()
                }),
                ..SourceSettings::default()
            },
        )
        .await?;
    let endpoint = form.replace("/v1/forms/", "/v1/activity/");
    let http = reqwest::Client::builder()
        .timeout(HANG)
        .pool_max_idle_per_host(8)
        .build()?;
    let beacons: Vec<Beacon> = generate(beacon(), cases()).collect();
    let started = Instant::now();
    let checked: Vec<(Option<StatusCode>, Result<(), String>)> = futures::stream::iter(beacons)
        .map(|beacon| {
            let http = http.clone();
            let endpoint = endpoint.clone();
            async move {
                let mut post = http
                    .post(&endpoint)
                    .header(
                        "origin",
                        if beacon.foreign {
                            "https://evil.example"
                        } else {
                            SITE
                        },
                    )
                    .body(beacon.body.clone());
                if let Some(content_type) = beacon.content_type {
                    post = post.header("content-type", content_type);
                }
                match post.send().await {
                    Err(err) => (None, Err(format!("no answer: {err}"))),
                    Ok(answer) => {
                        let status = answer.status();
                        let body = answer.bytes().await.unwrap_or_default();
                        (Some(status), check(&beacon, status, &body))
                    }
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut by_status = BTreeMap::<String, usize>::new();
    for (status, _) in &checked {
        *by_status
            .entry(status.map_or("none".to_owned(), |status| status.as_u16().to_string()))
            .or_default() += 1;
    }
    eprintln!(
        "{} generated beacons in {:.1?}: {by_status:?}",
        checked.len(),
        started.elapsed()
    );
    let failures: Vec<&String> = checked
        .iter()
        .filter_map(|(_, checked)| checked.as_ref().err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} wrong answers, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    for status in ["204", "422"] {
        assert!(
            by_status.contains_key(status),
            "the generator reaches {status}: {by_status:?}"
        );
    }
    assert_eq!(
        suite.services[&Service::Capture].health().await?,
        ServingStatus::Serving
    );
    assert_no_query_stored(&suite).await?;
    Ok(())
}
