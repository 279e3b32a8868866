//! The consumer side: each event is applied in one transaction together
//! with its inbox row, so a redelivered event changes nothing.
//!
//! Failures come in two kinds. A handler error (the event cannot be applied
//! now) is retried in place with backoff, and after the last attempt the
//! event is parked in `dead_letters` and recorded in the inbox, so one poison
//! event does not stop its partition. A storage error while recording the
//! outcome (database down) leaves the event unrecorded: the transport
//! retries it in place ([`Consumer::deliver_in_order`]) so later events of
//! its key never overtake it. Parked events are inspected and replayed by an
//! operator (see docs/runbook).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use loyalty_proto::events::EventEnvelope;
use prost::Message;
use tracing::Instrument;

use super::BusError;
use crate::ServiceError;
use crate::db::{Db, JsonType, Tx, engine_of, json_rows, now_micros};
use crate::server::Shutdown;

/// What a service does with an event. Its effects go into `tx`, which also
/// holds the inbox row: both commit or neither does.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    async fn handle(&self, tx: &mut Tx, event: &EventEnvelope) -> Result<(), ServiceError>;

    /// Applies the new events of a group (in their order, each claimed in
    /// the inbox of `tx`). A handler that can apply a group with set-based
    /// statements overrides this; the effects must be those of handling
    /// the events one after the other.
    async fn handle_group(
        &self,
        tx: &mut Tx,
        events: &[&EventEnvelope],
    ) -> Result<(), ServiceError> {
        for event in events {
            let span = tracing::info_span!("consume", event_type = %event.event_type, event_id = %event.event_id);
            crate::telemetry::set_parent(&span, &event.trace_context);
            self.handle(tx, event).instrument(span).await?;
        }
        Ok(())
    }
}

/// What happened to one delivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler's effects were committed.
    Applied,
    /// The event had been applied before; nothing was done.
    Duplicate,
    /// The consumer does not take events of this type.
    Skipped,
    /// The handler kept failing; the event was parked in `dead_letters`.
    DeadLettered,
}

