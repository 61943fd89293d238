//! Activity tracking over capture's HTTP port, through real sockets: the snippet served as
//! cacheable JavaScript; beacons (`text/plain` JSON, as `navigator.sendBeacon` sends them)
//! recorded for their visitor under the source's origins and rate limit; a form post carrying
//! the visitor id handing the lead what the browser did before; and a real browser (headless
//! Chromium, when installed) loading a page with the snippet.

use std::time::Duration;

use anyhow::Context;
use leadflow_e2e::{StreamEntry, Suite, eventually};
use leadflow_proto::capture::v1::{DedupeMode, DedupePolicy, SourceKind, SourceSettings, WebForm};
use leadflow_proto::events::v1::{Envelope, LeadActivity};
use prost::Message;
use reqwest::StatusCode;
use reqwest::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, RETRY_AFTER, VARY,
};
use serde_json::{Value, json};
use sqlx::PgConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The site the snippet runs on.
const SITE: &str = "https://www.acme.example";
const WAIT: Duration = Duration::from_secs(20);

/// A form source on [`SITE`] (and on `extra_origins`), merging known people.
fn tracked_site(extra_origins: &[String], rate_limit_per_minute: i32) -> SourceSettings {
    let mut allowed_origins = vec![SITE.to_owned()];
    allowed_origins.extend(extra_origins.iter().cloned());
    SourceSettings {
        name: "Acme site".into(),
        kind: SourceKind::Form.into(),
        dedupe: Some(DedupePolicy {
            mode: DedupeMode::Merge.into(),
            window_seconds: 0,
        }),
        rate_limit_per_minute,
        web_form: Some(WebForm {
            form_key: String::new(),
            allowed_origins,
            thank_you_url: String::new(),
            honeypot_field: String::new(),
        }),
        ..SourceSettings::default()
    }
}

/// The URLs of a tracked source: its form, and where its activities go.
struct Endpoints {
    form: String,
    activity: String,
}

async fn endpoints(suite: &Suite, settings: SourceSettings) -> anyhow::Result<Endpoints> {
    let form = suite.web_form_url("acme-site", settings).await?;
    let activity = form.replace("/v1/forms/", "/v1/activity/");
    Ok(Endpoints { form, activity })
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()?)
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Posts `body` as `navigator.sendBeacon` would: a text/plain string from the site.
async fn beacon(
    http: &reqwest::Client,
    url: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    Ok(http
        .post(url)
        .header("origin", SITE)
        .header(CONTENT_TYPE, "text/plain;charset=UTF-8")
        .body(body.to_string())
        .send()
        .await?)
}

/// Stored activities: (visitor, kind, url, lead), oldest first.
type Stored = (Option<Uuid>, String, String, Option<Uuid>);

async fn stored(db: &mut PgConnection) -> anyhow::Result<Vec<Stored>> {
    Ok(sqlx::query_as(
        "SELECT visitor_id, kind, url, lead_id FROM capture.activities ORDER BY occurred_at, activity_id",
    )
    .fetch_all(&mut *db)
    .await?)
}

