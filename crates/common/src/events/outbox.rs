//! The transactional outbox: events are written in the producer's own
//! transaction, so they exist if and only if the state change committed.

use std::sync::Arc;
use std::time::Duration;

use loyalty_proto::events::EventEnvelope;
use prost::Message;
use tokio::sync::Notify;

use crate::db::{Db, Engine, JsonType, Tx, engine_of, json_rows, now_micros};

/// Appends `envelope` to the outbox inside the caller's transaction, keyed
/// for ordering by its member (else its program). Call
/// [`OutboxNotifier::notify`] after commit to publish at once.
pub async fn append(tx: &mut Tx, envelope: &EventEnvelope) -> Result<(), sqlx::Error> {
    append_all(tx, std::slice::from_ref(envelope)).await
}

/// Appends every envelope of `envelopes` like [`append`], in one statement
/// however many (rows bound as one JSON parameter, see
/// [`crate::db::json_rows`]: the same SQL for every count).
pub async fn append_all(tx: &mut Tx, envelopes: &[EventEnvelope]) -> Result<(), sqlx::Error> {
    if envelopes.is_empty() {
        return Ok(());
    }
    let engine = engine_of(tx);
    let rows = json_rows(
        engine,
        2,
        "r",
        &[
            ("event_id", JsonType::Text),
            ("event_type", JsonType::Text),
            ("ordering_key", JsonType::Text),
            ("payload", JsonType::Text),
        ],
    );
    // JSON has no bytes: the payload travels as hex, decoded in SQL
    let payload = match engine {
        Engine::Postgres => "decode(r.payload, 'hex')",
        Engine::Sqlite => "unhex(r.payload)",
    };
    let json = serde_json::Value::Array(
        envelopes
            .iter()
            .map(|e| {
                serde_json::json!({
                    "event_id": e.event_id, "event_type": e.event_type,
                    "ordering_key": super::ordering_key(e),
                    "payload": hex::encode(e.encode_to_vec()),
                })
            })
            .collect(),
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO outbox (event_id, event_type, ordering_key, payload, created_at) \
         SELECT r.event_id, r.event_type, r.ordering_key, {payload}, $1 FROM {rows}"
    )))
    .bind(now_micros())
    .bind(json.to_string())
    .execute(&mut **tx)
    .await?;
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
