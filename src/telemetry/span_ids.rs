//! A logged server span's trace and span ids, written into its fields only
//! when a line that would carry them can be logged.
//!
//! Formatting the two ids into the span's fields when it opens cost a
//! Check about 5,500 instructions (callgrind), a sixth of what it adds to
//! the gRPC floor, and a successful Check logs no line at the default
//! level. So a decision read's span opens with the fields empty and keeps
//! the ids beside it; [`stamp`] writes them before anything logs inside
//! it at a level that is on: the access log of a failed call, or an
//! internal error.

use opentelemetry::trace::{SpanId, TraceId};
use tracing::Span;
use tracing_subscriber::{Registry, registry::LookupSpan as _};

/// The ids a span has not written into its fields yet.
struct Pending {
    trace_id: TraceId,
    span_id: SpanId,
}

/// Keeps the ids with `span` (which declares `trace_id` and `span_id` as
/// empty fields) for [`stamp`]. False when the span is not in a registry,
/// and the caller must write them now.
pub fn defer(span: &Span, trace_id: TraceId, span_id: SpanId) -> bool {
    span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        data.extensions_mut().replace(Pending { trace_id, span_id });
        Some(())
    })
    .flatten()
    .is_some()
}

/// Writes the ids [`defer`] kept into the span's fields; once, and not at
/// all for a span whose ids were written when it opened.
pub fn stamp(span: &Span) {
    // Taken out first: recording re-enters the registry for this span.
    let pending = span
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<Registry>()?;
            registry.span(id)?.extensions_mut().remove::<Pending>()
        })
        .flatten();
    if let Some(Pending { trace_id, span_id }) = pending {
        span.record("trace_id", tracing::field::display(trace_id));
        span.record("span_id", tracing::field::display(span_id));
    }
}
