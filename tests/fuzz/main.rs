//! Fuzz targets, on stable Rust: each one generates structured inputs (mostly
//! mutations of real seeds: the example policy and callers files, tokens the
//! service signs, well-formed requests) for a bounded time, checks its
//! properties on each, and prints `target X: N inputs, M crashes, K failed
//! properties`. A crash is a panic; a failed property is a wrong answer.
//! Either fails the test, with the seed and the input.
//!
//! `CONSENTD_FUZZ_SECONDS` (default 3) bounds each target;
//! `CONSENTD_FUZZ_SEED` replays a run. `cargo test` runs them briefly and
//! `.ci/run` longer; see the README.

mod engine;
mod files;
mod messages;
mod mutate;
mod requests;
mod tokens;
