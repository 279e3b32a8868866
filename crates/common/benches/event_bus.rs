//! Event bus throughput and publish-to-consume latency, end to end:
//! outbox append in a producer transaction → relay → bus → consumer inbox
//! transaction with an effect row. Both transports; SQLite always,
//! PostgreSQL when LOYALTY_TEST_POSTGRES_URL is set, NATS when
//! LOYALTY_TEST_NATS_URL is set.
//!
//! cargo bench -p loyalty-common --bench event_bus
//!
//! - end to end: N events appended by a producer (transactions of 100
//!   events, relay woken after each commit) while the relay runs; time from
//!   the first append until the consumer has applied all of them.
//! - drain: N events already in the outbox (a backlog after an outage); time
//!   until the consumer has applied all of them (relay batches of 500).
//! - latency: events appended one per producer transaction at a steady
//!   rate while the relay runs (woken on commit); latency = handler time −
//!   occurred_at, so it includes the producer commit, the relay, the
//!   transport and the consumer's transaction.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::events::{
    self, Consumer, EventBus, EventHandler, InProcessBus, NatsBus, Relay,
};
use loyalty_common::server::Shutdown;
use loyalty_common::testing::{NATS_ENV, POSTGRES_ENV, TestDb, TestEngine};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{CheckedIn, EventEnvelope};

const DRAIN_EVENTS: usize = 20_000;
const RATE_PER_SEC: u64 = 500;
const LATENCY_SECS: u64 = 6;

struct Effect {
    latencies_us: Mutex<Vec<i64>>,
}

#[async_trait::async_trait]
impl EventHandler for Effect {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
            .bind(&event.event_id)
            .execute(&mut **tx)
            .await?;
        let ts = event.occurred_at.unwrap_or_default();
        let occurred = ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000;
        self.latencies_us
            .lock()
            .unwrap()
            .push(chrono::Utc::now().timestamp_micros() - occurred);
        Ok(())
    }
}

fn event(i: usize) -> EventEnvelope {
    events::new_envelope(
        "rewards",
        "p1",
        &format!("m{}", i % 1000),
        Payload::CheckedIn(CheckedIn {
            local_date: "2026-11-24".into(),
            streak_days: 1,
        }),
    )
}

