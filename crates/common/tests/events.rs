//! outbox → relay → bus → inbox, on both transports and both engines:
//! every event applied exactly once (also when a relay dies between
//! publishing and marking), per-member order kept, failing handlers retried,
//! poison events parked without blocking other members.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use loyalty_common::ServiceError;
use loyalty_common::db::{Db, Tx};
use loyalty_common::events::{
    self, Consumer, EventBus, EventHandler, InProcessBus, NatsBus, Relay,
};
use loyalty_common::server::{Shutdown, ShutdownTrigger};
use loyalty_common::testing::{TestDb, TestEngine, nats_url};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{CheckedIn, EventEnvelope};

/// Records every applied event: which, for whom, its per-member counter,
/// and the global order in which it was applied.
struct Recorder {
    order: AtomicI64,
    /// member → attempts that still fail before success
    flaky: std::sync::Mutex<HashMap<String, u32>>,
    attempts: AtomicU32,
    poison_member: Option<String>,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            order: AtomicI64::new(0),
            flaky: std::sync::Mutex::new(HashMap::new()),
            attempts: AtomicU32::new(0),
            poison_member: None,
        })
    }
}

#[async_trait::async_trait]
impl EventHandler for Recorder {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.poison_member.as_deref() == Some(event.member_id.as_str()) {
            return Err(ServiceError::precondition("poison"));
        }
        if let Some(left) = self.flaky.lock().unwrap().get_mut(&event.member_id)
            && *left > 0
        {
            *left -= 1;
            return Err(ServiceError::Unavailable("flaky".into()));
        }
        let Some(Payload::CheckedIn(c)) = &event.payload else {
            return Err(ServiceError::invalid("payload", "unexpected"));
        };
        sqlx::query("INSERT INTO effects (event_id, member_id, counter, applied_order) VALUES ($1, $2, $3, $4)")
            .bind(&event.event_id)
            .bind(&event.member_id)
            .bind(i64::from(c.streak_days))
            .bind(self.order.fetch_add(1, Ordering::SeqCst))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn consumer_db(engine: TestEngine) -> TestDb {
    let db = engine.database(&[]).await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "CREATE TABLE effects (event_id TEXT NOT NULL, member_id TEXT NOT NULL, counter BIGINT NOT NULL, applied_order BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    db
}

/// Writes `per_member` check-ins for each of `members` members, interleaved,
/// each in its own producer transaction, through the outbox.
async fn produce(db: &Db, members: usize, per_member: i32) -> usize {
    for n in 1..=per_member {
        for m in 0..members {
            let env = events::new_envelope(
                "rewards",
                "p1",
                &format!("m{m}"),
                Payload::CheckedIn(CheckedIn {
                    local_date: String::new(),
                    streak_days: n,
                }),
            );
            let mut tx = db.begin().await.unwrap();
            events::outbox::append(&mut tx, &env).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
    members * usize::try_from(per_member).unwrap()
}

async fn count(db: &Db, sql: &'static str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn wait_for_effects(db: &Db, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM effects").await;
        if n >= expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} of {expected} effects after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_exactly_once(db: &Db, expected: i64) {
    assert_eq!(
        count(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM effects").await,
        expected
    );
    assert_eq!(
        count(
            db,
            "SELECT CAST(COUNT(DISTINCT event_id) AS BIGINT) FROM effects"
        )
        .await,
        expected,
        "an event took effect twice"
    );
}

async fn assert_member_order(db: &Db) {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT member_id, counter FROM effects ORDER BY applied_order")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let mut last: HashMap<String, i64> = HashMap::new();
    for (member, counter) in rows {
        let prev = last.insert(member.clone(), counter).unwrap_or(0);
        assert_eq!(
            counter,
            prev + 1,
            "{member}: {counter} applied after {prev}"
        );
    }
}

enum Transport {
    InProcess,
    Nats,
}

struct Harness {
    bus: Arc<dyn EventBus>,
    nats: Option<Arc<NatsBus>>,
    trigger: ShutdownTrigger,
    shutdown: Shutdown,
}

impl Harness {
    async fn new(transport: Transport) -> Self {
        let (trigger, shutdown) = Shutdown::new();
        match transport {
            Transport::InProcess => Self {
                bus: Arc::new(InProcessBus::new()),
                nats: None,
                trigger,
                shutdown,
            },
            Transport::Nats => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let bus = Arc::new(
                    NatsBus::connect_with(
                        &nats_url(),
                        &format!("TEST_{id}"),
                        &format!("test_{id}"),
                    )
                    .await
                    .expect("NATS reachable"),
                );
                Self {
                    bus: bus.clone(),
                    nats: Some(bus),
                    trigger,
                    shutdown,
                }
            }
        }
    }

    async fn subscribe(&self, name: &str, db: &Db, handler: Arc<dyn EventHandler>) {
        let consumer = Consumer::new(name, db.clone(), handler)
            .with_event_types(&["CheckedIn"])
            .with_retry(3, Duration::from_millis(5));
        self.bus
            .subscribe(Arc::new(consumer), self.shutdown.clone())
            .await
            .unwrap();
    }

    async fn finish(self) {
        self.trigger.fire();
        if let Some(n) = self.nats {
            n.delete_stream().await.unwrap();
        }
    }
}

async fn delivers_every_event_exactly_once(engine: TestEngine, transport: Transport) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(transport).await;
    h.subscribe("membership", &consumer, Recorder::new()).await;
    let n = produce(&producer, 10, 20).await;

    let relay = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    assert_eq!(relay.relay_once().await.unwrap(), n);
    wait_for_effects(&consumer, n as i64).await;
    // a second pass finds nothing left to publish
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_exactly_once(&consumer, n as i64).await;
    assert_eq!(
        count(
            &producer,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM outbox WHERE published_at IS NULL"
        )
        .await,
        0
    );
    h.finish().await;
}

async fn relay_dying_between_publish_and_mark_changes_nothing(
    engine: TestEngine,
    transport: Transport,
) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(transport).await;
    let recorder = Recorder::new();
    h.subscribe("membership", &consumer, recorder.clone()).await;
    let n = produce(&producer, 5, 10).await;

    // The first relay publishes, then "dies" before marking anything.
    let dying = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    assert_eq!(dying.publish_pending().await.unwrap().len(), n);
    drop(dying);
    wait_for_effects(&consumer, n as i64).await;

    // A new relay (its lease expired or released) publishes them all again.
    sqlx::query("UPDATE jobs SET lease_until = 0")
        .execute(producer.pool())
        .await
        .unwrap();
    let fresh = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    assert_eq!(
        fresh.relay_once().await.unwrap(),
        n,
        "everything is published again"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&consumer, n as i64).await;
    assert_eq!(
        count(&consumer, "SELECT CAST(COUNT(*) AS BIGINT) FROM inbox").await,
        n as i64
    );
    h.finish().await;
}

async fn keeps_per_member_order(engine: TestEngine, transport: Transport) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(transport).await;
    let recorder = Recorder::new();
    // some members fail now and then: retries must not reorder them
    for m in ["m1", "m4", "m7"] {
        recorder.flaky.lock().unwrap().insert(m.into(), 2);
    }
    h.subscribe("retention", &consumer, recorder).await;
    let n = produce(&producer, 12, 25).await;
    let relay = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    relay.relay_once().await.unwrap();
    wait_for_effects(&consumer, n as i64).await;
    assert_exactly_once(&consumer, n as i64).await;
    assert_member_order(&consumer).await;
    h.finish().await;
}

