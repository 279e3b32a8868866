//! NATS JetStream transport, for services that run apart.
//!
//! One stream (default `LOYALTY_EVENTS`) holds every event under
//! `<prefix>.<producer>.<EventType>`. Publishing sets `Nats-Msg-Id` to the
//! event id, so a relay that publishes again within the stream's duplicate
//! window is deduplicated by the server (and by the inbox after it), and
//! waits for every publish ack. Each consumer is a durable pull consumer
//! with explicit acks, pulled continuously: events are spread over
//! partitions by ordering key, partitions run concurrently, one key's events
//! run in order and each is acked only after its effects committed. If an
//! event cannot even be recorded (database down), its partition retries it
//! in place; if the process stops first, JetStream redelivers it after the
//! ack wait. After such a crash a redelivered event may arrive after later
//! events of its key; the inbox still applies each once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, stream};
use futures::StreamExt;
use loyalty_proto::events::EventEnvelope;
use prost::Message;

use super::{BusError, Consumer, EventBus};
use crate::server::Shutdown;

/// JetStream event bus.
pub struct NatsBus {
    js: jetstream::Context,
    stream: String,
    prefix: String,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("stream", &self.stream)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl NatsBus {
    /// Connects and makes sure the stream exists. Its subjects follow from
    /// its name, so two streams never overlap: `LOYALTY_EVENTS` holds
    /// `loyalty.events.>`.
    pub async fn connect(url: &str, stream: &str) -> Result<Self, BusError> {
        let prefix = stream.to_ascii_lowercase().replace(['_', '-'], ".");
        Self::connect_with(url, stream, &prefix).await
    }

    /// As [`connect`](Self::connect) with another subject prefix (tests
    /// isolate themselves with their own stream and prefix).
    pub async fn connect_with(url: &str, stream: &str, prefix: &str) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name("loyalty")
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(unavailable)?;
        let bus = Self {
            js: jetstream::new(client),
            stream: stream.to_owned(),
            prefix: prefix.to_owned(),
        };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    async fn ensure_stream(&self) -> Result<stream::Stream, BusError> {
        self.js
            .get_or_create_stream(stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.>", self.prefix)],
                duplicate_window: Duration::from_mins(2),
                max_age: Duration::from_hours(7 * 24),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(unavailable)
    }

    /// Deletes the stream (tests clean up after themselves).
    pub async fn delete_stream(&self) -> Result<(), BusError> {
        self.js
            .delete_stream(&self.stream)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn subject(&self, event: &EventEnvelope) -> String {
        format!(
            "{}.{}.{}",
            self.prefix,
            subject_token(&event.producer),
            subject_token(super::short_type(event))
        )
    }
}

#[async_trait::async_trait]
impl EventBus for NatsBus {
    fn transport(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, events: &[EventEnvelope]) -> Result<(), BusError> {
        // Send the whole batch, then wait for the acks in order.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, event.event_id.as_str());
            headers.insert("Loyalty-Event-Type", event.event_type.as_str());
            for key in ["traceparent", "tracestate"] {
                if let Some(v) = event.trace_context.get(key) {
                    headers.insert(key, v.as_str());
                }
            }
            let ack = self
                .js
                .publish_with_headers(self.subject(event), headers, event.encode_to_vec().into())
                .await
                .map_err(unavailable)?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn subscribe(&self, consumer: Arc<Consumer>, shutdown: Shutdown) -> Result<(), BusError> {
        let stream = self.ensure_stream().await?;
        let pull_consumer = self.durable(&stream, &consumer).await?;
        let mut messages = pull_consumer
            .stream()
            .max_messages_per_batch(512)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(10))
            .messages()
            .await
            .map_err(unavailable)?;
        // One worker per partition: a key always goes to the same worker,
        // which applies and acks its events in order.
        let mut lanes = Vec::with_capacity(PARTITIONS);
        for _ in 0..PARTITIONS {
            let (tx, rx) = tokio::sync::mpsc::channel::<(EventEnvelope, jetstream::Message)>(1024);
            lanes.push(tx);
            tokio::spawn(lane(consumer.clone(), rx, shutdown.clone()));
        }
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    m = messages.next() => m,
                    () = shutdown.wait() => break,
                };
                let msg = match next {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::warn!(consumer = consumer.name(), error = %e, "JetStream pull failed; continuing");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    None => break,
                };
                match EventEnvelope::decode(msg.payload.as_ref()) {
                    Ok(env) => {
                        let i = super::partition_of(super::ordering_key(&env), lanes.len());
                        if lanes[i].send((env, msg)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(subject = %msg.subject, error = %e, "undecodable event terminated");
                        let _ = msg.ack_with(AckKind::Term).await;
                    }
                }
            }
        });
        Ok(())
    }
}

