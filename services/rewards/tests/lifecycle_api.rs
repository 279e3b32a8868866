//! The points lifecycle over real gRPC on both engines: pending points
//! released after the return window, expiry at local boundaries of the
//! program's time zone, idempotent reruns, expiry reminders.

#[path = "ledger_support/mod.rs"]
mod ledger_support;

use chrono::{DateTime, Duration, Utc};
use ledger_support::{PROGRAM, Rewards, line, policy, purchase};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::TestEngine;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1 as pb;

test_on_both_engines!(
    pending_points_become_available_after_the_return_window,
    a_chunk_of_releases_pays_each_members_debt_first,
    points_expire_at_the_local_month_end_and_reruns_change_nothing,
);

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

async fn pending_points_become_available_after_the_return_window(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(pb::ProgramPolicy {
        pending_days: 7,
        ..policy()
    })
    .await;
    r.t.clock().set(at("2026-03-01T02:00:00Z"));
    let bought = r
        .buy("m1", purchase("o-1", vec![line("a", "food", 10_000)]))
        .await;
    assert!(bought.pending_until.is_some());
    let b = r.balance("m1").await;
    assert_eq!((b.available, b.pending), (0, 100));
    let err = r.redeem("m1", 1, "k").await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "pending points cannot be spent"
    );
    // a refund inside the window takes the pending points back
    r.refund(pb::RecordRefundRequest {
        program_id: PROGRAM.into(),
        order_id: "o-1".into(),
        refund_id: "r1".into(),
        lines: vec![],
        amount: ledger_support::cny(2_500),
        refunded_at: None,
    })
    .await
    .unwrap();
    assert_eq!(r.balance("m1").await.pending, 75);
    r.t.clock().set(at("2026-03-08T01:59:59Z"));
    let run = r.run_job(pb::LifecycleJob::PendingRelease).await;
    assert_eq!(run.processed, 0, "one second early");
    r.t.clock().set(at("2026-03-08T02:00:00Z"));
    let run = r.run_job(pb::LifecycleJob::PendingRelease).await;
    assert!(run.ran);
    assert_eq!(run.processed, 1);
    let b = r.balance("m1").await;
    assert_eq!((b.available, b.pending), (75, 0));
    assert_eq!(
        r.run_job(pb::LifecycleJob::PendingRelease).await.processed,
        0,
        "rerun finds nothing"
    );
    let status = r
        .client()
        .get_lifecycle_job_status(r.as_staff(pb::GetLifecycleJobStatusRequest {
            program_id: PROGRAM.into(),
            job: pb::LifecycleJob::PendingRelease as i32,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(status.last_run_key.starts_with("manual-"));
    assert_eq!(r.entries("m1").await[0].kind, pb::EntryKind::Release as i32);
    r.redeem("m1", 75, "k2").await.unwrap();
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn points_expire_at_the_local_month_end_and_reruns_change_nothing(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(pb::ProgramPolicy {
        expiry_mode: pb::ExpiryMode::EndOfMonth as i32,
        expiry_months: 0,
        ..policy()
    })
    .await;
    // 2026-01-31 20:00 UTC is already February 1st in Shanghai: these
    // points expire at the end of February, Shanghai time
    r.t.clock().set(at("2026-01-31T20:00:00Z"));
    r.buy("m1", purchase("o-1", vec![line("a", "food", 10_000)]))
        .await;
    r.buy("m2", purchase("o-2", vec![line("a", "food", 5_000)]))
        .await;
    r.redeem("m1", 30, "k").await.unwrap();
    // March: points that never expire are not touched
    r.t.clock().set(at("2026-02-20T00:00:00Z"));
    let reminders = r
        .client()
        .list_expiry_reminders(r.as_staff(pb::ListExpiryRemindersRequest {
            program_id: PROGRAM.into(),
            within_days: 30,
            page: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .reminders;
    let who: Vec<_> = reminders
        .iter()
        .map(|x| (x.member_id.as_str(), x.points))
        .collect();
    assert_eq!(who, [("m1", 70), ("m2", 50)]);
    assert_eq!(r.balance("m1").await.expiring_soon, 70);
    // one second before the local month end (2026-02-28T16:00:00Z)
    r.t.clock().set(at("2026-02-28T15:59:59Z"));
    assert_eq!(r.run_job(pb::LifecycleJob::Expiry).await.processed, 0);
    assert_eq!(r.balance("m1").await.available, 70);
    r.t.clock().set(at("2026-02-28T16:00:00Z"));
    let run = r.run_job(pb::LifecycleJob::Expiry).await;
    assert_eq!(run.processed, 2);
    assert_eq!(r.balance("m1").await.available, 0);
    assert_eq!(r.balance("m2").await.available, 0);
    assert_eq!(
        r.balance("m1").await.lifetime_earned,
        100,
        "expiry does not undo earning"
    );
    assert_eq!(
        r.run_job(pb::LifecycleJob::Expiry).await.processed,
        0,
        "rerun expires nothing twice"
    );
    r.t.settle().await;
    let expired: Vec<i64> =
        r.t.outbox("rewards")
            .await
            .iter()
            .filter_map(|e| match &e.payload {
                Some(Payload::PointsExpired(x)) => Some(x.points),
                _ => None,
            })
            .collect();
    assert_eq!(expired, [70, 50]);
    assert_eq!(r.entries("m1").await[0].kind, pb::EntryKind::Expire as i32);
    r.assert_ledger_ok().await;
    let _ = Duration::zero();
    r.t.stop().await;
}

/// Several members' lots released in one chunk: each member's releases pay
/// its debt first, in lot order, and its balance moves by their sum.
async fn a_chunk_of_releases_pays_each_members_debt_first(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(pb::ProgramPolicy {
        pending_days: 7,
        clawback_policy: pb::ClawbackPolicy::NegativeBalance as i32,
        ..policy()
    })
    .await;
    r.t.clock().set(at("2026-03-01T02:00:00Z"));
    r.buy("m2", purchase("o-1", vec![line("a", "food", 10_000)]))
        .await;
    r.t.clock().set(at("2026-03-08T02:00:00Z"));
    assert_eq!(
        r.run_job(pb::LifecycleJob::PendingRelease).await.processed,
        1
    );
    r.redeem("m2", 100, "spend").await.unwrap();
    // m2: two new pending lots, then o-1 refunded after its points were
    // spent: 100 points of debt
    r.buy("m2", purchase("o-2", vec![line("a", "food", 10_000)]))
        .await;
    r.buy("m2", purchase("o-3", vec![line("a", "food", 5_000)]))
        .await;
    r.buy("m1", purchase("o-4", vec![line("a", "food", 3_000)]))
        .await;
    r.buy("m1", purchase("o-5", vec![line("a", "food", 4_000)]))
        .await;
    r.refund(pb::RecordRefundRequest {
        program_id: PROGRAM.into(),
        order_id: "o-1".into(),
        refund_id: "r1".into(),
        lines: vec![],
        amount: ledger_support::cny(10_000),
        refunded_at: None,
    })
    .await
    .unwrap();
    let b = r.balance("m2").await;
    assert_eq!((b.available, b.pending), (-100, 150));

    r.t.clock().set(at("2026-03-15T02:00:00Z"));
    assert_eq!(
        r.run_job(pb::LifecycleJob::PendingRelease).await.processed,
        4
    );
    let b = r.balance("m2").await;
    assert_eq!((b.available, b.pending), (50, 0), "the debt was paid first");
    let b = r.balance("m1").await;
    assert_eq!((b.available, b.pending), (70, 0));
    // o-2's lot paid the debt and keeps nothing, o-3's keeps its 50
    let err = r.redeem("m2", 51, "too-much").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    r.redeem("m2", 50, "all").await.unwrap();
    r.redeem("m1", 70, "all-m1").await.unwrap();
    let releases = |entries: Vec<pb::LedgerEntry>| {
        entries
            .iter()
            .filter(|e| e.kind == pb::EntryKind::Release as i32)
            .count()
    };
    assert_eq!(releases(r.entries("m2").await), 3);
    assert_eq!(releases(r.entries("m1").await), 2);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}
