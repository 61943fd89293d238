//! Activity tracking through `RecordActivity`: a lead named by id, email, phone or visitor id;
//! a visitor's anonymous activity handed to the lead a capture links it to, emitted then;
//! idempotent retries; every bad field named; unknown people not found; merged leads resolved
//! to the surviving lead; erased people forgotten by their browsers; imports and `leadctl`
//! (recording and listing).

use leadflow_e2e::{Suite, WEBSITE_SOURCE};
use leadflow_proto::capture::v1::{
    ActivityKind, ActivityOutcome, CaptureLeadRequest, EraseLeadRequest, ImportLeadsRequest,
    ImportOutcome, LeadInput, MergeResolution, RecordActivityRequest, RecordActivityResponse,
    ResolveMergeReviewRequest,
};
use leadflow_proto::events::v1::LeadActivity;
use prost::Message;
use sqlx::PgConnection;
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    Client, assert_no_canary, by_lead, by_visitor, capture_of, capture_rows, count, person,
    published, violations, wait_for_event,
};

/// A page visit of the person `named` names, on a page whose query string carries an email.
fn visit(named: RecordActivityRequest) -> RecordActivityRequest {
    RecordActivityRequest {
        kind: ActivityKind::PageVisit.into(),
        url: "https://www.acme.example/features?email=query.canary%40mail.example#plans".into(),
        title: "Titlecanary: all features".into(),
        source: WEBSITE_SOURCE.into(),
        ..named
    }
}

fn by_email(email: &str) -> RecordActivityRequest {
    RecordActivityRequest {
        email: email.to_owned(),
        ..RecordActivityRequest::default()
    }
}

async fn record(
    client: &mut Client,
    request: RecordActivityRequest,
) -> anyhow::Result<RecordActivityResponse> {
    Ok(client.record_activity(request).await?.into_inner())
}

async fn capture(client: &mut Client, lead: LeadInput) -> anyhow::Result<String> {
    Ok(client
        .capture_lead(capture_of(lead))
        .await?
        .into_inner()
        .lead
        .ok_or_else(|| anyhow::anyhow!("a lead"))?
        .lead_id)
}

/// Every stored activity: (lead id, visitor id, kind, url, anonymous), oldest first.
type StoredRow = (Option<Uuid>, Option<Uuid>, String, String, bool);

async fn stored_activities(db: &mut PgConnection) -> anyhow::Result<Vec<StoredRow>> {
    Ok(sqlx::query_as(
        "SELECT lead_id, visitor_id, kind, url, anonymous FROM capture.activities \
         ORDER BY occurred_at, activity_id",
    )
    .fetch_all(&mut *db)
    .await?)
}

/// Every `lead.activity` published so far.
async fn activity_events(suite: &Suite) -> anyhow::Result<Vec<LeadActivity>> {
    published(suite)
        .await?
        .into_iter()
        .filter(|event| event.envelope.event_type == "lead.activity")
        .map(|event| event.payload::<LeadActivity>())
        .collect()
}

