//! Rate limits over gRPC: a source's and an API key's budgets answer `RESOURCE_EXHAUSTED` with
//! `google.rpc.RetryInfo` saying how long to wait, store nothing, and spend no one else's
//! budget.

use std::time::Duration;

use leadflow_e2e::{Suite, WEBSITE_SOURCE};
use leadflow_proto::capture::v1::{
    ActivityKind, ActivityOutcome, CaptureLeadRequest, LeadInput, RecordActivityRequest,
    SourceKind, SourceSettings,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::support::{Client, capture_of, person};

/// Checks that `status` refuses a call over a rate and says how long to wait.
fn assert_over_rate(status: &Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let retry = status
        .get_details_retry_info()
        .expect("RESOURCE_EXHAUSTED carries google.rpc.RetryInfo");
    let delay = retry.retry_delay.expect("RetryInfo names a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(60),
        "a budget of a few calls a minute refills within the minute: {delay:?}"
    );
}

/// A capture of a new person through `source`.
fn capture_through(source: &str, n: usize) -> CaptureLeadRequest {
    capture_of(LeadInput {
        source: source.to_owned(),
        ..person(&format!("limited{n}@acme-corp.example"), "")
    })
}

/// A page visit by a visitor nobody has identified yet.
fn anonymous_visit() -> RecordActivityRequest {
    RecordActivityRequest {
        visitor_id: uuid::Uuid::new_v4().to_string(),
        kind: ActivityKind::PageVisit.into(),
        url: "https://www.acme.example/pricing".into(),
        source: WEBSITE_SOURCE.into(),
        ..RecordActivityRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_over_its_rate_is_refused_with_retry_info_and_others_keep_theirs()
-> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    suite
        .create_source(
            "slow-vendor",
            SourceSettings {
                name: "Vendor with a small budget".into(),
                kind: SourceKind::Vendor.into(),
                rate_limit_per_minute: 2,
                ..SourceSettings::default()
            },
        )
        .await?;
    let mut capture: Client = suite.capture().await?;

    for n in 0..2 {
        capture
            .capture_lead(capture_through("slow-vendor", n))
            .await?;
    }
    let refused = capture
        .capture_lead(capture_through("slow-vendor", 2))
        .await
        .expect_err("the third capture within the minute is over the source's rate");
    assert_over_rate(&refused);
    assert_eq!(
        suite.stored_leads().await?,
        2,
        "nothing stored when refused"
    );

    // Another source, same key: its own budget.
    capture
        .capture_lead(capture_through(WEBSITE_SOURCE, 3))
        .await?;
    assert_eq!(suite.stored_leads().await?, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_over_its_rate_is_refused_with_retry_info_and_other_keys_keep_theirs()
-> anyhow::Result<()> {
    let suite = Suite::start_capture_with(&[("KEY_RATE_PER_MINUTE", "3")]).await?;
    let busy_key = suite
        .env
        .create_api_key("busy-writer", &["leads:write"])
        .await?;
    let other_key = suite
        .env
        .create_api_key("other-writer", &["leads:write"])
        .await?;
    let mut busy = suite.capture_as(&busy_key).await?;
    let mut other = suite.capture_as(&other_key).await?;

    for n in 0..3 {
        busy.capture_lead(capture_through(WEBSITE_SOURCE, n))
            .await?;
    }
    let refused = busy
        .capture_lead(capture_through(WEBSITE_SOURCE, 3))
        .await
        .expect_err("the fourth capture within the minute is over the key's rate");
    assert_over_rate(&refused);
    // An invalid request over the rate is refused for the rate, before it is read.
    let invalid = busy
        .capture_lead(capture_of(person("not-an-email", "")))
        .await
        .expect_err("still over the rate");
    assert_over_rate(&invalid);
    assert_eq!(
        suite.stored_leads().await?,
        3,
        "nothing stored when refused"
    );

    // Another key: its own budget.
    other
        .capture_lead(capture_through(WEBSITE_SOURCE, 5))
        .await?;
    assert_eq!(suite.stored_leads().await?, 4);

    // Activities have a budget of their own: the spent captures do not refuse them, and
    // the fourth activity within the minute is refused as the fourth capture was.
    for _ in 0..3 {
        let recorded = busy.record_activity(anonymous_visit()).await?.into_inner();
        assert_eq!(recorded.outcome(), ActivityOutcome::Anonymous);
    }
    let refused = busy
        .record_activity(anonymous_visit())
        .await
        .expect_err("the fourth activity within the minute is over the key's rate");
    assert_over_rate(&refused);
    let mut db = suite.env.connect().await?;
    let (activities,): (i64,) = sqlx::query_as("SELECT count(*) FROM capture.activities")
        .fetch_one(&mut db)
        .await?;
    assert_eq!(activities, 3, "nothing stored when refused");
    Ok(())
}
