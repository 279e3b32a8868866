//! Scheduled jobs on both engines: each run happens once across racing
//! runners, an interrupted run resumes from its checkpoint with every item
//! processed exactly once, a finished slot does not run again, progress is
//! reported.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use loyalty_common::ServiceError;
use loyalty_common::db::{Db, Tx};
use loyalty_common::jobs::{ChunkOutcome, Job, JobRunner, RunState, Schedule, status};
use loyalty_common::server::Shutdown;
use loyalty_common::testing::{TestDb, TestEngine};

const ITEMS: i64 = 95;

/// Marks items 10 at a time, in id order; cursor = last id done.
struct MarkItems {
    pause: Duration,
    /// Fails once, after writing its effects, on the chunk starting here.
    fail_after: Mutex<Option<i64>>,
}

impl MarkItems {
    fn new(pause: Duration) -> Self {
        Self {
            pause,
            fail_after: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl Job for MarkItems {
    fn name(&self) -> &'static str {
        "mark-items"
    }

    async fn run_chunk(&self, tx: &mut Tx, run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        tokio::time::sleep(self.pause).await;
        let after: i64 = run.cursor.as_deref().map_or(0, |c| c.parse().unwrap());
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM items WHERE id > $1 ORDER BY id LIMIT 10")
                .bind(after)
                .fetch_all(&mut **tx)
                .await?;
        for id in &ids {
            sqlx::query("UPDATE items SET runs = runs + 1 WHERE id = $1")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        if after > 0
            && self
                .fail_after
                .lock()
                .unwrap()
                .take_if(|f| *f == after)
                .is_some()
        {
            return Err(ServiceError::Unavailable("injected failure".into()));
        }
        Ok(ChunkOutcome {
            next_cursor: if ids.len() < 10 {
                None
            } else {
                ids.last().map(ToString::to_string)
            },
            processed: ids.len() as u64,
        })
    }
}

async fn setup(engine: TestEngine) -> TestDb {
    let db = engine.database(&[]).await;
    let mut tx = db.begin().await.unwrap();
    sqlx::query("CREATE TABLE items (id BIGINT PRIMARY KEY, runs BIGINT NOT NULL)")
        .execute(&mut *tx)
        .await
        .unwrap();
    for id in 1..=ITEMS {
        sqlx::query("INSERT INTO items (id, runs) VALUES ($1, 0)")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    db
}

async fn runs_per_item(db: &Db) -> Vec<i64> {
    sqlx::query_scalar("SELECT runs FROM items ORDER BY id")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

fn daily() -> Schedule {
    Schedule::Every(Duration::from_hours(24))
}

async fn racing_runners_run_the_slot_once(engine: TestEngine) {
    let db = setup(engine).await;
    let job = Arc::new(MarkItems::new(Duration::from_millis(2)));
    let now = Utc::now();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let runner = JobRunner::new(db.db.clone());
        let job = job.clone();
        handles.push(tokio::spawn(async move {
            runner.run_due(job.as_ref(), &daily(), now).await
        }));
    }
    let mut reports = Vec::new();
    for h in handles {
        if let Some(r) = h.await.unwrap().unwrap() {
            reports.push(r);
        }
    }
    assert_eq!(
        reports.len(),
        1,
        "exactly one runner ran the slot: {reports:?}"
    );
    assert_eq!(reports[0].processed, ITEMS as u64);
    assert!(runs_per_item(&db).await.iter().all(|r| *r == 1));
}

async fn a_finished_slot_does_not_run_again(engine: TestEngine) {
    let db = setup(engine).await;
    let job = MarkItems::new(Duration::ZERO);
    let runner = JobRunner::new(db.db.clone());
    let now = Utc::now();
    assert!(runner.run_due(&job, &daily(), now).await.unwrap().is_some());
    assert!(runner.run_due(&job, &daily(), now).await.unwrap().is_none());
    let other = JobRunner::new(db.db.clone());
    assert!(other.run_due(&job, &daily(), now).await.unwrap().is_none());
    assert!(runs_per_item(&db).await.iter().all(|r| *r == 1));
    // the next slot runs
    let tomorrow = now + chrono::Duration::days(1);
    assert!(
        runner
            .run_due(&job, &daily(), tomorrow)
            .await
            .unwrap()
            .is_some()
    );
    assert!(runs_per_item(&db).await.iter().all(|r| *r == 2));
    let s = status(&db, "mark-items").await.unwrap().unwrap();
    assert_eq!(s.last_run_key.unwrap(), daily().slot(tomorrow));
    assert_eq!(s.processed, ITEMS as u64);
    assert!(s.run_key.is_none() && s.last_finished_at.is_some());
}

async fn a_crashed_run_resumes_from_its_checkpoint(engine: TestEngine) {
    let db = setup(engine).await;
    let job = MarkItems::new(Duration::from_millis(40));
    let now = Utc::now();
    let first = JobRunner::new(db.db.clone()).with_lease(Duration::from_millis(400));
    // The process "dies" mid-run: its future is dropped between chunks.
    let _ = tokio::time::timeout(
        Duration::from_millis(150),
        first.run_due(&job, &daily(), now),
    )
    .await;
    let s = status(&db, "mark-items").await.unwrap().unwrap();
    assert!(s.run_key.is_some(), "the run is in progress");
    assert!(
        s.processed > 0 && s.processed < ITEMS as u64,
        "progress reported: {s:?}"
    );
    assert_eq!(s.holder.as_deref(), Some(first.holder()));

    let second = JobRunner::new(db.db.clone());
    assert!(
        second.run_due(&job, &daily(), now).await.unwrap().is_none(),
        "the dead holder's lease has not expired yet"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    let report = second.run_due(&job, &daily(), now).await.unwrap().unwrap();
    assert!(report.resumed);
    assert_eq!(report.processed, ITEMS as u64);
    assert!(report.chunks < 10, "resumed, not restarted: {report:?}");
    assert!(
        runs_per_item(&db).await.iter().all(|r| *r == 1),
        "every item processed exactly once across the crash"
    );
}

async fn manual_trigger_runs_beside_the_schedule(engine: TestEngine) {
    let db = setup(engine).await;
    let job = MarkItems::new(Duration::ZERO);
    let runner = JobRunner::new(db.db.clone());
    let report = runner.trigger(&job).await.unwrap().unwrap();
    assert!(report.run_key.starts_with("manual-"));
    assert!(
        runner
            .run_due(&job, &daily(), Utc::now())
            .await
            .unwrap()
            .is_some()
    );
    assert!(runs_per_item(&db).await.iter().all(|r| *r == 2));
}

async fn a_manual_run_does_not_consume_the_slot_and_a_lagging_clock_does_not_rerun(
    engine: TestEngine,
) {
    let db = setup(engine).await;
    let job = MarkItems::new(Duration::ZERO);
    let runner = JobRunner::new(db.db.clone());
    let now = Utc::now();
    runner.run_due(&job, &daily(), now).await.unwrap().unwrap();
    runner.trigger(&job).await.unwrap().unwrap();
    assert!(
        runner.run_due(&job, &daily(), now).await.unwrap().is_none(),
        "the slot stays done after a manual run"
    );
    let yesterday = now - chrono::Duration::days(1);
    assert!(
        runner
            .run_due(&job, &daily(), yesterday)
            .await
            .unwrap()
            .is_none(),
        "a replica whose clock lags does not run an earlier slot"
    );
    assert!(runs_per_item(&db).await.iter().all(|r| *r == 2));
    let s = status(&db, "mark-items").await.unwrap().unwrap();
    assert!(s.last_run_key.unwrap().starts_with("manual-"));
    assert_eq!(s.last_slot.unwrap(), daily().slot(now));
}

async fn a_failed_chunk_rolls_back_and_the_run_resumes(engine: TestEngine) {
    let db = setup(engine).await;
    let job = MarkItems::new(Duration::ZERO);
    *job.fail_after.lock().unwrap() = Some(30);
    let runner = JobRunner::new(db.db.clone());
    let now = Utc::now();
    let err = runner.run_due(&job, &daily(), now).await.unwrap_err();
    assert!(matches!(err, ServiceError::Unavailable(_)), "{err:?}");
    let s = status(&db, "mark-items").await.unwrap().unwrap();
    assert_eq!(
        s.cursor.as_deref(),
        Some("30"),
        "checkpoint before the failure"
    );
    assert_eq!(s.processed, 30);
    assert!(s.last_error.unwrap().contains("injected failure"));
    assert_eq!(s.holder, None, "the lease was given up");
    let runs = runs_per_item(&db).await;
    assert!(
        runs[..30].iter().all(|r| *r == 1) && runs[30..].iter().all(|r| *r == 0),
        "the failed chunk's effects rolled back"
    );
    // any replica picks it up at once from the checkpoint
    let report = JobRunner::new(db.db.clone())
        .run_due(&job, &daily(), now)
        .await
        .unwrap()
        .unwrap();
    assert!(report.resumed && report.chunks == 7, "{report:?}");
    assert!(runs_per_item(&db).await.iter().all(|r| *r == 1));
    let s = status(&db, "mark-items").await.unwrap().unwrap();
    assert!(s.last_error.is_none() && s.run_key.is_none());
}

/// Chunks slower than the lease: replicas take the job from each other
/// between chunks (on SQLite; on PostgreSQL the row lock a chunk holds makes
/// a waiting replica see the renewed lease), and a replica that lost the
/// lease never commits its chunk.
async fn replicas_stealing_an_expired_lease_process_each_item_once(engine: TestEngine) {
    let db = setup(engine).await;
    let job = Arc::new(MarkItems::new(Duration::from_millis(120)));
    let now = Utc::now();
    let slot = daily().slot(now);
    let mut handles = Vec::new();
    for _ in 0..2 {
        let runner = JobRunner::new(db.db.clone()).with_lease(Duration::from_millis(80));
        let (job, db, slot) = (job.clone(), db.db.clone(), slot.clone());
        handles.push(tokio::spawn(async move {
            let mut lost = 0;
            loop {
                if let Err(e) = runner.run_due(job.as_ref(), &daily(), now).await {
                    assert!(matches!(e, ServiceError::Conflict(_)), "{e:?}");
                    lost += 1;
                }
                let s = status(&db, "mark-items").await.unwrap().unwrap();
                if s.last_slot.as_deref() == Some(slot.as_str()) {
                    return lost;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let mut lost = 0;
    for h in handles {
        lost += h.await.unwrap();
    }
    assert!(
        runs_per_item(&db).await.iter().all(|r| *r == 1),
        "every item exactly once ({lost} chunks refused for a lost lease)"
    );
}

async fn shutdown_stops_between_chunks_and_frees_the_job(engine: TestEngine) {
    let db = setup(engine).await;
    let job = Arc::new(MarkItems::new(Duration::from_millis(30)));
    let (trigger, shutdown) = Shutdown::new();
    let handle = JobRunner::new(db.db.clone()).spawn(job.clone(), daily(), shutdown);
    tokio::time::sleep(Duration::from_millis(100)).await;
    trigger.fire();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("the runner stops promptly")
        .unwrap();
    let s = status(&db, "mark-items").await.unwrap().unwrap();
    assert!(
        s.run_key.is_some() && s.processed > 0,
        "stopped mid-run: {s:?}"
    );
    assert_eq!(s.holder, None, "the lease was given up");
    let report = JobRunner::new(db.db.clone())
        .run_due(job.as_ref(), &daily(), Utc::now())
        .await
        .unwrap()
        .expect("another replica resumes without waiting for the lease to expire");
    assert!(report.resumed);
    assert!(runs_per_item(&db).await.iter().all(|r| *r == 1));
}

loyalty_common::test_on_both_engines!(
    racing_runners_run_the_slot_once,
    a_finished_slot_does_not_run_again,
    a_crashed_run_resumes_from_its_checkpoint,
    manual_trigger_runs_beside_the_schedule,
    a_manual_run_does_not_consume_the_slot_and_a_lagging_clock_does_not_rerun,
    a_failed_chunk_rolls_back_and_the_run_resumes,
    replicas_stealing_an_expired_lease_process_each_item_once,
    shutdown_stops_between_chunks_and_frees_the_job,
);
