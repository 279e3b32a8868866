//! Scheduled jobs (expiry, tier evaluation, scoring), one way for every
//! service. Each run of a job happens once across replicas (a lease in the
//! service's database), is resumable after a crash (a cursor checkpointed in
//! the same transaction as each chunk's effects) and reports progress.
//!
//! A job processes bounded chunks: [`Job::run_chunk`] writes one chunk's
//! effects into the transaction it is given and says where to resume. The
//! runner checks, in that same transaction, that it still holds the lease,
//! and records the cursor; a replica that lost its lease cannot commit a
//! chunk, and a chunk is never applied twice.
//!
//! A [`Schedule`] names each due run by its slot (`2026-11-24`, or the
//! interval's start); slots sort by time, and a slot at or before the last
//! finished one never runs again. Manual runs ([`JobRunner::trigger`]) are
//! keyed `manual-<uuid>` and do not consume a slot. Progress is in
//! [`status`] and in `tracing` events.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, FixedOffset, NaiveTime, Utc};

use crate::ServiceError;
use crate::db::{Db, Tx, now_micros};
use crate::server::Shutdown;

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    /// The run's slot, e.g. `2026-11-24` or `manual-<uuid>`.
    pub run_key: String,
    /// Where to resume; `None` at the start of a run.
    pub cursor: Option<String>,
}

/// What one chunk did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkOutcome {
    /// Where the next chunk starts; `None` when the run is finished.
    pub next_cursor: Option<String>,
    /// Items processed in this chunk (for progress).
    pub processed: u64,
}

/// A job: a name and a way to do one bounded chunk of a run.
#[async_trait::async_trait]
pub trait Job: Send + Sync {
    /// Unique within the service's database: the lease and progress row.
    fn name(&self) -> &str;

    /// Does the chunk of `run` starting at `run.cursor`, writing its effects
    /// into `tx` only (the runner adds the checkpoint and commits, or rolls
    /// everything back). Keep a chunk well under the lease duration, and do
    /// no slow remote calls in it: on SQLite `tx` holds the database's one
    /// writer. Do not call `db.begin()` inside (that would wait on itself).
    async fn run_chunk(&self, tx: &mut Tx, run: &RunState) -> Result<ChunkOutcome, ServiceError>;
}

/// When a job is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every interval, aligned to the Unix epoch.
    Every(Duration),
    /// Once a day at a local time in a fixed offset (a program's zone).
    DailyAt {
        time: NaiveTime,
        offset: FixedOffset,
    },
}

