//! Test harness: starts the real service binaries as child processes against a fresh
//! database and stream prefix, and hands out typed gRPC clients carrying API keys.

pub mod auth;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use leadflow_platform::grpc::Outgoing;
use leadflow_proto::analytics::v1::analytics_service_client::AnalyticsServiceClient;
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use leadflow_proto::capture::v1::{
    CreateSourceRequest, DedupeMode, DedupePolicy, SourceKind, SourceSettings,
};
use leadflow_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use leadflow_proto::messaging::v1::{ListMessagesRequest, Message};
use leadflow_proto::qualification::v1::qualification_service_client::QualificationServiceClient;
use secrecy::SecretString;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Key of the identity hashes in tests (32 bytes or more).
pub const IDENTITY_HASH_KEY: &str = "e2e-identity-hash-key-0123456789abcdef";
/// Key-encryption key of capture's personal data in tests (32 bytes, hex).
pub const PII_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
/// Blind-index key in tests (32 bytes, hex).
pub const BLIND_INDEX_KEY: &str =
    "2222222222222222222222222222222222222222222222222222222222222222";
/// Environment named in the tests' API keys (`lf_test_…`).
pub const API_KEY_ENV: &str = "test";
/// The source every suite registers (merge policy).
pub const WEBSITE_SOURCE: &str = "website";

