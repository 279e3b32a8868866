//! The transactional outbox: events are written in the producer's own
//! transaction, so they exist if and only if the state change committed.

use std::sync::Arc;
use std::time::Duration;

use loyalty_proto::events::EventEnvelope;
use prost::Message;
use tokio::sync::Notify;

use crate::db::{Db, Tx, now_micros};

/// Appends `envelope` to the outbox inside the caller's transaction, keyed
/// for ordering by its member (else its program). Call
/// [`OutboxNotifier::notify`] after commit to publish at once.
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

/// Appends every envelope of `envelopes` like [`append`], with one
/// multi-row INSERT per hundred events instead of one statement each (a
/// job announcing what a chunk did).
pub async fn append_all(tx: &mut Tx, envelopes: &[EventEnvelope]) -> Result<(), sqlx::Error> {
    const ROWS: usize = 100;
    let now = now_micros();
    for part in envelopes.chunks(ROWS) {
        let values = (0..part.len())
            .map(|i| {
                let b = 4 * i;
                format!("(${}, ${}, ${}, ${}, $1)", b + 2, b + 3, b + 4, b + 5)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO outbox (event_id, event_type, ordering_key, payload, created_at) VALUES {values}"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now);
        for e in part {
            q = q
                .bind(e.event_id.clone())
                .bind(e.event_type.clone())
                .bind(super::ordering_key(e).to_owned())
                .bind(e.encode_to_vec());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Rows not yet published: the relay's backlog (for health and alerts).
pub async fn pending(db: &Db) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT CAST(COUNT(*) AS BIGINT) FROM outbox WHERE published_at IS NULL")
        .fetch_one(db.pool())
        .await
}

/// Deletes rows published longer than `retention` ago, in chunks of
/// `chunk` rows per transaction (so a large backlog never holds the writer
/// long); returns how many. Unpublished rows are never deleted.
pub async fn delete_published(
    db: &Db,
    retention: Duration,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let cutoff = now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX / 2);
    let mut deleted = 0;
    loop {
        let mut tx = db.begin().await?;
        let done = sqlx::query(
            "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox \
             WHERE published_at IS NOT NULL AND published_at < $1 ORDER BY seq LIMIT $2)",
        )
        .bind(cutoff)
        .bind(chunk.max(1))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        deleted += done.rows_affected();
        if done.rows_affected() < u64::try_from(chunk.max(1)).unwrap_or(u64::MAX) {
            return Ok(deleted);
        }
    }
}

/// Wakes the relay of a database right after a commit wrote events, so
/// publishing does not wait for the next poll. Notifications coalesce: one
/// pass publishes everything committed before it.
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
