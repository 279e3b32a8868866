//! Small helpers the engagement areas share: ids, instants, validation of
//! ids and paging (the rules of the whole service, from `validation`),
//! emitting events, naming the caller.

use loyalty_common::ServiceError;
use loyalty_common::Violations;
use loyalty_common::auth::Principal;
use loyalty_common::db::Tx;
use loyalty_common::events::{new_envelope, outbox};
use loyalty_common::paging::{self, Page};
use loyalty_common::runtime::ServiceRuntime;
use loyalty_proto::common::{PageRequest, PageResponse};
use loyalty_proto::events::event_envelope::Payload;
use prost_types::Timestamp;

use crate::validation::PAGE_LIMITS;
pub(crate) use crate::validation::check_id;

/// Producer name on every event.
pub const PRODUCER: &str = "rewards";

/// A new time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now by the runtime's clock (movable in tests), in stored form
/// (microseconds since the epoch).
pub fn now_micros(rt: &ServiceRuntime) -> i64 {
    rt.clock.now().timestamp_micros()
}

/// A stored instant as a protobuf timestamp.
pub fn ts(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
    }
}

/// An optional stored instant as a protobuf timestamp.
pub fn opt_ts(micros: Option<i64>) -> Option<Timestamp> {
    micros.map(ts)
}

/// A protobuf timestamp in stored form; `None` when unset.
pub fn from_ts(v: &mut Violations, field: &str, t: Option<&Timestamp>) -> Option<i64> {
    let t = t?;
    if !(0..1_000_000_000).contains(&t.nanos) {
        v.add(field, "nanos must be between 0 and 999999999");
        return None;
    }
    let micros = t
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1_000)));
    if micros.is_none() {
        v.add(field, "is out of range");
    }
    micros
}

/// Checks a required display text (name): 1..=200 characters.
pub fn check_text(v: &mut Violations, field: &str, value: &str, required: bool) {
    let n = value.chars().count();
    if required && value.trim().is_empty() {
        v.add(field, "is required");
    } else if n > 500 {
        v.add(field, "must be at most 500 characters");
    }
}

/// The page a list request asks for.
pub fn page(req: Option<&PageRequest>, fingerprint: &str) -> Result<Page, ServiceError> {
    let (size, token) = req.map_or((0, ""), |p| (p.page_size, p.page_token.as_str()));
    paging::parse(size, token, PAGE_LIMITS, fingerprint)
}

/// The paging part of an answer (the field is optional in prost).
pub fn page_response(next_page_token: String) -> PageResponse {
    PageResponse { next_page_token }
}

/// Appends an event to the outbox in the caller's transaction.
pub async fn emit(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    payload: Payload,
) -> Result<(), ServiceError> {
    let env = new_envelope(PRODUCER, program_id, member_id, payload);
    outbox::append(tx, &env).await?;
    Ok(())
}

/// A stable name of the caller, for per-caller limits.
pub fn caller_key(p: &Principal) -> String {
    match p {
        Principal::Member { member_id, .. } => format!("member:{member_id}"),
        Principal::Staff { subject, .. } => format!("staff:{subject}"),
        Principal::System { key_id, .. } => format!("key:{key_id}"),
    }
}

/// True for staff or backend principals (not members).
pub fn is_member(p: &Principal) -> bool {
    matches!(p, Principal::Member { .. })
}
