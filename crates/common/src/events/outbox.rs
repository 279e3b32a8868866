//! The transactional outbox: events are written in the producer's own
//! transaction, so they exist if and only if the state change committed.

use std::sync::Arc;

use loyalty_proto::events::EventEnvelope;
use prost::Message;
use tokio::sync::Notify;

use crate::db::{Tx, now_micros};

/// Appends `envelope` to the outbox inside the caller's transaction.
/// Call [`OutboxNotifier::notify`] after commit to publish at once.
pub async fn append(tx: &mut Tx, envelope: &EventEnvelope) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, ordering_key, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&envelope.event_id)
    .bind(&envelope.event_type)
    .bind(super::ordering_key(envelope))
    .bind(envelope.encode_to_vec())
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Wakes the relay of a database right after a commit wrote events, so
/// publishing does not wait for the next poll.
#[derive(Debug, Clone, Default)]
pub struct OutboxNotifier(Arc<Notify>);

impl OutboxNotifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn notify(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn notified(&self) {
        self.0.notified().await;
    }
}