/// Returns the admin URL of the test Postgres server.
pub fn admin_database_url() -> String {
    std::env::var("LEADFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Returns the URL of the test Redis server.
pub fn redis_url() -> String {
    std::env::var("LEADFLOW_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A fresh database and stream prefix for one test.
pub struct TestEnv {
    pub database: String,
    pub database_url: String,
    pub redis_url: String,
    pub stream_prefix: String,
    pub sink_dir: PathBuf,
}

impl TestEnv {
    /// Creates an empty database and picks a unique stream prefix.
    pub async fn create() -> anyhow::Result<Self> {
        let admin = admin_database_url();
        let database = format!("lf_e2e_{}", uuid::Uuid::new_v4().simple());
        let mut connection = PgConnection::connect(&admin)
            .await
            .context("connect to the test postgres (is it running? see README)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&mut connection)
            .await
            .context("create test database")?;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        let database_url = format!("{base}/{database}");
        let sink_dir = std::env::temp_dir().join(format!("leadflow-e2e-{database}"));
        Ok(Self {
            stream_prefix: format!("{database}:"),
            database,
            database_url,
            redis_url: redis_url(),
            sink_dir,
        })
    }

    /// Creates an API key with `scopes` through capture's `create-api-key` subcommand (the
    /// bootstrap path of the README) and returns it.
    pub async fn create_api_key(&self, name: &str, scopes: &[&str]) -> anyhow::Result<String> {
        self.create_api_key_in(Service::Capture, name, scopes, &[])
            .await
    }

    /// Creates an API key in `service`'s key table through its `create-api-key` subcommand,
    /// with `extra` arguments (e.g. `--expires-at`), and returns it.
    pub async fn create_api_key_in(
        &self,
        service: Service,
        name: &str,
        scopes: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let mut args = key_args(name, scopes);
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        let output = self.run_command(service, &args, None).await?;
        let stdout = succeeded(service, &args, output)?;
        Ok(stdout
            .lines()
            .find(|line| line.starts_with("lf_"))
            .context("create-api-key printed no key")?
            .to_owned())
    }

    /// Registers the existing `key` in `service`'s key table through
    /// `create-api-key --key-from-stdin` (how the README shares one key across the suite).
    pub async fn import_api_key(
        &self,
        service: Service,
        key: &str,
        name: &str,
        scopes: &[&str],
    ) -> anyhow::Result<()> {
        let mut args = key_args(name, scopes);
        args.push("--key-from-stdin".to_owned());
        let output = self
            .run_command(service, &args, Some(format!("{key}\n").as_bytes()))
            .await?;
        succeeded(service, &args, output).map(drop)
    }

    /// Revokes `key_id` in `service`'s key table through its `revoke-api-key` subcommand.
    pub async fn revoke_api_key(&self, service: Service, key_id: &str) -> anyhow::Result<()> {
        let args = ["revoke-api-key".to_owned(), key_id.to_owned()];
        let output = self.run_command(service, &args, None).await?;
        succeeded(service, &args, output).map(drop)
    }

    /// Runs `<service> <args…>` (e.g. a key subcommand) with this test's environment for that
    /// service and `stdin` as its standard input; returns its output whatever its exit status.
    pub async fn run_command(
        &self,
        service: Service,
        args: &[String],
        stdin: Option<&[u8]>,
    ) -> anyhow::Result<std::process::Output> {
        let mut child = Command::new(binary_path(service.binary())?)
            .args(args)
            .env_clear()
            .env("RUST_LOG", "warn")
            .envs(self.service_env(service))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {}", service.binary()))?;
        if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
            // A command that stops before reading (a bad argument) closes the pipe early: its
            // exit status and stderr tell why, not this write.
            match input.write_all(bytes).await {
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    return Err(err).context("write stdin");
                }
                _ => {}
            }
            // Dropping `input` closes the pipe, so the command reads to the end.
        }
        let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .with_context(|| format!("{} {} timed out", service.binary(), args.join(" ")))?
            .with_context(|| format!("run {}", service.binary()))?;
        Ok(output)
    }

    /// Returns a connection to the test database, for asserting what services stored.
    pub async fn connect(&self) -> anyhow::Result<PgConnection> {
        PgConnection::connect(&self.database_url)
            .await
            .context("connect to test database")
    }

    /// Returns a Redis connection.
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        redis::Client::open(self.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await
            .context("connect to redis")
    }

    /// Returns the full name of a stream under this test's prefix.
    pub fn stream(&self, stream: &str) -> String {
        format!("{}{stream}", self.stream_prefix)
    }

    /// Returns every entry of `stream` (under this test's prefix), oldest first, read with
    /// `XRANGE - +`.
    pub async fn stream_entries(&self, stream: &str) -> anyhow::Result<Vec<StreamEntry>> {
        let mut redis = self.redis().await?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(self.stream(stream))
            .arg("-")
            .arg("+")
            .query_async(&mut redis)
            .await
            .with_context(|| format!("XRANGE {stream}"))?;
        reply
            .ids
            .into_iter()
            .map(|entry| {
                let mut fields = Vec::new();
                let mut names: Vec<&String> = entry.map.keys().collect();
                names.sort();
                for name in names {
                    let bytes = match &entry.map[name] {
                        redis::Value::BulkString(bytes) => bytes.clone(),
                        redis::Value::SimpleString(text) => text.clone().into_bytes(),
                        other => bail!("stream field {name} of {} is {other:?}", entry.id),
                    };
                    fields.push((name.clone(), bytes));
                }
                Ok(StreamEntry {
                    id: entry.id,
                    fields,
                })
            })
            .collect()
    }

    /// Returns environment variables that configure `service` for this test.
    pub fn service_env(&self, service: Service) -> Vec<(String, String)> {
        let prefix = service.prefix();
        let mut env = vec![
            (format!("{prefix}GRPC_ADDR"), "127.0.0.1:0".to_owned()),
            (format!("{prefix}DATABASE_URL"), self.database_url.clone()),
            (format!("{prefix}REDIS_URL"), self.redis_url.clone()),
            (format!("{prefix}STREAM_PREFIX"), self.stream_prefix.clone()),
            (format!("{prefix}MIGRATE_ON_START"), "true".to_owned()),
            // Suites run side by side against one Postgres: stay well under its 100 clients.
            (format!("{prefix}DATABASE_MAX_CONNECTIONS"), "6".to_owned()),
            (format!("{prefix}CONSUMER_BLOCK_MS"), "500".to_owned()),
            (format!("{prefix}CONSUMER_MIN_IDLE_MS"), "1000".to_owned()),
            (format!("{prefix}HEALTH_INTERVAL_MS"), "200".to_owned()),
            (format!("{prefix}SHUTDOWN_GRACE_MS"), "5000".to_owned()),
            (format!("{prefix}API_KEY_PEPPER"), api_key_pepper(service)),
            (format!("{prefix}API_KEY_ENV"), API_KEY_ENV.to_owned()),
        ];
        match service {
            Service::Capture => {
                for (name, value) in [
                    ("CAPTURE_IDENTITY_HASH_KEY", IDENTITY_HASH_KEY),
                    ("CAPTURE_PII_KEY", PII_KEY),
                    ("CAPTURE_BLIND_INDEX_KEY", BLIND_INDEX_KEY),
                    // Tests run side by side: never the fixed default port.
                    ("CAPTURE_HTTP_ADDR", "127.0.0.1:0"),
                    // Sweep old idempotent answers often enough for a test to see it.
                    ("CAPTURE_IDEMPOTENCY_SWEEP_SECONDS", "1"),
                    // A debug build takes over a second to prepare a country code's phone
                    // patterns; a start that does so is tested on its own.
                    ("CAPTURE_WARM_PHONE_PATTERNS", "false"),
                ] {
                    env.push((name.to_owned(), value.to_owned()));
                }
            }
            Service::Messaging => env.push((
                "MESSAGING_SINK_DIR".to_owned(),
                self.sink_dir.display().to_string(),
            )),
            Service::Qualification | Service::Analytics => {}
        }
        env
    }
}

/// Returns the pepper of `service`'s API-key hashes in tests: each service has its own, as
/// deployments should, so a key shared across the suite is hashed differently in each table.
pub fn api_key_pepper(service: Service) -> String {
    format!("e2e-{}-api-key-pepper-0123456789abcdef", service.binary())
}

/// Returns the `create-api-key` arguments for a key named `name` holding `scopes`.
fn key_args(name: &str, scopes: &[&str]) -> Vec<String> {
    let mut args = vec![
        "create-api-key".to_owned(),
        "--name".to_owned(),
        name.to_owned(),
    ];
    for scope in scopes {
        args.push("--scope".to_owned());
        args.push((*scope).to_owned());
    }
    args
}

/// Returns the stdout of a command that exited successfully, or fails with its stderr.
fn succeeded(
    service: Service,
    args: &[String],
    output: std::process::Output,
) -> anyhow::Result<String> {
    if !output.status.success() {
        bail!(
            "{} {} failed ({}): {}",
            service.binary(),
            args.first().map_or("", String::as_str),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// One entry of a Redis stream: its id and its fields with their raw bytes.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: String,
    /// Field name and value, sorted by name.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl StreamEntry {
    /// Returns the raw bytes of field `name`.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, bytes)| bytes.as_slice())
    }

    /// Returns every field name and value concatenated, to search the entry for leaks.
    pub fn raw(&self) -> Vec<u8> {
        let mut raw = Vec::new();
        for (name, bytes) in &self.fields {
            raw.extend_from_slice(name.as_bytes());
            raw.push(0);
            raw.extend_from_slice(bytes);
            raw.push(0);
        }
        raw
    }
}

/// The four services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Capture,
    Qualification,
    Messaging,
    Analytics,
}

impl Service {
    /// Returns the binary name.
    pub fn binary(self) -> &'static str {
        match self {
            Service::Capture => "capture",
            Service::Qualification => "qualification",
            Service::Messaging => "messaging",
            Service::Analytics => "analytics",
        }
    }

    /// Every service, in the order the suite starts them.
    pub const ALL: [Service; 4] = [
        Service::Capture,
        Service::Qualification,
        Service::Messaging,
        Service::Analytics,
    ];

    /// Returns the environment prefix.
    pub fn prefix(self) -> &'static str {
        match self {
            Service::Capture => "CAPTURE_",
            Service::Qualification => "QUALIFICATION_",
            Service::Messaging => "MESSAGING_",
            Service::Analytics => "ANALYTICS_",
        }
    }
}

/// Returns the path of a workspace binary built beside this test.
pub fn binary_path(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("locate the target directory")?;
    let path = profile_dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the services first with `cargo build --workspace --bins` (the README's test command does)",
            path.display()
        );
    }
    Ok(path)
}

