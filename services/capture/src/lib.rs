//! capture: takes leads in over gRPC, normalizes and validates them, stores them and emits
//! `lead.captured` through the transactional outbox.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod store;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use leadflow_platform::ServiceHost;
use leadflow_platform::events::CAPTURE_STREAM;
use leadflow_proto::capture::v1::capture_service_server::CaptureServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

/// Postgres schema, consumer group and producer name of this service.
pub const SERVICE: &str = "capture";
/// Default gRPC address.
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);
/// gRPC service names reported by health.
pub const GRPC_SERVICES: [&str; 1] = ["leadflow.capture.v1.CaptureService"];

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A built capture service, bound and ready to serve.
pub struct Application {
    host: ServiceHost,
    api: grpc::CaptureApi,
    max_request_bytes: usize,
}

impl Application {
    /// Connects, migrates when configured, binds the listener and wires the outbox.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let domain_config = config.domain()?;
        let max_request_bytes = config.common.max_request_bytes;
        let mut host =
            ServiceHost::start(SERVICE, config.common, &MIGRATOR, DEFAULT_GRPC_ADDR).await?;
        let outbox = host.outbox(CAPTURE_STREAM);
        let store = store::LeadStore::new(host.pool().clone(), outbox);
        let api = grpc::CaptureApi::new(Arc::new(domain_config), store);
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
            CaptureServiceServer::new(self.api).max_decoding_message_size(self.max_request_bytes),
        );
        self.host.serve(routes, &GRPC_SERVICES, signal).await
    }
}
