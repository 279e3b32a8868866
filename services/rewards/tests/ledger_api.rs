//! The points ledger over real gRPC on both engines: idempotent purchases,
//! exact refunds under both clawback policies, FIFO lots, redemptions that
//! never double-spend under concurrency, transfers, adjustments, tampering
//! detected by VerifyLedger, purchases arriving as events.

#[path = "ledger_support/mod.rs"]
mod ledger_support;

use std::collections::HashSet;

use ledger_support::{PROGRAM, Rewards, bad_field, cny, line, policy, purchase, reason};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{self as ev, EventEnvelope};
use loyalty_proto::loyalty::rewards::v1 as pb;
use tonic::Code;

test_on_both_engines!(
    purchases_are_idempotent_on_order_id,
    concurrent_redemptions_of_the_whole_balance_let_exactly_one_through,
    a_storm_of_mixed_operations_keeps_every_balance_equal_to_its_ledger,
    debits_use_the_soonest_expiring_lots_first,
    refunds_reverse_what_the_order_earned_and_write_off_what_was_spent,
    refunds_under_the_negative_balance_policy_leave_a_debt_that_later_earnings_pay,
    refunds_use_the_stored_earnings_not_todays_rules,
    tampering_with_stored_history_is_reported_with_the_first_bad_entry,
    transfers_move_points_with_their_expiry_and_members_only_touch_their_own,
    purchases_and_refunds_from_other_producers_are_applied_once,
);

