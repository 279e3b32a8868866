//! Object-level authorisation at the edge, as defence in depth (services
//! check again): every `member_id` a member's request carries, in path,
//! query (even one the transcoder ignores) or body, at any depth, must be
//! the member's own; every
//! `program_id` must be the caller's program; a member writes only through
//! routes addressed to a member (`…/members/{member_id}…`), never through
//! program-level ones (recording purchases, issuing coupons); program-level
//! writes need a program_admin (staff) or a backend key; analysts only
//! read. Refusals are
//! the one PERMISSION_DENIED that never says whether the object exists.
//! The page-size cap is enforced in the same walk.

use loyalty_common::auth::{Principal, Role};
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor, MethodDescriptor, Value};

use crate::error::ApiError;

/// What the gateway knows of an RPC for authorisation.
#[derive(Debug, Clone, Copy)]
pub struct RpcShape {
    /// The request carries a member id somewhere: the RPC acts on one member.
    pub member_scoped: bool,
    /// The RPC only reads (GET).
    pub read: bool,
    /// The route addresses one member's resource (binds `member_id` in its path).
    pub member_path: bool,
}

impl RpcShape {
    pub fn of(method: &MethodDescriptor, read: bool, member_path: bool) -> Self {
        Self {
            member_scoped: has_member_field(&method.input(), 0),
            read,
            member_path,
        }
    }
}

/// Whether a route template binds a member id.
pub fn binds_member(template: &crate::rules::Template) -> bool {
    template
        .vars
        .iter()
        .any(|v| v.field == "member_id" || v.field.ends_with(".member_id"))
}

fn has_member_field(desc: &MessageDescriptor, depth: usize) -> bool {
    if depth > 8 {
        return false;
    }
    desc.fields().any(|f| {
        matches!(f.name(), "member_id" | "member_ids")
            || matches!(f.kind(), Kind::Message(m) if has_member_field(&m, depth + 1))
    })
}

/// Checks the caller against the RPC and every id in the request.
pub fn check(
    principal: &Principal,
    shape: RpcShape,
    request: &DynamicMessage,
    page_size_max: i64,
) -> Result<(), ApiError> {
    match principal {
        Principal::Member { .. } if !(shape.read || shape.member_scoped && shape.member_path) => {
            return Err(ApiError::denied());
        }
        Principal::Staff { roles, .. } => {
            let admin = roles.contains(&Role::ProgramAdmin);
            let writer = admin || roles.contains(&Role::SupportAgent);
            if !shape.read && (!writer || (!shape.member_scoped && !admin)) {
                return Err(ApiError::denied());
            }
        }
        _ => {}
    }
    walk(principal, request, "", page_size_max, 0)
}

