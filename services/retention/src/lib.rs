//! The retention service of the loyalty platform. Its contract is
//! `loyalty.retention.v1`; it owns its database and reacts to and publishes
//! domain events through the shared outbox and bus.
//!
//! The domain (retention rules) lands with the retention issue; for now the service
//! starts, migrates its database, answers health, reflection and
//! `GetServiceInfo`.

mod grpc;

use loyalty_common::runtime::{ServiceDef, no_consumers, no_jobs, no_prepare};

/// How the launcher starts this service.
pub const SERVICE: ServiceDef = ServiceDef {
    name: "retention",
    migrations: &[],
    register: grpc::register,
    consumers: no_consumers,
    jobs: no_jobs,
    prepare: no_prepare,
};
