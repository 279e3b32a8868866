//! The relay: publishes a database's outbox in commit order and marks rows
//! only after the bus accepted them. One relay per database publishes at a
//! time (a lease), so replicas never reorder a member's events.

use std::sync::Arc;
use std::time::Duration;

use loyalty_proto::events::EventEnvelope;
use prost::Message;

use super::{BusError, EventBus, OutboxNotifier};
use crate::db::{Db, now_micros};
use crate::server::Shutdown;

/// Why a relay pass failed; the rows stay unpublished and are retried.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox storage: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Publishes one database's outbox.
pub struct Relay {
    producer: String,
    db: Db,
    bus: Arc<dyn EventBus>,
    notifier: OutboxNotifier,
    holder: String,
    batch_size: i64,
    poll: Duration,
    lease_ttl: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("producer", &self.producer)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Relay {
    pub fn new(producer: &str, db: Db, bus: Arc<dyn EventBus>) -> Self {
        Self {
            producer: producer.to_owned(),
            db,
            bus,
            notifier: OutboxNotifier::new(),
            holder: crate::lease::new_holder_id(&format!("relay-{producer}")),
            batch_size: 500,
            poll: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(15),
        }
    }

    /// Uses `notifier` (shared with the producer) to wake up after commits.
    #[must_use]
    pub fn with_notifier(mut self, notifier: OutboxNotifier) -> Self {
        self.notifier = notifier;
        self
    }

    /// How often to look for rows written by other replicas.
    #[must_use]
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    pub fn notifier(&self) -> OutboxNotifier {
        self.notifier.clone()
    }

    fn lease_name(&self) -> String {
        format!("outbox-relay:{}", self.producer)
    }

    /// Publishes the oldest unpublished rows (one batch) without marking
    /// them; returns their sequence numbers.
    pub async fn publish_pending(&self) -> Result<Vec<i64>, RelayError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT seq, payload FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.batch_size)
        .fetch_all(self.db.pool())
        .await?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for (seq, payload) in rows {
            match EventEnvelope::decode(payload.as_slice()) {
                Ok(env) => events.push(env),
                // cannot happen unless the table was edited by hand; skip it
                Err(e) => tracing::error!(seq, error = %e, "undecodable outbox row skipped"),
            }
            seqs.push(seq);
        }
        if !events.is_empty() {
            self.bus.publish(&events).await?;
            super::metrics::published(&self.producer, events.len());
        }
        Ok(seqs)
    }

    /// Marks rows published.
    pub async fn mark_published(&self, seqs: &[i64]) -> Result<(), RelayError> {
        if seqs.is_empty() {
            return Ok(());
        }
        // explicit ids: a range could cover a row that committed later
        let placeholders: Vec<String> = (2..seqs.len() + 2).map(|i| format!("${i}")).collect();
        let sql = format!(
            "UPDATE outbox SET published_at = $1 WHERE seq IN ({})",
            placeholders.join(", ")
        );
        let mut tx = self.db.begin().await?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_micros());
        for s in seqs {
            q = q.bind(*s);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Publishes everything pending if this relay holds the lease; returns
    /// how many rows were published.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        if !crate::lease::try_acquire(&self.db, &self.lease_name(), &self.holder, self.lease_ttl)
            .await?
        {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            let seqs = self.publish_pending().await?;
            self.mark_published(&seqs).await?;
            total += seqs.len();
            if seqs.len() < usize::try_from(self.batch_size).unwrap_or(usize::MAX) {
                return Ok(total);
            }
        }
    }

    /// Relays until `shutdown`, then flushes what is pending and gives the
    /// lease up.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let wait = match self.relay_once().await {
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    self.poll
                }
                Err(e) => {
                    tracing::warn!(producer = %self.producer, error = %e, "outbox relay pass failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    backoff
                }
            };
            tokio::select! {
                () = self.notifier.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.wait() => break,
            }
        }
        if let Err(e) = self.relay_once().await {
            tracing::warn!(producer = %self.producer, error = %e, "outbox not flushed at shutdown; it will be on next start");
        }
        let _ = crate::lease::release(&self.db, &self.lease_name(), &self.holder).await;
    }
}