/// Fails when any stream entry so far carries one of `canaries` (any case).
async fn assert_stream_clean(suite: &Suite, canaries: &[&str]) -> anyhow::Result<()> {
    for event in published(suite).await? {
        let raw = String::from_utf8_lossy(&event.entry.raw()).to_lowercase();
        for canary in canaries {
            anyhow::ensure!(
                !raw.contains(&canary.to_lowercase()),
                "{canary} is in stream entry {} ({})",
                event.entry.id,
                event.envelope.event_type
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_activity_is_recorded_for_the_lead_named_by_id_email_or_phone() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let lead_id = capture(
        &mut client,
        person("Dorothy.Vaughan@Langley.example", "+1 415 555 0161"),
    )
    .await?;

    let by_id = record(&mut client, visit(by_lead(&lead_id))).await?;
    let by_mail = record(
        &mut client,
        RecordActivityRequest {
            kind: ActivityKind::Download.into(),
            asset: "orbital-mechanics.pdf".into(),
            url: String::new(),
            title: String::new(),
            ..visit(by_email(" DOROTHY.vaughan@langley.EXAMPLE "))
        },
    )
    .await?;
    let by_phone = record(
        &mut client,
        RecordActivityRequest {
            kind: ActivityKind::WebinarAttended.into(),
            asset: "Computing at Langley".into(),
            occurred_at: Some(leadflow_proto::prost_types::Timestamp {
                seconds: 1_790_000_000,
                nanos: 0,
            }),
            url: String::new(),
            title: String::new(),
            ..visit(RecordActivityRequest {
                phone: "(415) 555-0161".into(),
                ..RecordActivityRequest::default()
            })
        },
    )
    .await?;
    for answer in [&by_id, &by_mail, &by_phone] {
        assert_eq!(answer.outcome(), ActivityOutcome::Recorded, "{answer:?}");
        assert_eq!(answer.lead_id, lead_id);
        Uuid::parse_str(&answer.activity_id)?;
    }
    assert_eq!(
        by_phone.occurred_at.as_ref().map(|at| at.seconds),
        Some(1_790_000_000),
        "dated as the client said"
    );

    let mut db = suite.env.connect().await?;
    let lead = Uuid::parse_str(&lead_id)?;
    let mut stored = stored_activities(&mut db).await?;
    stored.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(
        stored,
        [
            (
                Some(lead),
                None,
                "download".to_owned(),
                String::new(),
                false
            ),
            (
                Some(lead),
                None,
                "page_visit".to_owned(),
                "https://www.acme.example/features".to_owned(),
                false
            ),
            (
                Some(lead),
                None,
                "webinar_attended".to_owned(),
                String::new(),
                false
            ),
        ],
        "the query string and fragment are never stored"
    );

    wait_for_event::<LeadActivity, _>(&suite, "lead.activity", |event| {
        event.activity_id == by_phone.activity_id
    })
    .await?;
    let events = activity_events(&suite).await?;
    assert_eq!(events.len(), 3, "{events:?}");
    let visit_event = events
        .iter()
        .find(|event| event.activity_id == by_id.activity_id)
        .ok_or_else(|| anyhow::anyhow!("the visit's event"))?;
    assert_eq!(visit_event.lead_id, lead_id);
    assert_eq!(
        visit_event.kind(),
        leadflow_proto::events::v1::ActivityKind::PageVisit
    );
    assert_eq!(visit_event.url, "https://www.acme.example/features");
    assert_eq!(visit_event.source, WEBSITE_SOURCE);
    assert!(!visit_event.anonymous);
    let webinar = events
        .iter()
        .find(|event| event.activity_id == by_phone.activity_id)
        .ok_or_else(|| anyhow::anyhow!("the webinar's event"))?;
    assert_eq!(webinar.asset, "Computing at Langley");
    assert_eq!(
        webinar.occurred_at.as_ref().map(|at| at.seconds),
        Some(1_790_000_000)
    );
    assert_stream_clean(
        &suite,
        &[
            "dorothy",
            "langley.example",
            "5550161",
            "query.canary",
            "titlecanary",
            "#plans",
        ],
    )
    .await?;
    let leaked: Vec<String> = suite
        .all_logs()
        .into_iter()
        .filter(|line| {
            let line = line.to_lowercase();
            line.contains("dorothy") || line.contains("query.canary") || line.contains("5550161")
        })
        .collect();
    assert!(leaked.is_empty(), "personal data in logs: {leaked:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitors_anonymous_activities_become_the_leads_when_a_capture_links_it()
-> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let visitor = Uuid::new_v4();

    let first = record(&mut client, visit(by_visitor(visitor))).await?;
    let second = record(
        &mut client,
        RecordActivityRequest {
            kind: ActivityKind::PricingPageView.into(),
            url: "https://www.acme.example/pricing".into(),
            ..visit(by_visitor(visitor))
        },
    )
    .await?;
    for answer in [&first, &second] {
        assert_eq!(answer.outcome(), ActivityOutcome::Anonymous);
        assert_eq!(answer.lead_id, "", "no lead yet");
    }
    assert!(
        activity_events(&suite).await?.is_empty(),
        "nothing is emitted for an anonymous visitor"
    );

    let lead_id = capture(
        &mut client,
        LeadInput {
            visitor_id: visitor.to_string().to_uppercase(),
            ..person("mary.jackson@langley.example", "")
        },
    )
    .await?;
    let lead = Uuid::parse_str(&lead_id)?;
    let stored = stored_activities(&mut db).await?;
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|(owner, from, _, _, anonymous)| *owner == Some(lead)
                && *from == Some(visitor)
                && *anonymous),
        "linked, and still known to have been anonymous: {stored:?}"
    );
    let linked = wait_for_event::<LeadActivity, _>(&suite, "lead.activity", |event| {
        event.activity_id == second.activity_id
    })
    .await?
    .1;
    assert_eq!(linked.lead_id, lead_id);
    assert!(linked.anonymous);
    let events = activity_events(&suite).await?;
    let order: Vec<&str> = events
        .iter()
        .map(|event| event.activity_id.as_str())
        .collect();
    assert_eq!(
        order,
        [first.activity_id.as_str(), second.activity_id.as_str()],
        "oldest first"
    );

    // From now on the browser is the lead's.
    let later = record(&mut client, visit(by_visitor(visitor))).await?;
    assert_eq!(later.outcome(), ActivityOutcome::Recorded);
    assert_eq!(later.lead_id, lead_id);
    let later_event = wait_for_event::<LeadActivity, _>(&suite, "lead.activity", |event| {
        event.activity_id == later.activity_id
    })
    .await?
    .1;
    assert!(!later_event.anonymous);

    // Capturing the person again in the same browser links nothing twice.
    capture(
        &mut client,
        LeadInput {
            visitor_id: visitor.to_string(),
            ..person("mary.jackson@langley.example", "")
        },
    )
    .await?;
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.outbox WHERE event_type = 'lead.activity'"
        )
        .await?,
        3
    );
    assert_stream_clean(&suite, &["mary.jackson", "query.canary", "titlecanary"]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_follows_the_latest_person_captured_in_it() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let shared_browser = Uuid::new_v4();
    let first_person = capture(
        &mut client,
        LeadInput {
            visitor_id: shared_browser.to_string(),
            ..person("first.colleague@acme.example", "")
        },
    )
    .await?;
    let theirs = record(&mut client, visit(by_visitor(shared_browser))).await?;
    assert_eq!(theirs.lead_id, first_person);

    let second_person = capture(
        &mut client,
        LeadInput {
            visitor_id: shared_browser.to_string(),
            ..person("second.colleague@acme.example", "")
        },
    )
    .await?;
    let mine = record(&mut client, visit(by_visitor(shared_browser))).await?;
    assert_eq!(
        mine.lead_id, second_person,
        "the latest identification wins"
    );
    let owners: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT activity_id, lead_id FROM capture.activities ORDER BY recorded_at, activity_id",
    )
    .fetch_all(&mut db)
    .await?;
    assert_eq!(
        owners,
        [
            (
                Uuid::parse_str(&theirs.activity_id)?,
                Some(Uuid::parse_str(&first_person)?)
            ),
            (
                Uuid::parse_str(&mine.activity_id)?,
                Some(Uuid::parse_str(&second_person)?)
            ),
        ],
        "what the first person did stays theirs"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_with_the_same_activity_id_answers_the_same_and_records_once() -> anyhow::Result<()>
{
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let lead_id = capture(&mut client, person("katherine@langley.example", "")).await?;
    let activity_id = Uuid::new_v4().to_string();
    let request = RecordActivityRequest {
        activity_id: activity_id.clone(),
        ..visit(by_lead(&lead_id))
    };

    let first = record(&mut client, request.clone()).await?;
    assert_eq!(first.activity_id, activity_id, "the client's id is kept");
    let again = record(&mut client, request.clone()).await?;
    assert_eq!(
        again.encode_to_vec(),
        first.encode_to_vec(),
        "the first answer again: {again:?} vs {first:?}"
    );
    // Retried concurrently too.
    let racing = futures::future::join_all((0..4).map(|_| {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.record_activity(request).await }
    }))
    .await;
    for answer in racing {
        assert_eq!(answer?.into_inner(), first);
    }
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.activities").await?,
        1
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.outbox WHERE event_type = 'lead.activity'"
        )
        .await?,
        1,
        "one event"
    );

    // The same id with another activity is a client bug, named as such.
    let reused = client
        .record_activity(RecordActivityRequest {
            url: "https://www.acme.example/other".into(),
            ..request.clone()
        })
        .await
        .expect_err("another request under the same id");
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(
        violations(&reused),
        [("activity_id".to_owned(), "ACTIVITY_ID_REUSED".to_owned())]
    );

    // An anonymous first answer stays the answer once the visitor is linked.
    let visitor = Uuid::new_v4();
    let anonymous = RecordActivityRequest {
        activity_id: Uuid::new_v4().to_string(),
        ..visit(by_visitor(visitor))
    };
    let first_anonymous = record(&mut client, anonymous.clone()).await?;
    assert_eq!(first_anonymous.outcome(), ActivityOutcome::Anonymous);
    capture(
        &mut client,
        LeadInput {
            visitor_id: visitor.to_string(),
            ..person("christine@langley.example", "")
        },
    )
    .await?;
    assert_eq!(record(&mut client, anonymous).await?, first_anonymous);
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.activities").await?,
        2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn record_activity_names_every_bad_field() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let visitor = Uuid::new_v4();
    let good = || visit(by_visitor(visitor));
    let future = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64
        + 3600;
    let cases: Vec<(RecordActivityRequest, Vec<(&str, &str)>)> = vec![
        (
            RecordActivityRequest {
                visitor_id: String::new(),
                ..good()
            },
            vec![("lead_id", "REQUIRED")],
        ),
        (
            RecordActivityRequest {
                email: "ada@acme.example".into(),
                ..good()
            },
            vec![("email", "ONE_PERSON")],
        ),
        (
            RecordActivityRequest {
                lead_id: "lead-7".into(),
                visitor_id: String::new(),
                ..good()
            },
            vec![("lead_id", "INVALID")],
        ),
        (
            RecordActivityRequest {
                visitor_id: "cookie".into(),
                ..good()
            },
            vec![("visitor_id", "INVALID_VISITOR_ID")],
        ),
        (
            RecordActivityRequest {
                visitor_id: String::new(),
                email: "not-an-email".into(),
                phone: "12".into(),
                ..good()
            },
            vec![("email", "INVALID_EMAIL"), ("phone", "INVALID_PHONE")],
        ),
        (
            RecordActivityRequest {
                visitor_id: String::new(),
                phone: "415 555 0100".into(),
                phone_region: "ZZ".into(),
                ..good()
            },
            vec![("phone_region", "INVALID_REGION")],
        ),
        (
            RecordActivityRequest { kind: 0, ..good() },
            vec![("kind", "REQUIRED")],
        ),
        (
            RecordActivityRequest { kind: 42, ..good() },
            vec![("kind", "INVALID")],
        ),
        (
            RecordActivityRequest {
                kind: ActivityKind::Other.into(),
                ..good()
            },
            vec![("name", "REQUIRED")],
        ),
        (
            RecordActivityRequest {
                name: "visit".into(),
                ..good()
            },
            vec![("name", "NOT_ALLOWED")],
        ),
        (
            RecordActivityRequest {
                url: String::new(),
                ..good()
            },
            vec![("url", "REQUIRED")],
        ),
        (
            RecordActivityRequest {
                url: "www.acme.example/pricing".into(),
                ..good()
            },
            vec![("url", "INVALID_URL")],
        ),
        (
            RecordActivityRequest {
                title: "t".repeat(301),
                ..good()
            },
            vec![("title", "TOO_LONG")],
        ),
        (
            RecordActivityRequest {
                kind: ActivityKind::WebinarRegistered.into(),
                ..good()
            },
            vec![("asset", "REQUIRED")],
        ),
        (
            RecordActivityRequest {
                occurred_at: Some(leadflow_proto::prost_types::Timestamp {
                    seconds: future,
                    nanos: 0,
                }),
                ..good()
            },
            vec![("occurred_at", "IN_THE_FUTURE")],
        ),
        (
            RecordActivityRequest {
                source: String::new(),
                ..good()
            },
            vec![("source", "REQUIRED")],
        ),
        (
            RecordActivityRequest {
                source: "no-such-source".into(),
                ..good()
            },
            vec![("source", "UNKNOWN_SOURCE")],
        ),
        (
            RecordActivityRequest {
                activity_id: "retry-1".into(),
                ..good()
            },
            vec![("activity_id", "INVALID")],
        ),
        (
            // Everything at once: one violation per problem, in field order.
            RecordActivityRequest {
                lead_id: String::new(),
                visitor_id: String::new(),
                kind: 0,
                url: "ftp://files.example/x".into(),
                source: "Not A Token".into(),
                ..RecordActivityRequest::default()
            },
            vec![
                ("lead_id", "REQUIRED"),
                ("kind", "REQUIRED"),
                ("url", "INVALID_URL"),
                ("source", "INVALID_TOKEN"),
            ],
        ),
    ];
    for (request, expected) in cases {
        let status = client
            .record_activity(request.clone())
            .await
            .expect_err("a bad request is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        let got = violations(&status);
        let got: Vec<(&str, &str)> = got
            .iter()
            .map(|(field, reason)| (field.as_str(), reason.as_str()))
            .collect();
        assert_eq!(got, expected, "{request:?}");
    }
    let mut db = suite.env.connect().await?;
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.activities").await?,
        0
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.visitors").await?,
        0,
        "nothing stored, not even the visitor"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_person_is_not_found_and_no_lead_is_made() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    capture(&mut client, person("known@acme.example", "")).await?;
    for request in [
        visit(by_lead(&Uuid::now_v7().to_string())),
        visit(by_email("stranger@acme.example")),
        visit(RecordActivityRequest {
            phone: "+44 20 7946 0999".into(),
            ..RecordActivityRequest::default()
        }),
    ] {
        let status = client
            .record_activity(request.clone())
            .await
            .expect_err("unknown");
        assert_eq!(status.code(), Code::NotFound, "{request:?}: {status:?}");
    }
    let mut db = suite.env.connect().await?;
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.activities").await?,
        0
    );
    assert_eq!(suite.stored_leads().await?, 1, "an activity makes no lead");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lead_merged_into_another_records_for_the_surviving_lead() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let survivor = capture(&mut client, person("ada@engine.example", "")).await?;
    let browser = Uuid::new_v4();
    let absorbed = capture(
        &mut client,
        LeadInput {
            visitor_id: browser.to_string(),
            ..person("", "+44 20 7946 0018")
        },
    )
    .await?;
    // Email of one, phone of the other: held, then merged by a reviewer.
    let held = client
        .capture_lead(capture_of(person("ada@engine.example", "+442079460018")))
        .await?
        .into_inner();
    client
        .resolve_merge_review(ResolveMergeReviewRequest {
            review_id: held.review_id,
            resolution: MergeResolution::Merge.into(),
            note: "the same person".into(),
        })
        .await?;

    let by_old_id = record(&mut client, visit(by_lead(&absorbed))).await?;
    let by_phone = record(
        &mut client,
        visit(RecordActivityRequest {
            phone: "+44 20 7946 0018".into(),
            ..RecordActivityRequest::default()
        }),
    )
    .await?;
    let by_browser = record(&mut client, visit(by_visitor(browser))).await?;
    for answer in [&by_old_id, &by_phone, &by_browser] {
        assert_eq!(answer.outcome(), ActivityOutcome::Recorded);
        assert_eq!(answer.lead_id, survivor, "{answer:?}");
    }
    let event = wait_for_event::<LeadActivity, _>(&suite, "lead.activity", |event| {
        event.activity_id == by_old_id.activity_id
    })
    .await?
    .1;
    assert_eq!(event.lead_id, survivor);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_persons_browser_no_longer_resolves_to_them() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let mut db = suite.env.connect().await?;
    let browser = Uuid::new_v4();
    let anonymous_before = record(
        &mut client,
        RecordActivityRequest {
            title: "Hello Zephyrine Quillby".into(),
            url: "https://www.acme.example/welcome?name=zephyrine-quillby".into(),
            ..visit(by_visitor(browser))
        },
    )
    .await?;
    assert_eq!(anonymous_before.outcome(), ActivityOutcome::Anonymous);
    let lead_id = capture(
        &mut client,
        LeadInput {
            first_name: "Zephyrine".into(),
            last_name: "Quillby".into(),
            visitor_id: browser.to_string(),
            ..person("zephyrine.quillby@erase.example", "+1 415 555 0179")
        },
    )
    .await?;
    let recorded = record(
        &mut client,
        RecordActivityRequest {
            title: "Pricing for Zephyrine".into(),
            ..visit(by_visitor(browser))
        },
    )
    .await?;
    assert_eq!(recorded.lead_id, lead_id);

    client
        .erase_lead(EraseLeadRequest {
            lead_id: lead_id.clone(),
            reason: "gdpr-request".into(),
        })
        .await?;
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.visitors").await?,
        0,
        "the visitor link is gone"
    );
    let kept: Vec<(String, String, String, Option<Uuid>)> = sqlx::query_as(
        "SELECT kind, url, title, visitor_id FROM capture.activities ORDER BY occurred_at",
    )
    .fetch_all(&mut db)
    .await?;
    assert_eq!(
        kept,
        [
            ("page_visit".to_owned(), String::new(), String::new(), None),
            ("page_visit".to_owned(), String::new(), String::new(), None),
        ],
        "what was done stays, not which page, its title or which browser"
    );
    let rows = capture_rows(&mut db).await?;
    assert_no_canary(
        &rows,
        &[
            "zephyrine",
            "quillby",
            "+14155550179",
            &browser.to_string(),
            &browser.simple().to_string(),
        ],
    );

    // The cookie is a stranger's now; the person by id or email is not recorded.
    let after = record(&mut client, visit(by_visitor(browser))).await?;
    assert_eq!(after.outcome(), ActivityOutcome::Anonymous);
    for request in [
        visit(by_lead(&lead_id)),
        visit(by_email("zephyrine.quillby@erase.example")),
    ] {
        let answer = record(&mut client, request).await?;
        assert_eq!(answer.outcome(), ActivityOutcome::Suppressed);
        assert_eq!(answer.lead_id, "");
    }
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.activities WHERE lead_id IS NOT NULL"
        )
        .await?,
        2,
        "nothing more stored for the erased person"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_imported_row_carrying_a_visitor_id_links_the_visitor() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let browser = Uuid::new_v4();
    let anonymous = record(&mut client, visit(by_visitor(browser))).await?;
    let rows = vec![
        ImportLeadsRequest {
            row: 1,
            capture: Some(capture_of(person("row.one@import.example", ""))),
        },
        ImportLeadsRequest {
            row: 2,
            capture: Some(capture_of(LeadInput {
                visitor_id: browser.to_string(),
                ..person("row.two@import.example", "")
            })),
        },
        ImportLeadsRequest {
            row: 3,
            capture: Some(capture_of(LeadInput {
                visitor_id: "not-a-uuid".into(),
                ..person("row.three@import.example", "")
            })),
        },
        ImportLeadsRequest {
            row: 4,
            capture: Some(capture_of(person("row.four@import.example", ""))),
        },
    ];
    let mut results = client
        .import_leads(futures::stream::iter(rows))
        .await?
        .into_inner();
    let mut outcomes = Vec::new();
    while let Some(result) = results.message().await? {
        outcomes.push((result.row, result.outcome(), result.lead_id));
    }
    let kinds: Vec<(i64, ImportOutcome)> = outcomes
        .iter()
        .map(|(row, outcome, _)| (*row, *outcome))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, ImportOutcome::Accepted),
            (2, ImportOutcome::Accepted),
            (3, ImportOutcome::Rejected),
            (4, ImportOutcome::Accepted),
        ]
    );
    let linked_lead = outcomes[1].2.clone();
    let event = wait_for_event::<LeadActivity, _>(&suite, "lead.activity", |event| {
        event.activity_id == anonymous.activity_id
    })
    .await?
    .1;
    assert_eq!(event.lead_id, linked_lead);
    assert!(event.anonymous);
    let later = record(&mut client, visit(by_visitor(browser))).await?;
    assert_eq!(later.lead_id, linked_lead);
    Ok(())
}

