//! The environment block printed above the table (benchmarks.md §1.5): cores, CPU model, steal
//! time over the run, Postgres and Redis versions and settings, `pg_test_fsync`, git SHA and
//! build profile.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use sqlx::{Connection, PgConnection, Row as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// CPU time counters of the whole machine from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub total: u64,
    pub steal: u64,
    pub idle: u64,
}

impl CpuTimes {
    /// Reads the aggregate `cpu` line of `/proc/stat`.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().find(|line| line.starts_with("cpu "))?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|value| value.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
        // already counted in user.
        let total = values.iter().take(8).sum();
        Some(Self {
            total,
            steal: values.get(7).copied().unwrap_or_default(),
            idle: values.get(3).copied().unwrap_or_default()
                + values.get(4).copied().unwrap_or_default(),
        })
    }

    /// Returns (steal %, busy %) of all CPUs between `self` and `later`.
    pub fn shares_until(&self, later: &CpuTimes) -> (f64, f64) {
        let total = later.total.saturating_sub(self.total).max(1) as f64;
        let steal = later.steal.saturating_sub(self.steal) as f64;
        let idle = later.idle.saturating_sub(self.idle) as f64;
        (
            100.0 * steal / total,
            100.0 * (total - idle - steal).max(0.0) / total,
        )
    }
}

/// Returns the CPU model from `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Returns the 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|load| load.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Returns the root of the workspace this bench was built from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Returns the git SHA of the workspace, with `-dirty` when the tree has changes.
pub async fn git_sha() -> String {
    let root = workspace_root();
    let sha = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .await
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    let Some(sha) = sha else {
        return "unknown (not a git checkout)".to_owned();
    };
    let dirty = Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .await
        .ok()
        .is_some_and(|output| !output.stdout.is_empty());
    if dirty { format!("{sha}-dirty") } else { sha }
}

/// Returns the build profile of this binary.
pub fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug (numbers are meaningless: use --release)"
    } else {
        "release"
    }
}

/// Postgres facts that class the durable results.
pub struct Postgres {
    pub version: String,
    pub settings: String,
}

/// Reads the server version and the settings that matter for durable writes.
pub async fn postgres(admin_url: &str) -> anyhow::Result<Postgres> {
    let mut connection = PgConnection::connect(admin_url)
        .await
        .context("connect to postgres")?;
    let version: String = sqlx::query("SELECT version()")
        .fetch_one(&mut connection)
        .await?
        .try_get(0)?;
    let mut settings = Vec::new();
    for name in [
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "shared_buffers",
        "max_connections",
    ] {
        let row = sqlx::query("SELECT setting, unit FROM pg_settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut connection)
            .await?;
        if let Some(row) = row {
            let setting: String = row.try_get(0)?;
            let unit: Option<String> = row.try_get(1)?;
            let shown = match (name, unit.as_deref()) {
                ("shared_buffers", Some("8kB")) => setting
                    .parse::<u64>()
                    .map(|pages| format!("{}MB", pages * 8 / 1024))
                    .unwrap_or(setting),
                _ => setting,
            };
            settings.push(format!("{name}={shown}"));
        }
    }
    let _closed = connection.close().await;
    let version = version.split(" on ").next().unwrap_or(&version).to_owned();
    Ok(Postgres {
        version,
        settings: settings.join(", "),
    })
}

/// Returns the Redis server version.
pub async fn redis_version(url: &str) -> anyhow::Result<String> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned())
}

/// Finds `pg_test_fsync` on the PATH or in Debian's Postgres directories.
fn find_pg_test_fsync() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pg_test_fsync"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin/pg_test_fsync"))
            .filter(|candidate| candidate.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

/// Runs `pg_test_fsync -s 1` until it prints the `fdatasync` line of one 8 kB write, then stops
/// it; returns a description such as `fdatasync 812 µs/op`. At most 20 s.
pub async fn pg_test_fsync() -> String {
    let Some(binary) = find_pg_test_fsync() else {
        return "not installed (optional)".to_owned();
    };
    let file =
        std::env::temp_dir().join(format!("lf_bench_fsync_{}", uuid::Uuid::new_v4().simple()));
    let measured = async {
        let mut child = Command::new(&binary)
            .args(["-s", "1", "-f"])
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start pg_test_fsync")?;
        let stdout = child.stdout.take().context("pg_test_fsync stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut found = None;
        while let Some(line) = lines.next_line().await? {
            let trimmed = line.trim();
            if trimmed.starts_with("fdatasync") {
                found = Some(trimmed.to_owned());
                break;
            }
        }
        let _killed = child.start_kill();
        let _reaped = child.wait().await;
        anyhow::Ok(found)
    };
    let result = tokio::time::timeout(Duration::from_secs(20), measured).await;
    let _removed = std::fs::remove_file(&file);
    match result {
        Ok(Ok(Some(line))) => {
            // "fdatasync    1234.567 ops/sec     810 usecs/op"
            let words: Vec<&str> = line.split_whitespace().collect();
            let per_op = words
                .iter()
                .position(|word| *word == "usecs/op")
                .and_then(|index| index.checked_sub(1))
                .and_then(|index| words.get(index))
                .copied();
            match per_op {
                Some(micros) => format!(
                    "fdatasync {micros} µs/op (one 8 kB write, file in {})",
                    std::env::temp_dir().display()
                ),
                None => format!("{line} (unparsed)"),
            }
        }
        Ok(Ok(None)) => "printed no fdatasync line".to_owned(),
        Ok(Err(err)) => format!("failed: {err:#}"),
        Err(_) => "timed out".to_owned(),
    }
}

/// Returns the newest modification time of the files under `dirs` (at most 20,000 files).
fn newest_source(dirs: &[PathBuf]) -> Option<(SystemTime, PathBuf)> {
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            seen += 1;
            if seen > 20_000 {
                return newest;
            }
            let path = entry.path();
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            if metadata.is_dir() {
                stack.push(path);
            } else if let Ok(modified) = metadata.modified()
                && newest.as_ref().is_none_or(|(time, _)| modified > *time)
            {
                newest = Some((modified, path));
            }
        }
    }
    newest
}

/// Returns a warning when a source of `capture` is newer than its binary.
pub fn stale_binary_warning(binary: &Path) -> Option<String> {
    let built = std::fs::metadata(binary).ok()?.modified().ok()?;
    let root = workspace_root();
    let dirs: Vec<PathBuf> = [
        "services/capture/src",
        "services/capture/migrations",
        "libs/platform/src",
        "libs/platform/migrations",
        "libs/proto/src",
        "proto",
    ]
    .iter()
    .map(|dir| root.join(dir))
    .collect();
    let (newest, path) = newest_source(&dirs)?;
    (newest > built).then(|| {
        format!(
            "{} is older than {}: rebuild with `cargo build --release --workspace --bins`",
            binary.display(),
            path.strip_prefix(&root).unwrap_or(&path).display()
        )
    })
}
