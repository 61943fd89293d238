//! Personal data: sealed at rest, masked without `pii:read` (I8), erased for good (R13), and
//! consent evidence that cannot be changed.

use leadflow_e2e::{BLIND_INDEX_KEY, PII_KEY, Suite};
use leadflow_platform::pii::Keyring;
use leadflow_proto::capture::v1::{
    Attribution, CaptureLeadRequest, CaptureOutcome, ConsentChannel, ConsentInput,
    EraseLeadRequest, GetLeadRequest, LeadInput, LegalBasis,
};
use leadflow_proto::events::v1::LeadErased;
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use tonic::Code;
use uuid::Uuid;

use crate::support::{
    assert_no_canary, capture_rows, consent, count, person, published, wait_for_event,
};

/// A person made of canary values that appear nowhere else.
struct Canary {
    email_as_given: &'static str,
    email: &'static str,
    phone_as_given: &'static str,
    phone: &'static str,
    first_name: &'static str,
    last_name: &'static str,
    ip: &'static str,
    user_agent: &'static str,
    user_agent_word: &'static str,
}

impl Canary {
    fn lead(&self) -> LeadInput {
        LeadInput {
            first_name: self.first_name.into(),
            last_name: self.last_name.into(),
            ..person(self.email_as_given, self.phone_as_given)
        }
    }

    fn consent(&self) -> ConsentInput {
        consent(self.ip, self.user_agent)
    }

    /// Every string that must not be stored in the clear.
    fn strings(&self) -> Vec<&'static str> {
        let local = self.email.split('@').next().unwrap_or_default();
        let national = self.phone.trim_start_matches("+1");
        vec![
            self.email,
            local,
            self.phone,
            national,
            self.phone_as_given,
            self.first_name,
            self.last_name,
            self.ip,
            self.user_agent_word,
        ]
    }
}

const SEALED: Canary = Canary {
    email_as_given: " Zyx.Canary7731@Canary-Mail.example ",
    email: "zyx.canary7731@canary-mail.example",
    phone_as_given: "(415) 555-0177",
    phone: "+14155550177",
    first_name: "Quillfeather",
    last_name: "Marrowgast",
    ip: "203.0.113.77",
    user_agent: "Mozilla/5.0 (X11; Linux x86_64) Canarywhistle/1.0",
    user_agent_word: "Canarywhistle",
};

const ERASED: Canary = Canary {
    email_as_given: "Wren.Canary4412@Erase-Me.example",
    email: "wren.canary4412@erase-me.example",
    phone_as_given: "+1 415 555 0178",
    phone: "+14155550178",
    first_name: "Thistlewick",
    last_name: "Brambleshaw",
    ip: "203.0.113.78",
    user_agent: "Mozilla/5.0 Erasewhistle/2.0",
    user_agent_word: "Erasewhistle",
};

