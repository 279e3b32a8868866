//! The engagement half of the rewards service: the rewards catalog with
//! redemption orders, coupons, badges, referrals and partner exchange.
//! Each area keeps its pure rules, its storage and its gRPC adapter side by
//! side; points only ever move through the ledger (`points`), inside the
//! transaction of the area's own change and its outbox event.

use std::sync::Arc;

use loyalty_common::events::Consumer;
use loyalty_common::runtime::{ScheduledJob, ServiceRuntime};
use loyalty_common::server::GrpcServer;

mod badges;
mod catalog;
pub mod codes;
mod coupons;
mod partners;
mod points;
mod referrals;
pub(crate) mod support;

pub(crate) use coupons::{
    seal_clear_codes as seal_clear_coupon_codes, sealed_codes_open as sealed_coupon_codes_open,
    sealing_job as coupon_code_sealing_job,
};

/// Adds the engagement gRPC services to the rewards server.
pub(crate) fn register(rt: &Arc<ServiceRuntime>, server: &mut GrpcServer) {
    catalog::register(rt, server);
    coupons::register(rt, server);
    badges::register(rt, server);
    referrals::register(rt, server);
    partners::register(rt, server);
}

/// The engagement event consumers (each its own inbox).
pub(crate) fn consumers(rt: &Arc<ServiceRuntime>) -> Vec<Consumer> {
    vec![
        coupons::campaign_consumer(rt),
        badges::counter_consumer(rt),
        referrals::consumer(rt),
    ]
}

/// The engagement scheduled jobs.
pub(crate) fn jobs(rt: &Arc<ServiceRuntime>) -> Vec<ScheduledJob> {
    vec![coupons::expiry_job(rt)]
}
