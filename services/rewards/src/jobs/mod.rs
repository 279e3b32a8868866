//! Scheduled jobs of the rewards service: the points lifecycle (pending
//! release after the return window, expiry by policy), each chunked,
//! resumable and idempotent through `loyalty_common::jobs`.

mod expiry;
mod pending_release;

use std::sync::Arc;
use std::time::Duration;

use loyalty_common::jobs::{Job, Schedule};
use loyalty_common::runtime::{ScheduledJob, ServiceRuntime};

pub(crate) use expiry::PointsExpiry;
pub(crate) use pending_release::PendingRelease;

/// Both lifecycle jobs look every 15 minutes: expiry instants are local
/// midnights of each program's zone, so a quarter-hourly pass keeps expiry
/// within 15 minutes of its boundary whatever the zone; a pass with nothing
/// due costs one index probe.
const LIFECYCLE_EVERY: Duration = Duration::from_secs(15 * 60);

/// Every scheduled job of the service.
pub(crate) fn scheduled(rt: &Arc<ServiceRuntime>) -> Vec<ScheduledJob> {
    vec![
        (
            Arc::new(PendingRelease::new(rt.clone())) as Arc<dyn Job>,
            Schedule::Every(LIFECYCLE_EVERY),
        ),
        (
            Arc::new(PointsExpiry::new(rt.clone())) as Arc<dyn Job>,
            Schedule::Every(LIFECYCLE_EVERY),
        ),
    ]
}

/// Locks the chain heads of `programs` in a fixed order (so two jobs never
/// wait on each other), returning them by program id.
pub(crate) async fn lock_heads(
    tx: &mut loyalty_common::db::Tx,
    programs: &std::collections::BTreeSet<String>,
) -> Result<
    std::collections::BTreeMap<String, crate::store::ledger::Head>,
    loyalty_common::ServiceError,
> {
    let mut heads = std::collections::BTreeMap::new();
    for p in programs {
        heads.insert(p.clone(), crate::store::ledger::lock_head(tx, p).await?);
    }
    Ok(heads)
}
