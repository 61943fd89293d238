//! The web-to-lead HTTP endpoint: `POST /v1/forms/{form_key}` from a plain HTML form
//! (form-urlencoded) or a JS snippet (JSON), with per-source CORS, a honeypot and the source's
//! rate limit. Every post goes through the same [`Capturer`] as gRPC; this module only
//! translates HTTP to a capture request and the outcome back.
//!
//! Beside it, activity tracking: `GET /v1/snippet.js` serves the tracking snippet, and
//! `POST /v1/activity/{form_key}` takes its beacons (JSON, also as `text/plain` as
//! `navigator.sendBeacon` sends it), under the same form key, origins and rate limit.

pub mod activity;
pub mod form;
pub mod page;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use anyhow::Context;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use leadflow_platform::validation::FieldViolations;
use leadflow_proto::capture::v1::{CaptureOutcome, WebForm};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::domain::source::SourcePolicy;
use crate::error::CaptureError;
use crate::http::form::{Client, Mapped, Posted};
use crate::http::page::Problem;
use crate::service::{Capturer, Origin};
use crate::store::StoreError;

/// A source's web form, named by its public key.
pub const FORM_ROUTE: &str = "/v1/forms/{form_key}";
/// Where the tracking snippet of a source's site sends activities.
pub const ACTIVITY_ROUTE: &str = "/v1/activity/{form_key}";
/// The tracking snippet.
pub const SNIPPET_ROUTE: &str = "/v1/snippet.js";
/// The tracking snippet's source, served as is.
const SNIPPET: &str = include_str!("http/snippet.js");
/// How long browsers and caches may keep the snippet without asking again, in seconds: an
/// hour, so a new version reaches every site within one.
const SNIPPET_MAX_AGE: &str = "public, max-age=3600";
/// Largest accepted body; more is answered with 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Time allowed for one request, body included, so slow clients cannot hold connections.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Header carrying a client's idempotency key, as the gRPC metadata of the same name.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Form keys are `wf_` and 24 characters; anything much longer is not looked up.
const MAX_FORM_KEY_CHARS: usize = 64;
/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The bound web-form endpoint, not yet serving.
pub struct WebFormServer {
    listener: TcpListener,
    router: Router,
    local_addr: SocketAddr,
}

impl WebFormServer {
    /// Binds `addr` (port 0 picks a free port) for forms captured through `capturer`.
    pub async fn bind(
        addr: SocketAddr,
        capturer: Capturer,
        trust_forwarded_for: bool,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind http address {addr}"))?;
        let local_addr = listener.local_addr().context("read bound http address")?;
        Ok(Self {
            listener,
            router: router(capturer, trust_forwarded_for),
            local_addr,
        })
    }

    /// Returns the bound address (real even when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(self.listener, service)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "serve http");
        }
    }
}

/// State shared by the handlers.
struct WebForms {
    capturer: Capturer,
    trust_forwarded_for: bool,
}

/// Returns the web-form routes. Handlers need the peer address: serve them with
/// `into_make_service_with_connect_info::<SocketAddr>()`.
pub fn router(capturer: Capturer, trust_forwarded_for: bool) -> Router {
    let state = Arc::new(WebForms {
        capturer,
        trust_forwarded_for,
    });
    Router::new()
        .route(FORM_ROUTE, post(post_form).options(preflight))
        .route(ACTIVITY_ROUTE, post(post_activity).options(preflight))
        .route(SNIPPET_ROUTE, get(snippet))
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(close_if_body_unread))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // Failures are logged once where they are handled.
                .on_failure(()),
        )
}

/// Adds `Connection: close` to the answer to a request whose body was left unread (refused
/// before reading it, or cut at the size limit). hyper closes such a connection after the
/// answer unless the rest of the body is already buffered, but does not say so: a client
/// reusing the connection for its next post loses that post ("connection closed before message
/// completed").
async fn close_if_body_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let read_to_end = Arc::new(AtomicBool::new(false));
    let end_seen = Arc::clone(&read_to_end);
    let tracked = body
        .into_data_stream()
        .chain(futures::stream::poll_fn(move |_| {
            end_seen.store(true, Ordering::Relaxed);
            Poll::Ready(None)
        }));
    let request = Request::from_parts(parts, Body::from_stream(tracked));
    let mut response = next.run(request).await;
    if !read_to_end.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Returns the span of one request: method and path only (never the query or the body).
