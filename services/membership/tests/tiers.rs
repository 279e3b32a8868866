//! Tiers end to end over gRPC: upgrades on the purchase that crosses a
//! threshold, no downgrade before the evaluation date, the one-level soft
//! landing at evaluation, refunds, rolling-window edges and the program's
//! time zone at midnight.
// amounts are written as <yuan>_<fen> minor units (1_000_00 = 1000.00)
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use common::{Env, profile, program, purchase, refund};
use loyalty_common::calendar::from_timestamp;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::loyalty::membership::v1 as pb;

test_on_both_engines!(
    upgrades_at_once_downgrades_one_level_only_at_evaluation,
    rolling_window_drops_a_purchase_exactly_n_months_old_at_local_midnight,
    calendar_year_window_follows_the_program_time_zone,
    events_for_unknown_members_are_handled_without_effect,
    points_and_order_count_programs_qualify_by_their_own_measure,
);

async fn upgrades_at_once_downgrades_one_level_only_at_evaluation(engine: TestEngine) {
    let env = Env::start(engine).await;
    let t0 = env.at("2025-01-10T02:00:00Z");
    env.create_program(program("p1")).await;
    let m = env
        .enroll("p1", "u1", profile("+8613800000001", "a@example.com"))
        .await;
    assert_eq!(m.tier_code, "BASE");

    env.ts
        .publish(&[purchase("p1", &m.member_id, "o1", 600_00, t0)])
        .await;
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "BASE");
    // the purchase that crosses 1000.00 upgrades at once
    env.ts
        .publish(&[purchase("p1", &m.member_id, "o2", 500_00, t0)])
        .await;
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "SILVER");
    // a big purchase skips levels upwards
    env.ts
        .publish(&[purchase("p1", &m.member_id, "o3", 9_000_00, t0)])
        .await;
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "PLATINUM");
    // the same order again counts once
    env.ts
        .publish(&[purchase("p1", &m.member_id, "o3", 9_000_00, t0)])
        .await;
    let p = env.progress("p1", &m.member_id).await;
    assert_eq!(p.qualifying_value, 10_100_00);
    // no such member, no such program
    for (program, member, missing) in [
        ("p1", "no-such-member", "member no-such-member"),
        ("p9", m.member_id.as_str(), "program p9"),
    ] {
        let err = env
            .client
            .clone()
            .get_tier_progress(env.req(
                pb::GetTierProgressRequest {
                    program_id: program.into(),
                    member_id: member.into(),
                },
                program,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().contains(missing), "{}", err.message());
    }

    // a refund lowers the qualifying value but never downgrades at once
    env.ts
        .publish(&[refund("p1", &m.member_id, "o3", "r1", 9_000_00, t0)])
        .await;
    let p = env.progress("p1", &m.member_id).await;
    assert_eq!(p.qualifying_value, 1_100_00);
    assert_eq!(p.current_tier.as_ref().unwrap().code, "PLATINUM");
    assert_eq!(p.remaining_to_keep, 10_000_00 - 1_100_00);
    assert!(p.next_tier.is_none());
    assert_eq!(p.percent_to_next, 100);
    // a refund of more than is left of the order takes back only what is left
    env.ts
        .publish(&[refund("p1", &m.member_id, "o3", "r2", 5_000_00, t0)])
        .await;
    assert_eq!(
        env.progress("p1", &m.member_id).await.qualifying_value,
        1_100_00
    );

    // not due yet: the job changes nothing
    let run = env.evaluate("p1").await;
    assert!(run.ran);
    assert_eq!(run.evaluated, 0);
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "PLATINUM");

    // one second before the evaluation date: still nothing
    let due = from_timestamp("evaluation_at", p.evaluation_at.as_ref()).unwrap();
    assert_eq!(
        due,
        "2026-01-09T16:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(),
        "local midnight 12 months later"
    );
    env.ts.clock().set(due - chrono::TimeDelta::seconds(1));
    assert_eq!(env.evaluate("p1").await.evaluated, 0);
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "PLATINUM");

    // at the evaluation date: 1100.00 reaches SILVER, but the landing is soft
    env.ts.clock().set(due + chrono::TimeDelta::hours(1));
    assert_eq!(env.evaluate("p1").await.evaluated, 1);
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "GOLD");
    // evaluated once per date
    assert_eq!(env.evaluate("p1").await.evaluated, 0);
    // a year on with nothing bought: one more level down
    env.ts.clock().set(due + chrono::TimeDelta::days(366));
    assert_eq!(env.evaluate("p1").await.evaluated, 1);
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "SILVER");

    let events = env.tier_events(&m.member_id).await;
    let expect = [
        ("", "BASE", "enrolment", 10_000),
        ("BASE", "SILVER", "threshold_reached", 12_000),
        ("SILVER", "PLATINUM", "threshold_reached", 20_000),
        ("PLATINUM", "GOLD", "evaluation_downgrade", 15_000),
        ("GOLD", "SILVER", "evaluation_downgrade", 12_000),
    ];
    assert_eq!(events.len(), expect.len(), "{events:?}");
    for (got, want) in events.iter().zip(expect) {
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2.as_str(), got.3),
            want
        );
    }
    let history = env
        .client
        .clone()
        .list_tier_history(env.req(
            pb::ListTierHistoryRequest {
                program_id: "p1".into(),
                member_id: m.member_id.clone(),
                page: None,
            },
            "p1",
        ))
        .await
        .unwrap()
        .into_inner()
        .changes;
    let reasons: Vec<&str> = history.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "evaluation_downgrade",
            "evaluation_downgrade",
            "threshold_reached",
            "threshold_reached",
            "enrolment"
        ]
    );
    env.ts.stop().await;
}

