use chrono::{DateTime, NaiveDate, Utc};
use loyalty_proto::loyalty::rewards::v1 as pb;
use proptest::prelude::*;

use super::*;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn facts(lines: Vec<Line>) -> PurchaseFacts {
    PurchaseFacts {
        lines,
        channel: "app".into(),
        store_id: String::new(),
        purchased_at: at("2026-03-04T10:00:00Z"), // a Wednesday
        local_date: NaiveDate::from_ymd_opt(2026, 3, 4).unwrap(),
        tier: "silver".into(),
        multiplier_bp: ONE_X_BP,
        ordinal: 1,
        base_points_per_unit: 1,
        unit_minor: 100,
        rounding: Rounding::Floor,
    }
}

fn line(id: &str, category: &str, amount: i64) -> Line {
    Line {
        line_id: id.into(),
        sku: format!("sku-{id}"),
        category: category.into(),
        amount_minor: amount,
    }
}

fn rule(id: &str, condition: PurchaseCondition, reward: Reward) -> Rule {
    Rule {
        id: id.into(),
        version: 1,
        name: id.into(),
        valid_from: None,
        valid_until: None,
        enabled: true,
        kind: RuleKind::Purchase { condition, reward },
        caps: Vec::new(),
    }
}

#[test]
fn base_earning_rounds_per_line_by_policy() {
    let mut f = facts(vec![line("a", "food", 1_999), line("b", "food", 50)]);
    let e = evaluate_purchase(&[], &f, &CapUsage::default());
    assert_eq!(e.total, 19);
    assert_eq!(e.lines, vec![("a".into(), 19), ("b".into(), 0)]);
    f.rounding = Rounding::HalfUp;
    assert_eq!(evaluate_purchase(&[], &f, &CapUsage::default()).total, 21);
    f.rounding = Rounding::Ceil;
    assert_eq!(evaluate_purchase(&[], &f, &CapUsage::default()).total, 21);
}

#[test]
fn tier_multiplier_adds_its_share_of_the_base() {
    let mut f = facts(vec![line("a", "food", 10_000)]);
    f.multiplier_bp = 15_000;
    let e = evaluate_purchase(&[], &f, &CapUsage::default());
    assert_eq!(e.total, 150);
    assert_eq!(e.applications[1].rule_id, "tier");
    assert_eq!(e.applications[1].points, 50);
}

#[test]
fn category_bonus_applies_to_matching_lines_only() {
    let f = facts(vec![line("a", "coffee", 1_000), line("b", "food", 1_000)]);
    let double_coffee = rule(
        "r1",
        PurchaseCondition {
            categories: vec!["coffee".into()],
            ..PurchaseCondition::default()
        },
        Reward::ExtraMultiplierBp(10_000),
    );
    let e = evaluate_purchase(&[double_coffee], &f, &CapUsage::default());
    assert_eq!(e.lines, vec![("a".into(), 20), ("b".into(), 10)]);
    assert_eq!(e.total, 30);
    assert_eq!(e.rule_refs()[0].label(), "r1@1");
}

#[test]
fn promotion_applies_inside_its_window_and_weekdays_only() {
    let promo = rule(
        "promo",
        PurchaseCondition {
            weekdays: vec![chrono::Weekday::Wed],
            date_from: NaiveDate::from_ymd_opt(2026, 3, 1),
            date_to: NaiveDate::from_ymd_opt(2026, 3, 31),
            ..PurchaseCondition::default()
        },
        Reward::Fixed(100),
    );
    let mut f = facts(vec![line("a", "food", 1_000)]);
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&promo), &f, &CapUsage::default()).total,
        110
    );
    // Thursday: out
    f.local_date = NaiveDate::from_ymd_opt(2026, 3, 5).unwrap();
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&promo), &f, &CapUsage::default()).total,
        10
    );
    // a Wednesday in April: out of the date range
    f.local_date = NaiveDate::from_ymd_opt(2026, 4, 1).unwrap();
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&promo), &f, &CapUsage::default()).total,
        10
    );
}

