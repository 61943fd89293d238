//! capture: takes leads in over gRPC, normalizes and validates them, stores them and emits
//! `lead.captured` through the transactional outbox.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
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
};

/// Connects, migrates when configured, binds the listener and wires the outbox.
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let normalize = Arc::new(config.domain()?);
    let mut host = ServiceHost::start(&SPEC, config.common).await?;
    let outbox = host.outbox(CAPTURE_STREAM);
    let store = store::LeadStore::new(host.pool().clone(), outbox);
    let api = grpc::CaptureApi::new(normalize, store);
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(
        CaptureServiceServer::new(api).max_decoding_message_size(host.config().max_request_bytes),
    );
    Ok(Application::new(host, routes))
}
