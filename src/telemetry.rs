//! Logs and traces. One place composes the subscriber, so the binary and the
//! tests log alike.
//!
//! - Logs go to stderr, human-readable or JSON (`--log-format`); RUST_LOG
//!   filters them (default `info`). Lines inside an RPC carry its trace and
//!   span ids. A thread of their own writes them ([`log_writer`]), so no
//!   call waits on stderr.
//! - Traces are exported over OTLP/gRPC when an endpoint is configured with
//!   the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`);
//!   `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and the other standard
//!   variables apply. With no endpoint nothing is exported and the
//!   OpenTelemetry layer is not installed at all ([`spans_exported`]); RPC
//!   spans still get ids, for the logs.
//!
//! Nothing here may carry personal data (R8): spans name subjects only by a
//! keyed pseudonym (`SubjectRefs`), and the database driver's verbose levels
//! stay off whatever RUST_LOG says ([`QUIET_TARGETS`]).

mod log_writer;
pub mod span_ids;

use std::{
    io::IsTerminal as _,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{LevelFilter, Targets},
    fmt,
    prelude::*,
};

use crate::{
    domain::SubjectId,
    keys::{KeyFile as _, SubjectKey, hex},
};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, with the current span's fields.
    Json,
}

/// Crates whose verbose levels would print personal data, and the most they
/// may ever log. tokio-postgres logs every statement's parameters (subject
/// ids, values) at debug on `tokio_postgres::query`, and statement text at
/// debug elsewhere; its info level carries only server notices. deadpool
/// logs nothing above warn today; the cap keeps a future debug line out.
/// Their `log` records reach tracing through the log bridge, which asks
/// this filter before tokio-postgres even formats the parameters.
pub const QUIET_TARGETS: [(&str, LevelFilter); 2] = [
    ("tokio_postgres", LevelFilter::INFO),
    ("deadpool", LevelFilter::WARN),
];

/// A filter that holds [`QUIET_TARGETS`] to their caps and lets everything
/// else through. It sits beside RUST_LOG's filter, and both must agree, so
/// no RUST_LOG directive (`trace`, `tokio_postgres=trace`) can lift a cap.
fn quiet_targets() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(QUIET_TARGETS)
}

/// How many bytes of formatted log lines may wait for the log writer
/// thread; past that, lines are dropped and counted. About 4,000 access log
/// lines: tens of milliseconds of a busy server's output.
const LOG_BUFFER_BYTES: usize = 1 << 20;

/// The installed subscriber's log writer, for [`dropped_log_lines`].
static LOG_WRITER: OnceLock<log_writer::LogWriter<std::io::Stderr>> = OnceLock::new();

/// Whether the installed subscriber's filter lets any debug line through.
/// True until [`init`] installs one that does not: a subscriber installed
/// some other way may.
static DEBUG_LOGGED: AtomicBool = AtomicBool::new(true);

/// Whether a debug line can be logged anywhere (see [`DEBUG_LOGGED`]).
pub fn debug_logged() -> bool {
    DEBUG_LOGGED.load(Ordering::Relaxed)
}

/// Whether the installed subscriber exports spans (and so has the
/// OpenTelemetry layer).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: only then do RPC spans carry the
/// OpenTelemetry attributes and go through the OpenTelemetry layer.
pub fn spans_exported() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Log lines dropped since start because stderr's reader fell behind by
/// more than the log buffer (see [`log_writer`]).
pub fn dropped_log_lines() -> u64 {
    LOG_WRITER
        .get()
        .map_or(0, log_writer::LogWriter::dropped_lines)
}

/// Keeps the tracer provider and the log writer alive; `shutdown` flushes
/// pending spans and log lines.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    logs: Option<log_writer::LogGuard<std::io::Stderr>>,
}

impl Telemetry {
    /// Exports what is still buffered and writes out the pending log lines.
    /// Call before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces failed: {e}");
        }
        if let Some(logs) = self.logs {
            logs.close();
        }
    }
}

