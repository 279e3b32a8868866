//! The member home: one GET that assembles what an app's start screen
//! shows (profile, tier progress, balance, points expiring soon, coupons)
//! from the services concurrently, within one deadline. Each section
//! carries its own status and degrades alone: a slow or stopped service
//! empties its sections, the others still answer.
//!
//! Sections call RPCs found by name in the descriptor set; the request is
//! built generically (every `program_id` / `member_id` field, top level or
//! in a nested reference, is set from the path), the answer is the RPC's
//! canonical JSON. A section whose RPC the contracts do not offer says so.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, Value as PValue};
use serde_json::{Value, json};

use crate::error::{ApiError, code_name};
use crate::rest::{admit, ctx_of};
use crate::{AccessInfo, Gateway, authz, principal_kind, rules};

pub const ROUTE: &str = "/v1/programs/{program_id}/members/{member_id}/home";

/// A section: its name and the RPCs that can fill it (`package.Method`,
/// any service of the package), first found wins.
const SECTIONS: &[(&str, &[&str])] = &[
    ("profile", &["loyalty.membership.v1.GetMember"]),
    ("tierProgress", &["loyalty.membership.v1.GetTierProgress"]),
    // the balance carries the points expiring soon and the next expiry
    ("balance", &["loyalty.rewards.v1.GetBalance"]),
    ("coupons", &["loyalty.rewards.v1.ListMemberCoupons"]),
    ("badges", &["loyalty.rewards.v1.ListMemberBadges"]),
    (
        "openSurveys",
        &[
            "loyalty.feedback.v1.ListOpenSurveys",
            "loyalty.feedback.v1.ListMemberSurveys",
        ],
    ),
    (
        "tickets",
        &[
            "loyalty.feedback.v1.ListMemberTickets",
            "loyalty.feedback.v1.ListTickets",
        ],
    ),
];

fn find_method(names: &[&str]) -> Option<MethodDescriptor> {
    let pool = loyalty_proto::descriptor_pool();
    names.iter().find_map(|full| {
        let (package, m) = full.rsplit_once('.')?;
        pool.services()
            .filter(|s| s.package_name() == package)
            .find_map(|s| s.methods().find(|x| x.name() == m))
    })
}

/// Sets every `program_id` / `member_id` string field (top level and in
/// singular nested messages) of a fresh request.
fn fill(desc: &MessageDescriptor, program: &str, member: &str, depth: usize) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    for f in desc.fields() {
        if f.is_list() || f.is_map() {
            continue;
        }
        match (f.name(), f.kind()) {
            ("program_id", Kind::String) => msg.set_field(&f, PValue::String(program.into())),
            ("member_id", Kind::String) => msg.set_field(&f, PValue::String(member.into())),
            (_, Kind::Message(m))
                if depth < 2
                    && m.fields()
                        .any(|x| matches!(x.name(), "program_id" | "member_id")) =>
            {
                msg.set_field(&f, PValue::Message(fill(&m, program, member, depth + 1)));
            }
            _ => {}
        }
    }
    msg
}

async fn section(
    gw: &Gateway,
    names: &[&str],
    program: &str,
    member: &str,
    principal: &loyalty_common::auth::Principal,
    ctx: &crate::RequestCtx,
    until: Instant,
) -> Value {
    let Some(method) = find_method(names) else {
        return json!({"status": "UNIMPLEMENTED", "message": "not offered by the deployed contracts"});
    };
    let service = rules::upstream_of(method.parent_service().full_name())
        .unwrap_or_default()
        .to_owned();
    if !gw.0.upstreams.is_serving(&service) {
        return json!({"status": "UNAVAILABLE", "message": format!("the {service} service is unavailable")});
    }
    let req = fill(&method.input(), program, member, 0);
    let left = until.saturating_duration_since(Instant::now());
    match gw
        .call(&service, &method, req, principal, ctx, left, true)
        .await
    {
        Ok(out) => match serde_json::to_value(&out) {
            Ok(data) => json!({"status": "OK", "data": data}),
            Err(e) => json!({"status": "INTERNAL", "message": e.to_string()}),
        },
        Err(s) => json!({"status": code_name(s.code()), "message": s.message()}),
    }
}