async fn rolling_window_drops_a_purchase_exactly_n_months_old_at_local_midnight(
    engine: TestEngine,
) {
    let env = Env::start(engine).await;
    env.at("2025-03-01T00:00:00Z");
    env.create_program(program("p1")).await;
    let m = env.enroll("p1", "u1", profile("", "")).await;
    // local 2025-03-15 23:30 in Shanghai = 15:30 UTC
    let bought = "2025-03-15T15:30:00Z".parse().unwrap();
    env.ts
        .publish(&[purchase("p1", &m.member_id, "o1", 1_200_00, bought)])
        .await;
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "SILVER");

    // local 2026-03-14 23:59:59: the purchase (local 2025-03-15) still counts
    env.at("2026-03-14T15:59:59Z");
    assert_eq!(
        env.progress("p1", &m.member_id).await.qualifying_value,
        1_200_00
    );
    // local 2026-03-15 00:00: exactly 12 months old by local date: out,
    // although it is still 2026-03-14 in UTC
    env.at("2026-03-14T16:00:00Z");
    let p = env.progress("p1", &m.member_id).await;
    assert_eq!(p.qualifying_value, 0);
    assert_eq!(
        p.window_start.unwrap().seconds,
        "2025-03-15T16:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            .timestamp()
    );
    assert_eq!(p.remaining_to_next, 5_000_00);
    env.ts.stop().await;
}

