//! Counts purchases, reviews and check-ins per member from events, then
//! awards every badge whose rule now holds and the member does not hold
//! yet (BadgeAwarded), in the transaction of the count.

use std::collections::HashSet;
use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::events::EventHandler;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{BadgeAwarded, EventEnvelope};

use super::rules::{self, Counters};
use super::store;
use crate::engagement::support::{emit, now_micros};

pub(crate) struct BadgeCounters {
    pub rt: Arc<ServiceRuntime>,
}

/// What one event adds to the counters, and the fact it counts (an order,
/// a review, a check-in day), counted once however often it is announced.
fn increment(payload: &Payload, event_id: &str) -> Option<(Counters, String)> {
    let or_event = |key: &str| {
        if key.is_empty() {
            format!("event:{event_id}")
        } else {
            key.to_owned()
        }
    };
    match payload {
        Payload::PurchaseCompleted(p) => Some((
            Counters {
                purchases: 1,
                ..Counters::default()
            },
            format!("order:{}", or_event(&p.order_id)),
        )),
        Payload::ReviewSubmitted(r) => Some((
            Counters {
                reviews: 1,
                ..Counters::default()
            },
            format!("review:{}", or_event(&r.review_id)),
        )),
        Payload::CheckedIn(c) => Some((
            Counters {
                check_ins: 1,
                best_streak: i64::from(c.streak_days.max(0)),
                ..Counters::default()
            },
            format!("check-in:{}", or_event(&c.local_date)),
        )),
        _ => None,
    }
}

#[async_trait::async_trait]
impl EventHandler for BadgeCounters {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError> {
        let Some((add, fact)) = event
            .payload
            .as_ref()
            .and_then(|p| increment(p, &event.event_id))
        else {
            return Ok(());
        };
        if event.member_id.is_empty() {
            return Ok(());
        }
        let (program, member) = (event.program_id.as_str(), event.member_id.as_str());
        if !store::count_fact(tx, program, member, &fact).await? {
            return Ok(()); // counted before under another event id
        }
        let counters = store::bump(tx, program, member, add).await?;
        let badges = store::all_badges(tx, program).await?;
        if badges.is_empty() {
            return Ok(());
        }
        let held: HashSet<String> = store::held(tx, program, member)
            .await?
            .into_iter()
            .collect();
        let defs: Vec<(String, Vec<rules::Condition>)> = badges
            .iter()
            .map(|b| (b.code.clone(), b.conditions.clone()))
            .collect();
        let now = now_micros(&self.rt);
        let mut awarded = false;
        for code in rules::newly_earned(&defs, &counters, &held) {
            if store::award(tx, program, member, code, now).await? {
                let name = badges
                    .iter()
                    .find(|b| b.code == code)
                    .map(|b| b.name.clone())
                    .unwrap_or_default();
                emit(
                    tx,
                    program,
                    member,
                    Payload::BadgeAwarded(BadgeAwarded {
                        badge_code: code.to_owned(),
                        badge_name: name,
                    }),
                )
                .await?;
                awarded = true;
            }
        }
        if awarded {
            self.rt.outbox.notify();
        }
        Ok(())
    }
}
