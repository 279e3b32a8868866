//! Badges over real gRPC and events on both engines: counters kept from
//! PurchaseCompleted, ReviewSubmitted and CheckedIn; a badge awarded once
//! when its rule holds; definitions validated and keyed by code.

mod catalog_support;

use catalog_support::*;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, TestService};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{CheckedIn, PurchaseCompleted, ReviewSubmitted};
use loyalty_proto::loyalty::rewards::v1::{
    Badge, BadgeCondition, BadgeCounter, CreateBadgeRequest, ListBadgesRequest,
    ListMemberBadgesRequest, MemberBadge,
};
use tonic::Code;

fn condition(counter: BadgeCounter, at_least: i64) -> BadgeCondition {
    BadgeCondition {
        counter: counter.into(),
        at_least,
    }
}

async fn define(t: &TestService, code: &str, conditions: Vec<BadgeCondition>) -> Badge {
    badges(t)
        .create_badge(t.request(
            CreateBadgeRequest {
                program_id: PROGRAM.into(),
                badge: Some(Badge {
                    code: code.into(),
                    name: format!("Badge {code}"),
                    conditions,
                    ..Badge::default()
                }),
            },
            &admin(),
        ))
        .await
        .expect("define badge")
        .into_inner()
        .badge
        .expect("badge")
}

async fn held(t: &TestService, member_id: &str) -> Vec<MemberBadge> {
    badges(t)
        .list_member_badges(t.request(
            ListMemberBadgesRequest {
                program_id: PROGRAM.into(),
                member_id: member_id.into(),
                page: None,
            },
            &member(member_id),
        ))
        .await
        .expect("list")
        .into_inner()
        .badges
}

fn purchase(member_id: &str, order: &str) -> loyalty_proto::events::EventEnvelope {
    event(
        member_id,
        Payload::PurchaseCompleted(PurchaseCompleted {
            order_id: order.into(),
            amount: Some(loyalty_proto::common::Money {
                minor_units: 1_000,
                currency: "CNY".into(),
            }),
            channel: "store".into(),
            ..PurchaseCompleted::default()
        }),
    )
}

fn review(member_id: &str, id: &str) -> loyalty_proto::events::EventEnvelope {
    event(
        member_id,
        Payload::ReviewSubmitted(ReviewSubmitted {
            review_id: id.into(),
            sku: "sku-1".into(),
            rating: 5,
        }),
    )
}

async fn a_badge_is_awarded_once_when_every_condition_holds(engine: TestEngine) {
    let t = start(engine).await;
    define(
        &t,
        "loyal-critic",
        vec![
            condition(BadgeCounter::Purchases, 2),
            condition(BadgeCounter::Reviews, 1),
        ],
    )
    .await;
    define(&t, "first-buy", vec![condition(BadgeCounter::Purchases, 1)]).await;
    let first = purchase("m1", "o1");
    // a redelivered event counts once, and so does the same order announced
    // again under a new event id
    t.publish(&[first.clone(), first, purchase("m1", "o1")])
        .await;
    t.settle().await;
    let after_one: Vec<String> = held(&t, "m1").await.into_iter().map(|b| b.code).collect();
    assert_eq!(after_one, ["first-buy"]);
    t.publish(&[review("m1", "r1"), purchase("m1", "o2")]).await;
    t.settle().await;
    let codes: Vec<String> = held(&t, "m1").await.into_iter().map(|b| b.code).collect();
    assert_eq!(codes.len(), 2, "{codes:?}");
    assert!(codes.contains(&"loyal-critic".to_owned()));
    // more activity awards nothing again
    t.publish(&[purchase("m1", "o3"), review("m1", "r2")]).await;
    t.settle().await;
    assert_eq!(held(&t, "m1").await.len(), 2);
    let awarded = emitted(&t, "BadgeAwarded").await;
    assert_eq!(awarded.len(), 2);
    assert!(awarded.iter().all(|e| e.member_id == "m1"));
    // another member's counters are their own
    assert!(held(&t, "m2").await.is_empty());
    t.stop().await;
}

