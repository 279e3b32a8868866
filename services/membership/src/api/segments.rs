//! CreateSegment, GetSegment, ListSegments, ListSegmentMembers,
//! GetMemberSegments.

use loyalty_common::auth::{Principal, Role};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations, paging};
use loyalty_proto::loyalty::membership::v1 as pb;
use sqlx::AnyConnection;

use super::{ID_PAGES, MEMBER_PAGES, STAFF_OR_BACKEND, now, page, page_response, required};
use crate::domain::program::check_id;
use crate::domain::segment::{Rule, parse_rule};
use crate::store::segments::Today;
use crate::store::{members, programs, segments};

const DEFINERS: &[Role] = &[Role::ProgramAdmin, Role::Analyst];

fn rule_of(s: &pb::Segment) -> Result<Rule, ServiceError> {
    let mut v = Violations::new();
    let r = parse_rule(s.rule.as_ref(), "rule", &mut v);
    r.ok_or_else(|| crate::store::decode_err("segment rule", "invalid"))
}

async fn require(
    c: &mut AnyConnection,
    program_id: &str,
    segment_id: &str,
) -> Result<pb::Segment, ServiceError> {
    Ok(segments::get(c, program_id, segment_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("segment", segment_id))?
        .proto)
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, segment_id = %req.segment_id))]
pub async fn create(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::CreateSegmentRequest,
) -> Result<pb::CreateSegmentResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.require_role(&req.program_id, DEFINERS)?;
    let mut v = Violations::new();
    v.check("segment_id", check_id(&req.segment_id));
    if req.name.trim().is_empty() || req.name.chars().count() > 100 {
        v.add("name", "must have 1 to 100 characters");
    }
    parse_rule(req.rule.as_ref(), "rule", &mut v);
    v.finish()?;
    let segment = pb::Segment {
        program_id: req.program_id.clone(),
        segment_id: req.segment_id.clone(),
        name: req.name.clone(),
        rule: req.rule.clone(),
        created_at: None,
    };
    let mut tx = rt.db.begin().await?;
    crate::store::programs::require(&mut tx, &req.program_id).await?;
    let created = segments::insert(&mut tx, &segment, now(rt)).await?;
    let stored = require(&mut tx, &req.program_id, &req.segment_id).await?;
    if !created && (stored.name != segment.name || stored.rule != segment.rule) {
        return Err(ServiceError::AlreadyExists {
            resource: "segment",
            field: "segment_id".into(),
        });
    }
    tx.commit().await?;
    Ok(pb::CreateSegmentResponse {
        segment: Some(stored),
        created,
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, segment_id = %req.segment_id))]
pub async fn get(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::GetSegmentRequest,
) -> Result<pb::GetSegmentResponse, ServiceError> {
    required("segment_id", &req.segment_id)?;
    p.require_role(&req.program_id, STAFF_OR_BACKEND)?;
    let mut c = rt.db.pool().acquire().await?;
    Ok(pb::GetSegmentResponse {
        segment: Some(require(&mut c, &req.program_id, &req.segment_id).await?),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id))]
pub async fn list(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ListSegmentsRequest,
) -> Result<pb::ListSegmentsResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.require_role(&req.program_id, STAFF_OR_BACKEND)?;
    let query = format!("segments|{}", req.program_id);
    let pg = page(req.page.as_ref(), MEMBER_PAGES, &query)?;
    let mut c = rt.db.pool().acquire().await?;
    let rows = segments::list(
        &mut c,
        &req.program_id,
        pg.after.as_deref().unwrap_or(""),
        pg.fetch_limit(),
    )
    .await?;
    let (rows, next) = paging::finish(rows, &pg, &query, |s| s.proto.segment_id.clone());
    Ok(pb::ListSegmentsResponse {
        segments: rows.into_iter().map(|s| s.proto).collect(),
        page: page_response(next),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, segment_id = %req.segment_id))]
pub async fn members_of(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ListSegmentMembersRequest,
) -> Result<pb::ListSegmentMembersResponse, ServiceError> {
    required("segment_id", &req.segment_id)?;
    p.require_role(&req.program_id, STAFF_OR_BACKEND)?;
    let query = format!("segment|{}|{}", req.program_id, req.segment_id);
    let pg = page(req.page.as_ref(), ID_PAGES, &query)?;
    let mut c = rt.db.pool().acquire().await?;
    let segment = require(&mut c, &req.program_id, &req.segment_id).await?;
    let rule = rule_of(&segment)?;
    let program = programs::require(&mut c, &req.program_id).await?;
    let ids = segments::matching_members(
        &mut c,
        &req.program_id,
        &rule,
        &Today::of(&program.tz, now(rt)),
        pg.after.as_deref().unwrap_or(""),
        pg.fetch_limit(),
    )
    .await?;
    let (ids, next) = paging::finish(ids, &pg, &query, Clone::clone);
    Ok(pb::ListSegmentMembersResponse {
        member_ids: ids,
        page: page_response(next),
    })
}

/// The segments a member matches (evaluated in memory on its facts).
pub async fn segments_of(
    c: &mut AnyConnection,
    rt: &ServiceRuntime,
    program_id: &str,
    member_id: &str,
) -> Result<Vec<String>, ServiceError> {
    let program = programs::require(c, program_id).await?;
    let m = members::require(c, program_id, member_id).await?;
    let tags = members::tags(c, member_id).await?;
    let facts = m.facts(&tags, &program.tz);
    let today = program.tz.local_date(now(rt));
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = segments::list(c, program_id, &after, 200).await?;
        let Some(last) = page.last().map(|s| s.proto.segment_id.clone()) else {
            break;
        };
        for s in &page {
            if rule_of(&s.proto)?.matches(&facts, today) {
                out.push(s.proto.segment_id.clone());
            }
        }
        after = last;
    }
    Ok(out)
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn of_member(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::GetMemberSegmentsRequest,
) -> Result<pb::GetMemberSegmentsResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    p.authorize_member(&req.program_id, &req.member_id)?;
    let mut c = rt.db.pool().acquire().await?;
    Ok(pb::GetMemberSegmentsResponse {
        segment_ids: segments_of(&mut c, rt, &req.program_id, &req.member_id).await?,
    })
}