#[tokio::test(flavor = "multi_thread")]
async fn personal_data_is_sealed_at_rest_and_masked_without_pii_read() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let writer = suite.env.create_api_key("writer", &["leads:write"]).await?;
    let reader = suite.env.create_api_key("reader", &["leads:read"]).await?;
    let pii_reader = suite
        .env
        .create_api_key("pii-reader", &["leads:read", "pii:read"])
        .await?;

    let captured = suite
        .capture_as(&writer)
        .await?
        .capture_lead(CaptureLeadRequest {
            lead: Some(SEALED.lead()),
            consent: Some(SEALED.consent()),
            ..CaptureLeadRequest::default()
        })
        .await?
        .into_inner();
    assert_eq!(captured.outcome(), CaptureOutcome::Created);
    let answered = captured.lead.expect("lead");
    assert_eq!(
        (answered.email.as_str(), answered.phone.as_str()),
        ("z***@canary-mail.example", "+14*******77"),
        "a writer without pii:read gets a masked answer"
    );
    let lead_id = answered.lead_id;

    // At rest: no canary in any column of any table, as text or as bytes.
    let mut db = suite.env.connect().await?;
    let rows = capture_rows(&mut db).await?;
    assert!(
        rows.iter().any(|(table, _)| table == "consents"),
        "the consent was stored"
    );
    assert_no_canary(&rows, &SEALED.strings());

    // Masked for a reader.
    let masked = suite
        .capture_as(&reader)
        .await?
        .get_lead(GetLeadRequest {
            lead_id: lead_id.clone(),
        })
        .await?
        .into_inner()
        .lead
        .expect("lead");
    assert_eq!(masked.email, "z***@canary-mail.example");
    assert_eq!(masked.phone, "+14*******77");
    assert_eq!(
        (masked.first_name.as_str(), masked.last_name.as_str()),
        ("Q***", "M***")
    );
    assert_eq!(masked.consents.len(), 1);
    assert_eq!(masked.consents[0].ip_address, "2***");
    assert_eq!(masked.consents[0].user_agent, "M***");
    let encoded = format!("{masked:?}");
    for canary in SEALED.strings() {
        assert!(
            !encoded.contains(canary),
            "{canary} is visible without pii:read: {encoded}"
        );
    }

    // In full with pii:read.
    let full = suite
        .capture_as(&pii_reader)
        .await?
        .get_lead(GetLeadRequest { lead_id })
        .await?
        .into_inner()
        .lead
        .expect("lead");
    assert_eq!(full.email, SEALED.email);
    assert_eq!(full.phone, SEALED.phone);
    assert_eq!(
        (full.first_name.as_str(), full.last_name.as_str()),
        (SEALED.first_name, SEALED.last_name)
    );
    assert_eq!(full.consents[0].ip_address, SEALED.ip);
    assert_eq!(full.consents[0].user_agent, SEALED.user_agent);
    assert_eq!(
        (
            full.quality_score,
            full.company.as_str(),
            full.channel.as_str()
        ),
        (masked.quality_score, masked.company.as_str(), "web"),
        "masking changes personal fields only"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_lead_keeps_no_personal_data_and_is_not_recaptured_without_fresh_consent()
-> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let mut capture = suite.capture().await?;
    let with_attribution = |consent: Option<ConsentInput>| CaptureLeadRequest {
        lead: Some(ERASED.lead()),
        attribution: Some(Attribution {
            utm_source: "newsletter".into(),
            referrer: format!("https://mail.example/read?to={}", ERASED.email),
            landing_page: format!("https://acme.example/offer?email={}", ERASED.email),
            ..Attribution::default()
        }),
        consent,
    };
    let captured = capture
        .capture_lead(with_attribution(Some(ERASED.consent())))
        .await?
        .into_inner()
        .lead
        .expect("lead");
    let lead_id = captured.lead_id.clone();
    assert_eq!(captured.email, ERASED.email);
    let mut db = suite.env.connect().await?;
    let before = capture_rows(&mut db).await?;
    assert!(
        before
            .iter()
            .any(|(table, row)| table == "touches" && row.contains(ERASED.email)),
        "the referrer carried the email before erasure (else this test proves nothing)"
    );

    let erased = capture
        .erase_lead(EraseLeadRequest {
            lead_id: lead_id.clone(),
            reason: "gdpr-request".into(),
        })
        .await?
        .into_inner();
    assert_eq!(erased.lead_id, lead_id);
    let erased_at = erased.erased_at.expect("erased_at");

    let lead = capture
        .get_lead(GetLeadRequest {
            lead_id: lead_id.clone(),
        })
        .await?
        .into_inner()
        .lead
        .expect("erased lead is still there");
    assert!(lead.erased);
    assert_eq!(
        (
            lead.email.as_str(),
            lead.phone.as_str(),
            lead.first_name.as_str(),
            lead.last_name.as_str(),
            lead.company.as_str()
        ),
        ("", "", "", "", "")
    );
    for record in &lead.consents {
        assert_eq!(
            (record.ip_address.as_str(), record.user_agent.as_str()),
            ("", "")
        );
    }
    let touch = lead.first_touch.expect("touch kept");
    let attribution = touch.attribution.expect("attribution");
    assert_eq!(
        (
            attribution.referrer.as_str(),
            attribution.landing_page.as_str()
        ),
        ("", "")
    );
    assert_eq!(attribution.utm_source, "newsletter", "non-personal kept");

    // Nothing personal left at rest, and no blind index finds the person's lead.
    let rows = capture_rows(&mut db).await?;
    assert_no_canary(&rows, &ERASED.strings());
    let keyring = Keyring::new(
        &SecretString::from(PII_KEY.to_owned()),
        &SecretString::from(BLIND_INDEX_KEY.to_owned()),
    )?;
    let email_bidx = keyring.blind_index("email", ERASED.email);
    let phone_bidx = keyring.blind_index("phone", ERASED.phone);
    let (matches,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM capture.leads WHERE email_bidx = $1 OR phone_bidx = $2",
    )
    .bind(&email_bidx)
    .bind(&phone_bidx)
    .fetch_one(&mut db)
    .await?;
    assert_eq!(matches, 0, "no lead is findable by the erased identities");
    let (data_keys,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM capture.leads WHERE lead_id = $1 AND data_key IS NULL \
         AND email_sealed IS NULL AND phone_sealed IS NULL AND first_name_sealed IS NULL \
         AND last_name_sealed IS NULL",
    )
    .bind(Uuid::parse_str(&lead_id)?)
    .fetch_one(&mut db)
    .await?;
    assert_eq!(data_keys, 1, "the data key and sealed columns are gone");
    let (suppressed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM capture.suppressions WHERE bidx = ANY($1)")
            .bind(vec![email_bidx.clone(), phone_bidx.clone()])
            .fetch_one(&mut db)
            .await?;
    assert_eq!(suppressed, 2, "a hashed suppression record per identity");

    wait_for_event::<LeadErased, _>(&suite, "lead.erased", |event| event.lead_id == lead_id)
        .await?;
    for event in published(&suite).await? {
        let raw = String::from_utf8_lossy(&event.entry.raw()).to_lowercase();
        for canary in ERASED.strings() {
            assert!(
                !raw.contains(&canary.to_lowercase()),
                "{canary} is in stream entry {} ({})",
                event.entry.id,
                event.envelope.event_type
            );
        }
    }

    // Suppressed: back only with fresh consent, as a new lead.
    let refused = capture
        .capture_lead(with_attribution(None))
        .await
        .expect_err("an erased person is not re-captured without consent");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.leads").await?,
        1
    );
    let back = capture
        .capture_lead(with_attribution(Some(ERASED.consent())))
        .await?
        .into_inner();
    assert_eq!(back.outcome(), CaptureOutcome::Created);
    let back = back.lead.expect("lead");
    assert_ne!(back.lead_id, lead_id, "a new lead, not the erased one");
    assert_eq!(back.email, ERASED.email);
    assert_eq!(back.touch_count, 1);
    let (suppressed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM capture.suppressions WHERE bidx = ANY($1)")
            .bind(vec![email_bidx.clone(), phone_bidx.clone()])
            .fetch_one(&mut db)
            .await?;
    assert_eq!(
        suppressed, 0,
        "fresh consent lifted the suppression with the capture"
    );

    // Erasing again is a no-op that answers the same.
    let again = capture
        .erase_lead(EraseLeadRequest {
            lead_id: lead_id.clone(),
            reason: "gdpr-request".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        again.erased_at,
        Some(erased_at),
        "erasing twice is idempotent"
    );
    assert_eq!(
        count(
            &mut db,
            "SELECT count(*) FROM capture.outbox WHERE event_type = 'lead.erased'"
        )
        .await?,
        1,
        "one lead.erased"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn consent_records_cannot_be_changed() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let disclosure = "By ticking this box I agree that Acme Ltd. may contact me by email \
                      and SMS about its offers — up to 4 messages a month.\nReply STOP to opt out; \
                      see https://acme.example/privacy (v2026-01).";
    let given = ConsentInput {
        channels: vec![ConsentChannel::Email.into(), ConsentChannel::Sms.into()],
        disclosure_text: disclosure.into(),
        form_url: "https://acme.example/signup".into(),
        form_version: "signup-v12".into(),
        ip_address: "2001:db8::17".into(),
        user_agent: "Mozilla/5.0".into(),
        legal_basis: LegalBasis::Consent.into(),
        given_at: Some(leadflow_proto::prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
    };
    let mut capture = suite.capture().await?;
    let lead_id = capture
        .capture_lead(CaptureLeadRequest {
            lead: Some(person("mary.jackson@langley.example", "")),
            consent: Some(given.clone()),
            ..CaptureLeadRequest::default()
        })
        .await?
        .into_inner()
        .lead
        .expect("lead")
        .lead_id;

    let mut db = suite.env.connect().await?;
    let update = sqlx::query("UPDATE capture.consents SET disclosure_text = 'x'")
        .execute(&mut db)
        .await;
    let update = update.expect_err("an UPDATE of a consent fails");
    assert!(
        update.to_string().contains("cannot be changed"),
        "refused by the database: {update}"
    );
    let delete = sqlx::query("DELETE FROM capture.consents")
        .execute(&mut db)
        .await
        .expect_err("a DELETE of a consent fails");
    assert!(
        delete.to_string().contains("cannot be changed"),
        "refused by the database: {delete}"
    );
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM capture.consents").await?,
        1
    );

    let lead = capture
        .get_lead(GetLeadRequest { lead_id })
        .await?
        .into_inner()
        .lead
        .expect("lead");
    assert_eq!(lead.consents.len(), 1);
    let record = &lead.consents[0];
    assert_eq!(record.disclosure_text, disclosure, "the exact text");
    assert_eq!(
        record.disclosure_sha256,
        hex::encode(Sha256::digest(disclosure.as_bytes())),
        "its SHA-256, hex"
    );
    assert_eq!(record.channels, given.channels);
    assert_eq!(
        (
            record.form_url.as_str(),
            record.form_version.as_str(),
            record.ip_address.as_str()
        ),
        ("https://acme.example/signup", "signup-v12", "2001:db8::17")
    );
    assert_eq!(record.legal_basis(), LegalBasis::Consent);
    assert_eq!(record.given_at, given.given_at, "when it was given");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_leads_answer_is_the_lead_as_get_lead_reads_it_masked_or_not() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let full = suite
        .env
        .create_api_key("full-writer", &["leads:write", "leads:read", "pii:read"])
        .await?;
    let plain = suite
        .env
        .create_api_key("plain-writer", &["leads:write", "leads:read"])
        .await?;
    let given_at = leadflow_proto::prost_types::Timestamp {
        seconds: 1_790_000_000,
        nanos: 123_456_000,
    };
    for (n, (key, consent_given_at)) in [(&full, None), (&plain, Some(given_at))]
        .into_iter()
        .enumerate()
    {
        let mut client = suite.capture_as(key).await?;
        let request = CaptureLeadRequest {
            lead: Some(LeadInput {
                first_name: " Zoë ".into(),
                last_name: "Ångström".into(),
                company: "Acme Corp".into(),
                job_title: "Head of Ops".into(),
                website: "acme-corp.example".into(),
                country: "se".into(),
                campaign: "Winter launch".into(),
                ..person(
                    &format!("Answer.{n}@Acme-Corp.example"),
                    &format!("+46 70 123 45 6{n}"),
                )
            }),
            attribution: Some(Attribution {
                utm_source: "newsletter".into(),
                utm_medium: "email".into(),
                utm_campaign: "winter".into(),
                utm_term: "crm".into(),
                utm_content: "hero".into(),
                gclid: "gclid-1".into(),
                referrer: "https://mail.example/".into(),
                landing_page: "https://acme-corp.example/offer".into(),
                ..Attribution::default()
            }),
            consent: Some(ConsentInput {
                given_at: consent_given_at,
                ..consent("203.0.113.9", "Mozilla/5.0 (answer test)")
            }),
        };
        let answered = client.capture_lead(request).await?.into_inner();
        assert_eq!(answered.outcome(), CaptureOutcome::Created);
        let answered = answered.lead.expect("the answer carries the lead");
        let read = client
            .get_lead(GetLeadRequest {
                lead_id: answered.lead_id.clone(),
            })
            .await?
            .into_inner()
            .lead
            .expect("GetLead finds it");
        assert_eq!(
            answered, read,
            "the capture's answer is the lead as stored (key {n})"
        );
        assert_eq!(answered.consents.len(), 1);
        assert!(answered.first_touch.is_some() && answered.latest_touch.is_some());
        if key == &full {
            assert_eq!(answered.email, format!("answer.{n}@acme-corp.example"));
            assert_eq!(answered.consents[0].ip_address, "203.0.113.9");
        } else {
            assert_ne!(
                answered.email,
                format!("answer.{n}@acme-corp.example"),
                "masked"
            );
            assert_eq!(answered.consents[0].given_at, Some(given_at));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_calls_log_lines_name_its_rpc_caller_and_lead_in_its_one_span() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let mut capture = suite.capture().await?;
    let admin_key_id = leadflow_platform::auth::parse(&suite.admin_key)?.key_id;
    let lead_id = capture
        .capture_lead(crate::support::capture_of(person(
            "span.canary@example.com",
            "+1 415 555 0179",
        )))
        .await?
        .into_inner()
        .lead
        .expect("lead")
        .lead_id;
    capture
        .erase_lead(EraseLeadRequest {
            lead_id: lead_id.clone(),
            reason: "gdpr-request".into(),
        })
        .await?;

    let logs = suite.services[&leadflow_e2e::Service::Capture].logs();
    let erased: serde_json::Value = logs
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| line["message"] == "lead erased")
        .expect("a `lead erased` line");
    // The call's span is the server's: named by the RPC, with the caller (recorded by the
    // authenticator) and the lead (recorded by the handler) in it; no handler span of its own.
    let span = &erased["span"];
    assert_eq!(span["name"], "grpc", "{erased}");
    assert_eq!(
        span["rpc"], "/leadflow.capture.v1.CaptureService/EraseLead",
        "{erased}"
    );
    assert_eq!(span["key_id"], admin_key_id.as_str(), "{erased}");
    assert_eq!(span["lead_id"], lead_id.as_str(), "{erased}");
    assert!(
        !logs.iter().any(|line| line.contains("span.canary")),
        "no log line names the person"
    );
    Ok(())
}
