//! Group commit on both engines: answers only after the commit, one failing
//! item rolls back alone, many concurrent items share few transactions, and
//! a retried batch applies each item exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use loyalty_common::ServiceError;
use loyalty_common::db::{Db, Engine, Tx, is_unique_violation};
use loyalty_common::group_commit::{GroupCommitSettings, GroupCommitter, MAX_ATTEMPTS};
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
    let gc = Arc::new(GroupCommitter::new(db.db.clone(), one_writer()));
    let (release, blocker) = hold_writer(&gc).await;
    let n = items.len();
    let mut calls = Vec::new();
    let mut counters = Vec::new();
    for (id, points, refuse) in items {
        let runs = Arc::new(AtomicU32::new(0));
        counters.push(runs.clone());
        let gc = gc.clone();
        calls.push(tokio::spawn(async move {
            earn(&gc, id, points, refuse, runs).await
        }));
    }
    wait_queued(&gc, n).await;
    before_release(&gc);
    release.notify_one();
    blocker.await.unwrap();
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap());
    }
    (answers, gc.stats().batches, counters)
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
    let (answers, batches, _) = one_batch(&db, items, |_| {}).await;
    assert_eq!(batches, 2, "the blocker, then the ten items together");
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
    // the two callers race to the queue: either duplicate may come first
    let dup =
        |a: &Result<String, ServiceError>| matches!(a, Err(ServiceError::AlreadyExists { .. }));
    assert!(dup(&answers[1]) != dup(&answers[3]), "{answers:?}");
    for i in [0, 2, 4] {
        assert!(answers[i].is_ok(), "{:?}", answers[i]);
    }
    assert_eq!(entries(&db).await, ["a", "b", "c", "dup"]);
    let winner = if dup(&answers[3]) { 10 } else { 1000 };
    assert_eq!(
        balance(&db).await,
        10_101 + winner,
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

async fn a_retried_batch_applies_each_item_once(engine: TestEngine) {
    let db = setup(engine).await;
    let items = (0..8).map(|i| (format!("e{i}"), 1, i == 5)).collect();
    let (answers, batches, runs) = one_batch(&db, items, |gc| {
        gc.fail_next_commits(1);
    })
    .await;
    assert_eq!(batches, 2);
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.is_ok(), i != 5, "item {i}: {a:?}");
    }
    for r in &runs {
        assert_eq!(
            r.load(Ordering::SeqCst),
            2,
            "every item ran again in the retry"
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

loyalty_common::test_on_both_engines!(
    answers_come_after_the_commit,
    a_failing_item_rolls_back_only_itself,
    a_unique_violation_does_not_poison_the_batch,
    concurrent_items_share_few_transactions,
    a_retried_batch_applies_each_item_once,
    a_batch_that_keeps_failing_answers_unavailable,
    a_serialization_failure_retries_the_batch,
    dropping_the_committer_drains_the_queue,
    shutdown_waits_for_queued_work,
);
