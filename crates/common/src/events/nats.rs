//! NATS JetStream transport, for services that run apart.
//!
//! One stream (default `LOYALTY_EVENTS`) holds every event under
//! `<prefix>.<producer>.<EventType>`. Publishing sets `Nats-Msg-Id` to the
//! event id, so a relay that publishes again within the stream's duplicate
//! window is deduplicated by the server (and by the inbox after it), and
//! waits for every publish ack. Each consumer is a durable pull consumer
//! with explicit acks: a batch is split by ordering key, keys run
//! concurrently, one key's events run in order and each is acked only after
//! its effects committed. If an event cannot even be recorded (database
//! down), that key stops for this batch and JetStream redelivers after the
//! ack wait.

use std::collections::HashMap;
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
    /// Connects and makes sure the stream exists (subjects `loyalty.events.>`).
    pub async fn connect(url: &str, stream: &str) -> Result<Self, BusError> {
        Self::connect_with(url, stream, "loyalty.events").await
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
        let producer = if event.producer.is_empty() {
            "unknown"
        } else {
            &event.producer
        };
        format!("{}.{}.{}", self.prefix, producer, super::short_type(event))
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
            if let Some(tp) = event.trace_context.get("traceparent") {
                headers.insert("traceparent", tp.as_str());
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
        let durable = consumer.name().replace(['.', ' ', '*', '>'], "_");
        let pull_consumer: jetstream::consumer::Consumer<pull::Config> = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    filter_subject: format!("{}.>", self.prefix),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        tokio::spawn(async move {
            loop {
                if shutdown.is_fired() {
                    break;
                }
                let batch = tokio::select! {
                    b = fetch(&pull_consumer) => b,
                    () = shutdown.wait() => break,
                };
                match batch {
                    Ok(messages) => handle_batch(&consumer, messages).await,
                    Err(e) => {
                        tracing::warn!(consumer = consumer.name(), error = %e, "JetStream fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
        Ok(())
    }
}

async fn fetch(
    c: &jetstream::consumer::Consumer<pull::Config>,
) -> Result<Vec<jetstream::Message>, BusError> {
    let mut batch = c
        .batch()
        .max_messages(512)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        out.push(m.map_err(unavailable)?);
    }
    Ok(out)
}

async fn handle_batch(consumer: &Consumer, messages: Vec<jetstream::Message>) {
    // Split by ordering key, keeping each key's order.
    let mut lanes: Vec<Vec<(EventEnvelope, jetstream::Message)>> = Vec::new();
    let mut lane_of: HashMap<String, usize> = HashMap::new();
    for msg in messages {
        match EventEnvelope::decode(msg.payload.as_ref()) {
            Ok(env) => {
                let key = super::ordering_key(&env).to_owned();
                let i = *lane_of.entry(key).or_insert_with(|| {
                    lanes.push(Vec::new());
                    lanes.len() - 1
                });
                lanes[i].push((env, msg));
            }
            Err(e) => {
                tracing::error!(subject = %msg.subject, error = %e, "undecodable event terminated");
                let _ = msg.ack_with(AckKind::Term).await;
            }
        }
    }
    futures::future::join_all(lanes.into_iter().map(|lane| async move {
        for (env, msg) in lane {
            match consumer.deliver(&env).await {
                Ok(_) => {
                    if let Err(e) = msg.ack().await {
                        // the effect is committed; a redelivery is a duplicate
                        tracing::warn!(event_id = %env.event_id, error = %e, "ack failed");
                    }
                }
                Err(e) => {
                    tracing::error!(event_id = %env.event_id, error = %e, "event not recorded; JetStream will redeliver");
                    return;
                }
            }
        }
    }))
    .await;
}
