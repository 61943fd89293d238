//! messaging: sends a welcome email to each captured lead through a provider (the local sink
//! in development), records inbound contact and emits `message.sent` and `message.inbound`.

pub mod capture;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod provider;
pub mod store;

use std::sync::Arc;

use leadflow_platform::events::{CAPTURE_STREAM, MESSAGING_STREAM};
use leadflow_platform::host::localhost;
use leadflow_platform::{Application, ServiceHost, ServiceSpec};
use leadflow_proto::messaging::v1::messaging_service_server::MessagingServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What messaging is: schema, group and producer `messaging`, port 50053.
pub static SPEC: ServiceSpec = ServiceSpec {
    name: "messaging",
    prefix: config::PREFIX,
    default_grpc_addr: localhost(50053),
    grpc_services: &["leadflow.messaging.v1.MessagingService"],
    migrator: &MIGRATOR,
    session_settings: &[],
};

/// Connects, migrates when configured, binds the listener and wires events and API-key auth
/// (every RPC needs the scope `RPC_ACCESS` names).
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let templates = Arc::new(domain::template::Templates::built_in()?);
    let provider = Arc::new(provider::SinkProvider::new(config.settings.sink_dir.clone()).await?);
    let capture_client = capture::CaptureClient::new(
        &config.settings.capture_url,
        &config.settings.capture_api_key,
    )?;
    let mut host = ServiceHost::start(&SPEC, config.common).await?;
    let auth = leadflow_platform::host::authenticator(&SPEC, host.config(), host.pool().clone())?;
    let outbox = host.outbox(MESSAGING_STREAM);
    let handler = events::MessagingHandler::new(
        outbox.clone(),
        templates,
        provider,
        capture_client.clone(),
        config.settings.from_address,
    );
    host.consume(&[CAPTURE_STREAM], Arc::new(handler));
    let store = store::MessageStore::new(host.pool().clone());
    let api = grpc::MessagingApi::new(store, outbox, capture_client);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(
        MessagingServiceServer::new(api).max_decoding_message_size(host.config().max_request_bytes),
    );
    Ok(Application::new(host, routes).with_auth(auth))
}
