//! Load shapes and what they measure: a closed loop (a fixed number of
//! calls in flight, each sent when the previous one answers) for peak
//! rates, and an open loop (calls sent on a fixed schedule, whatever the
//! answers) for latency at a given offered rate.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// An open loop stops sending when this many calls are unanswered: the
/// server has fallen so far behind that the figure is already decided, and
/// the client must not drown the machine it shares.
const OPEN_LOOP_MAX_OUTSTANDING: u64 = 50_000;

/// What one phase measured.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Calls answered inside the measured window.
    pub calls: u64,
    /// What the calls carried (ids for batch calls; 1 per call otherwise).
    pub units: u64,
    pub seconds: f64,
    /// Latencies of the answered calls, in nanoseconds, sorted.
    latencies: Vec<u64>,
    pub errors: u64,
    /// The first error, to say what went wrong.
    pub first_error: Option<String>,
}

impl Summary {
    pub fn rate(&self) -> f64 {
        self.units as f64 / self.seconds
    }

    pub fn p50_ms(&self) -> f64 {
        self.quantile_ms(0.50)
    }

    pub fn p99_ms(&self) -> f64 {
        self.quantile_ms(0.99)
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1] as f64 / 1e6
    }

    /// Adds one answered call (or failure).
    pub fn record(&mut self, latency: Duration, outcome: anyhow::Result<u64>) {
        match outcome {
            Ok(units) => {
                self.calls += 1;
                self.units += units;
                self.latencies.push(latency.as_nanos() as u64);
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    pub fn merge(&mut self, other: Summary) {
        self.calls += other.calls;
        self.units += other.units;
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn finish(mut self, seconds: f64) -> Self {
        self.latencies.sort_unstable();
        self.seconds = seconds;
        self
    }
}

/// `in_flight` workers call back to back for `warm_up + measure`. Only
/// calls that both start and end inside the measured window count.
/// `call(worker, k)` makes the k-th call of a worker and returns its units.
pub async fn closed_loop<F, Fut>(
    in_flight: usize,
    warm_up: Duration,
    measure: Duration,
    call: F,
) -> Summary
where
    F: Fn(usize, u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let from = Instant::now() + warm_up;
    let until = from + measure;
    let mut workers = Vec::with_capacity(in_flight);
    for worker in 0..in_flight {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let mut summary = Summary::default();
            let mut k = 0;
            loop {
                let started = Instant::now();
                if started >= until {
                    break;
                }
                let outcome = call(worker, k).await;
                let ended = Instant::now();
                if started >= from && ended <= until {
                    summary.record(ended - started, outcome);
                }
                k += 1;
            }
            summary
        }));
    }
    let mut total = Summary::default();
    for worker in workers {
        total.merge(worker.await.expect("a load worker panicked"));
    }
    total.finish(measure.as_secs_f64())
}

/// Sends `rate` calls a second for `measure`, each at its own point of an
/// absolute schedule, and measures each from the moment it was due, not the
/// moment it left: a stalled server cannot hide its stall by slowing the
/// client down (coordinated omission). The scheduler sleeps on tokio's
/// millisecond timer and sends, in a burst, every call whose time has come.
pub async fn open_loop<F, Fut>(rate: f64, measure: Duration, call: F) -> Summary
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    let total = (rate * measure.as_secs_f64()) as u64;
    let outstanding = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut dropped = 0;
    for k in 0..total {
        let due = start + interval.mul_f64(k as f64);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        if outstanding.load(Ordering::Relaxed) >= OPEN_LOOP_MAX_OUTSTANDING {
            dropped += 1;
            continue;
        }
        outstanding.fetch_add(1, Ordering::Relaxed);
        let (call, tx, outstanding) = (call.clone(), tx.clone(), outstanding.clone());
        tokio::spawn(async move {
            let outcome = call(k).await;
            let latency = tokio::time::Instant::now() - due;
            outstanding.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send((latency, outcome));
        });
    }
    drop(tx);
    let mut summary = Summary::default();
    while let Some((latency, outcome)) = rx.recv().await {
        summary.record(latency, outcome);
    }
    if dropped > 0 {
        summary.errors += dropped;
        summary.first_error.get_or_insert_with(|| {
            format!("{dropped} calls not sent: {OPEN_LOOP_MAX_OUTSTANDING} were unanswered")
        });
    }
    summary.finish(measure.as_secs_f64())
}
