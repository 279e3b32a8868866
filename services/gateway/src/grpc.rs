//! gRPC pass-through and gRPC-Web on the gateway listener. gRPC-Web is
//! translated to gRPC by tonic-web; both are then treated alike: the
//! caller's credential is verified, the unary request message decoded (by
//! descriptor) and authorised like a REST call, and the call forwarded to
//! a healthy replica with an internal token, the request id, trace context
//! and a deadline.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use prost_reflect::DynamicMessage;
use tower::{Layer, Service, ServiceExt};

use crate::error::ApiError;
use crate::rest::{admit, ctx_from, read_body};
use crate::{AccessInfo, Gateway, authz, principal_kind, rules};

pub(crate) async fn proxy(gw: Gateway, req: Request) -> Response {
    let svc = tonic_web::GrpcWebLayer::new().layer(Forward { gw });
    match svc.oneshot(req).await {
        Ok(resp) => resp.map(axum::body::Body::new),
        Err(never) => match never {},
    }
}

#[derive(Clone)]
struct Forward {
    gw: Gateway,
}

impl Service<http::Request<tonic::body::Body>> for Forward {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let gw = self.gw.clone();
        Box::pin(async move { Ok(forward(gw, req).await) })
    }
}

fn status_response(
    status: &tonic::Status,
    route: &str,
    principal: &'static str,
) -> http::Response<tonic::body::Body> {
    let mut resp: http::Response<tonic::body::Body> = status.clone().into_http();
    resp.extensions_mut().insert(AccessInfo {
        route: route.to_owned(),
        principal,
    });
    resp
}

/// Headers that must not travel from an HTTP/1.1 hop to an HTTP/2 one.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

async fn forward(
    gw: Gateway,
    req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let path = req.uri().path().to_owned();
    let Some((method, shape)) = gw.0.methods.get(&path).cloned() else {
        return status_response(
            &tonic::Status::unimplemented("unknown method"),
            "grpc -",
            "-",
        );
    };
    let label = format!("grpc {path}");
    let service_name = method.parent_service().full_name().to_owned();
    let Some(upstream) = rules::upstream_of(&service_name).map(str::to_owned) else {
        return status_response(
            &tonic::Status::unimplemented("unknown service"),
            &label,
            "-",
        );
    };
    let ctx = ctx_from(req.headers(), req.extensions());
    let principal = match admit(&gw, req.headers()).await {
        Ok(p) => p,
        Err(e) => return status_response(&e.to_status(), &label, "-"),
    };
    let kind = principal_kind(&principal);
    let (mut parts, body) = req.into_parts();
    let bytes = match read_body(axum::body::Body::new(body), &parts.headers, gw.0.body_limit).await
    {
        Ok(b) => b,
        Err(e) => return status_response(&e.to_status(), &label, kind),
    };
    let checked = decode_frame(&bytes, &method.input())
        .and_then(|msg| authz::check(&principal, shape, &msg, gw.0.page_size_max));
    if let Err(e) = checked {
        return status_response(&e.to_status(), &label, kind);
    }
    if !gw.0.upstreams.is_serving(&upstream) {
        return status_response(&ApiError::unavailable(&upstream).to_status(), &label, kind);
    }
    let Some(mut channel) = gw.0.upstreams.channel(&upstream) else {
        return status_response(&ApiError::unavailable(&upstream).to_status(), &label, kind);
    };
    let token = match gw
        .0
        .minter
        .mint(&principal, std::time::Duration::from_secs(60))
    {
        Ok(t) => t,
        Err(e) => return status_response(&e.into(), &label, kind),
    };
    let h = &mut parts.headers;
    for name in HOP_BY_HOP {
        h.remove(name);
    }
    h.remove("x-api-key");
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        h.insert(header::AUTHORIZATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        h.insert("x-request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.traceparent) {
        h.insert("traceparent", v);
    }
    if !h.contains_key("grpc-timeout") {
        let ms = gw.0.deadlines.of(&method).as_millis().max(1);
        if let Ok(v) = HeaderValue::from_str(&format!("{ms}m")) {
            h.insert("grpc-timeout", v);
        }
    }
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    parts.version = http::Version::HTTP_2;
    let out =
        http::Request::from_parts(parts, tonic::body::Body::new(axum::body::Body::from(bytes)));
    let resp = match channel.ready().await {
        Ok(ch) => ch.call(out).await,
        Err(e) => Err(e),
    };
    match resp {
        Ok(mut r) => {
            r.extensions_mut().insert(AccessInfo {
                route: label,
                principal: kind,
            });
            r
        }
        Err(e) => status_response(
            &tonic::Status::unavailable(format!("{upstream}: {e}")),
            &label,
            kind,
        ),
    }
}

/// The request message of a unary gRPC body (one uncompressed frame).
fn decode_frame(
    body: &Bytes,
    desc: &prost_reflect::MessageDescriptor,
) -> Result<DynamicMessage, ApiError> {
    let bad = |why: &str| ApiError::invalid("body", why);
    if body.len() < 5 {
        return Err(bad("a gRPC request needs one message frame"));
    }
    if body[0] != 0 {
        return Err(bad("compressed requests are not accepted by the gateway"));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err(bad("exactly one message frame expected (unary calls only)"));
    }
    DynamicMessage::decode(desc.clone(), &body[5..]).map_err(|e| bad(&e.to_string()))
}
