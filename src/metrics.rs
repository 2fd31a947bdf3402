//! Prometheus metrics, served on `GET /metrics`. The names here are a
//! contract with dashboards (`deploy/grafana/dashboards/consentd.json`) and
//! alert rules; a test checks the dashboard against what is exposed.

mod handles;

use std::sync::OnceLock;

pub use handles::Handles;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::Store;

pub const DECISIONS: &str = "consentd_decisions_total";
pub const RPC_DURATION: &str = "consentd_rpc_duration_seconds";
pub const UNSUBSCRIBES: &str = "consentd_unsubscribes_total";
pub const PREFERENCE_CHANGES: &str = "consentd_preference_changes_total";
pub const FEED_SUBSCRIBERS: &str = "consentd_change_feed_subscribers";
pub const FEED_LAG: &str = "consentd_change_feed_lag_seconds";
pub const POOL_CONNECTIONS: &str = "consentd_db_pool_connections";
pub const POOL_WAITING: &str = "consentd_db_pool_waiting";
pub const RECORD_QUEUE: &str = "consentd_record_queue";
pub const CONCERNS_OVERDUE: &str = "consentd_concerns_overdue";
pub const DISCLOSURES: &str = "consentd_disclosures_total";
pub const REVIEWS_OPEN: &str = "consentd_disclosure_reviews_open";
pub const REVIEWS_OVERDUE: &str = "consentd_disclosure_reviews_overdue";
pub const STATE_SUBJECTS: &str = "consentd_state_subjects";
pub const STATE_APPLIED: &str = "consentd_state_applied_sequence";
pub const STATE_BYTES: &str = "consentd_state_bytes";
pub const CALLS_LIMITED: &str = "consentd_calls_limited_total";
pub const LOG_LINES_DROPPED: &str = "consentd_log_lines_dropped_total";

#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exposed metric with the help text Prometheus shows for it.
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub help: &'static str,
}

const fn metric(name: &'static str, kind: Kind, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        unit: None,
        help,
    }
}

/// Every metric, each with its help: a name missing here has none, and the
/// test below fails.
pub const ALL: &[Metric] = &[
    metric(
        DECISIONS,
        Kind::Counter,
        "Check, BatchCheck and BulkCheck decisions, by purpose, decision and reason.",
    ),
    Metric {
        unit: Some(Unit::Seconds),
        ..metric(
            RPC_DURATION,
            Kind::Histogram,
            "gRPC call latency, by method and status code.",
        )
    },
    metric(
        UNSUBSCRIBES,
        Kind::Counter,
        "Refusals recorded through unsubscribe links, by purpose.",
    ),
    metric(
        PREFERENCE_CHANGES,
        Kind::Counter,
        "Choices changed on the preference page, by purpose.",
    ),
    metric(FEED_SUBSCRIBERS, Kind::Gauge, "Open WatchChanges streams."),
    metric(
        FEED_LAG,
        Kind::Gauge,
        "Age of the newest record a change stream sent, when sent.",
    ),
    metric(
        POOL_CONNECTIONS,
        Kind::Gauge,
        "Database connections, by state (in_use, idle).",
    ),
    metric(
        POOL_WAITING,
        Kind::Gauge,
        "Calls waiting for a database connection.",
    ),
    metric(
        RECORD_QUEUE,
        Kind::Gauge,
        "Consent records queued for the group commit and not yet taken into a batch.",
    ),
    metric(
        CONCERNS_OVERDUE,
        Kind::Gauge,
        "Concerns past their acknowledge or resolve deadline.",
    ),
    metric(
        DISCLOSURES,
        Kind::Counter,
        "Disclosure requests decided, by legal basis and resulting status.",
    ),
    metric(
        REVIEWS_OPEN,
        Kind::Gauge,
        "Emergency disclosures released and not yet reviewed.",
    ),
    metric(
        REVIEWS_OVERDUE,
        Kind::Gauge,
        "Emergency disclosures past their review deadline.",
    ),
    metric(
        STATE_SUBJECTS,
        Kind::Gauge,
        "Registered subjects the in-memory decision state holds.",
    ),
    metric(
        STATE_APPLIED,
        Kind::Gauge,
        "The change-feed sequence the in-memory decision state has applied.",
    ),
    metric(
        STATE_BYTES,
        Kind::Gauge,
        "Bytes the in-memory decision state's tables have allocated.",
    ),
    metric(
        CALLS_LIMITED,
        Kind::Counter,
        "Calls refused by a limit rather than served: overloaded (shed), rate_limited, deadline_exceeded, message_too_large, too_many_streams.",
    ),
    metric(
        LOG_LINES_DROPPED,
        Kind::Counter,
        "Log lines dropped because stderr's reader fell behind by more than the log buffer.",
    ),
];

/// The process-wide recorder. Installed once; every server in the process
/// (tests run several) shares it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(RPC_DURATION.into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
            .expect("buckets are not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        for metric in ALL {
            let (name, help) = (metric.name, metric.help);
            match (metric.kind, metric.unit) {
                (Kind::Counter, _) => describe_counter!(name, help),
                (Kind::Gauge, _) => describe_gauge!(name, help),
                (Kind::Histogram, Some(unit)) => describe_histogram!(name, unit, help),
                (Kind::Histogram, None) => describe_histogram!(name, help),
            }
        }
        handle
    })
}

/// The text exposition, with the pool gauges and the dropped log lines read
/// just now.
pub fn render(store: &Store) -> String {
    let handle = handle();
    let status = store.pool_status();
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
    metrics::gauge!(POOL_WAITING).set(status.waiting as f64);
    metrics::counter!(LOG_LINES_DROPPED).absolute(crate::telemetry::dropped_log_lines());
    handle.run_upkeep();
    handle.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `consentd_*` name declared in this file is in `ALL`, so it is
    /// described, and no help text is empty.
    #[test]
    fn every_metric_has_help_text() {
        let source = include_str!("metrics.rs");
        let declared: Vec<&str> = source
            .lines()
            .filter(|line| line.starts_with("pub const ") && line.contains("\"consentd_"))
            .filter_map(|line| line.split('"').nth(1))
            .collect();
        assert_eq!(declared.len(), 18, "{declared:?}");
        for name in declared {
            let metric = ALL.iter().find(|m| m.name == name);
            assert!(metric.is_some(), "{name} has no help text");
            assert!(!metric.unwrap().help.trim().is_empty(), "{name}");
        }
    }
}
