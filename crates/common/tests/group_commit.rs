//! Group commit on both engines: answers only after the commit, a clean
//! batch runs each item once with no savepoint (fast path), one failing item
//! rolls back alone (savepoint mode), many concurrent items share few
//! transactions, and a retried batch applies each item exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loyalty_common::ServiceError;
use loyalty_common::db::{Db, Engine, JsonType, Tx, engine_of, is_unique_violation, json_rows};
use loyalty_common::group_commit::{
    BulkWork, GroupCommitSettings, GroupCommitter, MAX_ATTEMPTS, bulk_work,
};
use loyalty_common::testing::{TestDb, TestEngine};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

async fn setup(engine: TestEngine) -> Arc<TestDb> {
    let db = engine.database(&[]).await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "CREATE TABLE entries (id TEXT PRIMARY KEY, member TEXT NOT NULL, points BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("CREATE TABLE balances (member TEXT PRIMARY KEY, points BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO balances (member, points) VALUES ('m', 0)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Arc::new(db)
}

fn one_writer() -> GroupCommitSettings {
    GroupCommitSettings {
        writers: 1,
        max_batch: 256,
    }
}

/// Inserts entry `id` and adds its points to member `m`'s balance;
/// `refuse` makes it fail after writing, `runs` counts its executions.
async fn earn(
    gc: &GroupCommitter,
    id: String,
    points: i64,
    refuse: bool,
    runs: Arc<AtomicU32>,
) -> Result<String, ServiceError> {
    gc.run(&id.clone(), move |tx: &mut Tx| {
        let (id, runs) = (id.clone(), runs.clone());
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let inserted =
                sqlx::query("INSERT INTO entries (id, member, points) VALUES ($1, 'm', $2)")
                    .bind(&id)
                    .bind(points)
                    .execute(&mut **tx)
                    .await;
            match inserted {
                Err(e) if is_unique_violation(&e) => {
                    return Err(ServiceError::AlreadyExists {
                        resource: "entry",
                        field: "id".into(),
                    });
                }
                other => other?,
            };
            sqlx::query("UPDATE balances SET points = points + $1 WHERE member = 'm'")
                .bind(points)
                .execute(&mut **tx)
                .await?;
            if refuse {
                return Err(ServiceError::precondition(format!("{id} refused")));
            }
            Ok(id)
        })
    })
    .await
}

async fn entries(db: &Db) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM entries ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