fn request_span(request: &Request) -> tracing::Span {
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
        otel.kind = "server",
    );
    leadflow_platform::telemetry::set_parent_from_headers(&span, request.headers());
    span
}

/// How the poster wants answers: a browser navigating (HTML, redirects) or a script (JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Form,
    Json,
}

/// Returns the kind of body by its `Content-Type`; `None` for anything else.
fn body_kind(headers: &HeaderMap) -> Option<Kind> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Some(Kind::Form)
    } else if essence.eq_ignore_ascii_case("application/json") {
        Some(Kind::Json)
    } else {
        None
    }
}

/// Returns whether an activity body may be read: JSON, as `application/json` or as
/// `text/plain` (what `navigator.sendBeacon` sends a string as, avoiding a preflight).
fn beacon_body(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json") || essence.eq_ignore_ascii_case("text/plain")
}

/// The snippet's entity tag: a hash of its text, so a new version is fetched at once.
fn snippet_etag() -> &'static str {
    static ETAG: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(SNIPPET.as_bytes());
        format!("\"{}\"", hex::encode(&digest[..12]))
    });
    ETAG.as_str()
}

/// What the `Origin` header says against a source's allowed origins.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cors {
    /// No `Origin`: not a cross-origin browser request (a server, curl, some same-origin posts).
    NoOrigin,
    /// An allowed origin, echoed back.
    Allowed(HeaderValue),
    Denied,
}

/// Checks the `Origin` header against `allowed_origins` (exact match).
fn check_origin(headers: &HeaderMap, allowed_origins: &[String]) -> Cors {
    match headers.get(header::ORIGIN) {
        None => Cors::NoOrigin,
        Some(origin)
            if allowed_origins
                .iter()
                .any(|allowed| allowed.as_bytes() == origin.as_bytes()) =>
        {
            Cors::Allowed(origin.clone())
        }
        Some(_) => Cors::Denied,
    }
}

/// Adds `Vary: Origin` (answers differ by origin) and, for an allowed origin, the headers that
/// let its scripts read the answer, `Retry-After` included.
fn with_cors(mut response: Response, allowed: Option<&HeaderValue>) -> Response {
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = allowed {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
    }
    response
}

/// Returns `{"error": message}` with `status`.
fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn unknown_form() -> Response {
    with_cors(json_error(StatusCode::NOT_FOUND, "unknown form"), None)
}

fn internal_error(kind: Kind) -> Response {
    match kind {
        Kind::Json => json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
        Kind::Form => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            page::failed(
                "Something went wrong",
                "We could not take your details just now. Please try again later.",
            ),
        ),
    }
}

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Returns whether `form_key` could be a key at all: keys are `wf_` and 24 letters and digits.
/// Anything else is not looked up; Postgres refuses a NUL in text, for one.
fn plausible_form_key(form_key: &str) -> bool {
    !form_key.is_empty()
        && form_key.len() <= MAX_FORM_KEY_CHARS
        && form_key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Returns the seconds to put in `Retry-After`: `wait` rounded up, at least 1.
fn retry_after_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Reads the idempotency key header: 1–128 visible ASCII characters when present.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, FieldViolations> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().unwrap_or_default().trim();
    if key.is_empty()
        || key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS
        || !key.chars().all(|c| c.is_ascii_graphic())
    {
        let mut violations = FieldViolations::new();
        violations.reject(
            IDEMPOTENCY_KEY,
            "INVALID",
            "must be 1–128 printable ASCII characters",
        );
        return Err(violations);
    }
    Ok(Some(key.to_owned()))
}

/// Why a body could not be taken.
#[derive(Debug)]
enum BodyError {
    TooLarge,
    Malformed,
    NotAnObject,
    /// Fields of a JSON body that are not text.
    NotText(FieldViolations),
}

impl IntoResponse for BodyError {
    fn into_response(self) -> Response {
        match self {
            BodyError::TooLarge => json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body too large (at most 64 KiB)",
            ),
            BodyError::Malformed => json_error(StatusCode::BAD_REQUEST, "malformed body"),
            BodyError::NotAnObject => json_error(
                StatusCode::BAD_REQUEST,
                "post a flat JSON object of strings",
            ),
            BodyError::NotText(violations) => rejected_json(&violations),
        }
    }
}

/// Classifies a body extractor's rejection: 413 stays 413, anything else is malformed.
fn unreadable(status: StatusCode) -> BodyError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        BodyError::TooLarge
    } else {
        BodyError::Malformed
    }
}

