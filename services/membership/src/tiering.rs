//! Tier changes with their side effects: the member row, the history and
//! the TierChanged event, written in the caller's transaction. Used by the
//! purchase consumer (immediate upgrades) and the evaluation job (reviews).

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_micros, to_micros};
use loyalty_common::db::Tx;
use loyalty_common::events::outbox;
use loyalty_proto::events::TierChanged;
use loyalty_proto::events::event_envelope::Payload;

use crate::api::event;
use crate::domain::program::Metric;
use crate::domain::tiers::{next_evaluation, upgrade, window_start};
use crate::store::activity;
use crate::store::members::{self, MemberRecord};
use crate::store::programs::ProgramRecord;

/// Why a tier changed (the events' and history's reason).
pub const THRESHOLD_REACHED: &str = "threshold_reached";
pub const EVALUATION_DOWNGRADE: &str = "evaluation_downgrade";
pub const EVALUATION_UPGRADE: &str = "evaluation_upgrade";

/// Activity is counted up to any time: a purchase stamped slightly ahead
/// of our clock still counts at once.
pub fn open_end() -> DateTime<Utc> {
    from_micros(i64::MAX / 2)
}

/// A tier change to make.
#[derive(Debug, Clone, Copy)]
pub struct TierMove<'a> {
    /// The new level.
    pub level: usize,
    /// Why (history and event).
    pub reason: &'a str,
    /// The qualifying value that decided.
    pub value: i64,
    pub at: DateTime<Utc>,
    pub next_evaluation_at: DateTime<Utc>,
}

/// Moves `m` to `to.level` with its history row and event, and sets the
/// next evaluation date. Fails with a conflict when the member changed
/// since it was read (the caller's transaction is then rolled back and
/// retried).
pub async fn change_tier(
    tx: &mut Tx,
    program: &ProgramRecord,
    m: &MemberRecord,
    to: &TierMove<'_>,
) -> Result<(), ServiceError> {
    let TierMove {
        level,
        reason,
        value,
        at,
        next_evaluation_at,
    } = *to;
    let tier = &program.rules.tiers[level];
    if !members::set_tier(
        tx,
        &m.member_id,
        m.version,
        &tier.code,
        to_micros(at),
        to_micros(next_evaluation_at),
    )
    .await?
    {
        return Err(ServiceError::Conflict(format!(
            "member {} changed during a tier change",
            m.member_id
        )));
    }
    activity::record_tier_change(
        tx,
        &m.member_id,
        &m.tier_code,
        &tier.code,
        reason,
        value,
        at,
    )
    .await?;
    let env = event(
        &m.program_id,
        &m.member_id,
        Payload::TierChanged(TierChanged {
            from_tier: m.tier_code.clone(),
            to_tier: tier.code.clone(),
            reason: reason.into(),
            points_multiplier_bp: tier.points_multiplier_bp(),
        }),
        at,
    );
    outbox::append(tx, &env).await?;
    Ok(())
}

/// After new qualifying activity: upgrade at once if the value in the
/// current window reaches a higher tier. True when it did.
pub async fn upgrade_if_reached(
    tx: &mut Tx,
    program: &ProgramRecord,
    m: &MemberRecord,
    metric_of_activity: Metric,
    at: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    if program.rules.metric != metric_of_activity || m.status != "active" {
        return Ok(false);
    }
    let start = window_start(program.rules.window, &program.tz, at);
    let value = activity::value(
        tx,
        &m.program_id,
        &m.member_id,
        program.rules.metric,
        start,
        open_end(),
    )
    .await?;
    let current = program.rules.level_or_base(&m.tier_code);
    let Some(level) = upgrade(&program.rules.tiers, current, value) else {
        return Ok(false);
    };
    let next = next_evaluation(program.rules.evaluation, &program.tz, at);
    let to = TierMove {
        level,
        reason: THRESHOLD_REACHED,
        value,
        at,
        next_evaluation_at: next,
    };
    change_tier(tx, program, m, &to).await?;
    Ok(true)
}
