//! The gateway: the one HTTP entry point for apps (ADR 5). On one listener
//! it serves REST/JSON transcoded from the services' `google.api.http`
//! annotations, gRPC-Web, and gRPC pass-through (chosen by content type),
//! plus `/openapi.json`, `/docs`, `/healthz` and `/readyz`. Every call is
//! authenticated with the caller's external credential, authorised at the
//! edge, limited, and forwarded with an internal token minted for the
//! verified principal (services verify it again, ADR 3).

pub mod authz;
pub mod error;
mod grpc;
pub mod home;
pub mod identity;
pub mod limits;
pub mod openapi;
mod rest;
pub mod rules;
pub mod shared_limit;
pub mod transcode;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use loyalty_common::auth::{ApiKeyRecord, Minter, Principal, Secret, Verifier};
use loyalty_common::config::GatewaySettings;
use loyalty_common::server::Shutdown;
use serde_json::json;

pub use upstream::Upstreams;

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
    #[error("gateway configuration: {0}")]
    Config(String),
}

/// Per-request context set by the edge layer.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub request_id: String,
    pub traceparent: String,
    pub tracestate: Option<HeaderValue>,
}

/// What the access log line says about a request (set by handlers).
#[derive(Debug, Clone)]
pub struct AccessInfo {
    /// The route template, never the path (ids stay out of logs).
    pub route: String,
    pub principal: &'static str,
}

pub(crate) fn principal_kind(p: &Principal) -> &'static str {
    match p {
        Principal::Member { .. } => "member",
        Principal::Staff { .. } => "staff",
        Principal::System { .. } => "system",
    }
}

/// Rate-limit key of a principal (no personal data: ids only).
pub(crate) fn principal_key(p: &Principal) -> String {
    match p {
        Principal::Member {
            program_id,
            member_id,
        } => format!("m:{program_id}:{member_id}"),
        Principal::Staff {
            program_id,
            subject,
            ..
        } => format!("s:{program_id}:{subject}"),
        Principal::System { key_id, .. } => format!("k:{key_id}"),
    }
}

pub(crate) struct Inner {
    pub upstreams: Upstreams,
    pub routes: Vec<rules::Route>,
    /// gRPC path → (method, shape) for every RPC of every service.
    pub methods: HashMap<String, (prost_reflect::MethodDescriptor, authz::RpcShape)>,
    pub auth: identity::Authenticator,
    pub minter: Minter,
    pub limiter: limits::Limiter,
    pub body_limit: usize,
    pub page_size_max: i64,
    pub deadlines: limits::Deadlines,
    pub cors: limits::Cors,
    pub home_deadline: Duration,
    pub openapi: String,
    pub docs: String,
}

/// The gateway, ready to serve.
#[derive(Clone)]
pub struct Gateway(pub(crate) Arc<Inner>);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.0.routes.len())
            .finish_non_exhaustive()
    }
}

/// How long a minted internal token lives: one call.
const INTERNAL_TOKEN_TTL: Duration = Duration::from_secs(60);

