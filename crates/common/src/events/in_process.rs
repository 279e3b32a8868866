//! The embedded default transport: every service in one process.
//!
//! Publishing hands each event to every subscribed consumer that takes its
//! type and returns once they have applied it (or parked it), so the relay
//! marks outbox rows only after their effects committed: a crash in between
//! re-publishes, and the inbox absorbs the repeat. A consumer runs a few
//! partitions; one ordering key always lands in the same partition, which
//! handles its events in order (an event that cannot be recorded is retried
//! in place, never overtaken). Consumers subscribe before the relays start;
//! events published before a consumer subscribed are not delivered to it,
//! and nothing is kept for a consumer while the process is down: the outbox
//! is the durable store, so a row is marked published only once every
//! consumer has applied it or parked it.

use std::sync::{Arc, RwLock};

use loyalty_proto::events::EventEnvelope;
use tokio::sync::{mpsc, oneshot};

use super::{BusError, Consumer, EventBus, Outcome};
use crate::server::Shutdown;

struct Job {
    event: EventEnvelope,
    done: oneshot::Sender<Result<Outcome, BusError>>,
}

struct Subscriber {
    consumer: Arc<Consumer>,
    partitions: Vec<mpsc::Sender<Job>>,
}

/// Applies one partition's events in order, for as long as the bus exists.
/// It keeps going after `shutdown` on purpose: the relays flush their
/// outboxes through it while the process stops. Only its retries of an
/// event that cannot be recorded give up at shutdown.
async fn partition(consumer: Arc<Consumer>, mut rx: mpsc::Receiver<Job>, shutdown: Shutdown) {
    while let Some(job) = rx.recv().await {
        // whatever queued up behind it joins its commit
        let mut jobs = vec![job];
        while jobs.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let events: Vec<EventEnvelope> = jobs.iter().map(|j| j.event.clone()).collect();
        let outcomes = consumer.deliver_in_order(&events, &shutdown).await;
        for (job, outcome) in jobs.into_iter().zip(outcomes) {
            // the publisher may have given up waiting; nothing to tell
            let _ = job.done.send(outcome);
        }
    }
}

/// Most events a partition applies in one transaction.
const GROUP_MAX: usize = 256;

/// In-process event bus.
pub struct InProcessBus {
    subscribers: RwLock<Vec<Arc<Subscriber>>>,
    partitions: usize,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

impl InProcessBus {
    /// A bus whose consumers each run 8 partitions.
    pub fn new() -> Self {
        Self {
            subscribers: RwLock::new(Vec::new()),
            partitions: 8,
        }
    }
}

fn closed() -> BusError {
    BusError::Unavailable("in-process consumer stopped (shutting down)".into())
}

#[async_trait::async_trait]
impl EventBus for InProcessBus {
    fn transport(&self) -> &'static str {
        "in-process"
    }

    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), BusError> {
        let subscribers: Vec<Arc<Subscriber>> = self
            .subscribers
            .read()
            .map_err(|_| BusError::Unavailable("subscriber list poisoned".into()))?
            .clone();
        let mut pending = Vec::new();
        for event in events {
            let key = super::ordering_key(event);
            for sub in &subscribers {
                if !sub.consumer.wants(event) {
                    continue;
                }
                let (done, rx) = oneshot::channel();
                let lane = &sub.partitions[super::partition_of(key, sub.partitions.len())];
                lane.send(Job {
                    event: event.clone(),
                    done,
                })
                .await
                .map_err(|_| closed())?;
                pending.push(rx);
            }
        }
        for rx in pending {
            rx.await.map_err(|_| closed())??;
        }
        Ok(())
    }

    async fn subscribe(&self, consumer: Arc<Consumer>, shutdown: Shutdown) -> Result<(), BusError> {
        let mut partitions = Vec::with_capacity(self.partitions);
        for _ in 0..self.partitions {
            let (tx, rx) = mpsc::channel::<Job>(1024);
            partitions.push(tx);
            tokio::spawn(partition(consumer.clone(), rx, shutdown.clone()));
        }
        self.subscribers
            .write()
            .map_err(|_| BusError::Unavailable("subscriber list poisoned".into()))?
            .push(Arc::new(Subscriber {
                consumer,
                partitions,
            }));
        Ok(())
    }
}