/// The `lead.activity` events on capture's stream so far, with their raw entries.
async fn activity_events(suite: &Suite) -> anyhow::Result<Vec<(StreamEntry, LeadActivity)>> {
    let mut events = Vec::new();
    for entry in suite.env.stream_entries("leadflow.capture.v1").await? {
        let envelope = Envelope::decode(entry.field("envelope").unwrap_or_default())?;
        if envelope.event_type == "lead.activity" {
            let payload = LeadActivity::decode(envelope.payload.as_slice())?;
            events.push((entry, payload));
        }
    }
    Ok(events)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_snippet_is_served_as_cacheable_javascript() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let http = client()?;
    let url = format!("{}/v1/snippet.js", suite.http_base()?);

    let served = http.get(&url).send().await?;
    assert_eq!(served.status(), StatusCode::OK);
    assert_eq!(
        header(&served, CONTENT_TYPE),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(header(&served, CACHE_CONTROL), "public, max-age=3600");
    assert_eq!(header(&served, ACCESS_CONTROL_ALLOW_ORIGIN), "*");
    assert_eq!(
        header(&served, reqwest::header::X_CONTENT_TYPE_OPTIONS),
        "nosniff"
    );
    let etag = header(&served, ETAG);
    assert!(etag.starts_with('"'), "{etag}");
    let script = served.text().await?;
    for expected in [
        "lf_vid",
        "lf_visitor",
        "/v1/activity/",
        "sendBeacon",
        "track",
    ] {
        assert!(script.contains(expected), "the snippet mentions {expected}");
    }

    let revalidated = http.get(&url).header(IF_NONE_MATCH, &etag).send().await?;
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(header(&revalidated, ETAG), etag);
    assert!(revalidated.text().await?.is_empty());

    let head = http.head(&url).send().await?;
    assert_eq!(head.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_beacon_is_recorded_for_its_visitor_without_its_query_string() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let site = endpoints(&suite, tracked_site(&[], 0)).await?;
    let http = client()?;
    let visitor = Uuid::new_v4();

    let sent = beacon(
        &http,
        &site.activity,
        &json!({
            "visitor_id": visitor,
            "kind": "page_visit",
            "url": "https://www.acme.example/features?email=beacon.canary%40mail.example#top",
            "title": "Features",
            "activity_id": Uuid::new_v4(),
        }),
    )
    .await?;
    assert_eq!(sent.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&sent, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);
    assert!(header(&sent, VARY).to_lowercase().contains("origin"));

    // The same as JSON from a script, and a download with its asset.
    let json_post = http
        .post(&site.activity)
        .header("origin", SITE)
        .json(&json!({ "visitor_id": visitor, "kind": "download", "asset": "guide.pdf" }))
        .send()
        .await?;
    assert_eq!(json_post.status(), StatusCode::NO_CONTENT);

    let mut db = suite.env.connect().await?;
    assert_eq!(
        stored(&mut db).await?,
        [
            (
                Some(visitor),
                "page_visit".to_owned(),
                "https://www.acme.example/features".to_owned(),
                None
            ),
            (Some(visitor), "download".to_owned(), String::new(), None),
        ]
    );
    let (caller,): (String,) = sqlx::query_as("SELECT DISTINCT caller FROM capture.activities")
        .fetch_one(&mut db)
        .await?;
    assert_eq!(caller, "form:acme-site");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn preflight_and_beacons_from_foreign_origins_are_refused() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let site = endpoints(&suite, tracked_site(&[], 0)).await?;
    let http = client()?;
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &site.activity)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };

    let allowed = preflight(SITE).await?;
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&allowed, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);
    assert!(header(&allowed, ACCESS_CONTROL_ALLOW_METHODS).contains("POST"));
    assert!(
        header(&allowed, ACCESS_CONTROL_ALLOW_HEADERS)
            .to_lowercase()
            .contains("content-type")
    );
    for origin in ["https://evil.example", "http://www.acme.example"] {
        let denied = preflight(origin).await?;
        assert_eq!(denied.status(), StatusCode::FORBIDDEN, "{origin}");
        assert!(denied.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
    let foreign = http
        .post(&site.activity)
        .header("origin", "https://evil.example")
        .header(CONTENT_TYPE, "text/plain")
        .body(
            json!({ "visitor_id": Uuid::new_v4(), "kind": "page_visit", "url": SITE }).to_string(),
        )
        .send()
        .await?;
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let mut db = suite.env.connect().await?;
    assert!(stored(&mut db).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn beacons_the_endpoint_cannot_take_are_answered_by_status_and_field() -> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let site = endpoints(&suite, tracked_site(&[], 0)).await?;
    let http = client()?;

    let refused = beacon(
        &http,
        &site.activity,
        &json!({ "kind": "visit", "url": "javascript:alert(1)", "email": "someone@acme.example" }),
    )
    .await?;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(header(&refused, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);
    let body: Value = refused.json().await?;
    let fields: Vec<(&str, &str)> = body["violations"]
        .as_array()
        .context("violations")?
        .iter()
        .map(|violation| {
            (
                violation["field"].as_str().unwrap_or_default(),
                violation["reason"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        fields,
        [
            ("visitor_id", "REQUIRED"),
            ("kind", "INVALID"),
            ("url", "INVALID_URL")
        ],
        "{body}"
    );

    let page_without_url = beacon(
        &http,
        &site.activity,
        &json!({ "visitor_id": Uuid::new_v4(), "kind": "pricing_page_view" }),
    )
    .await?;
    assert_eq!(page_without_url.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = page_without_url.json().await?;
    assert_eq!(body["violations"][0]["field"], "url");

    let form_encoded = http
        .post(&site.activity)
        .form(&[("visitor_id", Uuid::new_v4().to_string())])
        .send()
        .await?;
    assert_eq!(form_encoded.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let malformed = http
        .post(&site.activity)
        .header(CONTENT_TYPE, "text/plain")
        .body("visitor_id=1")
        .send()
        .await?;
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    let unknown = http
        .post(format!(
            "{}/v1/activity/wf_nosuchformkey000000000000",
            suite.http_base()?
        ))
        .header(CONTENT_TYPE, "text/plain")
        .body(
            json!({ "visitor_id": Uuid::new_v4(), "kind": "page_visit", "url": SITE }).to_string(),
        )
        .send()
        .await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    let mut db = suite.env.connect().await?;
    assert!(stored(&mut db).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_over_its_rate_limit_gets_429_and_its_forms_keep_their_own_budget()
-> anyhow::Result<()> {
    let suite = Suite::start_capture().await?;
    let site = endpoints(&suite, tracked_site(&[], 2)).await?;
    let http = client()?;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..3 {
        let sent = beacon(
            &http,
            &site.activity,
            &json!({ "visitor_id": Uuid::new_v4(), "kind": "page_visit", "url": SITE }),
        )
        .await?;
        statuses.push(sent.status());
        if sent.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(header(&sent, ACCESS_CONTROL_ALLOW_ORIGIN), SITE);
            retry_after = Some(header(&sent, RETRY_AFTER).parse::<u64>()?);
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::NO_CONTENT,
            StatusCode::NO_CONTENT,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let retry_after = retry_after.context("Retry-After")?;
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );

    // Page views spent the activity budget, not the form's.
    let form = http
        .post(&site.form)
        .header("origin", SITE)
        .json(&json!({ "email": "still.welcome@acme.example" }))
        .send()
        .await?;
    assert_eq!(form.status(), StatusCode::CREATED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_post_carrying_the_visitor_hands_the_lead_what_the_browser_did() -> anyhow::Result<()>
{
    let suite = Suite::start_capture().await?;
    let site = endpoints(&suite, tracked_site(&[], 0)).await?;
    let http = client()?;
    let visitor = Uuid::new_v4();
    let mut activity_ids = Vec::new();
    for (kind, url, asset) in [
        (
            "page_visit",
            "https://www.acme.example/?utm_source=news",
            "",
        ),
        (
            "pricing_page_view",
            "https://www.acme.example/pricing?ref=lin.canary%40mail.example",
            "",
        ),
        ("download", "", "pricing-guide.pdf"),
    ] {
        let activity_id = Uuid::new_v4();
        activity_ids.push(activity_id.to_string());
        let sent = beacon(
            &http,
            &site.activity,
            &json!({
                "visitor_id": visitor, "kind": kind, "url": url, "asset": asset,
                "title": "Pagetitlecanary", "activity_id": activity_id,
            }),
        )
        .await?;
        assert_eq!(sent.status(), StatusCode::NO_CONTENT);
        // Distinct times, so the order on the stream is the order they happened in.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(activity_events(&suite).await?.is_empty(), "anonymous");

    let posted = http
        .post(&site.form)
        .header("origin", SITE)
        .header("user-agent", "Mozilla/5.0 Uacanary/1.0")
        .form(&[
            ("email", "Linda.Linked@Acme-Corp.example"),
            ("first_name", "Lindacanary"),
            ("phone", "(415) 555-0163"),
            ("consent_email", "on"),
            ("consent_text", "You may email me."),
            ("lf_visitor", &visitor.to_string()),
        ])
        .send()
        .await?;
    assert_eq!(posted.status(), StatusCode::OK, "{:?}", posted.text().await);
    let mut db = suite.env.connect().await?;
    let (lead_id,): (Uuid,) =
        sqlx::query_as("SELECT lead_id FROM capture.leads WHERE merged_into IS NULL")
            .fetch_one(&mut db)
            .await?;
    assert!(
        stored(&mut db)
            .await?
            .iter()
            .all(|(_, _, _, owner)| *owner == Some(lead_id)),
        "every earlier activity is the lead's"
    );

    let events = eventually("three lead.activity events", WAIT, || async {
        let events = activity_events(&suite).await?;
        Ok(Some(events).filter(|events| events.len() == 3))
    })
    .await?;
    let ids: Vec<&str> = events
        .iter()
        .map(|(_, event)| event.activity_id.as_str())
        .collect();
    assert_eq!(ids, activity_ids, "oldest first");
    for (entry, event) in &events {
        assert_eq!(event.lead_id, lead_id.to_string());
        assert!(event.anonymous);
        assert_eq!(event.source, "acme-site");
        let raw = String::from_utf8_lossy(&entry.raw()).to_lowercase();
        for canary in [
            "linda.linked",
            "acme-corp.example",
            "lindacanary",
            "5550163",
            "127.0.0.1",
            "uacanary",
            "pagetitlecanary",
            "lin.canary",
            "utm_source",
            &visitor.to_string(),
        ] {
            assert!(
                !raw.contains(canary),
                "{canary} is on the stream: {event:?}"
            );
        }
    }
    assert_eq!(events[1].1.url, "https://www.acme.example/pricing");
    assert_eq!(events[2].1.asset, "pricing-guide.pdf");

    // The browser's next page view is the lead's at once.
    beacon(
        &http,
        &site.activity,
        &json!({ "visitor_id": visitor, "kind": "page_visit", "url": SITE }),
    )
    .await?;
    eventually("a fourth, known activity", WAIT, || async {
        let events = activity_events(&suite).await?;
        Ok(events
            .get(3)
            .filter(|(_, event)| !event.anonymous && event.lead_id == lead_id.to_string())
            .map(|_| ()))
    })
    .await?;
    Ok(())
}

/// What the site shows after a form post (its source's thank-you page).
const THANKS_PAGE: &str = "<!doctype html><html><body><p id=\"thanks\">Thanks!</p></body></html>";

/// Serves `page` on `listener` for every request but `/thanks` (the favicon gets a 404),
/// until aborted.
fn serve_page(listener: tokio::net::TcpListener, page: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0_u8; 4096];
                while !request.windows(4).any(|window| window == b"\r\n\r\n") {
                    match socket.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                let (status, body) = if request.starts_with(b"GET /favicon") {
                    ("404 Not Found", String::new())
                } else if request.starts_with(b"GET /thanks") {
                    ("200 OK", THANKS_PAGE.to_owned())
                } else {
                    ("200 OK", page)
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _written = socket.write_all(answer.as_bytes()).await;
            });
        }
    })
}

/// Returns the name of an installed Chromium, if any.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            std::process::Command::new("which")
                .arg(name)
                .output()
                .is_ok_and(|output| output.status.success())
        })
}

/// Without a Chromium the browser tests say they were skipped, unless
/// `LEADFLOW_REQUIRE_CHROMIUM` is set (CI sets it after installing one): then they fail.
fn skip_without_chromium() -> anyhow::Result<()> {
    anyhow::ensure!(
        std::env::var_os("LEADFLOW_REQUIRE_CHROMIUM").is_none(),
        "LEADFLOW_REQUIRE_CHROMIUM is set but no chromium is installed (apt-get install chromium)"
    );
    eprintln!("SKIPPED: no chromium installed (apt-get install chromium) to run the snippet in");
    Ok(())
}

/// Loads `url` in headless `chromium` with a fresh profile, lets its scripts and timers run
/// (5 s of virtual time, network waits not counted), and returns the DOM it ended with.
async fn load_in_chromium(chromium: &str, url: &str) -> anyhow::Result<String> {
    let profile = std::env::temp_dir().join(format!("leadflow-chromium-{}", Uuid::new_v4()));
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                &format!("--user-data-dir={}", profile.display()),
                "--virtual-time-budget=5000",
                "--dump-dom",
                url,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("chromium did not finish within 60 s")??;
    let _removed = std::fs::remove_dir_all(&profile);
    anyhow::ensure!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_running_the_snippet_records_a_visit_and_fills_the_forms_visitor_field()
-> anyhow::Result<()> {
    let Some(chromium) = chromium() else {
        return skip_without_chromium();
    };
    let suite = Suite::start_capture().await?;
    let capture_base = suite.http_base()?;
    // The page's port is taken first, so its origin can be allowed before the form key exists.
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let page_addr = page_listener.local_addr()?;
    let page_origin = format!("http://{page_addr}");
    let site = endpoints(&suite, tracked_site(std::slice::from_ref(&page_origin), 0)).await?;
    let form_key = site.form.rsplit('/').next().context("form key")?.to_owned();
    let page = format!(
        r#"<!doctype html>
<html><head><title>Snippet test page</title>
<script>
  window.leadflow = window.leadflow || [];
  leadflow.push(["track", "download", {{asset: "browser-guide.pdf"}}]);
</script>
<script async src="{capture_base}/v1/snippet.js" data-form-key="{form_key}"></script>
</head><body>
<form id="contact" method="post" action="{form}"><input name="email"></form>
<form id="elsewhere" method="post" action="https://elsewhere.example/subscribe"><input name="email"></form>
</body></html>"#,
        form = site.form
    );
    let page_server = serve_page(page_listener, page);
    let dom = load_in_chromium(
        chromium,
        &format!("http://{page_addr}/landing.html?email=browser.canary%40mail.example"),
    )
    .await?;
    page_server.abort();
    anyhow::ensure!(dom.contains("contact"), "the page did not load: {dom}");

    let env = &suite.env;
    let activities = eventually("the browser's activities stored", WAIT, || async move {
        let rows = stored(&mut env.connect().await?).await?;
        Ok(Some(rows).filter(|rows| rows.len() >= 2))
    })
    .await?;
    let mut db = suite.env.connect().await?;
    let visitor = activities[0].0.context("a visitor id")?;
    let mut kinds: Vec<(String, String)> = activities
        .iter()
        .map(|(from, kind, url, owner)| {
            assert_eq!(
                (*from, *owner),
                (Some(visitor), None),
                "one anonymous visitor"
            );
            (kind.clone(), url.clone())
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            (
                "download".to_owned(),
                format!("http://{page_addr}/landing.html")
            ),
            (
                "page_visit".to_owned(),
                format!("http://{page_addr}/landing.html")
            ),
        ],
        "the page visit on load and the call queued before the snippet loaded"
    );
    let (title,): (String,) =
        sqlx::query_as("SELECT title FROM capture.activities WHERE kind = 'page_visit'")
            .fetch_one(&mut db)
            .await?;
    assert_eq!(title, "Snippet test page");

    // The form posting to capture got the visitor id; the other form did not.
    let hidden = format!(r#"name="lf_visitor" value="{visitor}""#);
    let contact = dom
        .split("id=\"contact\"")
        .nth(1)
        .and_then(|rest| rest.split("</form>").next())
        .context("the contact form in the DOM")?;
    assert!(contact.contains(&hidden), "{dom}");
    let elsewhere = dom
        .split("id=\"elsewhere\"")
        .nth(1)
        .and_then(|rest| rest.split("</form>").next())
        .context("the other form in the DOM")?;
    assert!(!elsewhere.contains("lf_visitor"), "{dom}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_submitting_a_form_gives_the_new_lead_the_visit_before_it() -> anyhow::Result<()>
{
    let Some(chromium) = chromium() else {
        return skip_without_chromium();
    };
    let suite = Suite::start_capture().await?;
    let capture_base = suite.http_base()?;
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let page_addr = page_listener.local_addr()?;
    let page_origin = format!("http://{page_addr}");
    let site = endpoints(
        &suite,
        SourceSettings {
            web_form: Some(WebForm {
                allowed_origins: vec![page_origin.clone()],
                thank_you_url: format!("{page_origin}/thanks"),
                ..WebForm::default()
            }),
            ..tracked_site(&[], 0)
        },
    )
    .await?;
    let form_key = site.form.rsplit('/').next().context("form key")?.to_owned();
    // Once the snippet has run (and recorded the visit), the page submits its form, as a person
    // would: a plain HTML post to capture, which the snippet gave the visitor id.
    let page = format!(
        r#"<!doctype html>
<html><head><title>Pricing</title>
<script async src="{capture_base}/v1/snippet.js" data-form-key="{form_key}"></script>
</head><body>
<form id="contact" method="post" action="{form}">
  <input name="email" value="browser.person@acme-corp.example">
</form>
<script>
  // An async script delays the load event: the snippet has run by then. (Submitting from a
  // timer instead leaves headless Chromium's --dump-dom waiting forever.)
  window.addEventListener("load", function () {{
    document.getElementById("contact").submit();
  }});
</script>
</body></html>"#,
        form = site.form
    );
    let page_server = serve_page(page_listener, page);
    let dom = load_in_chromium(chromium, &format!("http://{page_addr}/pricing")).await?;
    page_server.abort();
    assert!(
        dom.contains("id=\"thanks\""),
        "the form post was redirected to the site's thank-you page: {dom}"
    );

    let env = &suite.env;
    let (lead_id, visitor) = eventually("the lead, linked to the browser", WAIT, || async move {
        let mut db = env.connect().await?;
        let linked: Option<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT lead_id, visitor_id FROM capture.visitors WHERE lead_id IS NOT NULL",
        )
        .fetch_optional(&mut db)
        .await?;
        Ok(linked)
    })
    .await?;
    let mut db = suite.env.connect().await?;
    assert_eq!(
        stored(&mut db).await?,
        [(
            Some(visitor),
            "pricing_page_view".to_owned(),
            format!("http://{page_addr}/pricing"),
            Some(lead_id)
        )],
        "the visit before the form is the new lead's"
    );
    let events = eventually("the visit's lead.activity", WAIT, || async {
        let events = activity_events(&suite).await?;
        Ok(Some(events).filter(|events| !events.is_empty()))
    })
    .await?;
    let (_, event) = &events[0];
    assert_eq!(event.lead_id, lead_id.to_string());
    // The beacon leaves before the form post but on a connection of its own: it usually
    // arrives first (anonymous, handed over by the capture), else it finds the visitor linked.
    eprintln!(
        "the visit arrived {} the form post",
        if event.anonymous { "before" } else { "after" }
    );
    assert_eq!(
        event.kind(),
        leadflow_proto::events::v1::ActivityKind::PricingPageView
    );
    Ok(())
}
