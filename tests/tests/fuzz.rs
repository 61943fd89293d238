//! Generated requests through real sockets (reliability R8, issue #4): no panic, no
//! `INTERNAL`, and every rejection names its fields. gRPC here; web-form posts in `web_form`;
//! activities (`RecordActivity` and the snippet's beacons) in `activity`.

#[path = "fuzz/activity.rs"]
mod activity;
#[path = "fuzz/web_form.rs"]
mod web_form;

use std::time::{Duration, Instant};

use futures::StreamExt;
use leadflow_e2e::Suite;
use leadflow_proto::capture::v1::{
    Attribution, CaptureLeadRequest, ConsentInput, ImportLeadsRequest, ImportOutcome, LeadInput,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use tonic::Code;
use tonic_types::StatusExt;

/// Cases per RPC; the figure, overridable for quick local runs.
fn cases() -> usize {
    std::env::var("LEADFLOW_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000)
}

/// Returns strings matching `pattern`, compiled once: a `&str` strategy parses its regex
/// again for every value.
fn regex(pattern: &str) -> BoxedStrategy<String> {
    proptest::string::string_regex(pattern)
        .unwrap_or_else(|err| panic!("bad regex {pattern:?}: {err}"))
        .boxed()
}

/// Text that stresses parsers: plausible values, unicode, control characters, long runs.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        regex("[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,12}\\.[a-z]{2,6}"),
        regex("\\+?[0-9 ()./-]{0,24}"),
        regex("[A-Za-zÀ-ÿ' -]{0,30}"),
        regex(".{0,40}"),
        regex("\\PC{0,300}"),
        regex("[\\x00-\\x1f]{0,5}"),
    ]
}

/// Mostly a plausible value of the field, sometimes anything.
fn mostly(valid: impl Strategy<Value = String> + 'static) -> impl Strategy<Value = String> {
    prop_oneof![9 => valid, 1 => text()]
}

fn request() -> impl Strategy<Value = CaptureLeadRequest> {
    let email = mostly("[a-z0-9._%+-]{1,20}@[a-z0-9-]{1,12}\\.[a-z]{2,6}".prop_map(|email| email));
    let phone = mostly(prop_oneof![
        Just(String::new()),
        Just("+1 415 555 0142".to_owned()),
        Just("(415) 555-0199".to_owned()),
        Just("+44 7400 123456".to_owned())
    ]);
    let empty_or =
        |strategy: BoxedStrategy<String>| prop_oneof![3 => Just(String::new()), 1 => strategy];
    let lead = (
        email,
        phone,
        mostly("[A-Za-zÀ-ÿ' -]{0,30}".prop_map(|name| name)),
        mostly("[A-Za-zÀ-ÿ' -]{0,30}".prop_map(|name| name)),
        mostly("[A-Za-z0-9&., -]{0,30}".prop_map(|company| company)),
        prop_oneof![9 => Just("website".to_owned()), 1 => text()],
        mostly(prop_oneof![
            Just("web".to_owned()),
            Just("referral".to_owned()),
            Just("paid_search".to_owned())
        ]),
        empty_or(text().boxed()),
        empty_or(prop_oneof![Just("GB".to_owned()), Just("us".to_owned()), text()].boxed()),
        empty_or(text().boxed()),
    )
        .prop_map(
            |(
                email,
                phone,
                first_name,
                last_name,
                company,
                source,
                channel,
                phone_region,
                country,
                website,
            )| LeadInput {
                email,
                phone,
                first_name,
                last_name,
                company,
                source,
                channel,
                campaign: String::new(),
                phone_region,
                country,
                website,
                job_title: String::new(),
                visitor_id: String::new(),
            },
        );
    let consent = prop::option::of(
        (
            prop::collection::vec(-2..6i32, 0..4),
            text(),
            text(),
            -1..5i32,
        )
            .prop_map(|(channels, disclosure_text, ip_address, legal_basis)| {
                ConsentInput {
                    channels,
                    disclosure_text,
                    ip_address,
                    legal_basis,
                    ..ConsentInput::default()
                }
            }),
    );
    let attribution =
        prop::option::of(
            (text(), text()).prop_map(|(utm_source, referrer)| Attribution {
                utm_source,
                referrer,
                ..Attribution::default()
            }),
        );
    (prop::option::weighted(0.97, lead), consent, attribution).prop_map(
        |(lead, consent, attribution)| CaptureLeadRequest {
            lead,
            attribution,
            consent,
        },
    )
}

