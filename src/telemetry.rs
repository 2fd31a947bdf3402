//! Logs and traces. One place composes the subscriber, so the binary and the
//! tests log alike.
//!
//! - Logs go to stderr, human-readable or JSON (`--log-format`); RUST_LOG
//!   filters them (default `info`). Lines inside an RPC carry its trace and
//!   span ids.
//! - Traces are exported over OTLP/gRPC when an endpoint is configured with
//!   the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`);
//!   `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and the other standard
//!   variables apply. With no endpoint nothing is exported and spans are not
//!   recorded (they still get ids, for the logs).
//!
//! Nothing here may carry personal data (R8): spans name subjects only by a
//! keyed pseudonym (`SubjectRefs`).

use std::io::IsTerminal as _;

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use sha2::Sha256;
use tracing_subscriber::{EnvFilter, Layer as _, fmt, prelude::*};

use crate::domain::SubjectId;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, with the current span's fields.
    Json,
}

/// Keeps the tracer provider alive; `shutdown` flushes pending spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still buffered. Call before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces failed: {e}");
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

    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("consentd");
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if exporting() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .context("cannot build the OTLP trace exporter")?;
        builder = builder.with_batch_exporter(exporter);
    } else {
        builder = builder.with_sampler(Sampler::AlwaysOff);
    }
    let provider = builder.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("consentd"));

    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let ansi = std::io::stderr().is_terminal();
    let logs = match format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        opentelemetry::global::set_tracer_provider(provider.clone());
        Ok(Telemetry {
            provider: Some(provider),
        })
    } else {
        Ok(Telemetry { provider: None })
    }
}

/// Keyed pseudonyms for subjects, for spans and dashboards: stable (the same
/// subject always gets the same ref, so dashboards can group by it) but not
/// reversible without the key, and never the external id itself.
#[derive(Clone)]
pub struct SubjectRefs {
    key: Vec<u8>,
}

impl SubjectRefs {
    /// Reads a key file: one base64 line of at least 32 bytes; `#` comments.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .with_context(|| format!("{}: no key", path.display()))?;
        let key = STANDARD
            .decode(line)
            .with_context(|| format!("{}: the key is not valid base64", path.display()))?;
        anyhow::ensure!(
            key.len() >= 32,
            "{}: the key must be at least 32 bytes",
            path.display()
        );
        Ok(Self { key })
    }

    /// A random key: refs are stable only while this process runs.
    pub fn ephemeral() -> Self {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source works");
        Self { key }
    }

    /// HMAC-SHA256 of the id, under a domain tag so that the derived values
    /// below cannot be matched with each other.
    fn mac(&self, domain: &str, subject: &SubjectId) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(domain.as_bytes());
        mac.update(subject.as_str().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The pseudonym of a subject in traces: 16 hex digits.
    pub fn of(&self, subject: &SubjectId) -> String {
        hex(&self.mac("", subject)[..8])
    }

    /// The suppression-list hash of an erased external id.
    pub fn erasure_hash(&self, subject: &SubjectId) -> Vec<u8> {
        self.mac("erasure:", subject)
    }

    /// The id an erased subject's history carries instead of its own.
    pub fn erased_pseudonym(&self, subject: &SubjectId) -> SubjectId {
        SubjectId::parse(format!(
            "erased-{}",
            hex(&self.mac("pseudonym:", subject)[..12])
        ))
        .expect("a valid subject id")
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_refs_are_stable_keyed_and_hide_the_id() {
        let id = SubjectId::parse("C-1042").unwrap();
        let refs = SubjectRefs { key: vec![7; 32] };
        assert_eq!(refs.of(&id), refs.of(&id));
        assert_eq!(refs.of(&id).len(), 16);
        assert!(!refs.of(&id).contains("1042"));
        assert_ne!(
            hex(&refs.erasure_hash(&id)[..8]),
            refs.of(&id),
            "derived apart"
        );
        assert!(refs.erased_pseudonym(&id).as_str().starts_with("erased-"));
        assert_eq!(refs.erased_pseudonym(&id), refs.erased_pseudonym(&id));
        assert_ne!(refs.of(&id), SubjectRefs { key: vec![8; 32] }.of(&id));
        assert_ne!(refs.of(&id), refs.of(&SubjectId::parse("C-1043").unwrap()));
    }
}