async fn balance(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT points FROM balances WHERE member = 'm'")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// Occupies the (single) writer until released, so that the items queued
/// meanwhile form one batch.
async fn hold_writer(gc: &Arc<GroupCommitter>) -> (Arc<Notify>, JoinHandle<()>) {
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let (gc2, r, s) = (gc.clone(), release.clone(), started.clone());
    let blocker = tokio::spawn(async move {
        gc2.run("blocker", move |_tx: &mut Tx| {
            let (r, s) = (r.clone(), s.clone());
            Box::pin(async move {
                s.notify_one();
                r.notified().await;
                Ok(())
            })
        })
        .await
        .unwrap();
    });
    started.notified().await;
    (release, blocker)
}

async fn wait_queued(gc: &GroupCommitter, n: usize) {
    while gc.queued() < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Submits `items` (id, points, refuse) behind a held writer so they form
/// one batch; returns each caller's answer, the batches taken and the
/// execution counters.
async fn one_batch(
    db: &Arc<TestDb>,
    items: Vec<(String, i64, bool)>,
    before_release: impl FnOnce(&GroupCommitter),
) -> (Vec<Result<String, ServiceError>>, u64, Vec<Arc<AtomicU32>>) {
    let (answers, batches, runs, _) = one_batch_with(db, items, before_release).await;
    (answers, batches, runs)
}

/// [`one_batch`], also returning how many batches left the fast path.
async fn one_batch_with(
    db: &Arc<TestDb>,
    items: Vec<(String, i64, bool)>,
    before_release: impl FnOnce(&GroupCommitter),
) -> (
    Vec<Result<String, ServiceError>>,
    u64,
    Vec<Arc<AtomicU32>>,
    u64,
) {
    let gc = Arc::new(GroupCommitter::new(db.db.clone(), one_writer()));
    let (release, blocker) = hold_writer(&gc).await;
    let n = items.len();
    let mut calls = Vec::new();
    let mut counters = Vec::new();
    let gc2 = gc.clone();
    for (id, points, refuse) in items {
        let runs = Arc::new(AtomicU32::new(0));
        counters.push(runs.clone());
        let gc = gc.clone();
        calls.push(tokio::spawn(async move {
            earn(&gc, id, points, refuse, runs).await
        }));
        // one at a time into the queue, so the batch keeps this order
        wait_queued(&gc2, calls.len()).await;
    }
    wait_queued(&gc2, n).await;
    before_release(&gc);
    release.notify_one();
    blocker.await.unwrap();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    (
        answers,
        gc.stats().batches,
        counters,
        gc.savepoint_fallbacks(),
    )
}

async fn answers_come_after_the_commit(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = Arc::new(GroupCommitter::new(
        db.db.clone(),
        GroupCommitSettings {
            writers: 2,
            max_batch: 16,
        },
    ));
    let mut calls = Vec::new();
    for i in 0..60 {
        let (gc, db) = (gc.clone(), db.clone());
        calls.push(tokio::spawn(async move {
            let id = format!("e{i:03}");
            let key = id.clone();
            gc.run(&key, move |tx: &mut Tx| {
                let id = id.clone();
                Box::pin(async move {
                    sqlx::query("INSERT INTO entries (id, member, points) VALUES ($1, 'm', 1)")
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                    // the batch goes on after this item: an answer sent now
                    // would reach the caller well before the commit
                    tokio::time::sleep(Duration::from_millis(3)).await;
                    Ok(())
                })
            })
            .await
            .unwrap();
            // another connection, right when the caller hears Ok
            let seen: Option<String> = sqlx::query_scalar("SELECT id FROM entries WHERE id = $1")
                .bind(&key)
                .fetch_optional(db.pool())
                .await
                .unwrap();
            assert_eq!(
                seen.as_deref(),
                Some(key.as_str()),
                "Ok before the row was committed"
            );
        }));
    }
    for c in calls {
        c.await.unwrap();
    }
    assert_eq!(entries(&db).await.len(), 60);
    assert!(gc.stats().batches < 60, "items shared batches");
}

async fn a_failing_item_rolls_back_only_itself(engine: TestEngine) {
    let db = setup(engine).await;
    let items = (0..10)
        .map(|i| (format!("e{i}"), 1 << i, i % 3 == 1))
        .collect();
    let (answers, batches, runs, fallbacks) = one_batch_with(&db, items, |_| {}).await;
    assert_eq!(batches, 2, "the blocker, then the ten items together");
    assert_eq!(fallbacks, 1, "the fast path gave way to savepoints once");
    for (i, r) in runs.iter().enumerate() {
        // the fast path ran e0 and e1 (the first refusal) before rolling
        // back; savepoint mode then ran every item once
        let expected = if i <= 1 { 2 } else { 1 };
        assert_eq!(r.load(Ordering::SeqCst), expected, "runs of item {i}");
    }
    for (i, a) in answers.iter().enumerate() {
        if i % 3 == 1 {
            let Err(ServiceError::FailedPrecondition { message, .. }) = a else {
                panic!("item {i}: {a:?}")
            };
            assert_eq!(message, &format!("e{i} refused"), "its own error");
        } else {
            assert_eq!(a.as_ref().unwrap(), &format!("e{i}"));
        }
    }
    assert_eq!(
        entries(&db).await,
        ["e0", "e2", "e3", "e5", "e6", "e8", "e9"],
        "the refused items' rows rolled back, the others' kept"
    );
    let kept: i64 = [0, 2, 3, 5, 6, 8, 9].iter().map(|i| 1 << i).sum();
    assert_eq!(balance(&db).await, kept, "their balance updates too");
}

async fn a_unique_violation_does_not_poison_the_batch(engine: TestEngine) {
    let db = setup(engine).await;
    let items = vec![
        ("a".to_owned(), 1, false),
        ("dup".to_owned(), 10, false),
        ("b".to_owned(), 100, false),
        ("dup".to_owned(), 1000, false),
        ("c".to_owned(), 10_000, false),
    ];
    let (answers, batches, _) = one_batch(&db, items, |_| {}).await;
    assert_eq!(batches, 2);
    // the first duplicate in the queue wins
    let dup =
        |a: &Result<String, ServiceError>| matches!(a, Err(ServiceError::AlreadyExists { .. }));
    assert!(!dup(&answers[1]) && dup(&answers[3]), "{answers:?}");
    for i in [0, 2, 4] {
        assert!(answers[i].is_ok(), "{:?}", answers[i]);
    }
    assert_eq!(entries(&db).await, ["a", "b", "c", "dup"]);
    assert_eq!(
        balance(&db).await,
        10_111,
        "the losing duplicate's update rolled back with it"
    );
}

async fn concurrent_items_share_few_transactions(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = Arc::new(GroupCommitter::new(
        db.db.clone(),
        GroupCommitSettings {
            writers: 2,
            max_batch: 64,
        },
    ));
    assert_eq!(
        gc.writers(),
        if engine == TestEngine::Sqlite { 1 } else { 2 }
    );
    let mut calls = Vec::new();
    for i in 0..200 {
        let gc = gc.clone();
        calls.push(tokio::spawn(async move {
            earn(&gc, format!("e{i:03}"), 1, false, Arc::default()).await
        }));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let stats = gc.stats();
    assert_eq!(stats.items, 200);
    assert!(
        stats.batches * 4 <= stats.items,
        "200 items in {} transactions",
        stats.batches
    );
    assert_eq!(entries(&db).await.len(), 200);
    assert_eq!(balance(&db).await, 200);
}

async fn a_clean_batch_runs_each_item_once_without_savepoints(engine: TestEngine) {
    let db = setup(engine).await;
    let items = (0..10).map(|i| (format!("e{i}"), 1 << i, false)).collect();
    let (answers, batches, runs, fallbacks) = one_batch_with(&db, items, |_| {}).await;
    assert_eq!(batches, 2, "the blocker, then the ten items together");
    assert_eq!(fallbacks, 0, "no item failed: no savepoint mode");
    for (i, (a, r)) in answers.iter().zip(&runs).enumerate() {
        assert_eq!(a.as_ref().unwrap(), &format!("e{i}"));
        assert_eq!(r.load(Ordering::SeqCst), 1, "item {i} ran once");
    }
    assert_eq!(entries(&db).await.len(), 10);
    assert_eq!(balance(&db).await, (1 << 10) - 1);
}

async fn a_retried_batch_applies_each_item_once(engine: TestEngine) {
    let db = setup(engine).await;
    let items = (0..8).map(|i| (format!("e{i}"), 1, i == 5)).collect();
    let (answers, batches, runs, fallbacks) = one_batch_with(&db, items, |gc| {
        gc.fail_next_commits(1);
    })
    .await;
    assert_eq!(batches, 2);
    assert_eq!(fallbacks, 1, "the retry stayed in savepoint mode");
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.is_ok(), i != 5, "item {i}: {a:?}");
    }
    for (i, r) in runs.iter().enumerate() {
        // fast path up to the refusal (e0..e5), savepoint mode (all), then
        // the retry after the failed commit (all)
        let expected = if i <= 5 { 3 } else { 2 };
        assert_eq!(
            r.load(Ordering::SeqCst),
            expected,
            "item {i} ran again in the retry"
        );
    }
    assert_eq!(entries(&db).await.len(), 7, "each applied once");
    assert_eq!(balance(&db).await, 7);
}

async fn a_batch_that_keeps_failing_answers_unavailable(engine: TestEngine) {
    let db = setup(engine).await;
    let items = (0..4).map(|i| (format!("e{i}"), 1, false)).collect();
    let (answers, batches, runs) = one_batch(&db, items, |gc| {
        gc.fail_next_commits(u64::from(MAX_ATTEMPTS));
    })
    .await;
    assert_eq!(batches, 1, "only the blocker committed");
    for a in &answers {
        assert!(matches!(a, Err(ServiceError::Unavailable(_))), "{a:?}");
    }
    assert_eq!(runs[0].load(Ordering::SeqCst), MAX_ATTEMPTS);
    assert!(entries(&db).await.is_empty());
    assert_eq!(balance(&db).await, 0);
}

/// A real transient error from the database (PostgreSQL raises a
/// serialization failure inside one item on its first run) retries the
/// whole batch. SQLite serialises writers and has no such error to raise.
async fn a_serialization_failure_retries_the_batch(engine: TestEngine) {
    let db = setup(engine).await;
    if db.engine() != Engine::Postgres {
        return;
    }
    let gc = Arc::new(GroupCommitter::new(db.db.clone(), one_writer()));
    let (release, blocker) = hold_writer(&gc).await;
    let failing_runs = Arc::new(AtomicU32::new(0));
    let mut calls = Vec::new();
    for i in 0..3 {
        let (gc, failing_runs) = (gc.clone(), failing_runs.clone());
        calls.push(tokio::spawn(async move {
            let id = format!("e{i}");
            gc.run(&id.clone(), move |tx: &mut Tx| {
                let (id, failing_runs) = (id.clone(), failing_runs.clone());
                Box::pin(async move {
                    sqlx::query("INSERT INTO entries (id, member, points) VALUES ($1, 'm', 1)")
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                    if i == 1 && failing_runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        sqlx::query(
                            "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
                        )
                        .execute(&mut **tx)
                        .await?;
                    }
                    Ok(())
                })
            })
            .await
        }));
    }
    wait_queued(&gc, 3).await;
    release.notify_one();
    blocker.await.unwrap();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert_eq!(gc.stats().retries, 1);
    assert_eq!(failing_runs.load(Ordering::SeqCst), 2);
    assert_eq!(entries(&db).await, ["e0", "e1", "e2"]);
}

