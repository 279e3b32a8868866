//! Referrals: terms per program, a code per member, referrals applied by
//! new members, qualification on the referee's first qualifying purchase
//! (both sides credited once, taken back once if that order is refunded in
//! full), and the contact hashes that catch reused contact details.

use std::sync::Arc;

use loyalty_common::events::Consumer;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::rewards::v1::referral_service_server::ReferralServiceServer;

mod events;
mod grpc;
pub mod rules;
pub mod store;

pub(crate) fn register(rt: &Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(ReferralServiceServer::new(grpc::ReferralApi {
        rt: rt.clone(),
    }));
}

/// Keeps contact hashes (MemberEnrolled, erased on MemberErased),
/// qualifies referrals on purchases (PurchaseCompleted) and takes the
/// rewards back when the qualifying order is refunded in full
/// (OrderRefunded).
pub(crate) fn consumer(rt: &Arc<ServiceRuntime>) -> Consumer {
    Consumer::new(
        "rewards-referrals",
        rt.db.clone(),
        Arc::new(events::ReferralEvents { rt: rt.clone() }),
    )
    .with_event_types(&[
        "MemberEnrolled",
        "MemberErased",
        "PurchaseCompleted",
        "OrderRefunded",
    ])
}
