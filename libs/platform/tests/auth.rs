//! API-key authentication and authorization against real Postgres, through a real tonic
//! server on a loopback socket (reliability §1.6, §4 R12). Each test has a database of its own.

#[path = "auth/database.rs"]
mod database;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use database::{SCHEMA, TestDatabase};
use leadflow_platform::auth::access::{
    HEALTH_CHECK, HEALTH_WATCH, REFLECTION_V1, REFLECTION_V1ALPHA,
};
use leadflow_platform::auth::{
    Access, AuthLayer, AuthSettings, Authenticator, Caller, KeyError, KeyStore, Pepper, RPC_ACCESS,
    Scope, StoreError, StoredKeyInfo,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::codegen::http;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, ServiceExt};

const PEPPER: &str = "test-pepper-0123456789-abcdefghijklmnopqrstuvwxyz";
const ENV: &str = "test";
/// Upper bound of every wait: a bug fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(10);
/// The one message of every refused key but malformed and checksum.
const INVALID_KEY: &str = "invalid or missing api key";

/// The table the test server decides with: health `Check` needs `leads:read`, `Watch` is
/// missing (so denied), reflection is open.
static TEST_TABLE: &[(&str, Access)] = &[
    (HEALTH_CHECK, Access::Scope(Scope::LeadsRead)),
    (REFLECTION_V1, Access::Open),
    (REFLECTION_V1ALPHA, Access::Open),
];

fn settings(reflection_open: bool, cache_ttl: Duration) -> AuthSettings {
    AuthSettings {
        table: TEST_TABLE,
        reflection_open,
        cache_ttl,
        ..AuthSettings::default()
    }
}

/// A test database with its key store.
struct Keys {
    db: TestDatabase,
    store: KeyStore,
}

impl Keys {
    async fn new() -> Self {
        let db = TestDatabase::new().await;
        let pepper = Pepper::new(SecretString::from(PEPPER)).expect("pepper");
        let store = KeyStore::new(db.pool.clone(), SCHEMA, pepper);
        Self { db, store }
    }

    /// Creates a key holding `scopes`; returns its facts and plaintext.
    async fn create(&self, scopes: &[Scope]) -> (StoredKeyInfo, String) {
        self.create_expiring(scopes, None).await
    }

    async fn create_expiring(
        &self,
        scopes: &[Scope],
        expires_at: Option<chrono::DateTime<Utc>>,
    ) -> (StoredKeyInfo, String) {
        let (info, plaintext) = self
            .store
            .create("test key", ENV, scopes, expires_at)
            .await
            .expect("create key");
        (info, plaintext.expose_secret().to_owned())
    }

    fn authenticator(&self, settings: AuthSettings) -> Authenticator {
        Authenticator::with_settings(self.store.clone(), settings)
    }
}

/// How a test call presents its key.
#[derive(Debug, Clone)]
enum Credential {
    None,
    Bearer(String),
    ApiKey(String),
    Authorization(String),
}

impl Credential {
    fn apply<T>(&self, request: &mut tonic::Request<T>) {
        let (name, value) = match self {
            Credential::None => return,
            Credential::Bearer(key) => ("authorization", format!("Bearer {key}")),
            Credential::ApiKey(key) => ("x-api-key", key.clone()),
            Credential::Authorization(value) => ("authorization", value.clone()),
        };
        let value = MetadataValue::try_from(value.as_str()).expect("ascii metadata");
        request.metadata_mut().insert(name, value);
    }

    fn text(&self) -> &str {
        match self {
            Credential::None => "",
            Credential::Bearer(text)
            | Credential::ApiKey(text)
            | Credential::Authorization(text) => text,
        }
    }
}

/// Starts a tonic server on 127.0.0.1:0 serving health and reflection (v1 and v1alpha) behind
/// an [`AuthLayer`]; returns a channel to it. The server lives as long as the test's runtime.
async fn serve(authenticator: Authenticator) -> Channel {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let (_reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("build reflection v1");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("build reflection v1alpha");
    let server = tonic::transport::Server::builder()
        .layer(AuthLayer::new(authenticator))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(async move {
        if let Err(err) = server.await {
            eprintln!("test server stopped: {err}");
        }
    });
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .timeout(DEADLINE)
        .connect()
        .await
        .expect("connect to the test server")
}

/// Calls `grpc.health.v1.Health/Check` presenting `credential`.
async fn check(channel: &Channel, credential: &Credential) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    credential.apply(&mut request);
    let response = HealthClient::new(channel.clone()).check(request).await?;
    Ok(response.into_inner().status())
}

