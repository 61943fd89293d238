//! The run: start capture on a fresh database, measure B13 (idle), B2, B3, B5 and B13 (loaded)
//! against their same-run references, interleaved, then stop everything, drop the databases
//! and print the figures, the environment block and the table.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use leadflow_e2e::{Authed, authed};
use leadflow_platform::events::CAPTURE_STREAM;
use leadflow_proto::capture::v1::capture_service_client::CaptureServiceClient;
use leadflow_proto::capture::v1::{
    CaptureOutcome, CreateSourceRequest, DedupeMode, DedupePolicy, ImportLeadsRequest,
    ImportOutcome, SourceKind, SourceSettings,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Row as _};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::environment::{self, CpuTimes};
use crate::leads::{Lead, Numbers, SOURCE, invalid_request, mix};
use crate::load::{self, Closed, Op, Open};
use crate::process::{self, Database, RssSampler, RssSeen, Server};
use crate::reference::{self, Material, RefCapture};
use crate::report::{self, Goal, RatioStats, Row, mb, ms, thousands};

/// How long each part runs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: &'static str,
    pub clients: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub rounds: usize,
    pub round: Duration,
    pub latency_rounds: usize,
    pub latency_window: Duration,
    pub echo_window: Duration,
    pub open_window: Duration,
    /// One offered rate of the MSR search (B3b's base).
    pub msr_step: Duration,
    pub import_rows: u64,
    pub import_rounds: usize,
    pub import_deadline: Duration,
    /// Only these scenarios (B13 always): all when `None`.
    pub only: Option<Only>,
}

/// Scenarios that can be run alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// B2 and B3 (B3's load is a share of B2's maximum).
    Capture,
    /// B5.
    Import,
    /// B3a and B3c alone (1-client latency; B3b needs B2's maximum).
    Latency,
}

impl Plan {
    /// `quick`: a few minutes, for CI (prints, never gates).
    pub fn quick() -> Self {
        Self {
            mode: "quick",
            clients: 16,
            connections: 4,
            warmup: Duration::from_secs(2),
            rounds: 5,
            round: Duration::from_secs(5),
            latency_rounds: 3,
            latency_window: Duration::from_secs(2),
            echo_window: Duration::from_secs(1),
            open_window: Duration::from_secs(10),
            msr_step: Duration::from_secs(3),
            import_rows: 20_000,
            import_rounds: 3,
            import_deadline: Duration::from_secs(180),
            only: None,
        }
    }

    /// `full`: by hand; long rounds and a 1 M-row import.
    pub fn full() -> Self {
        Self {
            mode: "full",
            clients: 16,
            connections: 4,
            warmup: Duration::from_secs(5),
            rounds: 5,
            round: Duration::from_secs(15),
            latency_rounds: 5,
            latency_window: Duration::from_secs(5),
            echo_window: Duration::from_secs(2),
            open_window: Duration::from_secs(30),
            msr_step: Duration::from_secs(10),
            import_rows: 1_000_000,
            import_rounds: 1,
            import_deadline: Duration::from_secs(2400),
            only: None,
        }
    }
}

/// Everything printed at the end.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    figures: Vec<String>,
    notes: Vec<String>,
}

impl Report {
    fn figure(&mut self, line: String) {
        self.figures.push(line);
    }

    fn note(&mut self, line: String) {
        println!("  ! {line}");
        self.notes.push(line);
    }
}

/// Prints a progress line at once.
fn progress(line: &str) {
    println!("· {line}");
}

/// What the run started: processes, databases, clients.
struct Fixture {
    admin_url: String,
    redis_url: String,
    binary: PathBuf,
    database: Database,
    stream_prefix: String,
    capture: Server,
    echo: Option<Server>,
    writers: Vec<CaptureServiceClient<Authed>>,
    echo_channel: Option<Channel>,
    reference_pool: PgPool,
    monitor: PgPool,
    numbers: Arc<Numbers>,
    material: Arc<Material>,
    clock_ticks: u64,
}

/// Runs the whole benchmark and prints its report. Never fails: errors are printed.
pub async fn run(plan: Plan) {
    let started = Instant::now();
    let cpu_start = CpuTimes::read();
    let mut report = Report::default();
    println!(
        "leadflow bench {} — capture: B2, B3, B5, B13, B14, B15 (ratios to same-run references)",
        plan.mode
    );
    let binary = match process::capture_binary() {
        Ok(binary) => binary,
        Err(err) => {
            println!("bench: {err:#}");
            println!("bench: nothing measured (exit 0: benchmarks never gate)");
            return;
        }
    };
    if let Some(warning) = environment::stale_binary_warning(&binary) {
        report.note(warning);
    }
    let admin_url = leadflow_e2e::admin_database_url();
    let redis_url = leadflow_e2e::redis_url();
    let fsync = environment::pg_test_fsync().await;
    let fixture = match start(&plan, &binary, &admin_url, &redis_url, &mut report).await {
        Ok(fixture) => Some(fixture),
        Err(err) => {
            report.note(format!("setup failed: {err:#}"));
            None
        }
    };
    let mut copy_database = None;
    if let Some(fixture) = &fixture {
        tokio::select! {
            () = measure(&plan, fixture, &mut report, &mut copy_database) => {}
            _ = tokio::signal::ctrl_c() => report.note("interrupted: cleaning up".to_owned()),
        }
    }
    let stopped = match fixture {
        Some(fixture) => teardown(fixture, copy_database, &mut report).await,
        None => Vec::new(),
    };
    for line in stopped {
        progress(&line);
    }
    let cpu_end = CpuTimes::read();
    print_report(
        &plan,
        &binary,
        &admin_url,
        &redis_url,
        fsync,
        cpu_start,
        cpu_end,
        started.elapsed(),
        report,
    )
    .await;
}

async fn start(
    plan: &Plan,
    binary: &std::path::Path,
    admin_url: &str,
    redis_url: &str,
    report: &mut Report,
) -> anyhow::Result<Fixture> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let database = process::create_database(admin_url, &suffix).await?;
    progress(&format!("database {}", database.name));
    let result = start_on(plan, binary, admin_url, redis_url, &database, report).await;
    if result.is_err() {
        let _dropped = process::drop_database(admin_url, &database.name).await;
    }
    result
}

