//! Lanes of a program's ledger: the chain is split into a fixed number of
//! hash chains, each with its own head row, and a member always belongs to
//! the same lane (a stable hash of its id modulo the program's lane count).
//!
//! Writers of different lanes never wait on each other; the writes of one
//! member stay serial because they all lock its lane's head first (so a
//! balance can still never be spent twice). A transaction that touches
//! several lanes (a transfer, a job) locks them in ascending (program,
//! lane) order, so two such transactions never deadlock on heads.
//!
//! The lane count of a program is fixed when its first entry is written
//! (programs with history from before lanes keep one lane) and never
//! changes, which is what keeps every member in one lane for good.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;

use crate::domain::ledger::GENESIS_HASH;

/// Lanes of a new program. One group-commit writer per lane is what lets a
/// program's purchases commit in parallel (see `grpc.rs`).
pub(crate) const DEFAULT_LANES: i64 = 8;

/// A stable 63-bit hash of a member id (FNV-1a: the same on every build and
/// platform, unlike the standard library's hasher).
pub(crate) fn member_hash(member_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member_id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & (i64::MAX as u64)) as i64
}

/// The lane of `member_id` in a program of `lanes` lanes.
pub(crate) fn lane_of(member_id: &str, lanes: i64) -> i64 {
    member_hash(member_id) % lanes.max(1)
}

/// The program's lane count, fixing it at [`DEFAULT_LANES`] on first use.
pub(crate) async fn lane_count(tx: &mut Tx, program_id: &str) -> Result<i64, ServiceError> {
    // fixed once: read first, without a write in the common case
    if let Some(n) = stored_lane_count(&mut **tx, program_id).await? {
        return Ok(n);
    }
    sqlx::query(
        "INSERT INTO ledger_programs (program_id, lanes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(program_id)
    .bind(DEFAULT_LANES)
    .execute(&mut **tx)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT lanes FROM ledger_programs WHERE program_id = $1")
            .bind(program_id)
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// The lane count as stored, `None` for a program with no ledger yet.
pub(crate) async fn stored_lane_count<'e, E>(
    ex: E,
    program_id: &str,
) -> Result<Option<i64>, ServiceError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    Ok(
        sqlx::query_scalar("SELECT lanes FROM ledger_programs WHERE program_id = $1")
            .bind(program_id)
            .fetch_optional(ex)
            .await?,
    )
}

/// Lane counts already read, by (database, program): they never change,
/// so the request path asks the database once per program.
fn cache() -> &'static Mutex<HashMap<(String, String), i64>> {
    static C: OnceLock<Mutex<HashMap<(String, String), i64>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// The program's lane count through the process-wide cache (`db` names the
/// database), fixing it on first use.
pub(crate) async fn cached_lane_count(
    db: &loyalty_common::db::Db,
    program_id: &str,
) -> Result<i64, ServiceError> {
    let key = (db.url().as_str().to_owned(), program_id.to_owned());
    if let Some(n) = cache().lock().ok().and_then(|c| c.get(&key).copied()) {
        return Ok(n);
    }
    let n = if let Some(n) = stored_lane_count(db.pool(), program_id).await? {
        n
    } else {
        let mut tx = db.begin().await.map_err(ServiceError::from)?;
        let n = lane_count(&mut tx, program_id).await?;
        tx.commit().await.map_err(ServiceError::from)?;
        n
    };
    if let Ok(mut c) = cache().lock() {
        c.insert(key, n);
    }
    Ok(n)
}

/// A lane's chain head, locked for the rest of the transaction.
#[derive(Debug)]
pub(crate) struct Head {
    pub program_id: String,
    pub lane: i64,
    pub seq: i64,
    pub hash: String,
}