fn exporting() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber and the W3C trace-context propagator.
/// Must run inside the tokio runtime (the OTLP exporter needs it). Only the
/// first call in a process takes effect; later ones return a no-op guard.
pub fn init(default_filter: &str, format: LogFormat) -> anyhow::Result<Telemetry> {
    // The propagator is a no-op unless set: without it `traceparent` would
    // be ignored and every RPC would start a new trace.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let exporter = if exporting() {
        Some(
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .context("cannot build the OTLP trace exporter")?,
        )
    } else {
        None
    };
    // With nothing to export, no OpenTelemetry layer: it would build, enter
    // and close an unsampled OpenTelemetry span beside every tracing span,
    // a fifth of a Check's server time.
    let provider = exporter.map(|exporter| {
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("consentd");
        }
        SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter)
            .build()
    });
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("consentd")));

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // The filter's most verbose directive: whether any debug line can be
    // logged (the layered subscriber's own hint is TRACE, from the quiet
    // targets' default).
    let debug_logged = filter
        .max_level_hint()
        .is_none_or(|most| most >= LevelFilter::DEBUG);
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = log_writer::spawn(std::io::stderr(), LOG_BUFFER_BYTES);
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(writer.clone())
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer.clone())
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(quiet_targets())
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()
        .is_ok();
    if !installed {
        return Ok(Telemetry {
            provider: None,
            logs: None,
        });
    }
    let _ = LOG_WRITER.set(writer);
    DEBUG_LOGGED.store(debug_logged, Ordering::Relaxed);
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        EXPORTING.store(true, Ordering::Relaxed);
    }
    Ok(Telemetry {
        provider,
        logs: Some(guard),
    })
}

/// The domain tag trace refs derive under.
const TRACE_REF_DOMAIN: &str = "trace-ref";

/// Keyed pseudonyms for subjects, for spans and dashboards: stable (the same
/// subject always gets the same ref, so dashboards can group by it) but not
/// reversible without the key, and never the external id itself.
#[derive(Clone, Debug)]
pub struct SubjectRefs {
    key: SubjectKey,
}

impl SubjectRefs {
    pub fn new(key: SubjectKey) -> Self {
        Self { key }
    }

    /// Reads the subject-ref key file (see [`SubjectKey`]).
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        SubjectKey::load(path).map(Self::new)
    }

    /// The pseudonym of a subject in traces: 16 hex digits, under its own
    /// domain tag; other uses of the key derive under theirs.
    pub fn of(&self, subject: &SubjectId) -> String {
        hex(&self.key.derive(TRACE_REF_DOMAIN, subject)[..8])
    }
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};

    use super::*;

    #[test]
    fn the_driver_targets_never_pass_debug() {
        let quiet = quiet_targets();
        for target in [
            "tokio_postgres::query",
            "tokio_postgres::prepare",
            "deadpool.postgres",
        ] {
            assert!(
                !quiet.would_enable(target, &tracing::Level::DEBUG),
                "{target}"
            );
            assert!(
                quiet.would_enable(target, &tracing::Level::WARN),
                "{target}"
            );
        }
        assert!(quiet.would_enable("consentd::store", &tracing::Level::TRACE));
    }

    #[test]
    fn subject_refs_are_stable_keyed_and_hide_the_id() {
        let id = SubjectId::parse("C-1042").unwrap();
        let key = |byte: u8| SubjectKey::parse(&STANDARD.encode([byte; 32]), "test").unwrap();
        let refs = SubjectRefs::new(key(7));
        assert_eq!(refs.of(&id), refs.of(&id));
        assert_eq!(refs.of(&id).len(), 16);
        assert!(!refs.of(&id).contains("1042"));
        assert_ne!(refs.of(&id), SubjectRefs::new(key(8)).of(&id));
        assert_ne!(refs.of(&id), refs.of(&SubjectId::parse("C-1043").unwrap()));
    }
}
