//! W3C trace context (`traceparent` / `tracestate`) across the bus, and the few span
//! operations herald's code needs, without it depending on OpenTelemetry directly.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// An OpenTelemetry context: which span a piece of work belongs to. Cheap to clone.
pub use opentelemetry::Context as TraceContext;

/// W3C trace-context headers of one message.
struct Headers<'a> {
    traceparent: Option<&'a str>,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => self.traceparent,
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Collects injected headers.
#[derive(Default)]
struct Collected {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = Some(value),
            "tracestate" if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// The remote parent named by `traceparent` (any version-00 flags, e.g. `01` or the
/// `03` "random trace id" flags Python's SDK sends, only the sampled bit is kept), or an
/// empty context when it is absent or malformed.
pub fn extract(traceparent: Option<&str>, tracestate: Option<&str>) -> TraceContext {
    if traceparent.is_none() {
        return TraceContext::new();
    }
    TraceContextPropagator::new().extract(&Headers {
        traceparent,
        tracestate,
    })
}

/// `(traceparent, tracestate)` naming `cx`'s span as the parent, if it has a valid one.
pub fn inject(cx: &TraceContext) -> Option<(String, Option<String>)> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Collected::default();
    TraceContextPropagator::new().inject_context(cx, &mut out);
    out.traceparent.map(|tp| (tp, out.tracestate))
}

/// A fresh sampled root context (random ids): what a publisher that records no spans of its
/// own sends, so the trace still starts at it and every node joins the same one.
pub fn new_root() -> TraceContext {
    let ids = RandomIdGenerator::default();
    TraceContext::new().with_remote_span_context(SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ))
}

/// Makes `cx` the parent of `span` (must be called before the span is entered). A no-op
/// when export is off or the context is empty.
pub fn set_parent(span: &tracing::Span, cx: TraceContext) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The context of `span` (empty when export is off or the span is filtered out).
pub fn context_of(span: &tracing::Span) -> TraceContext {
    span.context()
}

/// Whether `cx` has a span that is recorded and exported.
pub fn is_sampled(cx: &TraceContext) -> bool {
    cx.span().span_context().is_sampled()
}

/// `cx`'s trace id as 32 hex digits, if valid.
pub fn trace_id(cx: &TraceContext) -> Option<String> {
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// `(trace_id, span_id)` of the active span (the innermost entered one), if any.
pub(crate) fn current_ids() -> Option<(TraceId, SpanId)> {
    let cx = TraceContext::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn traceparents_with_flags_01_and_03_are_sampled_remote_parents() {
        for flags in ["01", "03"] {
            let tp = format!("00-{TRACE}-{SPAN}-{flags}");
            let cx = extract(Some(&tp), Some("vendor=x"));
            let span = cx.span();
            let sc = span.span_context();
            assert!(sc.is_valid() && sc.is_remote(), "flags {flags}");
            assert!(sc.is_sampled(), "flags {flags}");
            assert_eq!(sc.trace_id().to_string(), TRACE);
            assert_eq!(sc.span_id().to_string(), SPAN);
            assert_eq!(sc.trace_state().header(), "vendor=x");
        }
        let cx = extract(Some(&format!("00-{TRACE}-{SPAN}-00")), None);
        assert!(!is_sampled(&cx));
    }

    #[test]
    fn malformed_or_missing_traceparents_give_an_empty_context() {
        for tp in [None, Some(""), Some("garbage"), Some("00-0000-00-01")] {
            let cx = extract(tp, None);
            assert!(!cx.span().span_context().is_valid(), "{tp:?}");
            assert_eq!(inject(&cx), None);
        }
    }

    #[test]
    fn a_new_root_round_trips_through_the_headers() {
        let root = new_root();
        let (tp, ts) = inject(&root).expect("a valid root injects");
        assert_eq!(ts, None);
        assert!(tp.starts_with("00-") && tp.ends_with("-01"), "{tp}");
        let back = extract(Some(&tp), None);
        assert_eq!(trace_id(&back), trace_id(&root));
    }
}