/// Calls `grpc.health.v1.Health/Watch` and reads its first answer.
async fn watch(channel: &Channel, credential: &Credential) -> Result<ServingStatus, tonic::Status> {
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    credential.apply(&mut request);
    let mut stream = HealthClient::new(channel.clone())
        .watch(request)
        .await?
        .into_inner();
    let first = stream
        .next()
        .await
        .ok_or_else(|| tonic::Status::internal("watch ended"))??;
    Ok(first.status())
}

/// Asks v1 reflection to list services; returns how many it named.
async fn reflect_v1(channel: &Channel, credential: &Credential) -> Result<usize, tonic::Status> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};

    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::iter([question]));
    credential.apply(&mut request);
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(request)
        .await?
        .into_inner();
    let answer: ServerReflectionResponse = answers
        .next()
        .await
        .ok_or_else(|| tonic::Status::internal("reflection ended"))??;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.len()),
        other => Err(tonic::Status::internal(format!("unexpected {other:?}"))),
    }
}

/// Asks v1alpha reflection to list services; returns how many it named.
async fn reflect_v1alpha(
    channel: &Channel,
    credential: &Credential,
) -> Result<usize, tonic::Status> {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};

    let question = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut request = tonic::Request::new(tokio_stream::iter([question]));
    credential.apply(&mut request);
    let mut answers = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(request)
        .await?
        .into_inner();
    let answer: ServerReflectionResponse = answers
        .next()
        .await
        .ok_or_else(|| tonic::Status::internal("reflection ended"))??;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => Ok(list.service.len()),
        other => Err(tonic::Status::internal(format!("unexpected {other:?}"))),
    }
}