async fn dropping_the_committer_drains_the_queue(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = Arc::new(GroupCommitter::new(db.db.clone(), one_writer()));
    let (release, blocker) = hold_writer(&gc).await;
    let mut callers = Vec::new();
    for i in 0..5 {
        let gc2 = gc.clone();
        callers.push(tokio::spawn(async move {
            earn(&gc2, format!("e{i}"), 1, false, Arc::default()).await
        }));
    }
    wait_queued(&gc, 5).await;
    // the callers stop waiting and the last handle goes: queued work still runs
    for c in &callers {
        c.abort();
    }
    for c in callers {
        let _ = c.await;
    }
    drop(gc);
    release.notify_one();
    blocker.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while entries(&db).await.len() < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(entries(&db).await, ["e0", "e1", "e2", "e3", "e4"]);
}

async fn shutdown_waits_for_queued_work(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = GroupCommitter::new(
        db.db.clone(),
        GroupCommitSettings {
            writers: 2,
            max_batch: 8,
        },
    );
    let gc = Arc::new(gc);
    let mut calls = Vec::new();
    for i in 0..20 {
        let gc = gc.clone();
        calls.push(tokio::spawn(async move {
            earn(&gc, format!("e{i:02}"), 1, false, Arc::default()).await
        }));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let gc = Arc::into_inner(gc).expect("last handle");
    gc.shutdown().await;
    assert_eq!(entries(&db).await.len(), 20);
}

/// Work that ignores a database error and answers Ok: on PostgreSQL the
/// error aborted the transaction, so the item is undone alone and its
/// caller gets INTERNAL instead of a false Ok; SQLite keeps going after a
/// failed statement, so there the item's other write commits.
async fn work_that_ignores_a_database_error_is_isolated(engine: TestEngine) {
    // e1 in the middle: on PostgreSQL e2's statements then fail in the
    // fast path, which must not become e2's answer
    ignoring_an_error_in_a_batch_of(engine, 3).await;
}

/// The same with the ignoring item last: nothing after it fails, only the
/// check before COMMIT can see the aborted transaction.
async fn work_that_ignores_a_database_error_last_in_its_batch_is_isolated(engine: TestEngine) {
    ignoring_an_error_in_a_batch_of(engine, 2).await;
}

/// Items e0..e{n-1} in one batch; e1 ignores a failed duplicate insert.
async fn ignoring_an_error_in_a_batch_of(engine: TestEngine, n: usize) {
    let db = setup(engine).await;
    let gc = Arc::new(GroupCommitter::new(db.db.clone(), one_writer()));
    let (release, blocker) = hold_writer(&gc).await;
    let mut calls = Vec::new();
    for i in 0..n {
        let gc2 = gc.clone();
        calls.push(tokio::spawn(async move {
            let gc = gc2;
            let id = format!("e{i}");
            gc.run(&id.clone(), move |tx: &mut Tx| {
                let id = id.clone();
                Box::pin(async move {
                    sqlx::query("INSERT INTO entries (id, member, points) VALUES ($1, 'm', 1)")
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                    if id == "e1" {
                        // a duplicate of the row just written: ignored
                        let dup = sqlx::query(
                            "INSERT INTO entries (id, member, points) VALUES ($1, 'm', 1)",
                        )
                        .bind(&id)
                        .execute(&mut **tx)
                        .await;
                        assert!(dup.is_err());
                    }
                    Ok(id)
                })
            })
            .await
        }));
        // one at a time into the queue, so the batch keeps this order
        wait_queued(&gc, calls.len()).await;
    }
    release.notify_one();
    blocker.await.unwrap();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    let others: Vec<String> = (0..n)
        .filter(|&i| i != 1)
        .map(|i| format!("e{i}"))
        .collect();
    for i in (0..n).filter(|&i| i != 1) {
        assert_eq!(answers[i].as_deref().unwrap(), format!("e{i}"));
    }
    if engine == TestEngine::Postgres {
        assert!(
            matches!(answers[1], Err(ServiceError::Internal(_))),
            "{:?}",
            answers[1]
        );
        assert_eq!(entries(&db).await, others, "the others committed once");
        assert_eq!(gc.savepoint_fallbacks(), 1);
    } else {
        assert_eq!(answers[1].as_deref().unwrap(), "e1");
        let all: Vec<String> = (0..n).map(|i| format!("e{i}")).collect();
        assert_eq!(entries(&db).await, all);
        assert_eq!(gc.savepoint_fallbacks(), 0, "nothing failed on SQLite");
    }
    assert_eq!(gc.stats().retries, 0, "the others were not retried");
}

/// A lone item that ignores a database error is caught the same way
/// (PostgreSQL would otherwise turn COMMIT into a silent rollback).
async fn a_lone_item_ignoring_an_error_gets_no_false_ok(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = GroupCommitter::new(db.db.clone(), one_writer());
    let answer = gc
        .run("m", |tx: &mut Tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO entries (id, member, points) VALUES ('x', 'm', 1)")
                    .execute(&mut **tx)
                    .await?;
                let _ =
                    sqlx::query("INSERT INTO entries (id, member, points) VALUES ('x', 'm', 1)")
                        .execute(&mut **tx)
                        .await;
                Ok(())
            })
        })
        .await;
    let committed = entries(&db).await == ["x"];
    assert_eq!(
        answer.is_ok(),
        committed,
        "Ok if and only if committed: {answer:?}"
    );
    assert_eq!(committed, engine == TestEngine::Sqlite);
}

