//! The runtime every service is built on: connections, migrations, the bound gRPC listener,
//! health, reflection, the outbox relay and stream consumers, and a graceful shutdown that
//! stops accepting, drains in-flight calls, stops consumers (acknowledging what they
//! finished), and flushes the outbox.

mod keys;

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
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::auth::{AuthLayer, Authenticator, KeyStore, Pepper};
use crate::config::CommonConfig;
use crate::events::consumer::{Consumer, ConsumerSettings, EventHandler};
use crate::events::outbox::{Outbox, OutboxWake};
use crate::events::relay::Relay;
use crate::health::HealthMonitor;

type Task = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A started service: connected, migrated (when configured) and bound, not yet serving.
/// What a service is: its name (schema, consumer group, producer), environment prefix,
/// default address, gRPC service names and migrations.
#[derive(Debug)]
pub struct ServiceSpec {
    /// Name of the service, its Postgres schema, consumer group and event producer.
    pub name: &'static str,
    /// Prefix of its environment variables, e.g. `CAPTURE_`.
    pub prefix: &'static str,
    /// Address the gRPC server binds unless `<PREFIX>GRPC_ADDR` says otherwise.
    pub default_grpc_addr: SocketAddr,
    /// Fully qualified gRPC service names that health reports.
    pub grpc_services: &'static [&'static str],
    /// The service's own migrations.
    pub migrator: &'static Migrator,
    /// Session settings of its pool's connections besides the schema's search path (e.g.
    /// [`crate::postgres::INDEXED_LOOKUPS`]).
    pub session_settings: &'static [(&'static str, &'static str)],
}

