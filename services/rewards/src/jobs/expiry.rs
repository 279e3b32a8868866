//! Expiry of points by the program's policy: every lot whose expiry
//! instant has passed loses what it still holds.
//!
//! Set-based per chunk: the chunk is the first due lots in `lots_expiry`
//! index order (expiry instant, then program and member, so a member's lots
//! come together). After the lanes of the chunk's members are locked, a
//! fixed number of statements does the chunk whatever its size: one sum
//! per member, one INSERT … SELECT recording which lots each expire entry
//! took (`lot_uses`, as debits record theirs), one UPDATE emptying the
//! lots, the entries (one per member, hash-chained in its lane, with the
//! heads) and the balances through the ledger's set-based writes
//! (`ledger::chain_entries`, `ledger::move_balances`), and their
//! PointsExpired events. (A member whose lots straddle two chunks gets one
//! entry per chunk.)
//!
//! Idempotent: an expired lot holds nothing, so a rerun finds nothing
//! twice. Resumable: each chunk commits its effects with the job's
//! checkpoint (`loyalty_common::jobs`): the index key of the chunk's last
//! lot, where the next chunk starts. Starting there rather than at the
//! front of the index matters on PostgreSQL, whose index keeps the entries
//! of emptied lots until vacuum: every chunk would step over all the lots
//! the run had emptied so far. (SQLite removes them at once: there each
//! chunk starts at the front, which measured faster than the cursor.) (A lot that falls due behind the cursor
//! while a run goes on, e.g. a purchase back-dated beyond its expiry, is
//! left to the next run.)

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::{Engine, Tx, engine_of};
use loyalty_common::events::{new_envelope, outbox};
use loyalty_common::jobs::{ChunkOutcome, Job, RunState};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::PointsExpired;
use loyalty_proto::events::event_envelope::Payload;

use super::Scope;
use crate::store::ledger::{self, Cause, Deltas, EntryKind, PRODUCER};
use crate::store::ledger_lanes::lock_lanes;

/// Lots expired per chunk (one transaction).
const CHUNK: i64 = 10_000;
/// Members per multi-row statement of lot uses (3 bind parameters each).
const ROWS: usize = 500;
const REASON: &str = "expired by policy";

/// The points expiry job, over every program (scheduled) or one
/// (triggered by that program's admin).
pub(crate) struct PointsExpiry {
    rt: Arc<ServiceRuntime>,
    chunk: i64,
    scope: Scope,
}

impl PointsExpiry {
    pub(crate) const NAME: &'static str = "rewards.points_expiry";

    pub(crate) fn new(rt: Arc<ServiceRuntime>, scope: Scope) -> Self {
        Self {
            rt,
            chunk: CHUNK,
            scope: scope.named(Self::NAME),
        }
    }

    /// Chunks of `chunk` lots instead of the default.
    #[must_use]
    pub(crate) fn with_chunk(mut self, chunk: i64) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// The chunk: the first lots due in index order after the cursor
    /// (`$1` now, `$2` the chunk size, `$3` the program of a scoped run,
    /// `$4`-`$7` the cursor; see [`bind_chunk!`]).
    fn chunk_sql(&self) -> String {
        format!("SELECT lot_id FROM {} LIMIT $2", self.due_lots())
    }

    /// The key of the chunk's last lot (the next cursor) when the chunk is
    /// full: the same walk of the index, no sort.
    fn last_key_sql(&self) -> String {
        format!(
            "SELECT expires_at, program_id, member_id, lot_id FROM {} LIMIT 1 OFFSET $2 - 1",
            self.due_lots()
        )
    }

    /// Lots due after the cursor, in `lots_expiry` order.
    fn due_lots(&self) -> String {
        format!(
            "lots WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= $1 {} \
             AND (expires_at, program_id, member_id, lot_id) > ($4, $5, $6, $7) \
             ORDER BY expires_at, program_id, member_id, lot_id",
            self.scope.filter("$3")
        )
    }
}

/// Binds the chunk query's parameters `$1`-`$7` (the program is bound in
/// an unscoped run too, so that the numbers after it stay fixed).
macro_rules! bind_chunk {
    ($q:expr, $job:expr, $now:expr, $cursor:expr) => {
        $q.bind($now)
            .bind($job.chunk)
            .bind($job.scope.program_id().unwrap_or_default().to_owned())
            .bind($cursor.expires_at)
            .bind($cursor.program_id.clone())
            .bind($cursor.member_id.clone())
            .bind($cursor.lot_id.clone())
    };
}

/// Where a run goes on: the `lots_expiry` key of the last lot expired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cursor {
    expires_at: i64,
    program_id: String,
    member_id: String,
    lot_id: String,
}

