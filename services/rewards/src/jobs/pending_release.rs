//! Pending → available once a lot's return window has passed. Each
//! release is a ledger entry (kind release: pending down, available up), so
//! balances keep equalling their ledger. Idempotent: a released lot is no
//! longer pending, so a rerun or a resumed run finds nothing twice.

use std::collections::BTreeSet;
use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::jobs::{ChunkOutcome, Job, RunState};
use loyalty_common::runtime::ServiceRuntime;

use crate::store::ledger::{self, Cause, Deltas, EntryKind};

/// Lots released per chunk (one transaction).
const CHUNK: i64 = 2_000;

/// The pending-release job.
pub(crate) struct PendingRelease {
    rt: Arc<ServiceRuntime>,
}

impl PendingRelease {
    pub(crate) const NAME: &'static str = "rewards.pending_release";

    pub(crate) fn new(rt: Arc<ServiceRuntime>) -> Self {
        Self { rt }
    }
}

#[async_trait::async_trait]
impl Job for PendingRelease {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn run_chunk(&self, tx: &mut Tx, _run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let now = self.rt.clock.now().timestamp_micros();
        let due_sql = "SELECT lot_id, program_id, member_id FROM lots WHERE released = 0 \
                       AND pending_until <= $1 ORDER BY pending_until, lot_id LIMIT $2";
        let due: Vec<(String, String, String)> = sqlx::query_as(due_sql)
            .bind(now)
            .bind(CHUNK)
            .fetch_all(&mut **tx)
            .await?;
        let programs: BTreeSet<String> = due.iter().map(|d| d.1.clone()).collect();
        let mut heads = super::lock_heads(tx, &programs).await?;
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
            let Some(head) = heads.get_mut(program_id) else {
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
