//! capture's web-to-lead endpoint over real sockets: plain HTML form posts and JSON from a
//! script, per-source CORS, the honeypot, rejections a person can read, rate limits and size
//! limits. What was stored is checked through gRPC (`GetLead`) and SQL.

use std::time::Duration;

use anyhow::Context;
use leadflow_e2e::Suite;
use leadflow_proto::capture::v1::{
    ConsentChannel, DedupeMode, DedupePolicy, GetLeadRequest, LegalBasis, ListLeadsRequest,
    SourceKind, SourceSettings, WebForm,
};
use reqwest::StatusCode;
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    CONNECTION, CONTENT_TYPE, LOCATION, RETRY_AFTER, VARY,
};
use serde_json::{Value, json};

/// The site the form is on.
const SITE: &str = "https://www.acme.example";
const THANK_YOU_URL: &str = "https://www.acme.example/thanks";
const FORM_PAGE: &str = "https://www.acme.example/contact?offer=spring";
const HONEYPOT: &str = "nickname";
const DISCLOSURE: &str = "I agree that Acme may contact me by email and text message.";
const USER_AGENT: &str = "Mozilla/5.0 (X11; Linux x86_64) leadflow-e2e";

/// Settings of a form source on [`SITE`] that maps `E-Mail` and `Vorname`.
fn form_settings() -> SourceSettings {
    SourceSettings {
        name: "Acme contact form".into(),
        kind: SourceKind::Form.into(),
        field_mapping: [
            ("E-Mail".to_owned(), "email".to_owned()),
            ("Vorname".to_owned(), "first_name".to_owned()),
        ]
        .into(),
        dedupe: Some(DedupePolicy {
            mode: DedupeMode::Merge.into(),
            window_seconds: 0,
        }),
        web_form: Some(WebForm {
            form_key: String::new(),
            allowed_origins: vec![SITE.into(), "http://localhost:3000".into()],
            thank_you_url: THANK_YOU_URL.into(),
            honeypot_field: HONEYPOT.into(),
        }),
        ..SourceSettings::default()
    }
}