async fn a_panicking_item_gets_internal_and_the_writer_lives(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = GroupCommitter::new(db.db.clone(), one_writer());
    let answer = gc
        .run(
            "m",
            |_tx: &mut Tx| -> loyalty_common::idempotency::WorkFuture<'_, ()> {
                Box::pin(async { panic!("bug in the work") })
            },
        )
        .await;
    assert!(
        matches!(answer, Err(ServiceError::Internal(_))),
        "{answer:?}"
    );
    // the writer survived and keeps committing
    earn(&gc, "after".into(), 1, false, Arc::default())
        .await
        .unwrap();
    assert_eq!(entries(&db).await, ["after"]);
}

/// The earn of the idempotency tests, through the committer: records a row
/// and answers with a fresh value, so a replay is told apart from a second
/// execution.
async fn earn_once(
    gc: &GroupCommitter,
    idem_key: &str,
    amount: i64,
) -> Result<prost_types::Duration, ServiceError> {
    let request = prost_types::Duration {
        seconds: amount,
        nanos: 0,
    };
    let id = idem_key.to_owned();
    gc.run_idempotent(
        "m",
        "test.Earn/p1",
        idem_key,
        &request,
        move |tx: &mut Tx| {
            let id = id.clone();
            Box::pin(async move {
                sqlx::query("INSERT INTO entries (id, member, points) VALUES ($1, 'm', $2)")
                    .bind(format!("{id}-{}", rand::random::<u32>()))
                    .bind(amount)
                    .execute(&mut **tx)
                    .await?;
                if amount < 0 {
                    return Err(ServiceError::invalid("amount", "must not be negative"));
                }
                Ok(prost_types::Duration {
                    seconds: amount,
                    nanos: rand::random_range(1..1_000_000_000),
                })
            })
        },
    )
    .await
}

