//! Enrolment, lookups, profile updates with optimistic versions, status
//! changes, tags and listing.

use chrono::{DateTime, Utc};
use loyalty_common::auth::Principal;
use loyalty_common::calendar::to_micros;
use loyalty_common::db::{Tx, is_unique_violation};
use loyalty_common::events::outbox;
use loyalty_common::idempotency::fingerprint;
use loyalty_common::runtime::ServiceRuntime;
use loyalty_common::{ServiceError, Violations, paging};
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{MemberEnrolled, MemberUpdated, TierChanged};
use loyalty_proto::loyalty::membership::v1 as pb;
use sqlx::AnyConnection;

use super::{
    MEMBER_PAGES, STAFF, STAFF_OR_BACKEND, SUPPORT, WRITERS, event, now, page, page_response,
    required, self_or, write_once,
};
use crate::domain::contact::{Email, Phone, contact_hash};
use crate::domain::profile::{Profile, apply_mask, parse_profile};
use crate::domain::tiers::next_evaluation;
use crate::store::members::{self, Key, MemberRecord};
use crate::store::programs::ProgramRecord;
use crate::store::{activity, programs};

/// The member as the contract shows it (with tags).
pub async fn to_proto(c: &mut AnyConnection, m: &MemberRecord) -> Result<pb::Member, ServiceError> {
    Ok(m.to_proto(members::tags(c, &m.member_id).await?))
}

fn check_tag(t: &str) -> Result<(), String> {
    if !t.is_empty()
        && t.len() <= 64
        && t.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b':')
        })
    {
        Ok(())
    } else {
        Err("tags are 1 to 64 lower-case letters, digits, '-', '_' or ':'".into())
    }
}

fn check_tags(field: &str, tags: &[String], v: &mut Violations) {
    if tags.len() > 50 {
        v.add(field, "at most 50 tags at once");
    }
    for (i, t) in tags.iter().enumerate() {
        v.check(&format!("{field}[{i}]"), check_tag(t));
    }
}

fn field_of(key: Key) -> String {
    match key {
        Key::ExternalId => "external_id".into(),
        other => format!("profile.{}", other.field()),
    }
}

fn already(key: Key) -> ServiceError {
    ServiceError::AlreadyExists {
        resource: "member",
        field: field_of(key),
    }
}

