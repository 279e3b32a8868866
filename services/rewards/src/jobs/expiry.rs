//! Expiry of points by the program's policy: every lot whose expiry
//! instant has passed loses what it still holds. Set-based per chunk (one
//! UPDATE over the chunk's lots, walked by the `lots_expiry` index in
//! expiry order with each member's lots together), then one expire entry
//! and one PointsExpired event per member of the chunk (a member whose lots
//! straddle two chunks gets one per chunk). Idempotent: an expired lot holds nothing, so a
//! rerun or a resumed run finds nothing twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::events::{new_envelope, outbox};
use loyalty_common::jobs::{ChunkOutcome, Job, RunState};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::PointsExpired;
use loyalty_proto::events::event_envelope::Payload;

use crate::store::ledger::{self, Cause, Deltas, EntryKind, PRODUCER};

/// Lots expired per chunk (one transaction).
const CHUNK: i64 = 10_000;

/// The points expiry job.
pub(crate) struct PointsExpiry {
    rt: Arc<ServiceRuntime>,
    chunk: i64,
}

impl PointsExpiry {
    pub(crate) const NAME: &'static str = "rewards.points_expiry";

    pub(crate) fn new(rt: Arc<ServiceRuntime>) -> Self {
        Self { rt, chunk: CHUNK }
    }
}

/// (program, member) → (available points, pending points) expired.
type Expired = BTreeMap<(String, String), (i64, i64)>;

#[async_trait::async_trait]
impl Job for PointsExpiry {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn run_chunk(&self, tx: &mut Tx, _run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let now = self.rt.clock.now().timestamp_micros();
        let programs: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT program_id FROM (SELECT program_id FROM lots WHERE remaining > 0 \
             AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at, program_id, member_id, lot_id LIMIT $2) d",
        )
        .bind(now)
        .bind(self.chunk)
        .fetch_all(&mut **tx)
        .await?;
        if programs.is_empty() {
            return Ok(ChunkOutcome {
                next_cursor: None,
                processed: 0,
            });
        }
        let programs: BTreeSet<String> = programs.into_iter().collect();
        // every writer of these programs waits from here on: the chunk's
        // lots cannot change under us
        let mut heads = super::lock_heads(tx, &programs).await?;
        let list = (0..programs.len())
            .map(|i| format!("${}", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let chunk_sql = format!(
            "SELECT lot_id FROM lots WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= $1 \
             AND program_id IN ({list}) ORDER BY expires_at, program_id, member_id, lot_id LIMIT $2"
        );
        let sums_sql = format!(
            "SELECT program_id, member_id, \
             CAST(SUM(CASE WHEN released = 1 THEN remaining ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN released = 0 THEN remaining ELSE 0 END) AS BIGINT), \
             CAST(COUNT(*) AS BIGINT) \
             FROM lots WHERE lot_id IN ({chunk_sql}) GROUP BY program_id, member_id"
        );
        let mut q =
            sqlx::query_as::<_, (String, String, i64, i64, i64)>(sqlx::AssertSqlSafe(sums_sql))
                .bind(now)
                .bind(self.chunk);
        for p in &programs {
            q = q.bind(p);
        }
        let rows = q.fetch_all(&mut **tx).await?;
        let update_sql = format!("UPDATE lots SET remaining = 0 WHERE lot_id IN ({chunk_sql})");
        let mut u = sqlx::query(sqlx::AssertSqlSafe(update_sql))
            .bind(now)
            .bind(self.chunk);
        for p in &programs {
            u = u.bind(p);
        }
        let updated = u.execute(&mut **tx).await?.rows_affected();
        let mut expired = Expired::new();
        let mut lots = 0i64;
        for (program, member, available, pending, count) in rows {
            expired.insert((program, member), (available, pending));
            lots += count;
        }
        if u64::try_from(lots).unwrap_or(0) != updated {
            return Err(ServiceError::internal(format!(
                "expiry chunk changed under its lock: {lots} lots summed, {updated} expired"
            )));
        }
        for ((program, member), (available, pending)) in &expired {
            let Some(head) = heads.get_mut(program) else {
                continue;
            };
            let entry_id = ledger::new_id();
            let deltas = Deltas {
                available: -available,
                pending: -pending,
                lifetime: 0,
            };
            let cause = Cause {
                reason: Some("expired by policy".into()),
                ..Cause::default()
            };
            ledger::append_entry(
                tx,
                head,
                &entry_id,
                member,
                EntryKind::Expire,
                &deltas,
                &cause,
                None,
            )
            .await?;
            let event = new_envelope(
                PRODUCER,
                program,
                member,
                Payload::PointsExpired(PointsExpired {
                    entry_id,
                    points: available + pending,
                }),
            );
            outbox::append(tx, &event).await?;
        }
        self.rt.outbox.notify();
        Ok(ChunkOutcome {
            next_cursor: (lots == self.chunk).then(|| "more".to_owned()),
            processed: u64::try_from(lots).unwrap_or(0),
        })
    }
}