impl Cursor {
    /// Before every lot.
    fn start() -> Self {
        Self {
            expires_at: i64::MIN,
            ..Self::default()
        }
    }

    /// The run's checkpoint; a missing or unreadable one (a run checkpointed
    /// by an older version) starts over, which is safe: expired lots hold
    /// nothing and are not due again.
    fn parse(cursor: Option<&str>) -> Self {
        let read = |c: &str| -> Option<Self> {
            let v: serde_json::Value = serde_json::from_str(c).ok()?;
            let text = |i: usize| v.get(i)?.as_str().map(str::to_owned);
            Some(Self {
                expires_at: v.get(0)?.as_i64()?,
                program_id: text(1)?,
                member_id: text(2)?,
                lot_id: text(3)?,
            })
        };
        cursor.and_then(read).unwrap_or_else(Self::start)
    }

    /// `[expires_at, program, member, lot]` as JSON.
    fn encode(&self) -> String {
        serde_json::json!([
            self.expires_at,
            self.program_id,
            self.member_id,
            self.lot_id
        ])
        .to_string()
    }
}

/// What one member loses in a chunk.
#[derive(Debug)]
struct Loss {
    program_id: String,
    member_id: String,
    available: i64,
    pending: i64,
    lots: i64,
    entry_id: String,
}

#[async_trait::async_trait]
impl Job for PointsExpiry {
    fn name(&self) -> &str {
        self.scope.job_name()
    }

    async fn run_chunk(&self, tx: &mut Tx, run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let now = self.rt.clock.now().timestamp_micros();
        let cursor = Cursor::parse(run.cursor.as_deref());
        let chunk_sql = self.chunk_sql();
        let members_sql = format!(
            "SELECT DISTINCT program_id, member_id FROM lots WHERE lot_id IN ({chunk_sql})"
        );
        let members: Vec<(String, String)> = bind_chunk!(
            sqlx::query_as(sqlx::AssertSqlSafe(members_sql)),
            self,
            now,
            cursor
        )
        .fetch_all(&mut **tx)
        .await?;
        if members.is_empty() {
            return Ok(ChunkOutcome {
                next_cursor: None,
                processed: 0,
            });
        }
        // every writer of these members waits from here on: their lots
        // cannot change under us
        let mut lanes =
            lock_lanes(tx, members.iter().map(|m| (m.0.as_str(), m.1.as_str()))).await?;
        let sums_sql = format!(
            "SELECT program_id, member_id, \
             CAST(SUM(CASE WHEN released = 1 THEN remaining ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN released = 0 THEN remaining ELSE 0 END) AS BIGINT), \
             CAST(COUNT(*) AS BIGINT) \
             FROM lots WHERE lot_id IN ({chunk_sql}) GROUP BY program_id, member_id \
             ORDER BY program_id, member_id"
        );
        let rows: Vec<(String, String, i64, i64, i64)> = bind_chunk!(
            sqlx::query_as(sqlx::AssertSqlSafe(sums_sql)),
            self,
            now,
            cursor
        )
        .fetch_all(&mut **tx)
        .await?;
        if let Some(stranger) = rows.iter().find(|r| !lanes.holds(&r.0, &r.1)) {
            // a lot of another member became due meanwhile (a transfer
            // from expired lots): the run resumes here next time
            return Err(ServiceError::Conflict(format!(
                "expiry chunk gained lots of member {} of program {} while locking; retry",
                stranger.1, stranger.0
            )));
        }
        let losses: Vec<Loss> = rows
            .into_iter()
            .map(|(program_id, member_id, available, pending, lots)| Loss {
                program_id,
                member_id,
                available,
                pending,
                lots,
                entry_id: ledger::new_id(),
            })
            .collect();
        let lots: i64 = losses.iter().map(|l| l.lots).sum();
        // where the next chunk starts, read before the lots are emptied;
        // SQLite drops an emptied lot from the partial index at once, so
        // its next chunk is the front of the index again
        let next = if lots < self.chunk {
            None
        } else if engine_of(tx) == Engine::Sqlite {
            Some(Cursor::start())
        } else {
            let (expires_at, program_id, member_id, lot_id): (i64, String, String, String) =
                bind_chunk!(
                    sqlx::query_as(sqlx::AssertSqlSafe(self.last_key_sql())),
                    self,
                    now,
                    cursor
                )
                .fetch_one(&mut **tx)
                .await?;
            Some(Cursor {
                expires_at,
                program_id,
                member_id,
                lot_id,
            })
        };
        // which lots each entry takes, before they are emptied
        // (VALUES rows, not JSON ones: SQLite would plan the JSON rows as
        // the inner side and parse them once per lot of the chunk)
        let mut used = 0u64;
        for part in losses.chunks(ROWS) {
            used += record_uses(tx, self, &chunk_sql, now, &cursor, part).await?;
        }
        let update_sql = format!("UPDATE lots SET remaining = 0 WHERE lot_id IN ({chunk_sql})");
        let updated = bind_chunk!(
            sqlx::query(sqlx::AssertSqlSafe(update_sql)),
            self,
            now,
            cursor
        )
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if u64::try_from(lots).ok() != Some(updated) || used != updated {
            return Err(ServiceError::internal(format!(
                "expiry chunk changed under its lock: {lots} lots summed, {used} recorded, {updated} expired"
            )));
        }
        // the entries, chained lane by lane in member order, and the
        // balances: one statement each however many members
        let cause = Cause {
            reason: Some(REASON.to_owned()),
            ..Cause::default()
        };
        let deltas: Vec<Deltas> = losses
            .iter()
            .map(|l| Deltas {
                available: -l.available,
                pending: -l.pending,
                lifetime: 0,
            })
            .collect();
        let mut entries = Vec::with_capacity(losses.len());
        for (loss, d) in losses.iter().zip(&deltas) {
            let head = lanes
                .index_of(&loss.program_id, &loss.member_id)
                .ok_or_else(|| ServiceError::internal("expiry lost a lane lock"))?;
            entries.push((
                head,
                ledger::NewEntry {
                    entry_id: &loss.entry_id,
                    member_id: &loss.member_id,
                    kind: EntryKind::Expire,
                    deltas: d,
                    cause: &cause,
                    reverses: None,
                },
            ));
        }
        ledger::chain_entries(tx, &mut lanes.heads_mut(), &entries).await?;
        let moves: Vec<(&str, &str, &Deltas)> = losses
            .iter()
            .zip(&deltas)
            .map(|(l, d)| (l.program_id.as_str(), l.member_id.as_str(), d))
            .collect();
        ledger::move_balances(tx, &moves).await?;
        let events: Vec<_> = losses
            .iter()
            .map(|l| {
                new_envelope(
                    PRODUCER,
                    &l.program_id,
                    &l.member_id,
                    Payload::PointsExpired(PointsExpired {
                        entry_id: l.entry_id.clone(),
                        points: l.available + l.pending,
                    }),
                )
            })
            .collect();
        outbox::append_all(tx, &events).await?;
        self.rt.outbox.notify();
        Ok(ChunkOutcome {
            next_cursor: next.map(|c| c.encode()),
            processed: u64::try_from(lots).unwrap_or(0),
        })
    }
}

