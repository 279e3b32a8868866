//! Badges: definitions (rules over counters), the counters kept from
//! events, and the badges awarded once per member.

use std::sync::Arc;

use loyalty_common::events::Consumer;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::rewards::v1::badge_service_server::BadgeServiceServer;

mod counters;
mod grpc;
pub mod rules;
pub mod store;

pub(crate) fn register(rt: &Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(BadgeServiceServer::new(grpc::BadgeApi { rt: rt.clone() }));
}

/// Keeps badge counters from purchases, reviews and check-ins, and awards
/// badges as they are earned.
pub(crate) fn counter_consumer(rt: &Arc<ServiceRuntime>) -> Consumer {
    Consumer::new(
        "rewards-badges",
        rt.db.clone(),
        Arc::new(counters::BadgeCounters { rt: rt.clone() }),
    )
    .with_event_types(&["PurchaseCompleted", "ReviewSubmitted", "CheckedIn"])
}