/// A service binary running as a child process.
pub struct Running {
    pub service: Service,
    pub grpc_addr: SocketAddr,
    /// The HTTP address the service logged (`serving http`), for those serving HTTP.
    pub http_addr: Option<SocketAddr>,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `service` with `env` and waits until it logs that it is serving.
    pub async fn start(service: Service, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut command = Command::new(binary_path(service.binary())?);
        command
            .arg("serve")
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(
                env.iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {}", service.binary()))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let http_addr = Arc::new(Mutex::new(None));
        let (addr_tx, mut addr_rx) = tokio::sync::mpsc::channel::<SocketAddr>(1);
        let show = std::env::var("TEST_LOG").is_ok();
        for stream in [
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            let http_addr = http_addr.clone();
            let addr_tx = addr_tx.clone();
            let name = service.binary();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if show {
                        eprintln!("[{name}] {line}");
                    }
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                        && value["message"] == "serving"
                        && let Some(addr) = value["grpc_addr"]
                            .as_str()
                            .and_then(|addr| addr.parse().ok())
                    {
                        let _sent = addr_tx.send(addr).await;
                    }
                    // Logged before `serving`, on the same stream, so it is read first.
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                        && value["message"] == "serving http"
                        && let Some(addr) = value["http_addr"]
                            .as_str()
                            .and_then(|addr| addr.parse::<SocketAddr>().ok())
                        && let Ok(mut http_addr) = http_addr.lock()
                    {
                        *http_addr = Some(addr);
                    }
                    if let Ok(mut logs) = logs.lock() {
                        logs.push(line);
                    }
                }
            });
        }
        drop(addr_tx);
        let grpc_addr = tokio::select! {
            addr = addr_rx.recv() => addr,
            () = tokio::time::sleep(Duration::from_secs(30)) => None,
        };
        let Some(grpc_addr) = grpc_addr else {
            let logs = logs.lock().map(|logs| logs.join("\n")).unwrap_or_default();
            bail!("{} did not start serving:\n{logs}", service.binary());
        };
        let http_addr = http_addr.lock().ok().and_then(|addr| *addr);
        Ok(Self {
            service,
            grpc_addr,
            http_addr,
            child,
            logs,
        })
    }

    /// Returns the service's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Returns a channel to the service.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        Channel::from_shared(self.url())?
            .connect()
            .await
            .context("connect to service")
    }

    /// Returns every line the process wrote so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs
            .lock()
            .map(|logs| logs.clone())
            .unwrap_or_default()
    }

    /// Returns the health status of the whole server.
    pub async fn health(&self) -> anyhow::Result<ServingStatus> {
        let mut client = HealthClient::new(self.channel().await?);
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("health check")?;
        Ok(response.into_inner().status())
    }

    /// Returns the service names v1 reflection lists, asked without an API key.
    pub async fn reflected_services(&self) -> anyhow::Result<Vec<String>> {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

        let question = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = ServerReflectionClient::new(self.channel().await?)
            .server_reflection_info(tokio_stream::once(question))
            .await?
            .into_inner();
        let answer = answers
            .message()
            .await?
            .context("reflection answered nothing")?;
        match answer.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => Ok(list
                .service
                .into_iter()
                .map(|service| service.name)
                .collect()),
            other => bail!("unexpected reflection answer {other:?}"),
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("process already gone")?;
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .context("run kill")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed");
        }
        tokio::time::timeout(within, self.child.wait())
            .await
            .context("process did not exit in time")?
            .context("wait for process")
    }
}

