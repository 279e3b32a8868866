//! Event pipeline metrics (exported over OTLP when telemetry is on):
//! `events.published` per producer, `events.consumed` per consumer and
//! outcome, and `events.consume.lag` (ms from `occurred_at` to applied), the
//! figure to alert on when a consumer falls behind.

use std::sync::OnceLock;

use loyalty_proto::events::EventEnvelope;
use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

use super::Outcome;

struct Instruments {
    published: Counter<u64>,
    consumed: Counter<u64>,
    lag: Histogram<f64>,
}

fn instruments() -> &'static Instruments {
    static I: OnceLock<Instruments> = OnceLock::new();
    I.get_or_init(|| {
        let meter = opentelemetry::global::meter("loyalty.events");
        Instruments {
            published: meter
                .u64_counter("events.published")
                .with_description("events published from an outbox")
                .build(),
            consumed: meter
                .u64_counter("events.consumed")
                .with_description("events delivered to a consumer, by outcome")
                .build(),
            lag: meter
                .f64_histogram("events.consume.lag")
                .with_unit("ms")
                .with_description("time from an event's occurrence to its effects being committed")
                .build(),
        }
    })
}

pub(crate) fn published(producer: &str, n: usize) {
    instruments()
        .published
        .add(n as u64, &[KeyValue::new("producer", producer.to_owned())]);
}

pub(crate) fn consumed(consumer: &str, event: &EventEnvelope, outcome: Outcome) {
    let i = instruments();
    let label = match outcome {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Skipped => "skipped",
        Outcome::DeadLettered => "dead_lettered",
    };
    let attrs = [
        KeyValue::new("consumer", consumer.to_owned()),
        KeyValue::new("outcome", label),
    ];
    i.consumed.add(1, &attrs);
    if outcome == Outcome::Applied
        && let Some(ts) = event.occurred_at
    {
        let occurred = ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000;
        let lag_ms = (chrono::Utc::now().timestamp_micros() - occurred) as f64 / 1000.0;
        i.lag.record(
            lag_ms.max(0.0),
            &[KeyValue::new("consumer", consumer.to_owned())],
        );
    }
}
