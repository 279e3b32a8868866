//! The gateway: the one HTTP entry point for apps. It holds a load-balanced
//! gRPC channel to each service (one or more replica addresses) and reports
//! liveness and readiness. REST/JSON transcoding, gRPC-Web, authentication
//! of external credentials, limits and OpenAPI land with the gateway issue.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use loyalty_common::server::Shutdown;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid address {addr:?} for {service}: {reason}")]
    Address {
        service: String,
        addr: String,
        reason: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gateway HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Channels to every service, built lazily: a service that is down does not
/// stop the gateway from starting, and its replicas are balanced.
#[derive(Clone, Debug)]
pub struct Upstreams {
    channels: BTreeMap<String, Channel>,
}

impl Upstreams {
    /// `addrs`: service name → replica addresses (`http://host:port`).
    pub fn new(addrs: &BTreeMap<String, Vec<String>>) -> Result<Self, GatewayError> {
        let mut channels = BTreeMap::new();
        for (service, list) in addrs {
            let mut endpoints = Vec::new();
            for addr in list {
                let ep = Endpoint::from_shared(addr.clone())
                    .map_err(|e| GatewayError::Address {
                        service: service.clone(),
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true);
                endpoints.push(ep);
            }
            channels.insert(
                service.clone(),
                Channel::balance_list(endpoints.into_iter()),
            );
        }
        Ok(Self { channels })
    }

    pub fn channel(&self, service: &str) -> Option<Channel> {
        self.channels.get(service).cloned()
    }

    /// The gRPC health status of each service (`SERVING`, `NOT_SERVING`,
    /// or `UNAVAILABLE` when it cannot be reached within a second).
    pub async fn health(&self) -> BTreeMap<String, String> {
        let checks = self.channels.iter().map(|(name, ch)| {
            let mut client = HealthClient::new(ch.clone());
            let service = format!("loyalty.{name}.v1.{}Service", capitalise(name));
            async move {
                let mut req = tonic::Request::new(HealthCheckRequest { service });
                req.set_timeout(Duration::from_secs(1));
                let status =
                    match tokio::time::timeout(Duration::from_secs(1), client.check(req)).await {
                        Ok(Ok(resp)) => resp.into_inner().status().as_str_name().to_owned(),
                        _ => "UNAVAILABLE".to_owned(),
                    };
                (name.clone(), status)
            }
        });
        futures::future::join_all(checks)
            .await
            .into_iter()
            .collect()
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// The gateway's HTTP routes.
pub fn router(upstreams: Upstreams) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"code": "NOT_FOUND", "message": "no such route"})),
            )
        })
        .with_state(upstreams)
}

async fn readyz(State(up): State<Upstreams>) -> impl IntoResponse {
    let services = up.health().await;
    let ready = services.values().all(|s| s == "SERVING");
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"ready": ready, "services": services})))
}

/// Binds `addr` and returns the bound address and the serving future, which
/// ends after `shutdown` fires and open requests finish.
pub async fn bind(
    addr: SocketAddr,
    upstreams: Upstreams,
    shutdown: Shutdown,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = Result<(), GatewayError>>,
    ),
    GatewayError,
> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| GatewayError::Bind { addr, source })?;
    let app = router(upstreams);
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
            .map_err(GatewayError::Serve)
    };
    Ok((local, serve))
}
