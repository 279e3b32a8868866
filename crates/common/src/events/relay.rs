//! The relay: publishes a database's outbox in commit order and marks rows
//! only after the bus accepted them.
//!
//! Only one relay per outbox publishes at a time, or two replicas could
//! interleave a member's events. The turn is taken per batch and needs no
//! lease to expire:
//! - PostgreSQL: the batch runs in a transaction holding
//!   `pg_try_advisory_xact_lock` (keyed by the schema, i.e. the outbox);
//!   the rows are read, published and marked in it, and the lock goes away
//!   with the transaction — commit, rollback or a dead connection. A relay
//!   that finds the lock taken does nothing this pass.
//! - SQLite: the database belongs to one process (the embedded default), so a
//!   process-wide lock per database file does the same. A write
//!   transaction cannot be held instead: in-process consumers writing to the
//!   same database during the publish would wait on it forever.
//!
//! A relay that dies after publishing and before marking leaves the rows
//! unpublished: the next relay publishes them again, and JetStream's
//! duplicate window and the consumers' inboxes absorb the repeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use loyalty_proto::events::EventEnvelope;
use prost::Message;

use super::{BusError, EventBus, OutboxNotifier};
use crate::db::{Db, Engine, Tx, engine_of, now_micros};
use crate::server::Shutdown;

/// Why a relay pass failed; the rows stay unpublished and are retried.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("outbox storage: {0}")]
    Db(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// This relay's turn to publish (see the module docs); dropping it ends
/// the turn without marking anything.
enum Turn {
    Postgres(Tx),
    Sqlite(tokio::sync::OwnedMutexGuard<()>),
}

/// Rows a relay has published and not yet marked. Pass it to
/// [`Relay::mark_published`]; dropping it instead is what a crash between
/// publishing and marking looks like (the rows are published again later).
#[must_use = "mark the batch published, or it is published again"]
pub struct PublishedBatch {
    seqs: Vec<i64>,
    turn: Turn,
}

impl std::fmt::Debug for PublishedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedBatch")
            .field("rows", &self.seqs.len())
            .finish_non_exhaustive()
    }
}

impl PublishedBatch {
    /// Outbox sequence numbers, ascending.
    pub fn seqs(&self) -> &[i64] {
        &self.seqs
    }

    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// Publishes one database's outbox.
pub struct Relay {
    producer: String,
    db: Db,
    bus: Arc<dyn EventBus>,
    notifier: OutboxNotifier,
    batch_size: usize,
    poll: Duration,
    flush_timeout: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("producer", &self.producer)
            .field("transport", &self.bus.transport())
            .finish_non_exhaustive()
    }
}

