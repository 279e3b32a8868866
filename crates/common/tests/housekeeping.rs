//! The daily housekeeping job deletes exactly what has outlived its
//! retention, on both engines.

use loyalty_common::db::now_micros;
use loyalty_common::housekeeping::Housekeeping;
use loyalty_common::jobs::JobRunner;
use loyalty_common::testing::TestEngine;

const DAY: i64 = 86_400_000_000;

async fn deletes_only_what_outlived_its_retention(engine: TestEngine) {
    let db = engine.database(&[]).await;
    let now = now_micros();
    let mut tx = db.begin().await.unwrap();
    // outbox: published 8 days ago (goes), published 1 day ago (stays),
    // never published although old (stays: not yet delivered)
    for (id, created, published) in [
        ("old-published", now - 9 * DAY, Some(now - 8 * DAY)),
        ("recent-published", now - DAY, Some(now - DAY)),
        ("old-unpublished", now - 20 * DAY, None),
    ] {
        sqlx::query("INSERT INTO outbox (event_id, event_type, ordering_key, payload, created_at, published_at) VALUES ($1, 't', 'k', $2, $3, $4)")
            .bind(id)
            .bind(vec![0u8])
            .bind(created)
            .bind(published)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    for (id, at) in [("old", now - 15 * DAY), ("new", now - DAY)] {
        sqlx::query("INSERT INTO inbox (consumer, event_id, handled_at) VALUES ('c', $1, $2)")
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO idempotency_keys (scope, idem_key, request_hash, response, created_at) VALUES ('s', $1, 'h', $2, $3)")
            .bind(id)
            .bind(vec![1u8])
            .bind(at - 20 * DAY)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let report = JobRunner::new(db.db.clone())
        .trigger(&Housekeeping::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.processed, 3);

    let outbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY event_id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(outbox, ["old-unpublished", "recent-published"]);
    let inbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM inbox")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(inbox, ["new"]);
    let keys: Vec<String> = sqlx::query_scalar("SELECT idem_key FROM idempotency_keys")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(keys, ["new"]);
}

loyalty_common::test_on_both_engines!(deletes_only_what_outlived_its_retention);
