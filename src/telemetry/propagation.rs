//! Span-context helpers: the current context, its ids as hex, and the W3C text form used where a context
//! crosses a process boundary (the model worker today; queues later).
//!
//! Inside one process an [`opentelemetry::Context`] travels as is (cheaper than text and carrying the same
//! W3C fields: trace id, span id, flags, tracestate); the text form is only for crossing processes.

use std::collections::HashMap;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry context of the current `tracing` span.
pub fn current() -> Context {
    tracing::Span::current().context()
}

/// The trace id and span id of `cx` as lowercase hex (all zeros when tracing is off).
pub fn ids(cx: &Context) -> (String, String) {
    let span = cx.span();
    let span_context = span.span_context();
    (
        span_context.trace_id().to_string(),
        span_context.span_id().to_string(),
    )
}

/// Makes `span` a child of `parent`. Must be called before the span is first entered.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    // Fails only when the span was already entered or has no OpenTelemetry data (tracing off); in both
    // cases the span simply keeps the parent it has.
    let _ = span.set_parent(parent);
}

/// Writes `cx` as W3C `traceparent`/`tracestate` headers.
pub fn to_w3c(cx: &Context) -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, &mut carrier);
    });
    carrier
}

/// Reads a context from W3C headers; an absent or malformed `traceparent` gives an empty context.
pub fn from_w3c(carrier: &HashMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier))
}
