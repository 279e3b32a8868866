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
        self.handle_group(tx, &[event]).await
    }

    /// Counts a group's facts in a few statements whatever its size: the
    /// facts at once, every member's counters at once, each program's
    /// badges once. Counters only grow, so badges earned at the end of the
    /// group are those that one event after the other would have awarded.
    async fn handle_group(
        &self,
        tx: &mut Tx,
        events: &[&EventEnvelope],
    ) -> Result<(), ServiceError> {
        let counted: Vec<(&EventEnvelope, Counters, String)> = events
            .iter()
            .filter(|e| !e.member_id.is_empty())
            .filter_map(|e| {
                let (add, fact) = increment(e.payload.as_ref()?, &e.event_id)?;
                Some((*e, add, fact))
            })
            .collect();
        let facts: Vec<store::Fact> = counted
            .iter()
            .map(|(e, _, f)| (e.program_id.as_str(), e.member_id.as_str(), f.as_str()))
            .collect();
        let mut new_facts = store::count_facts(tx, &facts).await?;
        // what each member's new facts add up to, members in first-seen order
        let mut adds: Vec<((&str, &str), Counters)> = Vec::new();
        for (e, add, fact) in &counted {
            let key = (e.program_id.clone(), e.member_id.clone(), fact.clone());
            if !new_facts.remove(&key) {
                continue; // counted before under another event id, or twice here
            }
            let member = (e.program_id.as_str(), e.member_id.as_str());
            match adds.iter_mut().find(|(m, _)| *m == member) {
                Some((_, sum)) => {
                    sum.purchases += add.purchases;
                    sum.reviews += add.reviews;
                    sum.check_ins += add.check_ins;
                    sum.best_streak = sum.best_streak.max(add.best_streak);
                }
                None => adds.push((member, *add)),
            }
        }
        let counters = store::bump_all(tx, &adds).await?;
        let mut badges_of: Vec<(&str, Vec<store::BadgeRow>)> = Vec::new();
        let mut awarded = false;
        for ((program, member), _) in &adds {
            let at = if let Some(i) = badges_of.iter().position(|(p, _)| p == program) {
                i
            } else {
                badges_of.push((program, store::all_badges(tx, program).await?));
                badges_of.len() - 1
            };
            let badges = &badges_of[at].1;
            if badges.is_empty() {
                continue;
            }
            let now_counters = counters
                .get(&((*program).to_owned(), (*member).to_owned()))
                .copied()
                .ok_or_else(|| ServiceError::internal("the counter upsert answered no row"))?;
            awarded |= self
                .award(tx, program, member, badges, &now_counters)
                .await?;
        }
        if awarded {
            self.rt.outbox.notify();
        }
        Ok(())
    }
}

impl BadgeCounters {
    /// Awards the badges the member's counters now earn and it does not
    /// hold; true when any was.
    async fn award(
        &self,
        tx: &mut Tx,
        program: &str,
        member: &str,
        badges: &[store::BadgeRow],
        counters: &Counters,
    ) -> Result<bool, ServiceError> {
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
        for code in rules::newly_earned(&defs, counters, &held) {
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
        Ok(awarded)
    }
}