/// Runs `leadctl <args>` against the suite's capture as its admin, checks that it succeeded and
/// returns its standard output.
async fn leadctl(suite: &Suite, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(leadflow_e2e::binary_path("leadctl")?)
        .args(args)
        .env(
            "LEADCTL_CAPTURE_URL",
            suite.services[&leadflow_e2e::Service::Capture].url(),
        )
        .env("LEADCTL_API_KEY", &suite.admin_key)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "leadctl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn leadctl_records_an_activity() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let lead_id = capture(&mut client, person("leadctl.person@acme.example", "")).await?;
    let stdout = leadctl(
        &suite,
        &[
            "activity",
            "webinar-attended",
            "--source",
            WEBSITE_SOURCE,
            "--email",
            "leadctl.person@acme.example",
            "--asset",
            "Spring launch webinar",
        ],
    )
    .await?;
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{stdout}");
    Uuid::parse_str(words[0])?;
    assert_eq!(&words[1..], ["recorded", lead_id.as_str()]);
    let event = wait_for_event::<LeadActivity, _>(&suite, "lead.activity", |event| {
        event.activity_id == words[0]
    })
    .await?
    .1;
    assert_eq!(event.asset, "Spring launch webinar");

    // And lists it.
    let listed = leadctl(&suite, &["activities", lead_id.as_str()]).await?;
    assert!(listed.starts_with(&format!("lead {lead_id}\n")), "{listed}");
    let row = listed
        .lines()
        .find(|line| line.contains(words[0]))
        .unwrap_or_else(|| panic!("activity {} not listed: {listed}", words[0]));
    for shown in ["webinar-attended", "Spring launch webinar", WEBSITE_SOURCE] {
        assert!(row.contains(shown), "{shown} not in {row}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capture_in_review_links_its_visitor_once_decided() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut client = suite.capture().await?;
    let browser = Uuid::new_v4();
    let anonymous = record(&mut client, visit(by_visitor(browser))).await?;
    let lead_a = capture(&mut client, person("grace@navy.example", "")).await?;
    capture(&mut client, person("", "+1 415 555 0142")).await?;
    let held = client
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                visitor_id: browser.to_string(),
                ..person("grace@navy.example", "+14155550142")
            }),
            ..CaptureLeadRequest::default()
        })
        .await?
        .into_inner();
    assert!(!held.review_id.is_empty(), "held for review");
    let still = record(&mut client, visit(by_visitor(browser))).await?;
    assert_eq!(
        still.outcome(),
        ActivityOutcome::Anonymous,
        "a held capture links nothing"
    );
    client
        .resolve_merge_review(ResolveMergeReviewRequest {
            review_id: held.review_id,
            resolution: MergeResolution::Merge.into(),
            note: String::new(),
        })
        .await?;
    let linked = wait_for_event::<LeadActivity, _>(&suite, "lead.activity", |event| {
        event.activity_id == anonymous.activity_id
    })
    .await?
    .1;
    assert_eq!(linked.lead_id, lead_a);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_activity_past_its_retention_is_swept_and_linked_activity_is_kept()