async fn start_on(
    plan: &Plan,
    binary: &std::path::Path,
    admin_url: &str,
    redis_url: &str,
    database: &Database,
    report: &mut Report,
) -> anyhow::Result<Fixture> {
    let env = process::bench_env(database, redis_url);
    let vars = process::capture_env(&env);
    let admin_key = process::create_api_key(binary, &vars, "bench-admin", &["admin"]).await?;
    let writer_key =
        process::create_api_key(binary, &vars, "bench-writer", &["leads:write"]).await?;
    let capture = Server::capture(binary, &vars).await?;
    progress(&format!(
        "capture {} on {} (pid {}, serving {} ms after spawn)",
        binary.display(),
        capture.addr,
        capture.pid,
        capture.started_in.as_millis()
    ));
    report.figure(format!(
        "B15 context  capture spawn → serving (migrations applied, the default region's phone patterns warmed): {} ms",
        capture.started_in.as_millis()
    ));
    let mut channels = Vec::new();
    for _ in 0..plan.connections.max(1) {
        channels.push(
            Channel::from_shared(capture.url())?
                .connect()
                .await
                .context("connect to capture")?,
        );
    }
    let mut admin = CaptureServiceClient::new(authed(channels[0].clone(), &admin_key)?);
    admin
        .create_source(CreateSourceRequest {
            source_id: SOURCE.to_owned(),
            settings: Some(SourceSettings {
                name: "Bench web form".to_owned(),
                kind: SourceKind::Form.into(),
                dedupe: Some(DedupePolicy {
                    mode: DedupeMode::Merge.into(),
                    window_seconds: 0,
                }),
                cost_per_lead_micros: 2_500_000,
                currency: "USD".to_owned(),
                return_window_days: 30,
                ..SourceSettings::default()
            }),
        })
        .await
        .context("create the bench source")?;
    let writers = channels
        .iter()
        .map(|channel| {
            Ok(CaptureServiceClient::new(authed(
                channel.clone(),
                &writer_key,
            )?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (echo, echo_channel) = match Server::echo().await {
        Ok(echo) => {
            let channel = Channel::from_shared(echo.url())?
                .connect()
                .await
                .context("connect to echo")?;
            (Some(echo), Some(channel))
        }
        Err(err) => {
            report.note(format!("R-echo unavailable: {err:#}"));
            (None, None)
        }
    };
    let options = PgConnectOptions::from_str(&database.url)?
        .application_name("bench-reference")
        // The session settings capture's own pool uses (`leadflow_platform::postgres`), so
        // both sides plan their statements alike.
        .options([("search_path", "capture"), ("jit", "off")])
        .options(leadflow_platform::postgres::INDEXED_LOOKUPS.iter().copied());
    // Same client count as the load; capture's own pool is 16 (libs/platform/src/postgres.rs),
    // and the same pool behaviour: a connection idle under a second is handed out unpinged.
    let reference_pool =
        leadflow_platform::postgres::pool_options(u32::try_from(plan.clients.max(1)).unwrap_or(16))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .context("connect the reference pool")?;
    let monitor = PgPoolOptions::new()
        .max_connections(1)
        .connect(&database.url)
        .await
        .context("connect the monitor")?;
    let material = Arc::new(Material::new(env.stream(CAPTURE_STREAM))?);
    check_generator(report);
    Ok(Fixture {
        admin_url: admin_url.to_owned(),
        redis_url: redis_url.to_owned(),
        binary: binary.to_path_buf(),
        database: database.clone(),
        stream_prefix: env.stream_prefix.clone(),
        capture,
        echo,
        writers,
        echo_channel,
        reference_pool,
        monitor,
        numbers: Arc::new(Numbers::default()),
        material,
        clock_ticks: process::clock_ticks_per_second(),
    })
}

/// Checks a sample of generated phones against `phonenumber` (what capture parses with).
fn check_generator(report: &mut Report) {
    let mut valid = 0;
    let mut mismatch = None;
    let sample = 600u64;
    for number in 0..sample {
        let lead = Lead::new(mix(number) % 5_000_000);
        let phone = lead.phone_sample();
        let region = phonenumber::country::Id::from_str(if phone.region.is_empty() {
            "US"
        } else {
            &phone.region
        })
        .ok();
        let parsed = phonenumber::parse(region, &phone.typed).ok();
        let e164 = parsed
            .as_ref()
            .filter(|parsed| parsed.is_valid())
            .map(|parsed| parsed.format().mode(phonenumber::Mode::E164).to_string());
        if e164.as_deref() == Some(phone.e164.as_str()) {
            valid += 1;
        } else if mismatch.is_none() {
            mismatch = Some(format!(
                "{:?} in {:?} → {:?}, expected {} ({})",
                phone.typed, phone.region, e164, phone.e164, phone.line_type
            ));
        }
    }
    report.figure(format!(
        "generator    {valid}/{sample} sampled phones (US, GB, DE, FR, AU, BR; as typed) parse valid to the expected E.164"
    ));
    if let Some(mismatch) = mismatch {
        report.note(format!("generator: phone check failed: {mismatch}"));
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// `CaptureLead` of a new, unique lead; round-robin over the connections.
fn capture_op(fixture: &Fixture) -> Op {
    let writers = fixture.writers.clone();
    let numbers = fixture.numbers.clone();
    Arc::new(move |client| {
        let mut stub = writers[client % writers.len()].clone();
        let request = Lead::new(numbers.next()).request;
        Box::pin(async move {
            let response = stub
                .capture_lead(request)
                .await
                .map_err(|status| status_text(&status))?;
            match response.into_inner().outcome() {
                CaptureOutcome::Created => Ok(()),
                other => Err(format!("expected a new lead, got {other:?}")),
            }
        })
    })
}

/// `CaptureLead` that fails validation; `INVALID_ARGUMENT` is success.
fn invalid_op(fixture: &Fixture) -> Op {
    let writers = fixture.writers.clone();
    let numbers = fixture.numbers.clone();
    Arc::new(move |client| {
        let mut stub = writers[client % writers.len()].clone();
        let number = numbers.next();
        let request = invalid_request(number, number);
        Box::pin(async move {
            match stub.capture_lead(request).await {
                Err(status) if status.code() == tonic::Code::InvalidArgument => Ok(()),
                Err(status) => Err(status_text(&status)),
                Ok(_) => Err("an invalid lead was accepted".to_owned()),
            }
        })
    })
}

/// R-pg-capture: the SQL of one new-lead capture.
fn reference_op(fixture: &Fixture) -> Op {
    let pool = fixture.reference_pool.clone();
    let material = fixture.material.clone();
    let numbers = fixture.numbers.clone();
    Arc::new(move |_client| {
        let pool = pool.clone();
        let material = material.clone();
        let capture = RefCapture::new(&material, Lead::new(numbers.next()));
        Box::pin(async move {
            reference::capture_new_lead(&pool, &material, &capture)
                .await
                .map_err(|err| err.to_string())
        })
    })
}

/// R-echo: one bare tonic unary call.
fn echo_op(channel: &Channel) -> Op {
    let client = HealthClient::new(channel.clone());
    Arc::new(move |_client| {
        let mut client = client.clone();
        Box::pin(async move {
            client
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|_| ())
                .map_err(|status| status_text(&status))
        })
    })
}

/// Waits (at most `limit`) until the relay has published every outbox row; returns what is
/// left.
async fn outbox_settled(fixture: &Fixture, limit: Duration) -> i64 {
    let deadline = Instant::now() + limit;
    loop {
        let left: i64 =
            match sqlx::query("SELECT count(*) FROM capture.outbox WHERE published_at IS NULL")
                .fetch_one(&fixture.monitor)
                .await
                .and_then(|row| row.try_get(0))
            {
                Ok(left) => left,
                Err(_) => return -1,
            };
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn quantiles(histogram: &Histogram<u64>) -> String {
    if histogram.is_empty() {
        return "no samples".to_owned();
    }
    format!(
        "p50 {} p90 {} p99 {} max {} (n={})",
        ms(histogram.value_at_quantile(0.50) as f64),
        ms(histogram.value_at_quantile(0.90) as f64),
        ms(histogram.value_at_quantile(0.99) as f64),
        ms(histogram.max() as f64),
        thousands(histogram.len() as f64)
    )
}

fn errors_text(phase: &Closed) -> String {
    match (&phase.first_error, phase.errors) {
        (_, 0) => String::new(),
        (Some(first), errors) => format!(", {errors} errors (first: {first})"),
        (None, errors) => format!(", {errors} errors"),
    }
}

async fn measure(
    plan: &Plan,
    fixture: &Fixture,
    report: &mut Report,
    copy_database: &mut Option<Database>,
) {
    // B13 idle: after start and the source, before any load.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = fixture.capture.rss_kib();
    progress(&format!(
        "B13 capture RSS idle: {}",
        idle.map_or_else(|| "unreadable".to_owned(), mb)
    ));
    let capture = plan.only.is_none_or(|only| only == Only::Capture);
    let import = plan.only.is_none_or(|only| only == Only::Import);
    let b2 = if capture {
        Some(b2(plan, fixture, report).await)
    } else {
        None
    };
    let b2_rss = b2.as_ref().and_then(|b2| b2.as_ref().ok()).map(|b2| b2.rss);
    let subject_rate = match b2.as_ref().filter(|_| capture) {
        None => None,
        Some(b2) => match b2 {
            Ok(b2) => Some(report::median(&b2.subject_rates)),
            Err(err) => {
                report.note(format!("B2 failed: {err:#}"));
                report.rows.push(Row::ratio(
                    "B2 capture",
                    &format!("leads/s, {} clients", plan.clients),
                    "R-pg-capture tps",
                    "—".to_owned(),
                    "—".to_owned(),
                    None,
                    Goal::AtLeast(0.60),
                ));
                None
            }
        },
    };
    let b14 = if capture || plan.only == Some(Only::Latency) {
        b3(plan, fixture, report, subject_rate).await
    } else {
        None
    };
    let b5 = if import {
        Some(b5(plan, fixture, report, copy_database).await)
    } else {
        None
    };
    let b5_rss = match b5 {
        None => None,
        Some(Ok(rss)) => Some(rss),
        Some(Err(err)) => {
            report.note(format!("B5 failed: {err:#}"));
            report.rows.push(Row::ratio(
                "B5 import",
                "ImportLeads rows/s",
                "R-copy rows/s",
                "—".to_owned(),
                "—".to_owned(),
                None,
                Goal::AtLeast(0.30),
            ));
            None
        }
    };
    report.rows.push(Row::absolute(
        "B5 import",
        "capture RSS max",
        "100 MB".to_owned(),
        b5_rss.map(|seen: RssSeen| (seen.max_kib as f64 / 1024.0, mb(seen.max_kib))),
        Goal::AtMost(100.0),
        " MB",
        plan.import_rounds,
    ));
    report.rows.push(Row::absolute(
        "B13 memory",
        "capture RSS idle",
        "30 MB".to_owned(),
        idle.map(|kib| (kib as f64 / 1024.0, mb(kib))),
        Goal::AtMost(30.0),
        " MB",
        1,
    ));
    report.rows.push(Row::absolute(
        "B13 memory",
        "capture RSS max, B2 load",
        "150 MB".to_owned(),
        b2_rss.map(|seen| (seen.max_kib as f64 / 1024.0, mb(seen.max_kib))),
        Goal::AtMost(150.0),
        " MB",
        plan.rounds,
    ));
    if capture {
        report.rows.push(b14.unwrap_or_else(|| b14_row(None)));
    }
    let started_ms = fixture.capture.started_in.as_secs_f64() * 1000.0;
    report.rows.push(Row::absolute(
        "B15 start",
        "capture spawn → serving",
        "500 ms".to_owned(),
        Some((started_ms, format!("{started_ms:.0} ms"))),
        Goal::AtMost(500.0),
        " ms",
        1,
    ));
    if let (Some(idle), Some(b2_rss)) = (idle, b2_rss) {
        report.figure(format!(
            "B13         capture RSS idle {} → max under B2 {} ({} samples every 100 ms); after B2 {}",
            mb(idle),
            mb(b2_rss.max_kib),
            b2_rss.samples,
            fixture.capture.rss_kib().map_or_else(|| "?".to_owned(), mb)
        ));
    }
}

struct B2 {
    subject_rates: Vec<f64>,
    rss: RssSeen,
}

/// CPU clock ticks, at one moment, of the processes a B2 phase runs on.
struct CpuSnapshot {
    capture: Option<u64>,
    postgres: u64,
    bench: Option<u64>,
}

impl CpuSnapshot {
    fn take(fixture: &Fixture) -> Self {
        Self {
            capture: fixture.capture.cpu_ticks(),
            postgres: process::postgres_cpu_ticks(),
            bench: process::own_cpu_ticks(),
        }
    }

    /// Takes the snapshot that ends a phase once the relay has published its rows: each
    /// side's outbox work is its own (R-pg-capture's rows are published by capture's polls,
    /// up to a poll interval after its phase ends).
    async fn settled(fixture: &Fixture) -> Self {
        let _left = outbox_settled(fixture, Duration::from_secs(5)).await;
        Self::take(fixture)
    }
}

/// CPU clock ticks the processes spent over one side's B2 phases, and the leads they made.
#[derive(Debug, Default)]
struct PhaseCpu {
    capture: u64,
    postgres: u64,
    bench: u64,
    leads: u64,
}

impl PhaseCpu {
    /// Adds a phase that made `leads`; a phase whose counters could not be read is left out.
    fn add(&mut self, before: &CpuSnapshot, after: &CpuSnapshot, leads: u64) {
        let (Some(capture_before), Some(capture_after), Some(bench_before), Some(bench_after)) =
            (before.capture, after.capture, before.bench, after.bench)
        else {
            return;
        };
        self.capture += capture_after.saturating_sub(capture_before);
        self.postgres += after.postgres.saturating_sub(before.postgres);
        self.bench += bench_after.saturating_sub(bench_before);
        self.leads += leads;
    }
}
async fn b2(plan: &Plan, fixture: &Fixture, report: &mut Report) -> anyhow::Result<B2> {
    let subject = capture_op(fixture);
    let reference = reference_op(fixture);
    let rss = RssSampler::start(fixture.capture.pid, Duration::from_secs(3600));
    progress(&format!(
        "B2 warm-up {} s each: R-pg-capture, then CaptureLead ({} clients on {} connections)",
        plan.warmup.as_secs(),
        plan.clients,
        plan.connections
    ));
    let warm_reference = load::closed_loop(plan.clients, plan.warmup, reference.clone()).await;
    let warm_subject = load::closed_loop(plan.clients, plan.warmup, subject.clone()).await;
    if warm_subject.ok == 0 || warm_reference.ok == 0 {
        let _seen = rss.stop().await;
        bail!(
            "warm-up made no progress: capture {} ok{}; reference {} ok{}\n{}",
            warm_subject.ok,
            errors_text(&warm_subject),
            warm_reference.ok,
            errors_text(&warm_reference),
            fixture.capture.log_tail()
        );
    }
    let mut subject_rates = Vec::new();
    let mut reference_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut subject_latency = load::histogram();
    let mut reference_latency = load::histogram();
    let (mut subject_errors, mut reference_errors) = (0, 0);
    let (mut subject_cpu, mut reference_cpu) = (PhaseCpu::default(), PhaseCpu::default());
    // Each phase starts where the one before ended: on a published outbox.
    let mut before = CpuSnapshot::settled(fixture).await;
    for round in 0..plan.rounds {
        let mut subject_phase = None;
        let mut reference_phase = None;
        // A B, then B A: neither side always runs on a warmer (or fuller) system.
        let subject_first = round % 2 == 1;
        for side in 0..2 {
            if (side == 0) == subject_first {
                let phase = load::closed_loop(plan.clients, plan.round, subject.clone()).await;
                let after = CpuSnapshot::settled(fixture).await;
                subject_cpu.add(&before, &after, phase.ok);
                before = after;
                subject_phase = Some(phase);
            } else {
                let phase = load::closed_loop(plan.clients, plan.round, reference.clone()).await;
                let after = CpuSnapshot::settled(fixture).await;
                reference_cpu.add(&before, &after, phase.ok);
                before = after;
                reference_phase = Some(phase);
            }
        }
        let (Some(subject_phase), Some(reference_phase)) = (subject_phase, reference_phase) else {
            continue;
        };
        let ratio = subject_phase.rate() / reference_phase.rate().max(f64::MIN_POSITIVE);
        progress(&format!(
            "B2 round {}/{}: R-pg-capture {} tps, CaptureLead {} leads/s, ratio {:.2}×{}{}",
            round + 1,
            plan.rounds,
            thousands(reference_phase.rate()),
            thousands(subject_phase.rate()),
            ratio,
            errors_text(&reference_phase),
            errors_text(&subject_phase)
        ));
        subject_rates.push(subject_phase.rate());
        reference_rates.push(reference_phase.rate());
        ratios.push(ratio);
        subject_errors += subject_phase.errors;
        reference_errors += reference_phase.errors;
        let _added = subject_latency.add(&subject_phase.latency);
        let _added = reference_latency.add(&reference_phase.latency);
    }
    let rss = rss.stop().await;
    let left = outbox_settled(fixture, Duration::from_secs(10)).await;
    let stats = RatioStats::of(&ratios);
    report.rows.push(Row::ratio(
        "B2 capture",
        &format!("leads/s, {} clients", plan.clients),
        "R-pg-capture tps",
        format!("{}/s", thousands(report::median(&reference_rates))),
        format!("{}/s", thousands(report::median(&subject_rates))),
        stats,
        Goal::AtLeast(0.60),
    ));
    let per_round = |rates: &[f64]| {
        rates
            .iter()
            .map(|rate| thousands(*rate))
            .collect::<Vec<_>>()
            .join(", ")
    };
    report.figure(format!(
        "B2          CaptureLead leads/s per round: {}; latency {}; {} errors",
        per_round(&subject_rates),
        quantiles(&subject_latency),
        subject_errors
    ));
    report.figure(format!(
        "B2          R-pg-capture tps per round:    {}; latency {}; {} errors",
        per_round(&reference_rates),
        quantiles(&reference_latency),
        reference_errors
    ));
    if let Some(stats) = stats {
        report.figure(format!(
            "B2          ratio per round: {} (median {:.2}×, min {:.2}×, max {:.2}×); closed loop at {} clients, not an MSR search; < 0.33× would be a defect",
            ratios
                .iter()
                .map(|ratio| format!("{ratio:.2}×"))
                .collect::<Vec<_>>()
                .join(", "),
            stats.median,
            stats.min,
            stats.max,
            plan.clients
        ));
    }
    if let Some(split) = cpu_split(fixture, &subject_cpu, &reference_cpu) {
        report.figure(format!("B14 context CPU per lead under B2, {split}"));
    }
    if left != 0 {
        report.note(format!(
            "outbox not drained 10 s after B2: {left} unpublished rows"
        ));
    }
    Ok(B2 { subject_rates, rss })
}

/// Where each side's CPU per lead went (capture, Postgres, the bench's client), and the
/// machine's total per lead on each side, whose ratio is what a CPU-bound throughput ratio
/// tends to; `None` before the subject made a lead.
fn cpu_split(fixture: &Fixture, subject: &PhaseCpu, reference: &PhaseCpu) -> Option<String> {
    let micros = |ticks: u64, cpu: &PhaseCpu| {
        cpu_micros_per_call(fixture.clock_ticks, Some(0), Some(ticks), cpu.leads)
    };
    let text =
        |micros: Option<f64>| micros.map_or_else(|| "— µs".to_owned(), |m| format!("{m:.0} µs"));
    if subject.leads == 0 {
        return None;
    }
    let subject_total = micros(subject.capture + subject.postgres + subject.bench, subject);
    let reference_total = micros(reference.postgres + reference.bench, reference);
    let reference_text = if reference.leads > 0 {
        format!(
            "; R-pg-capture: Postgres {}, bench (sqlx client) {}",
            text(micros(reference.postgres, reference)),
            text(micros(reference.bench, reference))
        )
    } else {
        String::new()
    };
    let totals = match (subject_total, reference_total) {
        (Some(subject_total), Some(reference_total)) if subject_total > 0.0 => format!(
            "; all three {subject_total:.0} µs against {reference_total:.0} µs ({:.2}×)",
            reference_total / subject_total
        ),
        _ => String::new(),
    };
    Some(format!(
        "CaptureLead: capture {} (relay included), Postgres {}, bench (gRPC client) {}{reference_text}{totals} (user+system from /proc/<pid>/stat at {} ticks/s, each phase until its outbox is published; Postgres: every process named postgres)",
        text(micros(subject.capture, subject)),
        text(micros(subject.postgres, subject)),
        text(micros(subject.bench, subject)),
        fixture.clock_ticks
    ))
}

/// B14's row: capture's CPU µs per lead against the echo server's per call at the same
/// arrival rate (`None`: not measured).
fn b14_row(measured: Option<(f64, f64)>) -> Row {
    let micros = |value: f64| format!("{value:.0} µs");
    let (reference, subject, stats) = match measured {
        Some((capture, echo)) => (
            micros(echo),
            micros(capture),
            RatioStats::of(&[capture / echo.max(f64::MIN_POSITIVE)]),
        ),
        None => ("—".to_owned(), "—".to_owned(), None),
    };
    Row::ratio(
        "B14 CPU",
        "capture CPU per lead, 50%",
        "R-echo server CPU per call",
        reference,
        subject,
        stats,
        Goal::AtMost(20.0),
    )
}

/// CPU µs per call from a process's clock ticks before and after `calls` calls, at
/// `clock_ticks` ticks per second; `None` when either reading failed or nothing was counted.
fn cpu_micros_per_call(
    clock_ticks: u64,
    before: Option<u64>,
    after: Option<u64>,
    calls: u64,
) -> Option<f64> {
    let ticks = after?.checked_sub(before?)?;
    (calls > 0 && ticks > 0 && clock_ticks > 0)
        .then(|| ticks as f64 * 1_000_000.0 / clock_ticks as f64 / calls as f64)
}

/// Runs B3 and returns B14's row, measured during B3b at 50 % (`None` without that phase).
async fn b3(
    plan: &Plan,
    fixture: &Fixture,
    report: &mut Report,
    subject_rate: Option<f64>,
) -> Option<Row> {
    let mut b14 = None;
    let subject = capture_op(fixture);
    let reference = reference_op(fixture);
    let invalid = invalid_op(fixture);
    let echo = fixture.echo_channel.as_ref().map(echo_op);
    let mut a_ratios = Vec::new();
    let mut c_ratios = Vec::new();
    let mut subject_latency = load::histogram();
    let mut reference_latency = load::histogram();
    let mut echo_latency = load::histogram();
    let mut invalid_latency = load::histogram();
    let mut errors = Vec::new();
    progress(&format!(
        "B3a/c {} rounds at 1 client: CaptureLead, R-pg-capture, R-echo, invalid CaptureLead",
        plan.latency_rounds
    ));
    for round in 0..plan.latency_rounds {
        let mut subject_p50 = None;
        let mut reference_p50 = None;
        let mut echo_p50 = None;
        let mut invalid_p50 = None;
        for step in 0..4 {
            // Rotate which one goes first.
            match (step + round) % 4 {
                0 => {
                    let phase = load::closed_loop(1, plan.latency_window, subject.clone()).await;
                    subject_p50 = (phase.ok > 0).then(|| phase.p(0.5));
                    let _added = subject_latency.add(&phase.latency);
                    errors.push(errors_text(&phase));
                }
                1 => {
                    let phase = load::closed_loop(1, plan.latency_window, reference.clone()).await;
                    reference_p50 = (phase.ok > 0).then(|| phase.p(0.5));
                    let _added = reference_latency.add(&phase.latency);
                    errors.push(errors_text(&phase));
                }
                2 => {
                    if let Some(echo) = &echo {
                        let phase = load::closed_loop(1, plan.echo_window, echo.clone()).await;
                        echo_p50 = (phase.ok > 0).then(|| phase.p(0.5));
                        let _added = echo_latency.add(&phase.latency);
                        errors.push(errors_text(&phase));
                    }
                }
                _ => {
                    let phase = load::closed_loop(1, plan.echo_window, invalid.clone()).await;
                    invalid_p50 = (phase.ok > 0).then(|| phase.p(0.5));
                    let _added = invalid_latency.add(&phase.latency);
                    errors.push(errors_text(&phase));
                }
            }
        }
        if let (Some(subject), Some(reference), Some(echo)) = (subject_p50, reference_p50, echo_p50)
        {
            a_ratios.push(subject / (echo + reference + 300.0));
        }
        if let (Some(invalid), Some(echo)) = (invalid_p50, echo_p50) {
            c_ratios.push(invalid / echo);
        }
        progress(&format!(
            "B3 round {}/{}: p50 CaptureLead {}, R-pg-capture {}, R-echo {}, invalid {}",
            round + 1,
            plan.latency_rounds,
            subject_p50.map_or_else(|| "—".to_owned(), ms),
            reference_p50.map_or_else(|| "—".to_owned(), ms),
            echo_p50.map_or_else(|| "—".to_owned(), ms),
            invalid_p50.map_or_else(|| "—".to_owned(), ms),
        ));
    }
    for error in errors.iter().filter(|error| !error.is_empty()) {
        report.note(format!("B3 closed loop{error}"));
    }
    let p50 = |histogram: &Histogram<u64>| histogram.value_at_quantile(0.5) as f64;
    let floor = p50(&echo_latency) + p50(&reference_latency) + 300.0;
    report.rows.push(Row::ratio(
        "B3a latency",
        "CaptureLead p50, 1 client",
        "R-echo p50 + R-pg-capture p50 + 0.3 ms",
        ms(floor),
        ms(p50(&subject_latency)),
        RatioStats::of(&a_ratios),
        Goal::AtMost(1.0),
    ));
    report.figure(format!(
        "B3a         CaptureLead 1 client:  {}",
        quantiles(&subject_latency)
    ));
    report.figure(format!(
        "B3a         R-pg-capture 1 client: {}",
        quantiles(&reference_latency)
    ));
    report.figure(format!(
        "B3a         R-echo 1 client:       {}",
        quantiles(&echo_latency)
    ));
    // (b) open model at 50 % and 80 % of capture's MSR, searched from B2's closed-loop rate.
    let msr = match subject_rate.filter(|rate| *rate > 0.0) {
        Some(closed_rate) => search_msr(plan, report, &subject, closed_rate).await,
        None => None,
    };
    for (share, slo_ms) in [(0.5, 10.0), (0.8, 25.0)] {
        let label = format!("B3b open {:.0}%", share * 100.0);
        let Some(rate) = msr.map(|rate| rate * share) else {
            report.rows.push(Row::absolute(
                &label,
                "CaptureLead p99",
                format!("{slo_ms:.0} ms"),
                None,
                Goal::AtMost(slo_ms),
                " ms",
                0,
            ));
            continue;
        };
        progress(&format!(
            "{label}: {} calls/s for {} s, latency from intended send time",
            thousands(rate),
            plan.open_window.as_secs()
        ));
        // B14 and the CPU split measure the 50 % phase, from a published outbox.
        let before = if share == 0.5 {
            Some(CpuSnapshot::settled(fixture).await)
        } else {
            None
        };
        let open = load::open_loop(rate, plan.open_window, 1024, subject.clone()).await;
        let p99 = open.latency.value_at_quantile(0.99) as f64 / 1000.0;
        let healthy = open.answered_cleanly();
        // Errors or unanswered calls fail the row whatever the latency of the rest.
        let judged = if healthy { p99 } else { f64::INFINITY };
        report.rows.push(Row::absolute(
            &label,
            "CaptureLead p99",
            format!("{slo_ms:.0} ms"),
            Some((
                judged,
                if healthy {
                    format!("{p99:.2} ms")
                } else {
                    format!("{p99:.2} ms, {} errors", open.failures())
                },
            )),
            Goal::AtMost(slo_ms),
            " ms",
            1,
        ));
        report_open(report, &label, &open);
        if let Some(before) = before {
            let after = CpuSnapshot::settled(fixture).await;
            let mut subject_cpu = PhaseCpu::default();
            subject_cpu.add(&before, &after, open.ok);
            // The same arrivals on R-pg-capture: how much of the tail is the machine's (disk
            // flushes, neighbours) rather than capture's.
            let context = load::open_loop(rate, plan.open_window, 1024, reference.clone()).await;
            let mut reference_cpu = PhaseCpu::default();
            reference_cpu.add(&after, &CpuSnapshot::settled(fixture).await, context.ok);
            if let Some(split) = cpu_split(fixture, &subject_cpu, &reference_cpu) {
                // At one arrival rate on both sides, Postgres's commits share disk flushes
                // alike: CPU per lead compares the work, not how busy each side kept the disk.
                report.figure(format!(
                    "B14 context CPU per lead at {} calls/s (open model), {split}",
                    thousands(rate)
                ));
            }
            report.figure(format!(
                "B3b context R-pg-capture at the same rate, from intended send: {}{}",
                quantiles(&context.latency),
                if context.errors + context.unfinished > 0 {
                    format!("; {} errors", context.errors + context.unfinished)
                } else {
                    String::new()
                }
            ));
            // B14: CPU per call is steadier than wall time on shared cores. Capture's (relay
            // included) over the calls just answered, against the bare echo server's at the
            // same arrival rate.
            let capture_cpu = cpu_micros_per_call(
                fixture.clock_ticks,
                Some(0),
                Some(subject_cpu.capture),
                subject_cpu.leads,
            );
            let echo_cpu = match (&fixture.echo, &echo) {
                (Some(server), Some(echo)) => {
                    let before = server.cpu_ticks();
                    let calls = load::open_loop(rate, plan.open_window, 1024, echo.clone()).await;
                    cpu_micros_per_call(fixture.clock_ticks, before, server.cpu_ticks(), calls.ok)
                }
                _ => None,
            };
            if let (Some(capture_cpu), Some(echo_cpu)) = (capture_cpu, echo_cpu) {
                report.figure(format!(
                    "B14         CPU at {} calls/s: capture {capture_cpu:.0} µs per lead (relay included), R-echo server {echo_cpu:.1} µs per call ({} ticks/s)",
                    thousands(rate),
                    fixture.clock_ticks
                ));
                b14 = Some(b14_row(Some((capture_cpu, echo_cpu))));
            }
        }
    }
    report.rows.push(Row::ratio(
        "B3c invalid",
        "INVALID_ARGUMENT p50",
        "R-echo p50",
        ms(p50(&echo_latency)),
        ms(p50(&invalid_latency)),
        RatioStats::of(&c_ratios),
        Goal::AtMost(2.0),
    ));
    report.figure(format!(
        "B3c         invalid CaptureLead 1 client: {} (each one also queues its lead.rejected event, written in batches after the answer)",
        quantiles(&invalid_latency)
    ));
    b14
}

/// B2's SLO: a rate is sustained when its p99 stays within it (benchmarks.md §1.3).
const MSR_P99_MS: f64 = 25.0;

/// The MSR search of benchmarks.md §1.3: offered rates stepped by 10 %, the highest with
/// achieved ≥ 99 % of offered, no errors and p99 ≤ [`MSR_P99_MS`]. It starts at half the
/// closed-loop rate and climbs while steps pass (to 1.5× that rate at most), or, when the
/// first fails, comes down until one passes (to a twentieth at least).
#[derive(Debug, Clone, PartialEq)]
struct MsrSearch {
    closed_rate: f64,
    next: Option<f64>,
    sustained: Option<f64>,
    failed_any: bool,
}

impl MsrSearch {
    const STEP: f64 = 1.1;

    fn new(closed_rate: f64) -> Self {
        Self {
            closed_rate,
            next: Some(closed_rate * 0.5),
            sustained: None,
            failed_any: false,
        }
    }

    /// The rate to offer next, `None` once the search is over.
    fn next_rate(&self) -> Option<f64> {
        self.next
    }

    /// Whether `open` sustained its offered rate.
    fn sustains(open: &Open) -> bool {
        open.answered_cleanly()
            && open.achieved_rate() >= 0.99 * open.offered_rate
            && open.latency.value_at_quantile(0.99) as f64 / 1000.0 <= MSR_P99_MS
    }

    /// Takes the outcome of offering [`Self::next_rate`].
    fn record(&mut self, sustained: bool) {
        let Some(rate) = self.next else {
            return;
        };
        if sustained {
            self.sustained = Some(rate);
            let higher = rate * Self::STEP;
            self.next = (!self.failed_any && higher <= self.closed_rate * 1.5).then_some(higher);
        } else {
            self.failed_any = true;
            let lower = rate / Self::STEP;
            self.next =
                (self.sustained.is_none() && lower >= self.closed_rate * 0.05).then_some(lower);
        }
    }

    /// The highest rate sustained, once the search is over.
    fn msr(&self) -> Option<f64> {
        self.sustained
    }
}

/// Searches capture's MSR ([`MsrSearch`]), printing each step; `None` if no rate held.
async fn search_msr(
    plan: &Plan,
    report: &mut Report,
    subject: &load::Op,
    closed_rate: f64,
) -> Option<f64> {
    progress(&format!(
        "B3b MSR search: {} s per offered rate, from half of B2's {}/s, stepped by 10 %",
        plan.msr_step.as_secs(),
        thousands(closed_rate)
    ));
    let mut search = MsrSearch::new(closed_rate);
    let mut steps = Vec::new();
    while let Some(rate) = search.next_rate() {
        let open = load::open_loop(rate, plan.msr_step, 1024, subject.clone()).await;
        let sustained = MsrSearch::sustains(&open);
        steps.push(format!(
            "{}/s → p99 {}{}{}",
            thousands(rate),
            ms(open.latency.value_at_quantile(0.99) as f64),
            if open.failures() > 0 {
                format!(", {} errors", open.failures())
            } else {
                String::new()
            },
            if sustained { "" } else { " ✗" }
        ));
        search.record(sustained);
    }
    let msr = search.msr();
    report.figure(format!(
        "B3b         MSR (p99 ≤ {MSR_P99_MS:.0} ms, achieved ≥ 99 %, no errors): {} ({} of B2's closed-loop rate); steps: {}",
        msr.map_or("none".to_owned(), |rate| format!("{}/s", thousands(rate))),
        msr.map_or("—".to_owned(), |rate| format!("{:.0} %", rate / closed_rate * 100.0)),
        steps.join(", ")
    ));
    msr
}

fn report_open(report: &mut Report, label: &str, open: &Open) {
    report.figure(format!(
        "{label:<11} offered {}/s, achieved {}/s, sent {}, ok {}, errors {}, unanswered {}{}",
        thousands(open.offered_rate),
        thousands(open.achieved_rate()),
        thousands(open.sent as f64),
        thousands(open.ok as f64),
        open.errors,
        open.unfinished,
        open.first_error
            .as_ref()
            .map(|error| format!(" (first: {error})"))
            .unwrap_or_default()
    ));
    report.figure(format!(
        "{label:<11} from intended send: {}",
        quantiles(&open.latency)
    ));
    report.figure(format!(
        "{label:<11} from actual send:   {}; generator lag p99 {}",
        quantiles(&open.service),
        ms(open.lag.value_at_quantile(0.99) as f64)
    ));
}

/// What one import round did.
#[derive(Debug, Default)]
struct Import {
    results: u64,
    accepted: u64,
    merged: u64,
    rejected: u64,
    duplicate: u64,
    failed: u64,
    elapsed: Duration,
    cut_short: Option<String>,
    first_failure: Option<String>,
}

impl Import {
    fn rate(&self) -> f64 {
        self.results as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Streams `rows` rows into `ImportLeads` (10 % re-captures of earlier rows, 5 % invalid) and
/// reads the results concurrently; stops at `deadline`.
async fn import_round(
    mut client: CaptureServiceClient<Authed>,
    numbers: Arc<Numbers>,
    rows: u64,
    deadline: Duration,
) -> Import {
    let stop_at = Instant::now() + deadline;
    let (sender, receiver) = tokio::sync::mpsc::channel::<ImportLeadsRequest>(1024);
    let producer = tokio::spawn(async move {
        let mut recent: Vec<u64> = Vec::with_capacity(4096);
        for row in 0..rows {
            if Instant::now() >= stop_at {
                break;
            }
            let capture = match row % 20 {
                19 => invalid_request(numbers.next(), row / 20),
                4 | 14 if !recent.is_empty() => {
                    let earlier = recent[(mix(row) % recent.len() as u64) as usize];
                    Lead::new(earlier).request
                }
                _ => {
                    let number = numbers.next();
                    if recent.len() < 4096 {
                        recent.push(number);
                    } else {
                        recent[(mix(row) % 4096) as usize] = number;
                    }
                    Lead::new(number).request
                }
            };
            let request = ImportLeadsRequest {
                row: i64::try_from(row + 1).unwrap_or(i64::MAX),
                capture: Some(capture),
            };
            if sender.send(request).await.is_err() {
                break;
            }
        }
    });
    let mut import = Import::default();
    let started = Instant::now();
    let response = tokio::time::timeout_at(
        stop_at.into(),
        client.import_leads(tokio_stream::wrappers::ReceiverStream::new(receiver)),
    )
    .await;
    match response {
        Ok(Ok(response)) => {
            let mut results = response.into_inner();
            loop {
                match tokio::time::timeout_at(stop_at.into(), results.message()).await {
                    Ok(Ok(Some(result))) => {
                        import.results += 1;
                        match result.outcome() {
                            ImportOutcome::Accepted => import.accepted += 1,
                            // Held for review: a known person too.
                            ImportOutcome::Merged | ImportOutcome::InReview => import.merged += 1,
                            ImportOutcome::Rejected => import.rejected += 1,
                            ImportOutcome::Duplicate => import.duplicate += 1,
                            ImportOutcome::Failed | ImportOutcome::Unspecified => {
                                import.failed += 1;
                                import
                                    .first_failure
                                    .get_or_insert_with(|| result.message.clone());
                            }
                        }
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        import.cut_short = Some(status_text(&status));
                        break;
                    }
                    Err(_) => {
                        import.cut_short = Some(format!("deadline of {deadline:?} reached"));
                        break;
                    }
                }
            }
        }
        Ok(Err(status)) => import.cut_short = Some(status_text(&status)),
        Err(_) => import.cut_short = Some("no answer before the deadline".to_owned()),
    }
    import.elapsed = started.elapsed();
    producer.abort();
    import
}

/// Empties capture's lead tables (both sides of B5 start from empty tables): `leads` with
/// every table that references it (touches, consents, merges, reviews, visitors, activities,
/// and whatever comes next), so a new table cannot break the run.
async fn empty_capture_tables(url: &str) -> anyhow::Result<()> {
    let mut connection = PgConnection::connect(url).await?;
    sqlx::query("TRUNCATE capture.idempotency, capture.leads, capture.outbox CASCADE")
        .execute(&mut connection)
        .await
        .context("truncate capture tables")?;
    let _closed = connection.close().await;
    Ok(())
}

async fn b5(
    plan: &Plan,
    fixture: &Fixture,
    report: &mut Report,
    copy_database: &mut Option<Database>,
) -> anyhow::Result<RssSeen> {
    // R-copy's target: capture's schema in a fresh database, migrated by capture itself.
    let copy = process::create_database(
        &fixture.admin_url,
        &format!(
            "{}_copy",
            fixture.database.name.trim_start_matches("lf_bench_")
        ),
    )
    .await?;
    *copy_database = Some(copy.clone());
    let copy_env = process::bench_env(&copy, &fixture.redis_url);
    process::run_capture(
        &fixture.binary,
        &process::capture_env(&copy_env),
        &["migrate"],
    )
    .await?;
    let mut copy_connection = PgConnection::connect(&copy.url).await?;
    sqlx::query("INSERT INTO capture.sources (source_id, settings) VALUES ($1, '\\x'::bytea)")
        .bind(SOURCE)
        .execute(&mut copy_connection)
        .await
        .context("register the source in the COPY database")?;
    let copy_stem = std::env::temp_dir().join(&copy.name);
    progress(&format!(
        "B5 writing {} normalized rows for R-copy beside {} (before timing)",
        thousands(plan.import_rows as f64),
        copy_stem.display()
    ));
    let copy_files =
        reference::write_copy_files(fixture.material.clone(), copy_stem, plan.import_rows).await?;
    let rss = RssSampler::start(
        fixture.capture.pid,
        plan.import_deadline * plan.import_rounds.max(1) as u32 + Duration::from_secs(60),
    );
    let mut import_rates = Vec::new();
    let mut copy_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut outcome_lines = Vec::new();
    let mut failure = None;
    for round in 0..plan.import_rounds {
        let mut import = None;
        let mut copied = None;
        let import_first = round % 2 == 0;
        for side in 0..2 {
            if (side == 0) == import_first {
                let _left = outbox_settled(fixture, Duration::from_secs(30)).await;
                if let Err(err) = empty_capture_tables(&fixture.database.url).await {
                    failure = Some(err);
                    break;
                }
                let client = fixture.writers[0].clone();
                import = Some(
                    import_round(
                        client,
                        fixture.numbers.clone(),
                        plan.import_rows,
                        plan.import_deadline,
                    )
                    .await,
                );
            } else {
                if let Err(err) = empty_capture_tables(&copy.url).await {
                    failure = Some(err);
                    break;
                }
                let started = Instant::now();
                match reference::copy_files(&mut copy_connection, &copy_files).await {
                    Ok(rows) => copied = Some((rows, started.elapsed())),
                    Err(err) => {
                        failure = Some(err);
                        break;
                    }
                }
            }
        }
        if failure.is_some() {
            break;
        }
        let (Some(import), Some((copied_rows, copy_elapsed))) = (import, copied) else {
            continue;
        };
        let copy_rate = copied_rows as f64 / copy_elapsed.as_secs_f64().max(1e-9);
        let ratio = import.rate() / copy_rate;
        progress(&format!(
            "B5 round {}/{}: R-copy {} rows/s ({} rows in {:.2} s), ImportLeads {} rows/s ({} rows in {:.1} s), ratio {:.3}×{}",
            round + 1,
            plan.import_rounds,
            thousands(copy_rate),
            thousands(copied_rows as f64),
            copy_elapsed.as_secs_f64(),
            thousands(import.rate()),
            thousands(import.results as f64),
            import.elapsed.as_secs_f64(),
            ratio,
            import
                .cut_short
                .as_ref()
                .map(|why| format!(" — cut short: {why}"))
                .unwrap_or_default()
        ));
        outcome_lines.push(format!(
            "accepted {}, merged {}, rejected {}, duplicate {}, failed {}{}",
            thousands(import.accepted as f64),
            thousands(import.merged as f64),
            thousands(import.rejected as f64),
            import.duplicate,
            import.failed,
            import
                .first_failure
                .as_ref()
                .map(|why| format!(" (first: {why})"))
                .unwrap_or_default()
        ));
        if import.cut_short.is_some() {
            report.note(format!(
                "B5 round {}: the import was cut short ({} of {} rows): {}",
                round + 1,
                import.results,
                plan.import_rows,
                import.cut_short.as_deref().unwrap_or_default()
            ));
        }
        import_rates.push(import.rate());
        copy_rates.push(copy_rate);
        ratios.push(ratio);
    }
    let seen = rss.stop().await;
    let _closed = copy_connection.close().await;
    copy_files.remove();
    if let Some(err) = failure {
        return Err(err);
    }
    report.rows.push(Row::ratio(
        "B5 import",
        &format!(
            "ImportLeads rows/s, {} rows",
            thousands(plan.import_rows as f64)
        ),
        "R-copy rows/s",
        format!("{}/s", thousands(report::median(&copy_rates))),
        format!("{}/s", thousands(report::median(&import_rates))),
        RatioStats::of(&ratios),
        Goal::AtLeast(0.30),
    ));
    for (round, line) in outcome_lines.iter().enumerate() {
        report.figure(format!("B5          round {} outcomes: {line}", round + 1));
    }
    report.figure(format!(
        "B5          R-copy: text COPY of {} normalized new leads ({:.1} MB) into the tables a new lead's import writes (leads, touches, consents, outbox) of a fresh database, emptied before each round; ImportLeads into emptied tables too",
        thousands(plan.import_rows as f64),
        copy_files.bytes as f64 / 1_048_576.0
    ));
    report.figure(format!(
        "B5          capture RSS max during the imports: {} ({} samples every 100 ms)",
        mb(seen.max_kib),
        seen.samples
    ));
    Ok(seen)
}

/// Stops the processes, drops the databases and the run's Redis keys.
async fn teardown(
    fixture: Fixture,
    copy_database: Option<Database>,
    report: &mut Report,
) -> Vec<String> {
    let mut lines = Vec::new();
    let Fixture {
        admin_url,
        redis_url,
        database,
        stream_prefix,
        capture,
        echo,
        writers,
        echo_channel,
        reference_pool,
        monitor,
        binary: _,
        numbers: _,
        material: _,
        clock_ticks: _,
    } = fixture;
    drop(writers);
    drop(echo_channel);
    reference_pool.close().await;
    monitor.close().await;
    let log_lines = capture.log_lines();
    lines.push(capture.stop(Duration::from_secs(10)).await);
    if let Some(echo) = echo {
        lines.push(echo.stop(Duration::from_secs(3)).await);
    }
    report.figure(format!(
        "logs        capture wrote {} log lines at RUST_LOG=info (read and dropped by the bench)",
        thousands(log_lines as f64)
    ));
    for name in std::iter::once(database.name).chain(copy_database.map(|copy| copy.name)) {
        match process::drop_database(&admin_url, &name).await {
            Ok(()) => lines.push(format!("dropped database {name}")),
            Err(err) => report.note(format!("could not drop {name}: {err:#}")),
        }
    }
    match delete_streams(&redis_url, &stream_prefix).await {
        Ok(keys) => lines.push(format!("deleted {keys} Redis keys under {stream_prefix}")),
        Err(err) => report.note(format!(
            "could not delete Redis keys {stream_prefix}*: {err:#}"
        )),
    }
    lines
}

/// Deletes the run's Redis keys (`<prefix>*`), with a bounded `SCAN`.
async fn delete_streams(redis_url: &str, prefix: &str) -> anyhow::Result<usize> {
    let client = redis::Client::open(redis_url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    for _ in 0..10_000 {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut connection)
            .await?;
        if !keys.is_empty() {
            let _removed: i64 = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut connection)
                .await?;
            deleted += keys.len();
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(deleted)
}

#[allow(clippy::too_many_arguments)]
async fn print_report(
    plan: &Plan,
    binary: &std::path::Path,
    admin_url: &str,
    redis_url: &str,
    fsync: String,
    cpu_start: Option<CpuTimes>,
    cpu_end: Option<CpuTimes>,
    elapsed: Duration,
    report: Report,
) {
    let postgres = environment::postgres(admin_url).await;
    let redis = environment::redis_version(redis_url).await;
    let git = environment::git_sha().await;
    println!();
    println!("figures (absolute; context for the ratios, noise-bound on a shared machine)");
    for line in &report.figures {
        println!("  {line}");
    }
    if !report.notes.is_empty() {
        println!();
        println!("notes");
        for line in &report.notes {
            println!("  ! {line}");
        }
    }
    println!();
    println!("environment");
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    println!("  nproc          {nproc}");
    println!("  cpu            {}", environment::cpu_model());
    match (cpu_start, cpu_end) {
        (Some(start), Some(end)) => {
            let (steal, busy) = start.shares_until(&end);
            println!(
                "  steal          {steal:.2}% of all CPU time over the run (/proc/stat); machine busy {busy:.0}%, load average now {}",
                environment::load_average()
            );
        }
        _ => println!("  steal          unreadable (/proc/stat)"),
    }
    match postgres {
        Ok(postgres) => println!(
            "  postgres       {} ({})",
            postgres.version, postgres.settings
        ),
        Err(err) => println!("  postgres       unreadable: {err:#}"),
    }
    println!("  pg_test_fsync  {fsync}");
    match redis {
        Ok(version) => println!("  redis          {version}"),
        Err(err) => println!("  redis          unreadable: {err:#}"),
    }
    println!("  git            {git}");
    println!(
        "  build          bench {}; capture {} (release)",
        environment::profile(),
        binary.display()
    );
    println!(
        "  run            {} mode in {:.0} s; {} clients on {} HTTP/2 connections (reference: {} Postgres connections; capture's pool: 16); loopback only",
        plan.mode,
        elapsed.as_secs_f64(),
        plan.clients,
        plan.connections,
        plan.clients
    );
    println!();
    println!("{}", report::table(&report.rows));
}

#[cfg(test)]
mod tests {
    /// Runs an MSR search from a closed-loop rate of 1,000/s on a machine that sustains
    /// every rate below `holds_below`; returns the rates offered and the MSR, rounded.
    fn msr_search(holds_below: f64) -> (Vec<u64>, Option<u64>) {
        let mut search = super::MsrSearch::new(1_000.0);
        let mut offered = Vec::new();
        while let Some(rate) = search.next_rate() {
            offered.push(rate.round() as u64);
            search.record(rate < holds_below);
        }
        (offered, search.msr().map(|rate| rate.round() as u64))
    }

    #[test]
    fn msr_search_climbs_by_ten_percent_until_a_rate_is_not_sustained() {
        assert_eq!(
            msr_search(700.0),
            (vec![500, 550, 605, 666, 732], Some(666))
        );
    }

    #[test]
    fn msr_search_comes_down_when_half_the_closed_rate_is_not_sustained() {
        assert_eq!(msr_search(400.0), (vec![500, 455, 413, 376], Some(376)));
    }

    #[test]
    fn msr_search_stops_at_its_bounds() {
        // Every rate holds: it stops below 1.5x the closed-loop rate.
        let mut always = super::MsrSearch::new(1_000.0);
        while always.next_rate().is_some() {
            always.record(true);
        }
        let top = always.msr().expect("a sustained rate");
        assert!(top <= 1_500.0 && top * 1.1 > 1_500.0, "{top}");
        // No rate holds: it gives up above a twentieth of it, with no MSR.
        let mut never = super::MsrSearch::new(1_000.0);
        let mut steps = 0;
        while never.next_rate().is_some() {
            never.record(false);
            steps += 1;
        }
        assert_eq!(never.msr(), None);
        assert!(steps > 20 && steps < 40, "{steps} steps");
    }

    use super::*;

    #[test]
    fn cpu_per_call_is_ticks_over_calls_and_nothing_when_unmeasured() {
        // 45 ticks at 100 per second over 1,000 calls: 450 ms / 1,000 = 450 µs.
        assert_eq!(
            cpu_micros_per_call(100, Some(1_000), Some(1_045), 1_000),
            Some(450.0)
        );
        assert_eq!(cpu_micros_per_call(100, None, Some(1_045), 1_000), None);
        assert_eq!(
            cpu_micros_per_call(100, Some(1_045), Some(1_000), 1_000),
            None
        );
        assert_eq!(
            cpu_micros_per_call(100, Some(1_000), Some(1_000), 1_000),
            None
        );
        assert_eq!(cpu_micros_per_call(100, Some(1_000), Some(1_045), 0), None);
    }

    #[test]
    fn b14_passes_at_most_twenty_times_the_echo_servers_cpu() {
        let within = b14_row(Some((900.0, 50.0)));
        assert_eq!(within.verdict, report::Verdict::Pass);
        assert_eq!(within.subj_value, "900 µs");
        let over = b14_row(Some((1_100.0, 50.0)));
        assert_eq!(over.verdict, report::Verdict::Fail);
        assert_eq!(b14_row(None).verdict, report::Verdict::NotRun);
    }
}