async fn idempotent_duplicates_in_one_batch_run_once(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = Arc::new(GroupCommitter::new(db.db.clone(), one_writer()));
    let (release, blocker) = hold_writer(&gc).await;
    let mut calls = Vec::new();
    // a refused first try, ten duplicates, and the key with other parameters
    for amount in std::iter::once(-1).chain([5; 10]).chain([6]) {
        let gc2 = gc.clone();
        calls.push(tokio::spawn(
            async move { earn_once(&gc2, "k1", amount).await },
        ));
        // one at a time into the queue, so the batch keeps this order
        wait_queued(&gc, calls.len()).await;
    }
    release.notify_one();
    blocker.await.unwrap();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    assert_eq!(gc.stats().batches, 2, "all in one batch");
    assert!(matches!(answers[0], Err(ServiceError::InvalidArgument(_))));
    let first = answers[1].as_ref().unwrap();
    for a in &answers[1..11] {
        assert_eq!(
            a.as_ref().unwrap(),
            first,
            "every duplicate got the one answer"
        );
    }
    assert!(
        matches!(answers[11], Err(ServiceError::IdempotencyKeyReused { .. })),
        "{:?}",
        answers[11]
    );
    assert_eq!(
        entries(&db).await.len(),
        1,
        "the work ran once (the refused try rolled back)"
    );
    // a replay after the commit answers the stored response
    assert_eq!(&earn_once(&gc, "k1", 5).await.unwrap(), first);
    assert_eq!(entries(&db).await.len(), 1);
    let err = earn_once(&gc, "has space", 5).await.unwrap_err();
    let ServiceError::InvalidArgument(v) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(v[0].field, "idempotency_key");
}

