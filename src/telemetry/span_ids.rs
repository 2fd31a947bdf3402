//! A logged server span's fields (its method, trace and span ids), written
//! only when a line that would carry them can be logged.
//!
//! Formatting the two ids into the span's fields when it opens cost a
//! Check about 5,500 instructions (callgrind), a sixth of what it adds to
//! the gRPC floor, and a successful Check logs no line at the default
//! level. So a decision read's span opens with its fields empty and keeps
//! their values beside it; [`stamp`] writes them before anything logs inside
//! it at a level that is on: the access log of a failed call, or an
//! internal error.

use opentelemetry::trace::{SpanId, TraceId};
use tracing::Span;
use tracing_subscriber::{Registry, registry::LookupSpan as _};

/// What a span has not written into its fields yet.
#[derive(Clone, Copy)]
pub struct Pending {
    pub method: &'static str,
    pub trace_id: TraceId,
    pub span_id: SpanId,
}

impl Pending {
    fn record(self, span: &Span) {
        span.record("rpc.method", self.method);
        span.record("trace_id", tracing::field::display(self.trace_id));
        span.record("span_id", tracing::field::display(self.span_id));
    }
}

/// Keeps `fields` with `span` (which declares `rpc.method`, `trace_id` and
/// `span_id` empty) for [`stamp`], or writes them now when the span is not
/// in a registry.
pub fn defer(span: &Span, fields: Pending) {
    let kept = span.with_subscriber(|(id, dispatch)| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let data = registry.span(id)?;
        data.extensions_mut().replace(fields);
        Some(())
    });
    if kept.flatten().is_none() {
        fields.record(span);
    }
}

/// Writes the fields [`defer`] kept; once, and not at all for a span whose
/// fields were written when it opened.
pub fn stamp(span: &Span) {
    // Taken out first: recording re-enters the registry for this span.
    let pending = span
        .with_subscriber(|(id, dispatch)| {
            let registry = dispatch.downcast_ref::<Registry>()?;
            registry.span(id)?.extensions_mut().remove::<Pending>()
        })
        .flatten();
    if let Some(fields) = pending {
        fields.record(span);
    }
}
