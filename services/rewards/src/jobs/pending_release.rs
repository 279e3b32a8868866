//! Pending → available once a lot's return window has passed. Each
//! release is a ledger entry (kind release: pending down, available up), so
//! balances keep equalling their ledger. Set-based per chunk: a fixed
//! number of statements releases the chunk's lots, chains their entries
//! and moves the balances (one move per member), whatever the chunk's size. Idempotent: a released lot is no
//! longer pending, so a rerun or a resumed run finds nothing twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::{JsonType, Tx, engine_of, json_rows, json_rows_lookup};
use loyalty_common::jobs::{ChunkOutcome, Job, RunState};
use loyalty_common::runtime::ServiceRuntime;

use super::Scope;
use crate::store::ledger::{self, Cause, Deltas, EntryKind};
use crate::store::ledger_lanes::lock_lanes;

/// Lots released per chunk (one transaction).
const CHUNK: i64 = 2_000;

/// The pending-release job, over every program (scheduled) or one
/// (triggered by that program's admin).
pub(crate) struct PendingRelease {
    rt: Arc<ServiceRuntime>,
    scope: Scope,
}

impl PendingRelease {
    pub(crate) const NAME: &'static str = "rewards.pending_release";

    pub(crate) fn new(rt: Arc<ServiceRuntime>, scope: Scope) -> Self {
        let scope = scope.named(Self::NAME);
        Self { rt, scope }
    }
}

#[async_trait::async_trait]
impl Job for PendingRelease {
    fn name(&self) -> &str {
        self.scope.job_name()
    }

    async fn run_chunk(&self, tx: &mut Tx, _run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let now = self.rt.clock.now().timestamp_micros();
        let due_sql = format!(
            "SELECT lot_id, program_id, member_id FROM lots WHERE released = 0 \
             AND pending_until <= $1 {} ORDER BY pending_until, lot_id LIMIT $2",
            self.scope.filter("$3")
        );
        let due: Vec<(String, String, String)> = self
            .scope
            .bind(
                sqlx::query_as(sqlx::AssertSqlSafe(due_sql))
                    .bind(now)
                    .bind(CHUNK),
            )
            .fetch_all(&mut **tx)
            .await?;
        let mut lanes = lock_lanes(tx, due.iter().map(|d| (d.1.as_str(), d.2.as_str()))).await?;
        // read again under the lanes' locks: a refund may have taken some
        // of a lot meanwhile; the members' balances say what debt each
        // release pays first
        let lots = still_pending(tx, &due).await?;
        let mut available = balances_of(tx, &lots).await?;
        let mut releases = Vec::with_capacity(lots.len());
        for lot in &lots {
            let Some(head) = lanes.index_of(&lot.program_id, &lot.member_id) else {
                continue;
            };
            let key = (lot.program_id.clone(), lot.member_id.clone());
            let before = available.get(&key).copied().unwrap_or(0);
            available.insert(key, before + lot.remaining);
            releases.push(Release {
                head,
                lot,
                to_lot: ledger::to_lots_after_debt(before, lot.remaining),
                entry_id: ledger::new_id(),
                deltas: Deltas {
                    available: lot.remaining,
                    pending: -lot.remaining,
                    lifetime: 0,
                },
                cause: Cause {
                    reference: Some(format!("lot:{}", lot.lot_id)),
                    ..Cause::default()
                },
            });
        }
        release_lots(tx, &releases).await?;
        let entries: Vec<_> = releases
            .iter()
            .map(|r| {
                (
                    r.head,
                    ledger::NewEntry {
                        entry_id: &r.entry_id,
                        member_id: &r.lot.member_id,
                        kind: EntryKind::Release,
                        deltas: &r.deltas,
                        cause: &r.cause,
                        reverses: None,
                    },
                )
            })
            .collect();
        ledger::chain_entries(tx, &mut lanes.heads_mut(), &entries).await?;
        // one balance move per member: what all its releases add up to
        let mut totals: BTreeMap<(&str, &str), Deltas> = BTreeMap::new();
        for r in &releases {
            let t = totals
                .entry((&r.lot.program_id, &r.lot.member_id))
                .or_default();
            t.available += r.deltas.available;
            t.pending += r.deltas.pending;
        }
        let moves: Vec<(&str, &str, &Deltas)> =
            totals.iter().map(|((p, m), d)| (*p, *m, d)).collect();
        ledger::move_balances(tx, &moves).await?;
        let released = releases.len() as u64;
        Ok(ChunkOutcome {
            next_cursor: (due.len() as i64 == CHUNK).then(|| "more".to_owned()),
            processed: released,
        })
    }
}

