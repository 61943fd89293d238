//! qualification: consumes `lead.captured` and `message.inbound`, scores leads, runs their
//! lifecycle with a stage history, and emits `lead.scored` and `lead.stage_changed`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use std::sync::Arc;

use leadflow_platform::events::{CAPTURE_STREAM, MESSAGING_STREAM, QUALIFICATION_STREAM};
use leadflow_platform::host::localhost;
use leadflow_platform::{Application, ServiceHost, ServiceSpec};
use leadflow_proto::qualification::v1::qualification_service_server::QualificationServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// What qualification is: schema, group and producer `qualification`, port 50052.
pub static SPEC: ServiceSpec = ServiceSpec {
    name: "qualification",
    prefix: config::PREFIX,
    default_grpc_addr: localhost(50052),
    grpc_services: &["leadflow.qualification.v1.QualificationService"],
    migrator: &MIGRATOR,
    session_settings: &[],
};

/// Connects, migrates when configured, binds the listener and wires events and API-key auth
/// (every RPC needs the scope `RPC_ACCESS` names).
pub async fn build(config: Config) -> anyhow::Result<Application> {
    let mut host = ServiceHost::start(&SPEC, config.common).await?;
    let auth = leadflow_platform::host::authenticator(&SPEC, host.config(), host.pool().clone())?;
    let outbox = host.outbox(QUALIFICATION_STREAM);
    let handler = events::QualificationHandler::new(outbox, domain::scoring::Model::default_v1());
    host.consume(&[CAPTURE_STREAM, MESSAGING_STREAM], Arc::new(handler));
    let api = grpc::QualificationApi::new(store::LeadStore::new(host.pool().clone()));
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(
        QualificationServiceServer::new(api)
            .max_decoding_message_size(host.config().max_request_bytes),
    );
    Ok(Application::new(host, routes).with_auth(auth))
}