#[test]
fn validity_window_and_disabled_versions_are_respected() {
    let mut r = rule("r", PurchaseCondition::default(), Reward::Fixed(5));
    r.valid_from = Some(at("2026-03-05T00:00:00Z"));
    let f = facts(vec![line("a", "food", 100)]);
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&r), &f, &CapUsage::default()).total,
        1
    );
    r.valid_from = None;
    r.valid_until = Some(at("2026-03-04T10:00:00Z")); // exclusive
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&r), &f, &CapUsage::default()).total,
        1
    );
    r.valid_until = None;
    r.enabled = false;
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&r), &f, &CapUsage::default()).total,
        1
    );
}

#[test]
fn caps_cut_a_rule_to_what_is_left_in_the_period() {
    let mut r = rule(
        "r",
        PurchaseCondition::default(),
        Reward::ExtraPointsPerUnit(10),
    );
    r.caps = vec![
        Cap {
            period: CapPeriod::Day,
            max_points: 100,
        },
        Cap {
            period: CapPeriod::Month,
            max_points: 1_000,
        },
    ];
    let f = facts(vec![line("a", "food", 5_000), line("b", "food", 5_000)]);
    let mut used = CapUsage::default();
    let e = evaluate_purchase(std::slice::from_ref(&r), &f, &used);
    assert_eq!(e.applications[1].points, 100);
    assert_eq!(e.applications[1].capped, 900);
    assert_eq!(e.total, 200);
    used.add("r", 100);
    let e = evaluate_purchase(std::slice::from_ref(&r), &f, &used);
    assert_eq!(e.applications[1].points, 0);
    assert_eq!(e.total, 100);
}

#[test]
fn nth_purchase_rule_fires_on_that_purchase_only() {
    let r = rule(
        "third",
        PurchaseCondition {
            nth_purchase: 3,
            ..PurchaseCondition::default()
        },
        Reward::Fixed(50),
    );
    let mut f = facts(vec![line("a", "food", 100)]);
    f.ordinal = 2;
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&r), &f, &CapUsage::default()).total,
        1
    );
    f.ordinal = 3;
    assert_eq!(
        evaluate_purchase(std::slice::from_ref(&r), &f, &CapUsage::default()).total,
        51
    );
}

#[test]
fn check_in_streaks_and_bonuses() {
    let d = |day| NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
    assert_eq!(next_streak(None, 0, d(4)), Some(1));
    assert_eq!(next_streak(Some(d(3)), 6, d(4)), Some(7));
    assert_eq!(next_streak(Some(d(2)), 6, d(4)), Some(1));
    assert_eq!(next_streak(Some(d(4)), 6, d(4)), None);
    let r = Rule {
        id: "ci".into(),
        version: 2,
        name: "daily check-in".into(),
        valid_from: None,
        valid_until: None,
        enabled: true,
        kind: RuleKind::Behaviour {
            behaviour: Behaviour::CheckIn,
            points: 5,
            streak_bonuses: vec![(7, 50)],
        },
        caps: Vec::new(),
    };
    let f = |streak| BehaviourFacts {
        behaviour: Behaviour::CheckIn,
        at: at("2026-03-04T10:00:00Z"),
        streak_days: streak,
    };
    assert_eq!(
        evaluate_behaviour(std::slice::from_ref(&r), &f(6), &CapUsage::default()).total,
        5
    );
    assert_eq!(
        evaluate_behaviour(std::slice::from_ref(&r), &f(7), &CapUsage::default()).total,
        55
    );
    let review = BehaviourFacts {
        behaviour: Behaviour::ReviewSubmitted,
        ..f(0)
    };
    assert_eq!(
        evaluate_behaviour(std::slice::from_ref(&r), &review, &CapUsage::default()).total,
        0
    );
}