fn contact_hashes(program_id: &str, p: &Profile) -> Vec<String> {
    let mut h = Vec::new();
    if let Some(phone) = &p.phone {
        h.push(contact_hash(program_id, phone.as_str()));
    }
    if let Some(email) = &p.email {
        h.push(contact_hash(program_id, email.as_str()));
    }
    h
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id))]
pub async fn enroll(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::EnrollMemberRequest,
) -> Result<pb::EnrollMemberResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.require_role(&req.program_id, WRITERS)?;
    let at = now(rt);
    let program = {
        let mut c = rt.db.pool().acquire().await?;
        programs::require(&mut c, &req.program_id).await?
    };
    let mut v = Violations::new();
    if req.external_id.is_empty()
        || req.external_id.len() > 128
        || !req.external_id.bytes().all(|b| b.is_ascii_graphic())
    {
        v.add(
            "external_id",
            "is required: 1 to 128 printable characters without spaces",
        );
    }
    let today = program.tz.local_date(at);
    let profile = parse_profile(
        &req.profile.clone().unwrap_or_default(),
        "profile",
        today,
        &mut v,
    );
    if req.enrolment_channel.len() > 32 {
        v.add("enrolment_channel", "at most 32 characters");
    }
    check_tags("tags", &req.tags, &mut v);
    v.finish()?;
    let print = fingerprint(&req);

    let mut tx = rt.db.begin().await?;
    if let Some(existing) =
        members::find_by(&mut tx, &req.program_id, Key::ExternalId, &req.external_id).await?
    {
        let member = to_proto(&mut tx, &existing).await?;
        tx.rollback().await?;
        return if existing.enrol_fingerprint == print {
            Ok(pb::EnrollMemberResponse {
                member: Some(member),
                created: false,
            })
        } else {
            Err(already(Key::ExternalId))
        };
    }
    if members::taken_key(&mut tx, &req.program_id, "", None, &profile)
        .await?
        .is_some()
    {
        // maybe taken by this very enrolment, committed meanwhile (a retry
        // racing the first call)
        tx.rollback().await?;
        let mut c = rt.db.pool().acquire().await?;
        return replay_or_conflict(&mut c, &req, &print, &profile).await;
    }
    let base = &program.rules.tiers[0];
    let record = MemberRecord {
        member_id: uuid::Uuid::now_v7().to_string(),
        program_id: req.program_id.clone(),
        external_id: Some(req.external_id.clone()),
        profile: profile.clone(),
        status: "active".into(),
        enrolment_channel: req.enrolment_channel.clone(),
        tier_code: base.code.clone(),
        tier_since: to_micros(at),
        next_evaluation_at: to_micros(next_evaluation(program.rules.evaluation, &program.tz, at)),
        last_purchase_at: None,
        enrol_fingerprint: print,
        version: 1,
        enrolled_at: to_micros(at),
        updated_at: to_micros(at),
    };
    match write_enrolment(&mut tx, &record, &req.tags, base.points_multiplier_bp(), at).await {
        Ok(()) => {}
        Err(e) if is_unique_violation(&e) => {
            // a concurrent enrolment took a key between our check and insert
            tx.rollback().await?;
            let mut c = rt.db.pool().acquire().await?;
            return replay_or_conflict(&mut c, &req, &record.enrol_fingerprint, &profile).await;
        }
        Err(e) => return Err(e.into()),
    }
    let member = to_proto(&mut tx, &record).await?;
    tx.commit().await?;
    rt.outbox.notify();
    Ok(pb::EnrollMemberResponse {
        member: Some(member),
        created: true,
    })
}

/// After a key conflict: the answer of the first call if this enrolment
/// was made already (same external id and request), else ALREADY_EXISTS
/// naming the field another member holds.
async fn replay_or_conflict(
    c: &mut AnyConnection,
    req: &pb::EnrollMemberRequest,
    print: &str,
    profile: &Profile,
) -> Result<pb::EnrollMemberResponse, ServiceError> {
    if let Some(existing) =
        members::find_by(c, &req.program_id, Key::ExternalId, &req.external_id).await?
    {
        if existing.enrol_fingerprint == print {
            let member = to_proto(c, &existing).await?;
            return Ok(pb::EnrollMemberResponse {
                member: Some(member),
                created: false,
            });
        }
        return Err(already(Key::ExternalId));
    }
    let key = members::taken_key(c, &req.program_id, "", Some(&req.external_id), profile).await?;
    Err(already(key.unwrap_or(Key::ExternalId)))
}

async fn write_enrolment(
    tx: &mut Tx,
    m: &MemberRecord,
    tags: &[String],
    multiplier_bp: i64,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    members::insert(tx, m).await?;
    for t in tags {
        members::add_tag(tx, &m.program_id, &m.member_id, t).await?;
    }
    activity::record_tier_change(tx, &m.member_id, "", &m.tier_code, "enrolment", 0, at).await?;
    let enrolled = event(
        &m.program_id,
        &m.member_id,
        Payload::MemberEnrolled(MemberEnrolled {
            enrolment_channel: m.enrolment_channel.clone(),
            tier_code: m.tier_code.clone(),
            locale: m.profile.locale.clone(),
            contact_hashes: contact_hashes(&m.program_id, &m.profile),
        }),
        at,
    );
    let tier = event(
        &m.program_id,
        &m.member_id,
        Payload::TierChanged(TierChanged {
            from_tier: String::new(),
            to_tier: m.tier_code.clone(),
            reason: "enrolment".into(),
            points_multiplier_bp: multiplier_bp,
        }),
        at,
    );
    outbox::append(tx, &enrolled).await?;
    outbox::append(tx, &tier).await?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn get(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::GetMemberRequest,
) -> Result<pb::GetMemberResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    required("member_id", &req.member_id)?;
    p.authorize_member(&req.program_id, &req.member_id)?;
    let mut c = rt.db.pool().acquire().await?;
    let (m, tags) = members::require_tagged(&mut c, &req.program_id, &req.member_id).await?;
    Ok(pb::GetMemberResponse {
        member: Some(m.to_proto(tags)),
    })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id))]