/// Returns `count` values of `strategy`, the same on every run, made as they are taken.
fn generate<S: Strategy>(strategy: S, count: usize) -> impl Iterator<Item = S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .filter_map(move |_| strategy.new_tree(&mut runner).ok())
        .map(|tree| tree.current())
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_capture_requests_never_fail_internally() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let requests: Vec<CaptureLeadRequest> = generate(request(), cases()).collect();
    let started = Instant::now();
    let client = suite.capture().await?;
    let outcomes: Vec<(Code, usize)> = futures::stream::iter(requests)
        .map(|request| {
            let mut client = client.clone();
            async move {
                match tokio::time::timeout(Duration::from_secs(5), client.capture_lead(request))
                    .await
                {
                    Err(_) => (Code::DeadlineExceeded, 0),
                    Ok(Ok(_)) => (Code::Ok, 0),
                    Ok(Err(status)) => {
                        let violations = status
                            .get_details_bad_request()
                            .map_or(0, |bad| bad.field_violations.len());
                        (status.code(), violations)
                    }
                }
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let count = |code: Code| outcomes.iter().filter(|(got, _)| *got == code).count();
    eprintln!(
        "{} generated captures in {:.1?}: {} ok, {} invalid, {} other",
        outcomes.len(),
        started.elapsed(),
        count(Code::Ok),
        count(Code::InvalidArgument),
        outcomes.len() - count(Code::Ok) - count(Code::InvalidArgument),
    );
    let unexpected: Vec<&(Code, usize)> = outcomes
        .iter()
        .filter(|(code, _)| {
            !matches!(
                code,
                Code::Ok | Code::InvalidArgument | Code::FailedPrecondition
            )
        })
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
            .all(|(_, violations)| *violations > 0),
        "every rejection names at least one field"
    );
    assert!(
        count(Code::Ok) > 0 && count(Code::InvalidArgument) > 0,
        "the generator reaches both outcomes"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn generated_import_rows_each_get_a_result_and_none_fails_internally() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let rows: Vec<ImportLeadsRequest> = generate(request(), cases())
        .enumerate()
        .map(|(index, capture)| ImportLeadsRequest {
            row: index as i64 + 1,
            capture: Some(capture),
        })
        .collect();
    let sent = rows.len();
    let started = Instant::now();
    let mut results = suite
        .capture()
        .await?
        .import_leads(futures::stream::iter(rows))
        .await?
        .into_inner();
    let mut expected_row = 1;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(result) = tokio::time::timeout(Duration::from_secs(30), results.next())
        .await?
        .transpose()?
    {
        assert_eq!(result.row, expected_row, "results come in row order");
        expected_row += 1;
        assert!(
            !(result.outcome() == ImportOutcome::Failed && result.message.contains("internal")),
            "row {} failed internally: {}",
            result.row,
            result.message
        );
        if result.outcome() == ImportOutcome::Rejected {
            assert!(
                !result.violations.is_empty(),
                "row {} rejected without a reason",
                result.row
            );
        }
        *outcomes
            .entry(result.outcome().as_str_name().to_owned())
            .or_default() += 1;
    }
    eprintln!(
        "{sent} generated import rows in {:.1?}: {outcomes:?}",
        started.elapsed()
    );
    assert_eq!(expected_row - 1, sent as i64, "one result per row");
    Ok(())
}
