//! The serving benchmark: every pair of issue 12's targets, side by side in
//! one run against a real `consentd serve`, with this process as the
//! out-of-process gRPC client.
//!
//! `cargo bench --bench serving` builds the release server, makes a fresh
//! database on the local PostgreSQL (CONSENTD_BENCH_DATABASE_URL, else
//! 127.0.0.1:5432, else a private durable cluster), runs each phase for
//! CONSENTD_BENCH_SECONDS (10), prints a Markdown table and writes it as
//! JSON and SVG under target/bench/. CONSENTD_BENCH_SMOKE=1 runs every
//! phase for about a second with tiny counts: CI runs that, to prove the
//! bench still works, not to judge figures. See `settings.rs` for the rest.
//!
//! # Layout
//!
//! - `settings`: the CONSENTD_BENCH_* variables.
//! - `database`: the PostgreSQL server and throw-away databases (shared
//!   with the `import` bench).
//! - `server`: a `consentd serve` process: start, readiness, RSS, stop.
//! - `calls`: the gRPC client and one function per call.
//! - `bulk`: the BulkCheck client, from descriptors, so it runs as soon as
//!   the RPC exists.
//! - `load`: closed and open loops and their latency summaries.
//! - `sql`: the raw PostgreSQL baselines.
//! - `import`: `import-refusals` against plain INSERTs (shared).
//! - `phases`: the phases that load the server, as table rows.
//! - `report`: the table, JSON and SVG.

mod bulk;
mod calls;
mod database;
mod import;
mod load;
mod memory;
mod phases;
mod report;
mod server;
mod settings;
mod sql;

use std::time::Instant;

use consentd::{service::import::ImportOptions, store::Store};
use serde::Serialize;

use crate::{
    phases::{CONNECTIONS, IN_FLIGHT, Serving, failed, measured},
    report::{Outcome, Row, Target, thousands},
    server::ServeProcess,
    settings::Settings,
};

/// Flags that lift the server's own limits (rate limits, concurrency caps)
/// so that the bench measures the serving path, not a limit; its one
/// client is one caller, and its 64 writers plus its closed loops would
/// meet the defaults. CONSENTD_BENCH_SERVE_ARGS adds flags without a rebuild.
const UNLIMITED: &[&str] = &[
    "--rate-limit-per-caller",
    "10000000",
    "--rate-limit-burst",
    "10000000",
    "--max-concurrent-calls",
    "1000000",
    "--max-concurrent-streams",
    "100000",
];

#[derive(Serialize)]
struct Report {
    machine: Machine,
    smoke: bool,
    seconds_per_phase: u64,
    subjects: u64,
    rows: Vec<Row>,
}

#[derive(Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    ram_gib: f64,
    postgresql: String,
    durability: String,
    profile: &'static str,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    let postgres = database::Server::pick().await?;
    let (db, db_url, store) = postgres.fresh("serving").await?;
    let machine = Machine::describe(&db_url).await?;
    println!(
        "consentd serving bench: {} ({} cores, {:.1} GiB), PostgreSQL {} at {} ({}), {} build{}",
        machine.cpu,
        machine.cores,
        machine.ram_gib,
        machine.postgresql,
        postgres.host(),
        machine.durability,
        machine.profile,
        if settings.smoke {
            ", SMOKE: the figures mean nothing"
        } else {
            ""
        }
    );

    let state_dir =
        std::env::temp_dir().join(format!("consentd-bench-state-{}", std::process::id()));
    let outcome = run(&settings, &postgres, &db_url, &store, &state_dir).await;
    drop(store);
    postgres.drop_db(&db).await?;
    let _ = std::fs::remove_dir_all(&state_dir);
    let rows = outcome?;

    println!("\n{}", report::table(&rows));
    std::fs::create_dir_all(&settings.out_dir)?;
    let json = settings.out_dir.join("serving.json");
    let svg = settings.out_dir.join("serving.svg");
    let failures = rows.iter().filter(|r| r.outcome == Outcome::Failed).count();
    let title = format!(
        "consentd serving bench: {}, {} cores, PostgreSQL {}",
        machine.cpu, machine.cores, machine.postgresql
    );
    report::write_svg(&svg, &title, &rows)?;
    report::write_json(
        &json,
        &Report {
            machine,
            smoke: settings.smoke,
            seconds_per_phase: settings.measure.as_secs(),
            subjects: settings.subjects,
            rows,
        },
    )?;
    println!("written: {} and {}", json.display(), svg.display());
    anyhow::ensure!(failures == 0, "{failures} rows failed");
    Ok(())
}

