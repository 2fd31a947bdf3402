//! Soak: a release `consentd serve` under mixed load (checks, writes,
//! change streams, disclosures) for a long while. It samples the server's
//! resident memory and open file descriptors (from /proc) and its database
//! connections (from pg_stat_activity), and exits non-zero when the last
//! sample is not flat against the first one taken after the warm-up, or
//! when any call failed.
//!
//! `cargo bench --bench soak -- --seconds 600` (the default). Not for CI.
//! It uses CONSENTD_BENCH_DATABASE_URL, else the local server at
//! 127.0.0.1:5432, like the import bench.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, TcpListener},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use consentd::{
    grpc::pb::{
        self, consent_service_client::ConsentServiceClient,
        disclosure_service_client::DisclosureServiceClient,
    },
    store,
};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

const SUBJECTS: usize = 200;
const WORKERS: usize = 4;
/// Change streams that stay open for the whole run, as feed consumers do.
const FOLLOWERS: usize = 2;
/// A pause between one worker's calls: a steady load, not a stress test,
/// on a machine others share.
const PACE: Duration = Duration::from_millis(2);

/// How much the last sample may exceed the first and still be flat. Memory
/// gets room for allocator arenas settling; descriptors and connections get
/// a little for those open at the moment of sampling.
const RSS_GROWTH: f64 = 1.25;
const RSS_SLACK_KIB: u64 = 16 * 1024;
const FD_SLACK: u64 = 8;
const CONNECTION_SLACK: i64 = 2;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = seconds_arg()?;
    let server = std::env::var("CONSENTD_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db_name = format!("consentd_soak_{}", uuid::Uuid::new_v4().simple());
    store::ensure_database(&server, &db_name).await?;
    let db_url = store::with_database(&server, &db_name)?;
    let outcome = soak(&db_url, &db_name, seconds).await;
    let admin = store::admin_connect(&server).await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            store::quote_ident(&db_name)
        ))
        .await?;
    outcome
}

/// `--seconds N`; cargo adds `--bench`, which is ignored.
fn seconds_arg() -> anyhow::Result<u64> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--seconds") {
        Some(i) => args
            .get(i + 1)
            .context("--seconds needs a value")?
            .parse()
            .context("--seconds takes a whole number"),
        None => Ok(600),
    }
}

async fn soak(db_url: &str, db_name: &str, seconds: u64) -> anyhow::Result<()> {
    let server = Server::start(db_url)?;
    let channel = Channel::from_shared(format!("http://{}", server.grpc_addr))?
        .connect()
        .await?;
    set_up_subjects(&channel).await?;
    let monitor = store::admin_connect(db_url).await?;

    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut load = Vec::new();
    for w in 0..WORKERS {
        load.push(tokio::spawn(work(
            w,
            channel.clone(),
            counts.clone(),
            deadline,
        )));
    }
    for _ in 0..FOLLOWERS {
        load.push(tokio::spawn(follow(
            channel.clone(),
            counts.clone(),
            deadline,
        )));
    }

    // The first sample comes after a warm-up: pools, caches and allocator
    // arenas fill at first, which is not a leak.
    let warm_up = Duration::from_secs((seconds / 10).clamp(1, 60));
    let every = Duration::from_secs((seconds / 10).max(1));
    tokio::time::sleep(warm_up).await;
    let first = Sample::take(server.pid(), &monitor, db_name).await?;
    println!("{:>6}  {first}  {}", "start", counts.line());
    while Instant::now() + every < deadline {
        tokio::time::sleep(every).await;
        let sample = Sample::take(server.pid(), &monitor, db_name).await?;
        let at = seconds - deadline.saturating_duration_since(Instant::now()).as_secs();
        println!("{:>5}s  {sample}  {}", at, counts.line());
    }
    tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
    let end = Sample::take(server.pid(), &monitor, db_name).await?;
    println!("{:>6}  {end}  {}", "end", counts.line());
    for task in load {
        task.await?;
    }
    server.stop()?;

    let mut problems = first.not_flat(&end);
    let failed = counts.failed.load(Ordering::Relaxed);
    if failed > 0 {
        problems.push(format!("{failed} calls failed"));
    }
    if !problems.is_empty() {
        bail!("not flat: {}", problems.join("; "));
    }
    println!(
        "flat: RSS within x{RSS_GROWTH} + {} MiB, descriptors within +{FD_SLACK}, \
         connections within +{CONNECTION_SLACK}; no call failed",
        RSS_SLACK_KIB / 1024
    );
    Ok(())
}

