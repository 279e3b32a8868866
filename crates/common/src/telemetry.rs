//! Tracing for every service: a `tracing` subscriber (text or JSON), and
//! OpenTelemetry OTLP export of traces and metrics when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set. W3C trace context travels in gRPC
//! metadata and in event envelopes, so one trace follows an operation from
//! the gateway to every consumer of its events.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MapInjector<'a>(&'a mut HashMap<String, String>);
impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);
impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C trace context (`traceparent`, `tracestate`) of the current span,
/// for an event envelope or outgoing metadata. Empty when not tracing.
pub fn current_trace_context() -> HashMap<String, String> {
    let mut map = HashMap::new();
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MapInjector(&mut map));
    map
}

/// Makes `span` a child of the trace described by `carrier` (from an event
/// envelope or incoming metadata). Does nothing when the carrier is empty.
pub fn set_parent(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if carrier.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&MapExtractor(carrier));
    let _ = span.set_parent(cx);
}
