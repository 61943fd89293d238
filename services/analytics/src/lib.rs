//! analytics: folds every stream into funnel figures, exactly once per event, and answers
//! `GetFunnel`.

pub mod config;
pub mod events;
pub mod grpc;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use leadflow_platform::ServiceHost;
use leadflow_platform::events::{CAPTURE_STREAM, MESSAGING_STREAM, QUALIFICATION_STREAM};
use leadflow_proto::analytics::v1::analytics_service_server::AnalyticsServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

/// Postgres schema, consumer group and producer name of this service.
pub const SERVICE: &str = "analytics";
/// Default gRPC address.
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50054);
/// gRPC service names reported by health.
pub const GRPC_SERVICES: [&str; 1] = ["leadflow.analytics.v1.AnalyticsService"];

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A built analytics service, bound and ready to serve.
pub struct Application {
    host: ServiceHost,
    api: grpc::AnalyticsApi,
    max_request_bytes: usize,
}

impl Application {
    /// Connects, migrates when configured, binds the listener and wires events.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let max_request_bytes = config.common.max_request_bytes;
        let mut host =
            ServiceHost::start(SERVICE, config.common, &MIGRATOR, DEFAULT_GRPC_ADDR).await?;
        host.consume(
            &[CAPTURE_STREAM, QUALIFICATION_STREAM, MESSAGING_STREAM],
            Arc::new(events::FunnelFolder),
        );
        let api = grpc::AnalyticsApi::new(host.pool().clone());
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
            AnalyticsServiceServer::new(self.api).max_decoding_message_size(self.max_request_bytes),
        );
        self.host.serve(routes, &GRPC_SERVICES, signal).await
    }
}
