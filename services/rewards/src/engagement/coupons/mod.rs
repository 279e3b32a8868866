//! Coupon pools, coupons with unguessable codes, validation and redemption
//! at the point of sale with per-caller brute-force limits, and coupons
//! issued by campaign actions. Codes are kept sealed at rest ([`vault`]).

use std::sync::Arc;

use loyalty_common::events::Consumer;
use loyalty_common::jobs::{Job, Schedule};
use loyalty_common::runtime::{ScheduledJob, ServiceRuntime};
use loyalty_common::server::GrpcServer;
use loyalty_proto::loyalty::rewards::v1::coupon_service_server::CouponServiceServer;

pub mod attempt_limit;
mod campaign;
mod expiry;
mod grpc;
mod sealing;
pub mod store;
pub(crate) mod vault;

pub(crate) fn register(rt: &Arc<ServiceRuntime>, server: &mut GrpcServer) {
    server.add_service(CouponServiceServer::new(grpc::CouponApi {
        rt: rt.clone(),
        attempts: attempt_limit::AttemptPolicy::DEFAULT,
    }));
}

/// Issues coupons asked for by CampaignActionRequested events.
pub(crate) fn campaign_consumer(rt: &Arc<ServiceRuntime>) -> Consumer {
    Consumer::new(
        "rewards-campaign-coupons",
        rt.db.clone(),
        Arc::new(campaign::CampaignCoupons { rt: rt.clone() }),
    )
    .with_event_types(&["CampaignActionRequested"])
}

/// Marks coupons past their validity expired, on a schedule.
pub(crate) fn expiry_job(rt: &Arc<ServiceRuntime>) -> ScheduledJob {
    (
        Arc::new(expiry::CouponExpiry::all_programs(rt.clone())) as Arc<dyn Job>,
        Schedule::Every(expiry::EVERY),
    )
}

/// Seals coupon codes still stored in clear: at start-up, then hourly.
pub(crate) fn sealing_job(rt: &Arc<ServiceRuntime>) -> ScheduledJob {
    (
        Arc::new(sealing::CodeSealing::new(rt.clone())) as Arc<dyn Job>,
        Schedule::Every(sealing::EVERY),
    )
}

/// Seals every coupon code still stored in clear, now, to the end.
pub(crate) async fn seal_clear_codes(
    rt: &Arc<ServiceRuntime>,
) -> Result<Option<loyalty_common::jobs::RunReport>, loyalty_common::ServiceError> {
    loyalty_common::jobs::JobRunner::new(rt.db.clone())
        .trigger(&sealing::CodeSealing::new(rt.clone()))
        .await
}

/// Whether the coupon codes already sealed in this database open with the
/// data key of `rt` (probing one; true when none is sealed yet).
pub(crate) async fn sealed_codes_open(
    rt: &ServiceRuntime,
) -> Result<bool, loyalty_common::ServiceError> {
    let vault = vault::CodeVault::of(rt)?;
    Ok(match store::any_sealed_code(rt.db.pool()).await? {
        Some((program_id, coupon_id, sealed)) => {
            vault.open(&program_id, &coupon_id, &sealed).is_ok()
        }
        None => true,
    })
}