/// Returns `127.0.0.1:port`, the default address of a service in development.
pub const fn localhost(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

pub struct ServiceHost {
    spec: &'static ServiceSpec,
    config: CommonConfig,
    pool: PgPool,
    redis_client: redis::Client,
    redis: ConnectionManager,
    listener: TcpListener,
    grpc_addr: SocketAddr,
    health: HealthReporter,
    relay: Option<Relay>,
    /// Shared by the outboxes, the relay and the consumers: every commit that adds events
    /// wakes the relay of this process.
    outbox_wake: OutboxWake,
    consumers: Vec<Task>,
}

impl ServiceHost {
    /// Connects to Postgres (schema `spec.name`) and Redis, migrates when `migrate_on_start`
    /// is set, and binds the gRPC listener.
    pub async fn start(spec: &'static ServiceSpec, config: CommonConfig) -> anyhow::Result<Self> {
        let name = spec.name;
        let pool = crate::postgres::connect_with_limit(
            &config.database_url,
            name,
            config.database_max_connections,
            spec.session_settings,
        )
        .await?;
        if config.migrate_on_start {
            crate::postgres::migrate(&pool, name, spec.migrator).await?;
        }
        let redis_client = crate::redis::client(&config.redis_url)?;
        let redis = crate::redis::manager(&redis_client).await?;
        let addr = config.grpc_addr.unwrap_or(spec.default_grpc_addr);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind grpc address {addr}"))?;
        let grpc_addr = listener.local_addr().context("read bound address")?;
        let (health, _) = tonic_health::server::health_reporter();
        HealthMonitor::report(&health, &[], ServingStatus::NotServing).await;
        Ok(Self {
            spec,
            config,
            pool,
            redis_client,
            redis,
            listener,
            grpc_addr,
            health,
            relay: None,
            outbox_wake: OutboxWake::new(),
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

    /// Returns an outbox publishing to `stream` and starts the relay that drains it; the
    /// outbox's [`Outbox::commit`] wakes that relay.
    pub fn outbox(&mut self, stream: &str) -> Outbox {
        let relay = Relay::new(
            self.pool.clone(),
            self.redis.clone(),
            self.spec.name,
            Duration::from_millis(self.config.relay_poll_ms),
            self.config.stream_max_len,
            self.outbox_wake.clone(),
        )
        .with_min_interval(Duration::from_millis(self.config.relay_min_interval_ms))
        .with_retention(
            (self.config.outbox_retention_hours > 0)
                .then(|| Duration::from_secs(self.config.outbox_retention_hours * 3_600)),
        );
        self.relay = Some(relay);
        Outbox::new(
            self.spec.name,
            self.spec.name,
            self.stream(stream),
            self.outbox_wake.clone(),
        )
    }

    /// Runs `handler` over `streams` in this service's consumer group while serving.
    pub fn consume<H: EventHandler>(&mut self, streams: &[&str], handler: Arc<H>) {
        let consumer_name = self
            .config
            .consumer_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.spec.name, uuid::Uuid::new_v4().simple()));
        let settings = ConsumerSettings {
            group: self.spec.name.to_owned(),
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
            self.spec.name,
            settings,
            handler,
            self.outbox_wake.clone(),
        );
        self.consumers
            .push(Box::new(move |stop| Box::pin(consumer.run(stop))));
    }

    /// Serves `routes` with health and reflection until `signal` completes, then shuts down
    /// gracefully within the configured grace period.
    pub async fn serve(
        self,
        routes: RoutesBuilder,
        auth: Option<Authenticator>,
        tasks: Vec<Task>,
        signal: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let tasks_stop = CancellationToken::new();
        let side_tasks: Vec<_> = tasks
            .into_iter()
            .map(|task| tokio::spawn(task(tasks_stop.clone())))
            .collect();
        let services = self.spec.grpc_services;
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
            .layer(tower::util::option_layer(auth.map(AuthLayer::new)))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(
                // tonic ignores `tcp_nodelay` for an incoming stream: without it Nagle holds the
                // small last write of every answer until the client's delayed ACK (~40 ms).
                TcpListenerStream::new(self.listener).map(|accepted| {
                    accepted.inspect(|stream| {
                        if let Err(err) = stream.set_nodelay(true) {
                            tracing::warn!(error = %err, "set TCP_NODELAY");
                        }
                    })
                }),
                stop_accepting.clone().cancelled_owned(),
            );
        tracing::info!(service = self.spec.name, grpc_addr = %self.grpc_addr, "serving");
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
        tasks_stop.cancel();
        for task in side_tasks {
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!("a side task outlived the grace period");
            }
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

/// A built service: connected, bound, its RPCs and background work wired; not yet serving.
pub struct Application {
    host: ServiceHost,
    routes: RoutesBuilder,
    auth: Option<Authenticator>,
    tasks: Vec<Task>,
}

impl Application {
    /// Returns an application serving `routes` on `host`.
    pub fn new(host: ServiceHost, routes: RoutesBuilder) -> Self {
        Self {
            host,
            routes,
            auth: None,
            tasks: Vec::new(),
        }
    }

    /// Runs `task` beside the gRPC server (e.g. an HTTP endpoint); it gets a token cancelled
    /// when shutdown starts and is awaited, within the grace period, before consumers stop.
    pub fn with_task<F, Fut>(mut self, task: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(Box::new(move |stop| Box::pin(task(stop))));
        self
    }

    /// Requires an API key with the scope `RPC_ACCESS` names on every call.
    pub fn with_auth(mut self, auth: Authenticator) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Returns the bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.host.grpc_addr()
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        self.host
            .serve(self.routes, self.auth, self.tasks, signal)
            .await
    }
}

/// Applies the migrations of `spec`'s schema.
pub async fn migrate(spec: &'static ServiceSpec, common: &CommonConfig) -> anyhow::Result<()> {
    let pool = crate::postgres::connect(&common.database_url, spec.name).await?;
    crate::postgres::migrate(&pool, spec.name, spec.migrator).await?;
    tracing::info!(schema = spec.name, "migrations applied");
    Ok(())
}

/// Marks the service's outbox rows since `since` unpublished (`republish`) and prints how many.
pub async fn republish(
    spec: &'static ServiceSpec,
    common: &CommonConfig,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let pool = crate::postgres::connect_with_limit(&common.database_url, spec.name, 1, &[]).await?;
    let marked = crate::events::relay::republish_since(&pool, spec.name, since).await?;
    pool.close().await;
    tracing::info!(schema = spec.name, marked, %since, "outbox rows marked for republishing");
    println!("{marked} events since {since} will be published again by the running relays");
    Ok(())
}

/// Runs a service binary: `serve` (the default) builds it with `build` from the configuration
/// `load` reads and serves until SIGTERM; `migrate` applies its migrations and exits. A
/// configuration error names the variable and exits with 64.
pub async fn run<C, B, Fut>(
    spec: &'static ServiceSpec,
    load: fn() -> Result<C, crate::config::ConfigError>,
    build: B,
) -> anyhow::Result<()>
where
    B: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<Application>>,
{
    run_with_commands(
        spec,
        load,
        build,
        |command: NoCommands, _config: C| async move { match command {} },
    )
    .await
}

/// Runs a service binary that has commands of its own (`E`) beside the platform's: those are
/// handed to `handle` with the service's configuration, read as for `serve`.
pub async fn run_with_commands<C, E, B, Fut, H, HandleFut>(
    spec: &'static ServiceSpec,
    load: fn() -> Result<C, crate::config::ConfigError>,
    build: B,
    handle: H,
) -> anyhow::Result<()>
where
    E: clap::Subcommand,
    B: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<Application>>,
    H: FnOnce(E, C) -> HandleFut,
    HandleFut: Future<Output = anyhow::Result<()>>,
{
    let command = Command::<E>::from_args();
    // `migrate` needs only the shared settings: the Kubernetes Job carries no service secrets.
    let common = crate::config::or_exit(spec.name, crate::config::load(spec.prefix));
    let telemetry = crate::telemetry::init(spec.name)?;
    let outcome = match command {
        Command::Migrate => migrate(spec, &common).await,
        Command::Republish { since } => republish(spec, &common, since).await,
        Command::Serve => {
            let config = crate::config::or_exit(spec.name, load());
            match build(config).await {
                Ok(app) => app.run_until(crate::shutdown_signal()).await,
                Err(err) => Err(err),
            }
        }
        Command::Service(command) => {
            let config = crate::config::or_exit(spec.name, load());
            handle(command, config).await
        }
        Command::CreateApiKey(args) => {
            crate::config::or_exit(spec.name, common.check_api_keys(spec.prefix));
            keys::create(spec, &common, args).await
        }
        Command::RevokeApiKey { key_id } => {
            crate::config::or_exit(spec.name, common.check_api_keys(spec.prefix));
            keys::revoke(spec, &common, &key_id).await
        }
        Command::ListApiKeys => {
            crate::config::or_exit(spec.name, common.check_api_keys(spec.prefix));
            keys::list(spec, &common).await
        }
    };
    // Flushed on failure too: the spans of a failed command are the ones worth reading.
    let flushed = telemetry.shutdown().await;
    outcome?;
    flushed
}

/// Returns the API-key authenticator of a service whose keys live in its own schema, checking
/// its settings (see [`CommonConfig::check_api_keys`]).
pub fn authenticator(
    spec: &'static ServiceSpec,
    common: &CommonConfig,
    pool: PgPool,
) -> anyhow::Result<Authenticator> {
    common.check_api_keys(spec.prefix)?;
    let pepper = common
        .api_key_pepper
        .clone()
        .with_context(|| format!("{}API_KEY_PEPPER is required", spec.prefix))?;
    let pepper = Pepper::new(pepper).with_context(|| format!("{}API_KEY_PEPPER", spec.prefix))?;
    let settings = crate::auth::AuthSettings {
        reflection_open: common.reflection_open,
        cache_ttl: common.api_key_cache_ttl(),
        ..crate::auth::AuthSettings::default()
    };
    Ok(Authenticator::with_settings(
        KeyStore::new(pool, spec.name, pepper),
        settings,
    ))
}

/// What a service binary is asked to do: the platform's commands, or one of the service's own
/// (`E`, flattened beside them).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command<E: clap::Subcommand = NoCommands> {
    /// Serve gRPC until SIGTERM (the default).
    Serve,
    /// Apply the service's database migrations and exit (the Kubernetes migration Job).
    Migrate,
    /// Create an API key (e.g. the first admin key) and print it once, or register an existing
    /// key (`--key-from-stdin`, `--key-file`) so that one key works in every service.
    CreateApiKey(CreateApiKeyArgs),
    /// Revoke an API key in this service's key table (other services keep their own).
    RevokeApiKey {
        /// The key's public id, the third `_`-separated part of `lf_<env>_<id>_…`
        key_id: String,
    },
    /// List this service's API keys: ids, names, scopes and dates, never secrets.
    ListApiKeys,
    /// Send this service's events since TIME again (after Redis lost stream entries): marks
    /// the outbox rows created since then unpublished, and the running relays publish them
    /// anew; consumers skip what they had applied, by event id. Prints how many.
    Republish {
        /// RFC 3339, e.g. 2026-11-20T00:00:00Z; rows older than the outbox retention are gone
        #[arg(long, value_name = "TIME")]
        since: chrono::DateTime<chrono::Utc>,
    },
    #[command(flatten)]
    Service(E),
}

/// The arguments of `create-api-key`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CreateApiKeyArgs {
    /// Who or what the key is for
    #[arg(long)]
    pub name: String,
    /// A scope the key holds: leads:write, leads:read, pii:read, admin (repeatable)
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// Register the existing key read from standard input instead of creating one (e.g. the
    /// admin key another service created); never pass a key as an argument, `ps` shows those
    #[arg(long, conflicts_with = "key_file")]
    pub key_from_stdin: bool,
    /// Register the existing key read from this file instead of creating one
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<std::path::PathBuf>,
    /// When the key stops working, RFC 3339 (e.g. 2027-01-31T00:00:00Z); never by default
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The commands of a service that has none of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum NoCommands {}

#[derive(Debug, clap::Parser)]
#[command(
    version,
    about = "A leadflow service; configured through its environment variables (see README)"
)]
struct Cli<E: clap::Subcommand> {
    #[command(subcommand)]
    command: Option<Command<E>>,
}

impl<E: clap::Subcommand> Command<E> {
    /// Parses the process arguments; no subcommand means `serve`.
    pub fn from_args() -> Self {
        <Cli<E> as clap::Parser>::parse()
            .command
            .unwrap_or(Command::Serve)
    }
}
