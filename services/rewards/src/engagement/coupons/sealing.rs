//! The start-up job sealing coupon codes still stored in clear: rows issued
//! before migration 0054 (SQL has no key to seal them with) or, during a
//! rolling upgrade, by a replica still on the old version. It runs when the
//! service starts and then hourly, in chunks, each in its own transaction,
//! once across replicas (a job lease); it needs no cursor, since a sealed
//! row leaves the set it scans. Until a row is sealed, lookups still find
//! it by its clear code.

use std::sync::Arc;
use std::time::Duration;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::jobs::{ChunkOutcome, Job, RunState};
use loyalty_common::runtime::ServiceRuntime;

use super::store;
use super::vault::CodeVault;

/// Codes sealed per chunk (one transaction).
const CHUNK: i64 = 500;

/// How often it looks again after the start-up run (a pass with nothing to
/// seal probes an empty partial index).
pub(crate) const EVERY: Duration = Duration::from_secs(3600);

/// Seals clear coupon codes of every program.
pub(crate) struct CodeSealing {
    rt: Arc<ServiceRuntime>,
}

impl CodeSealing {
    pub(crate) const NAME: &'static str = "rewards.coupon_code_sealing";

    pub(crate) fn new(rt: Arc<ServiceRuntime>) -> Self {
        Self { rt }
    }
}

#[async_trait::async_trait]
impl Job for CodeSealing {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn run_chunk(&self, tx: &mut Tx, _run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let vault = CodeVault::of(&self.rt)?;
        let sealed = store::seal_clear_codes(tx, &vault, CHUNK).await?;
        if sealed > 0 {
            tracing::info!(sealed, "sealed coupon codes stored in clear");
        }
        Ok(ChunkOutcome {
            next_cursor: (sealed == CHUNK as u64).then(|| "more".to_owned()),
            processed: sealed,
        })
    }
}