async fn poison_events_are_parked_without_blocking_others(engine: TestEngine) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(Transport::InProcess).await;
    let recorder = Arc::new(Recorder {
        order: AtomicI64::new(0),
        flaky: std::sync::Mutex::new(HashMap::new()),
        attempts: AtomicU32::new(0),
        poison_member: Some("m0".into()),
    });
    h.subscribe("feedback", &consumer, recorder.clone()).await;
    produce(&producer, 3, 2).await; // m0 ×2 poisoned, m1, m2 ×2 fine
    let relay = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    assert_eq!(relay.relay_once().await.unwrap(), 6);
    wait_for_effects(&consumer, 4).await;
    assert_eq!(
        count(
            &consumer,
            "SELECT CAST(COUNT(*) AS BIGINT) FROM dead_letters WHERE consumer = 'feedback'"
        )
        .await,
        2
    );
    let (error, attempts): (String, i64) =
        sqlx::query_as("SELECT error, attempts FROM dead_letters LIMIT 1")
            .fetch_one(consumer.pool())
            .await
            .unwrap();
    assert!(error.contains("poison"), "{error}");
    assert_eq!(attempts, 3);
    // every event is in the inbox: a redelivery is not retried forever
    assert_eq!(
        count(&consumer, "SELECT CAST(COUNT(*) AS BIGINT) FROM inbox").await,
        6
    );
    h.finish().await;
}

