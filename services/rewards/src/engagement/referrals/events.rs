//! Events the referral program reacts to: MemberEnrolled (contact hashes),
//! MemberErased (hashes erased; amounts and referral records stay), and
//! PurchaseCompleted (a referee's qualifying purchase rewards both sides,
//! once: the pending → qualified update is conditional), and OrderRefunded
//! (a qualifying order refunded in full takes both rewards back, once: the
//! qualified → clawed back update is conditional too).
//!
//! Only a refund in full takes the rewards back: a partial refund leaves a
//! purchase the referee kept, which is what the referral was for, and
//! taking points from the referrer over a returned item would punish the
//! side that did nothing wrong.

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::events::EventHandler;
use loyalty_common::money::Money;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{EventEnvelope, OrderRefunded, PurchaseCompleted, ReferralQualified};

use super::rules;
use super::store;
use crate::engagement::points::{self, Purpose};
use crate::engagement::support::{emit, now_micros};

pub(crate) struct ReferralEvents {
    pub rt: Arc<ServiceRuntime>,
}

#[async_trait::async_trait]
impl EventHandler for ReferralEvents {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        if event.member_id.is_empty() {
            return Ok(());
        }
        let (program, member) = (event.program_id.as_str(), event.member_id.as_str());
        match &event.payload {
            Some(Payload::MemberEnrolled(e)) => {
                let hashes: Vec<String> = e
                    .contact_hashes
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .filter(|h| rules::is_contact_hash(h))
                    .collect();
                store::add_contact_hashes(tx, program, member, &hashes).await
            }
            Some(Payload::MemberErased(_)) => store::erase_member(tx, program, member).await,
            // one way for purchases: a run of one
            Some(Payload::PurchaseCompleted(_)) => self.handle_group(tx, &[event]).await,
            Some(Payload::OrderRefunded(r)) => self.refund(tx, program, member, r).await,
            _ => Ok(()),
        }
    }

    /// Purchases, by far the most frequent event, go in runs: a run's
    /// purchasers are recorded in one statement and the referees among
    /// them found in one more; only those go on one by one. Every other
    /// event is handled alone, in order.
    async fn handle_group(
        &self,
        tx: &mut Tx,
        events: &[&EventEnvelope],
    ) -> Result<(), ServiceError> {
        let purchase_of = |e: &EventEnvelope| match &e.payload {
            Some(Payload::PurchaseCompleted(p)) if !e.member_id.is_empty() => Some(p.clone()),
            _ => None,
        };
        let mut rest = events;
        while let Some(first) = rest.first() {
            let run = rest.iter().take_while(|e| purchase_of(e).is_some()).count();
            if run == 0 {
                self.handle(tx, first).await?;
                rest = &rest[1..];
                continue;
            }
            let (purchases, after) = rest.split_at(run);
            let rows: Vec<(&str, &str, &str)> = purchases
                .iter()
                .filter_map(|e| match &e.payload {
                    Some(Payload::PurchaseCompleted(p)) => Some((
                        e.program_id.as_str(),
                        e.member_id.as_str(),
                        p.order_id.as_str(),
                    )),
                    _ => None,
                })
                .collect();
            store::record_purchases(tx, &rows).await?;
            let members: Vec<(&str, &str)> = rows.iter().map(|(p, m, _)| (*p, *m)).collect();
            let referees = store::pending_referees(tx, &members).await?;
            for e in purchases {
                if referees.contains(&(e.program_id.clone(), e.member_id.clone()))
                    && let Some(p) = purchase_of(e)
                {
                    self.qualify(tx, &e.program_id, &e.member_id, &p).await?;
                }
            }
            rest = after;
        }
        Ok(())
    }
}

