//! consentd: the service other systems ask before they touch personal data.
//!
//! # Layout
//!
//! - [`domain`]: validated newtypes and plain records; no IO.
//! - [`policy`]: the policy file (purposes, recipients, disclosure rules) and
//!   the pure rules: `decide` for checks, `decide_disclosure` for releases.
//! - [`store`]: PostgreSQL — the pool, migrations, every SQL statement, and
//!   the private fallback cluster.
//! - [`service`]: the use cases, joining policy and store; `service::vault`
//!   holds the data keys and is the only code that sees plaintext values.
//! - [`grpc`]: the tonic adapter; the only place prost types live.
//! - [`http`]: probes and the one-click unsubscribe pages (axum).
//! - [`ledger`]: the tamper-evident history: chain encoding, signed
//!   checkpoints and `verify`'s judgement; pure.
//! - [`error`]: the one error enum; `grpc` maps it to `Status`.
//! - [`startup`]: builds and runs the whole server (`Application`).
//! - [`settings`]: command line and environment.
//! - [`commands`]: the one-shot subcommands (migrate, policy check, import,
//!   keys rotate).
//! - [`telemetry`]: logs, OpenTelemetry traces, subject pseudonyms.
//! - [`metrics`]: the Prometheus metrics and their names.

pub mod commands;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod service;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