async fn relay_run_publishes_on_notify_and_flushes_at_shutdown(engine: TestEngine) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(Transport::InProcess).await;
    h.subscribe("membership", &consumer, Recorder::new()).await;
    let relay = Relay::new("rewards", producer.db.clone(), h.bus.clone())
        .with_poll_interval(Duration::from_secs(60));
    let notifier = relay.notifier();
    let (stop_relay, relay_shutdown) = Shutdown::new();
    let running = tokio::spawn(relay.run(relay_shutdown));
    let n = produce(&producer, 2, 3).await;
    notifier.notify();
    // the poll interval is a minute: only the notification can explain this
    wait_for_effects(&consumer, n as i64).await;
    let more = produce(&producer, 1, 1).await;
    stop_relay.fire();
    running.await.unwrap();
    wait_for_effects(&consumer, (n + more) as i64).await;
    h.finish().await;
}

mod in_process {
    use super::*;

    async fn exactly_once(engine: TestEngine) {
        delivers_every_event_exactly_once(engine, Transport::InProcess).await;
    }
    async fn relay_dies(engine: TestEngine) {
        relay_dying_between_publish_and_mark_changes_nothing(engine, Transport::InProcess).await;
    }
    async fn ordering(engine: TestEngine) {
        keeps_per_member_order(engine, Transport::InProcess).await;
    }
    async fn poison(engine: TestEngine) {
        poison_events_are_parked_without_blocking_others(engine).await;
    }
    async fn run_loop(engine: TestEngine) {
        relay_run_publishes_on_notify_and_flushes_at_shutdown(engine).await;
    }

    loyalty_common::test_on_both_engines!(exactly_once, relay_dies, ordering, poison, run_loop);
}

mod nats {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs NATS JetStream: set LOYALTY_TEST_NATS_URL and run with --include-ignored (CI does)"]
    async fn exactly_once() {
        delivers_every_event_exactly_once(TestEngine::Sqlite, Transport::Nats).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs NATS JetStream: set LOYALTY_TEST_NATS_URL and run with --include-ignored (CI does)"]
    async fn relay_dies() {
        relay_dying_between_publish_and_mark_changes_nothing(TestEngine::Sqlite, Transport::Nats)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs NATS JetStream: set LOYALTY_TEST_NATS_URL and run with --include-ignored (CI does)"]
    async fn ordering() {
        keeps_per_member_order(TestEngine::Sqlite, Transport::Nats).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs NATS JetStream and PostgreSQL: set both variables and run with --include-ignored (CI does)"]
    async fn exactly_once_on_postgres() {
        delivers_every_event_exactly_once(TestEngine::Postgres, Transport::Nats).await;
    }
}