pub(crate) async fn handle(
    State(gw): State<Gateway>,
    path: Result<Path<(String, String)>, axum::extract::rejection::PathRejection>,
    req: Request,
) -> Response {
    let ctx = ctx_of(&req);
    let rid = Some(ctx.request_id.as_str());
    let label = format!("GET {ROUTE}");
    // a malformed path gets the JSON error shape too
    let Ok(Path((program, member))) = path else {
        return tag(
            ApiError::invalid("path", "malformed path parameter").into_response_with(rid),
            &label,
            "-",
        );
    };
    let principal = match admit(&gw, req.headers()).await {
        Ok(p) => p,
        Err(e) => return tag(e.into_response_with(rid), &label, "-"),
    };
    let kind = principal_kind(&principal);
    // the same object-level check as any member-scoped read
    let check = (|| -> Result<(), ApiError> {
        authz::check_query(&principal, req.uri().query())?;
        let desc = loyalty_proto::descriptor_pool()
            .get_message_by_name("loyalty.common.v1.MemberRef")
            .ok_or_else(|| ApiError::new(tonic::Code::Internal, "MemberRef missing"))?;
        let shape = authz::RpcShape {
            member_scoped: true,
            read: true,
            member_path: true,
        };
        authz::check(
            &principal,
            shape,
            &fill(&desc, &program, &member, 0),
            gw.0.page_size_max,
        )
    })();
    if let Err(e) = check {
        return tag(e.into_response_with(rid), &label, kind);
    }
    let until = Instant::now() + gw.0.home_deadline;
    let calls = SECTIONS.iter().map(|(name, rpcs)| {
        let gw = &gw;
        let (program, member, principal, ctx) = (&program, &member, &principal, &ctx);
        async move {
            let v = tokio::time::timeout(
                gw.0.home_deadline + Duration::from_millis(100),
                section(gw, rpcs, program, member, principal, ctx, until),
            )
            .await
            .unwrap_or_else(
                |_| json!({"status": "DEADLINE_EXCEEDED", "message": "deadline exceeded"}),
            );
            ((*name).to_owned(), v)
        }
    });
    let sections: serde_json::Map<String, Value> =
        futures::future::join_all(calls).await.into_iter().collect();
    let body = json!({"programId": program, "memberId": member, "sections": sections});
    tag(Json(body).into_response(), &label, kind)
}

fn tag(mut resp: Response, route: &str, principal: &'static str) -> Response {
    resp.extensions_mut().insert(AccessInfo {
        route: route.to_owned(),
        principal,
    });
    resp
}

/// The schema of the home answer.
pub fn schema() -> Value {
    let section = json!({
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string", "description": "OK, or the gRPC code name of why this section is empty"},
            "message": {"type": "string"},
            "data": {"type": "object", "description": "the canonical JSON answer of the section's RPC"}
        },
        "additionalProperties": false
    });
    let mut props = serde_json::Map::new();
    for (name, _) in SECTIONS {
        props.insert((*name).to_owned(), section.clone());
    }
    json!({
        "type": "object",
        "required": ["programId", "memberId", "sections"],
        "properties": {
            "programId": {"type": "string"},
            "memberId": {"type": "string"},
            "sections": {"type": "object", "properties": props, "additionalProperties": false}
        },
        "additionalProperties": false
    })
}

/// The OpenAPI path and operation of the home endpoint.
pub fn openapi_operation() -> (&'static str, Value) {
    let param =
        |n: &str| json!({"name": n, "in": "path", "required": true, "schema": {"type": "string"}});
    (
        ROUTE,
        json!({
            "operationId": "Gateway_GetMemberHome",
            "tags": ["Gateway"],
            "summary": "The member home, assembled from the services within one deadline",
            "description": "Profile, tier progress, balance (with points expiring soon), coupons, badges, open surveys and tickets, fetched concurrently. Each section carries its own status and degrades alone when its service is slow or down.",
            "x-access": "a member (their own home only), staff of any role, a backend API key",
            "parameters": [param("program_id"), param("member_id")],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MemberHome"}}}},
                "default": {"description": "An error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        }),
    )
}
