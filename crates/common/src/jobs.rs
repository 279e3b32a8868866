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
    fn name(&self) -> &str;
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
    pub holder: Option<String>,
    /// The run in progress, if any.
    pub run_key: Option<String>,
    pub cursor: Option<String>,
    pub processed: u64,
    pub started_at: Option<i64>,
    pub last_run_key: Option<String>,
    pub last_finished_at: Option<i64>,
    pub last_error: Option<String>,
}

type Row = (
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

/// Reads a job's progress.
pub async fn status(db: &Db, name: &str) -> Result<Option<JobStatus>, ServiceError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT holder, run_key, cursor, processed, started_at, last_run_key, last_finished_at, last_error \
         FROM jobs WHERE name = $1",
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
        last_finished_at: r.6,
        last_error: r.7,
    }))
}

fn lease_lost(name: &str) -> ServiceError {
    ServiceError::Conflict(format!("job {name}: lease lost to another replica"))
}

/// Runs jobs of one database, as one holder.
#[derive(Debug, Clone)]
pub struct JobRunner {
    db: Db,
    holder: String,
    lease_ttl: Duration,
}

impl JobRunner {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            holder: crate::lease::new_holder_id("jobs"),
            lease_ttl: Duration::from_secs(30),
        }
    }

    /// Lease duration; a crashed holder is replaced after it (renewed at
    /// every chunk, so a chunk must take less).
    #[must_use]
    pub fn with_lease(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Runs the slot due at `now` if it has not run yet and no other replica
    /// is running the job. An interrupted earlier run is resumed first.
    pub async fn run_due(
        &self,
        job: &dyn Job,
        schedule: &Schedule,
        now: DateTime<Utc>,
    ) -> Result<Option<RunReport>, ServiceError> {
        self.run(job, &schedule.slot(now)).await
    }

    /// Runs the job now, outside its schedule (e.g. an RPC asked for it).
    pub async fn trigger(&self, job: &dyn Job) -> Result<Option<RunReport>, ServiceError> {
        self.run(job, &format!("manual-{}", uuid::Uuid::now_v7()))
            .await
    }

    async fn run(&self, job: &dyn Job, slot: &str) -> Result<Option<RunReport>, ServiceError> {
        let name = job.name();
        if let Some(s) = status(&self.db, name).await?
            && s.last_run_key.as_deref() == Some(slot)
            && s.run_key.is_none()
        {
            return Ok(None);
        }
        if !crate::lease::try_acquire(&self.db, name, &self.holder, self.lease_ttl).await? {
            return Ok(None);
        }
        let result = self.run_leased(job, slot).await;
        if let Err(e) = &result {
            tracing::warn!(job = name, error = %e, "job run failed; it resumes from its last checkpoint");
            let _ = sqlx::query("UPDATE jobs SET last_error = $1, updated_at = $2 WHERE name = $3")
                .bind(e.to_string())
                .bind(now_micros())
                .bind(name)
                .execute(self.db.pool())
                .await;
        }
        let _ = crate::lease::release(&self.db, name, &self.holder).await;
        result
    }

    async fn run_leased(
        &self,
        job: &dyn Job,
        slot: &str,
    ) -> Result<Option<RunReport>, ServiceError> {
        let name = job.name();
        // Holding the lease, decide which run to do: an interrupted one
        // first, else the due slot unless it is done.
        let s = status(&self.db, name)
            .await?
            .ok_or_else(|| lease_lost(name))?;
        let (run_key, resumed) = match s.run_key {
            Some(k) => (k, true),
            None if s.last_run_key.as_deref() == Some(slot) => return Ok(None),
            None => {
                let mut tx = self.db.begin().await?;
                self.renew(&mut tx, name).await?;
                sqlx::query(
                    "UPDATE jobs SET run_key = $1, cursor = NULL, processed = 0, started_at = $2, \
                     last_error = NULL WHERE name = $3",
                )
                .bind(slot)
                .bind(now_micros())
                .bind(name)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                (slot.to_owned(), false)
            }
        };
        if resumed {
            tracing::info!(job = name, run = %run_key, processed = s.processed, "resuming interrupted run");
        }
        let mut state = RunState {
            run_key: run_key.clone(),
            cursor: if resumed { s.cursor } else { None },
        };
        let mut processed = if resumed { s.processed } else { 0 };
        let mut chunks = 0;
        loop {
            let mut tx = self.db.begin().await?;
            self.renew(&mut tx, name).await?;
            let outcome = job.run_chunk(&mut tx, &state).await?;
            processed += outcome.processed;
            chunks += 1;
            let finished = outcome.next_cursor.is_none();
            let now = now_micros();
            if finished {
                sqlx::query(
                    "UPDATE jobs SET run_key = NULL, cursor = NULL, processed = $1, last_run_key = $2, \
                     last_finished_at = $3, last_error = NULL, updated_at = $3 WHERE name = $4",
                )
                .bind(i64::try_from(processed).unwrap_or(i64::MAX))
                .bind(&run_key)
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE jobs SET cursor = $1, processed = $2, updated_at = $3 WHERE name = $4",
                )
                .bind(&outcome.next_cursor)
                .bind(i64::try_from(processed).unwrap_or(i64::MAX))
                .bind(now)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            tracing::debug!(job = name, run = %run_key, processed, "chunk committed");
            if finished {
                tracing::info!(job = name, run = %run_key, processed, chunks, "job run finished");
                return Ok(Some(RunReport {
                    run_key,
                    processed,
                    chunks,
                    resumed,
                }));
            }
            state.cursor = outcome.next_cursor;
        }
    }

    /// Renews the lease inside the chunk's transaction, or fails if another
    /// replica took it (then nothing of the chunk commits).
    async fn renew(&self, tx: &mut Tx, name: &str) -> Result<(), ServiceError> {
        let now = now_micros();
        let until = now + i64::try_from(self.lease_ttl.as_micros()).unwrap_or(i64::MAX / 2);
        let done = sqlx::query(
            "UPDATE jobs SET lease_until = $1, updated_at = $2 WHERE name = $3 AND holder = $4 AND lease_until >= $2",
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

    /// Runs `job` on `schedule` until `shutdown` (between chunks a run is
    /// safe to stop: it resumes from its checkpoint).
    pub fn spawn(
        self,
        job: Arc<dyn Job>,
        schedule: Schedule,
        shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    res = self.run_due(job.as_ref(), &schedule, Utc::now()) => {
                        if let Err(e) = res {
                            tracing::warn!(job = job.name(), error = %e, "scheduled run failed");
                        }
                    }
                    () = shutdown.wait() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(schedule.check_interval()) => {}
                    () = shutdown.wait() => return,
                }
            }
        })
    }
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
