//! REST/JSON: route → authenticate → limit → transcode → authorise →
//! forward → canonical JSON (or the mapped error).

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use loyalty_common::auth::Principal;

use crate::error::ApiError;
use crate::{AccessInfo, Gateway, RequestCtx, authz, principal_key, rules, transcode};

pub(crate) fn ctx_from(headers: &axum::http::HeaderMap, ext: &http::Extensions) -> RequestCtx {
    ext.get::<RequestCtx>()
        .cloned()
        .unwrap_or_else(|| RequestCtx {
            request_id: crate::limits::request_id(headers),
            traceparent: crate::limits::traceparent(headers),
            tracestate: headers.get("tracestate").cloned(),
        })
}

pub(crate) fn ctx_of(req: &Request) -> RequestCtx {
    ctx_from(req.headers(), req.extensions())
}

fn finish(resp: Response, route: &str, principal: Option<&Principal>) -> Response {
    let mut resp = resp;
    resp.extensions_mut().insert(AccessInfo {
        route: route.to_owned(),
        principal: principal.map_or("-", crate::principal_kind),
    });
    resp
}

/// Authenticates and rate-limits a request (shared with the home endpoint).
pub(crate) async fn admit(
    gw: &Gateway,
    headers: &axum::http::HeaderMap,
) -> Result<Principal, ApiError> {
    let principal = gw.0.auth.authenticate(headers)?;
    if let Err(secs) = gw.0.limiter.check(&principal_key(&principal)).await {
        let mut e = ApiError::new(
            tonic::Code::ResourceExhausted,
            "rate limit reached; retry later",
        );
        e.reason = Some("RESOURCE_EXHAUSTED".into());
        e.retry_after = Some(secs);
        return Err(e);
    }
    Ok(principal)
}

pub(crate) async fn read_body(
    body: axum::body::Body,
    headers: &axum::http::HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            tonic::Code::ResourceExhausted,
            format!("request body larger than {limit} bytes"),
        )
        .with_http(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

pub(crate) async fn handle(gw: &Gateway, req: Request) -> Response {
    let ctx = ctx_of(&req);
    let rid = Some(ctx.request_id.as_str());
    let (parts, body) = req.into_parts();
    let found = rules::find(&gw.0.routes, &parts.method, parts.uri.path());
    let (route, vars) = match found {
        Ok(Some(x)) => x,
        Ok(None) => {
            return finish(
                ApiError::not_found_route().into_response_with(rid),
                "-",
                None,
            );
        }
        Err(allowed) => {
            let mut resp = ApiError::new(
                tonic::Code::Unimplemented,
                "method not allowed on this route",
            )
            .with_http(StatusCode::METHOD_NOT_ALLOWED)
            .into_response_with(rid);
            let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
            return finish(resp, "-", None);
        }
    };
    let label = format!("{} {}", route.verb, route.template.raw);
    let principal = match admit(gw, &parts.headers).await {
        Ok(p) => p,
        Err(e) => return finish(e.into_response_with(rid), &label, None),
    };
    let result = async {
        authz::check_query(&principal, parts.uri.query())?;
        let bytes = read_body(body, &parts.headers, gw.0.body_limit).await?;
        let msg = transcode::request_message(route, &vars, parts.uri.query(), &bytes)?;
        let shape = authz::RpcShape::of(
            &route.method,
            route.verb == Method::GET,
            authz::binds_member(&route.template),
        );
        authz::check(&principal, shape, &msg, gw.0.page_size_max)?;
        if !gw.0.upstreams.is_serving(&route.service) {
            return Err(ApiError::unavailable(&route.service));
        }
        let deadline = gw.0.deadlines.of(&route.method);
        let out = gw
            .call(
                &route.service,
                &route.method,
                msg,
                &principal,
                &ctx,
                deadline,
                route.verb == Method::GET,
            )
            .await
            .map_err(|s| ApiError::from_status(&s))?;
        transcode::response_json(route, &out)
    }
    .await;
    let resp = match result {
        Ok(json) => Json(json).into_response(),
        Err(e) => e.into_response_with(rid),
    };
    finish(resp, &label, Some(&principal))
}
