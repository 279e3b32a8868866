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

struct MapExtractor<'a, S>(&'a HashMap<String, String, S>);
impl<S: std::hash::BuildHasher> Extractor for MapExtractor<'_, S> {
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

/// Adds the current W3C trace context to outgoing gRPC metadata, so the
/// callee's span joins the caller's trace.
pub fn inject_into_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    for (k, v) in current_trace_context() {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
            v.parse(),
        ) {
            metadata.insert(key, value);
        }
    }
}

/// Makes `span` a child of the trace described by `carrier` (from an event
/// envelope or incoming metadata). Does nothing when the carrier is empty.
pub fn set_parent<S: std::hash::BuildHasher>(
    span: &tracing::Span,
    carrier: &HashMap<String, String, S>,
) {
    if carrier.is_empty() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&MapExtractor(carrier));
    let _ = span.set_parent(cx);
}

/// Keeps exporters alive; flushes them when dropped at shutdown.
#[derive(Default)]
pub struct TelemetryGuard {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("otlp", &self.tracer.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(t) = self.tracer.take() {
            let _ = t.shutdown();
        }
        if let Some(m) = self.meter.take() {
            let _ = m.shutdown();
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid setting LOYALTY_LOG: {0}")]
    Filter(String),
    #[error("cannot start OTLP export to OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Otlp(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global subscriber: logs to stderr (text or JSON, filtered
/// by `filter`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OTLP/gRPC
/// export of spans and metrics under `service_name`. W3C trace context is
/// the propagation format either way.
pub fn init(
    service_name: &str,
    filter: &str,
    format: crate::config::LogFormat,
) -> Result<TelemetryGuard, TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let env_filter =
        EnvFilter::try_new(filter).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let fmt_layer = match format {
        crate::config::LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed(),
        crate::config::LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let mut guard = TelemetryGuard::default();
    let otel_layer = if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        use opentelemetry::trace::TracerProvider as _;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service_name.to_owned())
            .build();
        let spans = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let tracer_provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let meter_provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_periodic_exporter(metrics)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        let tracer = tracer_provider.tracer("loyalty");
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        guard.tracer = Some(tracer_provider);
        guard.meter = Some(meter_provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    } else {
        None
    };
    tracing_subscriber::registry()
        .with(env_filter)
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_round_trips_through_a_carrier() {
        use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
        use tracing_subscriber::layer::SubscriberExt;

        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let producer = tracing::info_span!("produce");
            let carrier = producer.in_scope(current_trace_context);
            let traceparent = carrier.get("traceparent").expect("traceparent injected");
            let trace_id = producer.context().span().span_context().trace_id();
            assert!(traceparent.contains(&trace_id.to_string()), "{traceparent}");

            let consumer = tracing::info_span!("consume");
            set_parent(&consumer, &carrier);
            assert_eq!(
                consumer.context().span().span_context().trace_id(),
                trace_id
            );
        });
    }
}
