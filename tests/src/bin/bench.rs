//! `bench`: capture's benchmarks B2, B3, B5 and B13 of `shared/benchmarks.md`, each a ratio
//! to a reference measured in the same run, interleaved (see the README's "Benchmarks").
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo run --release -p leadflow-e2e --bin bench -- quick   # or: full
//! ```
//!
//! It starts the release `capture` binary on a fresh `lf_bench_<uuid>` database, loads it over
//! loopback only, stops it, drops its databases and always exits 0: benchmarks never gate.

#[path = "../bench/environment.rs"]
mod environment;
#[path = "../bench/leads.rs"]
mod leads;
#[path = "../bench/load.rs"]
mod load;
#[path = "../bench/process.rs"]
mod process;
#[path = "../bench/reference.rs"]
mod reference;
#[path = "../bench/report.rs"]
mod report;
#[path = "../bench/scenarios.rs"]
mod scenarios;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A few minutes: 5 rounds × 5 s, 20,000-row imports (CI).
    Quick,
    /// By hand: 5 rounds × 15 s, a 1,000,000-row import.
    Full,
    /// Internal: the bare tonic server of R-echo (started by the bench itself).
    #[value(hide = true)]
    EchoServer,
}

/// Capture benchmarks: ratios to same-run references (B2, B3, B5, B13).
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Cli {
    #[arg(value_enum, default_value_t = Mode::Quick)]
    mode: Mode,
    /// Concurrent CaptureLead streams in B2 (and Postgres connections of R-pg-capture).
    #[arg(long)]
    clients: Option<usize>,
    /// HTTP/2 connections the B2 streams share.
    #[arg(long)]
    connections: Option<usize>,
    /// A/B rounds of B2.
    #[arg(long)]
    rounds: Option<usize>,
    /// Rows per B5 import (and per R-copy).
    #[arg(long)]
    import_rows: Option<u64>,
    /// A/B rounds of B5.
    #[arg(long)]
    import_rounds: Option<usize>,
    /// Run only B2 and B3 (`capture`), only B5 (`import`) or only B3a and B3c (`latency`);
    /// B13's idle figure always.
    #[arg(long, value_enum)]
    only: Option<OnlyArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnlyArg {
    Capture,
    Import,
    Latency,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let mut plan = match cli.mode {
        Mode::EchoServer => {
            if let Err(err) = process::serve_echo().await {
                eprintln!("echo-server: {err:#}");
            }
            return;
        }
        Mode::Quick => scenarios::Plan::quick(),
        Mode::Full => scenarios::Plan::full(),
    };
    if let Some(clients) = cli.clients {
        plan.clients = clients.clamp(1, 64);
    }
    if let Some(connections) = cli.connections {
        plan.connections = connections.clamp(1, 64);
    }
    if let Some(rounds) = cli.rounds {
        plan.rounds = rounds.clamp(1, 50);
    }
    if let Some(rows) = cli.import_rows {
        plan.import_rows = rows.clamp(100, 10_000_000);
    }
    if let Some(rounds) = cli.import_rounds {
        plan.import_rounds = rounds.clamp(1, 20);
    }
    plan.only = cli.only.map(|only| match only {
        OnlyArg::Capture => scenarios::Only::Capture,
        OnlyArg::Import => scenarios::Only::Import,
        OnlyArg::Latency => scenarios::Only::Latency,
    });
    scenarios::run(plan).await;
}
