//! Sources: their acceptance rules at the door, their administration, and returns.

use std::time::Duration;

use leadflow_e2e::{Running, Service, Suite, TestEnv, WEBSITE_SOURCE, authed};
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use leadflow_proto::capture::v1::{
    AcceptanceRules, CaptureLeadRequest, ConsentChannel, CreateSourceRequest, DedupeMode,
    DedupePolicy, LeadInput, ListSourcesRequest, ReturnLeadRequest, ReturnReason, SourceKind,
    SourceSettings, UpdateSourceRequest,
};
use leadflow_proto::events::v1::{LeadRejected, LeadReturned};
use tonic::Code;

use crate::support::{capture_of, count, person, violated_fields, violations, wait_for_event};

fn settings(name: &str) -> SourceSettings {
    SourceSettings {
        name: name.into(),
        kind: SourceKind::Vendor.into(),
        currency: "USD".into(),
        ..SourceSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lead_is_returned_within_the_window_once() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    suite
        .create_source(
            "no-returns",
            SourceSettings {
                cost_per_lead_micros: 1_000_000,
                return_window_days: 0,
                ..settings("Final sale")
            },
        )
        .await?;
    let mut capture = suite.capture().await?;
    let lead_id = capture
        .capture_lead(capture_of(person(
            "ada.returned@example.org",
            "(415) 555-0160",
        )))
        .await?
        .into_inner()
        .lead
        .expect("lead")
        .lead_id;

    let unspecified = capture
        .return_lead(ReturnLeadRequest {
            lead_id: lead_id.clone(),
            reason: ReturnReason::Unspecified.into(),
            note: String::new(),
        })
        .await
        .expect_err("a return needs a reason");
    assert_eq!(unspecified.code(), Code::InvalidArgument, "{unspecified:?}");
    assert_eq!(violated_fields(&unspecified), ["reason"]);

    let returned = capture
        .return_lead(ReturnLeadRequest {
            lead_id: lead_id.clone(),
            reason: ReturnReason::BadData.into(),
            note: "the phone rings a fax machine".into(),
        })
        .await?
        .into_inner();
    assert_eq!(returned.lead_id, lead_id);
    assert_eq!(returned.credit_micros, 2_500_000);
    assert_eq!(returned.currency, "USD");
    assert!(returned.returned_at.is_some());

    let (_, event) = wait_for_event::<LeadReturned, _>(&suite, "lead.returned", |event| {
        event.lead_id == lead_id
    })
    .await?;
    assert_eq!(
        (
            event.source.as_str(),
            event.reason.as_str(),
            event.credit_micros,
            event.currency.as_str()
        ),
        (WEBSITE_SOURCE, "bad_data", 2_500_000, "USD")
    );

    let twice = capture
        .return_lead(ReturnLeadRequest {
            lead_id: lead_id.clone(),
            reason: ReturnReason::Duplicate.into(),
            note: String::new(),
        })
        .await
        .expect_err("a lead is returned once");
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");

    let final_sale = capture
        .capture_lead(capture_of(LeadInput {
            source: "no-returns".into(),
            ..person("final.sale@example.org", "")
        }))
        .await?
        .into_inner()
        .lead
        .expect("lead")
        .lead_id;
    let refused = capture
        .return_lead(ReturnLeadRequest {
            lead_id: final_sale,
            reason: ReturnReason::Fraud.into(),
            note: String::new(),
        })
        .await
        .expect_err("a source with no return window takes nothing back");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");

    let mut db = suite.env.connect().await?;
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.outbox WHERE event_type = 'lead.returned'"
        )
        .await?,
        1,
        "one lead.returned"
    );
    Ok(())
}

/// A London landline: a fixed line, not mobile (US numbers are ambiguous, read as mobile).
const LANDLINE: &str = "+44 20 7946 0018";