/// Turns a JSON body into posted fields: a flat object whose values are strings (numbers and
/// booleans are taken as their text, `null` as absent).
fn json_fields(body: Value) -> Result<Posted, BodyError> {
    let Value::Object(object) = body else {
        return Err(BodyError::NotAnObject);
    };
    let mut violations = FieldViolations::new();
    let mut pairs = Vec::with_capacity(object.len());
    for (name, value) in object {
        let text = match value {
            Value::String(text) => text,
            Value::Bool(flag) => flag.to_string(),
            Value::Number(number) => number.to_string(),
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                violations.reject(name, "INVALID", "must be a string");
                continue;
            }
        };
        pairs.push((name, text));
    }
    if !violations.is_empty() {
        return Err(BodyError::NotText(violations));
    }
    Ok(Posted::from_pairs(pairs))
}

/// Reads the posted fields of a body of `kind`.
async fn read_posted(kind: Kind, request: Request) -> Result<Posted, BodyError> {
    // The bytes, then our own parsing: axum's `Form` and `Json` check the content type again by
    // rules of their own (`Form` case-sensitively, `Json` by a strict parse) and refused, as
    // malformed, bodies `body_kind` had taken (`Application/X-WWW-Form-Urlencoded`).
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| unreadable(rejection.status()))?;
    match kind {
        Kind::Form => Ok(Posted::from_pairs(
            url::form_urlencoded::parse(&bytes).into_owned(),
        )),
        Kind::Json => {
            let body: Value = serde_json::from_slice(&bytes).map_err(|_| BodyError::Malformed)?;
            json_fields(body)
        }
    }
}

fn rejected_json(violations: &FieldViolations) -> Response {
    let violations: Vec<Value> = violations
        .violations()
        .iter()
        .map(|violation| {
            json!({
                "field": violation.field,
                "reason": violation.reason,
                "description": violation.description,
            })
        })
        .collect();
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({ "error": "rejected", "violations": violations })),
    )
        .into_response()
}

/// Returns how a person knows a rejected field: the name the form posted it under, else ours.
fn field_label(field: &str, mapped: &Mapped) -> String {
    if let Some(posted_name) = mapped.posted_names.get(field) {
        return posted_name.clone();
    }
    match field {
        "consent.channels" => "consent".to_owned(),
        "consent.disclosure_text" => "consent_text".to_owned(),
        other => other.rsplit('.').next().unwrap_or(other).to_owned(),
    }
}

/// Answers a rejected post: 422 with every problem, as JSON or as a page.
fn rejected(
    kind: Kind,
    violations: &FieldViolations,
    mapped: &Mapped,
    posted: &Posted,
) -> Response {
    match kind {
        Kind::Json => rejected_json(violations),
        Kind::Form => {
            let problems: Vec<Problem> = violations
                .violations()
                .iter()
                .map(|violation| Problem {
                    field: field_label(&violation.field, mapped),
                    value: mapped
                        .posted_names
                        .get(&violation.field)
                        .and_then(|name| posted.value(name))
                        .map(str::to_owned),
                    description: violation.description.clone(),
                })
                .collect();
            html(StatusCode::UNPROCESSABLE_ENTITY, page::rejected(&problems))
        }
    }
}

/// Answers an accepted post: 201 JSON, or for a form a 303 to the thank-you page (a plain
/// thank-you when the source names none).
fn accepted(kind: Kind, form: &WebForm, lead_id: &str, outcome: &str) -> Response {
    match kind {
        Kind::Json => (
            StatusCode::CREATED,
            Json(json!({ "lead_id": lead_id, "outcome": outcome })),
        )
            .into_response(),
        Kind::Form => match HeaderValue::from_str(form.thank_you_url.trim()) {
            Ok(location) if !location.is_empty() => {
                (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
            }
            _ => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                page::THANK_YOU,
            )
                .into_response(),
        },
    }
}

/// Answers a post that was read but not accepted, with nothing to correct in its fields.
fn refused(kind: Kind, status: StatusCode, code: &str, title: &str, reason: &str) -> Response {
    match kind {
        Kind::Json => json_error(status, code),
        Kind::Form => html(status, page::failed(title, reason)),
    }
}

