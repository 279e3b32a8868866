//! The earning-rules engine through the service, on both engines: rules
//! validated on save, versioned, tier multipliers from TierChanged,
//! promotions in and out of their window, caps, the dry run, behaviours and
//! check-in streaks.

#[path = "ledger_support/mod.rs"]
mod ledger_support;

use ledger_support::{PROGRAM, Rewards, bad_field, line, policy, purchase};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{self as ev};
use loyalty_proto::loyalty::rewards::v1 as pb;
use tonic::Code;

test_on_both_engines!(
    rules_are_validated_on_save_and_versioned,
    tier_multipliers_promotions_and_caps_shape_what_a_purchase_earns,
    simulation_answers_without_writing,
    behaviours_are_rewarded_once_and_check_in_streaks_earn_bonuses,
);

fn purchase_rule(
    name: &str,
    condition: pb::PurchaseCondition,
    reward: pb::purchase_rule::Reward,
) -> pb::EarningRule {
    pb::EarningRule {
        program_id: PROGRAM.into(),
        name: name.into(),
        enabled: true,
        kind: Some(pb::earning_rule::Kind::Purchase(pb::PurchaseRule {
            condition: Some(condition),
            reward: Some(reward),
        })),
        ..Default::default()
    }
}

async fn create(r: &Rewards, rule: pb::EarningRule) -> Result<pb::EarningRule, tonic::Status> {
    r.client()
        .create_earning_rule(r.as_staff(pb::CreateEarningRuleRequest { rule: Some(rule) }))
        .await
        .map(|x| x.into_inner().rule.unwrap())
}

