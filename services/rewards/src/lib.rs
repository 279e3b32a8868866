//! The rewards service of the loyalty platform (`loyalty.rewards.v1`): the
//! points ledger (append-only, hash-chained per program, lots with pending
//! and expiry dates, balances that always equal the ledger), the earning
//! rules engine, the points lifecycle jobs (pending release, expiry), and
//! the catalog, coupons, badges, referrals and partner exchange built on the
//! ledger API in [`store::ledger`]. It owns its database and reacts to and
//! publishes domain events through the shared outbox and bus.

mod data_key_check;
pub mod domain;
mod engagement;
mod events;
mod grpc;
mod jobs;
mod store;
mod validation;

pub use grpc::{GROUP_COMMIT_ENV, WRITERS_ENV};
use loyalty_common::db::Migrations;
use loyalty_common::runtime::ServiceDef;

/// The rewards tables (points core 0001-0049, the rest 0050+).
pub const MIGRATIONS: Migrations = Migrations {
    table: "_loyalty_rewards_migrations",
    sqlite: || sqlx::migrate!("migrations/sqlite"),
    postgres: || sqlx::migrate!("migrations/postgres"),
};

/// How the launcher starts this service.
pub const SERVICE: ServiceDef = ServiceDef {
    name: "rewards",
    migrations: &[MIGRATIONS],
    register: grpc::register,
    consumers,
    jobs: scheduled_jobs,
    // the database must be sealed with the configured data key
    // (docs/adr/0009-coupon-codes-at-rest.md): checked before anything runs
    prepare: data_key_check::prepare,
};

/// The points core's consumers and the engagement ones.
fn consumers(
    rt: &std::sync::Arc<loyalty_common::runtime::ServiceRuntime>,
) -> Vec<loyalty_common::events::Consumer> {
    let mut all = events::consumers(rt);
    all.extend(engagement::consumers(rt));
    all
}

/// The points lifecycle jobs and the engagement ones.
fn scheduled_jobs(
    rt: &std::sync::Arc<loyalty_common::runtime::ServiceRuntime>,
) -> Vec<loyalty_common::runtime::ScheduledJob> {
    let mut all = jobs::scheduled(rt);
    all.extend(engagement::jobs(rt));
    // start-up work: seal coupon codes left in clear by earlier versions
    // (docs/adr/0009-coupon-codes-at-rest.md); runs as the service starts
    all.push(engagement::coupon_code_sealing_job(rt));
    all
}

/// Entry points for benchmarks and tests (not part of the service's
/// contract).
#[doc(hidden)]
pub mod bench_support {
    use std::sync::Arc;

    use loyalty_common::ServiceError;
    use loyalty_common::jobs::{JobRunner, RunReport};
    use loyalty_common::runtime::ServiceRuntime;

    /// Seals every coupon code still stored in clear now, to the end (what
    /// start-up runs as a job). `None` when another replica is running it.
    pub async fn seal_clear_coupon_codes(
        rt: &Arc<ServiceRuntime>,
    ) -> Result<Option<RunReport>, ServiceError> {
        crate::engagement::seal_clear_coupon_codes(rt).await
    }

    /// Runs the points expiry job once, now, to its end.
    pub async fn run_points_expiry(
        rt: &Arc<ServiceRuntime>,
    ) -> Result<Option<RunReport>, ServiceError> {
        run_points_expiry_in_chunks(rt, None).await
    }

    /// [`run_points_expiry`] with chunks of `chunk` lots (tests of the
    /// run's cursor), or the job's own size.
    pub async fn run_points_expiry_in_chunks(
        rt: &Arc<ServiceRuntime>,
        chunk: Option<i64>,
    ) -> Result<Option<RunReport>, ServiceError> {
        let mut job = crate::jobs::PointsExpiry::new(rt.clone(), crate::jobs::Scope::all());
        if let Some(chunk) = chunk {
            job = job.with_chunk(chunk);
        }
        JobRunner::new(rt.db.clone())
            .with_lease(std::time::Duration::from_secs(600))
            .trigger(&job)
            .await
    }
}