/// A bulk work inserting entries with one set-based statement and adding
/// them to the balance with another; refuses (writing nothing for it) an
/// input of negative points; fails as a whole when an input named
/// `whole…` runs with others; logs the size of each call.
fn bulk_earn(calls: Arc<std::sync::Mutex<Vec<usize>>>) -> BulkWork<(String, i64), String> {
    bulk_work(move |tx: &mut Tx, inputs: &[(String, i64)]| {
        let calls = calls.clone();
        Box::pin(async move {
            calls.lock().unwrap().push(inputs.len());
            if inputs.len() > 1 && inputs.iter().any(|(id, _)| id.starts_with("whole")) {
                return Err(ServiceError::precondition("cannot run together"));
            }
            let good: Vec<&(String, i64)> = inputs.iter().filter(|(_, p)| *p >= 0).collect();
            let rows = json_rows(
                engine_of(tx),
                1,
                "r",
                &[("id", JsonType::Text), ("points", JsonType::BigInt)],
            );
            let json = serde_json::Value::Array(
                good.iter()
                    .map(|(id, p)| serde_json::json!({"id": id, "points": p}))
                    .collect(),
            );
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO entries (id, member, points) SELECT r.id, 'm', r.points FROM {rows}"
            )))
            .bind(json.to_string())
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE balances SET points = points + $1 WHERE member = 'm'")
                .bind(good.iter().map(|(_, p)| p).sum::<i64>())
                .execute(&mut **tx)
                .await?;
            Ok(inputs
                .iter()
                .map(|(id, p)| {
                    if *p >= 0 {
                        Ok(id.clone())
                    } else {
                        Err(ServiceError::precondition(format!("{id} refused")))
                    }
                })
                .collect())
        })
    })
}