-> anyhow::Result<()> {
    let suite = Suite::start_capture_with(&[
        ("IDEMPOTENCY_SWEEP_SECONDS", "1"),
        ("ANONYMOUS_ACTIVITY_DAYS", "30"),
    ])
    .await?;
    let mut client = suite.capture().await?;
    let (stale, fresh, linked) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for visitor in [stale, fresh, linked] {
        record(&mut client, visit(by_visitor(visitor))).await?;
    }
    capture(
        &mut client,
        LeadInput {
            visitor_id: linked.to_string(),
            ..person("kept@acme.example", "")
        },
    )
    .await?;
    // Forty days pass for two of the browsers.
    let mut db = suite.env.connect().await?;
    sqlx::query(
        "UPDATE capture.activities SET recorded_at = now() - interval '40 days' WHERE visitor_id = ANY($1)",
    )
    .bind([stale, linked])
    .execute(&mut db)
    .await?;
    sqlx::query(
        "UPDATE capture.visitors SET last_seen_at = now() - interval '40 days' WHERE visitor_id = ANY($1)",
    )
    .bind([stale, linked])
    .execute(&mut db)
    .await?;

    let env = &suite.env;
    let left = leadflow_e2e::eventually("the stale visitor swept", WAIT_SWEEP, || async move {
        let mut db = env.connect().await?;
        let visitors: Vec<(Uuid,)> =
            sqlx::query_as("SELECT visitor_id FROM capture.visitors ORDER BY visitor_id")
                .fetch_all(&mut db)
                .await?;
        Ok(Some(visitors).filter(|visitors| visitors.len() == 2))
    })
    .await?;
    let mut expected = vec![(fresh,), (linked,)];
    expected.sort();
    assert_eq!(left, expected, "the linked visitor stays, however old");
    let activities: Vec<(Uuid,)> =
        sqlx::query_as("SELECT visitor_id FROM capture.activities ORDER BY visitor_id")
            .fetch_all(&mut db)
            .await?;
    assert_eq!(
        activities, expected,
        "the stale anonymous activity went; the fresh one and the lead's stay"
    );
    Ok(())
}

