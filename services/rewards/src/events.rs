//! Events the rewards service consumes (purchases and refunds from other
//! producers, tier changes, reviews, surveys, erasures, campaign actions).

use std::sync::Arc;

use loyalty_common::events::Consumer;
use loyalty_common::runtime::ServiceRuntime;

/// Every consumer of the service (the launcher subscribes them).
pub(crate) fn consumers(rt: &Arc<ServiceRuntime>) -> Vec<Consumer> {
    let _ = rt;
    Vec::new()
}