impl Gateway {
    /// `addrs`: service → replica addresses; `secret` signs internal
    /// tokens; `api_keys` are the backend keys' records.
    pub fn new(
        addrs: &BTreeMap<String, Vec<String>>,
        settings: &GatewaySettings,
        secret: &Secret,
        api_keys: Vec<ApiKeyRecord>,
    ) -> Result<Self, GatewayError> {
        let pool = loyalty_proto::descriptor_pool();
        let routes = rules::routes(pool).map_err(GatewayError::Config)?;
        let mut methods = HashMap::new();
        for service in pool.services() {
            for m in service.methods() {
                // gRPC calls are judged like the RPC's main REST route
                let main = routes.iter().find(|r| r.method == m && r.binding == 0);
                let read = main.is_some_and(|r| r.verb == Method::GET);
                let member_path = main.is_some_and(|r| authz::binds_member(&r.template));
                let shape = authz::RpcShape::of(&m, read, member_path);
                methods.insert(format!("/{}/{}", service.full_name(), m.name()), (m, shape));
            }
        }
        let auth = identity::Authenticator::new(
            Arc::new(Verifier::new(secret, api_keys)),
            settings.member_jwt.as_ref(),
            settings.staff_jwt.as_ref(),
        )?;
        let openapi = openapi::document(&routes);
        let docs = openapi::docs_page(&openapi);
        let upstreams = Upstreams::new(addrs, settings.health_interval)?;
        Ok(Self(Arc::new(Inner {
            upstreams,
            routes,
            methods,
            auth,
            minter: Minter::new(secret.clone()),
            limiter: limits::Limiter::new(settings),
            body_limit: settings.body_limit,
            page_size_max: settings.page_size_max,
            deadlines: limits::Deadlines::new(settings.deadline, settings.route_deadlines.clone()),
            cors: limits::Cors::new(settings.cors_origins.clone()),
            home_deadline: settings.home_deadline,
            openapi: serde_json::to_string_pretty(&openapi).unwrap_or_default(),
            docs,
        })))
    }

    pub fn upstreams(&self) -> &Upstreams {
        &self.0.upstreams
    }
}

/// The gateway's HTTP service.
pub fn router(gw: Gateway) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs))
        .route(home::ROUTE, get(home::handle))
        .fallback(dispatch)
        .layer(axum::middleware::from_fn_with_state(gw.clone(), edge))
        .with_state(gw)
}

async fn openapi_json(State(gw): State<Gateway>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        gw.0.openapi.clone(),
    )
        .into_response()
}

async fn docs(State(gw): State<Gateway>) -> Html<String> {
    Html(gw.0.docs.clone())
}

fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

async fn dispatch(State(gw): State<Gateway>, req: Request) -> Response {
    if is_grpc(&req) {
        grpc::proxy(gw, req).await
    } else {
        rest::handle(&gw, req).await
    }
}