async fn run(
    settings: &Settings,
    postgres: &database::Server,
    db_url: &str,
    store: &Store,
    state_dir: &std::path::Path,
) -> anyhow::Result<Vec<Row>> {
    let started = Instant::now();
    // Half the subjects refused promotional mail, loaded before the server
    // starts (a server that loads state at start sees them then); the other
    // half register through the server.
    let half = settings.subjects / 2;
    let refusals: String = (0..half).map(|i| calls::subject(i) + "\n").collect();
    let options = ImportOptions {
        batch_size: 10_000,
        jobs: 2,
    };
    consentd::service::import::import_refusals(
        store,
        &import::refusal_spec(),
        refusals.as_bytes(),
        std::io::sink(),
        options,
        |_| {},
    )
    .await?;
    let server = ServeProcess::start(db_url, state_dir, UNLIMITED)?;
    let connections = calls::Connections::open(&server.url(), CONNECTIONS).await?;
    calls::register_range(&connections, half..settings.subjects).await?;
    println!(
        "{} subjects ready in {:.1} s; server pid {} on {}",
        settings.subjects,
        started.elapsed().as_secs_f64(),
        server.pid(),
        server.grpc_addr
    );
    let serving = Serving {
        settings,
        server: &server,
        connections,
        db_url: db_url.to_string(),
    };
    let mut rows = Vec::new();
    let phase = |name: &str| {
        let runs = settings.runs(name);
        if runs {
            println!("phase {name}");
        }
        runs
    };

    // Check against the gRPC floor on the same server and client, and
    // against the SQL it would need at best.
    let mut health_rate = None;
    if phase("health") {
        match serving.health_closed().await {
            Ok(health) => {
                health_rate = Some(health.rate());
                rows.push(measured(
                    &format!("`grpc.health.v1.Health/Check`, {IN_FLIGHT} in flight (the floor)"),
                    &health,
                    "/s",
                ));
            }
            Err(e) => rows.push(failed("health", &e)),
        }
    }
    let mut check_rate = None;
    if phase("check") {
        match serving.check_closed().await {
            Ok(check) => {
                let rate = check.rate();
                check_rate = Some(rate);
                let mut row = measured(
                    &format!("`ConsentService/Check`, {IN_FLIGHT} in flight"),
                    &check,
                    "/s",
                );
                if let Some(floor) = health_rate {
                    row.baseline = format!("health {}/s", thousands(floor));
                    row = row.judged(
                        rate / floor,
                        format!("{:.2}×", rate / floor),
                        Target::at_least(0.8, "≥ 0.8×"),
                    );
                }
                rows.push(row);
            }
            Err(e) => rows.push(failed("check", &e)),
        }
    }
    if phase("select") {
        match serving.select_closed().await {
            Ok(select) => {
                let mut row = measured(
                    &format!(
                        "raw prepared `SELECT … WHERE pk = $1`, 16 connections, {IN_FLIGHT} in flight"
                    ),
                    &select,
                    "/s",
                );
                if let Some(check) = check_rate {
                    row.baseline = "(Check's SQL floor)".into();
                    row.value = Some(check / select.rate());
                    row.value_text = format!("Check at {:.2}×", check / select.rate());
                }
                rows.push(row);
            }
            Err(e) => rows.push(failed("select", &e)),
        }
    }

    // Latency at a fixed offered rate: half of Check's peak.
    if phase("open") {
        let rate = (check_rate.unwrap_or(1_000.0) / 2.0).max(10.0);
        match serving.open_pair(rate).await {
            Ok((health, check)) => {
                let what = |rpc: &str| format!("{rpc}, open loop at {}/s", thousands(rate));
                let mut floor = measured(&what("health Check"), &health, "/s");
                floor.rate = Some(rate);
                let mut row = measured(&what("`Check`"), &check, "/s");
                row.rate = Some(rate);
                row.baseline = format!("health p99 {:.2} ms", health.p99_ms());
                let ratio = check.p99_ms() / health.p99_ms();
                row = row.judged(
                    ratio,
                    format!("p99 {ratio:.2}×"),
                    Target::at_most(1.5, "≤ 1.5× (p99)"),
                );
                if floor.outcome == Outcome::Failed {
                    row.outcome = Outcome::Failed;
                }
                rows.push(floor);
                rows.push(row);
            }
            Err(e) => rows.push(failed("open loop", &e)),
        }
    }

    if phase("batch") {
        match serving.batch_closed().await {
            Ok(batch) => rows.push(measured(
                "`BatchCheck`, 1,000 ids a call, 4 in flight",
                &batch,
                "ids/s",
            )),
            Err(e) => rows.push(failed("batch", &e)),
        }
    }
    if phase("bulk") {
        rows.push(serving.bulk().await);
    }

    // Writes against PostgreSQL's own durable single-row INSERT.
    let mut record = None;
    if phase("record") {
        match serving.record_closed().await {
            Ok(summary) => record = Some(summary),
            Err(e) => rows.push(failed("record", &e)),
        }
    }
    let mut insert = None;
    if phase("insert") {
        match serving.insert_closed().await {
            Ok(summary) => insert = Some(summary),
            Err(e) => rows.push(failed("insert", &e)),
        }
    }
    if let Some(record) = &record {
        let mut row = measured("`RecordConsent`, 64 writers", record, "/s");
        if let Some(insert) = &insert {
            let ratio = record.rate() / insert.rate();
            row.baseline = format!("raw INSERT {}/s", thousands(insert.rate()));
            row = row.judged(
                ratio,
                format!("{ratio:.2}×"),
                Target::at_least(1.0, "≥ 1.0×"),
            );
        }
        rows.push(row);
    }
    if let Some(insert) = &insert {
        rows.push(measured(
            "raw durable single-row INSERT, 64 connections",
            insert,
            "/s",
        ));
    }

    if phase("propagation") {
        let what = "opt-out visible on a second server, no token";
        let target = Target::at_most(50.0, "p99 ≤ 50 ms");
        let outcome = async {
            let other = ServeProcess::start(db_url, state_dir, UNLIMITED)?;
            let summary = serving.propagation(&other).await;
            other.stop()?;
            summary
        }
        .await;
        match outcome {
            Ok(delays) => {
                let mut row = measured(what, &delays, "/s");
                row.rate = None;
                row.baseline = "from the write's answer on A to a DENY on B".into();
                let p99 = delays.p99_ms();
                rows.push(row.judged(p99, format!("p99 {p99:.2} ms"), target));
            }
            Err(e) => rows.push(failed(what, &e)),
        }
    }

    if phase("memory") {
        let n = settings.memory_subjects;
        match memory::measure(postgres, n, state_dir, UNLIMITED).await {
            Ok(memory) => rows.extend(memory_rows(&memory)),
            Err(e) => rows.push(failed("memory per subject with one choice", &e)),
        }
    }
    server.stop()?;

    if phase("import") {
        let what = "`import-refusals`";
        match import::compare(postgres, settings.import_rows).await {
            Ok(figures) => {
                let mut row = Row::new(&format!(
                    "{what}, {} lines",
                    thousands(settings.import_rows as f64)
                ));
                row.rate = Some(figures.imported);
                row.unit = "rows/s".into();
                row.baseline = format!("multi-row INSERT {} rows/s", thousands(figures.baseline));
                let ratio = figures.imported / figures.baseline;
                rows.push(row.judged(ratio, format!("{ratio:.2}×"), Target::at_least(3.0, "≥ 3×")));
            }
            Err(e) => rows.push(failed(what, &e)),
        }
    }
    println!("run took {:.0} s", started.elapsed().as_secs_f64());
    Ok(rows)
}

