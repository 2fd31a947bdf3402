//! Prometheus metrics, served on `GET /metrics`. The names here are a
//! contract with dashboards (`deploy/grafana/dashboards/consentd.json`) and
//! alert rules; a test checks the dashboard against what is exposed.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::Store;

pub const DECISIONS: &str = "consentd_decisions_total";
pub const RPC_DURATION: &str = "consentd_rpc_duration_seconds";
pub const UNSUBSCRIBES: &str = "consentd_unsubscribes_total";
pub const FEED_SUBSCRIBERS: &str = "consentd_change_feed_subscribers";
pub const FEED_LAG: &str = "consentd_change_feed_lag_seconds";
pub const POOL_CONNECTIONS: &str = "consentd_db_pool_connections";
pub const POOL_WAITING: &str = "consentd_db_pool_waiting";
pub const CONCERNS_OVERDUE: &str = "consentd_concerns_overdue";
pub const DISCLOSURES: &str = "consentd_disclosures_total";
pub const REVIEWS_OPEN: &str = "consentd_disclosure_reviews_open";
pub const REVIEWS_OVERDUE: &str = "consentd_disclosure_reviews_overdue";

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
        describe_counter!(
            DECISIONS,
            "Check and BatchCheck decisions, by purpose, decision and reason."
        );
        describe_histogram!(
            RPC_DURATION,
            Unit::Seconds,
            "gRPC call latency, by method and status code."
        );
        describe_counter!(
            UNSUBSCRIBES,
            "Refusals recorded through unsubscribe links, by purpose."
        );
        describe_gauge!(FEED_SUBSCRIBERS, "Open WatchChanges streams.");
        describe_gauge!(
            FEED_LAG,
            "Age of the newest record a change stream sent, when sent."
        );
        describe_gauge!(
            POOL_CONNECTIONS,
            "Database connections, by state (in_use, idle)."
        );
        describe_gauge!(POOL_WAITING, "Calls waiting for a database connection.");
        describe_gauge!(
            CONCERNS_OVERDUE,
            "Concerns past their acknowledge or resolve deadline."
        );
        handle
    })
}

/// The text exposition, with the pool gauges read just now.
pub fn render(store: &Store) -> String {
    let handle = handle();
    let status = store.pool_status();
    let in_use = status.size.saturating_sub(status.available);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "in_use").set(in_use as f64);
    metrics::gauge!(POOL_CONNECTIONS, "state" => "idle").set(status.available as f64);
    metrics::gauge!(POOL_WAITING).set(status.waiting as f64);
    handle.run_upkeep();
    handle.render()
}
