//! outbox → relay → bus → inbox, on both transports and both engines:
//! every event applied exactly once (also when a relay dies between
//! publishing and marking), per-member order kept, failing handlers retried,
//! poison events parked without blocking other members, relays of one
//! outbox taking turns, and the relay flushing at shutdown.
//!
//! NATS deliveries are asynchronous to publishing, so "nothing more will
//! arrive" is established with a barrier, not a sleep: one sentinel event per
//! member is published last, and since a member's events apply in order,
//! once every sentinel is applied everything before it has been handled.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use loyalty_common::ServiceError;
use loyalty_common::db::{Db, Tx};
use loyalty_common::events::{
    self, BusError, Consumer, EventBus, EventHandler, InProcessBus, NatsBus, Outcome, Relay,
};
use loyalty_common::server::{Shutdown, ShutdownTrigger};
use loyalty_common::testing::{TestDb, TestEngine, nats_url};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{CheckedIn, EventEnvelope, PointsEarned};

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
        if c.streak_days == SENTINEL {
            sqlx::query("INSERT INTO sentinels (member_id) VALUES ($1)")
                .bind(&event.member_id)
                .execute(&mut **tx)
                .await?;
            return Ok(());
        }
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

/// The check-in counter that marks a barrier event.
const SENTINEL: i32 = 0;