/// The memory figures as two rows: what the process grew by, and what the
/// decision state's tables say they hold.
fn memory_rows(memory: &memory::Memory) -> [Row; 2] {
    let subjects = thousands(memory.subjects as f64);
    let mut rss = Row::new(&format!(
        "memory per subject with one choice: RSS growth, {subjects} subjects"
    ));
    rss.unit = String::new();
    rss.baseline = format!(
        "RSS {} KiB on the empty database → {} KiB loaded ({:.1} s to ready)",
        thousands(memory.empty_rss as f64 / 1024.0),
        thousands(memory.full_rss as f64 / 1024.0),
        memory.load_seconds
    );
    let per_subject = memory.rss_per_subject();
    let rss = rss.judged(
        per_subject,
        format!("{per_subject:.1} B/subject"),
        Target::at_most(64.0, "≤ 64 B"),
    );
    let mut state = Row::new(&format!(
        "memory per subject with one choice: `consentd_state_bytes`, {subjects} subjects"
    ));
    state.unit = String::new();
    state.baseline = format!(
        "{} KiB the tables allocated",
        thousands(memory.state_bytes as f64 / 1024.0)
    );
    let per_subject = memory.state_per_subject();
    let state = state.judged(
        per_subject,
        format!("{per_subject:.1} B/subject"),
        Target::at_most(64.0, "≤ 64 B"),
    );
    [rss, state]
}

impl Machine {
    async fn describe(db_url: &str) -> anyhow::Result<Self> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, name)| name.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Ok(Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            ram_gib: ram_kib / 1024.0 / 1024.0,
            postgresql: sql::version(db_url).await?,
            durability: sql::durability(db_url).await?,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
        })
    }
}
