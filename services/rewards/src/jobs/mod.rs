//! Scheduled jobs of the rewards service.

use std::sync::Arc;

use loyalty_common::runtime::{ScheduledJob, ServiceRuntime};

/// Every scheduled job of the service.
pub(crate) fn scheduled(rt: &Arc<ServiceRuntime>) -> Vec<ScheduledJob> {
    let _ = rt;
    Vec::new()
}