/// A durable consumer: a name (its inbox and its JetStream durable), the
/// database its effects go to, its handler and the event types it takes.
pub struct Consumer {
    name: String,
    db: Db,
    handler: Arc<dyn EventHandler>,
    event_types: Vec<String>,
    ignored_producer: Option<String>,
    max_attempts: u32,
    backoff: Duration,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.name)
            .field("event_types", &self.event_types)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer taking every event type, retrying a failing event 5 times.
    pub fn new(name: impl Into<String>, db: Db, handler: Arc<dyn EventHandler>) -> Self {
        Self {
            name: name.into(),
            db,
            handler,
            event_types: Vec::new(),
            ignored_producer: None,
            max_attempts: 5,
            backoff: Duration::from_millis(50),
        }
    }

    /// Only these event types (short names, e.g. `PurchaseCompleted`).
    #[must_use]
    pub fn with_event_types(mut self, types: &[&str]) -> Self {
        self.event_types = types.iter().map(|t| (*t).to_owned()).collect();
        self
    }

    /// Not the events `producer` published: a service that announces
    /// what it has already applied (its own PurchaseCompleted) lets its
    /// consumer pass them by without an inbox row or a transaction.
    #[must_use]
    pub fn ignoring_producer(mut self, producer: &str) -> Self {
        self.ignored_producer = Some(producer.to_owned());
        self
    }

    /// Attempts per event before it is dead-lettered, and the first backoff
    /// (doubled at each retry).
    #[must_use]
    pub fn with_retry(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff = backoff;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The event types it takes (short names); empty means all.
    pub fn event_types(&self) -> &[String] {
        &self.event_types
    }

    pub fn wants(&self, event: &EventEnvelope) -> bool {
        if self.ignored_producer.as_deref() == Some(event.producer.as_str()) {
            return false;
        }
        self.event_types.is_empty()
            || self
                .event_types
                .iter()
                .any(|t| t == super::short_type(event))
    }

    /// Delivers one event: applies it (retrying in place, which keeps the
    /// order of its key) or parks it after the last attempt. An error means
    /// not even that could be recorded (database down): the transport must
    /// deliver it again.
    pub async fn deliver(&self, event: &EventEnvelope) -> Result<Outcome, BusError> {
        let outcome = self.deliver_one(event).await;
        if let Ok(o) = &outcome {
            super::metrics::consumed(&self.name, event, *o);
        }
        outcome
    }

    async fn deliver_one(&self, event: &EventEnvelope) -> Result<Outcome, BusError> {
        if !self.wants(event) {
            return Ok(Outcome::Skipped);
        }
        let span = tracing::info_span!("consume", consumer = %self.name, event_type = %event.event_type, event_id = %event.event_id);
        crate::telemetry::set_parent(&span, &event.trace_context);
        async {
            let mut backoff = self.backoff;
            let mut attempt = 1;
            loop {
                match self.apply(event).await {
                    Ok(outcome) => return Ok(outcome),
                    Err(e) if attempt < self.max_attempts => {
                        tracing::warn!(attempt, error = %e, "event handler failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2);
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::error!(attempts = attempt, error = %e, "event handler keeps failing; dead-lettering the event");
                        return self.dead_letter(event, &e.to_string(), attempt).await.map_err(|db| {
                            BusError::Consumer {
                                consumer: self.name.clone(),
                                event_id: event.event_id.clone(),
                                reason: db.to_string(),
                            }
                        });
                    }
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Delivers events of one partition, in order, committing them in one
    /// transaction (one durable commit for the group instead of one per
    /// event). If any of them fails, the group is rolled back and each event
    /// is delivered on its own, with retries, in the same order.
    pub async fn deliver_group(&self, events: &[EventEnvelope]) -> Vec<Result<Outcome, BusError>> {
        if events.len() > 1
            && let Ok(outcomes) = self.apply_group(events).await
        {
            for (event, outcome) in events.iter().zip(&outcomes) {
                super::metrics::consumed(&self.name, event, *outcome);
            }
            return outcomes.into_iter().map(Ok).collect();
        }
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            let failed = results.last().is_some_and(Result::is_err);
            results.push(if failed {
                // never apply a later event before an earlier one
                Err(BusError::Unavailable(format!(
                    "event {} not attempted: an earlier event of its partition was not recorded",
                    event.event_id
                )))
            } else {
                self.deliver(event).await
            });
        }
        results
    }

    /// Delivers one partition's events in order, as [`deliver_group`]
    /// does, then retries the first event that could not be recorded (and
    /// those after it) in place, with backoff, until it is recorded: later
    /// events of a key never overtake an earlier one. Once `shutdown` has
    /// fired it stops retrying and the rest fail (the transport delivers
    /// them again after a restart).
    ///
    /// [`deliver_group`]: Self::deliver_group
    pub async fn deliver_in_order(
        &self,
        events: &[EventEnvelope],
        shutdown: &Shutdown,
    ) -> Vec<Result<Outcome, BusError>> {
        let mut outcomes = self.deliver_group(events).await;
        let Some(first_failed) = outcomes.iter().position(Result::is_err) else {
            return outcomes;
        };
        let mut backoff = RECORD_RETRY_FIRST;
        for i in first_failed..events.len() {
            loop {
                match self.deliver(&events[i]).await {
                    Ok(outcome) => {
                        outcomes[i] = Ok(outcome);
                        break;
                    }
                    Err(e) if shutdown.is_fired() => {
                        outcomes[i] = Err(e);
                        return outcomes; // the rest keep their errors
                    }
                    Err(e) => {
                        tracing::error!(consumer = %self.name, event_id = %events[i].event_id, error = %e, "event not recorded; retrying in place");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(RECORD_RETRY_MAX);
                    }
                }
            }
        }
        outcomes
    }

    async fn apply_group(&self, events: &[EventEnvelope]) -> Result<Vec<Outcome>, ServiceError> {
        let mut tx = self.db.begin().await?;
        let wanted: Vec<&EventEnvelope> = events.iter().filter(|e| self.wants(e)).collect();
        let mut claimed = claim_inbox_all(&mut tx, &self.name, &wanted).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        let mut new = Vec::with_capacity(wanted.len());
        for event in events {
            if !self.wants(event) {
                outcomes.push(Outcome::Skipped);
            } else if claimed.remove(event.event_id.as_str()) {
                new.push(event);
                outcomes.push(Outcome::Applied);
            } else {
                // recorded before, or earlier in this group
                outcomes.push(Outcome::Duplicate);
            }
        }
        let span = tracing::info_span!("consume_group", consumer = %self.name, events = new.len());
        self.handler
            .handle_group(&mut tx, &new)
            .instrument(span)
            .await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    /// One attempt: inbox row and effects in one transaction.
    async fn apply(&self, event: &EventEnvelope) -> Result<Outcome, ServiceError> {
        let mut tx = self.db.begin().await?;
        if !claim_inbox(&mut tx, &self.name, event).await? {
            tx.rollback().await?;
            return Ok(Outcome::Duplicate);
        }
        self.handler.handle(&mut tx, event).await?;
        tx.commit().await?;
        Ok(Outcome::Applied)
    }

    async fn dead_letter(
        &self,
        event: &EventEnvelope,
        error: &str,
        attempts: u32,
    ) -> Result<Outcome, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        claim_inbox(&mut tx, &self.name, event).await?;
        sqlx::query(
            "INSERT INTO dead_letters (consumer, event_id, event_type, payload, error, attempts, failed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(&self.name)
        .bind(&event.event_id)
        .bind(&event.event_type)
        .bind(event.encode_to_vec())
        .bind(error)
        .bind(i64::from(attempts))
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Outcome::DeadLettered)
    }
}

/// First and longest pause between attempts to record an event while its
/// database is unavailable.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

/// Records the event ids of a group in one statement (the same SQL for any
/// count, rows bound as one JSON parameter); answers the ids it recorded,
/// i.e. those not handled before.
async fn claim_inbox_all(
    tx: &mut Tx,
    consumer: &str,
    events: &[&EventEnvelope],
) -> Result<HashSet<String>, sqlx::Error> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let rows = json_rows(engine_of(tx), 3, "r", &[("event_id", JsonType::Text)]);
    let ids = serde_json::Value::Array(
        events
            .iter()
            .map(|e| serde_json::json!({ "event_id": e.event_id }))
            .collect(),
    );
    // `WHERE true`: SQLite would read ON CONFLICT as a join's ON otherwise
    let claimed: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO inbox (consumer, event_id, handled_at) SELECT $1, r.event_id, $2 FROM {rows} \
         WHERE true ON CONFLICT DO NOTHING RETURNING event_id"
    )))
    .bind(consumer)
    .bind(now_micros())
    .bind(ids.to_string())
    .fetch_all(&mut **tx)
    .await?;
    Ok(claimed.into_iter().collect())
}

/// Records the event id; false when it was there already.
async fn claim_inbox(
    tx: &mut Tx,
    consumer: &str,
    event: &EventEnvelope,
) -> Result<bool, sqlx::Error> {
    Ok(!claim_inbox_all(tx, consumer, &[event]).await?.is_empty())
}
