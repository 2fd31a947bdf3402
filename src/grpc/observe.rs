//! One server span and one latency sample per RPC; for a streaming RPC,
//! per stream.
//!
//! The span follows the OpenTelemetry RPC conventions (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) and continues the
//! caller's trace from the W3C `traceparent` in the request metadata, so a
//! mailer's own trace shows the consent check inside it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{propagation::Extractor, trace::TraceContextExt as _};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument as _, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::auth::admit;
use crate::{
    metrics::{Handles, RPC_DURATION},
    telemetry,
};

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|key| match key {
                tonic::metadata::KeyRef::Ascii(key) => Some(key.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// The name Prometheus labels and dashboards use for a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// Codes that mean the server failed; per the conventions only these mark a
/// server span as an error (a caller's bad input is not our failure).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Runs `handler` inside the RPC's server span and records its outcome.
pub async fn observe<T, R, F>(
    service: &'static str,
    method: &'static str,
    mut request: Request<T>,
    handler: impl FnOnce(Request<T>) -> F,
) -> Result<Response<R>, Status>
where
    F: Future<Output = Result<Response<R>, Status>>,
{
    let call = Call::start(service, method, &request);
    let result = match call.admit(&mut request) {
        Ok(()) => handler(request).instrument(call.span.clone()).await,
        Err(refused) => Err(refused),
    };
    call.finish(match &result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    });
    result
}

/// [`observe`] for an RPC that answers with a stream: the span, the latency
/// sample and the access log cover the whole stream, up to its last
/// message, and carry the status it ended with. A stream the client drops
/// before its end is recorded as CANCELLED. Work the stream does in a task
/// of its own belongs in the span too: instrument the task with
/// `Span::current()` from inside `handler`.
pub async fn observe_stream<T, S, M, F>(
    service: &'static str,
    method: &'static str,
    mut request: Request<T>,
    handler: impl FnOnce(Request<T>) -> F,
) -> Result<Response<Observed<S>>, Status>
where
    F: Future<Output = Result<Response<S>, Status>>,
    S: Stream<Item = Result<M, Status>> + Unpin,
{
    let call = Call::start(service, method, &request);
    let result = match call.admit(&mut request) {
        Ok(()) => handler(request).instrument(call.span.clone()).await,
        Err(refused) => Err(refused),
    };
    match result {
        Ok(response) => Ok(response.map(|stream| Observed {
            stream,
            call: Some(call),
        })),
        Err(status) => {
            call.finish(status.code());
            Err(status)
        }
    }
}

/// A response stream that records its RPC's outcome when it ends.
pub struct Observed<S> {
    stream: S,
    /// Taken when the outcome is recorded, so it is recorded once.
    call: Option<Call>,
}

impl<S, M> Stream for Observed<S>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
{
    type Item = Result<M, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = Pin::new(&mut self.stream).poll_next(cx);
        // The stream ends at its first error: tonic sends it as the status.
        let code = match &item {
            Poll::Ready(None) => Code::Ok,
            Poll::Ready(Some(Err(status))) => status.code(),
            Poll::Ready(Some(Ok(_))) | Poll::Pending => return item,
        };
        if let Some(call) = self.call.take() {
            call.finish(code);
        }
        item
    }
}

impl<S> Drop for Observed<S> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.finish(Code::Cancelled);
        }
    }
}

/// One RPC's server span and clock, from its start to [`Call::finish`].
struct Call {
    span: tracing::Span,
    service: &'static str,
    method: &'static str,
    started: Instant,
}

