//! The coupon expiry job: marks unused coupons whose validity has ended as
//! expired, in chunks. Idempotent and resumable without a cursor: a marked
//! coupon leaves the set the job scans, so a rerun or a resumed run never
//! marks one twice. Refusing an expired code does not wait for this job
//! (validation compares `expires_at` with now); the mark makes the state
//! explicit in storage for lists, reports and clean-up.

use std::sync::Arc;
use std::time::Duration;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::jobs::{ChunkOutcome, Job, RunState};
use loyalty_common::runtime::ServiceRuntime;

/// Coupons marked per chunk (one transaction).
const CHUNK: u32 = 2_000;

/// How often the scheduled run looks: validity ends at any instant, and a
/// pass with nothing due costs one index probe.
pub(crate) const EVERY: Duration = Duration::from_secs(15 * 60);

/// The coupon expiry job, over every program or one.
pub(crate) struct CouponExpiry {
    rt: Arc<ServiceRuntime>,
    program_id: Option<String>,
    name: String,
}

impl CouponExpiry {
    pub(crate) const NAME: &'static str = "rewards.coupon_expiry";

    /// The scheduled job, over every program.
    pub(crate) fn all_programs(rt: Arc<ServiceRuntime>) -> Self {
        Self {
            rt,
            program_id: None,
            name: Self::NAME.to_owned(),
        }
    }

    /// A run over one program (a manual trigger by that program's admin),
    /// with its own lease and progress row.
    pub(crate) fn program(rt: Arc<ServiceRuntime>, program_id: &str) -> Self {
        Self {
            rt,
            program_id: Some(program_id.to_owned()),
            name: format!("{}/{program_id}", Self::NAME),
        }
    }
}

#[async_trait::async_trait]
impl Job for CouponExpiry {
    fn name(&self) -> &str {
        &self.name
    }

    async fn run_chunk(&self, tx: &mut Tx, _run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let now = self.rt.clock.now().timestamp_micros();
        let program = self.program_id.clone().unwrap_or_default();
        // conditional on the coupon still being unused and unmarked, so a
        // redemption committed meanwhile is never overwritten
        let marked = sqlx::query(
            "UPDATE coupons SET expired_at = $1 WHERE coupon_id IN ( \
               SELECT coupon_id FROM coupons WHERE redeemed_at IS NULL AND expired_at IS NULL \
               AND expires_at <= $1 AND ($2 = '' OR program_id = $2) \
               ORDER BY expires_at, coupon_id LIMIT $3) \
             AND redeemed_at IS NULL AND expired_at IS NULL",
        )
        .bind(now)
        .bind(&program)
        .bind(i64::from(CHUNK))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(ChunkOutcome {
            next_cursor: (marked == u64::from(CHUNK)).then(|| "more".to_owned()),
            processed: marked,
        })
    }
}
