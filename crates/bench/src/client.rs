//! How every scenario's client connects, so that all figures (ceilings
//! included) use the same client settings: a small pool of HTTP/2
//! channels (connections) to the target, requests spread over them by
//! request index. Each channel multiplexes its requests as HTTP/2 streams.

use tonic::transport::{Channel, Endpoint};

use crate::BenchError;

/// Channels in a client pool. Measured on the 2-core machine with the
/// hello-world ceiling (docs/benchmarks/method.md): see there for the
/// figures that chose it.
pub const CHANNELS: usize = 1;

/// A fixed pool of connected channels.
#[derive(Debug, Clone)]
pub struct Clients {
    channels: Vec<Channel>,
}

impl Clients {
    /// Connects `n` channels (at least one) to `uri`
    /// (`http://127.0.0.1:50051`).
    pub async fn connect(uri: &str, n: usize) -> Result<Self, BenchError> {
        let endpoint = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| BenchError::Connect {
                uri: uri.to_owned(),
                reason: e.to_string(),
            })?
            .tcp_nodelay(true);
        let mut channels = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            channels.push(endpoint.connect().await.map_err(|e| BenchError::Connect {
                uri: uri.to_owned(),
                reason: e.to_string(),
            })?);
        }
        Ok(Self { channels })
    }

    /// The channel for request `i` (round robin).
    pub fn pick(&self, i: u64) -> Channel {
        self.channels[(i % self.channels.len() as u64) as usize].clone()
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}
