//! qualification: consumes `lead.captured` and `message.inbound`, scores leads, runs their
//! lifecycle with a stage history, and emits `lead.scored` and `lead.stage_changed`.

pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod store;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use leadflow_platform::ServiceHost;
use leadflow_platform::events::{CAPTURE_STREAM, MESSAGING_STREAM, QUALIFICATION_STREAM};
use leadflow_proto::qualification::v1::qualification_service_server::QualificationServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

/// Postgres schema, consumer group and producer name of this service.
pub const SERVICE: &str = "qualification";
/// Default gRPC address.
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50052);
/// gRPC service names reported by health.
pub const GRPC_SERVICES: [&str; 1] = ["leadflow.qualification.v1.QualificationService"];

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A built qualification service, bound and ready to serve.
pub struct Application {
    host: ServiceHost,
    api: grpc::QualificationApi,
    max_request_bytes: usize,
}

impl Application {
    /// Connects, migrates when configured, binds the listener and wires events.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let max_request_bytes = config.common.max_request_bytes;
        let mut host =
            ServiceHost::start(SERVICE, config.common, &MIGRATOR, DEFAULT_GRPC_ADDR).await?;
        let outbox = host.outbox(QUALIFICATION_STREAM);
        let handler =
            events::QualificationHandler::new(outbox, domain::scoring::Model::default_v1());
        host.consume(&[CAPTURE_STREAM, MESSAGING_STREAM], Arc::new(handler));
        let api = grpc::QualificationApi::new(store::LeadStore::new(host.pool().clone()));
        Ok(Self {
            host,
            api,
            max_request_bytes,
        })
    }

    /// Applies the migrations of this service's schema.
    pub async fn migrate(common: &leadflow_platform::config::CommonConfig) -> anyhow::Result<()> {
        let pool = leadflow_platform::postgres::connect(&common.database_url, SERVICE).await?;
        leadflow_platform::postgres::migrate(&pool, SERVICE, &MIGRATOR).await?;
        tracing::info!(schema = SERVICE, "migrations applied");
        Ok(())
    }

    /// Returns the bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.host.grpc_addr()
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let mut routes = tonic::service::RoutesBuilder::default();
        routes.add_service(
            QualificationServiceServer::new(self.api)
                .max_decoding_message_size(self.max_request_bytes),
        );
        self.host.serve(routes, &GRPC_SERVICES, signal).await
    }
}
