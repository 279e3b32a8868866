//! The transport-neutral event bus.

use std::sync::Arc;

use loyalty_proto::events::EventEnvelope;

use super::Consumer;
use crate::server::Shutdown;

/// Why the bus could not publish or subscribe. Publishing errors are
/// retried by the relay; nothing is marked published before success.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
    #[error("consumer {consumer} could not apply event {event_id}: {reason}")]
    Consumer {
        consumer: String,
        event_id: String,
        reason: String,
    },
}

/// Carries domain events between services. Services see only this trait
/// (through their runtime), so they cannot tell which transport runs.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync {
    /// "in-process" or "nats".
    fn transport(&self) -> &'static str;

    /// Publishes events in order; returns once the transport holds them
    /// durably (JetStream acks) or, in-process, once every subscribed
    /// consumer has applied them.
    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), BusError>;

    /// Starts delivering the events `consumer` takes, each applied through
    /// its inbox, one ordering key's events in order. NATS stops pulling at
    /// `shutdown` (unacked events are redelivered after a restart); the
    /// in-process bus keeps applying what relays flush during shutdown.
    /// Subscribe every consumer before starting the relays.
    async fn subscribe(&self, consumer: Arc<Consumer>, shutdown: Shutdown) -> Result<(), BusError>;
}
