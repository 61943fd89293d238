//! The processes and databases of a run: the release `capture` binary against a fresh
//! `lf_bench_<uuid>` database and stream prefix, the bare tonic echo server (this binary in
//! `echo-server` mode), and their memory and CPU read from `/proc`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use leadflow_e2e::{Service, TestEnv};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, ChildStdin, Command};

/// Returns the release `capture` binary beside this one (`target/release/capture`), or says
/// how to build it.
pub fn capture_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the bench binary")?;
    // target/<profile>/bench → target/release/capture, whatever profile the bench has.
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("locate the target directory")?;
    let path = target.join("release").join("capture");
    if !path.is_file() {
        bail!(
            "{} is missing: build the services first with `cargo build --release --workspace --bins`",
            path.display()
        );
    }
    Ok(path)
}

/// A database made for this run (dropped by [`drop_database`]).
#[derive(Debug, Clone)]
pub struct Database {
    pub name: String,
    pub url: String,
}

/// Creates an empty database named `lf_bench_<suffix>`.
pub async fn create_database(admin_url: &str, suffix: &str) -> anyhow::Result<Database> {
    let name = format!("lf_bench_{suffix}");
    let mut connection = PgConnection::connect(admin_url)
        .await
        .context("connect to postgres (is it running on 127.0.0.1:5432?)")?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .with_context(|| format!("create database {name}"))?;
    let _closed = connection.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url, |(base, _)| base);
    Ok(Database {
        url: format!("{base}/{name}"),
        name,
    })
}

/// Drops a database of this run, disconnecting whoever is still on it.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut connection = PgConnection::connect(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut connection)
    .await
    .with_context(|| format!("drop database {name}"))?;
    let _closed = connection.close().await;
    Ok(())
}

/// Returns `TestEnv` settings for a bench database: the e2e harness's keys and variables.
pub fn bench_env(database: &Database, redis_url: &str) -> TestEnv {
    TestEnv {
        database: database.name.clone(),
        database_url: database.url.clone(),
        redis_url: redis_url.to_owned(),
        stream_prefix: format!("{}:", database.name),
        sink_dir: std::env::temp_dir().join(&database.name),
    }
}

/// Returns capture's environment for `env`, with production defaults where the e2e harness
/// tunes for fast tests (health checks every second, not every 200 ms; phone patterns
/// prepared before serving).
pub fn capture_env(env: &TestEnv) -> Vec<(String, String)> {
    env.service_env(Service::Capture)
        .into_iter()
        .filter(|(name, _)| {
            name != "CAPTURE_HEALTH_INTERVAL_MS" && name != "CAPTURE_WARM_PHONE_PATTERNS"
        })
        .collect()
}

