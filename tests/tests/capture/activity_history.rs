//! A lead's activity history: `ListActivities` pages through what a lead's family did, newest
//! first, titles masked without `pii:read`, every bad field named; and `UnmergeLead` gives a
//! restored lead back what was done through it (its id, its capture's browser) while it was
//! merged, announced in `lead.unmerged`.

use leadflow_e2e::{Suite, WEBSITE_SOURCE};
use leadflow_proto::capture::v1::{
    Activity, ActivityKind, ActivityOutcome, CaptureLeadRequest, CaptureOutcome, EraseLeadRequest,
    LeadInput, ListActivitiesRequest, RecordActivityRequest, UnmergeLeadRequest,
};
use leadflow_proto::events::v1::LeadUnmerged;
use leadflow_proto::prost_types::Timestamp;
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    Client, by_lead, by_visitor, capture_of, get_lead, person, violations, wait_for_event,
};

/// A page visit at `seconds` since the epoch of the person `named` names.
fn visit_at(named: RecordActivityRequest, page: &str, seconds: i64) -> RecordActivityRequest {
    RecordActivityRequest {
        kind: ActivityKind::PageVisit.into(),
        url: format!("https://www.acme.example/{page}"),
        title: format!("Page {page}"),
        source: WEBSITE_SOURCE.into(),
        occurred_at: Some(Timestamp { seconds, nanos: 0 }),
        ..named
    }
}

/// Records `request` and returns its activity id, checking who it was recorded for.
async fn record(
    client: &mut Client,
    request: RecordActivityRequest,
    outcome: ActivityOutcome,
    lead_id: &str,
) -> anyhow::Result<String> {
    let answer = client.record_activity(request).await?.into_inner();
    assert_eq!(answer.outcome(), outcome, "{answer:?}");
    assert_eq!(answer.lead_id, lead_id, "{answer:?}");
    Ok(answer.activity_id)
}

async fn captured(client: &mut Client, request: CaptureLeadRequest) -> anyhow::Result<String> {
    let lead = client.capture_lead(request).await?.into_inner().lead;
    Ok(lead.ok_or_else(|| anyhow::anyhow!("a lead"))?.lead_id)
}

/// Every activity `ListActivities` gives for `lead_id`, `page_size` at a time, checking that
/// each page names `listed` as the lead.
async fn all_activities(
    client: &mut Client,
    lead_id: &str,
    page_size: i32,
    listed: &str,
) -> anyhow::Result<Vec<Activity>> {
    let mut activities = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_activities(ListActivitiesRequest {
                lead_id: lead_id.to_owned(),
                page_size,
                page_token,
            })
            .await?
            .into_inner();
        assert_eq!(page.lead_id, listed);
        assert!(page.activities.len() <= page_size as usize);
        activities.extend(page.activities);
        if page.next_page_token.is_empty() {
            return Ok(activities);
        }
        page_token = page.next_page_token;
    }
}

