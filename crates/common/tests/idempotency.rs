//! Idempotency keys on both engines: replays return the original answer
//! and do the work once, even when 20 duplicates race.

use std::sync::Arc;

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

loyalty_common::test_on_both_engines!(
    replay_returns_the_original_answer,
    same_key_other_parameters_is_refused,
    failed_work_leaves_nothing_and_the_key_free,
    concurrent_duplicates_do_the_work_once,
);
