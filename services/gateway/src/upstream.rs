//! Upstream services: each at one or more replica addresses behind one
//! client-side load-balanced channel. A prober checks every replica with
//! grpc.health.v1 and takes a replica that is down out of the balancer
//! (and puts it back when it serves again), so calls skip it; a service
//! with no serving replica answers 503 at once. Calls go through a dynamic
//! codec: any RPC of the descriptor set, no per-RPC code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::GatewayError;

/// A codec for messages known only by descriptor.
#[derive(Debug, Clone)]
pub struct DynamicCodec {
    output: MessageDescriptor,
}

impl DynamicCodec {
    pub fn new(output: MessageDescriptor) -> Self {
        Self { output }
    }
}

#[derive(Debug)]
pub struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(format!("encoding the request: {e}")))
    }
}

#[derive(Debug)]
pub struct DynamicDecoder(MessageDescriptor);

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Self::Error> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))
    }
}

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;
    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.output.clone())
    }
}

#[derive(Debug)]
struct Replica {
    addr: String,
    endpoint: Endpoint,
    /// A channel of its own, for probing this replica alone.
    probe: Channel,
    healthy: AtomicBool,
}

#[derive(Debug)]
struct Upstream {
    channel: Channel,
    replicas: Vec<Replica>,
}

/// Channels to every service, built lazily: a service that is down does not
/// stop the gateway from starting, and its replicas are balanced.
#[derive(Clone, Debug)]
pub struct Upstreams {
    services: Arc<BTreeMap<String, Upstream>>,
}

/// The grpc.health.v1 service name of an upstream (`loyalty.rewards.v1.RewardsService`).
pub fn health_name(service: &str) -> String {
    format!("loyalty.{service}.v1.{}Service", capitalise(service))
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

fn endpoint(service: &str, addr: &str) -> Result<Endpoint, GatewayError> {
    Ok(Endpoint::from_shared(addr.to_owned())
        .map_err(|e| GatewayError::Address {
            service: service.to_owned(),
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30)))
}

impl Upstreams {
    /// `addrs`: service name → replica addresses (`http://host:port`).
    /// Probes every replica each `interval` (needs a Tokio runtime).
    pub fn new(
        addrs: &BTreeMap<String, Vec<String>>,
        interval: Duration,
    ) -> Result<Self, GatewayError> {
        // every address is checked before anything starts
        let mut checked = Vec::new();
        for (service, list) in addrs {
            let eps = list
                .iter()
                .map(|a| endpoint(service, a).map(|e| (a.clone(), e)))
                .collect::<Result<Vec<_>, _>>()?;
            checked.push((service.clone(), eps));
        }
        let mut services = BTreeMap::new();
        let mut probers = Vec::new();
        for (service, eps) in checked {
            let (channel, tx) = Channel::balance_channel::<usize>(eps.len().max(1));
            let mut replicas = Vec::new();
            for (i, (addr, ep)) in eps.into_iter().enumerate() {
                // optimistic until the first probe (which runs at once)
                let _ = tx.try_send(Change::Insert(i, ep.clone()));
                replicas.push(Replica {
                    addr,
                    probe: ep.connect_lazy(),
                    endpoint: ep,
                    healthy: AtomicBool::new(true),
                });
            }
            services.insert(service.clone(), Upstream { channel, replicas });
            probers.push((service, tx));
        }
        let me = Self {
            services: Arc::new(services),
        };
        for (service, tx) in probers {
            let weak = Arc::downgrade(&me.services);
            tokio::spawn(async move {
                loop {
                    let Some(services) = weak.upgrade() else {
                        return;
                    };
                    let Some(up) = services.get(&service) else {
                        return;
                    };
                    for (i, r) in up.replicas.iter().enumerate() {
                        let ok = probe(&r.probe, &service).await == "SERVING";
                        if r.healthy.swap(ok, Ordering::Relaxed) != ok {
                            tracing::info!(service = %service, replica = %r.addr, serving = ok, "replica health changed");
                            let change = if ok {
                                Change::Insert(i, r.endpoint.clone())
                            } else {
                                Change::Remove(i)
                            };
                            if tx.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    drop(services);
                    tokio::time::sleep(interval).await;
                }
            });
        }
        Ok(me)
    }

    pub fn channel(&self, service: &str) -> Option<Channel> {
        self.services.get(service).map(|u| u.channel.clone())
    }

    /// Whether any replica of `service` passed its last probe.
    pub fn is_serving(&self, service: &str) -> bool {
        self.services
            .get(service)
            .is_some_and(|u| u.replicas.iter().any(|r| r.healthy.load(Ordering::Relaxed)))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// The gRPC health status of each service (`SERVING` when any replica
    /// serves, else the first replica's `NOT_SERVING` or `UNAVAILABLE`) and
    /// of each replica, probed now.
    pub async fn health(
        &self,
    ) -> (
        BTreeMap<String, String>,
        BTreeMap<String, BTreeMap<String, String>>,
    ) {
        let checks = self.services.iter().map(|(name, up)| async move {
            let per =
                futures::future::join_all(up.replicas.iter().map(|r| async move {
                    (r.addr.clone(), probe(&r.probe, name).await.to_owned())
                }))
                .await;
            let overall = if per.iter().any(|(_, s)| s == "SERVING") {
                "SERVING".to_owned()
            } else {
                per.first()
                    .map_or_else(|| "UNAVAILABLE".to_owned(), |(_, s)| s.clone())
            };
            (
                name.clone(),
                overall,
                per.into_iter().collect::<BTreeMap<_, _>>(),
            )
        });
        let mut services = BTreeMap::new();
        let mut replicas = BTreeMap::new();
        for (name, overall, per) in futures::future::join_all(checks).await {
            services.insert(name.clone(), overall);
            replicas.insert(name, per);
        }
        (services, replicas)
    }
}

async fn probe(channel: &Channel, service: &str) -> &'static str {
    let mut client = HealthClient::new(channel.clone());
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: health_name(service),
    });
    req.set_timeout(Duration::from_secs(1));
    match tokio::time::timeout(Duration::from_secs(1), client.check(req)).await {
        Ok(Ok(resp)) => match resp.into_inner().status() {
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
            ServingStatus::Unknown => "UNKNOWN",
        },
        _ => "UNAVAILABLE",
    }
}