async fn rules_are_validated_on_save_and_versioned(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    let bad = purchase_rule(
        "bad promo",
        pb::PurchaseCondition {
            local_date_from: "2026-02-30".into(),
            ..Default::default()
        },
        pb::purchase_rule::Reward::FixedPoints(10),
    );
    let err = create(&r, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_field(&err), "rule.purchase.condition.local_date_from");
    let mut no_reward = purchase_rule(
        "x",
        pb::PurchaseCondition::default(),
        pb::purchase_rule::Reward::FixedPoints(1),
    );
    if let Some(pb::earning_rule::Kind::Purchase(p)) = &mut no_reward.kind {
        p.reward = None;
    }
    assert_eq!(
        bad_field(&create(&r, no_reward).await.unwrap_err()),
        "rule.purchase.reward"
    );
    // only program admins write rules
    let err = r
        .client()
        .create_earning_rule(r.as_member(
            "m1",
            pb::CreateEarningRuleRequest {
                rule: Some(purchase_rule(
                    "x",
                    pb::PurchaseCondition::default(),
                    pb::purchase_rule::Reward::FixedPoints(1),
                )),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let v1 = create(
        &r,
        purchase_rule(
            "bonus",
            pb::PurchaseCondition::default(),
            pb::purchase_rule::Reward::FixedPoints(10),
        ),
    )
    .await
    .unwrap();
    assert_eq!(v1.version, 1);
    let mut change = v1.clone();
    change.name = "bigger bonus".into();
    change.kind = Some(pb::earning_rule::Kind::Purchase(pb::PurchaseRule {
        condition: Some(pb::PurchaseCondition::default()),
        reward: Some(pb::purchase_rule::Reward::FixedPoints(20)),
    }));
    let v2 = r
        .client()
        .update_earning_rule(r.as_staff(pb::UpdateEarningRuleRequest {
            rule: Some(change.clone()),
        }))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    assert_eq!(v2.version, 2);
    // a stale version is refused
    let err = r
        .client()
        .update_earning_rule(r.as_staff(pb::UpdateEarningRuleRequest { rule: Some(change) }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let old = r
        .client()
        .get_earning_rule(r.as_staff(pb::GetEarningRuleRequest {
            program_id: PROGRAM.into(),
            rule_id: v1.rule_id.clone(),
            version: 1,
        }))
        .await
        .unwrap()
        .into_inner()
        .rule
        .unwrap();
    assert_eq!(old.name, "bonus", "earlier versions stay readable");
    let listed = r
        .client()
        .list_earning_rules(r.as_staff(pb::ListEarningRulesRequest {
            program_id: PROGRAM.into(),
            page: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .rules;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].version, 2);
    // the purchase earns under version 2
    let bought = r
        .buy("m1", purchase("o-1", vec![line("a", "food", 1_000)]))
        .await;
    assert_eq!(bought.points, 10 + 20);
    r.t.stop().await;
}

async fn tier_multipliers_promotions_and_caps_shape_what_a_purchase_earns(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    // Wednesday 2026-03-04 10:00 in Shanghai
    let wednesday: chrono::DateTime<chrono::Utc> = "2026-03-04T02:00:00Z".parse().unwrap();
    r.t.clock().set(wednesday);
    create(
        &r,
        purchase_rule(
            "wednesday coffee",
            pb::PurchaseCondition {
                categories: vec!["coffee".into()],
                weekdays: vec![pb::Weekday::Wednesday as i32],
                local_date_from: "2026-03-01".into(),
                local_date_to: "2026-03-31".into(),
                ..Default::default()
            },
            pb::purchase_rule::Reward::ExtraMultiplierBp(10_000),
        ),
    )
    .await
    .unwrap();
    let mut capped = purchase_rule(
        "store bonus",
        pb::PurchaseCondition {
            channels: vec!["app".into()],
            ..Default::default()
        },
        pb::purchase_rule::Reward::ExtraPointsPerUnit(1),
    );
    capped.caps = vec![pb::RuleCap {
        period: pb::CapPeriod::Day as i32,
        max_points: 150,
    }];
    create(&r, capped).await.unwrap();
    let tier = loyalty_common::events::new_envelope(
        "membership",
        PROGRAM,
        "m1",
        Payload::TierChanged(ev::TierChanged {
            from_tier: String::new(),
            to_tier: "gold".into(),
            reason: "x".into(),
            points_multiplier_bp: 20_000,
        }),
    );
    r.t.publish(&[tier]).await;
    let at = |t: chrono::DateTime<chrono::Utc>| Some(loyalty_common::calendar::to_timestamp(t));
    let mut p = purchase(
        "o-1",
        vec![line("c", "coffee", 10_000), line("f", "food", 10_000)],
    );
    p.purchased_at = at(wednesday);
    let bought = r.buy("m1", p).await;
    // base 200, gold x2 → +200, coffee double → +100, app bonus 200 capped at 150
    assert_eq!(bought.points, 200 + 200 + 100 + 150, "{bought:?}");
    let capped_app = bought
        .applications
        .iter()
        .find(|a| a.rule_name == "store bonus")
        .unwrap();
    assert_eq!((capped_app.points, capped_app.capped_points), (150, 50));
    // same day: the cap is used up; Thursday: no coffee promotion, fresh cap
    let mut p = purchase("o-2", vec![line("c", "coffee", 10_000)]);
    p.purchased_at = at(wednesday);
    assert_eq!(r.buy("m1", p).await.points, 100 + 100 + 100);
    let thursday = wednesday + chrono::Duration::days(1);
    let mut p = purchase("o-3", vec![line("c", "coffee", 10_000)]);
    p.purchased_at = at(thursday);
    assert_eq!(r.buy("m1", p).await.points, 100 + 100 + 100);
    // a Wednesday in April is outside the promotion's dates
    let april = wednesday + chrono::Duration::days(28);
    let mut p = purchase("o-4", vec![line("c", "coffee", 10_000)]);
    p.purchased_at = at(april);
    assert_eq!(r.buy("m1", p).await.points, 100 + 100 + 100);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn simulation_answers_without_writing(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    create(
        &r,
        purchase_rule(
            "first purchase",
            pb::PurchaseCondition {
                nth_purchase: 1,
                ..Default::default()
            },
            pb::purchase_rule::Reward::FixedPoints(500),
        ),
    )
    .await
    .unwrap();
    let sim = |order: &str| pb::SimulatePurchaseRequest {
        program_id: PROGRAM.into(),
        member_id: "m1".into(),
        purchase: Some(purchase(order, vec![line("a", "food", 1_000)])),
    };
    let s = r
        .client()
        .simulate_purchase(r.as_member("m1", sim("o-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.points, 510);
    let again = r
        .client()
        .simulate_purchase(r.as_member("m1", sim("o-1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, s, "the dry run did not count as a purchase");
    assert_eq!(r.balance("m1").await.available, 0);
    assert!(r.entries("m1").await.is_empty());
    assert_eq!(
        r.buy("m1", purchase("o-1", vec![line("a", "food", 1_000)]))
            .await
            .points,
        510
    );
    assert_eq!(
        r.buy("m1", purchase("o-2", vec![line("a", "food", 1_000)]))
            .await
            .points,
        10,
        "second purchase"
    );
    r.t.stop().await;
}

async fn behaviours_are_rewarded_once_and_check_in_streaks_earn_bonuses(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(policy()).await;
    let behaviour =
        |name: &str, b: pb::Behaviour, points, bonuses: Vec<pb::StreakBonus>| pb::EarningRule {
            program_id: PROGRAM.into(),
            name: name.into(),
            enabled: true,
            kind: Some(pb::earning_rule::Kind::Behaviour(pb::BehaviourRule {
                behaviour: b as i32,
                points,
                streak_bonuses: bonuses,
            })),
            ..Default::default()
        };
    create(
        &r,
        behaviour(
            "check-in",
            pb::Behaviour::CheckIn,
            5,
            vec![pb::StreakBonus {
                streak_days: 3,
                bonus_points: 30,
            }],
        ),
    )
    .await
    .unwrap();
    create(
        &r,
        behaviour("review", pb::Behaviour::ReviewSubmitted, 20, vec![]),
    )
    .await
    .unwrap();
    create(
        &r,
        behaviour("birthday", pb::Behaviour::Birthday, 100, vec![]),
    )
    .await
    .unwrap();
    let err = create(
        &r,
        behaviour(
            "bad",
            pb::Behaviour::Birthday,
            1,
            vec![pb::StreakBonus {
                streak_days: 3,
                bonus_points: 1,
            }],
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(bad_field(&err), "rule.behaviour.streak_bonuses[0]");
    let start: chrono::DateTime<chrono::Utc> = "2026-03-04T02:00:00Z".parse().unwrap();
    r.t.clock().set(start);
    let check_in = || async {
        r.client()
            .check_in(r.as_member(
                "m1",
                pb::CheckInRequest {
                    program_id: PROGRAM.into(),
                    member_id: "m1".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
    };
    let day1 = check_in().await;
    assert_eq!((day1.streak_days, day1.points), (1, 5));
    let again = check_in().await;
    assert!(again.already_checked_in);
    assert_eq!(again.points, 0);
    r.t.clock().advance(chrono::Duration::days(1));
    assert_eq!(check_in().await.points, 5);
    r.t.clock().advance(chrono::Duration::days(1));
    let day3 = check_in().await;
    assert_eq!(
        (day3.streak_days, day3.points),
        (3, 35),
        "streak bonus on day 3"
    );
    r.t.clock().advance(chrono::Duration::days(2));
    assert_eq!(
        check_in().await.streak_days,
        1,
        "a missed day restarts the streak"
    );
    // a review arrives as an event, twice: rewarded once
    let review = loyalty_common::events::new_envelope(
        "feedback",
        PROGRAM,
        "m1",
        Payload::ReviewSubmitted(ev::ReviewSubmitted {
            review_id: "rv-1".into(),
            sku: "x".into(),
            rating: 5,
        }),
    );
    let mut dup = review.clone();
    dup.event_id = "another-id".into();
    r.t.publish(&[review, dup]).await;
    let activity = pb::RecordActivityRequest {
        program_id: PROGRAM.into(),
        member_id: "m1".into(),
        behaviour: pb::Behaviour::Birthday as i32,
        reference: "2026".into(),
    };
    let first = r
        .client()
        .record_activity(r.as_backend(activity.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.points, first.replayed), (100, false));
    let second = r
        .client()
        .record_activity(r.as_backend(activity))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.points, second.replayed), (100, true));
    assert_eq!(r.balance("m1").await.available, 5 + 5 + 35 + 5 + 20 + 100);
    r.t.settle().await;
    let check_ins =
        r.t.outbox("rewards")
            .await
            .iter()
            .filter(|e| matches!(e.payload, Some(Payload::CheckedIn(_))))
            .count();
    assert_eq!(check_ins, 4);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}
