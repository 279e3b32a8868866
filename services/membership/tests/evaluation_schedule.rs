//! When tier reviews happen: the scheduled run reviews a program's members
//! as soon as their evaluation date starts in the program's own time zone
//! (Shanghai's day starts at 16:00 UTC, New York's at 04:00 or 05:00 UTC),
//! and RunTierEvaluation reviews the caller's program only.
// amounts are written as <yuan>_<fen> minor units (1_000_00 = 1000.00)
#![allow(clippy::inconsistent_digit_grouping)]

mod common;

use chrono::{DateTime, Utc};
use common::{Env, profile, program, purchase};
use loyalty_common::jobs::JobRunner;
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, staff};
use loyalty_membership::evaluation_job::{TierEvaluationJob, schedule};
use loyalty_proto::loyalty::membership::v1 as pb;
use tonic::Code;

test_on_both_engines!(
    scheduled_run_reviews_each_program_when_its_own_day_starts,
    run_tier_evaluation_reviews_the_callers_program_only,
);

/// Two programs, Shanghai ("sh") and New York ("ny"), each with one SILVER
/// member whose review is due on 2026-06-01 local, with no spend in the
/// window: the review lowers them to BASE.
async fn two_zones(env: &Env) -> (String, String) {
    env.at("2025-03-01T12:00:00Z");
    env.create_program(program("sh")).await;
    let mut ny = program("ny");
    ny.time_zone = "America/New_York".into();
    env.create_program(ny).await;
    let a = env.enroll("sh", "u1", profile("+8613800000001", "")).await;
    let b = env.enroll("ny", "u1", profile("+8613800000002", "")).await;
    let at: DateTime<Utc> = "2025-03-01T12:00:00Z".parse().unwrap();
    env.ts
        .publish(&[
            purchase("sh", &a.member_id, "o1", 2_000_00, at),
            purchase("ny", &b.member_id, "o2", 2_000_00, at),
        ])
        .await;
    env.ts.settle().await;
    assert_eq!(env.member("sh", &a.member_id).await.tier_code, "SILVER");
    assert_eq!(env.member("ny", &b.member_id).await.tier_code, "SILVER");
    // local midnights starting 2026-06-01: 16:00 UTC the day before in
    // Shanghai, 04:00 UTC in New York (daylight time)
    let db = &env.ts.rt("membership").db;
    for (id, due) in [
        (&a.member_id, "2026-05-31T16:00:00Z"),
        (&b.member_id, "2026-06-01T04:00:00Z"),
    ] {
        let due: DateTime<Utc> = due.parse().unwrap();
        sqlx::query("UPDATE members SET next_evaluation_at = $1 WHERE member_id = $2")
            .bind(due.timestamp_micros())
            .bind(id)
            .execute(db.pool())
            .await
            .unwrap();
    }
    (a.member_id, b.member_id)
}

/// One scheduled run at the decision clock's instant, as the service's
/// runner does it.
async fn scheduled_run(env: &Env, at: &str) -> u64 {
    let now = env.at(at);
    let rt = env.ts.rt("membership");
    let job = TierEvaluationJob::new(rt.clone());
    let report = JobRunner::new(rt.db.clone())
        .run_due(&job, &schedule(), now)
        .await
        .unwrap()
        .expect("the slot ran");
    env.ts.settle().await;
    report.processed
}

async fn scheduled_run_reviews_each_program_when_its_own_day_starts(engine: TestEngine) {
    let env = Env::start(engine).await;
    let (sh, ny) = two_zones(&env).await;

    // 23:50 in Shanghai: nobody is due yet
    assert_eq!(scheduled_run(&env, "2026-05-31T15:50:00Z").await, 0);
    assert_eq!(env.member("sh", &sh).await.tier_code, "SILVER");
    // 00:10 in Shanghai (16:10 UTC, long before UTC midnight)
    assert_eq!(scheduled_run(&env, "2026-05-31T16:10:00Z").await, 1);
    assert_eq!(env.member("sh", &sh).await.tier_code, "BASE");
    assert_eq!(env.member("ny", &ny).await.tier_code, "SILVER");
    // UTC midnight is 20:00 in New York: still not its day
    assert_eq!(scheduled_run(&env, "2026-06-01T00:10:00Z").await, 0);
    assert_eq!(env.member("ny", &ny).await.tier_code, "SILVER");
    // 00:10 in New York
    assert_eq!(scheduled_run(&env, "2026-06-01T04:10:00Z").await, 1);
    assert_eq!(env.member("ny", &ny).await.tier_code, "BASE");
    let reasons: Vec<String> = env
        .tier_events(&sh)
        .await
        .into_iter()
        .chain(env.tier_events(&ny).await)
        .map(|e| e.2)
        .filter(|r| r == "evaluation_downgrade")
        .collect();
    assert_eq!(reasons.len(), 2);
    env.ts.stop().await;
}

async fn run_tier_evaluation_reviews_the_callers_program_only(engine: TestEngine) {
    let env = Env::start(engine).await;
    let (sh, ny) = two_zones(&env).await;
    env.at("2026-06-02T00:00:00Z"); // both due
    let run = env.evaluate("sh").await;
    assert!(run.ran);
    assert_eq!(run.evaluated, 1);
    assert_eq!(env.member("sh", &sh).await.tier_code, "BASE");
    assert_eq!(env.member("ny", &ny).await.tier_code, "SILVER");

    // an administrator of another program cannot run it for this one
    let err = env
        .client
        .clone()
        .run_tier_evaluation(env.ts.request(
            pb::RunTierEvaluationRequest {
                program_id: "ny".into(),
            },
            &staff("sh"),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(env.member("ny", &ny).await.tier_code, "SILVER");
    let err = env
        .client
        .clone()
        .run_tier_evaluation(env.req(
            pb::RunTierEvaluationRequest {
                program_id: "nope".into(),
            },
            "nope",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let run = env.evaluate("ny").await;
    assert_eq!(run.evaluated, 1);
    assert_eq!(env.member("ny", &ny).await.tier_code, "BASE");
    env.ts.stop().await;
}
