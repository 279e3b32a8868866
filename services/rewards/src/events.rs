//! Events the points core consumes: purchases and refunds recorded by other
//! producers (PurchaseCompleted / OrderRefunded; our own are skipped), tier
//! changes (the member's tier and multiplier for the rules engine), reviews
//! and surveys (behaviour rules), erasures, and campaign point grants.
//!
//! Campaign coupon issue (`CampaignActionRequested.issue_coupon_pool_id`) is
//! not handled here: the coupons module subscribes its own consumer to the
//! same event type and handles that action.

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::calendar::from_timestamp_opt;
use loyalty_common::db::Tx;
use loyalty_common::events::{Consumer, EventHandler};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::EventEnvelope;
use loyalty_proto::events::campaign_action_requested::Action;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::rewards::v1 as pb;

use crate::domain::earning_rules::Behaviour;
use crate::store::ledger::PRODUCER;
use crate::store::{ledger_behaviour, ledger_purchases, rules_member};

/// Every consumer of the points core (the launcher subscribes them).
pub(crate) fn consumers(rt: &Arc<ServiceRuntime>) -> Vec<Consumer> {
    vec![
        Consumer::new(
            "rewards.points",
            rt.db.clone(),
            Arc::new(PointsEvents { rt: rt.clone() }),
        )
        .with_event_types(&[
            "PurchaseCompleted",
            "OrderRefunded",
            "TierChanged",
            "ReviewSubmitted",
            "SurveyCompleted",
            "MemberErased",
            "CampaignActionRequested",
        ])
        // our own announcements of RPC-recorded purchases and refunds are
        // applied already: passed by without an inbox row
        .ignoring_producer(PRODUCER),
    ]
}

struct PointsEvents {
    rt: Arc<ServiceRuntime>,
}

fn line_to_proto(l: &loyalty_proto::events::OrderLine) -> pb::PurchaseLine {
    pb::PurchaseLine {
        line_id: l.line_id.clone(),
        sku: l.sku.clone(),
        category: l.category.clone(),
        quantity: l.quantity,
        amount: l.amount.clone(),
    }
}

#[async_trait::async_trait]
impl EventHandler for PointsEvents {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        let now = self.rt.clock.now();
        let program = &event.program_id;
        let member = &event.member_id;
        match &event.payload {
            Some(Payload::PurchaseCompleted(p)) => {
                let purchase = pb::Purchase {
                    order_id: p.order_id.clone(),
                    amount: p.amount.clone(),
                    lines: p.lines.iter().map(line_to_proto).collect(),
                    channel: p.channel.clone(),
                    store_id: p.store_id.clone(),
                    purchased_at: p.purchased_at,
                };
                let input =
                    ledger_purchases::purchase_input(program, member, Some(&purchase), now)?;
                ledger_purchases::record_purchase(
                    tx,
                    self.rt.db.url().as_str(),
                    &input,
                    now,
                    false,
                )
                .await?;
            }
            Some(Payload::OrderRefunded(r)) => {
                let req = pb::RecordRefundRequest {
                    program_id: program.clone(),
                    order_id: r.order_id.clone(),
                    refund_id: r.refund_id.clone(),
                    lines: r
                        .lines
                        .iter()
                        .map(|l| pb::RefundLine {
                            line_id: l.line_id.clone(),
                            amount: l.amount.clone(),
                        })
                        .collect(),
                    amount: r.amount.clone(),
                    refunded_at: r.refunded_at,
                };
                let input = ledger_purchases::refund_input(&req, now)?;
                ledger_purchases::record_refund(tx, &input, now, false).await?;
            }
            Some(Payload::TierChanged(t)) => {
                rules_member::set_tier(tx, program, member, &t.to_tier, t.points_multiplier_bp)
                    .await?;
            }
            Some(Payload::ReviewSubmitted(r)) => {
                let at =
                    from_timestamp_opt("occurred_at", event.occurred_at.as_ref())?.unwrap_or(now);
                ledger_behaviour::award_behaviour(
                    tx,
                    program,
                    member,
                    Behaviour::ReviewSubmitted,
                    &r.review_id,
                    at,
                )
                .await?;
            }
            Some(Payload::SurveyCompleted(s)) => {
                let at =
                    from_timestamp_opt("occurred_at", event.occurred_at.as_ref())?.unwrap_or(now);
                ledger_behaviour::award_behaviour(
                    tx,
                    program,
                    member,
                    Behaviour::SurveyCompleted,
                    &s.response_id,
                    at,
                )
                .await?;
            }
            Some(Payload::CampaignActionRequested(c)) => {
                if let Some(Action::GrantPoints(points)) = c.action
                    && points > 0
                {
                    ledger_behaviour::grant_campaign_points(
                        tx,
                        program,
                        member,
                        &c.campaign_id,
                        &c.action_id,
                        points,
                        now,
                    )
                    .await?;
                }
                // issue_coupon_pool_id: handled by the coupons module's consumer
            }
            // MemberErased: the ledger holds no personal data (member ids
            // are pseudonymous and survive erasure; amounts and order ids
            // are the program's books), so there is nothing to erase
            _ => {}
        }
        Ok(())
    }
}