async fn purchases_are_idempotent_on_order_id(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let order = purchase(
        "o-1",
        vec![line("a", "food", 12_345), line("b", "toys", 5_000)],
    );
    let first = r.buy("m1", order.clone()).await;
    assert_eq!(first.points, 123 + 50);
    assert_eq!(first.lines.len(), 2);
    assert_eq!(first.applications[0].rule_id, "base");
    // a client retry comes later; an order sent without its time (the
    // service's now) is still the same order
    r.t.clock().advance(chrono::Duration::seconds(90));
    let replay = r.buy("m1", order.clone()).await;
    assert_eq!(replay, first, "a replay answers the original result");
    assert_eq!(r.balance("m1").await.available, 173);
    assert_eq!(r.entries("m1").await.len(), 1, "the replay wrote nothing");
    // the same order id with other parameters is refused
    let mut other = order;
    other.lines[0].amount = cny(99_999);
    other.amount = cny(99_999 + 5_000);
    let err = r
        .client()
        .record_purchase(r.as_backend(pb::RecordPurchaseRequest {
            program_id: PROGRAM.into(),
            member_id: "m1".into(),
            purchase: Some(other),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    // a purchase in another currency is refused naming the field
    let mut usd = purchase("o-2", vec![]);
    usd.amount = Some(loyalty_proto::common::Money {
        minor_units: 100,
        currency: "USD".into(),
    });
    let err = r
        .client()
        .record_purchase(r.as_backend(pb::RecordPurchaseRequest {
            program_id: PROGRAM.into(),
            member_id: "m1".into(),
            purchase: Some(usd),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&err), "purchase.amount.currency");
    // members cannot record purchases
    let err = r
        .client()
        .record_purchase(r.as_member(
            "m1",
            pb::RecordPurchaseRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                purchase: Some(purchase("o-3", vec![line("a", "food", 100)])),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    r.t.settle().await;
    let out = r.t.outbox("rewards").await;
    let completed = out
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::PurchaseCompleted(_))))
        .count();
    let earned = out
        .iter()
        .filter(|e| matches!(e.payload, Some(Payload::PointsEarned(_))))
        .count();
    assert_eq!(
        (completed, earned),
        (1, 1),
        "one purchase, one earning announced"
    );
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn concurrent_redemptions_of_the_whole_balance_let_exactly_one_through(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.adjust("m1", 100, "seed").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(r.own_client().await);
    }
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = clients[i % clients.len()].clone();
        let req = r.as_member(
            "m1",
            pb::RedeemRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                points: 100,
                reference: format!("r{i}"),
                idempotency_key: format!("k{i}"),
            },
        );
        tasks.push(tokio::spawn(async move { c.redeem(req).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
                assert_eq!(reason(&e), "INSUFFICIENT_BALANCE");
            }
        }
    }
    assert_eq!(
        ok, 1,
        "exactly one redemption of the whole balance succeeds"
    );
    assert_eq!(r.balance("m1").await.available, 0);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn a_storm_of_mixed_operations_keeps_every_balance_equal_to_its_ledger(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let members = ["m1", "m2", "m3", "m4"];
    for m in members {
        r.buy(
            m,
            purchase(&format!("seed-{m}"), vec![line("a", "food", 50_000)]),
        )
        .await;
    }
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(r.own_client().await);
    }
    let mut tasks = Vec::new();
    for i in 0..160usize {
        let mut c = clients[i % clients.len()].clone();
        let m = members[i % 4];
        let other = members[(i + 1) % 4];
        let op = i % 4;
        let task = match op {
            0 => {
                let q = r.as_backend(pb::RecordPurchaseRequest {
                    program_id: PROGRAM.into(),
                    member_id: m.into(),
                    purchase: Some(purchase(
                        &format!("o{i}"),
                        vec![
                            line("a", "food", 3_000 + i as i64),
                            line("b", "toys", 1_000),
                        ],
                    )),
                });
                tokio::spawn(async move { c.record_purchase(q).await.map(|_| ()) })
            }
            1 => {
                let q = r.as_member(
                    m,
                    pb::RedeemRequest {
                        program_id: PROGRAM.into(),
                        member_id: m.into(),
                        points: 37,
                        reference: String::new(),
                        idempotency_key: format!("rd{i}"),
                    },
                );
                tokio::spawn(async move { c.redeem(q).await.map(|_| ()) })
            }
            2 => {
                // refunds the purchase of 2 iterations before (it may not exist yet)
                let q = r.as_backend(pb::RecordRefundRequest {
                    program_id: PROGRAM.into(),
                    order_id: format!("o{}", i.saturating_sub(2)),
                    refund_id: format!("rf{i}"),
                    lines: vec![pb::RefundLine {
                        line_id: "a".into(),
                        amount: None,
                    }],
                    amount: None,
                    refunded_at: None,
                });
                tokio::spawn(async move { c.record_refund(q).await.map(|_| ()) })
            }
            _ => {
                let q = r.as_member(
                    m,
                    pb::TransferRequest {
                        program_id: PROGRAM.into(),
                        member_id: m.into(),
                        to_member_id: other.into(),
                        points: 23,
                        idempotency_key: format!("tr{i}"),
                    },
                );
                tokio::spawn(async move { c.transfer(q).await.map(|_| ()) })
            }
        };
        tasks.push(task);
    }
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            assert!(
                matches!(e.code(), Code::FailedPrecondition | Code::NotFound),
                "unexpected failure {e:?}"
            );
        }
    }
    for m in members {
        let b = r.balance(m).await;
        assert!(b.available >= 0 && b.pending >= 0, "{m}: {b:?}");
    }
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn debits_use_the_soonest_expiring_lots_first(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    // a never-expiring lot first: it must be used last
    r.adjust("m1", 40, "adj").await;
    r.set_policy(pb::ProgramPolicy {
        expiry_mode: pb::ExpiryMode::MonthsAfterEarning as i32,
        expiry_months: 12,
        ..policy()
    })
    .await;
    r.buy("m1", purchase("o-late", vec![line("a", "food", 10_000)]))
        .await; // 100, expires in 12 months
    r.t.clock().advance(chrono::Duration::days(40));
    r.buy("m1", purchase("o-later", vec![line("a", "food", 10_000)]))
        .await; // expires 40 days later
    let res = r.redeem("m1", 150, "k1").await.unwrap();
    let used: Vec<i64> = res.lots.iter().map(|l| l.points).collect();
    assert_eq!(used, [100, 50], "soonest-expiring lot first, then the next");
    let res = r.redeem("m1", 80, "k2").await.unwrap();
    let used: Vec<i64> = res.lots.iter().map(|l| l.points).collect();
    assert_eq!(used, [50, 30], "the lot that never expires goes last");
    assert_eq!(res.balance.unwrap().available, 10);
    // the ledger lists which lots each entry used
    let entries = r.entries("m1").await;
    assert_eq!(entries[0].kind, pb::EntryKind::Redeem as i32);
    assert_eq!(entries[0].lots.len(), 2);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

fn refund_lines(order: &str, refund: &str, lines: &[&str]) -> pb::RecordRefundRequest {
    pb::RecordRefundRequest {
        program_id: PROGRAM.into(),
        order_id: order.into(),
        refund_id: refund.into(),
        lines: lines
            .iter()
            .map(|l| pb::RefundLine {
                line_id: (*l).into(),
                amount: None,
            })
            .collect(),
        amount: None,
        refunded_at: None,
    }
}

async fn refunds_reverse_what_the_order_earned_and_write_off_what_was_spent(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let bought = r
        .buy(
            "m1",
            purchase(
                "o-1",
                vec![line("a", "food", 60_000), line("b", "food", 40_000)],
            ),
        )
        .await;
    assert_eq!(bought.points, 1_000);
    r.redeem("m1", 800, "spend").await.unwrap();
    // partial refund by amount: a quarter of line a (150 of its 600 points)
    let quarter = r
        .refund(pb::RecordRefundRequest {
            lines: vec![pb::RefundLine {
                line_id: "a".into(),
                amount: cny(15_000),
            }],
            ..refund_lines("o-1", "rf-1", &[])
        })
        .await
        .unwrap();
    assert_eq!(quarter.points_reversed, 150);
    assert_eq!(quarter.points_written_off, 0);
    assert_eq!(quarter.balance.unwrap().available, 50);
    // the rest of line a: 450 more, only 50 available: 400 written off
    let rest = r.refund(refund_lines("o-1", "rf-2", &["a"])).await.unwrap();
    assert_eq!(rest.points_reversed, 450);
    assert_eq!(rest.points_written_off, 400);
    let b = rest.balance.unwrap();
    assert_eq!((b.available, b.lifetime_earned), (0, 400));
    // replaying a refund changes nothing; refunding beyond the line is refused
    assert_eq!(
        r.refund(refund_lines("o-1", "rf-2", &["a"])).await.unwrap(),
        rest
    );
    let err = r
        .refund(refund_lines("o-1", "rf-3", &["zz"]))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&err), "lines[0].line_id");
    let err = r
        .refund(pb::RecordRefundRequest {
            amount: cny(40_001),
            ..refund_lines("o-1", "rf-4", &[])
        })
        .await
        .unwrap_err();
    assert_eq!(bad_field(&err), "amount");
    let err = r
        .refund(refund_lines("nope", "rf-5", &["a"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn refunds_under_the_negative_balance_policy_leave_a_debt_that_later_earnings_pay(
    engine: TestEngine,
) {
    let r = Rewards::start(engine).await;
    r.set_policy(pb::ProgramPolicy {
        clawback_policy: pb::ClawbackPolicy::NegativeBalance as i32,
        ..policy()
    })
    .await;
    r.buy("m1", purchase("o-1", vec![line("a", "food", 50_000)]))
        .await;
    r.redeem("m1", 450, "spend").await.unwrap();
    let res = r.refund(refund_lines("o-1", "rf-1", &["a"])).await.unwrap();
    assert_eq!((res.points_reversed, res.points_written_off), (500, 0));
    assert_eq!(res.balance.unwrap().available, -450);
    r.assert_ledger_ok().await;
    // a new purchase of 500 pays the debt first
    r.buy("m1", purchase("o-2", vec![line("a", "food", 50_000)]))
        .await;
    assert_eq!(r.balance("m1").await.available, 50);
    r.redeem("m1", 50, "spend-2").await.unwrap();
    let err = r.redeem("m1", 1, "spend-3").await.unwrap_err();
    assert_eq!(reason(&err), "INSUFFICIENT_BALANCE");
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn refunds_use_the_stored_earnings_not_todays_rules(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let rule = r
        .client()
        .create_earning_rule(r.as_staff(pb::CreateEarningRuleRequest {
            rule: Some(pb::EarningRule {
                program_id: PROGRAM.into(),
                name: "triple coffee".into(),
                enabled: true,
                kind: Some(pb::earning_rule::Kind::Purchase(pb::PurchaseRule {
                    condition: Some(pb::PurchaseCondition {
                        categories: vec!["coffee".into()],
                        ..Default::default()
                    }),
                    reward: Some(pb::purchase_rule::Reward::ExtraMultiplierBp(20_000)),
                })),
                ..Default::default()
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    let bought = r
        .buy(
            "m1",
            purchase(
                "o-1",
                vec![line("c", "coffee", 10_000), line("f", "food", 10_000)],
            ),
        )
        .await;
    assert_eq!(bought.points, 300 + 100);
    assert!(
        bought
            .applications
            .iter()
            .any(|a| a.rule_id == rule.rule_id && a.points == 200 && a.rule_version == 1)
    );
    // the rule is retired; the refund must still take back what was earned
    r.client()
        .delete_earning_rule(r.as_staff(pb::DeleteEarningRuleRequest {
            program_id: PROGRAM.into(),
            rule_id: rule.rule_id.clone(),
        }))
        .await
        .unwrap();
    let res = r.refund(refund_lines("o-1", "rf-1", &["c"])).await.unwrap();
    assert_eq!(res.points_reversed, 300);
    assert_eq!(r.balance("m1").await.available, 100);
    let entries = r.entries("m1").await;
    let earn = entries
        .iter()
        .find(|e| e.kind == pb::EntryKind::Earn as i32)
        .unwrap();
    assert_eq!(
        earn.rules,
        [format!("{}@1", rule.rule_id)],
        "the entry records its rule and version"
    );
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn tampering_with_stored_history_is_reported_with_the_first_bad_entry(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.adjust("m1", 100, "a").await;
    let second = r.adjust("m1", 200, "b").await;
    r.adjust("m1", 300, "c").await;
    r.assert_ledger_ok().await;
    let v = r.verify().await;
    assert_eq!(v.entries_checked, 3);
    // someone edits an amount in place, and the balance to match
    let db = r.t.rt("rewards").db.pool().clone();
    sqlx::query(
        "UPDATE ledger_entries SET points = 2000, available_delta = 2000 WHERE entry_id = $1",
    )
    .bind(&second.entry_id)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query("UPDATE balances SET available = available + 1800")
        .execute(&db)
        .await
        .unwrap();
    let v = r.verify().await;
    assert!(!v.ok);
    assert_eq!(v.first_bad_entry_id, second.entry_id);
    assert_eq!(v.first_bad_sequence, 2);
    assert!(v.problem.contains("modified"), "{}", v.problem);
    r.t.stop().await;

    // a balance changed without an entry is reported by member
    let r = Rewards::start(engine).await;
    r.adjust("m1", 100, "a").await;
    sqlx::query("UPDATE balances SET available = 1000")
        .execute(r.t.rt("rewards").db.pool())
        .await
        .unwrap();
    let v = r.verify().await;
    assert!(!v.ok);
    assert!(v.first_bad_entry_id.is_empty());
    assert_eq!(v.mismatches[0].member_id, "m1");
    // a removed last entry is caught by the chain head
    sqlx::query("UPDATE balances SET available = 100")
        .execute(r.t.rt("rewards").db.pool())
        .await
        .unwrap();
    r.adjust("m1", 5, "b").await;
    sqlx::query("DELETE FROM ledger_entries WHERE seq = 2")
        .execute(r.t.rt("rewards").db.pool())
        .await
        .unwrap();
    let v = r.verify().await;
    assert!(v.problem.contains("removed"), "{v:?}");
    r.t.stop().await;
}

async fn transfers_move_points_with_their_expiry_and_members_only_touch_their_own(
    engine: TestEngine,
) {
    let r = Rewards::start(engine).await;
    r.set_policy(pb::ProgramPolicy {
        expiry_mode: pb::ExpiryMode::EndOfYear as i32,
        expiry_months: 0,
        ..policy()
    })
    .await;
    r.buy("m1", purchase("o-1", vec![line("a", "food", 10_000)]))
        .await;
    let sender_expiry = r.balance("m1").await.next_expiry_at;
    let res = r
        .client()
        .transfer(r.as_member(
            "m1",
            pb::TransferRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                to_member_id: "m2".into(),
                points: 60,
                idempotency_key: "t1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(res.balance.unwrap().available, 40);
    let m2 = r.balance("m2").await;
    assert_eq!(m2.available, 60);
    assert_eq!(
        m2.next_expiry_at, sender_expiry,
        "transferred points keep their expiry"
    );
    // m2 may not spend m1's points, nor see them
    let err = r
        .client()
        .redeem(r.as_member(
            "m2",
            pb::RedeemRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
                points: 1,
                reference: String::new(),
                idempotency_key: "x".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = r
        .client()
        .get_balance(r.as_member(
            "m2",
            pb::GetBalanceRequest {
                program_id: PROGRAM.into(),
                member_id: "m1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // reads name the member: no empty or oversized id reads as a zero balance
    for member_id in [String::new(), "m".repeat(129)] {
        let err = r
            .client()
            .get_balance(r.as_staff(pb::GetBalanceRequest {
                program_id: PROGRAM.into(),
                member_id,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(bad_field(&err), "member_id");
    }
    // adjustments need a reason and a staff role
    let err = r
        .client()
        .adjust(r.as_staff(pb::AdjustRequest {
            program_id: PROGRAM.into(),
            member_id: "m1".into(),
            points: 5,
            reason: String::new(),
            idempotency_key: "a1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_field(&err), "reason");
    let neg = r.adjust("m1", -40, "a2").await;
    assert_eq!(neg.balance.unwrap().available, 0);
    let entries = r.entries("m1").await;
    assert_eq!(entries[0].kind, pb::EntryKind::Adjust as i32);
    assert_eq!(entries[0].staff_id, "test-staff");
    assert_eq!(entries[0].reason, "goodwill");
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

fn envelope(event_id: &str, member: &str, payload: Payload) -> EventEnvelope {
    let mut env = loyalty_common::events::new_envelope("pos", PROGRAM, member, payload);
    env.event_id = event_id.into();
    env
}

async fn purchases_and_refunds_from_other_producers_are_applied_once(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let tier = envelope(
        "e-tier",
        "m1",
        Payload::TierChanged(ev::TierChanged {
            from_tier: "silver".into(),
            to_tier: "gold".into(),
            reason: "threshold_reached".into(),
            points_multiplier_bp: 15_000,
        }),
    );
    let bought = envelope(
        "e-buy",
        "m1",
        Payload::PurchaseCompleted(ev::PurchaseCompleted {
            order_id: "pos-1".into(),
            amount: cny(20_000),
            lines: vec![ev::OrderLine {
                line_id: "1".into(),
                sku: "x".into(),
                category: "food".into(),
                quantity: 1,
                amount: cny(20_000),
            }],
            channel: "store".into(),
            store_id: "s1".into(),
            purchased_at: None,
        }),
    );
    r.t.publish(&[tier, bought.clone()]).await;
    // redelivery and a replay under another event id change nothing
    let mut replay = bought.clone();
    replay.event_id = "e-buy-again".into();
    r.t.publish(&[bought, replay]).await;
    assert_eq!(
        r.balance("m1").await.available,
        300,
        "200 base x1.5 gold, once"
    );
    let refunded = envelope(
        "e-refund",
        "m1",
        Payload::OrderRefunded(ev::OrderRefunded {
            order_id: "pos-1".into(),
            refund_id: "r1".into(),
            amount: cny(10_000),
            lines: vec![],
            refunded_at: None,
        }),
    );
    r.t.publish(&[refunded.clone(), refunded]).await;
    assert_eq!(r.balance("m1").await.available, 150);
    // our own announcement of a purchase is not applied twice
    r.buy("m2", purchase("o-own", vec![line("a", "food", 10_000)]))
        .await;
    r.t.settle().await;
    assert_eq!(r.balance("m2").await.available, 100);
    let seen: HashSet<_> =
        r.t.outbox("rewards")
            .await
            .iter()
            .map(|e| e.event_type.clone())
            .collect();
    assert!(
        seen.contains("loyalty.events.v1.PointsRedeemed"),
        "the refund's reversal is announced"
    );
    r.assert_ledger_ok().await;
    r.t.stop().await;
}