pub async fn lookup(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::LookupMemberRequest,
) -> Result<pb::LookupMemberResponse, ServiceError> {
    use pb::lookup_member_request::Key as K;
    required("program_id", &req.program_id)?;
    p.require_role(&req.program_id, STAFF_OR_BACKEND)?;
    let (key, value) = match &req.key {
        Some(K::Phone(s)) => (
            Key::Phone,
            Phone::parse(s)
                .map_err(|e| ServiceError::invalid("phone", e))?
                .as_str()
                .to_owned(),
        ),
        Some(K::Email(s)) => (
            Key::Email,
            Email::parse(s)
                .map_err(|e| ServiceError::invalid("email", e))?
                .as_str()
                .to_owned(),
        ),
        Some(K::ExternalId(s)) if !s.is_empty() => (Key::ExternalId, s.clone()),
        Some(K::CardNumber(s)) if !s.is_empty() => (Key::CardNumber, s.trim().to_uppercase()),
        _ => {
            return Err(ServiceError::invalid(
                "key",
                "give one of phone, email, external_id, card_number",
            ));
        }
    };
    let mut c = rt.db.pool().acquire().await?;
    let (m, tags) = members::find_tagged(&mut c, &req.program_id, key, &value)
        .await?
        .ok_or_else(|| ServiceError::not_found("member", key.field()))?;
    Ok(pb::LookupMemberResponse {
        member: Some(m.to_proto(tags)),
    })
}

fn check_writable(m: &MemberRecord) -> Result<(), ServiceError> {
    match m.status.as_str() {
        "closed" | "erased" => Err(ServiceError::precondition(format!(
            "the member is {}",
            m.status
        ))),
        _ => Ok(()),
    }
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn update(
    rt: &ServiceRuntime,
    caller: &Principal,
    req: pb::UpdateMemberRequest,
) -> Result<pb::UpdateMemberResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    required("member_id", &req.member_id)?;
    self_or(caller, &req.program_id, &req.member_id, WRITERS)?;
    let program = {
        let mut c = rt.db.pool().acquire().await?;
        programs::require(&mut c, &req.program_id).await?
    };
    let at = now(rt);
    let (program_id, key) = (req.program_id.clone(), req.idempotency_key.clone());
    let r = req.clone();
    write_once(rt, "UpdateMember", &program_id, &key, &req, move |tx| {
        Box::pin(async move { update_in(tx, &program, &r, at).await })
    })
    .await
}