/// A client interceptor carrying an API key.
pub type Authed = InterceptedService<Channel, Outgoing>;

/// Returns `channel` wrapped to send `api_key`.
pub fn authed(channel: Channel, api_key: &str) -> anyhow::Result<Authed> {
    Ok(InterceptedService::new(
        channel,
        Outgoing::with_api_key(&SecretString::from(api_key.to_owned()))?,
    ))
}

/// All four services, started in dependency order against one test environment.
pub struct Suite {
    pub env: TestEnv,
    pub services: HashMap<Service, Running>,
    /// A key with every scope: created by capture and registered in the other three services,
    /// as the README bootstraps a deployment.
    pub admin_key: String,
    /// messaging's key for capture (`leads:read`, `pii:read`), registered in capture only.
    pub messaging_key: String,
}

impl Suite {
    /// Starts capture, then the others (messaging needs capture's address).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// Starts the suite with `settings` added to every service's environment under its
    /// prefix: `("API_KEY_CACHE_TTL_MS", "200")` sets `CAPTURE_API_KEY_CACHE_TTL_MS`, ….
    pub async fn start_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let env = TestEnv::create().await?;
        let admin_key = env.create_api_key("e2e-admin", &["admin"]).await?;
        let admin_key_ref = admin_key.as_str();
        let env_ref = &env;
        futures::future::try_join_all(
            [
                Service::Qualification,
                Service::Messaging,
                Service::Analytics,
            ]
            .map(|service| async move {
                env_ref
                    .import_api_key(service, admin_key_ref, "e2e-admin", &["admin"])
                    .await
            }),
        )
        .await?;
        let messaging_key = env
            .create_api_key("e2e-messaging", &["leads:read", "pii:read"])
            .await?;
        let service_env =
            |service: Service| {
                let mut vars = env.service_env(service);
                vars.extend(settings.iter().map(|(name, value)| {
                    (format!("{}{name}", service.prefix()), (*value).to_owned())
                }));
                vars
            };
        let capture = Running::start(Service::Capture, &service_env(Service::Capture)).await?;
        let mut messaging_env = service_env(Service::Messaging);
        messaging_env.push(("MESSAGING_CAPTURE_URL".to_owned(), capture.url()));
        messaging_env.push((
            "MESSAGING_CAPTURE_API_KEY".to_owned(),
            messaging_key.clone(),
        ));
        let qualification_env = service_env(Service::Qualification);
        let analytics_env = service_env(Service::Analytics);
        let (qualification, messaging, analytics) = tokio::try_join!(
            Running::start(Service::Qualification, &qualification_env),
            Running::start(Service::Messaging, &messaging_env),
            Running::start(Service::Analytics, &analytics_env),
        )?;
        let services = [capture, qualification, messaging, analytics]
            .into_iter()
            .map(|running| (running.service, running))
            .collect();
        let suite = Self {
            env,
            services,
            admin_key,
            messaging_key,
        };
        suite.create_website_source().await?;
        Ok(suite)
    }

    /// Starts capture alone, for tests of nothing else: the other services would only spend
    /// the CPU consuming its events.
    pub async fn start_capture() -> anyhow::Result<Self> {
        Self::start_capture_with(&[]).await
    }

    /// Starts capture alone with `settings` added under its prefix: `("HTTP_ADDR", …)` sets
    /// `CAPTURE_HTTP_ADDR`.
    pub async fn start_capture_with(settings: &[(&str, &str)]) -> anyhow::Result<Self> {
        let env = TestEnv::create().await?;
        let admin_key = env.create_api_key("e2e-admin", &["admin"]).await?;
        let mut vars = env.service_env(Service::Capture);
        vars.extend(settings.iter().map(|(name, value)| {
            (
                format!("{}{name}", Service::Capture.prefix()),
                (*value).to_owned(),
            )
        }));
        let capture = Running::start(Service::Capture, &vars).await?;
        let suite = Self {
            env,
            services: [(Service::Capture, capture)].into(),
            admin_key,
            // No messaging runs, so no key for it.
            messaging_key: String::new(),
        };
        suite.create_website_source().await?;
        Ok(suite)
    }

    /// Registers [`WEBSITE_SOURCE`] (merge policy).
    async fn create_website_source(&self) -> anyhow::Result<()> {
        self.create_source(
            WEBSITE_SOURCE,
            SourceSettings {
                name: "Website contact form".into(),
                kind: SourceKind::Form.into(),
                dedupe: Some(DedupePolicy {
                    mode: DedupeMode::Merge.into(),
                    window_seconds: 0,
                }),
                cost_per_lead_micros: 2_500_000,
                currency: "USD".into(),
                return_window_days: 30,
                ..SourceSettings::default()
            },
        )
        .await
    }

    /// Registers a source with the admin key.
    pub async fn create_source(
        &self,
        source_id: &str,
        settings: SourceSettings,
    ) -> anyhow::Result<()> {
        self.capture()
            .await?
            .create_source(CreateSourceRequest {
                source_id: source_id.to_owned(),
                settings: Some(settings),
            })
            .await?;
        Ok(())
    }

    /// Registers `source_id` with `settings` (which should name a `web_form`) and returns the
    /// URL its form posts to, with the form key capture made.
    pub async fn web_form_url(
        &self,
        source_id: &str,
        settings: SourceSettings,
    ) -> anyhow::Result<String> {
        let source = self
            .capture()
            .await?
            .create_source(CreateSourceRequest {
                source_id: source_id.to_owned(),
                settings: Some(settings),
            })
            .await?
            .into_inner()
            .source
            .context("created source")?;
        let form_key = source
            .settings
            .and_then(|settings| settings.web_form)
            .map(|form| form.form_key)
            .filter(|key| !key.is_empty())
            .context("the source has a form key")?;
        Ok(format!("{}/v1/forms/{form_key}", self.http_base()?))
    }

    /// Returns `http://<capture's web-form address>`.
    pub fn http_base(&self) -> anyhow::Result<String> {
        let addr = self
            .running(Service::Capture)
            .http_addr
            .context("capture logged no `serving http` address")?;
        Ok(format!("http://{addr}"))
    }

    /// Returns how many leads capture stored, counted in SQL.
    pub async fn stored_leads(&self) -> anyhow::Result<i64> {
        let mut db = self.env.connect().await?;
        // A re-capture merged into a lead is kept as a record of that lead, not a lead.
        let (count,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM capture.leads WHERE merged_into IS NULL")
                .fetch_one(&mut db)
                .await
                .context("count stored leads")?;
        Ok(count)
    }

    /// Returns a channel to `service` that sends `api_key` with every call.
    pub async fn channel_as(&self, service: Service, api_key: &str) -> anyhow::Result<Authed> {
        authed(self.running(service).channel().await?, api_key)
    }

    /// Returns a capture client calling with `api_key`.
    pub async fn capture_as(&self, api_key: &str) -> anyhow::Result<CaptureServiceClient<Authed>> {
        Ok(CaptureServiceClient::new(
            self.channel_as(Service::Capture, api_key).await?,
        ))
    }

    fn running(&self, service: Service) -> &Running {
        self.services
            .get(&service)
            .unwrap_or_else(|| panic!("{service:?} was not started in this suite"))
    }

    /// Returns a capture client with the admin key.
    pub async fn capture(&self) -> anyhow::Result<CaptureServiceClient<Authed>> {
        self.capture_as(&self.admin_key).await
    }

    /// Returns a qualification client with the admin key.
    pub async fn qualification(&self) -> anyhow::Result<QualificationServiceClient<Authed>> {
        Ok(QualificationServiceClient::new(
            self.channel_as(Service::Qualification, &self.admin_key)
                .await?,
        ))
    }

    /// Returns a messaging client with the admin key.
    pub async fn messaging(&self) -> anyhow::Result<MessagingServiceClient<Authed>> {
        Ok(MessagingServiceClient::new(
            self.channel_as(Service::Messaging, &self.admin_key).await?,
        ))
    }

    /// Returns an analytics client with the admin key.
    pub async fn analytics(&self) -> anyhow::Result<AnalyticsServiceClient<Authed>> {
        Ok(AnalyticsServiceClient::new(
            self.channel_as(Service::Analytics, &self.admin_key).await?,
        ))
    }

    /// Returns every log line of every service.
    pub fn all_logs(&self) -> Vec<String> {
        self.services.values().flat_map(Running::logs).collect()
    }
}

/// Waits up to `within` until messaging lists a message sent to `lead_id`, asking through
/// `client`; returns every message listed then.
pub async fn sent_messages(
    client: &MessagingServiceClient<Authed>,
    lead_id: &str,
    within: Duration,
) -> anyhow::Result<Vec<Message>> {
    eventually("a message sent", within, || {
        let mut client = client.clone();
        let lead_id = lead_id.to_owned();
        async move {
            let messages = client
                .list_messages(ListMessagesRequest { lead_id })
                .await?
                .into_inner()
                .messages;
            Ok(Some(messages).filter(|messages| !messages.is_empty()))
        }
    })
    .await
}

/// Polls `probe` every 100 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + within;
    let mut last_error = None;
    loop {
        match probe().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(err) => bail!("{what}: not reached within {within:?}; last error: {err:#}"),
                None => bail!("{what}: not reached within {within:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