impl Call {
    fn start<T>(service: &'static str, method: &'static str, request: &Request<T>) -> Self {
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&MetadataExtractor(request.metadata()))
        });
        let span = if telemetry::spans_exported() {
            exported_span(service, method, parent)
        } else {
            // A successful decision read logs nothing unless debug is on
            // somewhere: its ids wait until a line needs them.
            let defer_ids = is_decision_read(service, method) && !telemetry::debug_logged();
            logged_span(method, &parent, defer_ids)
        };
        Self {
            span,
            service,
            method,
            started: Instant::now(),
        }
    }

    /// Every RPC passes here, so none can be served to a caller whose entry
    /// does not list it.
    fn admit<T>(&self, request: &mut Request<T>) -> Result<(), Status> {
        admit(request, self.service, self.method)
            .map_err(|refused| self.span.in_scope(|| Status::from(refused)))
    }

    fn finish(self, code: Code) {
        let Self {
            span,
            service,
            method,
            started,
        } = self;
        span.record("rpc.grpc.status_code", code as i64);
        if is_server_error(code) {
            span.record("otel.status_code", "ERROR");
        }
        let elapsed = started.elapsed();
        // Resolved once per method and status rather than in the
        // recorder's registry on every call.
        static DURATIONS: Handles<(&str, Code), metrics::Histogram> = Handles::new();
        DURATIONS
            .get(
                |(m, c)| *c == code && *m == method,
                || {
                    let histogram = metrics::histogram!(
                        RPC_DURATION, "method" => method, "status" => code_name(code)
                    );
                    ((method, code), histogram)
                },
            )
            .record(elapsed.as_secs_f64());
        // The access log: the span is its parent, so it carries the trace and
        // span ids (without entering the span once more). The status message
        // is left out: it can echo what the caller sent.
        macro_rules! access_log {
            ($level:expr) => {
                tracing::event!(
                    parent: &span,
                    $level,
                    method,
                    status = code_name(code),
                    duration_ms = elapsed.as_secs_f64() * 1000.0,
                    "rpc finished"
                )
            };
        }
        if code == Code::Ok && is_decision_read(service, method) {
            access_log!(tracing::Level::DEBUG);
        } else {
            telemetry::span_ids::stamp(&span);
            access_log!(tracing::Level::INFO);
        }
    }
}

/// The consent checks: most of the traffic, and they change nothing. Their
/// successful calls log at debug; the latency histogram and
/// `consentd_decisions_total` count them all the same. At info a line per
/// check cost a busy server more than the check itself.
fn is_decision_read(service: &str, method: &str) -> bool {
    service == "consent.v1.ConsentService" && matches!(method, "Check" | "BatchCheck" | "BulkCheck")
}

/// The server span when spans are exported: the OpenTelemetry RPC
/// attributes, continuing the caller's trace.
fn exported_span(
    service: &'static str,
    method: &'static str,
    parent: opentelemetry::Context,
) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        otel.name = format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    let _ = span.set_parent(parent);
    // The ids go into the span's fields too, so every log line inside the
    // call carries them.
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
        span.record("span_id", tracing::field::display(span_context.span_id()));
    }
    span
}

/// The server span when nothing exports it: only what log lines need, the
/// caller's trace id (or a new one) and an id of its own, given when the
/// span is made so that no field is formatted twice. The log layer formats
/// a span's fields once per call, so the fewer the cheaper. With
/// `defer_ids` the fields are formatted only if a line is logged inside the
/// span (see [`telemetry::span_ids`]).
fn logged_span(
    method: &'static str,
    parent: &opentelemetry::Context,
    defer_ids: bool,
) -> tracing::Span {
    let ids = RandomIdGenerator::default();
    let caller = parent.span().span_context().clone();
    let trace_id = if caller.is_valid() {
        caller.trace_id()
    } else {
        ids.new_trace_id()
    };
    let span_id = ids.new_span_id();
    if defer_ids {
        let span =
            tracing::info_span!("rpc", rpc.method = Empty, trace_id = Empty, span_id = Empty);
        let fields = telemetry::span_ids::Pending {
            method,
            trace_id,
            span_id,
        };
        telemetry::span_ids::defer(&span, fields);
        return span;
    }
    tracing::info_span!("rpc", rpc.method = method, trace_id = %trace_id, span_id = %span_id)
}
