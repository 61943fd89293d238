//! The whole path of issue #3, over gRPC only: capture → qualification (LEAD, scored) →
//! messaging (welcome email at the sink) → reply → PROSPECT → analytics funnel.

use std::time::Duration;

use leadflow_e2e::{Service, Suite, eventually};
use leadflow_proto::analytics::v1::GetFunnelRequest;
use leadflow_proto::capture::v1::{
    CaptureLeadRequest, GetLeadRequest as CaptureGetLead, LeadInput,
};
use leadflow_proto::events::v1::{InboundKind, LeadStage, MessageChannel};
use leadflow_proto::messaging::v1::RecordInboundRequest;
use leadflow_proto::qualification::v1::GetLeadRequest;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;

const WAIT: Duration = Duration::from_secs(20);

fn canary_lead() -> LeadInput {
    LeadInput {
        email: "  Canary.Person@Canary-Corp.example ".into(),
        phone: "(415) 555-0199".into(),
        first_name: "Canaryfirst".into(),
        last_name: "Canarylast".into(),
        company: "Canary Corp".into(),
        source: "website".into(),
        channel: "Referral".into(),
        campaign: "spring-launch".into(),
        ..LeadInput::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_captured_lead_flows_through_every_service() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    for running in suite.services.values() {
        let status = eventually("health serving", WAIT, || async {
            Ok(Some(running.health().await?).filter(|status| *status == ServingStatus::Serving))
        })
        .await?;
        assert_eq!(status, ServingStatus::Serving, "{:?}", running.service);
    }

    // 1. capture normalizes and stores.
    let captured = suite
        .capture()
        .await?
        .capture_lead(CaptureLeadRequest {
            lead: Some(canary_lead()),
            ..CaptureLeadRequest::default()
        })
        .await?
        .into_inner()
        .lead
        .expect("captured lead");
    assert_eq!(captured.email, "canary.person@canary-corp.example");
    assert_eq!(captured.phone, "+14155550199");
    assert_eq!(captured.channel, "referral");
    assert_eq!(
        captured.email_kind(),
        leadflow_proto::capture::v1::EmailKind::Business
    );
    let lead_id = captured.lead_id.clone();
    let stored = suite
        .capture()
        .await?
        .get_lead(CaptureGetLead {
            lead_id: lead_id.clone(),
        })
        .await?
        .into_inner()
        .lead
        .expect("stored lead");
    assert_eq!(stored, captured);

    // 2. qualification has it at LEAD with an explained fit score.
    let qualification = suite.qualification().await?;
    let qualified = eventually("lead at qualification", WAIT, || {
        let mut client = qualification.clone();
        let lead_id = lead_id.clone();
        async move {
            match client.get_lead(GetLeadRequest { lead_id }).await {
                Ok(response) => Ok(response.into_inner().lead),
                Err(status) if status.code() == Code::NotFound => Ok(None),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await?;
    assert_eq!(qualified.stage(), LeadStage::Lead);
    let fired: Vec<(&str, i32)> = qualified
        .hits
        .iter()
        .map(|hit| (hit.rule_id.as_str(), hit.points))
        .collect();
    assert_eq!(
        fired,
        [
            ("fit.business_email", 20),
            ("fit.has_phone", 10),
            ("fit.has_company", 10),
            ("fit.warm_channel", 15)
        ]
    );
    assert_eq!(qualified.fit_score, 55);
    assert_eq!(qualified.total_score, 55);
    assert_eq!(qualified.channel, "referral");

    // 3. messaging sent one welcome email through the sink.
    let mut messaging = suite.messaging().await?;
    let messages = leadflow_e2e::sent_messages(&messaging, &lead_id, WAIT).await?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].template, "welcome");
    assert_eq!(messages[0].provider, "sink");
    assert_eq!(messages[0].subject, "Welcome, Canaryfirst");
    let sink_file = suite
        .env
        .sink_dir
        .join(format!("{}.eml", messages[0].message_id));
    let mail = std::fs::read_to_string(&sink_file)?;
    assert!(
        mail.contains("To: canary.person@canary-corp.example"),
        "{mail}"
    );
    assert!(mail.contains("Hello Canaryfirst,"), "{mail}");

    // 4. a reply makes the lead a prospect, with the history kept.
    let inbound = messaging
        .record_inbound(RecordInboundRequest {
            lead_id: lead_id.clone(),
            channel: MessageChannel::Email.into(),
            kind: InboundKind::Reply.into(),
            text: "Yes, call me Canaryfirst".into(),
            idempotency_key: "reply-1".into(),
        })
        .await?
        .into_inner();
    let retried = messaging
        .record_inbound(RecordInboundRequest {
            lead_id: lead_id.clone(),
            channel: MessageChannel::Email.into(),
            kind: InboundKind::Reply.into(),
            text: "Yes, call me Canaryfirst".into(),
            idempotency_key: "reply-1".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        retried.inbound_id, inbound.inbound_id,
        "a retry returns the first answer"
    );
    let prospect = eventually("lead became a prospect", WAIT, || {
        let mut client = qualification.clone();
        let lead_id = lead_id.clone();
        async move {
            let lead = client
                .get_lead(GetLeadRequest { lead_id })
                .await?
                .into_inner()
                .lead;
            Ok(lead.filter(|lead| lead.stage() == LeadStage::Prospect))
        }
    })
    .await?;
    let moves: Vec<(LeadStage, LeadStage, &str)> = prospect
        .history
        .iter()
        .map(|transition| {
            (
                transition.from_stage(),
                transition.to_stage(),
                transition.actor.as_str(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        [
            (LeadStage::Unspecified, LeadStage::Lead, "rule:captured"),
            (LeadStage::Lead, LeadStage::Prospect, "rule:two_way_contact"),
        ]
    );

    // 5. the analytics funnel shows it per stage and channel.
    let mut analytics = suite.analytics().await?;
    let funnel = eventually("funnel shows the prospect", WAIT, || {
        let mut client = analytics.clone();
        async move {
            let funnel = client
                .get_funnel(GetFunnelRequest::default())
                .await?
                .into_inner();
            let prospects = funnel
                .stages
                .iter()
                .find(|count| count.stage() == LeadStage::Prospect)
                .map(|count| count.leads);
            Ok(Some(funnel).filter(|_| prospects == Some(1)))
        }
    })
    .await?;
    assert_eq!(funnel.total_leads, 1);
    let stages: Vec<(LeadStage, i64)> = funnel
        .stages
        .iter()
        .map(|count| (count.stage(), count.leads))
        .collect();
    assert_eq!(stages[0], (LeadStage::Lead, 0));
    assert_eq!(stages[1], (LeadStage::Prospect, 1));
    assert_eq!(stages.len(), 7);
    let cells: Vec<(&str, LeadStage, i64)> = funnel
        .channels
        .iter()
        .map(|cell| (cell.channel.as_str(), cell.stage(), cell.leads))
        .collect();
    assert_eq!(cells, [("referral", LeadStage::Prospect, 1)]);
    let web_only = analytics
        .get_funnel(GetFunnelRequest {
            channel: "web".into(),
        })
        .await?
        .into_inner();
    assert_eq!(web_only.total_leads, 0);

    // One trace from the capture through every hop: each envelope carries the same trace id.
    let mut redis = suite.env.redis().await?;
    let mut trace_ids = Vec::new();
    for stream in [
        "leadflow.capture.v1",
        "leadflow.qualification.v1",
        "leadflow.messaging.v1",
    ] {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(suite.env.stream(stream))
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await?;
        for entry in entries.ids {
            let Some(redis::Value::BulkString(bytes)) = entry.map.get("envelope") else {
                panic!("entry without envelope in {stream}");
            };
            let envelope =
                <leadflow_proto::events::v1::Envelope as prost::Message>::decode(bytes.as_slice())?;
            assert_eq!(envelope.lead_id, lead_id);
            let trace_id = envelope
                .traceparent
                .split('-')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            trace_ids.push((envelope.event_type, trace_id));
        }
    }
    let types: Vec<&str> = trace_ids
        .iter()
        .map(|(event_type, _)| event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "lead.captured",
            "lead.scored",
            "lead.stage_changed",
            "lead.stage_changed",
            "message.sent",
            "message.inbound"
        ]
    );
    let capture_trace = &trace_ids[0].1;
    let reply_trace = &trace_ids[5].1;
    assert_eq!(capture_trace.len(), 32, "a W3C trace id");
    assert_ne!(capture_trace, reply_trace, "the reply is a call of its own");
    let traces: Vec<&str> = trace_ids
        .iter()
        .map(|(_, trace_id)| trace_id.as_str())
        .collect();
    assert_eq!(
        traces,
        [
            capture_trace,
            capture_trace,
            capture_trace,
            reply_trace,
            capture_trace,
            reply_trace
        ],
        "events continue the trace of the call that caused them: {trace_ids:?}"
    );

    // No personal data in any log line of any service.
    let logs = suite.all_logs();
    assert!(logs.len() > 10, "services logged: {}", logs.len());
    for canary in [
        "canary.person",
        "Canary.Person",
        "Canaryfirst",
        "Canarylast",
        "555-0199",
        "4155550199",
    ] {
        let leaked: Vec<&String> = logs.iter().filter(|line| line.contains(canary)).collect();
        assert!(leaked.is_empty(), "{canary} leaked into logs: {leaked:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lead_with_a_bad_email_and_phone_is_rejected_naming_both_and_nothing_is_stored()
-> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let status = suite
        .capture()
        .await?
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                email: "not-an-email".into(),
                phone: "12".into(),
                ..canary_lead()
            }),
            ..CaptureLeadRequest::default()
        })
        .await
        .expect_err("bad lead must be rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .expect("BadRequest details")
        .field_violations
        .into_iter()
        .map(|violation| violation.field)
        .collect();
    assert_eq!(fields, ["lead.email", "lead.phone"]);

    let missing = suite
        .capture()
        .await?
        .capture_lead(CaptureLeadRequest {
            lead: None,
            ..CaptureLeadRequest::default()
        })
        .await
        .expect_err("missing lead must be rejected");
    assert_eq!(missing.code(), Code::InvalidArgument);

    let mut db = suite.env.connect().await?;
    let (leads,): (i64,) = sqlx::query_as("SELECT count(*) FROM capture.leads")
        .fetch_one(&mut db)
        .await?;
    assert_eq!(leads, 0, "nothing half-stored");
    // A rejection's event is written just after its answer (capture's `rejections`).
    let events: Vec<(String, Vec<u8>)> = eventually("rejections recorded", WAIT, || {
        let env = &suite.env;
        async move {
            let mut db = env.connect().await?;
            let events: Vec<(String, Vec<u8>)> =
                sqlx::query_as("SELECT event_type, envelope FROM capture.outbox ORDER BY id")
                    .fetch_all(&mut db)
                    .await?;
            Ok(Some(events).filter(|events| events.len() >= 2))
        }
    })
    .await?;
    let types: Vec<&str> = events
        .iter()
        .map(|(event_type, _)| event_type.as_str())
        .collect();
    assert_eq!(
        types,
        ["lead.rejected", "lead.rejected"],
        "only the rejections are recorded"
    );
    let envelope =
        <leadflow_proto::events::v1::Envelope as prost::Message>::decode(events[0].1.as_slice())?;
    let rejected = <leadflow_proto::events::v1::LeadRejected as prost::Message>::decode(
        envelope.payload.as_slice(),
    )?;
    let reasons: Vec<(&str, &str)> = rejected
        .reasons
        .iter()
        .map(|reason| (reason.field.as_str(), reason.code.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("lead.email", "invalid_email"),
            ("lead.phone", "invalid_phone")
        ]
    );
    assert_eq!(rejected.source, "website");
    let redis = suite.env.redis().await?;
    let on_stream: redis::streams::StreamRangeReply =
        eventually("rejections published", WAIT, || {
            let mut redis = redis.clone();
            let stream = suite.env.stream("leadflow.capture.v1");
            async move {
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut redis)
                    .await?;
                Ok(Some(reply).filter(|reply| reply.ids.len() == 2))
            }
        })
        .await?;
    for entry in &on_stream.ids {
        assert_eq!(
            entry.get::<String>("type").as_deref(),
            Some("lead.rejected"),
            "no lead.captured for a rejected lead"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_event_changes_analytics_counts_once() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut capture = suite.capture().await?;
    let analytics = suite.analytics().await?;
    capture
        .capture_lead(CaptureLeadRequest {
            lead: Some(canary_lead()),
            ..CaptureLeadRequest::default()
        })
        .await?;
    let stream = suite.env.stream("leadflow.capture.v1");
    let mut redis = suite.env.redis().await?;
    eventually("first lead counted", WAIT, || {
        let mut client = analytics.clone();
        async move {
            let funnel = client
                .get_funnel(GetFunnelRequest::default())
                .await?
                .into_inner();
            Ok(Some(()).filter(|()| funnel.total_leads == 1))
        }
    })
    .await?;

    // Deliver the very same entry again, as Redis does after a consumer crash.
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await?;
    assert_eq!(entries.ids.len(), 1);
    let envelope = match entries.ids[0].map.get("envelope") {
        Some(redis::Value::BulkString(bytes)) => bytes.clone(),
        other => panic!("entry without envelope: {other:?}"),
    };
    let _id: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("type")
        .arg("lead.captured")
        .arg("envelope")
        .arg(envelope)
        .query_async(&mut redis)
        .await?;
    // A second, different lead after it: once it is counted, the duplicate was processed.
    capture
        .capture_lead(CaptureLeadRequest {
            lead: Some(LeadInput {
                email: "second@example.org".into(),
                phone: String::new(),
                channel: "web".into(),
                ..canary_lead()
            }),
            ..CaptureLeadRequest::default()
        })
        .await?;
    let funnel = eventually("second lead counted", WAIT, || {
        let mut client = analytics.clone();
        async move {
            let funnel = client
                .get_funnel(GetFunnelRequest::default())
                .await?
                .into_inner();
            Ok(Some(funnel)
                .filter(|funnel| funnel.channels.iter().any(|cell| cell.channel == "web")))
        }
    })
    .await?;
    assert_eq!(
        funnel.total_leads, 2,
        "the redelivered capture must not count twice"
    );
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("analytics")
        .query_async(&mut redis)
        .await?;
    assert_eq!(
        pending.count(),
        0,
        "the duplicate is acknowledged, not left pending"
    );
    let mut db = suite.env.connect().await?;
    let (captured_events,): (i64,) = sqlx::query_as(
        "SELECT events FROM analytics.event_counts WHERE event_type = 'lead.captured'",
    )
    .fetch_one(&mut db)
    .await?;
    assert_eq!(captured_events, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_and_exits_cleanly_with_the_outbox_flushed() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut capture = suite.capture().await?;
    for index in 0..20 {
        capture
            .capture_lead(CaptureLeadRequest {
                lead: Some(LeadInput {
                    email: format!("person{index}@example.org"),
                    phone: String::new(),
                    ..canary_lead()
                }),
                ..CaptureLeadRequest::default()
            })
            .await?;
    }
    let Suite {
        env, mut services, ..
    } = suite;
    let running = services.remove(&Service::Capture).expect("capture running");
    let status = running.terminate(Duration::from_secs(15)).await?;
    assert!(status.success(), "capture exited with {status}");
    let mut db = env.connect().await?;
    let (unpublished,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM capture.outbox WHERE published_at IS NULL")
            .fetch_one(&mut db)
            .await?;
    assert_eq!(unpublished, 0);
    let mut redis = env.redis().await?;
    let entries: i64 = redis::cmd("XLEN")
        .arg(env.stream("leadflow.capture.v1"))
        .query_async(&mut redis)
        .await?;
    assert_eq!(entries, 20);
    Ok(())
}
