//! The tier evaluation job over many chunks: every due member is reviewed
//! once, the landing is at most one level, and the job runs through the
//! RPC on both engines. The population is bulk-loaded with SQL.

// amounts are written as <yuan>_<fen> minor units (1_000_00 = 1000.00)
#![allow(clippy::inconsistent_digit_grouping)]

#[path = "../benches/support/bulk.rs"]
mod bulk;
mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::{Env, program};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::events::event_envelope::Payload;

test_on_both_engines!(evaluation_reviews_every_due_member_across_chunks);

async fn evaluation_reviews_every_due_member_across_chunks(engine: TestEngine) {
    let env = Env::start(engine).await;
    let enrolled: DateTime<Utc> = env.at("2025-01-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let due: DateTime<Utc> = "2026-01-01T00:00:00Z".parse().unwrap();
    let bought = due - TimeDelta::days(30);
    let n = 1_201; // three chunks of 500
    let db = &env.ts.rt("membership").db;
    bulk::load(db, "p1", n, enrolled, due, bought)
        .await
        .unwrap();
    // and some members not due yet
    sqlx::query("UPDATE members SET next_evaluation_at = $1 WHERE member_id > $2")
        .bind((due + TimeDelta::days(10)).timestamp_micros())
        .bind(bulk::member_id(1_150))
        .execute(db.pool())
        .await
        .unwrap();

    env.at("2026-01-02T00:00:00Z");
    let run = env.evaluate("p1").await;
    assert!(run.ran);
    assert_eq!(run.evaluated, 1_150);
    // expected per member: spend (i % 7) * 2000.00 against tier i % 4
    let thresholds = [0, 1_000_00, 5_000_00, 10_000_00];
    let (mut downgrades, mut upgrades) = (0, 0);
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT member_id, tier_code, next_evaluation_at FROM members ORDER BY member_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let codes = ["BASE", "SILVER", "GOLD", "PLATINUM"];
    for (i, (id, tier, next)) in (1..=n).zip(rows) {
        assert_eq!(id, bulk::member_id(i));
        let level = usize::try_from(i % 4).unwrap();
        let spend = (i % 7) * 2_000_00;
        let reached = thresholds.iter().rposition(|t| spend >= *t).unwrap();
        let expected = if i > 1_150 || reached == level {
            level
        } else if reached > level {
            upgrades += 1;
            reached // activity the immediate path never saw (bulk-loaded)
        } else {
            downgrades += 1;
            level - 1 // never more than one level down
        };
        assert_eq!(tier, codes[expected], "member {i} spend {spend}");
        if i <= 1_150 {
            assert!(
                next > due.timestamp_micros(),
                "member {i} was not rescheduled"
            );
        }
    }
    assert!(downgrades > 100 && upgrades > 100);
    let outbox = env.ts.outbox("membership").await;
    let count = |reason: &str| {
        outbox
            .iter()
            .filter(|e| matches!(&e.payload, Some(Payload::TierChanged(t)) if t.reason == reason))
            .count()
    };
    assert_eq!(count("evaluation_downgrade"), downgrades);
    assert_eq!(count("evaluation_upgrade"), upgrades);
    // a second run finds nobody due
    assert_eq!(env.evaluate("p1").await.evaluated, 0);
    env.ts.stop().await;
}