/// Request id, trace context, CORS and the access log, for every request.
async fn edge(State(gw): State<Gateway>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let ctx = RequestCtx {
        request_id: limits::request_id(req.headers()),
        traceparent: limits::traceparent(req.headers()),
        tracestate: req.headers().get("tracestate").cloned(),
    };
    let method = req.method().clone();
    let allow_origin = gw.0.cors.allow(req.headers().get(header::ORIGIN));
    let preflight =
        method == Method::OPTIONS && req.headers().contains_key("access-control-request-method");
    req.extensions_mut().insert(ctx.clone());
    let mut resp = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if allow_origin.is_some() {
            let h = r.headers_mut();
            h.insert(
                "access-control-allow-methods",
                HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            h.insert(
                "access-control-allow-headers",
                HeaderValue::from_static(limits::ALLOWED_HEADERS),
            );
            h.insert("access-control-max-age", HeaderValue::from_static("600"));
        }
        r.extensions_mut().insert(AccessInfo {
            route: "preflight".into(),
            principal: "-",
        });
        r
    } else {
        next.run(req).await
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert("x-request-id", v);
    }
    if let Some(origin) = allow_origin {
        h.insert("access-control-allow-origin", origin);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        h.insert(
            "access-control-expose-headers",
            HeaderValue::from_static(limits::EXPOSED_HEADERS),
        );
    }
    let info = resp.extensions().get::<AccessInfo>().cloned();
    let (route, principal) = info.map_or(("-".to_owned(), "-"), |i| (i.route, i.principal));
    // no bodies, no query values, no tokens, no ids: the route template only
    tracing::info!(
        target: "loyalty_gateway::access",
        request_id = %ctx.request_id,
        method = %method,
        route = %route,
        status = resp.status().as_u16(),
        principal,
        duration_us = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

async fn readyz(State(gw): State<Gateway>) -> impl IntoResponse {
    let (services, replicas) = gw.0.upstreams.health().await;
    let ready = services.values().all(|s| s == "SERVING");
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = (
        code,
        Json(json!({"ready": ready, "services": services, "replicas": replicas})),
    )
        .into_response();
    resp.extensions_mut().insert(AccessInfo {
        route: "/readyz".into(),
        principal: "-",
    });
    resp
}

impl Gateway {
    /// One unary call to an upstream through the dynamic codec, with the
    /// internal token of `principal`, the request id and trace context,
    /// the deadline as grpc-timeout, and (for idempotent reads) up to two
    /// retries on UNAVAILABLE.
    #[allow(clippy::too_many_arguments)] // one call's full context, all needed
    pub(crate) async fn call(
        &self,
        service: &str,
        method: &prost_reflect::MethodDescriptor,
        msg: prost_reflect::DynamicMessage,
        principal: &Principal,
        ctx: &RequestCtx,
        deadline: Duration,
        idempotent: bool,
    ) -> Result<prost_reflect::DynamicMessage, tonic::Status> {
        let token = self
            .0
            .minter
            .mint(principal, INTERNAL_TOKEN_TTL)
            .map_err(tonic::Status::from)?;
        let path = http::uri::PathAndQuery::try_from(format!(
            "/{}/{}",
            method.parent_service().full_name(),
            method.name()
        ))
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let attempts = if idempotent { 3 } else { 1 };
        let until = Instant::now() + deadline;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(tonic::Status::deadline_exceeded("deadline exceeded"));
            }
            let result = tokio::time::timeout(left + Duration::from_millis(50), async {
                // no replica passed its last probe: answer at once rather
                // than wait for a connection until the deadline (503, not 504)
                if !self.0.upstreams.is_serving(service) {
                    return Err(tonic::Status::unavailable(format!(
                        "the {service} service is unavailable"
                    )));
                }
                let channel = self
                    .0
                    .upstreams
                    .channel(service)
                    .ok_or_else(|| tonic::Status::unavailable(format!("{service} unknown")))?;
                let mut grpc = tonic::client::Grpc::new(channel);
                grpc.ready()
                    .await
                    .map_err(|e| tonic::Status::unavailable(format!("{service}: {e}")))?;
                let mut req = tonic::Request::new(msg.clone());
                req.set_timeout(left);
                let md = req.metadata_mut();
                if let Ok(v) = format!("Bearer {token}").parse() {
                    md.insert("authorization", v);
                }
                if let Ok(v) = ctx.request_id.parse() {
                    md.insert("x-request-id", v);
                }
                if let Ok(v) = ctx.traceparent.parse() {
                    md.insert("traceparent", v);
                }
                if let Some(ts) = ctx.tracestate.as_ref().and_then(|v| v.to_str().ok())
                    && let Ok(v) = ts.parse()
                {
                    md.insert("tracestate", v);
                }
                grpc.unary(
                    req,
                    path.clone(),
                    upstream::DynamicCodec::new(method.output()),
                )
                .await
                .map(tonic::Response::into_inner)
            })
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("deadline exceeded")))
            // tonic reports its own client-side timeout as CANCELLED
            .map_err(|s| {
                if s.code() == tonic::Code::Cancelled && Instant::now() >= until {
                    tonic::Status::deadline_exceeded("deadline exceeded")
                } else {
                    s
                }
            });
            match result {
                Err(s) if s.code() == tonic::Code::Unavailable && attempt < attempts => {
                    tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                }
                other => return other,
            }
        }
    }
}

/// Binds `addr` and returns the bound address and the serving future, which
/// ends after `shutdown` fires and open requests finish.
pub async fn bind(
    addr: SocketAddr,
    gateway: Gateway,
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
    let app = router(gateway);
    // as on the services' listener: without TCP_NODELAY a response waits on
    // the client's delayed ACK (a ~40 ms tail)
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on a gateway connection");
        }
    });
    let serve = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await
            .map_err(GatewayError::Serve)
    };
    Ok((local, serve))
}
