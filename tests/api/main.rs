//! Integration tests: the real server on port 0, a real PostgreSQL with a
//! fresh database per test, and real gRPC calls over a socket. One test
//! binary, so one process shares the PostgreSQL setup.

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
mod disclosure_holes;
mod erasure;
mod error_paths;
mod feed;
mod helpers;
mod import;
mod ledger;
mod metrics;
mod otlp;
mod pg_tls;
mod pki;
mod preference_browser;
mod preference_links;
mod preference_logs;
mod preference_page;
mod preferences;
mod restart;
mod rights;
mod rolling;
mod server;
mod telemetry;
mod tls;
mod unsubscribe;