fn ids(activities: &[Activity]) -> Vec<&str> {
    activities
        .iter()
        .map(|activity| activity.activity_id.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn list_activities_pages_through_a_leads_family_newest_first() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let browser = Uuid::new_v4();

    // Before the person is known, the browser visits the home page; the capture links it.
    let home = record(
        &mut client,
        visit_at(by_visitor(browser), "home", 1_790_000_000),
        ActivityOutcome::Anonymous,
        "",
    )
    .await?;
    let lead_id = captured(
        &mut client,
        capture_of(LeadInput {
            visitor_id: browser.to_string(),
            ..person("katherine.johnson@langley.example", "")
        }),
    )
    .await?;
    let pricing = record(
        &mut client,
        RecordActivityRequest {
            kind: ActivityKind::PricingPageView.into(),
            ..visit_at(by_lead(&lead_id), "pricing", 1_790_000_300)
        },
        ActivityOutcome::Recorded,
        &lead_id,
    )
    .await?;
    let download = record(
        &mut client,
        RecordActivityRequest {
            kind: ActivityKind::Download.into(),
            asset: "trajectories.pdf".into(),
            url: String::new(),
            title: String::new(),
            ..visit_at(by_lead(&lead_id), "", 1_790_000_100)
        },
        ActivityOutcome::Recorded,
        &lead_id,
    )
    .await?;
    // A re-capture merged into the lead; what is done through its record is the lead's.
    let merged = client
        .capture_lead(capture_of(person(
            "katherine.johnson@langley.example",
            "+1 757 555 0199",
        )))
        .await?
        .into_inner();
    assert_eq!(merged.outcome(), CaptureOutcome::Merged);
    let record_id = get_lead(&mut client, &lead_id).await?.merges[0]
        .merged_lead_id
        .clone();
    let webinar = record(
        &mut client,
        RecordActivityRequest {
            kind: ActivityKind::WebinarAttended.into(),
            asset: "Computing at Langley".into(),
            url: String::new(),
            title: String::new(),
            ..visit_at(by_lead(&record_id), "", 1_790_000_200)
        },
        ActivityOutcome::Recorded,
        &lead_id,
    )
    .await?;
    // Another lead's activity is not listed.
    let other = captured(&mut client, capture_of(person("mary@langley.example", ""))).await?;
    record(
        &mut client,
        visit_at(by_lead(&other), "other", 1_790_000_400),
        ActivityOutcome::Recorded,
        &other,
    )
    .await?;

    let newest_first = [&pricing, &webinar, &download, &home];
    for page_size in [1, 2, 3, 50] {
        let listed = all_activities(&mut client, &lead_id, page_size, &lead_id).await?;
        assert_eq!(ids(&listed), newest_first, "page size {page_size}");
    }
    // A merged record's id lists the lead it is part of.
    let through_record = all_activities(&mut client, &record_id, 2, &lead_id).await?;
    assert_eq!(ids(&through_record), newest_first);

    let listed = all_activities(&mut client, &lead_id, 50, &lead_id).await?;
    let first = &listed[0];
    assert_eq!(first.kind(), ActivityKind::PricingPageView);
    assert_eq!(first.url, "https://www.acme.example/pricing");
    assert_eq!(first.title, "Page pricing", "admin reads titles");
    assert_eq!(first.source, WEBSITE_SOURCE);
    assert_eq!(
        first.occurred_at.as_ref().map(|at| at.seconds),
        Some(1_790_000_300)
    );
    assert!(first.recorded_at.is_some());
    assert!(!first.anonymous && first.linked_at.is_none());
    assert_eq!(first.record_id, lead_id);
    assert_eq!(
        listed[1].record_id, record_id,
        "recorded through the record"
    );
    assert_eq!(listed[2].asset, "trajectories.pdf");
    let linked = &listed[3];
    assert!(linked.anonymous && linked.linked_at.is_some(), "{linked:?}");
    assert_eq!(linked.record_id, lead_id, "linked by the lead's capture");

    // Without pii:read a title is masked; the rest is not personal.
    let reader_key = suite.env.create_api_key("reader", &["leads:read"]).await?;
    let mut reader = suite.capture_as(&reader_key).await?;
    let masked = reader
        .list_activities(ListActivitiesRequest {
            lead_id: lead_id.clone(),
            ..ListActivitiesRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(ids(&masked.activities), newest_first);
    assert_eq!(masked.activities[0].title, "P***");
    assert_eq!(masked.activities[0].url, "https://www.acme.example/pricing");
    let writer_key = suite.env.create_api_key("writer", &["leads:write"]).await?;
    let denied = suite
        .capture_as(&writer_key)
        .await?
        .list_activities(ListActivitiesRequest {
            lead_id: lead_id.clone(),
            ..ListActivitiesRequest::default()
        })
        .await
        .expect_err("leads:write does not read");
    assert_eq!(denied.code(), Code::PermissionDenied);

    // Once the person is erased, their activities keep what they were but no page or title.
    client
        .erase_lead(EraseLeadRequest {
            lead_id: lead_id.clone(),
            reason: "gdpr-request".into(),
        })
        .await?;
    let erased = all_activities(&mut client, &lead_id, 50, &lead_id).await?;
    assert_eq!(ids(&erased), newest_first);
    assert!(
        erased
            .iter()
            .all(|activity| activity.url.is_empty() && activity.title.is_empty()),
        "{erased:?}"
    );
    assert_eq!(erased[2].asset, "trajectories.pdf");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn list_activities_names_every_bad_field_and_an_unknown_lead_is_not_found()
-> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;

    let cases = [
        (
            ListActivitiesRequest::default(),
            vec![("lead_id", "REQUIRED")],
        ),
        (
            ListActivitiesRequest {
                lead_id: "not-a-lead".into(),
                page_size: -1,
                page_token: "page-two".into(),
            },
            vec![
                ("lead_id", "INVALID"),
                ("page_size", "OUT_OF_RANGE"),
                ("page_token", "INVALID"),
            ],
        ),
        (
            ListActivitiesRequest {
                lead_id: Uuid::now_v7().to_string(),
                page_size: 501,
                page_token: String::new(),
            },
            vec![("page_size", "OUT_OF_RANGE")],
        ),
    ];
    for (request, expected) in cases {
        let status = client
            .list_activities(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        let got = violations(&status);
        let expected: Vec<(String, String)> = expected
            .into_iter()
            .map(|(field, reason)| (field.to_owned(), reason.to_owned()))
            .collect();
        assert_eq!(got, expected, "{request:?}");
    }

    let unknown = client
        .list_activities(ListActivitiesRequest {
            lead_id: Uuid::now_v7().to_string(),
            ..ListActivitiesRequest::default()
        })
        .await
        .expect_err("no such lead");
    assert_eq!(unknown.code(), Code::NotFound);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unmerging_gives_the_restored_lead_what_was_done_through_it() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let lead_id = captured(&mut client, capture_of(person("grace@harvard.example", ""))).await?;
    let browser = Uuid::new_v4();

    // A browser nobody is known in yet, then a capture in it that is the same person by email.
    let before = record(
        &mut client,
        visit_at(by_visitor(browser), "before", 1_790_000_000),
        ActivityOutcome::Anonymous,
        "",
    )
    .await?;
    let merged = client
        .capture_lead(capture_of(LeadInput {
            visitor_id: browser.to_string(),
            ..person("grace@harvard.example", "+1 617 555 0142")
        }))
        .await?
        .into_inner();
    assert_eq!(merged.outcome(), CaptureOutcome::Merged);
    let merge = get_lead(&mut client, &lead_id).await?.merges[0].clone();
    let record_id = merge.merged_lead_id.clone();

    // While merged, everything is the lead's: through the browser, the record's id, the lead's
    // own id and the email.
    let via_browser = record(
        &mut client,
        visit_at(by_visitor(browser), "via-browser", 1_790_000_100),
        ActivityOutcome::Recorded,
        &lead_id,
    )
    .await?;
    let via_record = record(
        &mut client,
        visit_at(by_lead(&record_id), "via-record", 1_790_000_200),
        ActivityOutcome::Recorded,
        &lead_id,
    )
    .await?;
    let via_lead = record(
        &mut client,
        visit_at(by_lead(&lead_id), "via-lead", 1_790_000_300),
        ActivityOutcome::Recorded,
        &lead_id,
    )
    .await?;
    let via_email = record(
        &mut client,
        visit_at(
            RecordActivityRequest {
                email: "grace@harvard.example".into(),
                ..RecordActivityRequest::default()
            },
            "via-email",
            1_790_000_400,
        ),
        ActivityOutcome::Recorded,
        &lead_id,
    )
    .await?;
    let listed = all_activities(&mut client, &lead_id, 50, &lead_id).await?;
    assert_eq!(
        ids(&listed),
        [&via_email, &via_lead, &via_record, &via_browser, &before]
    );

    let unmerged = client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: merge.merge_id.clone(),
        })
        .await?
        .into_inner();
    let restored_id = unmerged
        .restored
        .as_ref()
        .map(|lead| lead.lead_id.clone())
        .unwrap_or_default();
    assert_eq!(restored_id, record_id);

    // The restored lead has what came through its browser and its id; the lead keeps the rest.
    let restored = all_activities(&mut client, &record_id, 2, &record_id).await?;
    assert_eq!(ids(&restored), [&via_record, &via_browser, &before]);
    let kept = all_activities(&mut client, &lead_id, 2, &lead_id).await?;
    assert_eq!(ids(&kept), [&via_email, &via_lead]);

    let event = wait_for_event::<LeadUnmerged, _>(&suite, "lead.unmerged", |event| {
        event.merge_id == merge.merge_id
    })
    .await?
    .1;
    let mut moved = vec![before.clone(), via_browser.clone(), via_record.clone()];
    moved.sort();
    assert_eq!(event.activity_ids, moved);
    assert_eq!(event.lead_id, lead_id);

    // The browser is the restored lead's from now on.
    let after = record(
        &mut client,
        visit_at(by_visitor(browser), "after", 1_790_000_500),
        ActivityOutcome::Recorded,
        &record_id,
    )
    .await?;
    // Undoing again changes nothing.
    client
        .unmerge_lead(UnmergeLeadRequest {
            merge_id: merge.merge_id.clone(),
        })
        .await?;
    let restored = all_activities(&mut client, &record_id, 50, &record_id).await?;
    assert_eq!(ids(&restored), [&after, &via_record, &via_browser, &before]);
    let kept = all_activities(&mut client, &lead_id, 50, &lead_id).await?;
    assert_eq!(ids(&kept), [&via_email, &via_lead]);
    Ok(())
}
