//! The runtime every service is built on: connections, migrations, the bound gRPC listener,
//! health, reflection, the outbox relay and stream consumers, and a graceful shutdown that
//! stops accepting, drains in-flight calls, stops consumers (acknowledging what they
//! finished), and flushes the outbox.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::CommonConfig;
use crate::events::consumer::{Consumer, ConsumerSettings, EventHandler};
use crate::events::outbox::Outbox;
use crate::events::relay::Relay;
use crate::health::HealthMonitor;

type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A started service: connected, migrated (when configured) and bound, not yet serving.
pub struct ServiceHost {
    name: &'static str,
    config: CommonConfig,
    pool: PgPool,
    redis_client: redis::Client,
    redis: ConnectionManager,
    listener: TcpListener,
    grpc_addr: SocketAddr,
    health: HealthReporter,
    relay: Option<Relay>,
    consumers: Vec<Task>,
}

impl ServiceHost {
    /// Connects to Postgres (schema `name`) and Redis, migrates when `migrate_on_start` is
    /// set, and binds the gRPC listener (`default_addr` unless configured).
    pub async fn start(
        name: &'static str,
        config: CommonConfig,
        migrator: &'static Migrator,
        default_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        let pool = crate::postgres::connect(&config.database_url, name).await?;
        if config.migrate_on_start {
            crate::postgres::migrate(&pool, name, migrator).await?;
        }
        let redis_client = crate::redis::client(&config.redis_url)?;
        let redis = crate::redis::manager(&redis_client).await?;
        let addr = config.grpc_addr.unwrap_or(default_addr);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind grpc address {addr}"))?;
        let grpc_addr = listener.local_addr().context("read bound address")?;
        let (health, _) = tonic_health::server::health_reporter();
        HealthMonitor::report(&health, &[], ServingStatus::NotServing).await;
        Ok(Self {
            name,
            config,
            pool,
            redis_client,
            redis,
            listener,
            grpc_addr,
            health,
            relay: None,
            consumers: Vec::new(),
        })
    }

    /// Returns the address the gRPC server is bound to (real even when port 0 was asked).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Returns the service's Postgres pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Returns the shared Redis connection.
    pub fn redis(&self) -> &ConnectionManager {
        &self.redis
    }

    /// Returns the configuration shared by all services.
    pub fn config(&self) -> &CommonConfig {
        &self.config
    }

    /// Returns the full name of `stream` under the configured prefix.
    pub fn stream(&self, stream: &str) -> String {
        crate::events::stream_name(&self.config.stream_prefix, stream)
    }

    /// Returns an outbox publishing to `stream` and starts the relay that drains it.
    pub fn outbox(&mut self, stream: &str) -> Outbox {
        let relay = Relay::new(
            self.pool.clone(),
            self.redis.clone(),
            self.name,
            Duration::from_millis(self.config.relay_poll_ms),
            self.config.stream_max_len,
        );
        self.relay = Some(relay);
        Outbox::new(self.name, self.name, self.stream(stream))
    }

    /// Runs `handler` over `streams` in this service's consumer group while serving.
    pub fn consume<H: EventHandler>(&mut self, streams: &[&str], handler: Arc<H>) {
        let consumer_name = self
            .config
            .consumer_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.name, uuid::Uuid::new_v4().simple()));
        let settings = ConsumerSettings {
            group: self.name.to_owned(),
            consumer: consumer_name,
            streams: streams.iter().map(|stream| self.stream(stream)).collect(),
            block: Duration::from_millis(self.config.consumer_block_ms),
            batch_size: 64,
            min_idle: Duration::from_millis(self.config.consumer_min_idle_ms),
            max_deliveries: self.config.consumer_max_deliveries,
        };
        let consumer = Consumer::new(
            self.pool.clone(),
            self.redis_client.clone(),
            self.redis.clone(),
            self.name,
            settings,
            handler,
        );
        self.consumers
            .push(Box::new(move |stop| Box::pin(consumer.run(stop))));
    }

    /// Serves `routes` (whose gRPC names are `services`) with health and reflection until
    /// `signal` completes, then shuts down gracefully within the configured grace period.
    pub async fn serve(
        self,
        routes: RoutesBuilder,
        services: &[&'static str],
        signal: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let grace = self.config.shutdown_grace();
        let health_stop = CancellationToken::new();
        let monitor = HealthMonitor::new(
            self.health.clone(),
            self.pool.clone(),
            self.redis.clone(),
            Duration::from_millis(self.config.health_interval_ms),
            services.to_vec(),
        );
        let health_task = tokio::spawn(monitor.run(health_stop.clone()));

        let consumers_stop = CancellationToken::new();
        let consumer_tasks: Vec<_> = self
            .consumers
            .into_iter()
            .map(|task| tokio::spawn(task(consumers_stop.clone())))
            .collect();
        let relay_stop = CancellationToken::new();
        let relay_task = self
            .relay
            .map(|relay| tokio::spawn(relay.run(relay_stop.clone())));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(leadflow_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("build reflection v1")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(leadflow_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("build reflection v1alpha")?;
        let mut routes = routes;
        routes
            .add_service(HealthServer::new(HealthService::from_health_reporter(
                self.health.clone(),
            )))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let stop_accepting = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .trace_fn(crate::grpc::server_span)
            // Callers' `grpc-timeout` is honoured below this ceiling.
            .timeout(Duration::from_secs(30))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(self.listener),
                stop_accepting.clone().cancelled_owned(),
            );
        tracing::info!(service = self.name, grpc_addr = %self.grpc_addr, "serving");
        tokio::pin!(server);
        tokio::select! {
            served = &mut server => {
                served.context("serve grpc")?;
                anyhow::bail!("grpc server stopped on its own");
            }
            () = signal => {}
        }

        tracing::info!(grace_ms = grace.as_millis() as u64, "shutting down");
        health_stop.cancel();
        HealthMonitor::report(&self.health, services, ServingStatus::NotServing).await;
        stop_accepting.cancel();
        match tokio::time::timeout(grace, &mut server).await {
            Ok(served) => served.context("drain grpc calls")?,
            Err(_) => tracing::warn!("in-flight calls outlived the grace period"),
        }
        consumers_stop.cancel();
        for task in consumer_tasks {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("a consumer outlived the grace period");
            }
        }
        relay_stop.cancel();
        if let Some(task) = relay_task
            && tokio::time::timeout(grace, task).await.is_err()
        {
            tracing::warn!("the outbox relay outlived the grace period");
        }
        let _finished = health_task.await;
        self.pool.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What a service binary is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Serve gRPC until SIGTERM (the default).
    Serve,
    /// Apply the service's database migrations and exit (the Kubernetes migration Job).
    Migrate,
}

#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "A leadflow service; configured through its environment variables (see README)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

impl Command {
    /// Parses the process arguments; no subcommand means `serve`.
    pub fn from_args() -> Self {
        <Cli as clap::Parser>::parse()
            .command
            .unwrap_or(Command::Serve)
    }
}
