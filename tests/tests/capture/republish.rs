//! `capture republish --since TIME`: after Redis lost stream entries, the events since then go
//! out again from the outbox, through the running service's relay.

use leadflow_e2e::{Service, Suite, eventually};

use crate::support::{WAIT, capture_of, person, published};

/// How many times each event id of type `event_type` is on capture's stream.
async fn copies(suite: &Suite, event_type: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for event in published(suite).await? {
        if event.envelope.event_type != event_type {
            continue;
        }
        match counts
            .iter_mut()
            .find(|(id, _)| *id == event.envelope.event_id)
        {
            Some((_, count)) => *count += 1,
            None => counts.push((event.envelope.event_id.clone(), 1)),
        }
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread")]
async fn republish_sends_the_events_since_a_time_again_after_redis_lost_them() -> anyhow::Result<()>
{
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let since = chrono::Utc::now() - chrono::Duration::seconds(1);
    for email in ["first@republish.example", "second@republish.example"] {
        client.capture_lead(capture_of(person(email, ""))).await?;
    }
    let captured = eventually("both captures on the stream", WAIT, || async {
        let copies = copies(&suite, "lead.captured").await?;
        Ok((copies.len() == 2).then_some(copies))
    })
    .await?;
    assert!(captured.iter().all(|(_, count)| *count == 1));

    // Redis loses the stream.
    let mut redis = suite.env.redis().await?;
    redis::cmd("DEL")
        .arg(suite.env.stream(crate::support::CAPTURE_STREAM))
        .query_async::<()>(&mut redis)
        .await?;
    assert!(published(&suite).await?.is_empty());

    let output = suite
        .env
        .run_command(
            Service::Capture,
            &[
                "republish".to_owned(),
                "--since".to_owned(),
                since.to_rfc3339(),
            ],
            None,
        )
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "capture republish failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let marked: u64 = stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|err| anyhow::anyhow!("{stdout}: {err}"))?;
    assert!(marked >= 2, "{stdout}");

    // The running relay sends them again: the same events, by id, once each.
    let again = eventually("the captures on the stream again", WAIT, || async {
        let copies = copies(&suite, "lead.captured").await?;
        Ok((copies.len() == 2).then_some(copies))
    })
    .await?;
    assert_eq!(again, captured);
    Ok(())
}