impl NatsBus {
    /// The consumer's durable pull consumer, created or brought up to date
    /// (its event types may have changed since the last deploy).
    ///
    /// - filter: the consumer's event types as subjects, so the server sends
    ///   only those (several filters need NATS ≥ 2.10; an older server
    ///   ignores them and the consumer skips the rest itself);
    /// - ack_wait 30 s: a partition acks an event once its group committed;
    /// - max_deliver unlimited: JetStream dropping an event after N
    ///   deliveries would lose it silently. Failing handlers are retried and
    ///   parked by the consumer itself (`dead_letters`), so redeliveries only
    ///   follow crashes or a database outage longer than the ack wait.
    async fn durable(
        &self,
        stream: &stream::Stream,
        consumer: &Consumer,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
        let durable = subject_token(consumer.name());
        let mut filters: Vec<String> = consumer
            .event_types()
            .iter()
            .map(|t| format!("{}.*.{}", self.prefix, subject_token(t)))
            .collect();
        let mut config = pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("loyalty consumer {}", consumer.name())),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_deliver: -1,
            max_ack_pending: 20_000,
            ..Default::default()
        };
        match filters.len() {
            0 => config.filter_subject = format!("{}.>", self.prefix),
            1 => config.filter_subject = filters.remove(0),
            _ => config.filter_subjects = filters,
        }
        match stream.create_consumer(config).await {
            Ok(c) => Ok(c),
            Err(e) => {
                // an older server refuses to change an existing durable
                tracing::warn!(consumer = consumer.name(), error = %e, "JetStream consumer not updated; using it as it is");
                stream
                    .get_consumer(&durable)
                    .await
                    .map_err(|_| unavailable(e))
            }
        }
    }
}

/// A subject token (or durable name) made safe: no separators or wildcards.
fn subject_token(s: &str) -> String {
    let t = s.replace(['.', ' ', '*', '>', '\t'], "_");
    if t.is_empty() {
        "unknown".to_owned()
    } else {
        t
    }
}

const PARTITIONS: usize = 8;
/// Most events a partition applies in one transaction.
const GROUP_MAX: usize = 256;

/// Applies one partition's events in order. An event that cannot even be
/// recorded (database down) is retried in place, so later events of its key
/// never overtake it.
async fn lane(
    consumer: Arc<Consumer>,
    mut rx: tokio::sync::mpsc::Receiver<(EventEnvelope, jetstream::Message)>,
    shutdown: Shutdown,
) {
    while let Some(first) = rx.recv().await {
        // whatever queued up behind it joins its commit
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(m) => group.push(m),
                Err(_) => break,
            }
        }
        let events: Vec<EventEnvelope> = group.iter().map(|(e, _)| e.clone()).collect();
        let outcomes = consumer.deliver_in_order(&events, &shutdown).await;
        for ((env, msg), outcome) in group.iter().zip(outcomes) {
            if outcome.is_err() {
                return; // shutting down: unacked, JetStream redelivers them
            }
            if let Err(e) = msg.ack().await {
                // the effect is committed; a redelivery is a duplicate
                tracing::warn!(event_id = %env.event_id, error = %e, "ack failed");
            }
        }
    }
}
