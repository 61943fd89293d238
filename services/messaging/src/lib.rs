//! messaging: sends a welcome email to each captured lead through a provider (the local sink
//! in development), records inbound contact and emits `message.sent` and `message.inbound`.

pub mod capture;
pub mod config;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod provider;
pub mod store;

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use leadflow_platform::ServiceHost;
use leadflow_platform::events::{CAPTURE_STREAM, MESSAGING_STREAM};
use leadflow_proto::messaging::v1::messaging_service_server::MessagingServiceServer;
use sqlx::migrate::Migrator;

pub use config::Config;

/// Postgres schema, consumer group and producer name of this service.
pub const SERVICE: &str = "messaging";
/// Default gRPC address.
pub const DEFAULT_GRPC_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50053);
/// gRPC service names reported by health.
pub const GRPC_SERVICES: [&str; 1] = ["leadflow.messaging.v1.MessagingService"];

static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A built messaging service, bound and ready to serve.
pub struct Application {
    host: ServiceHost,
    api: grpc::MessagingApi,
    max_request_bytes: usize,
}

impl Application {
    /// Connects, migrates when configured, binds the listener and wires events.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let max_request_bytes = config.common.max_request_bytes;
        let templates = Arc::new(domain::template::Templates::built_in()?);
        let provider =
            Arc::new(provider::SinkProvider::new(config.settings.sink_dir.clone()).await?);
        let capture_client = capture::CaptureClient::new(&config.settings.capture_url)?;
        let mut host =
            ServiceHost::start(SERVICE, config.common, &MIGRATOR, DEFAULT_GRPC_ADDR).await?;
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
            MessagingServiceServer::new(self.api).max_decoding_message_size(self.max_request_bytes),
        );
        self.host.serve(routes, &GRPC_SERVICES, signal).await
    }
}