/// The member's row is locked first, so the version read is the one the
/// update checks: no retry loop, and the whole change is one transaction.
async fn update_in(
    tx: &mut Tx,
    program: &ProgramRecord,
    req: &pb::UpdateMemberRequest,
    at: DateTime<Utc>,
) -> Result<pb::UpdateMemberResponse, ServiceError> {
    let mask = req.update_mask.clone().map(|m| m.paths).unwrap_or_default();
    let patch = req.profile.clone().unwrap_or_default();
    members::lock(tx, &req.member_id).await?;
    let (m, tags) = members::require_tagged(tx, &req.program_id, &req.member_id).await?;
    check_writable(&m)?;
    check_version(&m, req.expected_version)?;
    let mut v = Violations::new();
    let (profile, changed) =
        apply_mask(&m.profile, &patch, &mask, program.tz.local_date(at), &mut v);
    v.finish()?;
    if changed.is_empty() {
        return Ok(pb::UpdateMemberResponse {
            member: Some(m.to_proto(tags)),
        });
    }
    if let Some(key) = members::taken_key(tx, &req.program_id, &m.member_id, None, &profile).await?
    {
        return Err(already(key));
    }
    match members::update_profile(tx, &m, &profile, at).await {
        Ok(true) => {}
        Ok(false) => return Err(changed_meanwhile()),
        // another member took the key after our check
        Err(e) if is_unique_violation(&e) => return Err(already(violated_key(&e))),
        Err(e) => return Err(e.into()),
    }
    let (updated, tags) = members::require_tagged(tx, &req.program_id, &req.member_id).await?;
    let env = event(
        &m.program_id,
        &m.member_id,
        Payload::MemberUpdated(MemberUpdated {
            changed_fields: changed,
            version: updated.version,
            status: String::new(),
        }),
        at,
    );
    outbox::append(tx, &env).await?;
    Ok(pb::UpdateMemberResponse {
        member: Some(updated.to_proto(tags)),
    })
}

fn check_version(m: &MemberRecord, expected: i64) -> Result<(), ServiceError> {
    if expected != 0 && expected != m.version {
        return Err(ServiceError::Conflict(format!(
            "the member has version {}, not {expected}",
            m.version
        )));
    }
    Ok(())
}

fn changed_meanwhile() -> ServiceError {
    ServiceError::Conflict("the member changed meanwhile; read it again".into())
}

/// The key a unique violation is about, from the constraint the engine
/// names (`members_phone` / `members.phone`).
fn violated_key(e: &sqlx::Error) -> Key {
    let text = e.to_string();
    [Key::Email, Key::CardNumber, Key::ExternalId]
        .into_iter()
        .find(|k| text.contains(k.field()))
        .unwrap_or(Key::Phone)
}

/// Moves a member from one of `from` to `to` (same status again: no
/// change), under the member's row lock.
async fn change_status(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    expected_version: i64,
    from: &[&str],
    to: &str,
    at: DateTime<Utc>,
) -> Result<pb::Member, ServiceError> {
    members::lock(tx, member_id).await?;
    let (m, tags) = members::require_tagged(tx, program_id, member_id).await?;
    check_version(&m, expected_version)?;
    if m.status == to {
        return Ok(m.to_proto(tags));
    }
    if !from.contains(&m.status.as_str()) {
        return Err(ServiceError::precondition(format!(
            "a {} member cannot become {to}",
            m.status
        )));
    }
    if !members::set_status(tx, member_id, m.version, to, at).await? {
        return Err(changed_meanwhile());
    }
    let env = event(
        program_id,
        member_id,
        Payload::MemberUpdated(MemberUpdated {
            changed_fields: vec!["status".into()],
            version: m.version + 1,
            status: to.into(),
        }),
        at,
    );
    outbox::append(tx, &env).await?;
    let (updated, tags) = members::require_tagged(tx, program_id, member_id).await?;
    Ok(updated.to_proto(tags))
}

/// A status change: the method that asks for it (the idempotency scope),
/// who may ask, the statuses it leaves and the one it reaches.
struct Transition {
    method: &'static str,
    /// The member itself may ask too (closing its own membership).
    by_member: bool,
    from: &'static [&'static str],
    to: &'static str,
}

const SUSPEND: Transition = Transition {
    method: "SuspendMember",
    by_member: false,
    from: &["active"],
    to: "suspended",
};
const REINSTATE: Transition = Transition {
    method: "ReinstateMember",
    by_member: false,
    from: &["suspended"],
    to: "active",
};
const CLOSE: Transition = Transition {
    method: "CloseMember",
    by_member: true,
    from: &["active", "suspended"],
    to: "closed",
};

/// Which member a status change is for, as the request names it.
struct Target {
    program_id: String,
    member_id: String,
    expected_version: i64,
    idempotency_key: String,
}