/// A pending lot due for release, as read under its lane's lock.
struct DueLot {
    lot_id: String,
    program_id: String,
    member_id: String,
    remaining: i64,
}

/// One release: the lot, what it keeps after paying any debt, its entry.
struct Release<'a> {
    head: usize,
    lot: &'a DueLot,
    to_lot: i64,
    entry_id: String,
    deltas: Deltas,
    cause: Cause,
}

/// The lots of `due` still pending, in `due`'s order.
async fn still_pending(
    tx: &mut Tx,
    due: &[(String, String, String)],
) -> Result<Vec<DueLot>, ServiceError> {
    let from = json_rows_lookup(
        engine_of(tx),
        1,
        &[("lot_id", JsonType::Text)],
        "lots",
        "t.lot_id = r.lot_id",
    );
    let ids = serde_json::Value::Array(
        due.iter()
            .map(|d| serde_json::json!({"lot_id": d.0}))
            .collect(),
    );
    let found: Vec<(String, String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT t.lot_id, t.program_id, t.member_id, t.remaining FROM {from} WHERE t.released = 0"
    )))
    .bind(ids.to_string())
    .fetch_all(&mut **tx)
    .await?;
    let mut found: HashMap<String, DueLot> = found
        .into_iter()
        .map(|(lot_id, program_id, member_id, remaining)| {
            let lot = DueLot {
                lot_id: lot_id.clone(),
                program_id,
                member_id,
                remaining,
            };
            (lot_id, lot)
        })
        .collect();
    Ok(due.iter().filter_map(|d| found.remove(&d.0)).collect())
}

/// The available balance of each member of `lots` (zero when none yet).
async fn balances_of(
    tx: &mut Tx,
    lots: &[DueLot],
) -> Result<HashMap<(String, String), i64>, ServiceError> {
    let from = json_rows_lookup(
        engine_of(tx),
        1,
        &[
            ("program_id", JsonType::Text),
            ("member_id", JsonType::Text),
        ],
        "balances",
        "t.program_id = r.program_id AND t.member_id = r.member_id",
    );
    let members: std::collections::BTreeSet<(&str, &str)> = lots
        .iter()
        .map(|l| (l.program_id.as_str(), l.member_id.as_str()))
        .collect();
    let json = serde_json::Value::Array(
        members
            .iter()
            .map(|(p, m)| serde_json::json!({"program_id": p, "member_id": m}))
            .collect(),
    );
    let found: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT t.program_id, t.member_id, t.available FROM {from}"
    )))
    .bind(json.to_string())
    .fetch_all(&mut **tx)
    .await?;
    Ok(found.into_iter().map(|(p, m, a)| ((p, m), a)).collect())
}

/// Marks the lots released with what each keeps (one statement).
async fn release_lots(tx: &mut Tx, releases: &[Release<'_>]) -> Result<(), ServiceError> {
    if releases.is_empty() {
        return Ok(());
    }
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[("lot_id", JsonType::Text), ("remaining", JsonType::BigInt)],
    );
    let json = serde_json::Value::Array(
        releases
            .iter()
            .map(|r| serde_json::json!({"lot_id": r.lot.lot_id, "remaining": r.to_lot}))
            .collect(),
    );
    let updated = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE lots SET released = 1, remaining = r.remaining FROM {rows} \
         WHERE lots.lot_id = r.lot_id AND lots.released = 0"
    )))
    .bind(json.to_string())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated != releases.len() as u64 {
        return Err(ServiceError::internal(format!(
            "{updated} of {} lots released: they changed under the lanes' locks",
            releases.len()
        )));
    }
    Ok(())
}