async fn bulk_items_run_together_and_a_refusal_stays_their_own(engine: TestEngine) {
    let db = setup(engine).await;
    let gc = Arc::new(GroupCommitter::new(db.db.clone(), one_writer()));
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let work = bulk_earn(calls.clone());
    // queues `items` behind the held writer, in order; a `None` is a plain
    // item between them
    let batch = |items: Vec<Option<(&str, i64)>>| {
        let (gc, work) = (gc.clone(), work.clone());
        let items: Vec<Option<(String, i64)>> = items
            .into_iter()
            .map(|i| i.map(|(id, p)| (id.to_owned(), p)))
            .collect();
        async move {
            let (release, blocker) = hold_writer(&gc).await;
            let mut answers = Vec::new();
            for (n, item) in items.into_iter().enumerate() {
                let (gc2, work) = (gc.clone(), work.clone());
                answers.push(tokio::spawn(async move {
                    match item {
                        Some(input) => gc2.run_bulk_on(0, &work, input).await,
                        None => {
                            gc2.run("plain", |_tx: &mut Tx| {
                                Box::pin(async { Ok("plain".into()) })
                            })
                            .await
                        }
                    }
                }));
                wait_queued(&gc, n + 1).await;
            }
            release.notify_one();
            blocker.await.unwrap();
            let mut out = Vec::new();
            for a in answers {
                out.push(a.await.unwrap().map_err(|e| e.to_string()));
            }
            out
        }
    };

    // a clean batch: one call for all five
    let answers = batch(vec![
        Some(("a1", 1)),
        Some(("a2", 2)),
        Some(("a3", 3)),
        Some(("a4", 4)),
        Some(("a5", 5)),
    ])
    .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(*calls.lock().unwrap(), vec![5]);
    assert_eq!(balance(&db.db).await, 15);

    // a refused input gets its refusal, the others commit in the same call
    calls.lock().unwrap().clear();
    let answers = batch(vec![Some(("b1", 10)), Some(("b2", -1)), Some(("b3", 20))]).await;
    assert_eq!(answers[0], Ok("b1".into()));
    assert!(answers[1].as_ref().unwrap_err().contains("b2 refused"));
    assert_eq!(answers[2], Ok("b3".into()));
    assert_eq!(*calls.lock().unwrap(), vec![3]);
    assert_eq!(balance(&db.db).await, 45);

    // a call failing as a whole: the batch runs again, each input alone
    calls.lock().unwrap().clear();
    let answers = batch(vec![Some(("w1", 1)), Some(("whole", 2)), Some(("w2", -1))]).await;
    assert_eq!(answers[0], Ok("w1".into()));
    assert_eq!(answers[1], Ok("whole".into()));
    assert!(answers[2].as_ref().unwrap_err().contains("w2 refused"));
    assert_eq!(*calls.lock().unwrap(), vec![3, 1, 1, 1]);
    assert_eq!(balance(&db.db).await, 48);

    // an item of other work splits the run; order is kept
    calls.lock().unwrap().clear();
    let answers = batch(vec![
        Some(("c1", 1)),
        Some(("c2", 1)),
        None,
        Some(("c3", 1)),
    ])
    .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(*calls.lock().unwrap(), vec![2, 1]);
    assert_eq!(
        entries(&db.db).await,
        [
            "a1", "a2", "a3", "a4", "a5", "b1", "b3", "c1", "c2", "c3", "w1", "whole"
        ]
    );
    assert_eq!(balance(&db.db).await, 51);
}

loyalty_common::test_on_both_engines!(
    bulk_items_run_together_and_a_refusal_stays_their_own,
    answers_come_after_the_commit,
    a_failing_item_rolls_back_only_itself,
    a_unique_violation_does_not_poison_the_batch,
    concurrent_items_share_few_transactions,
    a_retried_batch_applies_each_item_once,
    a_batch_that_keeps_failing_answers_unavailable,
    a_serialization_failure_retries_the_batch,
    dropping_the_committer_drains_the_queue,
    shutdown_waits_for_queued_work,
    work_that_ignores_a_database_error_is_isolated,
    work_that_ignores_a_database_error_last_in_its_batch_is_isolated,
    a_clean_batch_runs_each_item_once_without_savepoints,
    a_lone_item_ignoring_an_error_gets_no_false_ok,
    a_panicking_item_gets_internal_and_the_writer_lives,
    idempotent_duplicates_in_one_batch_run_once,
);
