//! ExportMemberData and EraseMember.

use loyalty_common::ServiceError;
use loyalty_common::auth::Principal;
use loyalty_common::calendar::to_timestamp;
use loyalty_common::events::outbox;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::events::MemberErased;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::membership::v1 as pb;

use super::{SUPPORT, event, now, required, self_or};
use crate::store::{activity, consents, groups, members};

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn export(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ExportMemberDataRequest,
) -> Result<pb::ExportMemberDataResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    self_or(p, &req.program_id, &req.member_id, SUPPORT)?;
    let mut c = rt.db.pool().acquire().await?;
    let (m, tags) = members::require_tagged(&mut c, &req.program_id, &req.member_id).await?;
    let member = m.to_proto(tags);
    let current = consents::current(&mut c, &m.member_id).await?;
    let mut consent_history = Vec::new();
    let mut after = 0;
    loop {
        let page = consents::history(&mut c, &m.member_id, after, 500).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        consent_history.extend(page.into_iter().map(|(_, c)| c));
    }
    let mut tier_history = Vec::new();
    let mut before = i64::MAX;
    loop {
        let page = activity::tier_history(&mut c, &m.member_id, before, 500).await?;
        let Some((last, _)) = page.last() else { break };
        before = *last;
        tier_history.extend(page.into_iter().map(|(_, c)| c));
    }
    tier_history.reverse(); // oldest first
    let export = pb::MemberDataExport {
        member: Some(member),
        consents: current,
        consent_history,
        tier_history,
        groups: groups::of_member(&mut c, &m.member_id).await?,
        segment_ids: super::segments::segments_of(&mut c, rt, &req.program_id, &req.member_id)
            .await?,
        qualifying_activity: activity::all_of(&mut c, &req.program_id, &m.member_id).await?,
        exported_at: Some(to_timestamp(now(rt))),
    };
    Ok(pb::ExportMemberDataResponse {
        export: Some(export),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn erase(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::EraseMemberRequest,
) -> Result<pb::EraseMemberResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    self_or(p, &req.program_id, &req.member_id, SUPPORT)?;
    let at = now(rt);
    let mut tx = rt.db.begin().await?;
    members::lock(&mut tx, &req.member_id).await?;
    let (m, tags) = members::require_tagged(&mut tx, &req.program_id, &req.member_id).await?;
    if m.status == "erased" {
        let member = m.to_proto(tags);
        tx.rollback().await?;
        return Ok(pb::EraseMemberResponse {
            member: Some(member),
            erased: false,
        });
    }
    members::erase(&mut tx, &m.member_id, at).await?;
    let env = event(
        &m.program_id,
        &m.member_id,
        Payload::MemberErased(MemberErased {
            requested_at: Some(to_timestamp(at)),
        }),
        at,
    );
    outbox::append(&mut tx, &env).await?;
    let (erased, tags) = members::require_tagged(&mut tx, &req.program_id, &req.member_id).await?;
    let member = erased.to_proto(tags);
    tx.commit().await?;
    rt.outbox.notify();
    tracing::info!("member erased");
    Ok(pb::EraseMemberResponse {
        member: Some(member),
        erased: true,
    })
}