async fn consumer_db(engine: TestEngine) -> TestDb {
    let db = engine.database(&[]).await;
    let mut tx = db.begin().await.unwrap();
    for sql in [
        "CREATE TABLE effects (event_id TEXT NOT NULL, member_id TEXT NOT NULL, counter BIGINT NOT NULL, applied_order BIGINT NOT NULL)",
        "CREATE TABLE sentinels (member_id TEXT NOT NULL)",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    db
}

fn check_in(member: &str, counter: i32) -> EventEnvelope {
    events::new_envelope(
        "rewards",
        "p1",
        member,
        Payload::CheckedIn(CheckedIn {
            local_date: String::new(),
            streak_days: counter,
        }),
    )
}

/// Publishes one sentinel per member after everything else and waits until
/// all are applied: then every earlier event of those members was handled.
async fn barrier(producer: &Db, consumer: &Db, relay: &Relay, members: usize) {
    let before = count(consumer, "SELECT CAST(COUNT(*) AS BIGINT) FROM sentinels").await;
    let mut tx = producer.begin().await.unwrap();
    for m in 0..members {
        events::outbox::append(&mut tx, &check_in(&format!("m{m}"), SENTINEL))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    relay.relay_once().await.unwrap();
    let expected = before + members as i64;
    wait_until(
        consumer,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM sentinels",
        expected,
    )
    .await;
}

/// Writes `per_member` check-ins for each of `members` members, interleaved,
/// each in its own producer transaction, through the outbox.
async fn produce(db: &Db, members: usize, per_member: i32) -> usize {
    for n in 1..=per_member {
        for m in 0..members {
            let env = check_in(&format!("m{m}"), n);
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
    wait_until(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM effects", expected).await;
}

/// Waits (30 s at most) until the count query reaches `expected`.
async fn wait_until(db: &Db, sql: &'static str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = count(db, sql).await;
        if n >= expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: only {n} of {expected} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_no_dead_letters(db: &Db) {
    assert_eq!(
        count(db, "SELECT CAST(COUNT(*) AS BIGINT) FROM dead_letters").await,
        0
    );
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
    barrier(&producer, &consumer, &relay, 10).await;
    assert_exactly_once(&consumer, n as i64).await;
    assert_eq!(events::outbox::pending(&producer).await.unwrap(), 0);
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

    // The first relay publishes, then "dies" before marking anything: its
    // batch (and with it its turn) is dropped unmarked.
    let dying = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    let batch = dying
        .publish_pending()
        .await
        .unwrap()
        .expect("no other relay");
    assert_eq!(batch.len(), n);
    drop(batch);
    drop(dying);
    wait_for_effects(&consumer, n as i64).await;
    assert_eq!(
        events::outbox::pending(&producer).await.unwrap(),
        n as i64,
        "nothing was marked"
    );

    // A new relay publishes them all again, at once: no lease to wait out.
    let fresh = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    // the dead relay's turn ends when its connection's rollback lands,
    // which the pool does in the background: until then a pass finds the
    // turn taken and publishes nothing
    let mut published = 0;
    for _ in 0..100 {
        published = fresh.relay_once().await.unwrap();
        if published > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(published, n, "everything is published again");
    barrier(&producer, &consumer, &fresh, 5).await;
    assert_exactly_once(&consumer, n as i64).await;
    assert_eq!(
        count(&consumer, "SELECT CAST(COUNT(*) AS BIGINT) FROM inbox").await,
        n as i64 + 5,
        "one inbox row per event (and sentinel)"
    );
    assert_eq!(events::outbox::pending(&producer).await.unwrap(), 0);
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
    h.subscribe("retention", &consumer, recorder.clone()).await;
    let n = produce(&producer, 12, 25).await;
    let relay = Relay::new("rewards", producer.db.clone(), h.bus.clone()).with_batch_size(64);
    assert_eq!(relay.relay_once().await.unwrap(), n);
    barrier(&producer, &consumer, &relay, 12).await;
    assert_exactly_once(&consumer, n as i64).await;
    assert_member_order(&consumer).await;
    // the flaky members failed and were retried, and nothing was parked
    assert!(
        recorder
            .flaky
            .lock()
            .unwrap()
            .values()
            .all(|left| *left == 0)
    );
    assert_no_dead_letters(&consumer).await;
    h.finish().await;
}

async fn poison_events_are_parked_without_blocking_others(
    engine: TestEngine,
    transport: Transport,
) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(transport).await;
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
    wait_until(
        &consumer,
        "SELECT CAST(COUNT(*) AS BIGINT) FROM dead_letters WHERE consumer = 'feedback'",
        2,
    )
    .await;
    wait_for_effects(&consumer, 4).await;
    let (error, attempts): (String, i64) =
        sqlx::query_as("SELECT error, attempts FROM dead_letters LIMIT 1")
            .fetch_one(consumer.pool())
            .await
            .unwrap();
    assert!(error.contains("poison"), "{error}");
    assert_eq!(attempts, 3);
    // every event is in the inbox: a redelivery is not retried forever
    wait_until(&consumer, "SELECT CAST(COUNT(*) AS BIGINT) FROM inbox", 6).await;
    assert_exactly_once(&consumer, 4).await;
    h.finish().await;
}

async fn consumers_get_only_their_event_types(engine: TestEngine, transport: Transport) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(transport).await;
    // two types: on NATS ≥ 2.10 the server filters, on older ones the consumer
    let c = Consumer::new("membership", consumer.db.clone(), Recorder::new())
        .with_event_types(&["CheckedIn", "TierChanged"])
        .with_retry(1, Duration::from_millis(1));
    h.bus
        .subscribe(Arc::new(c), h.shutdown.clone())
        .await
        .unwrap();
    let mut tx = producer.begin().await.unwrap();
    for m in 0..4 {
        // the recorder fails on any payload but CheckedIn: delivered, it would be parked
        let other = events::new_envelope(
            "rewards",
            "p1",
            &format!("m{m}"),
            Payload::PointsEarned(PointsEarned::default()),
        );
        events::outbox::append(&mut tx, &other).await.unwrap();
        events::outbox::append(&mut tx, &check_in(&format!("m{m}"), 1))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let relay = Relay::new("rewards", producer.db.clone(), h.bus.clone());
    assert_eq!(relay.relay_once().await.unwrap(), 8);
    barrier(&producer, &consumer, &relay, 4).await;
    assert_exactly_once(&consumer, 4).await;
    assert_no_dead_letters(&consumer).await;
    h.finish().await;
}

/// Wraps a bus and records how many publishes ever ran at the same time.
struct Overlap {
    inner: Arc<dyn EventBus>,
    in_flight: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait::async_trait]
impl EventBus for Overlap {
    fn transport(&self) -> &'static str {
        self.inner.transport()
    }

    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), BusError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(3)).await; // widen the window
        let done = self.inner.publish(events).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        done
    }

    async fn subscribe(&self, consumer: Arc<Consumer>, shutdown: Shutdown) -> Result<(), BusError> {
        self.inner.subscribe(consumer, shutdown).await
    }
}

async fn relays_of_one_outbox_take_turns(engine: TestEngine) {
    let producer = engine.database(&[]).await;
    let consumer = consumer_db(engine).await;
    let h = Harness::new(Transport::InProcess).await;
    h.subscribe("membership", &consumer, Recorder::new()).await;
    let bus = Arc::new(Overlap {
        inner: h.bus.clone(),
        in_flight: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    // three "replicas" relay the same outbox while it is being written
    let published = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = Shutdown::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let relay = Relay::new("rewards", producer.db.clone(), bus.clone()).with_batch_size(7);
        let (published, stopped) = (published.clone(), stopped.clone());
        relays.push(tokio::spawn(async move {
            while !stopped.is_fired() {
                published.fetch_add(relay.relay_once().await.unwrap(), Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        }));
    }
    let n = produce(&producer, 8, 15).await;
    wait_for_effects(&consumer, n as i64).await;
    stop.fire();
    for r in relays {
        r.await.unwrap();
    }
    assert_eq!(
        bus.max.load(Ordering::SeqCst),
        1,
        "two relays published at once"
    );
    assert_eq!(
        published.load(Ordering::SeqCst),
        n,
        "a row was published twice"
    );
    assert_exactly_once(&consumer, n as i64).await;
    assert_member_order(&consumer).await;
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
    // one shutdown for consumers and relay, as in the launcher
    let running = tokio::spawn(relay.run(h.shutdown.clone()));
    let n = produce(&producer, 2, 3).await;
    notifier.notify();
    // the poll interval is a minute: only the notification can explain this
    wait_for_effects(&consumer, n as i64).await;
    let more = produce(&producer, 1, 1).await;
    h.trigger.fire();
    running.await.unwrap();
    // flushed and applied before run returned: consumers outlive the signal
    assert_eq!(events::outbox::pending(&producer).await.unwrap(), 0);
    assert_exactly_once(&consumer, (n + more) as i64).await;
    h.finish().await;
}

/// The inbox on its own: a redelivered event is acknowledged without
/// effect, and types the consumer does not take are skipped.
async fn inbox_applies_a_redelivered_event_once(engine: TestEngine) {
    let db = consumer_db(engine).await;
    let consumer = Consumer::new("membership", db.db.clone(), Recorder::new())
        .with_event_types(&["CheckedIn"]);
    let env = check_in("m1", 1);
    assert_eq!(consumer.deliver(&env).await.unwrap(), Outcome::Applied);
    assert_eq!(consumer.deliver(&env).await.unwrap(), Outcome::Duplicate);
    let other = events::new_envelope(
        "rewards",
        "p1",
        "m1",
        Payload::PointsEarned(PointsEarned::default()),
    );
    assert_eq!(consumer.deliver(&other).await.unwrap(), Outcome::Skipped);
    assert_exactly_once(&db, 1).await;
    // another consumer of the same database has its own inbox
    let second = Consumer::new("retention", db.db.clone(), Recorder::new());
    assert_eq!(second.deliver(&env).await.unwrap(), Outcome::Applied);
}

/// A group claims its inbox rows in one statement: an event handled
/// before, and the second copy of an event within the group, come back as
/// duplicates with no effect; the rest apply once, in order. Events of an
/// ignored producer pass by without an inbox row.
async fn group_delivery_applies_each_event_once(engine: TestEngine) {
    let db = consumer_db(engine).await;
    let consumer = Consumer::new("membership", db.db.clone(), Recorder::new())
        .with_event_types(&["CheckedIn"])
        .ignoring_producer("feedback");
    let (a, b, c) = (check_in("m1", 1), check_in("m1", 2), check_in("m1", 3));
    assert_eq!(consumer.deliver(&b).await.unwrap(), Outcome::Applied);
    let mut own = check_in("m1", 4);
    own.producer = "feedback".into();
    let group = [a.clone(), b, a, own, c];
    let outcomes: Vec<Outcome> = consumer
        .deliver_group(&group)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Skipped,
            Outcome::Applied
        ]
    );
    assert_exactly_once(&db, 3).await;
    let counters: Vec<i64> =
        sqlx::query_scalar("SELECT counter FROM effects ORDER BY applied_order")
            .fetch_all(db.db.pool())
            .await
            .unwrap();
    assert_eq!(counters, [2, 1, 3]);
    assert_eq!(
        count(&db.db, "SELECT CAST(COUNT(*) AS BIGINT) FROM inbox").await,
        3,
        "no inbox row for the ignored producer's event"
    );
}

async fn published_rows_are_cleaned_up_after_retention(engine: TestEngine) {
    let producer = engine.database(&[]).await;
    let h = Harness::new(Transport::InProcess).await;
    let n = produce(&producer, 2, 5).await;
    let relay = Relay::new("rewards", producer.db.clone(), h.bus.clone()).with_batch_size(4);
    assert_eq!(relay.relay_once().await.unwrap(), n);
    produce(&producer, 1, 1).await; // unpublished: never deleted
    let kept = events::outbox::delete_published(&producer, Duration::from_hours(1), 3)
        .await
        .unwrap();
    assert_eq!(kept, 0, "too recent");
    let deleted = events::outbox::delete_published(&producer, Duration::ZERO, 3)
        .await
        .unwrap();
    assert_eq!(deleted, n as u64);
    assert_eq!(
        count(&producer, "SELECT CAST(COUNT(*) AS BIGINT) FROM outbox").await,
        1
    );
    assert_eq!(events::outbox::pending(&producer).await.unwrap(), 1);
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
        poison_events_are_parked_without_blocking_others(engine, Transport::InProcess).await;
    }
    async fn event_types(engine: TestEngine) {
        consumers_get_only_their_event_types(engine, Transport::InProcess).await;
    }
    async fn relays_take_turns(engine: TestEngine) {
        relays_of_one_outbox_take_turns(engine).await;
    }
    async fn run_loop(engine: TestEngine) {
        relay_run_publishes_on_notify_and_flushes_at_shutdown(engine).await;
    }
    async fn inbox_dedupes(engine: TestEngine) {
        inbox_applies_a_redelivered_event_once(engine).await;
    }
    async fn cleanup(engine: TestEngine) {
        published_rows_are_cleaned_up_after_retention(engine).await;
    }
    async fn group_once(engine: TestEngine) {
        group_delivery_applies_each_event_once(engine).await;
    }

    loyalty_common::test_on_both_engines!(
        exactly_once,
        relay_dies,
        ordering,
        poison,
        event_types,
        relays_take_turns,
        run_loop,
        inbox_dedupes,
        cleanup,
        group_once
    );
}

/// NATS variants on both storage engines, all ignored unless asked for.
macro_rules! nats_tests {
    ($($name:ident => $scenario:ident),* $(,)?) => {
        $(
            mod $name {
                use super::super::{$scenario, TestEngine, Transport};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs NATS JetStream: set LOYALTY_TEST_NATS_URL and run with --include-ignored (CI does)"]
                async fn sqlite() {
                    $scenario(TestEngine::Sqlite, Transport::Nats).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs NATS JetStream and PostgreSQL: set both variables and run with --include-ignored (CI does)"]
                async fn postgres() {
                    $scenario(TestEngine::Postgres, Transport::Nats).await;
                }
            }
        )*
    };
}

mod nats {
    nats_tests!(
        exactly_once => delivers_every_event_exactly_once,
        relay_dies => relay_dying_between_publish_and_mark_changes_nothing,
        ordering => keeps_per_member_order,
        poison => poison_events_are_parked_without_blocking_others,
        event_types => consumers_get_only_their_event_types,
    );
}