#[tokio::test(flavor = "multi_thread")]
async fn source_rules_reject_with_one_reason_per_failure() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    suite
        .create_source(
            "uk-sms",
            SourceSettings {
                required_fields: vec!["first_name".into()],
                rules: Some(AcceptanceRules {
                    countries: vec!["GB".into()],
                    reject_disposable_email: true,
                    require_mobile_phone: true,
                    required_consent: vec![ConsentChannel::Sms.into()],
                    ..AcceptanceRules::default()
                }),
                ..settings("UK SMS vendor")
            },
        )
        .await?;
    let mut capture = suite.capture().await?;
    let email = "reject.canary5521@mailinator.com";
    let rejected = capture
        .capture_lead(capture_of(LeadInput {
            country: "US".into(),
            source: "uk-sms".into(),
            campaign: "winter".into(),
            ..person(email, LANDLINE)
        }))
        .await
        .expect_err("a lead failing every rule is rejected");
    assert_eq!(rejected.code(), Code::InvalidArgument, "{rejected:?}");
    let expected = [
        ("lead.first_name", "REQUIRED"),
        ("lead.country", "COUNTRY_NOT_ACCEPTED"),
        ("lead.email", "DISPOSABLE_EMAIL"),
        ("lead.phone", "PHONE_NOT_MOBILE"),
        ("consent.channels", "CONSENT_REQUIRED"),
    ];
    let got = violations(&rejected);
    let got: Vec<(&str, &str)> = got
        .iter()
        .map(|(field, reason)| (field.as_str(), reason.as_str()))
        .collect();
    assert_eq!(got, expected, "one reason per failed rule");

    let mut db = suite.env.connect().await?;
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.leads").await?,
        0,
        "nothing stored"
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.touches").await?,
        0
    );
    let (published, event) = wait_for_event::<LeadRejected, _>(&suite, "lead.rejected", |event| {
        event.source == "uk-sms"
    })
    .await?;
    let codes: Vec<(&str, &str)> = event
        .reasons
        .iter()
        .map(|reason| (reason.field.as_str(), reason.code.as_str()))
        .collect();
    let lowered: Vec<(&str, String)> = expected
        .iter()
        .map(|(field, reason)| (*field, reason.to_lowercase()))
        .collect();
    let lowered: Vec<(&str, &str)> = lowered
        .iter()
        .map(|(field, reason)| (*field, reason.as_str()))
        .collect();
    assert_eq!(codes, lowered);
    assert_eq!(
        (event.channel.as_str(), event.campaign.as_str()),
        ("web", "winter")
    );
    // Its envelope's lead_id: see `a_rejection_event_names_no_lead`.
    let raw = String::from_utf8_lossy(&published.entry.raw()).to_lowercase();
    for canary in [email, "reject.canary5521", "442079460018", "7946 0018"] {
        assert!(
            !raw.contains(canary),
            "{canary} is in the lead.rejected entry"
        );
    }

    // An unknown source is named as such.
    let unknown = capture
        .capture_lead(capture_of(LeadInput {
            source: "nowhere".into(),
            ..person("someone@example.org", "")
        }))
        .await
        .expect_err("an unknown source is rejected");
    assert_eq!(unknown.code(), Code::InvalidArgument, "{unknown:?}");
    assert_eq!(
        violations(&unknown),
        [("lead.source".to_owned(), "UNKNOWN_SOURCE".to_owned())]
    );

    // Administration: bad settings named field by field, duplicates, missing ids, listing.
    let bad = capture
        .create_source(CreateSourceRequest {
            source_id: "Bad Source!".into(),
            settings: Some(SourceSettings {
                name: String::new(),
                kind: SourceKind::Unspecified.into(),
                field_mapping: [("E-Mail".to_owned(), "mail".to_owned())].into(),
                default_phone_region: "XX".into(),
                required_fields: vec!["shoe_size".into()],
                dedupe: Some(DedupePolicy {
                    mode: DedupeMode::Reject.into(),
                    window_seconds: 0,
                }),
                rate_limit_per_minute: -1,
                currency: "dollars".into(),
                return_window_days: 5000,
                ..SourceSettings::default()
            }),
        })
        .await
        .expect_err("bad settings are rejected");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert_eq!(
        violated_fields(&bad),
        [
            "source_id",
            "settings.name",
            "settings.kind",
            "settings.field_mapping",
            "settings.default_phone_region",
            "settings.required_fields",
            "settings.dedupe.window_seconds",
            "settings.rate_limit_per_minute",
            "settings.currency",
            "settings.return_window_days",
        ]
    );
    let missing_settings = capture
        .create_source(CreateSourceRequest {
            source_id: "no-settings".into(),
            settings: None,
        })
        .await
        .expect_err("settings are required");
    assert_eq!(violated_fields(&missing_settings), ["settings"]);

    let duplicate = capture
        .create_source(CreateSourceRequest {
            source_id: WEBSITE_SOURCE.into(),
            settings: Some(settings("Another website")),
        })
        .await
        .expect_err("a source id is registered once");
    assert_eq!(duplicate.code(), Code::AlreadyExists, "{duplicate:?}");

    let missing = capture
        .update_source(UpdateSourceRequest {
            source_id: "nowhere".into(),
            settings: Some(settings("Nowhere")),
        })
        .await
        .expect_err("no such source");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");

    let updated = capture
        .update_source(UpdateSourceRequest {
            source_id: "uk-sms".into(),
            settings: Some(settings("UK SMS vendor, relaxed")),
        })
        .await?
        .into_inner()
        .source
        .expect("source");
    assert_eq!(
        updated
            .settings
            .as_ref()
            .map(|settings| settings.name.as_str()),
        Some("UK SMS vendor, relaxed")
    );

    let listed = capture
        .list_sources(ListSourcesRequest {})
        .await?
        .into_inner()
        .sources;
    let ids: Vec<&str> = listed
        .iter()
        .map(|source| source.source_id.as_str())
        .collect();
    assert_eq!(ids, ["uk-sms", WEBSITE_SOURCE]);
    let website = &listed[1];
    let website_settings = website.settings.clone().expect("settings");
    assert_eq!(
        (
            website_settings.cost_per_lead_micros,
            website_settings.return_window_days,
            website_settings.currency.as_str()
        ),
        (2_500_000, 30, "USD")
    );
    assert_eq!(
        listed[0].settings.as_ref().and_then(|s| s.rules.clone()),
        None,
        "the update replaced the rules"
    );

    // With the rules replaced, the same person is accepted.
    let accepted = capture
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                country: "US".into(),
                source: "uk-sms".into(),
                ..person(email, LANDLINE)
            }),
            ..CaptureLeadRequest::default()
        })
        .await;
    assert!(accepted.is_ok(), "{accepted:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejection_event_names_no_lead() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let status = suite
        .capture()
        .await?
        .capture_lead(capture_of(person("not-an-email", "")))
        .await
        .expect_err("a bad email is rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (published, _) =
        wait_for_event::<LeadRejected, _>(&suite, "lead.rejected", |_| true).await?;
    // proto/leadflow/events/v1/capture.proto: "no lead id (none was created);
    // `Envelope.lead_id` is empty".
    assert_eq!(
        published.envelope.lead_id, "",
        "a rejection names no lead, not the nil UUID"
    );
    Ok(())
}

/// A source changed through one replica applies on another once its cached copy expires
/// (`SOURCE_CACHE_TTL`, 5 s), and at once on the replica that changed it.
#[tokio::test(flavor = "multi_thread")]
async fn a_source_changed_on_one_replica_applies_on_another_within_the_cache_time()
-> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut one = suite.capture().await?;
    one.create_source(CreateSourceRequest {
        source_id: "partner".into(),
        settings: Some(settings("Partner")),
    })
    .await?;
    let other = leadflow_e2e::Running::start(
        leadflow_e2e::Service::Capture,
        &suite.env.service_env(leadflow_e2e::Service::Capture),
    )
    .await?;
    let mut two = leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient::new(
        leadflow_e2e::authed(other.channel().await?, &suite.admin_key)?,
    );
    let lead = |n: u32| {
        capture_of(LeadInput {
            source: "partner".into(),
            ..person(&format!("replica{n}@example.com"), "")
        })
    };
    // Both replicas have read (and cached) the source: no first name needed.
    one.capture_lead(lead(1)).await?;
    two.capture_lead(lead(2)).await?;

    one.update_source(UpdateSourceRequest {
        source_id: "partner".into(),
        settings: Some(SourceSettings {
            required_fields: vec!["first_name".into()],
            ..settings("Partner, strict")
        }),
    })
    .await?;
    let here = one
        .capture_lead(lead(3))
        .await
        .expect_err("the replica that changed the source applies it at once");
    assert_eq!(violated_fields(&here), ["lead.first_name"], "{here:?}");

    let changed_at = std::time::Instant::now();
    let mut n = 4;
    let there = loop {
        match two.capture_lead(lead(n)).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    changed_at.elapsed() < std::time::Duration::from_secs(15),
                    "the other replica still uses the old source after 15 s"
                );
                n += 1;
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    };
    assert_eq!(violated_fields(&there), ["lead.first_name"], "{there:?}");
    println!(
        "the other replica applied the change after {:?} ({} captures under the old rules)",
        changed_at.elapsed(),
        n - 4
    );
    drop(other);
    Ok(())
}