async fn consumer_db(engine: TestEngine) -> TestDb {
    let db = engine.database(&[]).await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("CREATE TABLE effects (event_id TEXT PRIMARY KEY)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db
}

async fn wait_applied(effect: &Effect, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while effect.latencies_us.lock().unwrap().len() < n {
        assert!(Instant::now() < deadline, "consumer stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// A fresh bus; on NATS its own stream, so one phase never sees another's events.
async fn new_bus(transport: &str) -> (Arc<dyn EventBus>, Option<Arc<NatsBus>>) {
    if transport == "nats" {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let url = std::env::var(NATS_ENV).unwrap();
        let b = Arc::new(
            NatsBus::connect_with(&url, &format!("BENCH_{id}"), &format!("bench_{id}"))
                .await
                .unwrap(),
        );
        (b.clone(), Some(b))
    } else {
        (Arc::new(InProcessBus::new()), None)
    }
}

/// N events appended in producer transactions of 100 while the relay runs.
async fn end_to_end(engine: TestEngine, transport: &str, shutdown: &Shutdown) -> Duration {
    let (bus, nats) = new_bus(transport).await;
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let effect = Arc::new(Effect {
        latencies_us: Mutex::new(Vec::new()),
    });
    bus.subscribe(
        Arc::new(Consumer::new(
            "bench-e2e",
            consumer.db.clone(),
            effect.clone(),
        )),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let (stop, stopped) = Shutdown::new();
    let relay = Relay::new("rewards", producer.db.clone(), bus.clone());
    let notifier = relay.notifier();
    let relay_task = tokio::spawn(relay.run(stopped));
    let started = Instant::now();
    for chunk in (0..DRAIN_EVENTS).collect::<Vec<_>>().chunks(100) {
        let mut tx = producer.begin().await.unwrap();
        for i in chunk {
            events::outbox::append(&mut tx, &event(*i)).await.unwrap();
        }
        tx.commit().await.unwrap();
        notifier.notify();
    }
    wait_applied(&effect, DRAIN_EVENTS).await;
    let took = started.elapsed();
    stop.fire();
    let _ = relay_task.await;
    if let Some(n) = nats {
        n.delete_stream().await.unwrap();
    }
    took
}

async fn bench(engine: TestEngine, transport: &str) {
    let (trigger, shutdown) = Shutdown::new();
    let e2e = end_to_end(engine, transport, &shutdown).await;
    let (bus, nats) = new_bus(transport).await;

    // drain
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let effect = Arc::new(Effect {
        latencies_us: Mutex::new(Vec::new()),
    });
    bus.subscribe(
        Arc::new(Consumer::new(
            "bench-drain",
            consumer.db.clone(),
            effect.clone(),
        )),
        shutdown.clone(),
    )
    .await
    .unwrap();
    for chunk in (0..DRAIN_EVENTS).collect::<Vec<_>>().chunks(500) {
        let mut tx = producer.begin().await.unwrap();
        for i in chunk {
            events::outbox::append(&mut tx, &event(*i)).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let relay = Relay::new("rewards", producer.db.clone(), bus.clone());
    let started = Instant::now();
    relay.relay_once().await.unwrap();
    wait_applied(&effect, DRAIN_EVENTS).await;
    let drain = started.elapsed();

    // latency at a steady rate
    if let Some(n) = nats {
        n.delete_stream().await.unwrap();
    }
    let (bus, nats) = new_bus(transport).await;
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let effect = Arc::new(Effect {
        latencies_us: Mutex::new(Vec::new()),
    });
    bus.subscribe(
        Arc::new(Consumer::new(
            "bench-latency",
            consumer.db.clone(),
            effect.clone(),
        )),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let relay = Relay::new("rewards", producer.db.clone(), bus.clone());
    let notifier = relay.notifier();
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let total = (RATE_PER_SEC * LATENCY_SECS) as usize;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE_PER_SEC));
    for i in 0..total {
        tick.tick().await;
        let mut tx = producer.begin().await.unwrap();
        events::outbox::append(&mut tx, &event(i)).await.unwrap();
        tx.commit().await.unwrap();
        notifier.notify();
    }
    wait_applied(&effect, total).await;
    let mut lat = effect.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    trigger.fire();
    let _ = relay_task.await;
    if let Some(n) = nats {
        n.delete_stream().await.unwrap();
    }
    let storage = match engine {
        TestEngine::Sqlite => "sqlite",
        TestEngine::Postgres => "postgres",
    };
    println!(
        "| {transport:<10} | {storage:<8} | {:>8.0} | {:>10.0} | {:>6.2} | {:>6.2} | {:>6.2} |",
        DRAIN_EVENTS as f64 / e2e.as_secs_f64(),
        DRAIN_EVENTS as f64 / drain.as_secs_f64(),
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for a list
    }
    println!(
        "e2e: {DRAIN_EVENTS} events appended (tx of 100) → relay → bus → applied; drain: {DRAIN_EVENTS} events already in the outbox → applied;\nlatency: {RATE_PER_SEC}/s for {LATENCY_SECS} s, one event per producer transaction, occurred_at → handler\n"
    );
    println!("| transport  | storage  | e2e ev/s | drain ev/s | p50 ms | p99 ms | max ms |");
    println!("|------------|----------|---------:|-----------:|-------:|-------:|-------:|");
    let pg = std::env::var(POSTGRES_ENV).is_ok();
    let nats = std::env::var(NATS_ENV).is_ok();
    bench(TestEngine::Sqlite, "in-process").await;
    if pg {
        bench(TestEngine::Postgres, "in-process").await;
    }
    if nats {
        bench(TestEngine::Sqlite, "nats").await;
        if pg {
            bench(TestEngine::Postgres, "nats").await;
        }
    }
    if !pg || !nats {
        println!(
            "\n(skipped: {}{})",
            if pg {
                ""
            } else {
                "PostgreSQL (set LOYALTY_TEST_POSTGRES_URL) "
            },
            if nats {
                ""
            } else {
                "NATS (set LOYALTY_TEST_NATS_URL)"
            }
        );
    }
}