fn code<T: std::fmt::Debug>(result: &Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Returns `plaintext` with its last character replaced by another base62 character.
fn flip_last(plaintext: &str) -> String {
    let (head, last) = plaintext.split_at(plaintext.len() - 1);
    let replacement = if last == "0" { "1" } else { "0" };
    format!("{head}{replacement}")
}

/// Returns a well-formed key (right checksum) with `info`'s id and another secret.
fn with_other_secret(info: &StoredKeyInfo) -> String {
    let other = leadflow_platform::auth::generate(ENV).expect("generate");
    leadflow_platform::auth::assemble(&info.env, &info.key_id, other.secret.expose_secret())
        .expect("assemble")
        .expose_secret()
        .to_owned()
}

/// Returns `plaintext` rebuilt for environment `env` (id and secret kept, checksum redone).
fn in_env(plaintext: &str, env: &str) -> String {
    let parsed = leadflow_platform::auth::parse(plaintext).expect("parse");
    leadflow_platform::auth::assemble(env, &parsed.key_id, parsed.secret.expose_secret())
        .expect("assemble")
        .expose_secret()
        .to_owned()
}

/// Polls `probe` every 25 ms until it returns `true`; panics naming `what` after [`DEADLINE`].
async fn wait_until<F, Fut>(what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if probe().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn every_kind_of_key_gets_its_answer_over_a_real_socket() {
    let keys = Keys::new().await;
    let (reader, reader_key) = keys.create(&[Scope::LeadsRead]).await;
    let (_, writer_key) = keys.create(&[Scope::LeadsWrite]).await;
    let (_, pii_key) = keys.create(&[Scope::PiiRead]).await;
    let (_, admin_key) = keys.create(&[Scope::Admin]).await;
    let (_, many_key) = keys
        .create(&[Scope::LeadsWrite, Scope::LeadsRead, Scope::PiiRead])
        .await;
    let (revoked, revoked_key) = keys.create(&[Scope::LeadsRead]).await;
    assert!(keys.store.revoke(&revoked.key_id).await.expect("revoke"));
    let (_, expired_key) = keys
        .create_expiring(
            &[Scope::LeadsRead],
            Some(Utc::now() - chrono::Duration::minutes(1)),
        )
        .await;
    let (_, future_key) = keys
        .create_expiring(
            &[Scope::LeadsRead],
            Some(Utc::now() + chrono::Duration::hours(1)),
        )
        .await;
    let unknown_key = leadflow_platform::auth::generate(ENV)
        .expect("generate")
        .plaintext
        .expose_secret()
        .to_owned();
    let channel = serve(keys.authenticator(settings(true, Duration::from_secs(30)))).await;

    use Credential::{ApiKey, Authorization, Bearer};
    let cases: Vec<(&str, Credential, Code, Option<&str>)> = vec![
        (
            "no key",
            Credential::None,
            Code::Unauthenticated,
            Some(INVALID_KEY),
        ),
        (
            "malformed",
            Bearer("lf_test_nope".to_owned()),
            Code::Unauthenticated,
            Some("malformed api key"),
        ),
        (
            "not a bearer token",
            Authorization(format!("Basic {reader_key}")),
            Code::Unauthenticated,
            Some("malformed api key"),
        ),
        (
            "bad checksum",
            Bearer(flip_last(&reader_key)),
            Code::Unauthenticated,
            Some("api key checksum mismatch"),
        ),
        (
            "unknown id",
            Bearer(unknown_key),
            Code::Unauthenticated,
            Some(INVALID_KEY),
        ),
        (
            "wrong secret, right id",
            Bearer(with_other_secret(&reader)),
            Code::Unauthenticated,
            Some(INVALID_KEY),
        ),
        (
            "another environment",
            Bearer(in_env(&reader_key, "live")),
            Code::Unauthenticated,
            Some(INVALID_KEY),
        ),
        (
            "revoked",
            Bearer(revoked_key),
            Code::Unauthenticated,
            Some(INVALID_KEY),
        ),
        (
            "expired",
            Bearer(expired_key),
            Code::Unauthenticated,
            Some(INVALID_KEY),
        ),
        (
            "without the scope",
            Bearer(writer_key),
            Code::PermissionDenied,
            None,
        ),
        (
            "pii:read only",
            Bearer(pii_key),
            Code::PermissionDenied,
            None,
        ),
        ("with the scope", Bearer(reader_key.clone()), Code::Ok, None),
        (
            "with the scope in x-api-key",
            ApiKey(reader_key.clone()),
            Code::Ok,
            None,
        ),
        ("expiring later", Bearer(future_key), Code::Ok, None),
        ("several scopes", Bearer(many_key), Code::Ok, None),
        ("admin", Bearer(admin_key), Code::Ok, None),
    ];
    let mut failures = Vec::new();
    for (name, credential, expected, message) in &cases {
        let answer = check(&channel, credential).await;
        if code(&answer) != *expected {
            failures.push(format!("{name}: expected {expected:?}, got {answer:?}"));
            continue;
        }
        match &answer {
            Ok(status) => assert_eq!(*status, ServingStatus::Serving, "{name}"),
            Err(status) => {
                if let Some(message) = message {
                    assert_eq!(status.message(), *message, "{name}");
                }
                let text = credential.text();
                if !text.is_empty() {
                    assert!(
                        !status.message().contains(text),
                        "{name}: the status echoes the key"
                    );
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_path_missing_from_the_table_is_denied_even_to_admin() {
    let keys = Keys::new().await;
    let (_, admin_key) = keys.create(&[Scope::Admin]).await;
    let channel = serve(keys.authenticator(settings(true, Duration::from_secs(30)))).await;

    for credential in [Credential::None, Credential::Bearer(admin_key)] {
        let answer = watch(&channel, &credential).await;
        assert_eq!(
            code(&answer),
            Code::PermissionDenied,
            "{credential:?}: {answer:?}"
        );
    }
}

#[tokio::test]
async fn reflection_is_open_when_the_flag_says_so() {
    let keys = Keys::new().await;
    let channel = serve(keys.authenticator(settings(true, Duration::from_secs(30)))).await;

    let services = reflect_v1(&channel, &Credential::None)
        .await
        .expect("v1 reflection without a key");
    assert!(services >= 1, "{services} services");
    reflect_v1alpha(&channel, &Credential::None)
        .await
        .expect("v1alpha reflection without a key");
}

#[tokio::test]
async fn closed_reflection_needs_an_admin_key() {
    let keys = Keys::new().await;
    let (_, reader_key) = keys.create(&[Scope::LeadsRead]).await;
    let (_, admin_key) = keys.create(&[Scope::Admin]).await;
    let channel = serve(keys.authenticator(settings(false, Duration::from_secs(30)))).await;

    let cases = [
        (Credential::None, Code::Unauthenticated),
        (Credential::Bearer(reader_key), Code::PermissionDenied),
        (Credential::Bearer(admin_key), Code::Ok),
    ];
    for (credential, expected) in &cases {
        let v1 = reflect_v1(&channel, credential).await;
        assert_eq!(code(&v1), *expected, "v1 {credential:?}: {v1:?}");
        let v1alpha = reflect_v1alpha(&channel, credential).await;
        assert_eq!(
            code(&v1alpha),
            *expected,
            "v1alpha {credential:?}: {v1alpha:?}"
        );
    }
}

#[tokio::test]
async fn health_is_open_under_the_default_table() {
    let keys = Keys::new().await;
    let channel = serve(keys.authenticator(AuthSettings::default())).await;

    let checked = check(&channel, &Credential::None).await;
    assert_eq!(
        checked.expect("check without a key"),
        ServingStatus::Serving
    );
    let watched = watch(&channel, &Credential::None).await;
    assert_eq!(
        watched.expect("watch without a key"),
        ServingStatus::Serving
    );
}

#[tokio::test]
async fn a_revoked_key_is_served_from_the_cache_until_forgotten() {
    let keys = Keys::new().await;
    let (info, key) = keys.create(&[Scope::LeadsRead]).await;
    let authenticator = keys.authenticator(settings(true, Duration::from_secs(600)));
    let channel = serve(authenticator.clone()).await;
    let credential = Credential::Bearer(key);
    check(&channel, &credential)
        .await
        .expect("before revocation");

    assert!(keys.store.revoke(&info.key_id).await.expect("revoke"));
    check(&channel, &credential)
        .await
        .expect("cached for the ttl after revocation");

    authenticator.forget(&info.key_id).await;
    let answer = check(&channel, &credential).await;
    assert_eq!(code(&answer), Code::Unauthenticated, "{answer:?}");
}

#[tokio::test]
async fn revocation_takes_effect_after_the_cache_ttl() {
    let keys = Keys::new().await;
    let (info, key) = keys.create(&[Scope::LeadsRead]).await;
    let channel = serve(keys.authenticator(settings(true, Duration::from_millis(300)))).await;
    let credential = Credential::Bearer(key);
    check(&channel, &credential)
        .await
        .expect("before revocation");

    assert!(keys.store.revoke(&info.key_id).await.expect("revoke"));
    let took = wait_until("the revoked key is refused", || async {
        code(&check(&channel, &credential).await) == Code::Unauthenticated
    })
    .await;
    println!("revocation took effect after {took:?} (cache ttl 300 ms)");
}

#[tokio::test]
async fn expiry_is_checked_on_every_call_even_from_the_cache() {
    let keys = Keys::new().await;
    let expires_at = Utc::now() + chrono::Duration::milliseconds(500);
    let (_, key) = keys
        .create_expiring(&[Scope::LeadsRead], Some(expires_at))
        .await;
    let channel = serve(keys.authenticator(settings(true, Duration::from_secs(600)))).await;
    let credential = Credential::Bearer(key);
    let first = check(&channel, &credential).await;
    // The call may only have failed because the key had expired already.
    assert!(
        first.is_ok() || Utc::now() >= expires_at,
        "before expiry: {first:?}"
    );

    wait_until("the expired key is refused", || async {
        code(&check(&channel, &credential).await) == Code::Unauthenticated
    })
    .await;
    assert!(Utc::now() >= expires_at);
}

#[tokio::test]
async fn every_rpc_in_the_table_admits_exactly_its_scope_and_admin() {
    let keys = Keys::new().await;
    let mut holders = Vec::new();
    for scope in Scope::ALL {
        let (_, key) = keys.create(&[scope]).await;
        holders.push((scope, key));
    }
    for reflection_open in [true, false] {
        let authenticator = keys.authenticator(AuthSettings {
            reflection_open,
            ..AuthSettings::default()
        });
        for (path, access) in RPC_ACCESS {
            let needed = match (access, reflection_open) {
                (Access::Open, false) if *path == REFLECTION_V1 || *path == REFLECTION_V1ALPHA => {
                    Some(Scope::Admin)
                }
                (Access::Open, _) => None,
                (Access::Scope(scope), _) => Some(*scope),
            };
            let anonymous = authenticator.authorize(path, &http::HeaderMap::new()).await;
            match needed {
                None => assert_eq!(anonymous.expect("open rpc"), None, "{path}"),
                Some(_) => assert_eq!(
                    code(&anonymous),
                    Code::Unauthenticated,
                    "{path} without a key"
                ),
            }
            for (held, key) in &holders {
                let mut headers = http::HeaderMap::new();
                headers.insert(
                    "authorization",
                    format!("Bearer {key}").parse().expect("header"),
                );
                let answer = authenticator.authorize(path, &headers).await;
                let expected = match needed {
                    None => Code::Ok,
                    Some(needed) if held.grants(needed) => Code::Ok,
                    Some(_) => Code::PermissionDenied,
                };
                assert_eq!(code(&answer), expected, "{path} with {held}: {answer:?}");
                if let (Some(_), Ok(caller)) = (needed, &answer) {
                    let caller = caller.as_ref().expect("a caller for a scoped rpc");
                    assert_eq!(caller.scopes, vec![*held]);
                }
            }
        }
    }
    let unlisted = "/leadflow.capture.v1.CaptureService/DropEverything";
    let (_, admin_key) = &holders[3];
    let mut headers = http::HeaderMap::new();
    headers.insert("x-api-key", admin_key.parse().expect("header"));
    let authenticator = keys.authenticator(AuthSettings::default());
    let answer = authenticator.authorize(unlisted, &headers).await;
    assert_eq!(code(&answer), Code::PermissionDenied, "{answer:?}");
}

#[tokio::test]
async fn admitted_calls_carry_the_caller_and_refused_ones_never_reach_the_handler() {
    let keys = Keys::new().await;
    let (info, key) = keys.create(&[Scope::LeadsRead, Scope::PiiRead]).await;
    let reached = Arc::new(AtomicBool::new(false));
    let handler_reached = reached.clone();
    let handler = tower::service_fn(move |request: http::Request<()>| {
        handler_reached.store(true, Ordering::SeqCst);
        let caller = request.extensions().get::<Caller>().cloned();
        async move { Ok::<_, Infallible>(http::Response::new(caller)) }
    });
    let service =
        AuthLayer::new(keys.authenticator(settings(true, Duration::from_secs(30)))).layer(handler);

    let admitted = http::Request::builder()
        .uri(format!("http://localhost{HEALTH_CHECK}"))
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .expect("request");
    let response = service.clone().oneshot(admitted).await.expect("infallible");
    assert_eq!(
        response.into_body(),
        Some(Caller {
            key_id: info.key_id.clone(),
            scopes: vec![Scope::LeadsRead, Scope::PiiRead],
        })
    );
    assert!(reached.swap(false, Ordering::SeqCst));

    let open = http::Request::builder()
        .uri(format!("http://localhost{REFLECTION_V1}"))
        .body(())
        .expect("request");
    let response = service.clone().oneshot(open).await.expect("infallible");
    assert_eq!(response.into_body(), None, "open rpcs carry no caller");
    assert!(reached.swap(false, Ordering::SeqCst));

    let refused = http::Request::builder()
        .uri(format!("http://localhost{HEALTH_CHECK}"))
        .body(())
        .expect("request");
    let response = service.clone().oneshot(refused).await.expect("infallible");
    assert!(
        !reached.load(Ordering::SeqCst),
        "a refused call reached the handler"
    );
    let status = tonic::Status::from_header_map(response.headers()).expect("grpc status");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/grpc"[..])
    );

    let unlisted = http::Request::builder()
        .uri(format!("http://localhost{HEALTH_WATCH}"))
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .expect("request");
    let response = service.oneshot(unlisted).await.expect("infallible");
    assert!(
        !reached.load(Ordering::SeqCst),
        "a denied call reached the handler"
    );
    let status = tonic::Status::from_header_map(response.headers()).expect("grpc status");
    assert_eq!(status.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn a_failing_store_is_unavailable_not_unauthenticated() {
    let keys = Keys::new().await;
    let (_, key) = keys.create(&[Scope::LeadsRead]).await;
    let authenticator = keys.authenticator(settings(true, Duration::from_secs(30)));
    keys.db.pool.close().await;

    let mut headers = http::HeaderMap::new();
    headers.insert("x-api-key", key.parse().expect("header"));
    let answer = authenticator.authorize(HEALTH_CHECK, &headers).await;
    assert_eq!(code(&answer), Code::Unavailable, "{answer:?}");
}

#[tokio::test]
async fn the_store_creates_lists_and_revokes_keys_without_keeping_secrets() {
    let keys = Keys::new().await;
    let before = Utc::now() - chrono::Duration::seconds(5);
    let (first, first_key) = keys
        .create(&[Scope::PiiRead, Scope::LeadsRead, Scope::LeadsRead])
        .await;
    let expires_at = Utc::now() + chrono::Duration::days(30);
    let (second, second_key) = keys
        .create_expiring(&[Scope::Admin], Some(expires_at))
        .await;

    assert_eq!(first.scopes, vec![Scope::LeadsRead, Scope::PiiRead]);
    assert_eq!(first.env, ENV);
    assert_eq!(first.name, "test key");
    assert!(first.created_at >= before && first.revoked_at.is_none());
    assert!(first_key.starts_with(&format!("lf_{ENV}_{}_", first.key_id)));
    assert!(second_key.starts_with(&format!("lf_{ENV}_{}_", second.key_id)));
    // Postgres keeps microseconds.
    let stored_expiry = second.expires_at.expect("expiry");
    assert!((stored_expiry - expires_at).num_milliseconds().abs() < 1);

    let listed = keys.store.list().await.expect("list");
    let mut ids: Vec<&str> = listed.iter().map(|info| info.key_id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = [first.key_id.as_str(), second.key_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    assert!(listed.contains(&first) && listed.contains(&second));

    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT row_to_json(k)::text, secret_hash FROM {SCHEMA}.api_keys k"
    )))
    .fetch_all(&keys.db.pool)
    .await
    .expect("read rows");
    for (row, secret_hash) in &rows {
        assert_eq!(secret_hash.len(), 32);
        for plaintext in [&first_key, &second_key] {
            let secret = leadflow_platform::auth::parse(plaintext)
                .expect("parse")
                .secret;
            assert!(
                !row.contains(secret.expose_secret()),
                "a row holds a secret"
            );
        }
    }

    assert!(keys.store.revoke(&first.key_id).await.expect("revoke"));
    assert!(
        !keys
            .store
            .revoke(&first.key_id)
            .await
            .expect("revoke again")
    );
    assert!(
        !keys
            .store
            .revoke("nosuchkey000")
            .await
            .expect("revoke unknown")
    );
    let revoked = keys
        .store
        .get(&first.key_id)
        .await
        .expect("get")
        .expect("still listed");
    assert!(revoked.revoked_at.is_some() && !revoked.is_active(Utc::now()));
    assert!(second.is_active(Utc::now()));
    assert!(!second.is_active(expires_at));
    assert_eq!(keys.store.get("nosuchkey000").await.expect("get"), None);
}

#[tokio::test]
async fn the_store_refuses_bad_names_scopes_and_environments() {
    let keys = Keys::new().await;
    let long_name = "n".repeat(201);
    let cases: [(&str, &str, &[Scope]); 5] = [
        ("", ENV, &[Scope::LeadsRead]),
        ("   ", ENV, &[Scope::LeadsRead]),
        (&long_name, ENV, &[Scope::LeadsRead]),
        ("name", ENV, &[]),
        ("name", "Prod", &[Scope::LeadsRead]),
    ];
    for (name, env, scopes) in cases {
        let refused = keys.store.create(name, env, scopes, None).await;
        match refused {
            Err(StoreError::InvalidName) => assert!(name.trim().is_empty() || name.len() > 200),
            Err(StoreError::NoScopes) => assert!(scopes.is_empty()),
            Err(StoreError::Key(KeyError::InvalidEnv)) => assert_eq!(env, "Prod"),
            other => panic!(
                "{name:?} {env:?} {scopes:?}: {:?}",
                other.map(|(info, _)| info)
            ),
        }
    }
    assert!(keys.store.list().await.expect("list").is_empty());
}

#[tokio::test]
async fn the_store_imports_a_key_made_elsewhere_and_it_authenticates() {
    let keys = Keys::new().await;
    let made_elsewhere = leadflow_platform::auth::generate(ENV).expect("generate");
    let expires_at = Utc::now() + chrono::Duration::days(1);

    let info = keys
        .store
        .import(
            " shared ",
            ENV,
            &made_elsewhere.plaintext,
            &[Scope::LeadsRead, Scope::LeadsRead],
            Some(expires_at),
        )
        .await
        .expect("import");

    assert_eq!(info.key_id, made_elsewhere.key_id);
    assert_eq!(info.name, "shared");
    assert_eq!(info.env, ENV);
    assert_eq!(info.scopes, [Scope::LeadsRead]);
    assert!(info.revoked_at.is_none() && info.expires_at.is_some());
    assert_eq!(
        keys.store.list().await.expect("list"),
        std::slice::from_ref(&info)
    );
    let (row,): (String,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT row_to_json(k)::text FROM {SCHEMA}.api_keys k"
    )))
    .fetch_one(&keys.db.pool)
    .await
    .expect("read row");
    assert!(!row.contains(made_elsewhere.secret.expose_secret()));

    let authenticator = keys.authenticator(settings(true, Duration::from_secs(30)));
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "x-api-key",
        made_elsewhere
            .plaintext
            .expose_secret()
            .parse()
            .expect("header"),
    );
    let caller = authenticator
        .authorize(HEALTH_CHECK, &headers)
        .await
        .expect("the imported key is admitted")
        .expect("a caller");
    assert_eq!(caller.key_id, info.key_id);
}

#[tokio::test]
async fn the_store_refuses_to_import_what_is_not_a_new_key_of_its_environment() {
    let keys = Keys::new().await;
    let good = leadflow_platform::auth::generate(ENV).expect("generate");
    let good_text = good.plaintext.expose_secret().to_owned();
    keys.store
        .import("first", ENV, &good.plaintext, &[Scope::Admin], None)
        .await
        .expect("first import");
    let live = leadflow_platform::auth::generate("live").expect("generate");
    let key = |text: &str| SecretString::from(text.to_owned());

    let cases: Vec<(&str, SecretString, &str, Vec<Scope>)> = vec![
        ("malformed", key("lf_test_nope"), "name", vec![Scope::Admin]),
        (
            "bad checksum",
            key(&flip_last(&good_text)),
            "name",
            vec![Scope::Admin],
        ),
        (
            "another environment",
            live.plaintext,
            "name",
            vec![Scope::Admin],
        ),
        ("duplicate", key(&good_text), "name", vec![Scope::Admin]),
        ("no name", key(&good_text), "  ", vec![Scope::Admin]),
        ("no scopes", key(&good_text), "name", vec![]),
    ];
    for (what, plaintext, name, scopes) in cases {
        let refused = keys
            .store
            .import(name, ENV, &plaintext, &scopes, None)
            .await
            .expect_err(what);
        let as_expected = match what {
            "malformed" => matches!(refused, StoreError::Key(KeyError::Malformed)),
            "bad checksum" => matches!(refused, StoreError::Key(KeyError::BadChecksum)),
            "another environment" => matches!(
                &refused,
                StoreError::EnvMismatch { key_env, expected } if key_env == "live" && expected == ENV
            ),
            "duplicate" => matches!(
                &refused,
                StoreError::Duplicate { key_id } if *key_id == good.key_id
            ),
            "no name" => matches!(refused, StoreError::InvalidName),
            _ => matches!(refused, StoreError::NoScopes),
        };
        assert!(as_expected, "{what}: {refused:?}");
        assert!(
            !refused.to_string().contains(&good_text),
            "{what}: the error shows the key"
        );
    }
    let listed = keys.store.list().await.expect("list");
    assert_eq!(listed.len(), 1, "only the first import is stored");
    assert_eq!(listed[0].name, "first");
}
