//! Integration tests: the real server on port 0, a real PostgreSQL with a
//! fresh database per test, and real gRPC calls over a socket. One test
//! binary, so one process shares the PostgreSQL setup.

mod append_only;
mod appends;
mod auth_matrix;
mod bad_input;
mod browser;
mod bulk_check;
mod callers;
mod cli;
mod cluster;
mod collected_for;
mod concern;
mod concern_bad_input;
mod config;
mod consent;
mod crash;
mod cuts;
mod database;
mod deploy;
mod disclosure;
mod disclosure_bad_input;
mod disclosure_callers;
mod disclosure_holes;
mod erasure;
mod erasure_races;
mod erasure_traces;
mod error_paths;
mod feed;
mod feed_erasure;
mod feed_scale;
mod group_commit;
mod helpers;
mod hostile_input;
mod http_client;
mod http_limits;
mod import;
mod ledger;
mod limits;
mod locks;
mod log_backpressure;
mod metrics;
mod otlp;
mod outage;
mod pg_tls;
mod pki;
mod preference_browser;
mod preference_links;
mod preference_logs;
mod preference_page;
mod preferences;
mod quiet_logs;
mod raw_h2;
mod restart;
mod rights;
mod rolling;
mod server;
mod standby;
mod standby_tokens;
mod state;
mod telemetry;
mod tls;
mod tokens;
mod unsubscribe;
mod wire_fuzz;

// The fuzz tests' random source and request generator, for the wire test.
#[allow(dead_code)]
#[path = "../fuzz/engine.rs"]
mod engine;
#[allow(dead_code)]
#[path = "../fuzz/messages.rs"]
mod messages;
#[allow(dead_code)]
#[path = "../fuzz/mutate.rs"]
mod mutate;
