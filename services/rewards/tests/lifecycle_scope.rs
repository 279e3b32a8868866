//! Lifecycle jobs triggered over gRPC on both engines: a run triggered by a
//! program's admin covers that program only (another program's admin is
//! refused, other programs are untouched), and expire entries record which
//! lots they emptied, as debits do.

#[path = "ledger_support/mod.rs"]
mod ledger_support;

use chrono::{DateTime, Utc};
use ledger_support::{PROGRAM, Rewards, line, policy, purchase};
use loyalty_common::test_on_both_engines;
use loyalty_common::testing::{TestEngine, backend, member, staff};
use loyalty_proto::loyalty::rewards::v1 as pb;
use tonic::Code;

test_on_both_engines!(
    a_triggered_run_covers_the_callers_program_only,
    expire_entries_record_the_lots_they_emptied,
    a_run_in_small_chunks_goes_on_from_each_chunks_last_lot,
);

const OTHER: &str = "prog-2";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn lifecycle_policy(program: &str) -> pb::ProgramPolicy {
    pb::ProgramPolicy {
        program_id: program.into(),
        pending_days: 7,
        expiry_mode: pb::ExpiryMode::EndOfMonth as i32,
        expiry_months: 0,
        ..policy()
    }
}

async fn run(
    r: &Rewards,
    caller_program: &str,
    program: &str,
    job: pb::LifecycleJob,
) -> Result<pb::RunLifecycleJobResponse, tonic::Status> {
    r.client()
        .run_lifecycle_job(r.t.request(
            pb::RunLifecycleJobRequest {
                program_id: program.into(),
                job: job as i32,
            },
            &staff(caller_program),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn balance(r: &Rewards, program: &str, member_id: &str) -> pb::Balance {
    r.client()
        .get_balance(r.t.request(
            pb::GetBalanceRequest {
                program_id: program.into(),
                member_id: member_id.into(),
            },
            &member(program, member_id),
        ))
        .await
        .unwrap()
        .into_inner()
        .balance
        .unwrap()
}

async fn a_triggered_run_covers_the_callers_program_only(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(lifecycle_policy(PROGRAM)).await;
    r.client()
        .set_program_policy(r.t.request(
            pb::SetProgramPolicyRequest {
                policy: Some(lifecycle_policy(OTHER)),
            },
            &staff(OTHER),
        ))
        .await
        .unwrap();
    // 2026-02-01 04:00 in Shanghai: pending a week, expiring at February's end
    r.t.clock().set(at("2026-01-31T20:00:00Z"));
    r.buy("m1", purchase("o-1", vec![line("a", "food", 10_000)]))
        .await;
    r.client()
        .record_purchase(r.t.request(
            pb::RecordPurchaseRequest {
                program_id: OTHER.into(),
                member_id: "m1".into(),
                purchase: Some(purchase("o-1", vec![line("a", "food", 5_000)])),
            },
            &backend(OTHER),
        ))
        .await
        .unwrap();
    r.t.clock().set(at("2026-02-08T00:00:00Z"));
    for job in [pb::LifecycleJob::PendingRelease, pb::LifecycleJob::Expiry] {
        let err = run(&r, PROGRAM, OTHER, job).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::PermissionDenied,
            "an admin of {PROGRAM} may not run {job:?} for {OTHER}"
        );
    }
    let released = run(&r, PROGRAM, PROGRAM, pb::LifecycleJob::PendingRelease)
        .await
        .unwrap();
    assert_eq!(released.processed, 1, "the caller's lot only");
    assert_eq!(balance(&r, PROGRAM, "m1").await.available, 100);
    let other = balance(&r, OTHER, "m1").await;
    assert_eq!((other.available, other.pending), (0, 50), "untouched");
    // the status of a program's runs is its own
    let status = |program: &'static str| {
        let req = r.t.request(
            pb::GetLifecycleJobStatusRequest {
                program_id: program.into(),
                job: pb::LifecycleJob::PendingRelease as i32,
            },
            &staff(program),
        );
        let mut c = r.client();
        async move { c.get_lifecycle_job_status(req).await.unwrap().into_inner() }
    };
    assert_eq!(status(PROGRAM).await.last_run_key, released.run_key);
    assert!(status(OTHER).await.last_run_key.is_empty());

    // past February's end (Shanghai): expiry for the caller's program only
    r.t.clock().set(at("2026-02-28T16:00:00Z"));
    let expired = run(&r, PROGRAM, PROGRAM, pb::LifecycleJob::Expiry)
        .await
        .unwrap();
    assert_eq!(expired.processed, 1);
    assert_eq!(balance(&r, PROGRAM, "m1").await.available, 0);
    assert_eq!(balance(&r, OTHER, "m1").await.pending, 50, "untouched");
    // the other program's admin runs its own
    let theirs = run(&r, OTHER, OTHER, pb::LifecycleJob::Expiry)
        .await
        .unwrap();
    assert_eq!(theirs.processed, 1);
    assert_eq!(balance(&r, OTHER, "m1").await.pending, 0);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

async fn expire_entries_record_the_lots_they_emptied(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(pb::ProgramPolicy {
        pending_days: 0,
        ..lifecycle_policy(PROGRAM)
    })
    .await;
    r.t.clock().set(at("2026-01-31T20:00:00Z"));
    r.buy("m1", purchase("o-1", vec![line("a", "food", 10_000)]))
        .await;
    r.t.clock().set(at("2026-01-31T21:00:00Z"));
    r.buy("m1", purchase("o-2", vec![line("a", "food", 5_000)]))
        .await;
    r.buy("m2", purchase("o-3", vec![line("a", "food", 2_000)]))
        .await;
    // FIFO: the redemption takes 30 of the first lot
    let redeemed = r.redeem("m1", 30, "k").await.unwrap();
    let first_lot = redeemed.lots[0].lot_id.clone();
    r.t.clock().set(at("2026-02-28T16:00:00Z"));
    let run1 = r.run_job(pb::LifecycleJob::Expiry).await;
    assert_eq!(run1.processed, 3, "three lots emptied");
    let expire = r.entries("m1").await.remove(0);
    assert_eq!(expire.kind, pb::EntryKind::Expire as i32);
    assert_eq!(expire.points, -120);
    let mut lots: Vec<(String, i64)> = expire
        .lots
        .iter()
        .map(|l| (l.lot_id.clone(), l.points))
        .collect();
    lots.sort_by_key(|l| l.1);
    assert_eq!(lots.len(), 2, "{lots:?}");
    assert_eq!(lots[1], (first_lot.clone(), 70), "what the first lot held");
    assert_eq!(lots[0].1, 50, "all of the second lot");
    assert_ne!(lots[0].0, first_lot);
    let m2 = r.entries("m2").await.remove(0);
    assert_eq!(
        m2.lots.iter().map(|l| l.points).collect::<Vec<_>>(),
        [20],
        "each member's entry records its own lots"
    );
    // idempotent: a rerun expires nothing and writes nothing
    assert_eq!(r.run_job(pb::LifecycleJob::Expiry).await.processed, 0);
    assert_eq!(r.entries("m1").await.len(), 4);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}

/// Expiry in chunks of 3 lots: each chunk starts after the last lot the one
/// before expired (the run's cursor), every due lot of every member is
/// expired once, a member whose lots straddle chunks gets an entry per
/// chunk, and the balances and the ledger agree.
async fn a_run_in_small_chunks_goes_on_from_each_chunks_last_lot(engine: TestEngine) {
    let r = Rewards::start(engine).await;
    r.set_policy(pb::ProgramPolicy {
        pending_days: 0,
        ..lifecycle_policy(PROGRAM)
    })
    .await;
    r.t.clock().set(at("2026-01-31T12:00:00Z"));
    let mut order = 0;
    for (member_id, lots) in [("m1", 4), ("m2", 3), ("m3", 2)] {
        for _ in 0..lots {
            order += 1;
            r.buy(
                member_id,
                purchase(&format!("o-{order}"), vec![line("a", "food", 1_000)]),
            )
            .await;
        }
    }
    r.redeem("m1", 15, "k").await.unwrap();
    // January's lots are due at the local month end; a February lot is not
    r.t.clock().set(at("2026-02-01T12:00:00Z"));
    r.buy("m2", purchase("o-late", vec![line("a", "food", 1_000)]))
        .await;
    r.t.clock().set(at("2026-02-10T00:00:00Z"));
    let rt = r.t.rt("rewards").clone();
    let report = loyalty_rewards::bench_support::run_points_expiry_in_chunks(&rt, Some(3))
        .await
        .unwrap()
        .expect("the run");
    // nine lots, of which the redemption emptied m1's first
    assert_eq!(report.processed, 8, "every due lot holding points, once");
    assert!(report.chunks >= 3, "{} chunks", report.chunks);
    for (member_id, left) in [("m1", 0), ("m2", 10), ("m3", 0)] {
        let b = balance(&r, PROGRAM, member_id).await;
        assert_eq!(b.available, left, "{member_id}");
    }
    let expired = |entries: Vec<pb::LedgerEntry>| -> i64 {
        entries
            .iter()
            .filter(|e| e.kind == pb::EntryKind::Expire as i32)
            .map(|e| e.points)
            .sum()
    };
    assert_eq!(expired(r.entries("m1").await), -25);
    assert_eq!(expired(r.entries("m2").await), -30);
    assert_eq!(expired(r.entries("m3").await), -20);
    let rerun = loyalty_rewards::bench_support::run_points_expiry_in_chunks(&rt, Some(3))
        .await
        .unwrap()
        .expect("the rerun");
    assert_eq!(rerun.processed, 0);
    r.assert_ledger_ok().await;
    r.t.stop().await;
}