/// `(v1, v2, …)` rows of `width` numbered parameters from `$first` on.
fn values(rows: usize, width: usize, first: usize, casts: &[Option<&str>]) -> String {
    (0..rows)
        .map(|r| {
            let cols = (0..width)
                .map(|c| {
                    let n = first + r * width + c;
                    match casts.get(c).copied().flatten() {
                        Some(t) => format!("CAST(${n} AS {t})"),
                        None => format!("${n}"),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!("({cols})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records the chunk's lots of `part`'s members under each member's entry
/// (`lot_uses`: lot, points it held); answers the rows written.
async fn record_uses(
    tx: &mut Tx,
    job: &PointsExpiry,
    chunk_sql: &str,
    now: i64,
    cursor: &Cursor,
    part: &[Loss],
) -> Result<u64, ServiceError> {
    // $1..$7 belong to the chunk's query, the members follow
    let m = values(part.len(), 3, 8, &[]);
    let sql = format!(
        "WITH m (program_id, member_id, entry_id) AS (VALUES {m}) \
         INSERT INTO lot_uses (entry_id, lot_id, points) \
         SELECT m.entry_id, l.lot_id, l.remaining FROM lots l \
         JOIN m ON l.program_id = m.program_id AND l.member_id = m.member_id \
         WHERE l.lot_id IN ({chunk_sql})"
    );
    let mut q = bind_chunk!(sqlx::query(sqlx::AssertSqlSafe(sql)), job, now, cursor);
    for l in part {
        q = q
            .bind(l.program_id.clone())
            .bind(l.member_id.clone())
            .bind(l.entry_id.clone());
    }
    Ok(q.execute(&mut **tx).await?.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn a_cursor_survives_its_checkpoint_and_a_foreign_one_starts_over() {
        let c = Cursor {
            expires_at: 1_767_225_600_000_000,
            program_id: "p\"1".into(),
            member_id: "m,1".into(),
            lot_id: "L9".into(),
        };
        assert_eq!(Cursor::parse(Some(&c.encode())), c);
        assert_eq!(Cursor::parse(Some("more")), Cursor::start());
        assert_eq!(Cursor::parse(None), Cursor::start());
    }
}
