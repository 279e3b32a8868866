//! Refunds give back the cap usage of the refunded order over real gRPC on
//! both engines: a rule's daily cap used up by an order can be earned
//! again after that order is refunded, in proportion to what was refunded.

#[path = "ledger_support/mod.rs"]
mod ledger_support;

use chrono::{DateTime, Utc};
use ledger_support::{PROGRAM, Rewards, cny, line, policy, purchase};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::loyalty::rewards::v1 as pb;

test_on_both_engines!(refunds_give_back_the_cap_usage_of_the_refunded_part);

fn bought_at(order: &str, minor: i64, at: DateTime<Utc>) -> pb::Purchase {
    let mut p = purchase(order, vec![line("a", "food", minor)]);
    p.purchased_at = Some(loyalty_common::calendar::to_timestamp(at));
    p
}

fn bonus(r: &pb::RecordPurchaseResponse) -> i64 {
    r.applications
        .iter()
        .filter(|a| a.rule_name == "app bonus")
        .map(|a| a.points)
        .sum()
}

async fn refunds_give_back_the_cap_usage_of_the_refunded_part(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let day: DateTime<Utc> = "2026-03-04T02:00:00Z".parse().unwrap();
    r.t.clock().set(day);
    // one extra point per yuan in the app, at most 150 a day
    let rule = pb::EarningRule {
        program_id: PROGRAM.into(),
        name: "app bonus".into(),
        enabled: true,
        kind: Some(pb::earning_rule::Kind::Purchase(pb::PurchaseRule {
            condition: Some(pb::PurchaseCondition {
                channels: vec!["app".into()],
                ..Default::default()
            }),
            reward: Some(pb::purchase_rule::Reward::ExtraPointsPerUnit(1)),
        })),
        caps: vec![pb::RuleCap {
            period: pb::CapPeriod::Day as i32,
            max_points: 150,
        }],
        ..Default::default()
    };
    r.client()
        .create_earning_rule(r.as_staff(pb::CreateEarningRuleRequest { rule: Some(rule) }))
        .await
        .unwrap();
    let o1 = r.buy("m1", bought_at("o-1", 20_000, day)).await;
    assert_eq!((o1.points, bonus(&o1)), (350, 150), "capped at 150");
    let o2 = r.buy("m1", bought_at("o-2", 10_000, day)).await;
    assert_eq!(bonus(&o2), 0, "the day's cap is used up");

    // a partial refund of o-1 gives back its share of the cap usage
    let refund = |id: &str, minor: i64| pb::RecordRefundRequest {
        program_id: PROGRAM.into(),
        order_id: "o-1".into(),
        refund_id: id.into(),
        lines: vec![],
        amount: cny(minor),
        refunded_at: None,
    };
    let half = r.refund(refund("r1", 10_000)).await.unwrap();
    assert_eq!(half.points_reversed, 175);
    let given_back = 150 * half.points_reversed / o1.points;
    let o3 = r.buy("m1", bought_at("o-3", 10_000, day)).await;
    assert_eq!(
        bonus(&o3),
        given_back,
        "earns again up to what was given back"
    );
    let o4 = r.buy("m1", bought_at("o-4", 10_000, day)).await;
    assert_eq!(bonus(&o4), 0, "and no more");

    // the rest of o-1: the rest of its usage comes back, exactly
    let rest = r.refund(refund("r2", 10_000)).await.unwrap();
    assert_eq!(half.points_reversed + rest.points_reversed, o1.points);
    let o5 = r.buy("m1", bought_at("o-5", 20_000, day)).await;
    assert_eq!(
        bonus(&o5),
        150 - given_back,
        "all that o-1 used is free again"
    );
    // a replayed refund gives nothing back twice
    r.refund(refund("r2", 10_000)).await.unwrap();
    let o6 = r.buy("m1", bought_at("o-6", 10_000, day)).await;
    assert_eq!(bonus(&o6), 0);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}
