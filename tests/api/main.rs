//! Integration tests: the real server on port 0, a real PostgreSQL with a
//! fresh database per test, and real gRPC calls over a socket. One test
//! binary, so one process shares the PostgreSQL setup.

mod browser;
mod cli;
mod concern;
mod consent;
mod deploy;
mod disclosure;
mod erasure;
mod feed;
mod helpers;
mod import;
mod ledger;
mod rights;
mod server;
mod telemetry;
mod unsubscribe;
