//! The maintenance job every service database runs daily: deletes outbox
//! rows published more than 7 days ago (JetStream keeps events 7 days),
//! inbox rows older than 14 days (no redelivery can come that late) and
//! idempotency keys older than 30 days (a replay after that is a new call).

use std::time::Duration;

use crate::ServiceError;
use crate::db::{Tx, now_micros};
use crate::jobs::{ChunkOutcome, Job, RunState};

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub published_outbox: Duration,
    pub inbox: Duration,
    pub idempotency_keys: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            published_outbox: Duration::from_hours(7 * 24),
            inbox: Duration::from_hours(14 * 24),
            idempotency_keys: Duration::from_hours(30 * 24),
        }
    }
}

/// Deletes expired rows, a bounded number per chunk so that no transaction
/// grows large; the cursor is just "more to do".
#[derive(Debug, Default)]
pub struct Housekeeping {
    pub retention: Retention,
}

const CHUNK: i64 = 5000;

fn cutoff(age: Duration) -> i64 {
    now_micros() - i64::try_from(age.as_micros()).unwrap_or(i64::MAX / 2)
}

#[async_trait::async_trait]
impl Job for Housekeeping {
    fn name(&self) -> &'static str {
        "housekeeping"
    }

    async fn run_chunk(&self, tx: &mut Tx, _run: &RunState) -> Result<ChunkOutcome, ServiceError> {
        let mut deleted = 0;
        for (sql, age) in [
            (
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE published_at IS NOT NULL \
                 AND published_at < $1 LIMIT $2)",
                self.retention.published_outbox,
            ),
            (
                "DELETE FROM inbox WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM inbox \
                 WHERE handled_at < $1 LIMIT $2)",
                self.retention.inbox,
            ),
            (
                "DELETE FROM idempotency_keys WHERE (scope, idem_key) IN (SELECT scope, idem_key \
                 FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
                self.retention.idempotency_keys,
            ),
        ] {
            let done = sqlx::query(sql)
                .bind(cutoff(age))
                .bind(CHUNK)
                .execute(&mut **tx)
                .await?;
            deleted += done.rows_affected();
        }
        Ok(ChunkOutcome {
            next_cursor: (deleted > 0).then(|| "more".to_owned()),
            processed: deleted,
        })
    }
}
