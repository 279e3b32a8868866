//! Pending → available once a lot's return window has passed. Each
//! release is a ledger entry (kind release: pending down, available up), so
//! balances keep equalling their ledger. Idempotent: a released lot is no
//! longer pending, so a rerun or a resumed run finds nothing twice.

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
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
        let mut released = 0u64;
        for (lot_id, program_id, member_id) in &due {
            // read again under the program's lock: a refund may have taken
            // some of it meanwhile
            let current: Option<(i64, i64)> =
                sqlx::query_as("SELECT remaining, released FROM lots WHERE lot_id = $1")
                    .bind(lot_id)
                    .fetch_optional(&mut **tx)
                    .await?;
            let Some((remaining, 0)) = current else {
                continue;
            };
            let Some(head) = lanes.head_of(program_id, member_id) else {
                continue;
            };
            let available = ledger::balance_row(tx, program_id, member_id)
                .await?
                .available;
            let to_lot = ledger::to_lots_after_debt(available, remaining);
            sqlx::query("UPDATE lots SET released = 1, remaining = $1 WHERE lot_id = $2")
                .bind(to_lot)
                .bind(lot_id)
                .execute(&mut **tx)
                .await?;
            let deltas = Deltas {
                available: remaining,
                pending: -remaining,
                lifetime: 0,
            };
            let cause = Cause {
                reference: Some(format!("lot:{lot_id}")),
                ..Cause::default()
            };
            let entry_id = ledger::new_id();
            ledger::append_entry(
                tx,
                head,
                &entry_id,
                member_id,
                EntryKind::Release,
                &deltas,
                &cause,
                None,
            )
            .await?;
            released += 1;
        }
        Ok(ChunkOutcome {
            next_cursor: (due.len() as i64 == CHUNK).then(|| "more".to_owned()),
            processed: released,
        })
    }
}