/// A release `consentd serve` on free ports, its own state directory.
struct Server {
    child: Child,
    grpc_addr: String,
}

impl Server {
    fn start(db_url: &str) -> anyhow::Result<Self> {
        let state_dir = std::env::temp_dir().join(format!("consentd-soak-{}", std::process::id()));
        let grpc_addr = free_addr()?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_consentd"))
            .arg("serve")
            .args(["--database-url", db_url, "--migrate"])
            .args(["--grpc-addr", &grpc_addr, "--http-addr", &free_addr()?])
            .arg("--policy")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/policy.toml"))
            .arg("--state-dir")
            .arg(&state_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start consentd serve")?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                bail!("consentd serve exited before serving");
            };
            if line.contains("consentd is serving") {
                break;
            }
        }
        // Keep the pipe drained so the server never blocks on its logs.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child, grpc_addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> anyhow::Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("consentd serve exited with {status}");
        }
        Ok(())
    }
}

fn free_addr() -> anyhow::Result<String> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .to_string())
}

fn subject(i: usize) -> String {
    format!("SOAK-{i:04}")
}

/// Registered subjects with a name and an address on file for delivery.
async fn set_up_subjects(channel: &Channel) -> anyhow::Result<()> {
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut vault = DisclosureServiceClient::new(channel.clone());
    for i in 0..SUBJECTS {
        consent
            .register_subject(pb::RegisterSubjectRequest {
                subject_id: subject(i),
                kind: pb::SubjectKind::Individual.into(),
                notice_version: "2026-11".into(),
                channel: pb::Channel::Web.into(),
                request_id: String::new(),
            })
            .await?;
        for (field, value) in [("name", "Soak Tester"), ("postal_address", "1 Long Road")] {
            vault
                .put_personal_data(pb::PutPersonalDataRequest {
                    subject_id: subject(i),
                    field: field.into(),
                    value: value.into(),
                    collected_for: vec!["order_delivery".into()],
                    channel: pb::Channel::Web.into(),
                    notice_version: "2026-11".into(),
                    request_id: String::new(),
                })
                .await?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Counts {
    checks: AtomicU64,
    writes: AtomicU64,
    watches: AtomicU64,
    disclosures: AtomicU64,
    streamed: AtomicU64,
    failed: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "checks {} writes {} watches {} disclosures {} streamed {} failed {}",
            get(&self.checks),
            get(&self.writes),
            get(&self.watches),
            get(&self.disclosures),
            get(&self.streamed),
            get(&self.failed)
        )
    }

    fn count<T, E: std::fmt::Display>(&self, counter: &AtomicU64, result: Result<T, E>) {
        match result {
            Ok(_) => counter.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("call failed: {e}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// Mixed calls, in a fixed rotation: half checks, then writes, short-lived
/// change streams and courier disclosures.
async fn work(worker: usize, channel: Channel, counts: Arc<Counts>, deadline: Instant) {
    let mut consent = ConsentServiceClient::new(channel.clone());
    let mut vault = DisclosureServiceClient::new(channel);
    let mut i = worker;
    while Instant::now() < deadline {
        let subject_id = subject(i % SUBJECTS);
        match i % 10 {
            0..5 => {
                let check = consent
                    .check(pb::CheckRequest {
                        subject_id,
                        purpose: "promotional_mail".into(),
                        field: "email".into(),
                        consistency: None,
                    })
                    .await;
                counts.count(&counts.checks, check);
            }
            5 | 6 => {
                let write = consent
                    .record_consent(pb::RecordConsentRequest {
                        subject_id,
                        purpose: "promotional_mail".into(),
                        field: String::new(),
                        choice: if i % 20 < 10 {
                            pb::Choice::Refuse
                        } else {
                            pb::Choice::Grant
                        }
                        .into(),
                        channel: pb::Channel::Web.into(),
                        notice_version: "2026-11".into(),
                        evidence: "soak".into(),
                        request_id: uuid::Uuid::new_v4().to_string(),
                        recipient: String::new(),
                    })
                    .await;
                counts.count(&counts.writes, write);
            }
            7 => {
                // Subscriptions come and go: opened at the start of the feed, read for
                // a moment, dropped.
                let watch = consent
                    .watch_changes(pb::WatchChangesRequest {
                        after: 0,
                        purposes: vec![],
                    })
                    .await
                    .map(|r| r.into_inner());
                if let Ok(mut stream) = watch {
                    let _ = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
                    counts.watches.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.count(&counts.watches, watch);
                }
            }
            _ => {
                let disclosure = vault
                    .request_disclosure(pb::RequestDisclosureRequest {
                        subject_id,
                        recipient_id: "express-courier".into(),
                        purpose: "order_delivery".into(),
                        fields: vec!["name".into(), "postal_address".into()],
                        reference: format!("order-{i}"),
                        ..Default::default()
                    })
                    .await;
                counts.count(&counts.disclosures, disclosure);
            }
        }
        i += WORKERS;
        tokio::time::sleep(PACE).await;
    }
}

/// A consumer that follows the whole feed for the whole run.
async fn follow(channel: Channel, counts: Arc<Counts>, deadline: Instant) {
    let mut consent = ConsentServiceClient::new(channel);
    let mut cursor = 0;
    while Instant::now() < deadline {
        let stream = consent
            .watch_changes(pb::WatchChangesRequest {
                after: cursor,
                purposes: vec![],
            })
            .await;
        let mut stream = match stream {
            Ok(stream) => stream.into_inner(),
            Err(e) => {
                counts.count(&counts.watches, Err::<(), _>(e));
                continue;
            }
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.next()).await {
                Ok(Some(Ok(change))) => {
                    cursor = change.sequence().unwrap_or(cursor);
                    counts.streamed.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(Err(e))) => {
                    counts.count(&counts.watches, Err::<(), _>(e));
                    break;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// The server's footprint at one moment.
#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: u64,
    connections: i64,
}

impl Sample {
    async fn take(
        pid: u32,
        monitor: &tokio_postgres::Client,
        db_name: &str,
    ) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        let connections = monitor
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db_name],
            )
            .await?
            .get(0);
        Ok(Self {
            rss_kib,
            fds,
            connections,
        })
    }

    /// What grew past the tolerance between `self` and `end`.
    fn not_flat(&self, end: &Sample) -> Vec<String> {
        let mut problems = Vec::new();
        let rss_limit = (self.rss_kib as f64 * RSS_GROWTH) as u64 + RSS_SLACK_KIB;
        if end.rss_kib > rss_limit {
            problems.push(format!(
                "RSS grew from {} to {} KiB (limit {rss_limit})",
                self.rss_kib, end.rss_kib
            ));
        }
        if end.fds > self.fds + FD_SLACK {
            problems.push(format!("descriptors grew from {} to {}", self.fds, end.fds));
        }
        if end.connections > self.connections + CONNECTION_SLACK {
            problems.push(format!(
                "database connections grew from {} to {}",
                self.connections, end.connections
            ));
        }
        problems
    }
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:>7} KiB  fds {:>4}  db connections {:>3}",
            self.rss_kib, self.fds, self.connections
        )
    }
}