/// Many members' events delivered together (applied as one group with
/// set-based statements): each member's facts count once, and only the
/// member whose own count reaches the rule gets the badge, once.
async fn members_delivered_together_are_counted_apart(engine: TestEngine) {
    let t = start(engine).await;
    define(&t, "regular", vec![condition(BadgeCounter::Purchases, 3)]).await;
    let again = purchase("m3", "o2");
    t.publish(&[
        purchase("m1", "o1"),
        purchase("m2", "o1"),
        purchase("m3", "o1"),
        purchase("m1", "o2"),
        purchase("m2", "o2"),
        purchase("m3", "o2"),
        again.clone(),
        again,
        purchase("m1", "o3"),
        review("m2", "r1"),
    ])
    .await;
    t.settle().await;
    let codes = |b: Vec<MemberBadge>| b.into_iter().map(|b| b.code).collect::<Vec<_>>();
    assert_eq!(codes(held(&t, "m1").await), ["regular"]);
    assert!(
        held(&t, "m2").await.is_empty(),
        "two purchases and a review"
    );
    assert!(held(&t, "m3").await.is_empty(), "o2 counted once");
    t.publish(&[purchase("m1", "o4"), purchase("m3", "o3")])
        .await;
    t.settle().await;
    assert_eq!(codes(held(&t, "m3").await), ["regular"]);
    let awarded = emitted(&t, "BadgeAwarded").await;
    let mut members: Vec<&str> = awarded.iter().map(|e| e.member_id.as_str()).collect();
    members.sort_unstable();
    assert_eq!(members, ["m1", "m3"]);
    t.stop().await;
}

async fn a_streak_badge_needs_the_streak_not_just_check_ins(engine: TestEngine) {
    let t = start(engine).await;
    define(
        &t,
        "week-streak",
        vec![condition(BadgeCounter::CheckInStreak, 7)],
    )
    .await;
    let check_in = |day: u32, streak: i32| {
        event(
            "m1",
            Payload::CheckedIn(CheckedIn {
                local_date: format!("2026-01-{day:02}"),
                streak_days: streak,
            }),
        )
    };
    // days 1-6, a gap, days 8-11
    let broken: Vec<_> = [
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 4),
        (5, 5),
        (6, 6),
        (8, 1),
        (9, 2),
        (10, 3),
        (11, 4),
    ]
    .into_iter()
    .map(|(d, s)| check_in(d, s))
    .collect();
    t.publish(&broken).await;
    t.settle().await;
    assert!(
        held(&t, "m1").await.is_empty(),
        "ten check-ins, best streak 6"
    );
    t.publish(&[check_in(12, 5), check_in(13, 6), check_in(14, 7)])
        .await;
    t.settle().await;
    let got = held(&t, "m1").await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].code, "week-streak");
    assert!(got[0].awarded_at.is_some());
    t.stop().await;
}

async fn definitions_are_validated_and_keyed_by_code(engine: TestEngine) {
    let t = start(engine).await;
    let rule = vec![condition(BadgeCounter::Reviews, 3)];
    let a = define(&t, "critic", rule.clone()).await;
    let b = define(&t, "critic", rule).await;
    assert_eq!(a, b, "the same definition again is a replay");
    let clash = badges(&t)
        .create_badge(t.request(
            CreateBadgeRequest {
                program_id: PROGRAM.into(),
                badge: Some(Badge {
                    code: "critic".into(),
                    name: "Badge critic".into(),
                    conditions: vec![condition(BadgeCounter::Reviews, 5)],
                    ..Badge::default()
                }),
            },
            &admin(),
        ))
        .await
        .unwrap_err();
    assert_code(&clash, Code::AlreadyExists);
    let bad = badges(&t)
        .create_badge(t.request(
            CreateBadgeRequest {
                program_id: PROGRAM.into(),
                badge: Some(Badge {
                    code: String::new(),
                    name: String::new(),
                    conditions: vec![
                        condition(BadgeCounter::Purchases, 0),
                        condition(BadgeCounter::Unspecified, 1),
                    ],
                    ..Badge::default()
                }),
            },
            &admin(),
        ))
        .await
        .unwrap_err();
    let fields = violated_fields(&bad);
    for f in ["badge.code", "badge.name", "badge.conditions[1].counter"] {
        assert!(fields.iter().any(|x| x == f), "{f} in {fields:?}");
    }
    let denied = badges(&t)
        .create_badge(t.request(
            CreateBadgeRequest {
                program_id: PROGRAM.into(),
                badge: None,
            },
            &member("m1"),
        ))
        .await
        .unwrap_err();
    assert_code(&denied, Code::PermissionDenied);
    let listed = badges(&t)
        .list_badges(t.request(
            ListBadgesRequest {
                program_id: PROGRAM.into(),
                page: None,
            },
            &member("m1"),
        ))
        .await
        .expect("members see definitions")
        .into_inner()
        .badges;
    assert_eq!(listed.len(), 1);
    t.stop().await;
}

test_on_both_engines!(
    a_badge_is_awarded_once_when_every_condition_holds,
    a_streak_badge_needs_the_streak_not_just_check_ins,
    members_delivered_together_are_counted_apart,
    definitions_are_validated_and_keyed_by_code,
);
