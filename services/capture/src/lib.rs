//! capture: takes leads in over gRPC, normalizes and validates them against their source,
//! seals personal data, dedupes and merges, records consent and attribution, and emits
//! `lead.captured` (and `lead.merged`, `lead.rejected`, `lead.erased`, `lead.returned`,
//! `lead.activity`) through the transactional outbox. It also records what people do (page
//! visits, downloads, webinars) through `RecordActivity` and the tracking snippet's endpoint.

pub mod commands;
pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod rejections;
pub mod rotation;
pub mod service;
pub mod store;

use std::sync::Arc;

use leadflow_platform::events::CAPTURE_STREAM;
use leadflow_platform::host::localhost;
use leadflow_platform::{Application, ServiceHost, ServiceSpec};
use leadflow_proto::capture::v1::capture_service_server::CaptureServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What capture is: schema and producer `capture`, prefix `CAPTURE_`, port 50051.
pub static SPEC: ServiceSpec = ServiceSpec {
    name: "capture",
    prefix: config::PREFIX,
    default_grpc_addr: localhost(50051),
    grpc_services: &["leadflow.capture.v1.CaptureService"],
    migrator: &MIGRATOR,
    session_settings: leadflow_platform::postgres::INDEXED_LOOKUPS,
};

/// Connects, migrates when configured, binds the listener and wires the outbox and auth.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let checked = config.check()?;
    let previous_keys: Vec<String> = checked
        .keyring
        .previous_key_ids()
        .iter()
        .map(ToString::to_string)
        .collect();
    // Key ids, never keys: which key wraps new data keys and which still unwrap old ones.
    tracing::info!(
        primary = %checked.keyring.primary_key_id(),
        previous = previous_keys.join(","),
        "pii key-encryption keys"
    );
    let identity_key = checked.normalize.identity_hash_key.clone();
    let key_env = config.common.api_key_env.clone();
    let mut host = ServiceHost::start(&SPEC, config.common).await?;
    let auth = leadflow_platform::host::authenticator(&SPEC, host.config(), host.pool().clone())?;
    let outbox = host.outbox(CAPTURE_STREAM);
    let leads = store::LeadStore::new(host.pool().clone(), outbox, checked.keyring, identity_key);
    let sources = store::SourceStore::new(host.pool().clone());
    if config.settings.warm_phone_patterns {
        warm_phone_patterns(&sources, checked.normalize.default_region).await;
    }
    let sweeper = leads.clone();
    let sweep_every =
        std::time::Duration::from_secs(config.settings.idempotency_sweep_seconds.max(1));
    let anonymous_retention = (config.settings.anonymous_activity_days > 0)
        .then(|| chrono::Duration::days(i64::from(config.settings.anonymous_activity_days)));
    let (capturer, rejections) =
        service::Capturer::new(Arc::new(checked.normalize), leads, sources);
    let web_forms = http::WebFormServer::bind(
        config
            .settings
            .http_addr
            .unwrap_or(config::DEFAULT_HTTP_ADDR),
        capturer.clone(),
        config.settings.trust_forwarded_for,
    )
    .await?;
    let api = grpc::CaptureApi::new(
        capturer,
        auth.clone(),
        key_env,
        config.settings.key_rate_per_minute,
    );
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(
        CaptureServiceServer::new(api).max_decoding_message_size(host.config().max_request_bytes),
    );
    tracing::info!(http_addr = %web_forms.local_addr(), "serving http");
    Ok(Application::new(host, routes)
        .with_auth(auth)
        .with_task(move |stop| web_forms.serve(stop.cancelled_owned()))
        .with_task(move |stop| rejections.run(stop))
        .with_task(move |stop| sweeper.run_sweeper(sweep_every, anonymous_retention, stop)))
}

/// Prepares phone-number reading for the configured default region and every source's
/// region before the service reports itself serving, so the first leads are not the ones
/// that load the metadata and compile its patterns (B15). A failure to list the sources only
/// leaves their regions to be prepared by their first numbers.
async fn warm_phone_patterns(
    sources: &store::SourceStore,
    default_region: phonenumber::country::Id,
) {
    let started = std::time::Instant::now();
    let mut regions = vec![default_region];
    match sources.list().await {
        Ok(stored) => regions.extend(
            stored
                .iter()
                .filter_map(|source| source.policy.default_region),
        ),
        Err(err) => tracing::warn!(
            error = format!("{err:#}"),
            "list sources to warm phone patterns"
        ),
    }
    match tokio::task::spawn_blocking(move || domain::phone_patterns::warm(regions)).await {
        Ok(country_codes) => tracing::info!(
            country_codes,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "phone patterns warmed"
        ),
        Err(err) => tracing::warn!(error = %err, "warm phone patterns"),
    }
}
