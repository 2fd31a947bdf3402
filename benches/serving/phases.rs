//! The phases that load a running server, each giving its table rows.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use consentd::grpc::pb;

use crate::{
    bulk::BulkCheck,
    calls::{self, Connections, subject},
    load::{Summary, closed_loop, open_loop},
    report::{Outcome, Row, Target, thousands},
    server::ServeProcess,
    settings::Settings,
    sql,
};

/// The client: 32 calls in flight over 4 HTTP/2 connections.
pub const CONNECTIONS: usize = 4;
pub const IN_FLIGHT: usize = 32;
/// Connections of the raw SELECT baseline, as many as the server's pool.
const SQL_CONNECTIONS: usize = 16;
const BATCH_IDS: u64 = 1_000;
const BATCH_IN_FLIGHT: usize = 4;
const BULK_IDS: u64 = 10_000;
/// Unanswered BulkCheck messages per stream, one stream per connection.
const BULK_DEPTH: usize = 2;
const WRITERS: usize = 64;
/// How long an opt-out may take to show on the other server before the
/// sample counts as lost.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);
/// Between one opt-out's visibility and the next write.
const PROPAGATION_PACE: Duration = Duration::from_millis(20);

/// The subject a worker asks about on its k-th call: spread over all of
/// them, so no single row stays hot.
fn spread(worker: usize, k: u64, subjects: u64) -> String {
    subject((worker as u64 * 7919 + k * 104_729) % subjects)
}

/// A row with a summary's rate and latencies; failed calls fail it.
pub fn measured(what: &str, summary: &Summary, unit: &str) -> Row {
    let mut row = Row::new(what);
    row.rate = Some(summary.rate());
    row.unit = unit.into();
    row.p50_ms = Some(summary.p50_ms());
    row.p99_ms = Some(summary.p99_ms());
    if summary.errors > 0 || summary.calls == 0 {
        row.outcome = Outcome::Failed;
        row.note = format!(
            "{} of {} calls failed: {}",
            summary.errors,
            summary.errors + summary.calls,
            summary
                .first_error
                .as_deref()
                .unwrap_or("no call was answered")
        );
    }
    row
}

/// A phase that could not run at all.
pub fn failed(what: &str, error: &anyhow::Error) -> Row {
    let mut row = Row::new(what);
    row.outcome = Outcome::Failed;
    row.note = format!("{error:#}");
    row
}

pub struct Serving<'a> {
    pub settings: &'a Settings,
    pub server: &'a ServeProcess,
    pub connections: Connections,
    pub db_url: String,
}