impl ReferralEvents {
    /// A recorded purchase qualifies the member's pending referral when it
    /// meets the program's terms: both sides are rewarded, once.
    async fn qualify(
        &self,
        tx: &mut Tx,
        program: &str,
        member: &str,
        p: &PurchaseCompleted,
    ) -> Result<(), ServiceError> {
        let Some(referral) = store::referral_of_referee(tx, program, member).await? else {
            return Ok(());
        };
        if referral.state != "pending" {
            return Ok(());
        }
        let Some(terms) = store::get_terms_tx(tx, program).await? else {
            return Ok(());
        };
        let min = match (terms.min_purchase_minor, &terms.min_purchase_currency) {
            (Some(minor), Some(currency)) => Money::from_proto(
                "min_purchase",
                Some(&loyalty_proto::common::Money {
                    minor_units: minor,
                    currency: currency.clone(),
                }),
            )
            .ok(),
            _ => None,
        };
        let amount = Money::from_proto("amount", p.amount.as_ref()).ok();
        if !rules::qualifies(min, amount) {
            return Ok(());
        }
        let now = self.rt.clock.now();
        let order = store::QualifyingOrder {
            order_id: &p.order_id,
            amount: amount.as_ref().map(|a| (a.minor, a.currency.as_str())),
        };
        if !store::qualify(
            tx,
            &referral.referral_id,
            terms.referrer_points,
            terms.referee_points,
            &order,
            now_micros(&self.rt),
        )
        .await?
        {
            return Ok(());
        }
        let reference = format!("referral:{}", referral.referral_id);
        points::lock_members(tx, program, &[&referral.referrer_id, &referral.referee_id]).await?;
        if terms.referrer_points > 0 {
            points::credit(
                tx,
                program,
                &referral.referrer_id,
                Purpose::Referral,
                terms.referrer_points,
                &reference,
                now,
            )
            .await?;
        }
        if terms.referee_points > 0 {
            points::credit(
                tx,
                program,
                &referral.referee_id,
                Purpose::Referral,
                terms.referee_points,
                &reference,
                now,
            )
            .await?;
        }
        emit(
            tx,
            program,
            &referral.referrer_id,
            Payload::ReferralQualified(ReferralQualified {
                referral_id: referral.referral_id.clone(),
                referee_member_id: referral.referee_id.clone(),
                referrer_points: terms.referrer_points,
                referee_points: terms.referee_points,
                qualifying_order_id: p.order_id.clone(),
            }),
        )
        .await?;
        self.rt.outbox.notify();
        Ok(())
    }

    /// Takes back both rewards of a referral whose qualifying order is now
    /// refunded in full, each under the program's clawback policy.
    async fn refund(
        &self,
        tx: &mut Tx,
        program: &str,
        member: &str,
        r: &OrderRefunded,
    ) -> Result<(), ServiceError> {
        let Some(referral) = store::referral_of_referee(tx, program, member).await? else {
            return Ok(());
        };
        if referral.state != "qualified"
            || referral.qualifying_order_id.as_deref() != Some(r.order_id.as_str())
        {
            return Ok(());
        }
        let (minor, currency) = r
            .amount
            .as_ref()
            .map_or((0, ""), |m| (m.minor_units, m.currency.as_str()));
        let full =
            store::count_refund(tx, &referral.referral_id, &r.refund_id, minor, currency).await?;
        if !full || !store::claw_back(tx, &referral.referral_id, now_micros(&self.rt)).await? {
            return Ok(());
        }
        let reference = format!("referral:{}", referral.referral_id);
        points::lock_members(tx, program, &[&referral.referrer_id, &referral.referee_id]).await?;
        let sides = [
            (&referral.referrer_id, referral.referrer_points),
            (&referral.referee_id, referral.referee_points),
        ];
        for (side, owed) in sides {
            if owed > 0 {
                points::claw_back(
                    tx,
                    program,
                    side,
                    owed,
                    &reference,
                    "qualifying order refunded in full",
                )
                .await?;
            }
        }
        self.rt.outbox.notify();
        Ok(())
    }
}