impl WebForms {
    /// Records one beacon whose origin was checked.
    async fn record_activity(&self, source: &SourcePolicy, request: Request) -> Response {
        if !beacon_body(request.headers()) {
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "post a JSON object, as application/json or text/plain",
            );
        }
        let posted = match read_posted(Kind::Json, request).await {
            Ok(posted) => posted,
            Err(unread) => return unread.into_response(),
        };
        let source_id = source.source_id.as_str();
        let beacon = activity::activity_request(source_id, &posted);
        let origin = Origin {
            caller: format!("form:{source_id}"),
            unmask: false,
            caller_rate_per_minute: 0,
        };
        let log = |outcome: &str| tracing::info!(source = %source_id, outcome, "activity post");
        match self
            .capturer
            .record_activity(&origin, &beacon.request, true)
            .await
        {
            Ok(_) if beacon.violations.is_empty() => StatusCode::NO_CONTENT.into_response(),
            Ok(_) => {
                // Cannot be: without a kind or a visitor the request is refused as well.
                tracing::error!(source = %source_id, "an activity refused here was recorded");
                rejected_json(&beacon.violations)
            }
            Err(CaptureError::Rejected(violations)) => {
                log("rejected");
                rejected_json(&beacon.all_violations(violations))
            }
            Err(CaptureError::Store(StoreError::ActivityIdReused)) => {
                log("rejected");
                let mut violations = FieldViolations::new();
                violations.reject(
                    "activity_id",
                    "ACTIVITY_ID_REUSED",
                    "was recorded before with a different activity",
                );
                rejected_json(&violations)
            }
            Err(CaptureError::RateLimited(wait)) => {
                log("rate_limited");
                let seconds = retry_after_seconds(wait);
                let mut answer = json_error(StatusCode::TOO_MANY_REQUESTS, "rate limited");
                answer
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                answer
            }
            Err(err) => {
                tracing::error!(source = %source_id, error = format!("{err:#}"), "activity post failed");
                internal_error(Kind::Json)
            }
        }
    }

    /// Returns the source whose form has `form_key`, or the answer when there is none.
    async fn web_form(&self, form_key: &str) -> Result<(SourcePolicy, WebForm), Response> {
        if !plausible_form_key(form_key) {
            return Err(unknown_form());
        }
        match self.capturer.sources().by_form_key(form_key).await {
            Ok(Some(stored)) => {
                let Some(form) = stored.policy.settings.web_form.clone() else {
                    return Err(unknown_form());
                };
                Ok((stored.policy, form))
            }
            Ok(None) => Err(unknown_form()),
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "look up web form");
                Err(with_cors(internal_error(Kind::Json), None))
            }
        }
    }

    /// Returns the source and form of `form_key` and the origin to allow, or the answer
    /// (404, or 403 for an origin the form does not allow) when the post goes no further.
    /// `what` names the post in the log.
    async fn checked_form(
        &self,
        form_key: &str,
        headers: &HeaderMap,
        what: &'static str,
    ) -> Result<(SourcePolicy, WebForm, Option<HeaderValue>), Response> {
        let (source, form) = self.web_form(form_key).await?;
        match check_origin(headers, &form.allowed_origins) {
            Cors::Denied => {
                tracing::info!(source = %source.source_id, outcome = "origin_denied", "{what}");
                Err(with_cors(
                    json_error(StatusCode::FORBIDDEN, "origin not allowed"),
                    None,
                ))
            }
            Cors::Allowed(origin) => Ok((source, form, Some(origin))),
            Cors::NoOrigin => Ok((source, form, None)),
        }
    }

    /// Captures one post whose origin was checked.
    async fn capture(
        &self,
        source: &SourcePolicy,
        form: &WebForm,
        peer: SocketAddr,
        request: Request,
    ) -> Response {
        let Some(kind) = body_kind(request.headers()) else {
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "post application/x-www-form-urlencoded or application/json",
            );
        };
        let headers = request.headers().clone();
        let posted = match read_posted(kind, request).await {
            Ok(posted) => posted,
            Err(unread) => return unread.into_response(),
        };
        let source_id = source.source_id.as_str();
        let honeypot = form.honeypot_field.trim();
        if !honeypot.is_empty() && posted.value(honeypot).is_some() {
            // Bots learn nothing: the answer is an accepted one, with a lead id that never was.
            tracing::info!(source = %source_id, "web form honeypot filled; post dropped");
            let fake_id = uuid::Uuid::now_v7().to_string();
            return accepted(kind, form, &fake_id, "created");
        }
        let client = Client::from_request(peer, &headers, self.trust_forwarded_for);
        let mapped =
            form::capture_request(source_id, &source.settings.field_mapping, &posted, &client);
        let key = match idempotency_key(&headers) {
            Ok(key) => key,
            Err(violations) => return rejected(kind, &violations, &mapped, &posted),
        };
        let origin = Origin {
            caller: format!("form:{source_id}"),
            unmask: false,
            caller_rate_per_minute: 0,
        };
        match self
            .capturer
            .capture(&origin, &mapped.request, key, true)
            .await
        {
            Ok(answer) => {
                let outcome = match answer.outcome() {
                    CaptureOutcome::Merged => "merged",
                    CaptureOutcome::InReview => "in_review",
                    _ => "created",
                };
                // A held capture names no lead: the lead it matched stays private here.
                let lead_id = answer
                    .lead
                    .filter(|_| outcome != "in_review")
                    .map(|lead| lead.lead_id)
                    .unwrap_or_default();
                tracing::info!(source = %source_id, outcome, lead_id = %lead_id, "web form post");
                accepted(kind, form, &lead_id, outcome)
            }
            Err(err) => failure(kind, source_id, err, &mapped, &posted),
        }
    }
}

