//! analytics: folds every stream into funnel figures, exactly once per event, and answers
//! `GetFunnel`.

pub mod config;
pub mod events;
pub mod grpc;

use std::sync::Arc;

use leadflow_platform::events::{CAPTURE_STREAM, MESSAGING_STREAM, QUALIFICATION_STREAM};
use leadflow_platform::host::localhost;
use leadflow_platform::{Application, ServiceHost, ServiceSpec};
use leadflow_proto::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What analytics is: schema and consumer group `analytics`, port 50054.
pub static SPEC: ServiceSpec = ServiceSpec {
    name: "analytics",
    prefix: config::PREFIX,
    default_grpc_addr: localhost(50054),
    grpc_services: &["leadflow.analytics.v1.AnalyticsService"],
    migrator: &MIGRATOR,
    session_settings: &[],
};

/// Connects, migrates when configured, binds the listener and wires events and API-key auth
/// (every RPC needs the scope `RPC_ACCESS` names).
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let mut host = ServiceHost::start(&SPEC, config.common).await?;
    let auth = leadflow_platform::host::authenticator(&SPEC, host.config(), host.pool().clone())?;
    host.consume(
        &[CAPTURE_STREAM, QUALIFICATION_STREAM, MESSAGING_STREAM],
        Arc::new(events::FunnelFolder),
    );
    let api = grpc::AnalyticsApi::new(host.pool().clone());
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(
        AnalyticsServiceServer::new(api).max_decoding_message_size(host.config().max_request_bytes),
    );
    Ok(Application::new(host, routes).with_auth(auth))
}
