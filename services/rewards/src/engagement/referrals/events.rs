//! Events the referral program reacts to: MemberEnrolled (contact hashes),
//! MemberErased (hashes erased; amounts and referral records stay), and
//! PurchaseCompleted (a referee's qualifying purchase rewards both sides,
//! once: the pending → qualified update is conditional).

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::events::EventHandler;
use loyalty_common::money::Money;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{EventEnvelope, PurchaseCompleted, ReferralQualified};

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
            Some(Payload::PurchaseCompleted(p)) => self.purchase(tx, program, member, p).await,
            _ => Ok(()),
        }
    }
}

impl ReferralEvents {
    async fn purchase(
        &self,
        tx: &mut Tx,
        program: &str,
        member: &str,
        p: &PurchaseCompleted,
    ) -> Result<(), ServiceError> {
        store::record_purchase(tx, program, member, &p.order_id).await?;
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
        if !store::qualify(
            tx,
            &referral.referral_id,
            terms.referrer_points,
            terms.referee_points,
            &p.order_id,
            now_micros(&self.rt),
        )
        .await?
        {
            return Ok(());
        }
        let reference = format!("referral:{}", referral.referral_id);
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
}