impl Serving<'_> {
    /// Runs `phase` between the hook's start and end.
    async fn hooked<T>(&self, phase: &str, run: impl Future<Output = T>) -> anyhow::Result<T> {
        self.settings.hook("start", phase, self.server)?;
        let out = run.await;
        self.settings.hook("end", phase, self.server)?;
        Ok(out)
    }

    fn window(&self) -> (Duration, Duration) {
        (self.settings.warm_up, self.settings.measure)
    }

    pub async fn health_closed(&self) -> anyhow::Result<Summary> {
        let (warm_up, measure) = self.window();
        let connections = self.connections.clone();
        self.hooked(
            "health",
            closed_loop(IN_FLIGHT, warm_up, measure, move |worker, _| {
                calls::health_check(connections.channel(worker as u64))
            }),
        )
        .await
    }

    pub async fn check_closed(&self) -> anyhow::Result<Summary> {
        let (warm_up, measure) = self.window();
        let (connections, subjects) = (self.connections.clone(), self.settings.subjects);
        self.hooked(
            "check",
            closed_loop(IN_FLIGHT, warm_up, measure, move |worker, k| {
                let client = connections.consent(worker as u64);
                async move {
                    calls::check(client, spread(worker, k, subjects)).await?;
                    Ok(1)
                }
            }),
        )
        .await
    }

    pub async fn select_closed(&self) -> anyhow::Result<Summary> {
        let (warm_up, measure) = self.window();
        sql::select_by_key(
            &self.db_url,
            SQL_CONNECTIONS,
            IN_FLIGHT,
            self.settings.subjects,
            warm_up,
            measure,
        )
        .await
    }

    /// Health and then Check, each at `rate` calls a second.
    pub async fn open_pair(&self, rate: f64) -> anyhow::Result<(Summary, Summary)> {
        let measure = self.settings.measure;
        let connections = self.connections.clone();
        let health = self
            .hooked(
                "open-health",
                open_loop(rate, measure, move |k| {
                    calls::health_check(connections.channel(k))
                }),
            )
            .await?;
        let (connections, subjects) = (self.connections.clone(), self.settings.subjects);
        let check = self
            .hooked(
                "open-check",
                open_loop(rate, measure, move |k| {
                    let client = connections.consent(k);
                    async move {
                        calls::check(client, spread(0, k, subjects)).await?;
                        Ok(1)
                    }
                }),
            )
            .await?;
        Ok((health, check))
    }

    pub async fn batch_closed(&self) -> anyhow::Result<Summary> {
        let (warm_up, measure) = self.window();
        let (connections, subjects) = (self.connections.clone(), self.settings.subjects);
        self.hooked(
            "batch",
            closed_loop(BATCH_IN_FLIGHT, warm_up, measure, move |worker, k| {
                let client = connections.consent(worker as u64);
                let first = (worker as u64 * 7919 + k * BATCH_IDS) % subjects;
                calls::batch_check(client, first, BATCH_IDS, subjects)
            }),
        )
        .await
    }

    /// BulkCheck ids per second, or a row saying it is not built.
    pub async fn bulk(&self) -> Row {
        let what = "`BulkCheck`, 10,000 ids a message, 4 streams";
        let target = Target::at_least(1_000_000.0, "≥ 1,000,000 ids/s");
        let bulk = match BulkCheck::find() {
            Ok(Some(bulk)) => bulk,
            Ok(None) => return Row::not_built(what, target, "the proto has no BulkCheck yet"),
            Err(e) => return failed(what, &e),
        };
        let subjects = self.settings.subjects;
        let requests: Arc<Vec<_>> = Arc::new(
            (0..8)
                .map(|i| bulk.request(i * BULK_IDS, BULK_IDS, subjects))
                .collect(),
        );
        let (warm_up, measure) = self.window();
        let outcome = self
            .hooked("bulk", async {
                let streams: Vec<_> = (0..CONNECTIONS as u64)
                    .map(|i| {
                        tokio::spawn(bulk.clone().stream(
                            self.connections.channel(i),
                            requests.clone(),
                            BULK_IDS,
                            BULK_DEPTH,
                            warm_up,
                            measure,
                        ))
                    })
                    .collect();
                let mut parts = Vec::new();
                for stream in streams {
                    parts.push(stream.await??);
                }
                anyhow::Ok(parts)
            })
            .await
            .and_then(|parts| parts);
        match outcome {
            Ok(parts) => {
                let mut summary = Summary::default();
                parts.into_iter().for_each(|part| summary.merge(part));
                let summary = summary.finish(measure.as_secs_f64());
                let rate = summary.rate();
                measured(what, &summary, "ids/s").judged(
                    rate,
                    format!("{} ids/s", thousands(rate)),
                    target,
                )
            }
            Err(e) => failed(what, &e),
        }
    }

    pub async fn record_closed(&self) -> anyhow::Result<Summary> {
        let (warm_up, measure) = self.window();
        let (connections, subjects) = (self.connections.clone(), self.settings.subjects);
        self.hooked(
            "record",
            closed_loop(WRITERS, warm_up, measure, move |worker, k| {
                let client = connections.consent(worker as u64);
                let choice = if k % 2 == 0 {
                    pb::Choice::Refuse
                } else {
                    pb::Choice::Grant
                };
                calls::record(client, spread(worker, k, subjects), choice)
            }),
        )
        .await
    }

    pub async fn insert_closed(&self) -> anyhow::Result<Summary> {
        let (warm_up, measure) = self.window();
        sql::durable_inserts(&self.db_url, WRITERS, warm_up, measure).await
    }

    /// Opt-outs written through this server, timed until `other` denies
    /// them: from the write's answer to the first Check on `other` that
    /// says OPTED_OUT, polling back to back, without a token.
    pub async fn propagation(&self, other: &ServeProcess) -> anyhow::Result<Summary> {
        let samples = self.settings.propagation_samples;
        let writer = self.connections.consent(0);
        let reader = Connections::open(&other.url(), 1).await?.consent(0);
        let ids: Vec<String> = (0..samples).map(|i| format!("PROP-{i:06}")).collect();
        for id in &ids {
            calls::register(writer.clone(), id.clone()).await?;
        }
        let run = async {
            let mut summary = Summary::default();
            for id in &ids {
                // A modest write rate, as opt-outs arrive: B's feed is
                // idle when each one comes, not draining a backlog.
                tokio::time::sleep(PROPAGATION_PACE).await;
                calls::record(writer.clone(), id.clone(), pb::Choice::Refuse).await?;
                let written = Instant::now();
                loop {
                    let answer = calls::check(reader.clone(), id.clone()).await?;
                    if answer.reason == pb::Reason::OptedOut as i32 {
                        summary.record(written.elapsed(), Ok(1));
                        break;
                    }
                    if written.elapsed() > PROPAGATION_LIMIT {
                        summary.record(
                            written.elapsed(),
                            Err(anyhow::anyhow!(
                                "{id}'s opt-out not visible after {PROPAGATION_LIMIT:?}"
                            )),
                        );
                        break;
                    }
                }
            }
            anyhow::Ok(summary)
        };
        let started = Instant::now();
        let summary = self.hooked("propagation", run).await??;
        Ok(summary.finish(started.elapsed().as_secs_f64()))
    }
}
