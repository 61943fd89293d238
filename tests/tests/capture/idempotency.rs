//! Idempotent retries (I2): the first answer, byte for byte, and no second effect.

use std::sync::Arc;
use std::time::Duration;

use leadflow_e2e::Suite;
use leadflow_proto::capture::v1::{CaptureLeadRequest, CaptureOutcome, LeadInput};
use prost::Message;
use tonic::Code;

use crate::support::{count, person, violations, with_idempotency_key};

fn request(email: &str, phone: &str, campaign: &str) -> CaptureLeadRequest {
    CaptureLeadRequest {
        lead: Some(LeadInput {
            first_name: "Katherine".into(),
            last_name: "Johnson".into(),
            campaign: campaign.into(),
            ..person(email, phone)
        }),
        ..CaptureLeadRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotent_retry_returns_the_first_answer_byte_for_byte() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut capture = suite.capture().await?;
    let mut db = suite.env.connect().await?;

    let original = request(
        " Katherine.Johnson@NASA-example.gov",
        "(415) 555-0144",
        "orbit",
    );
    let first = capture
        .capture_lead(with_idempotency_key(original.clone(), "retry-1"))
        .await?
        .into_inner();
    assert_eq!(first.outcome(), CaptureOutcome::Created);
    let retried = capture
        .capture_lead(with_idempotency_key(original.clone(), "retry-1"))
        .await?
        .into_inner();
    assert_eq!(
        retried.encode_to_vec(),
        first.encode_to_vec(),
        "the retry gets the first answer byte for byte: {retried:?} vs {first:?}"
    );
    assert_eq!(retried.outcome(), CaptureOutcome::Created);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.leads").await?,
        1
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.outbox WHERE event_type = 'lead.captured'"
        )
        .await?,
        1,
        "one lead.captured"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.outbox WHERE event_type <> 'lead.captured'"
        )
        .await?,
        0,
        "and no merge"
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.touches").await?,
        1
    );

    // The same key with another request is a client bug, named as such.
    let reused = capture
        .capture_lead(with_idempotency_key(
            request(
                " Katherine.Johnson@NASA-example.gov",
                "(415) 555-0144",
                "another-campaign",
            ),
            "retry-1",
        ))
        .await
        .expect_err("a reused key with another request is refused");
    assert_eq!(reused.code(), Code::InvalidArgument, "{reused:?}");
    let named: Vec<String> = violations(&reused)
        .into_iter()
        .map(|(field, _)| field)
        .collect();
    assert_eq!(named, ["idempotency-key"], "{reused:?}");
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.leads").await?,
        1
    );

    // 16 concurrent first attempts with one key: one effect, one answer.
    let burst = request("dorothy.vaughan@nasa-example.gov", "(415) 555-0145", "");
    let barrier = Arc::new(tokio::sync::Barrier::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let mut client = capture.clone();
        let burst = burst.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            tokio::time::timeout(
                Duration::from_secs(30),
                client.capture_lead(with_idempotency_key(burst, "burst-1")),
            )
            .await
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let answer = joined?
            .map_err(|_| anyhow::anyhow!("a concurrent retry took over 30 s"))?
            .map_err(|status| anyhow::anyhow!("a concurrent retry failed: {status:?}"))?
            .into_inner();
        answers.push(answer.encode_to_vec());
    }
    assert_eq!(answers.len(), 16);
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "every concurrent attempt gets the same answer"
    );
    let answer = leadflow_proto::capture::v1::CaptureLeadResponse::decode(answers[0].as_slice())?;
    assert_eq!(answer.outcome(), CaptureOutcome::Created);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.leads").await?,
        2,
        "one lead for the burst"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.outbox WHERE event_type = 'lead.captured'"
        )
        .await?,
        2
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.touches").await?,
        2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_older_than_a_day_are_swept() -> anyhow::Result<()> {
    // The harness runs capture's sweeper every second.
    let suite = Suite::start().await?;
    let mut capture = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    for (key, email) in [
        ("old", "old.answer@sweep.example"),
        ("new", "new.answer@sweep.example"),
    ] {
        capture
            .capture_lead(with_idempotency_key(request(email, "", "sweep"), key))
            .await?;
    }
    sqlx::query(
        "UPDATE capture.idempotency SET created_at = now() - interval '25 hours' \
         WHERE idempotency_key = 'old'",
    )
    .execute(&mut db)
    .await?;
    let env = &suite.env;
    let kept = leadflow_e2e::eventually(
        "the day-old answer swept",
        Duration::from_secs(20),
        || async move {
            let mut db = env.connect().await?;
            let keys: Vec<(String,)> =
                sqlx::query_as("SELECT idempotency_key FROM capture.idempotency ORDER BY 1")
                    .fetch_all(&mut db)
                    .await?;
            Ok((keys.len() < 2).then_some(keys))
        },
    )
    .await?;
    assert_eq!(kept, [("new".to_owned(),)], "only the fresh answer stays");
    Ok(())
}