/// An HTTP client that shows redirects instead of following them.
fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()?)
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> &str {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_post_creates_a_lead_and_redirects_to_the_thank_you_page() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let url = suite.web_form_url("contact-form", form_settings()).await?;

    let response = client()?
        .post(&url)
        // What a browser sends with a cross-origin form post.
        .header("origin", SITE)
        .header("referer", FORM_PAGE)
        .header("user-agent", USER_AGENT)
        .form(&[
            ("E-Mail", " Form.Person@Acme-Corp.example "),
            ("Vorname", "Formfirst"),
            ("last_name", "Formlast"),
            ("company", "Acme Corp"),
            ("phone", "(415) 555-0142"),
            ("job_title", "Head of Sales"),
            ("campaign", "spring-launch"),
            ("utm_source", "google"),
            ("utm_medium", "cpc"),
            ("utm_campaign", "spring"),
            ("utm_term", "lead software"),
            ("utm_content", "ad-7"),
            ("gclid", "gclid-123"),
            ("landing_page", "https://www.acme.example/landing"),
            ("consent_email", "on"),
            ("consent_sms", "on"),
            ("consent_text", DISCLOSURE),
            ("form_version", "v3"),
            (HONEYPOT, ""),
        ])
        .send()
        .await?;

    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(header(&response, LOCATION), THANK_YOU_URL);
    assert_eq!(header(&response, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);

    let mut capture = suite.capture().await?;
    let leads = capture
        .list_leads(ListLeadsRequest {
            source: "contact-form".into(),
            ..ListLeadsRequest::default()
        })
        .await?
        .into_inner()
        .leads;
    assert_eq!(leads.len(), 1, "{leads:?}");
    // The admin key holds every scope, `pii:read` included.
    let lead = capture
        .get_lead(GetLeadRequest {
            lead_id: leads[0].lead_id.clone(),
        })
        .await?
        .into_inner()
        .lead
        .context("stored lead")?;
    assert_eq!(lead.email, "form.person@acme-corp.example");
    assert_eq!(lead.first_name, "Formfirst", "mapped from `Vorname`");
    assert_eq!(lead.last_name, "Formlast");
    assert_eq!(lead.company, "Acme Corp");
    assert_eq!(lead.phone, "+14155550142");
    assert_eq!(lead.job_title, "Head of Sales");
    assert_eq!(lead.source, "contact-form");
    assert_eq!(lead.channel, "web");
    assert_eq!(lead.campaign, "spring-launch");

    let attribution = lead
        .first_touch
        .and_then(|touch| touch.attribution)
        .context("first touch attribution")?;
    assert_eq!(attribution.utm_source, "google");
    assert_eq!(attribution.utm_medium, "cpc");
    assert_eq!(attribution.utm_campaign, "spring");
    assert_eq!(attribution.utm_term, "lead software");
    assert_eq!(attribution.utm_content, "ad-7");
    assert_eq!(attribution.gclid, "gclid-123");
    assert_eq!(attribution.landing_page, "https://www.acme.example/landing");
    assert_eq!(attribution.referrer, FORM_PAGE, "from the Referer header");

    assert_eq!(lead.consents.len(), 1, "{:?}", lead.consents);
    let consent = &lead.consents[0];
    assert_eq!(
        consent.channels,
        [
            i32::from(ConsentChannel::Email),
            i32::from(ConsentChannel::Sms)
        ]
    );
    assert_eq!(consent.disclosure_text, DISCLOSURE);
    assert_eq!(consent.form_url, FORM_PAGE);
    assert_eq!(consent.form_version, "v3");
    assert_eq!(consent.ip_address, "127.0.0.1");
    assert_eq!(consent.user_agent, USER_AGENT);
    assert_eq!(consent.legal_basis(), LegalBasis::Consent);

    let leaked: Vec<String> = suite
        .all_logs()
        .into_iter()
        .filter(|line| {
            let line = line.to_lowercase();
            line.contains("form.person") || line.contains("formfirst") || line.contains("5550142")
        })
        .collect();
    assert!(leaked.is_empty(), "personal data in logs: {leaked:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_json_post_from_an_allowed_origin_is_created_with_cors_headers() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let url = suite.web_form_url("contact-form", form_settings()).await?;
    let http = client()?;
    let post = |body: Value| {
        http.post(&url)
            .header("origin", SITE)
            .header("user-agent", USER_AGENT)
            .json(&body)
    };

    let created =
        post(json!({ "email": "script.person@acme-corp.example", "first_name": "Scriptfirst" }))
            .send()
            .await?;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(header(&created, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);
    assert!(
        header(&created, VARY).to_lowercase().contains("origin"),
        "{:?}",
        created.headers()
    );
    let created: Value = created.json().await?;
    assert_eq!(created["outcome"], "created");
    let lead_id = created["lead_id"].as_str().context("lead_id")?.to_owned();
    uuid::Uuid::parse_str(&lead_id)?;

    // The same person again is merged into the same lead.
    let merged: Value =
        post(json!({ "E-Mail": "Script.Person@acme-corp.example", "utm_source": "newsletter" }))
            .send()
            .await?
            .json()
            .await?;
    assert_eq!(merged, json!({ "lead_id": lead_id, "outcome": "merged" }));

    // A retry with the same idempotency key gets the first answer.
    let retried = || {
        post(json!({ "email": "other.person@acme-corp.example" }))
            .header("idempotency-key", "retry-1")
            .send()
    };
    let first = retried().await?;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await?;
    let again: Value = retried().await?.json().await?;
    assert_eq!(first, again);
    assert_eq!(suite.stored_leads().await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_is_answered_for_allowed_origins_only() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let url = suite.web_form_url("contact-form", form_settings()).await?;
    let http = client()?;
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };

    let allowed = preflight("http://localhost:3000").await?;
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        header(&allowed, ACCESS_CONTROL_ALLOW_ORIGIN),
        "http://localhost:3000"
    );
    assert!(header(&allowed, ACCESS_CONTROL_ALLOW_METHODS).contains("POST"));
    assert!(
        header(&allowed, ACCESS_CONTROL_ALLOW_HEADERS)
            .to_lowercase()
            .contains("content-type")
    );
    assert!(header(&allowed, VARY).to_lowercase().contains("origin"));

    for origin in [
        "https://evil.example",
        "https://www.acme.example.evil.example",
        "http://www.acme.example",
    ] {
        let denied = preflight(origin).await?;
        assert_eq!(denied.status(), StatusCode::FORBIDDEN, "{origin}");
        assert!(
            denied.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "{origin}"
        );
    }

    // The post itself from another origin is refused too, and stores nothing.
    let posted = http
        .post(&url)
        .header("origin", "https://evil.example")
        .json(&json!({ "email": "cross.site@acme-corp.example" }))
        .send()
        .await?;
    assert_eq!(posted.status(), StatusCode::FORBIDDEN);
    assert!(posted.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert_eq!(suite.stored_leads().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filled_honeypot_looks_accepted_but_stores_nothing() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let url = suite.web_form_url("contact-form", form_settings()).await?;
    let http = client()?;

    let form = http
        .post(&url)
        .form(&[
            ("E-Mail", "bot.one@acme-corp.example"),
            (HONEYPOT, "Buy cheap stuff"),
        ])
        .send()
        .await?;
    assert_eq!(form.status(), StatusCode::SEE_OTHER);
    assert_eq!(header(&form, LOCATION), THANK_YOU_URL);

    let script = http
        .post(&url)
        .header("origin", SITE)
        .json(&json!({ "email": "bot.two@acme-corp.example", HONEYPOT: "x" }))
        .send()
        .await?;
    assert_eq!(script.status(), StatusCode::CREATED);
    assert_eq!(header(&script, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);
    let body: Value = script.json().await?;
    assert_eq!(body["outcome"], "created");
    uuid::Uuid::parse_str(body["lead_id"].as_str().context("lead_id")?)?;

    assert_eq!(suite.stored_leads().await?, 0);
    assert!(
        suite
            .all_logs()
            .iter()
            .any(|line| line.contains("honeypot") && line.contains("contact-form")),
        "the dropped post is logged with its source"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_email_is_rejected_by_field_as_json_and_as_an_escaped_page() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let url = suite.web_form_url("contact-form", form_settings()).await?;
    let http = client()?;

    let script = http
        .post(&url)
        .header("origin", SITE)
        .json(&json!({ "email": "not-an-email" }))
        .send()
        .await?;
    assert_eq!(script.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(header(&script, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);
    let body: Value = script.json().await?;
    assert_eq!(body["error"], "rejected");
    let violations = body["violations"].as_array().context("violations")?;
    assert!(
        violations
            .iter()
            .any(|v| v["field"] == "lead.email" && v["reason"] == "INVALID_EMAIL"),
        "{body}"
    );
    assert!(violations.iter().all(|v| v["description"].is_string()));

    let page = http
        .post(&url)
        .form(&[("E-Mail", "<script>alert('pwned')</script>")])
        .send()
        .await?;
    assert_eq!(page.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(header(&page, CONTENT_TYPE).starts_with("text/html"));
    let html = page.text().await?;
    assert!(!html.contains("<script"), "unescaped markup: {html}");
    assert!(
        html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("E-Mail"),
        "named as the form named it: {html}"
    );
    assert_eq!(suite.stored_leads().await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_over_its_rate_limit_gets_429_with_retry_after() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let url = suite
        .web_form_url(
            "slow-form",
            SourceSettings {
                rate_limit_per_minute: 2,
                ..form_settings()
            },
        )
        .await?;
    let http = client()?;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for n in 0..3 {
        let response = http
            .post(&url)
            .json(&json!({ "email": format!("person{n}@acme-corp.example") }))
            .send()
            .await?;
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = Some(header(&response, RETRY_AFTER).parse::<u64>()?);
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CREATED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let retry_after = retry_after.context("Retry-After")?;
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(suite.stored_leads().await?, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_the_endpoint_cannot_take_are_answered_by_status() -> anyhow::Result<()> {
    let suite = Suite::start().await?;
    let url = suite.web_form_url("contact-form", form_settings()).await?;
    let http = client()?;

    let unknown = http
        .post(format!(
            "{}/v1/forms/wf_nosuchformkey000000000000",
            suite.http_base()?
        ))
        .json(&json!({ "email": "a@acme-corp.example" }))
        .send()
        .await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.json::<Value>().await?,
        json!({ "error": "unknown form" })
    );
    // Once a 500: Postgres refused the NUL in the key it was asked to look up.
    let nul = http
        .post(format!("{}/v1/forms/wf_abc%00", suite.http_base()?))
        .json(&json!({ "email": "a@acme-corp.example" }))
        .send()
        .await?;
    assert_eq!(nul.status(), StatusCode::NOT_FOUND);

    let text = http
        .post(&url)
        .header(CONTENT_TYPE, "text/plain")
        .body("email=a@acme-corp.example")
        .send()
        .await?;
    assert_eq!(text.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let oversize = http
        .post(&url)
        .json(&json!({ "email": "a@acme-corp.example", "notes": "x".repeat(70 * 1024) }))
        .send()
        .await?;
    assert_eq!(oversize.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // hyper closes a connection whose body was left unread; unless the answer says so, a
    // client reusing the connection loses its next post.
    assert_eq!(header(&oversize, CONNECTION), "close");

    let malformed = http
        .post(&url)
        .header(CONTENT_TYPE, "application/json")
        .body("{\"email\": ")
        .send()
        .await?;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        header(&malformed, CONNECTION),
        "",
        "read to the end: kept alive"
    );

    assert_eq!(suite.stored_leads().await?, 0);
    Ok(())
}