#[test]
fn allocation_is_exact_and_proportional() {
    assert_eq!(allocate(10, &[1, 1, 1]), vec![4, 3, 3]);
    assert_eq!(allocate(7, &[0, 0]), vec![7, 0]);
    assert_eq!(allocate(100, &[300, 100]), vec![75, 25]);
}

fn bad_fields(r: &pb::EarningRule) -> Vec<String> {
    match rule_from_proto(r).unwrap_err() {
        loyalty_common::ServiceError::InvalidArgument(v) => {
            v.into_iter().map(|f| f.field).collect()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn validation_names_the_bad_part() {
    let good = pb::EarningRule {
        program_id: "p".into(),
        name: "double coffee".into(),
        enabled: true,
        kind: Some(pb::earning_rule::Kind::Purchase(pb::PurchaseRule {
            condition: Some(pb::PurchaseCondition {
                categories: vec!["coffee".into()],
                ..Default::default()
            }),
            reward: Some(pb::purchase_rule::Reward::ExtraMultiplierBp(10_000)),
        })),
        ..Default::default()
    };
    assert!(rule_from_proto(&good).is_ok());
    let mut bad = good.clone();
    bad.kind = Some(pb::earning_rule::Kind::Purchase(pb::PurchaseRule {
        condition: Some(pb::PurchaseCondition {
            weekdays: vec![0],
            local_date_from: "2026-13-01".into(),
            categories: vec![String::new()],
            ..Default::default()
        }),
        reward: None,
    }));
    bad.caps = vec![pb::RuleCap {
        period: 0,
        max_points: 0,
    }];
    assert_eq!(
        bad_fields(&bad),
        [
            "rule.purchase.condition.weekdays[0]",
            "rule.purchase.condition.local_date_from",
            "rule.purchase.condition.categories[0]",
            "rule.purchase.reward",
            "rule.caps[0].period",
            "rule.caps[0].max_points",
        ]
    );
    let mut bonus_on_review = good.clone();
    bonus_on_review.kind = Some(pb::earning_rule::Kind::Behaviour(pb::BehaviourRule {
        behaviour: pb::Behaviour::ReviewSubmitted as i32,
        points: 10,
        streak_bonuses: vec![pb::StreakBonus {
            streak_days: 7,
            bonus_points: 5,
        }],
    }));
    assert_eq!(
        bad_fields(&bonus_on_review),
        ["rule.behaviour.streak_bonuses[0]"]
    );
    let mut window = good;
    window.valid_from = Some(prost_types::Timestamp {
        seconds: 100,
        nanos: 0,
    });
    window.valid_until = Some(prost_types::Timestamp {
        seconds: 100,
        nanos: 0,
    });
    assert_eq!(bad_fields(&window), ["rule.valid_until"]);
}

fn arb_line() -> impl Strategy<Value = Line> {
    (0i64..1_000_000, 0usize..3).prop_map(|(amount, c)| Line {
        line_id: String::new(),
        sku: format!("s{c}"),
        category: ["a", "b", "c"][c].into(),
        amount_minor: amount,
    })
}

fn arb_reward() -> impl Strategy<Value = Reward> {
    prop_oneof![
        (1i64..50_000).prop_map(Reward::ExtraMultiplierBp),
        (1i64..20).prop_map(Reward::ExtraPointsPerUnit),
        (1i64..10_000).prop_map(Reward::Fixed),
    ]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (
        arb_reward(),
        prop::option::of(0usize..3),
        prop::option::of(1i64..5_000),
        0u32..3,
    )
        .prop_map(|(reward, cat, cap, id)| {
            let mut r = rule(
                &format!("r{id}"),
                PurchaseCondition {
                    categories: cat
                        .map(|c| vec![["a", "b", "c"][c].to_owned()])
                        .unwrap_or_default(),
                    ..PurchaseCondition::default()
                },
                reward,
            );
            r.caps = cap
                .map(|m| {
                    vec![Cap {
                        period: CapPeriod::Day,
                        max_points: m,
                    }]
                })
                .unwrap_or_default();
            r
        })
}

fn arb_rounding() -> impl Strategy<Value = Rounding> {
    prop_oneof![
        Just(Rounding::Floor),
        Just(Rounding::HalfUp),
        Just(Rounding::Ceil)
    ]
}

proptest! {
    #[test]
    fn totals_equal_lines_and_applications_and_are_never_negative(
        lines in prop::collection::vec(arb_line(), 1..8),
        rules in prop::collection::vec(arb_rule(), 0..5),
        multiplier in 0i64..40_000,
        rounding in arb_rounding(),
        used in 0i64..6_000,
    ) {
        let mut lines = lines;
        for (i, l) in lines.iter_mut().enumerate() { l.line_id = format!("l{i}"); }
        let mut rules = rules;
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        rules.dedup_by(|a, b| a.id == b.id);
        let mut f = facts(lines);
        f.multiplier_bp = multiplier;
        f.rounding = rounding;
        let mut usage = CapUsage::default();
        for r in &rules { usage.add(&r.id, used); }
        let e = evaluate_purchase(&rules, &f, &usage);
        prop_assert_eq!(e.total, e.lines.iter().map(|l| l.1).sum::<i64>());
        prop_assert_eq!(e.total, e.applications.iter().map(|a| a.points).sum::<i64>());
        prop_assert!(e.lines.iter().all(|l| l.1 >= 0));
        // caps hold: a capped rule never gives more than its room
        for a in e.applications.iter().filter(|a| a.version > 0) {
            let r = rules.iter().find(|r| r.id == a.rule_id).unwrap();
            if let Some(room) = r.cap_room(&usage) {
                prop_assert!(a.points <= room);
            }
            prop_assert!(a.capped >= 0);
        }
    }

    #[test]
    fn rule_order_does_not_change_the_result(
        lines in prop::collection::vec(arb_line(), 1..5),
        rules in prop::collection::vec(arb_rule(), 0..5),
    ) {
        let mut lines = lines;
        for (i, l) in lines.iter_mut().enumerate() { l.line_id = format!("l{i}"); }
        // rule ids are unique within a program
        let mut rules = rules;
        rules.sort_by(|a, b| a.id.cmp(&b.id));
        rules.dedup_by(|a, b| a.id == b.id);
        rules.reverse();
        let f = facts(lines);
        let a = evaluate_purchase(&rules, &f, &CapUsage::default());
        let mut reversed = rules.clone();
        reversed.reverse();
        let b = evaluate_purchase(&reversed, &f, &CapUsage::default());
        prop_assert_eq!(a.total, b.total);
    }

    #[test]
    fn spending_more_never_earns_less_without_caps(
        amount in 0i64..10_000_000,
        more in 0i64..1_000_000,
        multiplier in 10_000i64..40_000,
        rounding in arb_rounding(),
    ) {
        let mut f = facts(vec![line("a", "a", amount)]);
        f.multiplier_bp = multiplier;
        f.rounding = rounding;
        let r = [rule("x", PurchaseCondition::default(), Reward::ExtraMultiplierBp(5_000))];
        let low = evaluate_purchase(&r, &f, &CapUsage::default()).total;
        f.lines[0].amount_minor += more;
        let high = evaluate_purchase(&r, &f, &CapUsage::default()).total;
        prop_assert!(high >= low);
    }

    #[test]
    fn allocation_always_sums_to_the_total(total in 0i64..1_000_000, weights in prop::collection::vec(0i64..1_000_000, 1..10)) {
        let parts = allocate(total, &weights);
        prop_assert_eq!(parts.iter().sum::<i64>(), total);
        prop_assert!(parts.iter().all(|p| *p >= 0));
    }
}
