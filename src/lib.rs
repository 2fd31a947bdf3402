//! consentd: the service other systems ask before they touch personal data.
//!
//! # Layout
//!
//! - [`domain`]: validated newtypes and plain records; no IO.
//! - [`policy`]: the policy (purposes, recipients, disclosure rules) and its
//!   file loader, the request checks (`check_query`, `check_disclosure`) and
//!   the pure rules: `decide` for checks, `decide_disclosure` for releases,
//!   and `authorize` for what each caller of the callers file may do.
//! - [`store`]: PostgreSQL — which database to use, the pool, migrations,
//!   every SQL statement, and the private fallback cluster.
//! - [`service`]: the use cases, joining policy and store; `service::vault`
//!   holds the data keys and is the only code that sees plaintext values.
//! - [`grpc`]: the tonic adapter; the only place prost types live.
//! - [`http`]: probes and the one-click unsubscribe pages (axum).
//! - [`ledger`]: the tamper-evident history: chain encoding, signed
//!   checkpoints and `verify`'s judgement; pure.
//! - [`error`]: the one error enum and how its failures are logged; `grpc`
//!   maps it to `Status`.
//! - [`startup`]: builds and runs the whole server (`Application`).
//! - [`settings`]: command line and environment.
//! - [`commands`]: the one-shot subcommands (migrate, check-config, policy
//!   check, callers check and token, import-refusals, keys rotate,
//!   export-subject, verify). They never see prost types: `main` hands
//!   export-subject its renderer.
//! - [`keys`]: key files (unsubscribe link keys, data keys, the subject-ref
//!   key): parsing, loading, creating once in the state dir, redacted `Debug`.
//! - [`tls`]: rustls for the gRPC and public HTTP listeners, reloaded on
//!   SIGHUP or when the files change.
//! - [`telemetry`]: logs, OpenTelemetry traces, subject trace refs.
//! - [`metrics`]: the Prometheus metrics and their names.

pub mod commands;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod service;
pub mod settings;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
