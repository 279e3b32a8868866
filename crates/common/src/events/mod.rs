//! Domain events, one way for every service (see docs/adr/0002).
//!
//! A producer appends events to its outbox in the transaction of the state
//! change ([`outbox::append`]); a [`Relay`] publishes them in commit order
//! through an [`EventBus`] and marks them. A [`Consumer`] applies each event
//! in one transaction with its inbox row, so at-least-once delivery gives
//! exactly-once effects. Two transports sit behind [`EventBus`]:
//! [`InProcessBus`] (all services in one process, the embedded default) and
//! [`NatsBus`] (NATS JetStream). Domain code cannot tell them apart.
//!
//! A service's part, in order:
//! 1. producing: `let env = new_envelope("rewards", program, member, payload);`
//!    `outbox::append(&mut tx, &env).await?; tx.commit().await?;`
//!    `notifier.notify();` (the relay's [`OutboxNotifier`]);
//! 2. consuming: implement [`EventHandler`] (effects go into the given
//!    transaction) and declare a [`Consumer`] with its name and event types;
//!    the launcher subscribes every consumer before it starts the relays;
//! 3. the launcher runs one [`Relay`] per service database until shutdown,
//!    which flushes what is pending.
//!
//! Guarantees: every committed event reaches every consumer subscribed when
//! it is published (at least once), its effects apply exactly once (inbox),
//! one ordering key's events (a member's, else the program's) apply in
//! commit order, and an event that keeps failing is parked in
//! `dead_letters` without holding up other keys.

mod bus;
mod in_process;
mod inbox;
mod metrics;
mod nats;
pub mod outbox;
mod relay;

pub use bus::{BusError, EventBus};
pub use in_process::InProcessBus;
pub use inbox::{Consumer, EventHandler, Outcome};
pub use nats::NatsBus;
pub use outbox::OutboxNotifier;
pub use relay::{PublishedBatch, Relay, RelayError};

use loyalty_proto::events::EventEnvelope;
use loyalty_proto::events::event_envelope::Payload;

/// The protobuf package every event type lives in.
pub const EVENTS_PACKAGE: &str = "loyalty.events.v1";

/// A new envelope for `payload`: UUIDv7 id (time-ordered, chosen by the
/// producer so retries are safe), its fully-qualified type name
/// (`loyalty.events.v1.PurchaseCompleted`), now, and the trace context of
/// the current span (so consumers continue the producer's trace).
pub fn new_envelope(
    producer: &str,
    program_id: &str,
    member_id: &str,
    payload: Payload,
) -> EventEnvelope {
    let now = chrono::Utc::now();
    EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: format!("{EVENTS_PACKAGE}.{}", payload_type(&payload)),
        program_id: program_id.to_owned(),
        member_id: member_id.to_owned(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: now.timestamp(),
            nanos: now.timestamp_subsec_nanos() as i32,
        }),
        producer: producer.to_owned(),
        trace_context: crate::telemetry::current_trace_context(),
        payload: Some(payload),
    }
}

/// The ordering key of an envelope: its member, else its program.
pub fn ordering_key(env: &EventEnvelope) -> &str {
    if env.member_id.is_empty() {
        &env.program_id
    } else {
        &env.member_id
    }
}

/// The partition (of `n`) that handles an ordering key: one key always
/// lands in the same partition, which handles its events in order.
pub(crate) fn partition_of(key: &str, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// The short type name of an envelope (`PurchaseCompleted`).
pub fn short_type(env: &EventEnvelope) -> &str {
    env.event_type.rsplit('.').next().unwrap_or_default()
}

/// The message name of a payload variant (`PurchaseCompleted`); the
/// match is exhaustive, so a new event cannot be added without its name.
pub fn payload_type(payload: &Payload) -> &'static str {
    match payload {
        Payload::PurchaseCompleted(_) => "PurchaseCompleted",
        Payload::OrderRefunded(_) => "OrderRefunded",
        Payload::MemberEnrolled(_) => "MemberEnrolled",
        Payload::MemberUpdated(_) => "MemberUpdated",
        Payload::ConsentChanged(_) => "ConsentChanged",
        Payload::TierChanged(_) => "TierChanged",
        Payload::MemberErased(_) => "MemberErased",
        Payload::PointsEarned(_) => "PointsEarned",
        Payload::PointsRedeemed(_) => "PointsRedeemed",
        Payload::PointsExpired(_) => "PointsExpired",
        Payload::RewardRedeemed(_) => "RewardRedeemed",
        Payload::CouponIssued(_) => "CouponIssued",
        Payload::BadgeAwarded(_) => "BadgeAwarded",
        Payload::ReferralQualified(_) => "ReferralQualified",
        Payload::CheckedIn(_) => "CheckedIn",
        Payload::ReviewSubmitted(_) => "ReviewSubmitted",
        Payload::SurveyCompleted(_) => "SurveyCompleted",
        Payload::NpsScored(_) => "NpsScored",
        Payload::TicketOpened(_) => "TicketOpened",
        Payload::TicketStateChanged(_) => "TicketStateChanged",
        Payload::SlaBreached(_) => "SlaBreached",
        Payload::ChurnRiskChanged(_) => "ChurnRiskChanged",
        Payload::CampaignActionRequested(_) => "CampaignActionRequested",
        Payload::NotificationRequested(_) => "NotificationRequested",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loyalty_proto::events::{CheckedIn, PointsEarned};

    #[test]
    fn envelope_names_its_payload_and_orders_by_member() {
        let env = new_envelope(
            "rewards",
            "p1",
            "m1",
            Payload::PointsEarned(PointsEarned::default()),
        );
        assert_eq!(env.event_type, "loyalty.events.v1.PointsEarned");
        assert_eq!(short_type(&env), "PointsEarned");
        assert_eq!(ordering_key(&env), "m1");
        let program_level = new_envelope(
            "rewards",
            "p1",
            "",
            Payload::CheckedIn(CheckedIn::default()),
        );
        assert_eq!(ordering_key(&program_level), "p1");
        // the type name agrees with the descriptor set for every variant
        let pool = loyalty_proto::descriptor_pool();
        let oneof = pool
            .get_message_by_name("loyalty.events.v1.EventEnvelope")
            .unwrap()
            .oneofs()
            .next()
            .unwrap();
        assert_eq!(oneof.fields().count(), 24);
        for field in oneof.fields() {
            let name = field.kind().as_message().unwrap().name().to_owned();
            assert!(
                pool.get_message_by_name(&format!("loyalty.events.v1.{name}"))
                    .is_some()
            );
        }
    }
}
