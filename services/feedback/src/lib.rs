//! The feedback service of the loyalty platform. Its contract is
//! `loyalty.feedback.v1`; it owns its database and reacts to and publishes
//! domain events through the shared outbox and bus.
//!
//! The domain (feedback rules) lands with the feedback issue; for now the service
//! starts, migrates its database, answers health, reflection and
//! `GetServiceInfo`.

mod grpc;

use loyalty_common::runtime::{ServiceDef, no_consumers, no_jobs, no_prepare};

/// How the launcher starts this service.
pub const SERVICE: ServiceDef = ServiceDef {
    name: "feedback",
    migrations: &[],
    register: grpc::register,
    consumers: no_consumers,
    jobs: no_jobs,
    prepare: no_prepare,
};