/// Runs `capture <args>` with `vars` (e.g. `migrate`, `create-api-key`) and returns its stdout.
pub async fn run_capture(
    binary: &Path,
    vars: &[(String, String)],
    args: &[&str],
) -> anyhow::Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(binary)
            .args(args)
            .env_clear()
            .env("RUST_LOG", "warn")
            .envs(
                vars.iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .with_context(|| format!("capture {} timed out", args.join(" ")))?
    .with_context(|| format!("run capture {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "capture {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Creates an API key with `scopes` through `capture create-api-key` (the README's bootstrap).
pub async fn create_api_key(
    binary: &Path,
    vars: &[(String, String)],
    name: &str,
    scopes: &[&str],
) -> anyhow::Result<String> {
    let mut args = vec!["create-api-key", "--name", name];
    for scope in scopes {
        args.push("--scope");
        args.push(scope);
    }
    let stdout = run_capture(binary, vars, &args).await?;
    stdout
        .lines()
        .find(|line| line.starts_with("lf_"))
        .map(str::to_owned)
        .context("create-api-key printed no key")
}

/// What a child process wrote, kept short: the last lines and a count.
#[derive(Default)]
struct Output {
    tail: Mutex<VecDeque<String>>,
    lines: AtomicU64,
}

impl Output {
    fn push(&self, line: String) {
        self.lines.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut tail) = self.tail.lock() {
            if tail.len() >= 40 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }

    fn tail(&self) -> String {
        self.tail
            .lock()
            .map(|tail| tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}

/// Reads `stream` line by line; sends the first line `parse` accepts to `found`.
fn drain<R, F>(
    stream: R,
    output: Arc<Output>,
    found: tokio::sync::mpsc::Sender<SocketAddr>,
    parse: F,
) where
    R: AsyncRead + Unpin + Send + 'static,
    F: Fn(&str) -> Option<SocketAddr> + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::with_capacity(64 * 1024, stream).lines();
        let mut searching = true;
        while let Ok(Some(line)) = lines.next_line().await {
            if searching && let Some(addr) = parse(&line) {
                searching = false;
                let _sent = found.send(addr).await;
            }
            output.push(line);
        }
    });
}

/// Returns the address of capture's `serving` log line.
fn serving_addr(line: &str) -> Option<SocketAddr> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    (value["message"] == "serving")
        .then(|| value["grpc_addr"].as_str()?.parse().ok())
        .flatten()
}

/// A child process serving gRPC on loopback.
pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub pid: u32,
    /// From spawn to its address being known.
    pub started_in: Duration,
    child: Child,
    stdin: Option<ChildStdin>,
    output: Arc<Output>,
}

impl Server {
    /// Starts `capture serve` with `vars` and `RUST_LOG=info` (production's level); its JSON
    /// log lines are read and dropped, the last 40 kept for errors.
    pub async fn capture(binary: &Path, vars: &[(String, String)]) -> anyhow::Result<Self> {
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env_clear()
            .env("RUST_LOG", "info")
            .envs(
                vars.iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            );
        Self::spawn("capture", command, serving_addr).await
    }

    /// Starts this binary as a bare tonic echo server (R-echo): `grpc.health.v1` only, no
    /// middleware. It stops when its stdin closes.
    pub async fn echo() -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe().context("locate bench binary")?);
        command.arg("echo-server");
        Self::spawn("echo", command, |line| {
            line.strip_prefix("echo-server listening ")
                .and_then(|addr| addr.trim().parse().ok())
        })
        .await
    }

    async fn spawn<F>(name: &'static str, mut command: Command, parse: F) -> anyhow::Result<Self>
    where
        F: Fn(&str) -> Option<SocketAddr> + Send + Sync + Clone + 'static,
    {
        let spawned_at = Instant::now();
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("spawn {name}"))?;
        let pid = child.id().context("child pid")?;
        let output = Arc::new(Output::default());
        let (found_tx, mut found_rx) = tokio::sync::mpsc::channel(1);
        if let Some(stdout) = child.stdout.take() {
            drain(stdout, output.clone(), found_tx.clone(), parse.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            drain(stderr, output.clone(), found_tx.clone(), parse);
        }
        drop(found_tx);
        let addr = tokio::time::timeout(Duration::from_secs(30), found_rx.recv())
            .await
            .ok()
            .flatten();
        let Some(addr) = addr else {
            let _killed = child.start_kill();
            bail!("{name} did not start serving:\n{}", output.tail());
        };
        if !addr.ip().is_loopback() {
            bail!("{name} bound {addr}, not a loopback address");
        }
        Ok(Self {
            name,
            addr,
            pid,
            started_in: spawned_at.elapsed(),
            stdin: child.stdin.take(),
            child,
            output,
        })
    }

    /// Returns the server's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns the last lines the process wrote.
    pub fn log_tail(&self) -> String {
        self.output.tail()
    }

    /// Returns how many lines the process wrote.
    pub fn log_lines(&self) -> u64 {
        self.output.lines.load(Ordering::Relaxed)
    }

    /// Returns the process's resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }

    /// Returns the process's user + system CPU time in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        cpu_ticks(&format!("/proc/{}/stat", self.pid)).map(|(_, ticks)| ticks)
    }

    /// Stops the process: SIGTERM (capture drains and flushes its outbox) or closed stdin
    /// (echo), then a kill after `grace`.
    pub async fn stop(mut self, grace: Duration) -> String {
        drop(self.stdin.take());
        if let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_millis(500), self.child.wait()).await
        {
            return format!("{} stopped ({status})", self.name);
        }
        let _sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => format!("{} stopped ({status})", self.name),
            _ => {
                let _killed = self.child.start_kill();
                let _reaped = self.child.wait().await;
                format!("{} killed after {grace:?}", self.name)
            }
        }
    }
}

/// Returns the command name and user + system CPU time (clock ticks) in a `/proc/<pid>/stat`.
fn cpu_ticks(stat_path: &str) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name is in parentheses and may hold spaces; the fields after it start at 3.
    let (head, after) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Returns this process's user + system CPU time in clock ticks (all its threads).
pub fn own_cpu_ticks() -> Option<u64> {
    cpu_ticks("/proc/self/stat").map(|(_, ticks)| ticks)
}

/// Returns the user + system CPU time, in clock ticks, of every process named `postgres` (the
/// postmaster, its backends and its background workers) that is alive now.
pub fn postgres_cpu_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|entry| cpu_ticks(&format!("{}/stat", entry.path().display())))
        .filter(|(name, _)| name == "postgres")
        .map(|(_, ticks)| ticks)
        .sum()
}

/// Returns VmRSS of `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Returns the kernel's clock ticks per second (`getconf CLK_TCK`, 100 when unknown).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100)
}

/// Samples a process's VmRSS every 100 ms until stopped; keeps the maximum.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// What a sampler saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct RssSeen {
    pub max_kib: u64,
    pub samples: u64,
}

impl RssSampler {
    /// Starts sampling `pid`; gives up after `limit` even if never stopped.
    pub fn start(pid: u32, limit: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let samples = Arc::new(AtomicU64::new(0));
        let task = {
            let (stop, max, samples) = (stop.clone(), max.clone(), samples.clone());
            tokio::spawn(async move {
                let deadline = Instant::now() + limit;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Some(kib) = rss_kib(pid) {
                        max.fetch_max(kib, Ordering::Relaxed);
                        samples.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Self {
            stop,
            max,
            samples,
            task,
        }
    }

    /// Stops sampling (after one last sample) and returns what was seen.
    pub async fn stop(self) -> RssSeen {
        self.stop.store(true, Ordering::Relaxed);
        let _joined = self.task.await;
        RssSeen {
            max_kib: self.max.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
        }
    }
}

/// Serves `grpc.health.v1` on 127.0.0.1 with bare tonic until stdin closes (or 3 hours pass):
/// the `echo-server` mode of this binary.
pub async fn serve_echo() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind echo server")?;
    println!("echo-server listening {}", listener.local_addr()?);
    let (stdin_closed_tx, stdin_closed_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _read = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _sent = stdin_closed_tx.send(());
    });
    let (_reporter, health) = tonic_health::server::health_reporter();
    let stop = async {
        tokio::select! {
            _closed = stdin_closed_rx => {}
            () = tokio::time::sleep(Duration::from_secs(3 * 3600)) => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await
        .context("serve echo")
}