/// Answers a capture that failed, logging the outcome (never the person's data).
fn failure(
    kind: Kind,
    source_id: &str,
    err: CaptureError,
    mapped: &Mapped,
    posted: &Posted,
) -> Response {
    let log = |outcome: &str| tracing::info!(source = %source_id, outcome, "web form post");
    match err {
        CaptureError::Rejected(violations) => {
            log("rejected");
            rejected(kind, &violations, mapped, posted)
        }
        CaptureError::Store(StoreError::IdempotencyMismatch) => {
            log("rejected");
            let mut violations = FieldViolations::new();
            violations.reject(
                IDEMPOTENCY_KEY,
                "IDEMPOTENCY_KEY_REUSED",
                "was used before with a different request",
            );
            rejected(kind, &violations, mapped, posted)
        }
        CaptureError::Store(StoreError::Duplicate(_)) => {
            // The existing lead's id stays private: this endpoint is public.
            log("duplicate");
            refused(
                kind,
                StatusCode::CONFLICT,
                "duplicate",
                "Already received",
                "We already have your details. Thank you!",
            )
        }
        CaptureError::Store(StoreError::Suppressed) => {
            log("suppressed");
            refused(
                kind,
                StatusCode::CONFLICT,
                "suppressed",
                "Not accepted",
                "These details cannot be accepted.",
            )
        }
        CaptureError::RateLimited(wait) => {
            log("rate_limited");
            let seconds = retry_after_seconds(wait);
            let mut answer = refused(
                kind,
                StatusCode::TOO_MANY_REQUESTS,
                "rate limited",
                "Too many requests",
                &format!("Please try again in {seconds} seconds."),
            );
            answer
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            answer
        }
        CaptureError::Store(
            StoreError::NotFound
            | StoreError::ActivityIdReused
            | StoreError::Missing(_)
            | StoreError::FailedPrecondition(_)
            | StoreError::Replay
            | StoreError::Internal(_),
        )
        | CaptureError::Internal(_) => {
            tracing::error!(source = %source_id, error = format!("{err:#}"), "web form capture failed");
            internal_error(kind)
        }
    }
}

/// `POST /v1/forms/{form_key}`.
async fn post_form(
    State(forms): State<Arc<WebForms>>,
    Path(form_key): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (source, form, allowed) = match forms
        .checked_form(&form_key, request.headers(), "web form post")
        .await
    {
        Ok(checked) => checked,
        Err(answer) => return answer,
    };
    let answer = forms.capture(&source, &form, peer, request).await;
    with_cors(answer, allowed.as_ref())
}

/// `POST /v1/activity/{form_key}`: one activity from the tracking snippet. Answered `204`
/// whatever became of it (recorded, anonymous, or dropped for an erased person): the answer
/// tells a public caller nothing about anyone.
async fn post_activity(
    State(forms): State<Arc<WebForms>>,
    Path(form_key): Path<String>,
    request: Request,
) -> Response {
    let (source, _form, allowed) = match forms
        .checked_form(&form_key, request.headers(), "activity post")
        .await
    {
        Ok(checked) => checked,
        Err(answer) => return answer,
    };
    let answer = forms.record_activity(&source, request).await;
    with_cors(answer, allowed.as_ref())
}

