//! SetConsent, GetConsents, ListConsentHistory, CheckConsent.

use chrono::{DateTime, Utc};
use loyalty_common::auth::Principal;
use loyalty_common::calendar::{from_timestamp, to_micros, to_timestamp};
use loyalty_common::db::Tx;
use loyalty_common::events::outbox;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations, paging};
use loyalty_proto::events::ConsentChanged;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::loyalty::membership::v1 as pb;

use super::{
    MEMBER_PAGES, STAFF_OR_BACKEND, WRITERS, event, now, page, page_response, required, self_or,
    write_once,
};
use crate::domain::consent::{ConsentState, check_channel, check_purpose, deciding};
use crate::store::{consents, members};

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn set(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::SetConsentRequest,
) -> Result<pb::SetConsentResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    self_or(p, &req.program_id, &req.member_id, WRITERS)?;
    let at_now = now(rt);
    let mut v = Violations::new();
    v.check("purpose", check_purpose(&req.purpose));
    v.check("channel", check_channel(&req.channel));
    if req.policy_version.is_empty() || req.policy_version.len() > 64 {
        v.add("policy_version", "is required (1 to 64 characters)");
    }
    if req.source.len() > 32 {
        v.add("source", "at most 32 characters");
    }
    let at = match &req.occurred_at {
        None => Some(at_now),
        Some(_) => match from_timestamp("occurred_at", req.occurred_at.as_ref()) {
            Ok(t) if t > at_now => {
                v.add("occurred_at", "is in the future");
                None
            }
            Ok(t) => Some(t),
            Err(_) => {
                v.add("occurred_at", "is not a valid timestamp");
                None
            }
        },
    };
    v.finish()?;
    let at = at.unwrap_or(at_now);
    let (program_id, key) = (req.program_id.clone(), req.idempotency_key.clone());
    let r = req.clone();
    write_once(rt, "SetConsent", &program_id, &key, &req, move |tx| {
        Box::pin(async move { set_in(tx, &r, at, at_now).await })
    })
    .await
}

/// Records the change and its event under the member's row lock; the same
/// state again records nothing.
async fn set_in(
    tx: &mut Tx,
    req: &pb::SetConsentRequest,
    at: DateTime<Utc>,
    at_now: DateTime<Utc>,
) -> Result<pb::SetConsentResponse, ServiceError> {
    members::lock(tx, &req.member_id).await?;
    let m = members::require(tx, &req.program_id, &req.member_id).await?;
    if m.status == "erased" {
        return Err(ServiceError::precondition("the member is erased"));
    }
    let current = consents::current(tx, &req.member_id).await?;
    let consent = pb::Consent {
        purpose: req.purpose.clone(),
        channel: req.channel.clone(),
        granted: req.granted,
        policy_version: req.policy_version.clone(),
        changed_at: Some(to_timestamp(at)),
        source: req.source.clone(),
    };
    if let Some(same) = current.iter().find(|c| {
        c.purpose == req.purpose
            && c.channel == req.channel
            && c.granted == req.granted
            && c.policy_version == req.policy_version
    }) {
        return Ok(pb::SetConsentResponse {
            consent: Some(same.clone()),
            changed: false,
        });
    }
    consents::set(tx, &req.member_id, &consent, to_micros(at)).await?;
    let env = event(
        &req.program_id,
        &req.member_id,
        Payload::ConsentChanged(ConsentChanged {
            purpose: req.purpose.clone(),
            channel: req.channel.clone(),
            granted: req.granted,
            policy_version: req.policy_version.clone(),
        }),
        at_now,
    );
    outbox::append(tx, &env).await?;
    Ok(pb::SetConsentResponse {
        consent: Some(consent),
        changed: true,
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn get(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::GetConsentsRequest,
) -> Result<pb::GetConsentsResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    p.authorize_member(&req.program_id, &req.member_id)?;
    let mut c = rt.db.pool().acquire().await?;
    members::require(&mut c, &req.program_id, &req.member_id).await?;
    Ok(pb::GetConsentsResponse {
        consents: consents::current(&mut c, &req.member_id).await?,
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn history(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ListConsentHistoryRequest,
) -> Result<pb::ListConsentHistoryResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    p.authorize_member(&req.program_id, &req.member_id)?;
    let query = format!("consents|{}|{}", req.program_id, req.member_id);
    let pg = page(req.page.as_ref(), MEMBER_PAGES, &query)?;
    let after: i64 = pg
        .after
        .as_deref()
        .map_or(Ok(0), str::parse)
        .map_err(|_| ServiceError::invalid("page.page_token", "is not valid"))?;
    let mut c = rt.db.pool().acquire().await?;
    members::require(&mut c, &req.program_id, &req.member_id).await?;
    let rows = consents::history(&mut c, &req.member_id, after, pg.fetch_limit()).await?;
    let (rows, next) = paging::finish(rows, &pg, &query, |(seq, _)| seq.to_string());
    Ok(pb::ListConsentHistoryResponse {
        changes: rows.into_iter().map(|(_, c)| c).collect(),
        page: page_response(next),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn check(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::CheckConsentRequest,
) -> Result<pb::CheckConsentResponse, ServiceError> {
    required("member_id", &req.member_id)?;
    p.require_role(&req.program_id, STAFF_OR_BACKEND)?;
    let mut v = Violations::new();
    v.check("purpose", check_purpose(&req.purpose));
    v.check("channel", check_channel(&req.channel));
    v.finish()?;
    let mut c = rt.db.pool().acquire().await?;
    let m = members::require(&mut c, &req.program_id, &req.member_id).await?;
    let all = consents::current(&mut c, &req.member_id).await?;
    let of_purpose: Vec<&pb::Consent> = all.iter().filter(|c| c.purpose == req.purpose).collect();
    let states: Vec<ConsentState> = of_purpose
        .iter()
        .map(|c| ConsentState {
            channel: &c.channel,
            granted: c.granted,
        })
        .collect();
    let decided = deciding(&states, &req.channel)
        .and_then(|d| of_purpose.iter().find(|c| c.channel == d.channel))
        .map(|c| (*c).clone());
    let allowed = m.status == "active" && decided.as_ref().is_some_and(|c| c.granted);
    Ok(pb::CheckConsentResponse {
        allowed,
        consent: decided,
    })
}