fn walk(
    principal: &Principal,
    msg: &DynamicMessage,
    prefix: &str,
    page_size_max: i64,
    depth: usize,
) -> Result<(), ApiError> {
    if depth > 32 {
        return Err(ApiError::invalid(prefix, "nested too deeply"));
    }
    for (field, value) in msg.fields() {
        let path = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        match (field.name(), value) {
            ("member_id", Value::String(id)) => own_member(principal, id)?,
            ("member_ids", Value::List(ids)) => {
                for id in ids {
                    if let Value::String(id) = id {
                        own_member(principal, id)?;
                    }
                }
            }
            ("program_id", Value::String(p)) if !p.is_empty() && p != principal.program_id() => {
                return Err(ApiError::denied());
            }
            ("page_size", Value::I32(n)) if i64::from(*n) > page_size_max => {
                return Err(ApiError::invalid(
                    path,
                    format!("must be at most {page_size_max}"),
                ));
            }
            ("page_size", Value::I64(n)) if *n > page_size_max => {
                return Err(ApiError::invalid(
                    path,
                    format!("must be at most {page_size_max}"),
                ));
            }
            (_, Value::Message(m)) => walk(principal, m, &path, page_size_max, depth + 1)?,
            (_, Value::List(items)) => {
                for item in items {
                    if let Value::Message(m) = item {
                        walk(principal, m, &path, page_size_max, depth + 1)?;
                    }
                }
            }
            (_, Value::Map(items)) => {
                for item in items.values() {
                    if let Value::Message(m) = item {
                        walk(principal, m, &path, page_size_max, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The same id rules over the raw query string, before transcoding: a
/// query parameter the transcoder would not apply (one naming a field the
/// path binds, or any on a route whose body is the whole message) is still
/// an id the caller sent, and another member's id is refused, not dropped.
pub fn check_query(principal: &Principal, query: Option<&str>) -> Result<(), ApiError> {
    let Some(query) = query else { return Ok(()) };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // malformed escapes are the transcoder's 400, not ours
        let (Some(key), Some(value)) = (
            crate::rules::percent_decode(k, true),
            crate::rules::percent_decode(v, true),
        ) else {
            continue;
        };
        match key.rsplit('.').next().unwrap_or_default() {
            "member_id" | "memberId" | "member_ids" | "memberIds" => own_member(principal, &value)?,
            "program_id" | "programId" if !value.is_empty() && value != principal.program_id() => {
                return Err(ApiError::denied());
            }
            _ => {}
        }
    }
    Ok(())
}

fn own_member(principal: &Principal, id: &str) -> Result<(), ApiError> {
    match principal {
        Principal::Member { member_id, .. } if !id.is_empty() && id != member_id => {
            Err(ApiError::denied())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_ref(program: &str, member: &str) -> DynamicMessage {
        let desc = loyalty_proto::descriptor_pool()
            .get_message_by_name("loyalty.common.v1.MemberRef")
            .unwrap();
        let mut m = DynamicMessage::new(desc);
        m.set_field_by_name("program_id", Value::String(program.into()));
        m.set_field_by_name("member_id", Value::String(member.into()));
        m
    }

    fn me() -> Principal {
        Principal::Member {
            program_id: "p1".into(),
            member_id: "m1".into(),
        }
    }

    #[test]
    fn a_member_touches_only_its_own_ids() {
        let shape = RpcShape {
            member_scoped: true,
            read: true,
            member_path: true,
        };
        assert!(check(&me(), shape, &member_ref("p1", "m1"), 100).is_ok());
        let e = check(&me(), shape, &member_ref("p1", "m2"), 100).unwrap_err();
        assert_eq!(e.code, tonic::Code::PermissionDenied);
        assert!(check(&me(), shape, &member_ref("p2", "m1"), 100).is_err());
        // staff of another program are refused too
        let staff = Principal::Staff {
            program_id: "p2".into(),
            subject: "s".into(),
            roles: vec![Role::ProgramAdmin],
        };
        assert!(check(&staff, shape, &member_ref("p1", "m1"), 100).is_err());
    }

    #[test]
    fn roles_gate_writes() {
        let program_write = RpcShape {
            member_scoped: false,
            read: false,
            member_path: false,
        };
        let m = member_ref("p1", "");
        assert!(check(&me(), program_write, &m, 100).is_err());
        let staff = |roles| Principal::Staff {
            program_id: "p1".into(),
            subject: "s".into(),
            roles,
        };
        assert!(check(&staff(vec![Role::ProgramAdmin]), program_write, &m, 100).is_ok());
        assert!(check(&staff(vec![Role::SupportAgent]), program_write, &m, 100).is_err());
        let member_write = RpcShape {
            member_scoped: true,
            read: false,
            member_path: true,
        };
        assert!(check(&staff(vec![Role::SupportAgent]), member_write, &m, 100).is_ok());
        assert!(check(&me(), member_write, &member_ref("p1", "m1"), 100).is_ok());
        // a member never writes through a program-level route (purchases, coupon issue)
        let program_route = RpcShape {
            member_path: false,
            ..member_write
        };
        assert!(check(&me(), program_route, &member_ref("p1", "m1"), 100).is_err());
        assert!(check(&staff(vec![Role::Analyst]), member_write, &m, 100).is_err());
    }

    #[test]
    fn ids_in_the_query_are_checked_in_every_spelling() {
        assert!(check_query(&me(), None).is_ok());
        assert!(check_query(&me(), Some("member_id=m1&page.page_size=3")).is_ok());
        for q in [
            "member_id=m2",
            "memberId=m2",
            "filter.member_id=m2",
            "member_ids=m1&member_ids=m2",
            "member%5Fid=m2",
            "program_id=p2",
        ] {
            let e = check_query(&me(), Some(q)).unwrap_err();
            assert_eq!(e.code, tonic::Code::PermissionDenied, "{q}");
        }
        let staff = Principal::Staff {
            program_id: "p1".into(),
            subject: "s".into(),
            roles: vec![Role::Analyst],
        };
        assert!(check_query(&staff, Some("member_id=m2")).is_ok());
        assert!(check_query(&staff, Some("programId=p2")).is_err());
    }

    #[test]
    fn page_size_is_capped() {
        let desc = loyalty_proto::descriptor_pool()
            .get_message_by_name("loyalty.common.v1.PageRequest")
            .unwrap();
        let mut m = DynamicMessage::new(desc);
        m.set_field_by_name("page_size", Value::I32(500));
        let shape = RpcShape {
            member_scoped: true,
            read: true,
            member_path: true,
        };
        let e = check(&me(), shape, &m, 100).unwrap_err();
        assert_eq!(e.violations[0].0, "page_size");
    }
}