/// `GET /v1/snippet.js`: the tracking snippet, cacheable for an hour and revalidated by its
/// entity tag; loadable from any site (it is public, and `integrity` needs CORS).
async fn snippet(headers: HeaderMap) -> Response {
    let etag = snippet_etag();
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let status = if cached {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let headers = [
        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
        (header::CACHE_CONTROL, SNIPPET_MAX_AGE),
        (header::ETAG, etag),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            "cross-origin",
        ),
    ];
    if cached {
        return (status, headers).into_response();
    }
    (status, headers, SNIPPET).into_response()
}

/// `OPTIONS /v1/forms/{form_key}` (and `/v1/activity/{form_key}`): the CORS preflight of a
/// script posting JSON.
async fn preflight(
    State(forms): State<Arc<WebForms>>,
    Path(form_key): Path<String>,
    headers: HeaderMap,
) -> Response {
    let form = match forms.web_form(&form_key).await {
        Ok((_, form)) => form,
        Err(answer) => return answer,
    };
    match check_origin(&headers, &form.allowed_origins) {
        Cors::Denied => with_cors(
            json_error(StatusCode::FORBIDDEN, "origin not allowed"),
            None,
        ),
        Cors::NoOrigin => with_cors(
            (StatusCode::NO_CONTENT, [(header::ALLOW, "OPTIONS, POST")]).into_response(),
            None,
        ),
        Cors::Allowed(origin) => {
            let answer = (
                StatusCode::NO_CONTENT,
                [
                    (header::ACCESS_CONTROL_ALLOW_METHODS, "POST"),
                    (
                        header::ACCESS_CONTROL_ALLOW_HEADERS,
                        "content-type, idempotency-key",
                    ),
                    (header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE),
                ],
            )
                .into_response();
            with_cors(answer, Some(&origin))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn content_types_name_the_body_kind() {
        let kind = |value| body_kind(&headers(&[(header::CONTENT_TYPE, value)]));
        assert_eq!(kind("application/x-www-form-urlencoded"), Some(Kind::Form));
        assert_eq!(
            kind("application/x-www-form-urlencoded; charset=UTF-8"),
            Some(Kind::Form)
        );
        assert_eq!(kind("Application/JSON"), Some(Kind::Json));
        assert_eq!(kind("application/json;charset=utf-8"), Some(Kind::Json));
        assert_eq!(kind("multipart/form-data; boundary=x"), None);
        assert_eq!(kind("text/plain"), None);
        assert_eq!(body_kind(&HeaderMap::new()), None);
    }

    #[test]
    fn beacons_are_json_whether_declared_as_json_or_as_text() {
        let beacon = |value| beacon_body(&headers(&[(header::CONTENT_TYPE, value)]));
        assert!(beacon("text/plain;charset=UTF-8"));
        assert!(beacon("Text/Plain"));
        assert!(beacon("application/json"));
        assert!(!beacon("application/x-www-form-urlencoded"));
        assert!(!beacon("multipart/form-data; boundary=x"));
        assert!(!beacon_body(&HeaderMap::new()));
    }

    #[test]
    fn the_snippet_is_tagged_by_its_content() {
        let etag = snippet_etag();
        assert!(
            etag.starts_with('"') && etag.ends_with('"') && etag.len() == 26,
            "{etag}"
        );
        assert!(SNIPPET.contains("lf_visitor") && SNIPPET.contains("/v1/activity/"));
    }

    #[test]
    fn origins_match_exactly() {
        let allowed = vec![
            "https://www.example.com".to_owned(),
            "http://localhost:3000".to_owned(),
        ];
        let check = |origin| check_origin(&headers(&[(header::ORIGIN, origin)]), &allowed);
        assert_eq!(
            check("https://www.example.com"),
            Cors::Allowed(HeaderValue::from_static("https://www.example.com"))
        );
        assert_eq!(check("https://www.example.com.evil.test"), Cors::Denied);
        assert_eq!(check("https://example.com"), Cors::Denied);
        assert_eq!(check("http://www.example.com"), Cors::Denied);
        assert_eq!(check("null"), Cors::Denied);
        assert_eq!(check_origin(&HeaderMap::new(), &allowed), Cors::NoOrigin);
        assert_eq!(
            check_origin(&headers(&[(header::ORIGIN, "https://a.test")]), &[]),
            Cors::Denied
        );
    }

    #[test]
    fn only_plausible_form_keys_are_looked_up() {
        assert!(plausible_form_key("wf_RpR4KFK8gSXVHKk1Zgo7PX4a"));
        assert!(plausible_form_key("wf_a-b"));
        for implausible in [
            "",
            "wf_abc\0",
            "\0",
            "wf_abc def",
            "wf_abc/../x",
            "wf_ä",
            "wf_abc%00",
            &"k".repeat(MAX_FORM_KEY_CHARS + 1),
        ] {
            assert!(!plausible_form_key(implausible), "{implausible:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(0)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(29_001)), 30);
        assert_eq!(retry_after_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        let key = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                IDEMPOTENCY_KEY,
                HeaderValue::from_str(value).expect("header"),
            );
            idempotency_key(&headers)
        };
        assert_eq!(key(" abc-123 "), Ok(Some("abc-123".to_owned())));
        assert!(key("").is_err());
        assert!(key("has space").is_err());
        assert_eq!(key(&"k".repeat(128)), Ok(Some("k".repeat(128))));
        assert!(key(&"k".repeat(129)).is_err());
        assert_eq!(idempotency_key(&HeaderMap::new()), Ok(None));
    }

    fn post(content_type: &'static str, body: &'static str) -> Request {
        let mut request = Request::new(axum::body::Body::from(body));
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        request
    }

    #[tokio::test]
    async fn bodies_are_read_under_any_spelling_of_their_content_type() {
        for content_type in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded",
            "APPLICATION/X-WWW-FORM-URLENCODED; charset=UTF-8",
        ] {
            let request = post(content_type, "email=a%40example.com&bad=%zz%e9");
            let kind = body_kind(request.headers()).expect("a form");
            let posted = read_posted(kind, request).await.expect(content_type);
            assert_eq!(posted.value("email"), Some("a@example.com"));
            assert_eq!(
                posted.value("bad"),
                Some("%zz\u{fffd}"),
                "decoded leniently"
            );
        }
        for content_type in ["application/json", "Application/JSON", "application/json;"] {
            let request = post(content_type, r#"{"email": "a@example.com"}"#);
            let kind = body_kind(request.headers()).expect("JSON");
            let posted = read_posted(kind, request).await.expect(content_type);
            assert_eq!(posted.value("email"), Some("a@example.com"));
        }
        for malformed in ["", "{\"email\": ", "[]", "{\"a\": 1e400}"] {
            let request = post("application/json", malformed);
            let unread = read_posted(Kind::Json, request).await.expect_err(malformed);
            assert_eq!(
                unread.into_response().status(),
                StatusCode::BAD_REQUEST,
                "{malformed}"
            );
        }
    }

    #[test]
    fn json_bodies_are_flat_objects_of_text() {
        let posted = json_fields(json!({
            "email": " a@example.com ",
            "consent_email": true,
            "phone": 4155550199_u64,
            "company": null,
        }))
        .expect("flat object");
        assert_eq!(posted.value("email"), Some("a@example.com"));
        assert_eq!(posted.value("consent_email"), Some("true"));
        assert_eq!(posted.value("phone"), Some("4155550199"));
        assert_eq!(posted.value("company"), None);

        let nested = json_fields(json!({ "consent": { "email": true } })).expect_err("nested");
        assert_eq!(
            nested.into_response().status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let list = json_fields(json!(["a@example.com"])).expect_err("not an object");
        assert_eq!(list.into_response().status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn rejected_fields_are_named_as_the_form_posted_them() {
        let mapped = form::capture_request(
            "web-contact",
            &[("E-Mail".to_owned(), "email".to_owned())].into(),
            &Posted::from_pairs([("E-Mail".to_owned(), "nope".to_owned())]),
            &Client {
                ip: std::net::Ipv4Addr::LOCALHOST.into(),
                user_agent: String::new(),
                referer: String::new(),
            },
        );
        assert_eq!(field_label("lead.email", &mapped), "E-Mail");
        assert_eq!(field_label("lead.phone", &mapped), "phone");
        assert_eq!(field_label("consent.channels", &mapped), "consent");
        assert_eq!(
            field_label("consent.disclosure_text", &mapped),
            "consent_text"
        );
        assert_eq!(field_label(IDEMPOTENCY_KEY, &mapped), IDEMPOTENCY_KEY);
    }
}