/// Rejections answered just before a shutdown all have their `lead.rejected` event: the
/// queue they wait in is written out before capture exits.
#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_answered_before_a_shutdown_is_recorded() -> anyhow::Result<()> {
    let mut suite = Suite::start_capture().await?;
    let capture = suite.capture().await?;
    let rejected = futures::future::join_all((0..300).map(|n| {
        let mut capture = capture.clone();
        async move {
            capture
                .capture_lead(capture_of(person(&format!("not-an-email-{n}"), "")))
                .await
        }
    }))
    .await;
    assert!(
        rejected.iter().all(|answer| answer
            .as_ref()
            .is_err_and(|status| status.code() == Code::InvalidArgument)),
        "every capture is rejected"
    );
    let running = suite
        .services
        .remove(&leadflow_e2e::Service::Capture)
        .expect("capture runs");
    let status = running
        .terminate(std::time::Duration::from_secs(30))
        .await?;
    assert!(status.success(), "capture exits cleanly: {status:?}");
    let mut db = suite.env.connect().await?;
    let recorded = count(
        &mut db,
        "SELECT count(*) FROM capture.outbox WHERE event_type = 'lead.rejected'",
    )
    .await?;
    assert_eq!(recorded, 300, "one lead.rejected per rejection, none lost");
    Ok(())
}

