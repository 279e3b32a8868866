//! Serving, one way for every service: gRPC health (`grpc.health.v1`, one
//! status per service), server reflection (v1 and v1alpha) from the embedded
//! descriptor set, request ids, W3C trace context from metadata, a default
//! deadline for calls that carry none, caller authentication, and graceful
//! shutdown that stops accepting, reports NOT_SERVING and drains in-flight
//! calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::{AuthLayer, Verifier};

/// Fires once; every task holding a [`Shutdown`] sees it.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(Arc<watch::Sender<bool>>);

impl ShutdownTrigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

/// A shutdown signal that can be cloned into every server, relay and job.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Self) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(Arc::new(tx)), Self(rx))
    }

    /// Fires on SIGTERM or SIGINT (Ctrl-C).
    pub fn on_signals() -> Self {
        let (trigger, shutdown) = Self::new();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested: draining in-flight calls");
            trigger.fire();
        });
        shutdown
    }

    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the shutdown fires (at once if it already has).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|fired| *fired).await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A request id: the caller's `x-request-id` when it sent a sane one, else
/// a new UUIDv7. In request extensions, in every log line of the call, and
/// echoed in the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

const REQUEST_ID: &str = "x-request-id";

fn sane_request_id(v: &http::HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    (!s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
    .then(|| s.to_owned())
}

/// Tower layer: request id, a span per call (child of the caller's trace),
/// call duration metrics, and a completion log line without personal data.
#[derive(Debug, Clone, Default)]
pub struct RequestContextLayer;

impl<S> Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestContext { inner }
    }
}

/// See [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContext<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn call_metrics() -> &'static (
    opentelemetry::metrics::Histogram<f64>,
    opentelemetry::metrics::Counter<u64>,
) {
    static M: std::sync::OnceLock<(
        opentelemetry::metrics::Histogram<f64>,
        opentelemetry::metrics::Counter<u64>,
    )> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        let meter = opentelemetry::global::meter("loyalty");
        (
            meter
                .f64_histogram("rpc.server.duration")
                .with_unit("ms")
                .with_description("duration of gRPC calls")
                .build(),
            meter
                .u64_counter("rpc.server.calls")
                .with_description("gRPC calls by method and status")
                .build(),
        )
    })
}

impl<S, B, RB> Service<http::Request<B>> for RequestContext<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let id = req
            .headers()
            .get(REQUEST_ID)
            .and_then(sane_request_id)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        req.extensions_mut().insert(RequestId(id.clone()));
        let method = req.uri().path().to_owned();
        let span = tracing::info_span!("rpc", rpc.method = %method, request_id = %id, otel.kind = "server");
        let carrier: std::collections::HashMap<String, String> = ["traceparent", "tracestate"]
            .iter()
            .filter_map(|k| {
                req.headers()
                    .get(*k)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| ((*k).to_owned(), v.to_owned()))
            })
            .collect();
        crate::telemetry::set_parent(&span, &carrier);
        // the clone is ready-checked by the caller's poll_ready on self.inner
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(
            async move {
                let started = Instant::now();
                let result = inner.call(req).await;
                let elapsed = started.elapsed();
                if let Ok(resp) = &result {
                    // trailers-only answers (errors) carry grpc-status in headers
                    let status = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_owned();
                    let (hist, calls) = call_metrics();
                    let attrs = [
                        opentelemetry::KeyValue::new("rpc.method", method.clone()),
                        opentelemetry::KeyValue::new("rpc.grpc.status_code", status.clone()),
                    ];
                    hist.record(elapsed.as_secs_f64() * 1000.0, &attrs);
                    calls.add(1, &attrs);
                    tracing::debug!(grpc.status = %status, elapsed_ms = elapsed.as_millis(), "call finished");
                }
                result.map(|mut resp| {
                    if let Ok(v) = http::HeaderValue::from_str(&id) {
                        resp.headers_mut().insert(REQUEST_ID, v);
                    }
                    resp
                })
            }
            .instrument(span),
        )
    }
}

/// A gRPC server for one or more services, with everything every service
/// gets: health, reflection, request context, default deadline, auth.
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    names: Vec<&'static str>,
    request_timeout: Duration,
    shutdown_grace: Duration,
    verifier: Arc<Verifier>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("services", &self.names)
            .finish_non_exhaustive()
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl GrpcServer {
    pub fn new(
        verifier: Arc<Verifier>,
        request_timeout: Duration,
        shutdown_grace: Duration,
    ) -> Self {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service);
        Self {
            routes,
            health,
            names: Vec::new(),
            request_timeout,
            shutdown_grace,
            verifier,
        }
    }

    /// Adds a generated service; its health status becomes SERVING when the
    /// server starts.
    pub fn add_service<S>(&mut self, svc: S) -> &mut Self
    where
        S: Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// The health reporter, for services that report their own status.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Names of the services added so far.
    pub fn service_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Binds `addr` (port 0 picks a free one) and returns the bound address
    /// with the future that serves until `shutdown` fires and in-flight
    /// calls are drained (at most the shutdown grace).
    pub async fn bind(
        self,
        addr: std::net::SocketAddr,
        shutdown: Shutdown,
    ) -> Result<
        (
            std::net::SocketAddr,
            impl Future<Output = Result<(), ServeError>>,
        ),
        ServeError,
    > {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok((local, self.serve(listener, shutdown)))
    }

    /// Serves on `listener` until `shutdown` fires, then drains.
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> Result<(), ServeError> {
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(loyalty_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(loyalty_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| ServeError::Reflection(e.to_string()))?;
        let mut routes = self.routes;
        routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let routes: Routes = routes.routes();

        for name in &self.names {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;

        let health = self.health.clone();
        let names = self.names.clone();
        let drain_started = Arc::new(tokio::sync::Notify::new());
        let drain_signal = drain_started.clone();
        let signal = async move {
            shutdown.wait().await;
            // Load balancers stop sending before we stop accepting.
            for name in &names {
                health
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            drain_signal.notify_one();
        };
        let layers = tower::ServiceBuilder::new()
            .layer(RequestContextLayer)
            .layer(AuthLayer::new(self.verifier.clone()))
            .into_inner();
        let serving = tonic::transport::Server::builder()
            .timeout(self.request_timeout)
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(
                // without TCP_NODELAY a response's frames wait on the peer's
                // delayed ACK: a ~40 ms tail on every few calls
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                signal,
            );
        let grace = self.shutdown_grace;
        tokio::pin!(serving);
        tokio::select! {
            res = &mut serving => return res.map_err(ServeError::from),
            () = drain_started.notified() => {}
        }
        if let Ok(res) = tokio::time::timeout(grace, serving).await {
            res.map_err(ServeError::from)
        } else {
            tracing::warn!(?grace, "shutdown grace elapsed with calls still in flight");
            Ok(())
        }
    }
}
