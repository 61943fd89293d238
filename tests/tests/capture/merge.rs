//! Dedupe: a known person merges (first touch kept), a vendor source rejects duplicates in its
//! window, and concurrent captures of one person make one lead (R9, I3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use leadflow_e2e::{Suite, WEBSITE_SOURCE};
use leadflow_proto::capture::v1::{
    Attribution, CaptureLeadRequest, CaptureOutcome, DedupeMode, DedupePolicy, GetLeadRequest,
    LeadInput, MergeKind, SourceKind, SourceSettings,
};
use leadflow_proto::events::v1::LeadMerged;
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    capture_of, count, person, vendor_settings, wait_for_event, with_idempotency_key,
};

fn merge_source(name: &str) -> SourceSettings {
    SourceSettings {
        name: name.into(),
        kind: SourceKind::Partner.into(),
        dedupe: Some(DedupePolicy {
            mode: DedupeMode::Merge.into(),
            window_seconds: 0,
        }),
        currency: "USD".into(),
        ..SourceSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recapture_in_another_format_merges_into_the_same_lead() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    suite
        .create_source("partner-form", merge_source("Partner form"))
        .await?;
    let mut capture = suite.capture().await?;

    let first = capture
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                email: "  GRACE.Hopper@Navy-Example.ORG ".into(),
                phone: "(415) 555-0142".into(),
                first_name: "Grace".into(),
                last_name: "Hopper".into(),
                source: "partner-form".into(),
                channel: "Referral".into(),
                campaign: "spring-launch".into(),
                ..LeadInput::default()
            }),
            attribution: Some(Attribution {
                utm_source: "newsletter".into(),
                utm_medium: "email".into(),
                utm_campaign: "spring".into(),
                referrer: "https://partner.example/".into(),
                ..Attribution::default()
            }),
            consent: None,
        })
        .await?
        .into_inner();
    assert_eq!(first.outcome(), CaptureOutcome::Created);
    let created = first.lead.expect("captured lead");
    assert_eq!(created.email, "grace.hopper@navy-example.org");
    assert_eq!(created.phone, "+14155550142");
    assert_eq!(created.company, "");
    assert_eq!(created.touch_count, 1);

    let second = capture
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                email: "grace.hopper@navy-example.org".into(),
                phone: "+14155550142".into(),
                company: "US Navy".into(),
                source: WEBSITE_SOURCE.into(),
                channel: "paid_search".into(),
                campaign: "autumn-promo".into(),
                ..LeadInput::default()
            }),
            attribution: Some(Attribution {
                utm_source: "google".into(),
                utm_medium: "cpc".into(),
                utm_campaign: "autumn".into(),
                gclid: "gclid-123".into(),
                ..Attribution::default()
            }),
            consent: None,
        })
        .await?
        .into_inner();
    assert_eq!(second.outcome(), CaptureOutcome::Merged);
    let merged = second.lead.expect("merged lead");
    assert_eq!(merged.lead_id, created.lead_id, "the same lead");
    assert_eq!(merged.touch_count, 2);
    assert_eq!(merged.company, "US Navy", "the empty company got filled");
    assert_eq!(
        (merged.first_name.as_str(), merged.last_name.as_str()),
        ("Grace", "Hopper"),
        "names kept"
    );
    assert_eq!(
        (merged.source.as_str(), merged.channel.as_str()),
        ("partner-form", "referral"),
        "the lead keeps where it first came from"
    );

    let first_touch = merged.first_touch.clone().expect("first touch");
    assert_eq!(
        (
            first_touch.source.as_str(),
            first_touch.channel.as_str(),
            first_touch.campaign.as_str()
        ),
        ("partner-form", "referral", "spring-launch")
    );
    let first_attribution = first_touch.attribution.expect("first attribution");
    assert_eq!(
        (
            first_attribution.utm_source.as_str(),
            first_attribution.utm_medium.as_str(),
            first_attribution.utm_campaign.as_str(),
            first_attribution.gclid.as_str()
        ),
        ("newsletter", "email", "spring", "")
    );
    let latest_touch = merged.latest_touch.clone().expect("latest touch");
    assert_eq!(
        (
            latest_touch.source.as_str(),
            latest_touch.channel.as_str(),
            latest_touch.campaign.as_str()
        ),
        (WEBSITE_SOURCE, "paid_search", "autumn-promo")
    );
    let latest_attribution = latest_touch.attribution.expect("latest attribution");
    assert_eq!(
        (
            latest_attribution.utm_source.as_str(),
            latest_attribution.utm_campaign.as_str(),
            latest_attribution.gclid.as_str()
        ),
        ("google", "autumn", "gclid-123")
    );

    let stored = capture
        .get_lead(GetLeadRequest {
            lead_id: created.lead_id.clone(),
        })
        .await?
        .into_inner()
        .lead
        .expect("stored lead");
    assert_eq!(stored, merged, "GetLead answers what the merge answered");

    let mut db = suite.env.connect().await?;
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.leads WHERE merged_into IS NULL"
        )
        .await?,
        1,
        "one lead"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.leads WHERE merged_into IS NOT NULL"
        )
        .await?,
        1,
        "the re-capture kept as the lead's record"
    );
    let [lineage] = merged.merges.as_slice() else {
        anyhow::bail!("one merge in the lineage: {:?}", merged.merges);
    };
    assert_eq!(lineage.lead_id, created.lead_id);
    assert_eq!(lineage.kind(), MergeKind::Capture);
    assert_eq!(lineage.source, WEBSITE_SOURCE);
    assert_eq!(lineage.fields_filled, vec!["company".to_owned()]);
    assert!(lineage.unmerged_at.is_none() && lineage.review_id.is_empty());
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.touches").await?,
        2
    );

    let (_, event) = wait_for_event::<LeadMerged, _>(&suite, "lead.merged", |event| {
        event.lead_id == created.lead_id
    })
    .await?;
    assert!(
        event.fields_filled.iter().any(|field| field == "company"),
        "fields_filled names company: {:?}",
        event.fields_filled
    );
    assert_eq!(
        event.fields_filled,
        ["company"],
        "and nothing else was empty"
    );
    assert_eq!(event.touch_count, 2);
    assert_eq!(
        event.merge_id, lineage.merge_id,
        "the event names the merge"
    );
    assert_eq!(event.merged_lead_id, lineage.merged_lead_id);
    assert!(!event.merged_lead_was_lead);
    assert_eq!(
        (
            event.source.as_str(),
            event.channel.as_str(),
            event.campaign.as_str()
        ),
        (WEBSITE_SOURCE, "paid_search", "autumn-promo")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vendor_source_rejects_a_duplicate_within_its_window() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    suite
        .create_source("acme-vendor", vendor_settings())
        .await?;
    let mut capture = suite.capture().await?;
    let vendor_lead = |email: &str, phone: &str| LeadInput {
        source: "acme-vendor".into(),
        channel: "vendor".into(),
        ..person(email, phone)
    };
    let first = capture
        .capture_lead(capture_of(vendor_lead(
            "alan.turing@bletchley.example",
            "(415) 555-0143",
        )))
        .await?
        .into_inner();
    assert_eq!(first.outcome(), CaptureOutcome::Created);
    let lead_id = first.lead.expect("lead").lead_id;

    let duplicate = capture
        .capture_lead(capture_of(vendor_lead(
            " Alan.Turing@BLETCHLEY.example",
            "+1 415-555-0143",
        )))
        .await
        .expect_err("a duplicate within the window is rejected");
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");
    assert!(
        duplicate.message().contains(&lead_id),
        "the message names the existing lead {lead_id}: {:?}",
        duplicate.message()
    );

    // The same person by phone alone is the same duplicate.
    let by_phone = capture
        .capture_lead(capture_of(vendor_lead("", "415.555.0143")))
        .await
        .expect_err("a duplicate by phone is rejected too");
    assert_eq!(by_phone.code(), Code::AlreadyExists, "{by_phone:?}");

    let mut db = suite.env.connect().await?;
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.leads").await?,
        1,
        "no second lead row"
    );
    let (touch_count,): (i32,) = sqlx::query_as("SELECT touch_count FROM capture.leads")
        .fetch_one(&mut db)
        .await?;
    assert_eq!(touch_count, 1, "a rejected duplicate is not a touch");
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.touches").await?,
        1
    );
    let types: Vec<(String,)> = sqlx::query_as("SELECT event_type FROM capture.outbox ORDER BY id")
        .fetch_all(&mut db)
        .await?;
    assert_eq!(
        types,
        [("lead.captured".to_owned(),)],
        "no merge was emitted for the duplicates"
    );
    Ok(())
}

