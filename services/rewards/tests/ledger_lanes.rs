//! Lanes of a program's ledger over real gRPC on both engines: members are
//! spread over several hash chains, tampering in one lane is reported with
//! that lane and its first bad entry, and transfers between members of
//! different lanes, racing each other and purchases, keep every balance
//! equal to its ledger and never negative.

#[path = "ledger_support/mod.rs"]
mod ledger_support;

use std::collections::{BTreeMap, HashSet};

use ledger_support::{PROGRAM, Rewards, line, policy, purchase};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::loyalty::rewards::v1 as pb;
use tonic::Code;

test_on_both_engines!(
    tampering_in_one_lane_is_reported_with_its_lane_and_first_bad_entry,
    cross_lane_transfers_racing_each_other_keep_every_balance_equal_to_its_ledger,
);

/// Each member's lane, as stored with its entries.
async fn lanes_of(r: &Rewards) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT DISTINCT member_id, lane FROM ledger_entries WHERE program_id = $1")
            .bind(PROGRAM)
            .fetch_all(r.t.rt("rewards").db.pool())
            .await
            .unwrap();
    let mut lanes = BTreeMap::new();
    for (member, lane) in rows {
        let before = lanes.insert(member.clone(), lane);
        assert!(
            before.is_none_or(|b| b == lane),
            "member {member} has entries in two lanes"
        );
    }
    lanes
}

async fn tampering_in_one_lane_is_reported_with_its_lane_and_first_bad_entry(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    for i in 0..16 {
        r.adjust(&format!("m{i}"), 100, &format!("a{i}")).await;
    }
    r.adjust("m3", 50, "b3").await;
    r.adjust("m3", 25, "c3").await;
    r.assert_ledger_ok().await;
    assert_eq!(r.verify().await.entries_checked, 18, "every lane is walked");
    let lanes = lanes_of(&r).await;
    let distinct: HashSet<i64> = lanes.values().copied().collect();
    assert!(distinct.len() > 1, "members spread over lanes: {lanes:?}");
    let db = r.t.rt("rewards").db.pool().clone();
    // every lane is a chain of its own, numbered from 1
    let firsts: i64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS BIGINT) FROM ledger_entries WHERE program_id = $1 AND seq = 1",
    )
    .bind(PROGRAM)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(firsts, distinct.len() as i64);

    // someone edits m3's second entry in place, and its balance to match
    let (entry_id, lane, seq): (String, i64, i64) = sqlx::query_as(
        "SELECT entry_id, lane, seq FROM ledger_entries WHERE member_id = 'm3' ORDER BY seq LIMIT 1 OFFSET 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE ledger_entries SET points = 5000, available_delta = 5000 WHERE entry_id = $1",
    )
    .bind(&entry_id)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE balances SET available = available + 4950 WHERE member_id = 'm3'")
        .execute(&db)
        .await
        .unwrap();
    let v = r.verify().await;
    assert!(!v.ok);
    assert_eq!(v.first_bad_entry_id, entry_id);
    assert_eq!(v.first_bad_lane, lane);
    assert_eq!(v.first_bad_sequence, seq);
    assert!(v.problem.contains("modified"), "{}", v.problem);

    // undone, the ledger checks out again
    sqlx::query("UPDATE ledger_entries SET points = 50, available_delta = 50 WHERE entry_id = $1")
        .bind(&entry_id)
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("UPDATE balances SET available = available - 4950 WHERE member_id = 'm3'")
        .execute(&db)
        .await
        .unwrap();
    r.assert_ledger_ok().await;

    // the last entry of another lane removed: caught by that lane's head
    let other = lanes
        .iter()
        .find(|(_, l)| **l != lane)
        .map(|(m, l)| (m.clone(), *l))
        .unwrap();
    let last: String = sqlx::query_scalar(
        "SELECT entry_id FROM ledger_entries WHERE program_id = $1 AND lane = $2 ORDER BY seq DESC LIMIT 1",
    )
    .bind(PROGRAM)
    .bind(other.1)
    .fetch_one(&db)
    .await
    .unwrap();
    sqlx::query("DELETE FROM ledger_entries WHERE entry_id = $1")
        .bind(&last)
        .execute(&db)
        .await
        .unwrap();
    let v = r.verify().await;
    assert!(!v.ok);
    assert_eq!(v.first_bad_lane, other.1);
    assert!(v.problem.contains("removed"), "{v:?}");
    r.t.stop().await;
}

async fn cross_lane_transfers_racing_each_other_keep_every_balance_equal_to_its_ledger(
    engine: TestEngine,
) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let members: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    for m in &members {
        r.adjust(m, 500, &format!("seed-{m}")).await;
    }
    let lanes = lanes_of(&r).await;
    // pairs in both directions, so transfers A→B and B→A race
    let mut work = Vec::new();
    for round in 0..6usize {
        for (i, from) in members.iter().enumerate() {
            let to = &members[(i + 1 + round % 3) % members.len()];
            let points = 40 + ((i * 37 + round * 53) % 200) as i64;
            let transfer = r.as_member(
                from,
                pb::TransferRequest {
                    program_id: PROGRAM.into(),
                    member_id: from.clone(),
                    to_member_id: to.clone(),
                    points,
                    idempotency_key: format!("t-{round}-{i}"),
                },
            );
            let buy = r.as_backend(pb::RecordPurchaseRequest {
                program_id: PROGRAM.into(),
                member_id: to.clone(),
                purchase: Some(purchase(
                    &format!("o-{round}-{i}"),
                    vec![line("a", "food", 1_000)],
                )),
            });
            work.push((from.clone(), to.clone(), transfer, buy));
        }
    }
    let mut tasks = Vec::new();
    for (from, to, transfer, buy) in work {
        let mut c = r.own_client().await;
        let mut c2 = c.clone();
        tasks.push(tokio::spawn(async move {
            let (t, b) = tokio::join!(c.transfer(transfer), c2.record_purchase(buy));
            (
                from,
                to,
                t.map(tonic::Response::into_inner),
                b.map(tonic::Response::into_inner),
            )
        }));
    }
    let mut moved_across = 0;
    let mut earned = 0;
    for task in tasks {
        let (from, to, t, b) = task.await.unwrap();
        earned += b.expect("purchases all go through").points;
        match t {
            Ok(_) => {
                if lanes.get(&from) != lanes.get(&to) {
                    moved_across += 1;
                }
            }
            Err(e) => assert_eq!(
                e.code(),
                Code::FailedPrecondition,
                "a transfer fails only for want of points: {e:?}"
            ),
        }
    }
    assert!(moved_across > 0, "some transfers crossed lanes: {lanes:?}");
    let mut total = 0;
    for m in &members {
        let b = r.balance(m).await;
        assert!(b.available >= 0, "{m} went negative: {b:?}");
        total += b.available;
    }
    assert_eq!(
        total,
        500 * members.len() as i64 + earned,
        "transfers move points, never make or lose them"
    );
    r.assert_ledger_ok().await;
    r.t.stop().await;
}
