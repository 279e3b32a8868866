//! What membership does with other services' events: purchases, refunds and
//! qualifying points feed the qualifying activity of tiers (purchases and
//! points can upgrade at once; refunds lower the value but never downgrade
//! before the evaluation date). Events about members or programs this
//! service does not know are recorded as handled with no effect.

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::calendar::from_timestamp_opt;
use loyalty_common::db::Tx;
use loyalty_common::events::{Consumer, EventHandler};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::EventEnvelope;
use loyalty_proto::events::event_envelope::Payload;

use crate::domain::program::Metric;
use crate::domain::tiers::ActivityKind;
use crate::store::activity;
use crate::store::members::{self, MemberRecord};
use crate::store::programs::{self, ProgramRecord};
use crate::tiering::upgrade_if_reached;

/// A timestamp of an event, if present and valid.
fn ts(t: Option<&prost_types::Timestamp>) -> Option<chrono::DateTime<chrono::Utc>> {
    from_timestamp_opt("", t).ok().flatten()
}

/// The consumer's name (its inbox and durable).
pub const CONSUMER: &str = "membership-qualifying";

pub fn consumers(rt: &Arc<ServiceRuntime>) -> Vec<Consumer> {
    vec![
        Consumer::new(
            CONSUMER,
            rt.db.clone(),
            Arc::new(QualifyingActivity { rt: rt.clone() }),
        )
        .with_event_types(&["PurchaseCompleted", "OrderRefunded", "PointsEarned"]),
    ]
}

struct QualifyingActivity {
    rt: Arc<ServiceRuntime>,
}

impl QualifyingActivity {
    /// The program and member an event is about, if both are known and the
    /// member can still qualify.
    async fn subject(
        tx: &mut Tx,
        event: &EventEnvelope,
    ) -> Result<Option<(ProgramRecord, MemberRecord)>, ServiceError> {
        if event.program_id.is_empty() || event.member_id.is_empty() {
            return Ok(None);
        }
        let Some(program) = programs::get(tx, &event.program_id).await? else {
            return Ok(None);
        };
        let Some(member) = members::get(tx, &event.program_id, &event.member_id).await? else {
            return Ok(None);
        };
        if matches!(member.status.as_str(), "closed" | "erased") {
            return Ok(None);
        }
        Ok(Some((program, member)))
    }
}

#[async_trait::async_trait]
impl EventHandler for QualifyingActivity {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        let now = self.rt.clock.now();
        let occurred = ts(event.occurred_at.as_ref()).unwrap_or(now);
        let Some((program, member)) = Self::subject(tx, event).await? else {
            tracing::debug!(event_id = %event.event_id, "event about an unknown member or program: nothing to do");
            return Ok(());
        };
        match &event.payload {
            Some(Payload::PurchaseCompleted(p)) => {
                let at = ts(p.purchased_at.as_ref()).unwrap_or(occurred);
                let amount = match &p.amount {
                    Some(m) if m.currency == program.currency.as_str() && m.minor_units >= 0 => {
                        m.minor_units
                    }
                    _ => {
                        tracing::warn!(event_id = %event.event_id, "purchase in another currency than the program's: spend not counted");
                        0
                    }
                };
                if p.order_id.is_empty()
                    || !activity::record(
                        tx,
                        &program.proto.program_id,
                        &member.member_id,
                        ActivityKind::Purchase,
                        &p.order_id,
                        amount,
                        at,
                    )
                    .await?
                {
                    return Ok(()); // no order id, or this order was counted already
                }
                members::touch_last_purchase(
                    tx,
                    &member.member_id,
                    loyalty_common::calendar::to_micros(at),
                )
                .await?;
                let metric = if program.rules.metric == Metric::OrderCount {
                    Metric::OrderCount
                } else {
                    Metric::Spend
                };
                upgrade_if_reached(tx, &program, &member, metric, now).await?;
            }
            Some(Payload::OrderRefunded(r)) => {
                let amount = match &r.amount {
                    Some(m) if m.currency == program.currency.as_str() && m.minor_units > 0 => {
                        m.minor_units
                    }
                    _ => return Ok(()),
                };
                // a refund counts at its purchase's time and never takes
                // back more than the purchase was
                let refunded_at = ts(r.refunded_at.as_ref()).unwrap_or(occurred);
                let (at, cap) = match activity::purchase_of(
                    tx,
                    &program.proto.program_id,
                    &r.order_id,
                )
                .await?
                {
                    Some((owner, purchased, at)) if owner == member.member_id => {
                        let already =
                            -activity::refunded_of(tx, &program.proto.program_id, &r.order_id)
                                .await?;
                        (at, (purchased - already).max(0))
                    }
                    Some(_) => return Ok(()), // another member's order
                    None => (refunded_at, amount),
                };
                let source = format!("{}/{}", r.order_id, r.refund_id);
                activity::record(
                    tx,
                    &program.proto.program_id,
                    &member.member_id,
                    ActivityKind::Refund,
                    &source,
                    -amount.min(cap),
                    at,
                )
                .await?;
            }
            Some(Payload::PointsEarned(pe)) => {
                if pe.points <= 0 || pe.entry_id.is_empty() {
                    return Ok(());
                }
                if activity::record(
                    tx,
                    &program.proto.program_id,
                    &member.member_id,
                    ActivityKind::Points,
                    &pe.entry_id,
                    pe.points,
                    occurred,
                )
                .await?
                {
                    upgrade_if_reached(tx, &program, &member, Metric::Points, now).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}
