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

use chrono::NaiveTime;
use loyalty_common::db::Migrations;
use loyalty_common::jobs::Schedule;
use loyalty_common::runtime::{ScheduledJob, ServiceDef, ServiceRuntime};

/// The service's own tables.
pub const MIGRATIONS: Migrations = Migrations {
    table: "_membership_migrations",
    sqlite: || sqlx::migrate!("migrations/sqlite"),
    postgres: || sqlx::migrate!("migrations/postgres"),
};

fn jobs(rt: &Arc<ServiceRuntime>) -> Vec<ScheduledJob> {
    // Daily at 00:30 UTC; members are due at their own local midnights,
    // so a run after every zone's midnight catches the previous day's dues
    // at the latest (RunTierEvaluation runs it at once).
    let schedule = Schedule::DailyAt {
        time: NaiveTime::from_hms_opt(0, 30, 0).unwrap_or(NaiveTime::MIN),
        offset: chrono::Offset::fix(&chrono::Utc),
    };
    vec![(
        Arc::new(evaluation_job::TierEvaluationJob::new(rt.clone())),
        schedule,
    )]
}

/// How the launcher starts this service.
pub const SERVICE: ServiceDef = ServiceDef {
    name: "membership",
    migrations: &[MIGRATIONS],
    register: grpc::register,
    consumers: events::consumers,
    jobs,
};