/// Longest pause after failed passes (bus or database down).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl Relay {
    /// A relay publishing batches of 500, polling every 500 ms for rows
    /// written by other replicas, and flushing for at most 10 s at shutdown.
    pub fn new(producer: &str, db: Db, bus: Arc<dyn EventBus>) -> Self {
        Self {
            producer: producer.to_owned(),
            db,
            bus,
            notifier: OutboxNotifier::new(),
            batch_size: 500,
            poll: Duration::from_millis(500),
            flush_timeout: Duration::from_secs(10),
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

    /// Most rows published (and, in-process, applied) per batch.
    #[must_use]
    pub fn with_batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// How long the final flush at shutdown may take.
    #[must_use]
    pub fn with_flush_timeout(mut self, timeout: Duration) -> Self {
        self.flush_timeout = timeout;
        self
    }

    pub fn notifier(&self) -> OutboxNotifier {
        self.notifier.clone()
    }

    /// Takes this database's turn to publish, if no other relay has it.
    async fn try_turn(&self) -> Result<Option<Turn>, sqlx::Error> {
        match self.db.engine() {
            Engine::Postgres => {
                let mut tx = self.db.begin().await?;
                let got: bool = sqlx::query_scalar(
                    "SELECT pg_try_advisory_xact_lock($1, hashtext(current_schema()))",
                )
                .bind(RELAY_LOCK_CLASS)
                .fetch_one(&mut *tx)
                .await?;
                Ok(got.then_some(Turn::Postgres(tx)))
            }
            Engine::Sqlite => Ok(sqlite_lock(self.db.url().as_str())
                .try_lock_owned()
                .ok()
                .map(Turn::Sqlite)),
        }
    }

    /// Publishes the oldest unpublished rows (one batch) without marking
    /// them. `None` when another relay is publishing this outbox now.
    pub async fn publish_pending(&self) -> Result<Option<PublishedBatch>, RelayError> {
        let Some(mut turn) = self.try_turn().await? else {
            return Ok(None);
        };
        let limit = i64::try_from(self.batch_size).unwrap_or(i64::MAX);
        let select = sqlx::query_as::<_, (i64, Vec<u8>)>(
            "SELECT seq, payload FROM outbox WHERE published_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(limit);
        let rows = match &mut turn {
            Turn::Postgres(tx) => select.fetch_all(&mut **tx).await?,
            Turn::Sqlite(_) => select.fetch_all(self.db.pool()).await?,
        };
        let mut seqs = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for (seq, payload) in rows {
            match EventEnvelope::decode(payload.as_slice()) {
                Ok(env) => events.push(env),
                // only a hand-edited row can get here; it must not block the rest
                Err(e) => tracing::error!(seq, error = %e, "undecodable outbox row skipped"),
            }
            seqs.push(seq);
        }
        if !events.is_empty() {
            self.bus.publish(&events).await?;
            super::metrics::published(&self.producer, events.len());
        }
        Ok(Some(PublishedBatch { seqs, turn }))
    }

    /// Marks a published batch and ends the turn; returns how many rows.
    pub async fn mark_published(&self, batch: PublishedBatch) -> Result<usize, RelayError> {
        let n = batch.seqs.len();
        match batch.turn {
            Turn::Postgres(mut tx) => {
                mark(&mut tx, &batch.seqs).await?;
                tx.commit().await?;
            }
            Turn::Sqlite(_guard) => {
                if n > 0 {
                    let mut tx = self.db.begin().await?;
                    mark(&mut tx, &batch.seqs).await?;
                    tx.commit().await?;
                }
            } // the turn ends here, after the marks committed
        }
        Ok(n)
    }

    /// Publishes and marks everything pending, batch by batch; returns how
    /// many rows. Does nothing while another relay is publishing.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        let mut total = 0;
        while let Some(batch) = self.publish_pending().await? {
            let n = self.mark_published(batch).await?;
            total += n;
            if n < self.batch_size {
                break;
            }
        }
        Ok(total)
    }

    /// Relays until `shutdown`: at once when notified, else every poll
    /// interval, backing off while the bus or the database fails. Then
    /// flushes what is pending (bounded by the flush timeout).
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let wait = match self.relay_once().await {
                Ok(_) => {
                    backoff = FIRST_BACKOFF;
                    self.poll
                }
                Err(e) => {
                    tracing::warn!(producer = %self.producer, error = %e, "outbox relay pass failed; retrying");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                }
            };
            tokio::select! {
                () = self.notifier.notified() => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.wait() => break,
            }
        }
        match tokio::time::timeout(self.flush_timeout, self.relay_once()).await {
            Ok(Ok(n)) => tracing::debug!(producer = %self.producer, rows = n, "outbox flushed"),
            Ok(Err(e)) => {
                tracing::warn!(producer = %self.producer, error = %e, "outbox not flushed at shutdown; it will be on next start");
            }
            Err(_) => {
                tracing::warn!(producer = %self.producer, "outbox flush timed out at shutdown; the rest goes on next start");
            }
        }
    }
}

/// Advisory-lock class of outbox relays ("OBXR"); the second key is the
/// schema, so outboxes in different schemas of one database do not contend.
const RELAY_LOCK_CLASS: i32 = 0x4F42_5852;

/// The process-wide relay lock of one SQLite database.
fn sqlite_lock(url: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // forget databases no relay is using (tests open thousands)
    locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    locks.entry(url.to_owned()).or_default().clone()
}

/// Marks rows by explicit sequence numbers: a range could cover a row that
/// committed later (and was never published). One statement of fixed SQL
/// for any count (a statement per count would be prepared and planned anew
/// for most batches): an array on PostgreSQL, probed through the primary
/// key; a JSON array on SQLite.
async fn mark(tx: &mut Tx, seqs: &[i64]) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let list = seqs
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let (sql, list) = match engine_of(tx) {
        Engine::Postgres => (
            "UPDATE outbox SET published_at = $1 WHERE seq = ANY(CAST($2 AS bigint[]))",
            format!("{{{list}}}"),
        ),
        Engine::Sqlite => (
            "UPDATE outbox SET published_at = $1 WHERE seq IN (SELECT value FROM json_each($2))",
            format!("[{list}]"),
        ),
    };
    sqlx::query(sql)
        .bind(now_micros())
        .bind(list)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