/// The country codes capture's `phone patterns warmed` line reports, and whether that line
/// came before health first reported `SERVING`.
fn warmed_before_serving(logs: &[String]) -> Option<(u64, bool)> {
    let lines: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let warmed = lines
        .iter()
        .position(|line| line["message"] == "phone patterns warmed")?;
    let serving = lines
        .iter()
        .position(|line| line["message"] == "dependencies reachable; serving");
    let codes = lines[warmed]["country_codes"].as_u64()?;
    Some((codes, serving.is_some_and(|serving| warmed < serving)))
}

#[tokio::test(flavor = "multi_thread")]
async fn phone_patterns_of_the_default_region_and_every_sources_are_ready_before_serving()
-> anyhow::Result<()> {
    let env = TestEnv::create().await?;
    let admin_key = env.create_api_key("e2e-admin", &["admin"]).await?;
    let mut vars = env.service_env(Service::Capture);
    vars.extend(
        [
            ("CAPTURE_WARM_PHONE_PATTERNS", "true"),
            ("CAPTURE_DEFAULT_PHONE_REGION", "BR"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    let capture = Running::start(Service::Capture, &vars).await?;
    assert_eq!(
        warmed_before_serving(&capture.logs()),
        Some((1, true)),
        "+55 alone, before serving: {:#?}",
        capture.logs()
    );
    let mut admin = CaptureServiceClient::new(authed(capture.channel().await?, &admin_key)?);
    for (source_id, region) in [("berlin-partner", "DE"), ("sao-paulo-partner", "BR")] {
        admin
            .create_source(CreateSourceRequest {
                source_id: source_id.into(),
                settings: Some(SourceSettings {
                    default_phone_region: region.into(),
                    ..settings(source_id)
                }),
            })
            .await?;
    }
    capture.terminate(Duration::from_secs(15)).await?;

    let capture = Running::start(Service::Capture, &vars).await?;
    assert_eq!(
        warmed_before_serving(&capture.logs()),
        Some((2, true)),
        "+55 and +49 (BR named twice), before serving: {:#?}",
        capture.logs()
    );
    // Numbers read after a warm start read as before: national in the source's region.
    let mut admin = CaptureServiceClient::new(authed(capture.channel().await?, &admin_key)?);
    let captured = admin
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                source: "berlin-partner".into(),
                phone: "0151 23456789".into(),
                ..person("warm.start@sources.example", "")
            }),
            ..CaptureLeadRequest::default()
        })
        .await?
        .into_inner();
    let lead = captured.lead.expect("a lead");
    assert_eq!(lead.phone, "+4915123456789");
    Ok(())
}