impl Schedule {
    /// The slot due at `now`: one run per slot.
    pub fn slot(&self, now: DateTime<Utc>) -> String {
        match self {
            Self::Every(every) => {
                let secs = i64::try_from(every.as_secs().max(1)).unwrap_or(i64::MAX);
                let start = now.timestamp().div_euclid(secs) * secs;
                DateTime::<Utc>::from_timestamp(start, 0)
                    .unwrap_or(now)
                    .format("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            }
            Self::DailyAt { time, offset } => {
                let local = now.with_timezone(offset);
                let day = if local.time() >= *time {
                    local.date_naive()
                } else {
                    local.date_naive().pred_opt().unwrap_or(local.date_naive())
                };
                day.format("%Y-%m-%d").to_string()
            }
        }
    }

    /// How often a runner should look whether a slot is due.
    fn check_interval(&self) -> Duration {
        match self {
            Self::Every(every) => {
                (*every / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
            }
            Self::DailyAt { .. } => Duration::from_secs(30),
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    pub run_key: String,
    /// Items processed by the whole run (including before a resume).
    pub processed: u64,
    /// Chunks committed by this runner.
    pub chunks: u64,
    /// True when this runner resumed a run another one had started.
    pub resumed: bool,
}

/// Progress of a job, for operators and `Get…JobStatus` RPCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    pub name: String,
    /// The replica holding (or last holding) the lease.
    pub holder: Option<String>,
    /// The run in progress or interrupted, if any.
    pub run_key: Option<String>,
    /// Where that run resumes.
    pub cursor: Option<String>,
    /// Items processed by the current run, or by the last one when idle.
    pub processed: u64,
    /// Start of the current (or last) run, unix micros.
    pub started_at: Option<i64>,
    /// The last run (scheduled or manual) that finished.
    pub last_run_key: Option<String>,
    /// The last scheduled slot that finished: slots up to it never run again.
    pub last_slot: Option<String>,
    pub last_finished_at: Option<i64>,
    /// Why the last attempt failed; cleared when a run finishes.
    pub last_error: Option<String>,
}

type Row = (
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Reads a job's progress (`None` before its first run).
pub async fn status(db: &Db, name: &str) -> Result<Option<JobStatus>, ServiceError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT holder, run_key, cursor, processed, started_at, last_run_key, last_slot, \
         last_finished_at, last_error FROM jobs WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(|r| JobStatus {
        name: name.to_owned(),
        holder: r.0,
        run_key: r.1,
        cursor: r.2,
        processed: u64::try_from(r.3).unwrap_or(0),
        started_at: r.4,
        last_run_key: r.5,
        last_slot: r.6,
        last_finished_at: r.7,
        last_error: r.8,
    }))
}

/// Run keys of manual runs start with this; scheduled slots start with a digit.
const MANUAL_PREFIX: &str = "manual-";

/// True when `slot` finished already (or a later one did: a replica whose
/// clock lags must not run yesterday's slot again).
fn slot_done(slot: &str, last_slot: Option<&str>) -> bool {
    last_slot.is_some_and(|last| last >= slot)
}

fn lease_lost(name: &str) -> ServiceError {
    ServiceError::Conflict(format!("job {name}: lease lost to another replica"))
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs jobs of one database as one lease holder (one per replica).
#[derive(Debug, Clone)]
pub struct JobRunner {
    db: Db,
    holder: String,
    lease_ttl: Duration,
}

impl JobRunner {
    /// A runner with a fresh holder id and a 30 s lease.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            holder: crate::lease::new_holder_id("jobs"),
            lease_ttl: Duration::from_secs(30),
        }
    }

    /// Lease duration: a crashed holder is replaced after it. It is renewed
    /// at every chunk, so one chunk must take less.
    #[must_use]
    pub fn with_lease(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// This runner's lease holder id.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Runs the slot due at `now` unless it (or a later one) finished or
    /// another replica holds the job. An interrupted earlier run is resumed
    /// from its cursor first. `None` when nothing ran here.
    pub async fn run_due(
        &self,
        job: &dyn Job,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<Option<RunReport>, ServiceError> {
        self.run(job, &schedule.slot(now), None).await
    }

    /// Runs the job now, outside its schedule (an RPC asked for it), with
    /// run key `manual-<uuid>`; it does not count as a scheduled slot. An
    /// interrupted run is finished first. `None` when another replica holds
    /// the job (ask again later).
    pub async fn trigger(&self, job: &dyn Job) -> Result<Option<RunReport>, ServiceError> {
        let key = format!("{MANUAL_PREFIX}{}", uuid::Uuid::now_v7());
        self.run(job, &key, None).await
    }

    /// Runs `job` on `schedule` until `shutdown`. A run stops between chunks
    /// and gives its lease up, so another replica resumes it at once.
    pub fn spawn(
        self,
        job: Arc<dyn Job>,
        schedule: Schedule,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while !shutdown.is_fired() {
                let slot = schedule.slot(Utc::now());
                if let Err(e) = self.run(job.as_ref(), &slot, Some(&shutdown)).await {
                    tracing::warn!(job = job.name(), error = %e, "scheduled run failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(schedule.check_interval()) => {}
                    () = shutdown.wait() => {}
                }
            }
        })
    }

    async fn run(
        &self,
        job: &dyn Job,
        wanted: &str,
        stop: Option<&Shutdown>,
    ) -> Result<Option<RunReport>, ServiceError> {
        let name = job.name();
        // Cheap check without the lease: most checks find nothing to do.
        if let Some(s) = status(&self.db, name).await?
            && s.run_key.is_none()
            && slot_done(wanted, s.last_slot.as_deref())
        {
            return Ok(None);
        }
        if !crate::lease::try_acquire(&self.db, name, &self.holder, self.lease_ttl).await? {
            return Ok(None);
        }
        let result = self.run_leased(job, wanted, stop).await;
        if let Err(e) = &result {
            tracing::warn!(job = name, error = %e, "job run failed; it resumes from its last checkpoint");
            if let Err(e2) = self.record_error(name, &e.to_string()).await {
                tracing::warn!(job = name, error = %e2, "could not record the job's error");
            }
        }
        if let Err(e) = crate::lease::release(&self.db, name, &self.holder).await {
            // it expires by itself
            tracing::warn!(job = name, error = %e, "could not release the job lease");
        }
        result
    }

    /// Holding the lease: resume an interrupted run if there is one, then
    /// run `wanted` unless it is done.
    async fn run_leased(
        &self,
        job: &dyn Job,
        wanted: &str,
        stop: Option<&Shutdown>,
    ) -> Result<Option<RunReport>, ServiceError> {
        let name = job.name();
        let mut report = None;
        // at most two runs: an interrupted one, then the wanted one
        for _ in 0..2 {
            let s = status(&self.db, name)
                .await?
                .ok_or_else(|| lease_lost(name))?;
            let run = match s.run_key {
                Some(run_key) => {
                    tracing::info!(job = name, run = %run_key, processed = s.processed, "resuming interrupted run");
                    Run {
                        state: RunState {
                            run_key,
                            cursor: s.cursor,
                        },
                        processed: s.processed,
                        resumed: true,
                    }
                }
                None if report.is_some() || slot_done(wanted, s.last_slot.as_deref()) => {
                    return Ok(report);
                }
                None => self.start(name, wanted).await?,
            };
            let Some(done) = self.run_chunks(job, run, stop).await? else {
                return Ok(None); // stopped by shutdown; resumable
            };
            let is_wanted = done.run_key == wanted;
            report = Some(done);
            if is_wanted {
                break;
            }
        }
        Ok(report)
    }

    async fn start(&self, name: &str, run_key: &str) -> Result<Run, ServiceError> {
        let mut tx = self.db.begin().await?;
        self.renew(&mut tx, name).await?;
        sqlx::query(
            "UPDATE jobs SET run_key = $1, cursor = NULL, processed = 0, started_at = $2, \
             updated_at = $2 WHERE name = $3 AND holder = $4",
        )
        .bind(run_key)
        .bind(now_micros())
        .bind(name)
        .bind(&self.holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(job = name, run = %run_key, "job run started");
        Ok(Run {
            state: RunState {
                run_key: run_key.to_owned(),
                cursor: None,
            },
            processed: 0,
            resumed: false,
        })
    }

    /// Runs chunks to the end of the run, each in its own transaction with
    /// its checkpoint. `None` when `stop` fired between chunks.
    async fn run_chunks(
        &self,
        job: &dyn Job,
        mut run: Run,
        stop: Option<&Shutdown>,
    ) -> Result<Option<RunReport>, ServiceError> {
        let name = job.name();
        let mut chunks = 0;
        loop {
            if stop.is_some_and(Shutdown::is_fired) {
                tracing::info!(job = name, run = %run.state.run_key, processed = run.processed, "stopping between chunks");
                return Ok(None);
            }
            let mut tx = self.db.begin().await?;
            // Renewing locks the job's row until commit: no other replica
            // can take the lease while this chunk is in flight.
            self.renew(&mut tx, name).await?;
            let outcome = job.run_chunk(&mut tx, &run.state).await?;
            run.processed += outcome.processed;
            chunks += 1;
            self.checkpoint(&mut tx, name, &run, outcome.next_cursor.as_deref())
                .await?;
            tx.commit().await?;
            tracing::debug!(job = name, run = %run.state.run_key, processed = run.processed, "chunk committed");
            if outcome.next_cursor.is_none() {
                tracing::info!(job = name, run = %run.state.run_key, processed = run.processed, chunks, "job run finished");
                return Ok(Some(RunReport {
                    run_key: run.state.run_key,
                    processed: run.processed,
                    chunks,
                    resumed: run.resumed,
                }));
            }
            run.state.cursor = outcome.next_cursor;
        }
    }

    /// Records where the run resumes (or that it finished) in the chunk's
    /// transaction, only while this runner holds the lease: a replica that
    /// lost it cannot commit a chunk.
    async fn checkpoint(
        &self,
        tx: &mut Tx,
        name: &str,
        run: &Run,
        next_cursor: Option<&str>,
    ) -> Result<(), ServiceError> {
        let now = now_micros();
        let done = if let Some(cursor) = next_cursor {
            sqlx::query(
                "UPDATE jobs SET cursor = $1, processed = $2, updated_at = $3 \
                 WHERE name = $4 AND holder = $5",
            )
            .bind(cursor)
            .bind(as_i64(run.processed))
            .bind(now)
            .bind(name)
            .bind(&self.holder)
            .execute(&mut **tx)
            .await?
        } else {
            let key = &run.state.run_key;
            let slot = (!key.starts_with(MANUAL_PREFIX)).then_some(key.as_str());
            sqlx::query(
                "UPDATE jobs SET run_key = NULL, cursor = NULL, processed = $1, last_run_key = $2, \
                 last_slot = COALESCE($3, last_slot), last_finished_at = $4, last_error = NULL, \
                 updated_at = $4 WHERE name = $5 AND holder = $6",
            )
            .bind(as_i64(run.processed))
            .bind(key)
            .bind(slot)
            .bind(now)
            .bind(name)
            .bind(&self.holder)
            .execute(&mut **tx)
            .await?
        };
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(lease_lost(name))
        }
    }

    /// Extends the lease inside `tx`, or fails if another replica took it
    /// (then nothing of the transaction commits). An expired lease that
    /// nobody took is still ours: taking it would have changed the holder.
    async fn renew(&self, tx: &mut Tx, name: &str) -> Result<(), ServiceError> {
        let now = now_micros();
        let until =
            now.saturating_add(i64::try_from(self.lease_ttl.as_micros()).unwrap_or(i64::MAX));
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = $1, updated_at = $2 WHERE name = $3 AND holder = $4",
        )
        .bind(until)
        .bind(now)
        .bind(name)
        .bind(&self.holder)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 1 {
            Ok(())
        } else {
            Err(lease_lost(name))
        }
    }

    /// Notes a failed attempt for [`status`] (only while holding the lease,
    /// so a replica that lost it does not overwrite the new holder's state).
    async fn record_error(&self, name: &str, error: &str) -> Result<(), sqlx::Error> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE jobs SET last_error = $1, updated_at = $2 WHERE name = $3 AND holder = $4",
        )
        .bind(error)
        .bind(now_micros())
        .bind(name)
        .bind(&self.holder)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
}

/// A run in this runner's hands.
struct Run {
    state: RunState,
    processed: u64,
    resumed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_slots_follow_the_local_clock() {
        let shanghai = FixedOffset::east_opt(8 * 3600).unwrap();
        let s = Schedule::DailyAt {
            time: NaiveTime::from_hms_opt(2, 0, 0).unwrap(),
            offset: shanghai,
        };
        // 17:59 UTC = 01:59 next day in Shanghai: still the previous day's slot
        let before: DateTime<Utc> = "2026-11-23T17:59:00Z".parse().unwrap();
        assert_eq!(s.slot(before), "2026-11-23");
        let after: DateTime<Utc> = "2026-11-23T18:00:00Z".parse().unwrap();
        assert_eq!(s.slot(after), "2026-11-24");
    }

    #[test]
    fn interval_slots_are_aligned() {
        let s = Schedule::Every(Duration::from_mins(15));
        let t: DateTime<Utc> = "2026-11-24T10:14:59Z".parse().unwrap();
        assert_eq!(s.slot(t), "2026-11-24T10:00:00Z");
        let t: DateTime<Utc> = "2026-11-24T10:15:00Z".parse().unwrap();
        assert_eq!(s.slot(t), "2026-11-24T10:15:00Z");
    }
}
