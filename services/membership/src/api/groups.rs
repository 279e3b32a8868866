//! CreateGroup, ListGroups, JoinGroup, LeaveGroup, ListGroupMembers.

use loyalty_common::auth::Principal;
use loyalty_common::events::outbox;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations, paging};
use loyalty_proto::loyalty::membership::v1 as pb;

use super::members::member_updated;
use super::{
    ADMIN, MEMBER_PAGES, STAFF, STAFF_OR_BACKEND, now, page, page_response, required, self_or,
    write_once,
};
use crate::domain::program::check_id;
use crate::store::{groups, members, programs};

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, group_id = %req.group_id))]
pub async fn create(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::CreateGroupRequest,
) -> Result<pb::CreateGroupResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.require_role(&req.program_id, ADMIN)?;
    let mut v = Violations::new();
    v.check("group_id", check_id(&req.group_id));
    if req.name.trim().is_empty() || req.name.chars().count() > 100 {
        v.add("name", "must have 1 to 100 characters");
    }
    if req.description.chars().count() > 1000 {
        v.add("description", "at most 1000 characters");
    }
    v.finish()?;
    let group = pb::Group {
        program_id: req.program_id.clone(),
        group_id: req.group_id.clone(),
        name: req.name.clone(),
        description: req.description.clone(),
        created_at: None,
    };
    let at = now(rt);
    let (program_id, key) = (req.program_id.clone(), req.idempotency_key.clone());
    write_once(rt, "CreateGroup", &program_id, &key, &req, move |tx| {
        Box::pin(async move {
            programs::require(tx, &group.program_id).await?;
            let created = groups::insert(tx, &group, at).await?;
            let stored = groups::get(tx, &group.program_id, &group.group_id)
                .await?
                .ok_or_else(|| ServiceError::internal("group vanished"))?;
            if !created && (stored.name != group.name || stored.description != group.description) {
                return Err(ServiceError::AlreadyExists {
                    resource: "group",
                    field: "group_id".into(),
                });
            }
            Ok(pb::CreateGroupResponse {
                group: Some(stored),
                created,
            })
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id))]
pub async fn list(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ListGroupsRequest,
) -> Result<pb::ListGroupsResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.authorize_program(&req.program_id)?;
    let query = format!("groups|{}", req.program_id);
    let pg = page(req.page.as_ref(), MEMBER_PAGES, &query)?;
    let mut c = rt.db.pool().acquire().await?;
    let rows = groups::list(
        &mut c,
        &req.program_id,
        pg.after.as_deref().unwrap_or(""),
        pg.fetch_limit(),
    )
    .await?;
    let (rows, next) = paging::finish(rows, &pg, &query, |g| g.group_id.clone());
    Ok(pb::ListGroupsResponse {
        groups: rows,
        page: page_response(next),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, group_id = %req.group_id, member_id = %req.member_id))]
pub async fn join(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::JoinGroupRequest,
) -> Result<pb::JoinGroupResponse, ServiceError> {
    required("group_id", &req.group_id)?;
    required("member_id", &req.member_id)?;
    self_or(p, &req.program_id, &req.member_id, STAFF)?;
    let mut tx = rt.db.begin().await?;
    let m = members::require(&mut tx, &req.program_id, &req.member_id).await?;
    if m.status != "active" {
        return Err(ServiceError::precondition(format!(
            "a {} member cannot join groups",
            m.status
        )));
    }
    groups::get(&mut tx, &req.program_id, &req.group_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("group", &req.group_id))?;
    let at = now(rt);
    let (membership, joined) =
        groups::join(&mut tx, &req.program_id, &req.group_id, &req.member_id, at).await?;
    if joined {
        let env = member_updated(&m, "groups", std::slice::from_ref(&req.group_id), at);
        outbox::append(&mut tx, &env).await?;
    }
    tx.commit().await?;
    rt.outbox.notify();
    Ok(pb::JoinGroupResponse {
        membership: Some(membership),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, group_id = %req.group_id, member_id = %req.member_id))]
pub async fn leave(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::LeaveGroupRequest,
) -> Result<pb::LeaveGroupResponse, ServiceError> {
    required("group_id", &req.group_id)?;
    required("member_id", &req.member_id)?;
    self_or(p, &req.program_id, &req.member_id, STAFF)?;
    let mut tx = rt.db.begin().await?;
    groups::get(&mut tx, &req.program_id, &req.group_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("group", &req.group_id))?;
    let left = groups::leave(&mut tx, &req.program_id, &req.group_id, &req.member_id).await?;
    if left && let Some(m) = members::get(&mut tx, &req.program_id, &req.member_id).await? {
        let env = member_updated(&m, "groups", std::slice::from_ref(&req.group_id), now(rt));
        outbox::append(&mut tx, &env).await?;
    }
    tx.commit().await?;
    rt.outbox.notify();
    Ok(pb::LeaveGroupResponse { left })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, group_id = %req.group_id))]
pub async fn members_of(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ListGroupMembersRequest,
) -> Result<pb::ListGroupMembersResponse, ServiceError> {
    required("group_id", &req.group_id)?;
    p.require_role(&req.program_id, STAFF_OR_BACKEND)?;
    let query = format!("group|{}|{}", req.program_id, req.group_id);
    let pg = page(req.page.as_ref(), MEMBER_PAGES, &query)?;
    let mut c = rt.db.pool().acquire().await?;
    groups::get(&mut c, &req.program_id, &req.group_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("group", &req.group_id))?;
    let rows = groups::members(
        &mut c,
        &req.program_id,
        &req.group_id,
        pg.after.as_deref().unwrap_or(""),
        pg.fetch_limit(),
    )
    .await?;
    let (rows, next) = paging::finish(rows, &pg, &query, |m| m.member_id.clone());
    Ok(pb::ListGroupMembersResponse {
        members: rows,
        page: page_response(next),
    })
}