/// The email and phone of a round's person in the variant `index`.
fn race_variant(round: usize, index: usize) -> (String, String) {
    let local = format!("race.person.{round}");
    let email = match index % 4 {
        0 => format!("{local}@Race-Example.com"),
        1 => format!("  {}@RACE-EXAMPLE.COM ", local.to_uppercase()),
        2 => format!("{local}@race-example.com"),
        _ => format!("\t{local}@Race-example.Com  "),
    };
    let line = 142 + round;
    let phone = match index % 3 {
        0 => format!("(415) 555-{line:04}"),
        1 => format!("+1 415 555 {line:04}"),
        _ => format!("415.555.{line:04}"),
    };
    (email, phone)
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_concurrent_captures_of_one_person_make_one_lead() -> anyhow::Result<()> {
    const CONCURRENCY: usize = 64;
    let rounds: usize = match std::env::var("LEADFLOW_RACE_ROUNDS") {
        Ok(value) => value.parse()?,
        Err(_) => 200,
    };
    anyhow::ensure!(
        (1..=9_000).contains(&rounds),
        "LEADFLOW_RACE_ROUNDS must be 1..=9000"
    );
    let suite = Suite::start().await?;
    let capture = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let (mut created, mut merged) = (0_usize, 0_usize);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for round in 0..rounds {
        let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for index in 0..CONCURRENCY {
            let mut client = capture.clone();
            let barrier = barrier.clone();
            let (email, phone) = race_variant(round, index);
            tasks.spawn(async move {
                let request = capture_of(LeadInput {
                    first_name: if index % 2 == 0 { "Race" } else { " race " }.into(),
                    ..person(&email, &phone)
                });
                barrier.wait().await;
                let sent = Instant::now();
                // Even calls carry an idempotency key (a transaction from the start), odd
                // ones none (capture first tries one statement that inserts only a person
                // nobody holds yet). An overloaded service (UNAVAILABLE: no database
                // connection in time) stored nothing, so either is asked again; a keyed call
                // with its key, as a careful client would.
                let key = (index % 2 == 0).then(|| format!("race-{round}-{index}"));
                let answer = tokio::time::timeout(Duration::from_secs(60), async {
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let sent = match &key {
                            Some(key) => {
                                client
                                    .capture_lead(with_idempotency_key(request.clone(), key))
                                    .await
                            }
                            None => client.capture_lead(request.clone()).await,
                        };
                        match sent {
                            Err(status) if status.code() == Code::Unavailable && tries < 5 => {
                                tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                            }
                            answer => return answer,
                        }
                    }
                })
                .await;
                (index, answer, sent.elapsed())
            });
        }
        let mut lead_ids = Vec::with_capacity(CONCURRENCY);
        while let Some(joined) = tasks.join_next().await {
            let (index, answer, took) = joined?;
            slowest = slowest.max(took);
            let response = answer
                .map_err(|_| anyhow::anyhow!("round {round} call {index} took over 60 s"))?
                .map_err(|status| anyhow::anyhow!("round {round} call {index}: {status:?}"))?
                .into_inner();
            match response.outcome() {
                CaptureOutcome::Created => created += 1,
                CaptureOutcome::Merged => merged += 1,
                outcome @ (CaptureOutcome::InReview | CaptureOutcome::Unspecified) => {
                    anyhow::bail!("round {round}: unexpected outcome {outcome:?}")
                }
            }
            lead_ids.push(response.lead.expect("lead").lead_id);
        }
        let lead_id = lead_ids[0].clone();
        assert!(
            lead_ids.iter().all(|id| *id == lead_id),
            "round {round}: one person got several leads: {lead_ids:?}"
        );
        let lead_uuid = Uuid::parse_str(&lead_id)?;
        let (touch_count,): (i32,) =
            sqlx::query_as("SELECT touch_count FROM capture.leads WHERE lead_id = $1")
                .bind(lead_uuid)
                .fetch_one(&mut db)
                .await?;
        assert_eq!(
            touch_count, CONCURRENCY as i32,
            "round {round}: every capture is a touch"
        );
        // Each merged capture is kept as a record of the lead, with its touch.
        let (records,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM capture.leads WHERE merged_into = $1")
                .bind(lead_uuid)
                .fetch_one(&mut db)
                .await?;
        assert_eq!(records, CONCURRENCY as i64 - 1, "round {round}: records");
        let (touches,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM capture.touches t JOIN capture.leads l USING (lead_id) \
             WHERE l.lead_id = $1 OR l.merged_into = $1",
        )
        .bind(lead_uuid)
        .fetch_one(&mut db)
        .await?;
        assert_eq!(touches, CONCURRENCY as i64, "round {round}: touches");
        assert_eq!(
            created,
            round + 1,
            "round {round}: exactly one capture created the lead"
        );
    }
    let wall = started.elapsed();
    // The service logs each transaction it retried after a unique or serialization conflict.
    let retries = suite.services[&leadflow_e2e::Service::Capture]
        .logs()
        .iter()
        .filter(|line| line.contains("capture retried after a conflict"))
        .count();
    eprintln!(
        "dedupe race: {rounds} rounds x {CONCURRENCY} concurrent captures: created {created}, \
         merged {merged}, retries {retries}, wall {wall:.2?} ({:.1?} per round), slowest call {slowest:.2?}",
        wall / rounds as u32
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.leads WHERE merged_into IS NULL"
        )
        .await?,
        rounds as i64,
        "one lead per person, no duplicates"
    );
    assert_eq!(created, rounds);
    assert_eq!(merged, rounds * (CONCURRENCY - 1));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_leads_pages_through_every_lead_as_get_lead_reads_it_merged_rows_inside_their_lead()
-> anyhow::Result<()> {
    use leadflow_proto::capture::v1::ListLeadsRequest;

    let suite = Suite::start_capture().await?;
    let mut capture = suite.capture().await?;
    let mut created = Vec::new();
    for n in 0..5 {
        let lead = capture
            .capture_lead(CaptureLeadRequest {
                consent: Some(crate::support::consent("198.51.100.7", "Listing/1.0")),
                ..capture_of(person(
                    &format!("listed{n}@acme-corp.example"),
                    &format!("+1 415 555 01{n:02}"),
                ))
            })
            .await?
            .into_inner()
            .lead
            .expect("lead");
        created.push(lead.lead_id);
    }
    // Two re-captures of the second person: records merged into it, each with a consent
    // and a touch of its own, and a lineage of two merges.
    for campaign in ["spring", "summer"] {
        let merged = capture
            .capture_lead(CaptureLeadRequest {
                attribution: Some(Attribution {
                    utm_campaign: campaign.into(),
                    ..Attribution::default()
                }),
                consent: Some(crate::support::consent("198.51.100.8", "Listing/2.0")),
                ..capture_of(LeadInput {
                    first_name: "Second".into(),
                    ..person("listed1@acme-corp.example", "")
                })
            })
            .await?
            .into_inner();
        assert_eq!(merged.outcome(), CaptureOutcome::Merged);
    }

    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = capture
            .list_leads(ListLeadsRequest {
                page_size: 2,
                page_token: page_token.clone(),
                ..ListLeadsRequest::default()
            })
            .await?
            .into_inner();
        assert!(page.leads.len() <= 2);
        listed.extend(page.leads);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let listed_ids: Vec<&str> = listed.iter().map(|lead| lead.lead_id.as_str()).collect();
    let newest_first: Vec<&str> = created.iter().rev().map(String::as_str).collect();
    assert_eq!(
        listed_ids, newest_first,
        "every lead once, newest first, no merged record listed"
    );
    for lead in &listed {
        let read = capture
            .get_lead(GetLeadRequest {
                lead_id: lead.lead_id.clone(),
            })
            .await?
            .into_inner()
            .lead
            .expect("GetLead finds it");
        assert_eq!(lead, &read, "listed as GetLead reads it");
    }
    let second = &listed[3];
    assert_eq!(second.lead_id, created[1]);
    assert_eq!(second.touch_count, 3);
    assert_eq!(second.consents.len(), 3);
    assert_eq!(second.merges.len(), 2);
    assert_eq!(
        second.first_name, "Second",
        "an empty field filled by a merge"
    );
    assert_eq!(
        second
            .latest_touch
            .as_ref()
            .and_then(|touch| touch.attribution.as_ref())
            .map(|attribution| attribution.utm_campaign.as_str()),
        Some("summer")
    );
    assert_eq!(
        second
            .first_touch
            .as_ref()
            .and_then(|touch| touch.attribution.as_ref())
            .map(|attribution| attribution.utm_campaign.as_str()),
        Some("")
    );
    Ok(())
}
