//! Idempotency keys on both engines: replays return the original answer
//! and do the work once, even when 20 duplicates race.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use loyalty_common::ServiceError;
use loyalty_common::db::{Db, Tx};
use loyalty_common::idempotency::run_idempotent;
use loyalty_common::testing::TestEngine;
use prost_types::Duration as Req;

async fn setup(engine: TestEngine) -> loyalty_common::testing::TestDb {
    let db = engine.database(&[]).await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("CREATE TABLE work (key TEXT NOT NULL, amount BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    db
}

/// The work: records a row and answers with a fresh value, so a replay is
/// told apart from a second execution.
async fn earn(db: &Db, key: &str, amount: i64) -> Result<Req, ServiceError> {
    let request = Req {
        seconds: amount,
        nanos: 0,
    };
    let key_owned = key.to_owned();
    run_idempotent(db, "test.Earn/p1", key, &request, move |tx: &mut Tx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO work (key, amount) VALUES ($1, $2)")
                .bind(&key_owned)
                .bind(amount)
                .execute(&mut **tx)
                .await?;
            // keeps the transaction open, so that racing duplicates meet an
            // uncommitted claim (PostgreSQL: they block on the unique index)
            tokio::time::sleep(Duration::from_millis(20)).await;
            if amount < 0 {
                return Err(ServiceError::invalid("amount", "must not be negative"));
            }
            let nanos = rand::random_range(1..1_000_000_000);
            Ok(Req {
                seconds: amount,
                nanos,
            })
        })
    })
    .await
}

async fn rows(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM work")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn replay_returns_the_original_answer(engine: TestEngine) {
    let db = setup(engine).await;
    let first = earn(&db, "k1", 100).await.unwrap();
    let again = earn(&db, "k1", 100).await.unwrap();
    assert_eq!(first, again, "the stored answer, not a new one");
    assert_eq!(rows(&db).await, 1, "the work ran once");
    earn(&db, "k2", 100).await.unwrap();
    assert_eq!(rows(&db).await, 2, "another key is another operation");
}

async fn same_key_other_parameters_is_refused(engine: TestEngine) {
    let db = setup(engine).await;
    earn(&db, "k1", 100).await.unwrap();
    let err = earn(&db, "k1", 250).await.unwrap_err();
    assert!(
        matches!(err, ServiceError::IdempotencyKeyReused { .. }),
        "{err:?}"
    );
    let status: tonic::Status = err.into();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(rows(&db).await, 1);
}

async fn failed_work_leaves_nothing_and_the_key_free(engine: TestEngine) {
    let db = setup(engine).await;
    let err = earn(&db, "k1", -5).await.unwrap_err();
    assert!(matches!(err, ServiceError::InvalidArgument(_)));
    assert_eq!(
        rows(&db).await,
        0,
        "the work's row rolled back with the claim"
    );
    let count: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM idempotency_keys")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 0);
    // fixed parameters under a fresh try of the same key (the claim is gone)
    earn(&db, "k1", 5).await.unwrap();
    assert_eq!(rows(&db).await, 1);
}

async fn concurrent_duplicates_do_the_work_once(engine: TestEngine) {
    let db = Arc::new(setup(engine).await);
    let mut calls = Vec::new();
    for _ in 0..20 {
        let db = db.clone();
        calls.push(tokio::spawn(async move { earn(&db, "race", 42).await }));
    }
    let mut answers = Vec::new();
    for c in calls {
        answers.push(c.await.unwrap().unwrap());
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every caller got the one answer"
    );
    assert_eq!(rows(&db).await, 1, "the work ran exactly once");
}

async fn invalid_keys_are_refused_naming_the_field(engine: TestEngine) {
    let db = setup(engine).await;
    for bad in ["", "with space", &"k".repeat(129)] {
        let err = earn(&db, bad, 1).await.unwrap_err();
        let ServiceError::InvalidArgument(v) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(v[0].field, "idempotency_key");
    }
    assert_eq!(rows(&db).await, 0);
}

/// A duplicate waiting on a claim whose work then fails takes the key over
/// and does the work itself (PostgreSQL: the blocked insert succeeds once
/// the first transaction rolls back).
async fn a_duplicate_of_a_failed_call_does_the_work(engine: TestEngine) {
    let db = Arc::new(setup(engine).await);
    let fail_first = Arc::new(AtomicBool::new(true));
    let request = Req {
        seconds: 7,
        nanos: 0,
    };
    let mut calls = Vec::new();
    for _ in 0..2 {
        let (db, fail_first) = (db.clone(), fail_first.clone());
        calls.push(tokio::spawn(async move {
            run_idempotent(&db, "test.Earn/p1", "k", &request, move |tx: &mut Tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO work (key, amount) VALUES ('k', 7)")
                        .execute(&mut **tx)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if fail_first.swap(false, Ordering::SeqCst) {
                        return Err(ServiceError::Unavailable("injected".into()));
                    }
                    Ok(Req {
                        seconds: 7,
                        nanos: 1,
                    })
                })
            })
            .await
        }));
    }
    let mut ok = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(resp) => {
                assert_eq!(resp.nanos, 1);
                ok += 1;
            }
            Err(e) => assert!(matches!(e, ServiceError::Unavailable(_)), "{e:?}"),
        }
    }
    assert_eq!(ok, 1, "one failed, the other did the work");
    assert_eq!(rows(&db).await, 1);
}

loyalty_common::test_on_both_engines!(
    invalid_keys_are_refused_naming_the_field,
    a_duplicate_of_a_failed_call_does_the_work,
    replay_returns_the_original_answer,
    same_key_other_parameters_is_refused,
    failed_work_leaves_nothing_and_the_key_free,
    concurrent_duplicates_do_the_work_once,
);