/// Locks the head of the lane of `member_id` (creating the program's lane
/// count and the head on first use). Every ledger write of a member takes
/// this lock before touching its balance or lots.
pub(crate) async fn lock_lane(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<Head, ServiceError> {
    // one statement in the common case: the lane is computed from the
    // stored lane count, and the head row is created or locked
    let sql = "INSERT INTO ledger_heads (program_id, lane, seq, hash) \
         SELECT $1, $2 % lanes, 0, $3 FROM ledger_programs WHERE program_id = $1 \
         ON CONFLICT (program_id, lane) DO UPDATE SET seq = ledger_heads.seq \
         RETURNING lane, seq, hash";
    for _ in 0..2 {
        let row: Option<(i64, i64, String)> = sqlx::query_as(sql)
            .bind(program_id)
            .bind(member_hash(member_id))
            .bind(GENESIS_HASH)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some((lane, seq, hash)) = row {
            return Ok(Head {
                program_id: program_id.to_owned(),
                lane,
                seq,
                hash,
            });
        }
        // the program's first entry: fix its lane count, then lock
        lane_count(tx, program_id).await?;
    }
    Err(ServiceError::internal(format!(
        "no ledger lane could be locked for program {program_id}"
    )))
}

/// Lanes locked by [`lock_lanes`], with the lane counts of their programs.
#[derive(Debug, Default)]
pub(crate) struct LockedLanes {
    counts: BTreeMap<String, i64>,
    heads: BTreeMap<(String, i64), Head>,
}

impl LockedLanes {
    /// The locked head of the lane of `member_id`; `None` when that lane was
    /// not locked.
    pub(crate) fn head_of(&mut self, program_id: &str, member_id: &str) -> Option<&mut Head> {
        let lanes = *self.counts.get(program_id)?;
        self.heads
            .get_mut(&(program_id.to_owned(), lane_of(member_id, lanes)))
    }

    /// Whether the lane of `member_id` is locked.
    pub(crate) fn holds(&self, program_id: &str, member_id: &str) -> bool {
        self.counts.get(program_id).is_some_and(|lanes| {
            self.heads
                .contains_key(&(program_id.to_owned(), lane_of(member_id, *lanes)))
        })
    }

    /// Position of the lane of `member_id` in [`heads_mut`](Self::heads_mut).
    pub(crate) fn index_of(&self, program_id: &str, member_id: &str) -> Option<usize> {
        let lanes = *self.counts.get(program_id)?;
        let key = (program_id.to_owned(), lane_of(member_id, lanes));
        self.heads.keys().position(|k| *k == key)
    }

    /// The locked heads, in lock order, to move.
    pub(crate) fn heads_mut(&mut self) -> Vec<&mut Head> {
        self.heads.values_mut().collect()
    }
}

/// Locks the lanes of several members of possibly several programs, in
/// ascending (program, lane) order: two transactions that each lock
/// several lanes this way never deadlock on them.
pub(crate) async fn lock_lanes<'a>(
    tx: &mut Tx,
    members: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<LockedLanes, ServiceError> {
    let members: Vec<(&str, &str)> = members.into_iter().collect();
    let programs: BTreeSet<&str> = members.iter().map(|m| m.0).collect();
    let mut locked = LockedLanes::default();
    for p in programs {
        locked.counts.insert(p.to_owned(), lane_count(tx, p).await?);
    }
    let mut wanted: BTreeMap<(String, i64), &str> = BTreeMap::new();
    for (program, member) in members {
        let lane = lane_of(member, locked.counts[program]);
        wanted.entry((program.to_owned(), lane)).or_insert(member);
    }
    for ((program, lane), member) in wanted {
        let head = lock_lane(tx, &program, member).await?;
        if head.lane != lane {
            return Err(ServiceError::internal(format!(
                "member {member} of program {program} locked lane {} instead of {lane}",
                head.lane
            )));
        }
        locked.heads.insert((program, lane), head);
    }
    Ok(locked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_always_has_the_same_lane_and_members_spread() {
        assert_eq!(member_hash("m-1"), member_hash("m-1"));
        assert!(member_hash("anything") >= 0);
        // fixed values: a lane must never move between builds
        assert_eq!(member_hash(""), 0x4bf2_9ce4_8422_2325);
        let lanes: BTreeSet<i64> = (0..200)
            .map(|i| lane_of(&format!("m-{i}"), DEFAULT_LANES))
            .collect();
        assert_eq!(lanes.len() as i64, DEFAULT_LANES);
        assert_eq!(lane_of("whoever", 1), 0);
    }
}
