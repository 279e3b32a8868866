//! The service's operations behind the gRPC adapter: check the caller,
//! validate with the domain, read and write through the store in one
//! transaction with the events, answer.

pub mod consent;
pub mod groups;
pub mod members;
pub mod privacy;
pub mod programs;
pub mod segments;
pub mod tiers;

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::auth::{Principal, Role};
use loyalty_common::calendar::to_timestamp;
use loyalty_common::db::Tx;
use loyalty_common::events::new_envelope;
use loyalty_common::idempotency::{WorkFuture, run_idempotent};
use loyalty_common::paging::{self, Page, PageLimits};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::common::PageRequest;
use loyalty_proto::events::EventEnvelope;
use loyalty_proto::events::event_envelope::Payload;

/// Producer name on events.
pub const PRODUCER: &str = "membership";

pub const ADMIN: &[Role] = &[Role::ProgramAdmin];
pub const SUPPORT: &[Role] = &[Role::ProgramAdmin, Role::SupportAgent];
pub const STAFF: &[Role] = &[Role::ProgramAdmin, Role::SupportAgent, Role::Analyst];
pub const STAFF_OR_BACKEND: &[Role] = &[
    Role::ProgramAdmin,
    Role::SupportAgent,
    Role::Analyst,
    Role::Backend,
];
pub const WRITERS: &[Role] = &[Role::ProgramAdmin, Role::SupportAgent, Role::Backend];

/// Page limits of member lists.
pub const MEMBER_PAGES: PageLimits = PageLimits::new(50, 500);
/// Page limits of segment member ids (ids only: larger pages).
pub const ID_PAGES: PageLimits = PageLimits::new(100, 1000);

/// A member acting on itself, or staff / systems holding one of `roles`.
pub fn self_or(
    p: &Principal,
    program_id: &str,
    member_id: &str,
    roles: &[Role],
) -> Result<(), ServiceError> {
    match p {
        Principal::Member { .. } => p.authorize_member(program_id, member_id),
        _ => p.require_role(program_id, roles),
    }
}

/// The decision clock (movable in tests).
pub fn now(rt: &ServiceRuntime) -> DateTime<Utc> {
    rt.clock.now()
}

/// An event of this service, stamped with the decision clock.
pub fn event(
    program_id: &str,
    member_id: &str,
    payload: Payload,
    at: DateTime<Utc>,
) -> EventEnvelope {
    let mut env = new_envelope(PRODUCER, program_id, member_id, payload);
    env.occurred_at = Some(to_timestamp(at));
    env
}

/// Checks a page request against `limits` for the query named `query`.
pub fn page(
    req: Option<&PageRequest>,
    limits: PageLimits,
    query: &str,
) -> Result<Page, ServiceError> {
    let r = req.cloned().unwrap_or_default();
    paging::parse(r.page_size, &r.page_token, limits, query)
}

/// Requires a non-empty id field.
pub fn required(field: &str, value: &str) -> Result<(), ServiceError> {
    if value.is_empty() {
        Err(ServiceError::invalid(field, "is required"))
    } else {
        Ok(())
    }
}

/// The page response for a next token.
pub fn page_response(next: String) -> Option<loyalty_proto::common::PageResponse> {
    Some(loyalty_proto::common::PageResponse {
        next_page_token: next,
    })
}

/// Runs a write in one transaction. With an idempotency key (optional on
/// this service's writes) it runs once per key through
/// [`run_idempotent`], scoped to the method and program: a replay answers
/// what the first call answered and writes nothing.
pub async fn write_once<Req, Resp, F>(
    rt: &ServiceRuntime,
    method: &str,
    program_id: &str,
    key: &str,
    request: &Req,
    work: F,
) -> Result<Resp, ServiceError>
where
    Req: prost::Message,
    Resp: prost::Message + Default,
    F: for<'t> FnOnce(&'t mut Tx) -> WorkFuture<'t, Resp>,
{
    let resp = if key.is_empty() {
        let mut tx = rt.db.begin().await?;
        let resp = work(&mut tx).await?;
        tx.commit().await?;
        resp
    } else {
        let scope = format!("membership.{method}/{program_id}");
        run_idempotent(&rt.db, &scope, key, request, work).await?
    };
    rt.outbox.notify();
    Ok(resp)
}