/// Runs a status change once (per idempotency key) in one transaction and
/// answers the member as `answer` wraps it.
async fn transition<Req, Resp>(
    rt: &ServiceRuntime,
    p: &Principal,
    t: &'static Transition,
    req: &Req,
    target: Target,
    answer: fn(pb::Member) -> Resp,
) -> Result<Resp, ServiceError>
where
    Req: prost::Message,
    Resp: prost::Message + Default + 'static,
{
    required("member_id", &target.member_id)?;
    if t.by_member {
        self_or(p, &target.program_id, &target.member_id, SUPPORT)?;
    } else {
        p.require_role(&target.program_id, SUPPORT)?;
    }
    let at = now(rt);
    let (program_id, key) = (target.program_id.clone(), target.idempotency_key.clone());
    write_once(rt, t.method, &program_id, &key, req, move |tx| {
        Box::pin(async move {
            let m = change_status(
                tx,
                &target.program_id,
                &target.member_id,
                target.expected_version,
                t.from,
                t.to,
                at,
            )
            .await?;
            Ok(answer(m))
        })
    })
    .await
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn suspend(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::SuspendMemberRequest,
) -> Result<pb::SuspendMemberResponse, ServiceError> {
    let target = Target {
        program_id: req.program_id.clone(),
        member_id: req.member_id.clone(),
        expected_version: req.expected_version,
        idempotency_key: req.idempotency_key.clone(),
    };
    transition(rt, p, &SUSPEND, &req, target, |m| {
        pb::SuspendMemberResponse { member: Some(m) }
    })
    .await
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn reinstate(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ReinstateMemberRequest,
) -> Result<pb::ReinstateMemberResponse, ServiceError> {
    let target = Target {
        program_id: req.program_id.clone(),
        member_id: req.member_id.clone(),
        expected_version: req.expected_version,
        idempotency_key: req.idempotency_key.clone(),
    };
    transition(rt, p, &REINSTATE, &req, target, |m| {
        pb::ReinstateMemberResponse { member: Some(m) }
    })
    .await
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn close(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::CloseMemberRequest,
) -> Result<pb::CloseMemberResponse, ServiceError> {
    let target = Target {
        program_id: req.program_id.clone(),
        member_id: req.member_id.clone(),
        expected_version: req.expected_version,
        idempotency_key: req.idempotency_key.clone(),
    };
    transition(rt, p, &CLOSE, &req, target, |m| pb::CloseMemberResponse {
        member: Some(m),
    })
    .await
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id))]
pub async fn list(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::ListMembersRequest,
) -> Result<pb::ListMembersResponse, ServiceError> {
    required("program_id", &req.program_id)?;
    p.require_role(&req.program_id, STAFF)?;
    let status = match pb::MemberStatus::try_from(req.status) {
        Ok(pb::MemberStatus::Unspecified) => None,
        Ok(pb::MemberStatus::Active) => Some("active"),
        Ok(pb::MemberStatus::Suspended) => Some("suspended"),
        Ok(pb::MemberStatus::Closed) => Some("closed"),
        Ok(pb::MemberStatus::Erased) => Some("erased"),
        Err(_) => return Err(ServiceError::invalid("status", "unknown status")),
    };
    let filter = members::ListFilter {
        status,
        tier_code: (!req.tier_code.is_empty()).then(|| req.tier_code.clone()),
        tag: (!req.tag.is_empty()).then(|| req.tag.clone()),
        name_prefix: (!req.name_prefix.is_empty()).then(|| req.name_prefix.clone()),
        name_contains: (!req.name_contains.is_empty()).then(|| req.name_contains.clone()),
    };
    let contains_len = req.name_contains.chars().count();
    if !req.name_contains.is_empty() && !(2..=100).contains(&contains_len) {
        return Err(ServiceError::invalid(
            "name_contains",
            "must have 2 to 100 characters",
        ));
    }
    let query = format!(
        "members|{}|{:?}|{}|{}|{}|{}",
        req.program_id, status, req.tier_code, req.tag, req.name_prefix, req.name_contains
    );
    let pg = page(req.page.as_ref(), MEMBER_PAGES, &query)?;
    let mut c = rt.db.pool().acquire().await?;
    if !req.tier_code.is_empty() {
        let program = programs::require(&mut c, &req.program_id).await?;
        if program.rules.level_of(&req.tier_code).is_none() {
            return Err(ServiceError::invalid(
                "tier_code",
                format!("the program has no tier {:?}", req.tier_code),
            ));
        }
    }
    let rows = members::list(
        &mut c,
        rt.db.engine(),
        &req.program_id,
        &filter,
        pg.after.as_deref().unwrap_or(""),
        pg.fetch_limit(),
    )
    .await?;
    let (rows, next) = paging::finish(rows, &pg, &query, |(m, _)| m.member_id.clone());
    Ok(pb::ListMembersResponse {
        members: rows.into_iter().map(|(m, tags)| m.to_proto(tags)).collect(),
        page: page_response(next),
    })
}

async fn change_tags(
    rt: &ServiceRuntime,
    p: &Principal,
    program_id: &str,
    member_id: &str,
    tags: &[String],
    add: bool,
) -> Result<Vec<String>, ServiceError> {
    required("member_id", member_id)?;
    p.require_role(program_id, WRITERS)?;
    let mut v = Violations::new();
    if tags.is_empty() {
        v.add("tags", "name at least one tag");
    }
    check_tags("tags", tags, &mut v);
    v.finish()?;
    let at = now(rt);
    let mut tx = rt.db.begin().await?;
    let m = members::require(&mut tx, program_id, member_id).await?;
    check_writable(&m)?;
    let mut changed = Vec::new();
    for t in tags {
        let done = if add {
            members::add_tag(&mut tx, program_id, member_id, t).await?
        } else {
            members::remove_tag(&mut tx, member_id, t).await?
        };
        if done && !changed.contains(t) {
            changed.push(t.clone());
        }
    }
    if !changed.is_empty() {
        let env = member_updated(&m, "tags", &changed, at);
        outbox::append(&mut tx, &env).await?;
    }
    let now_tags = members::tags(&mut tx, member_id).await?;
    tx.commit().await?;
    rt.outbox.notify();
    Ok(now_tags)
}

/// MemberUpdated for a change of `field` (tags, groups) that touched
/// `items`: the field itself, then `field.<item>` per item changed, the
/// path form UpdateMember's masks use for single preferences. Tags and
/// groups are not profile fields: the version stays.
pub fn member_updated(
    m: &MemberRecord,
    field: &str,
    items: &[String],
    at: DateTime<Utc>,
) -> loyalty_proto::events::EventEnvelope {
    let changed_fields = std::iter::once(field.to_owned())
        .chain(items.iter().map(|i| format!("{field}.{i}")))
        .collect();
    event(
        &m.program_id,
        &m.member_id,
        Payload::MemberUpdated(MemberUpdated {
            changed_fields,
            version: m.version,
            status: String::new(),
        }),
        at,
    )
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn add_tags(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::AddMemberTagsRequest,
) -> Result<pb::AddMemberTagsResponse, ServiceError> {
    let tags = change_tags(rt, p, &req.program_id, &req.member_id, &req.tags, true).await?;
    Ok(pb::AddMemberTagsResponse { tags })
}

#[tracing::instrument(skip_all, fields(program_id = %req.program_id, member_id = %req.member_id))]
pub async fn remove_tags(
    rt: &ServiceRuntime,
    p: &Principal,
    req: pb::RemoveMemberTagsRequest,
) -> Result<pb::RemoveMemberTagsResponse, ServiceError> {
    let tags = change_tags(rt, p, &req.program_id, &req.member_id, &req.tags, false).await?;
    Ok(pb::RemoveMemberTagsResponse { tags })
}