/// How long the sweeper (every second here) may take to get to it.
const WAIT_SWEEP: std::time::Duration = std::time::Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn activities_racing_the_capture_that_links_their_visitor_all_become_the_leads()
-> anyhow::Result<()> {
    // Eight tabs of one browser, each recording activities one after the other while the
    // person submits a form in it.
    const TABS: usize = 8;
    const PER_TAB: usize = 12;
    const ACTIVITIES: usize = TABS * PER_TAB;
    let suite = Suite::start_capture().await?;
    let client = suite.capture().await?;
    let browser = Uuid::new_v4();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TABS + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TABS {
        let mut client = client.clone();
        let barrier = barrier.clone();
        tasks.spawn(async move {
            barrier.wait().await;
            let mut ids = Vec::with_capacity(PER_TAB);
            for _ in 0..PER_TAB {
                let answer = client.record_activity(visit(by_visitor(browser))).await?;
                ids.push(answer.into_inner().activity_id);
            }
            anyhow::Ok(ids)
        });
    }
    let mut capturer = client.clone();
    let capture_barrier = barrier.clone();
    let captured = tokio::spawn(async move {
        capture_barrier.wait().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        capture(
            &mut capturer,
            LeadInput {
                visitor_id: browser.to_string(),
                ..person("racing.browser@acme.example", "")
            },
        )
        .await
    });
    let mut recorded = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        recorded.extend(joined??);
    }
    let lead_id = captured.await??;

    let mut db = suite.env.connect().await?;
    let owners: Vec<(Option<Uuid>,)> = sqlx::query_as("SELECT lead_id FROM capture.activities")
        .fetch_all(&mut db)
        .await?;
    assert_eq!(owners.len(), ACTIVITIES);
    let lead = Uuid::parse_str(&lead_id)?;
    let stray = owners
        .iter()
        .filter(|(owner,)| *owner != Some(lead))
        .count();
    assert_eq!(
        stray, 0,
        "activities left anonymous (or another's) once their visitor is linked"
    );
    let events = leadflow_e2e::eventually("one event per activity", WAIT_SWEEP, || async {
        let events = activity_events(&suite).await?;
        Ok(Some(events).filter(|events| events.len() >= ACTIVITIES))
    })
    .await?;
    let mut emitted: Vec<String> = events.into_iter().map(|event| event.activity_id).collect();
    emitted.sort();
    recorded.sort();
    assert_eq!(emitted, recorded, "each activity emitted once");
    let (before_link,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM capture.activities WHERE anonymous")
            .fetch_one(&mut db)
            .await?;
    eprintln!("{before_link} of {ACTIVITIES} activities came before the link");
    Ok(())
}
