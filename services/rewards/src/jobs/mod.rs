//! Scheduled jobs of the rewards service: the points lifecycle (pending
//! release after the return window, expiry by policy), each chunked,
//! resumable and idempotent through `loyalty_common::jobs`. Scheduled runs
//! cover every program; RunLifecycleJob runs them for the caller's program
//! only ([`Scope`]).

mod expiry;
mod pending_release;

use std::sync::Arc;
use std::time::Duration;

use loyalty_common::jobs::{Job, Schedule};
use loyalty_common::runtime::{ScheduledJob, ServiceRuntime};

pub(crate) use expiry::PointsExpiry;
pub(crate) use pending_release::PendingRelease;

/// Both lifecycle jobs look every 15 minutes: expiry instants are local
/// midnights of each program's zone, so a quarter-hourly pass keeps expiry
/// within 15 minutes of its boundary whatever the zone; a pass with nothing
/// due costs one index probe.
const LIFECYCLE_EVERY: Duration = Duration::from_secs(15 * 60);

/// Every scheduled job of the service.
pub(crate) fn scheduled(rt: &Arc<ServiceRuntime>) -> Vec<ScheduledJob> {
    vec![
        (
            Arc::new(PendingRelease::new(rt.clone(), Scope::all())) as Arc<dyn Job>,
            Schedule::Every(LIFECYCLE_EVERY),
        ),
        (
            Arc::new(PointsExpiry::new(rt.clone(), Scope::all())) as Arc<dyn Job>,
            Schedule::Every(LIFECYCLE_EVERY),
        ),
    ]
}

/// Which programs a run of a lifecycle job covers: all (the scheduled
/// runs) or one (a run triggered by that program's admin, which must leave
/// every other program untouched). A scoped job has a name of its own
/// (`<job>/<program>`), so its lease, progress and status are the
/// program's and never block the scheduled run or another program's.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Scope {
    program_id: Option<String>,
    name: String,
}

impl Scope {
    /// Every program.
    pub(crate) fn all() -> Self {
        Self::default()
    }

    /// One program.
    pub(crate) fn program(program_id: &str) -> Self {
        Self {
            program_id: Some(program_id.to_owned()),
            name: String::new(),
        }
    }

    /// Names the job of this scope after `base`.
    pub(crate) fn named(mut self, base: &str) -> Self {
        self.name = match &self.program_id {
            None => base.to_owned(),
            Some(p) => format!("{base}/{p}"),
        };
        self
    }

    pub(crate) fn job_name(&self) -> &str {
        &self.name
    }

    pub(crate) fn program_id(&self) -> Option<&str> {
        self.program_id.as_deref()
    }

    /// The SQL condition restricting lots to the scope (`param` holds the
    /// program id), empty for every program.
    pub(crate) fn filter(&self, param: &str) -> String {
        self.program_id
            .as_ref()
            .map(|_| format!("AND program_id = {param}"))
            .unwrap_or_default()
    }

    /// Binds the program id when the scope has one (after `filter`).
    pub(crate) fn bind<'q, O>(
        &self,
        q: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
        match &self.program_id {
            Some(p) => q.bind(p.clone()),
            None => q,
        }
    }
}
