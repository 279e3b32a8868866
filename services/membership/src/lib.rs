//! The membership service of the loyalty platform (`loyalty.membership.v1`):
//! programs with their tier rules, members (enrolment, lookups by every
//! key, profile updates with optimistic versions, status), consent with
//! history, tiers (immediate upgrades from qualifying activity, reviews at
//! evaluation dates with a one-level soft landing, progress), static tags
//! and rule-based segments, groups, and privacy rights (export, erasure).
//!
//! Layout: `domain` holds the pure rules, `store` the tables, `api` the
//! operations behind `grpc`; `events` consumes purchases, refunds and
//! points; `evaluation_job` runs the reviews; `tiering` writes tier changes
//! with their history and events.

pub mod api;
pub mod domain;
pub mod evaluation_job;
pub mod events;
mod grpc;
pub mod store;
pub mod tiering;

use std::sync::Arc;

use loyalty_common::db::Migrations;
use loyalty_common::runtime::{ScheduledJob, ServiceDef, ServiceRuntime, no_prepare};

/// The service's own tables.
pub const MIGRATIONS: Migrations = Migrations {
    table: "_membership_migrations",
    sqlite: || sqlx::migrate!("migrations/sqlite"),
    postgres: || sqlx::migrate!("migrations/postgres"),
};

fn jobs(rt: &Arc<ServiceRuntime>) -> Vec<ScheduledJob> {
    vec![(
        Arc::new(evaluation_job::TierEvaluationJob::new(rt.clone())),
        evaluation_job::schedule(),
    )]
}

/// How the launcher starts this service.
pub const SERVICE: ServiceDef = ServiceDef {
    name: "membership",
    migrations: &[MIGRATIONS],
    register: grpc::register,
    consumers: events::consumers,
    jobs,
    prepare: no_prepare,
};