async fn calendar_year_window_follows_the_program_time_zone(engine: TestEngine) {
    let env = Env::start(engine).await;
    env.at("2025-12-01T00:00:00Z");
    let mut p = program("p1");
    p.qualifying_window = Some(pb::QualifyingWindow {
        kind: Some(pb::qualifying_window::Kind::CalendarYear(true)),
    });
    p.evaluation_policy = Some(pb::EvaluationPolicy {
        kind: Some(pb::evaluation_policy::Kind::CalendarYearEnd(true)),
    });
    env.create_program(p).await;
    let m = env.enroll("p1", "u1", profile("", "")).await;
    // 23:59 and 00:01 local on either side of the new year in Shanghai
    let before = "2025-12-31T15:59:00Z".parse().unwrap();
    let after = "2025-12-31T16:01:00Z".parse().unwrap();
    env.at("2025-12-31T16:30:00Z");
    env.ts
        .publish(&[
            purchase("p1", &m.member_id, "o1", 700_00, before),
            purchase("p1", &m.member_id, "o2", 400_00, after),
        ])
        .await;
    let pr = env.progress("p1", &m.member_id).await;
    assert_eq!(
        pr.qualifying_value, 400_00,
        "only the purchase after local midnight is in the new year"
    );
    // both purchases fell before the evaluation on local January 1st
    assert_eq!(
        from_timestamp("e", pr.evaluation_at.as_ref()).unwrap(),
        "2025-12-31T16:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );
    // 700 (2025) and 400 (2026) are never added up: no upgrade
    assert_eq!(env.member("p1", &m.member_id).await.tier_code, "BASE");
    env.ts.stop().await;
}

async fn events_for_unknown_members_are_handled_without_effect(engine: TestEngine) {
    let env = Env::start(engine).await;
    let t = env.at("2025-01-10T02:00:00Z");
    env.create_program(program("p1")).await;
    env.ts
        .publish(&[
            purchase("p1", "nobody", "o1", 100_00, t),
            purchase("unknown-program", "nobody", "o2", 1, t),
        ])
        .await;
    let handled: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM inbox")
        .fetch_one(env.ts.rt("membership").db.pool())
        .await
        .unwrap();
    assert_eq!(handled, 2, "recorded as handled, not retried forever");
    let activity: i64 =
        sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM qualifying_activity")
            .fetch_one(env.ts.rt("membership").db.pool())
            .await
            .unwrap();
    assert_eq!(activity, 0);
    let dead: i64 = sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM dead_letters")
        .fetch_one(env.ts.rt("membership").db.pool())
        .await
        .unwrap();
    assert_eq!(dead, 0);
    env.ts.stop().await;
}

fn points_earned(
    program: &str,
    member: &str,
    entry: &str,
    points: i64,
) -> loyalty_proto::events::EventEnvelope {
    loyalty_common::events::new_envelope(
        "rewards",
        program,
        member,
        loyalty_proto::events::event_envelope::Payload::PointsEarned(
            loyalty_proto::events::PointsEarned {
                entry_id: entry.into(),
                points,
                cause: "o1".into(),
                pending_until: None,
                expires_at: None,
                entry_kind: "earn".into(),
            },
        ),
    )
}

async fn points_and_order_count_programs_qualify_by_their_own_measure(engine: TestEngine) {
    let env = Env::start(engine).await;
    let t = env.at("2026-02-01T02:00:00Z");
    let mut points = program("pts");
    points.qualifying_metric = pb::QualifyingMetric::Points as i32;
    env.create_program(points).await;
    let mut orders = program("ord");
    orders.qualifying_metric = pb::QualifyingMetric::OrderCount as i32;
    for (i, tier) in orders.tiers.iter_mut().enumerate() {
        tier.threshold = [0, 2, 5, 10][i];
    }
    env.create_program(orders).await;

    let a = env.enroll("pts", "u1", profile("", "")).await;
    // spend does not count in a points program; points do, once per entry
    env.ts
        .publish(&[purchase("pts", &a.member_id, "o1", 50_000_00, t)])
        .await;
    assert_eq!(env.member("pts", &a.member_id).await.tier_code, "BASE");
    env.ts
        .publish(&[
            points_earned("pts", &a.member_id, "l1", 600_00),
            points_earned("pts", &a.member_id, "l1", 600_00),
        ])
        .await;
    assert_eq!(
        env.progress("pts", &a.member_id).await.qualifying_value,
        600_00
    );
    env.ts
        .publish(&[points_earned("pts", &a.member_id, "l2", 400_00)])
        .await;
    assert_eq!(env.member("pts", &a.member_id).await.tier_code, "SILVER");

    let b = env.enroll("ord", "u1", profile("", "")).await;
    env.ts
        .publish(&[purchase("ord", &b.member_id, "o1", 1, t)])
        .await;
    assert_eq!(env.member("ord", &b.member_id).await.tier_code, "BASE");
    env.ts
        .publish(&[purchase("ord", &b.member_id, "o2", 1, t)])
        .await;
    let p = env.progress("ord", &b.member_id).await;
    assert_eq!(
        (p.qualifying_value, p.current_tier.unwrap().code.as_str()),
        (2, "SILVER")
    );
    assert_eq!((p.remaining_to_next, p.percent_to_next), (3, 40));
    env.ts.stop().await;
}
