//! The one place the engagement areas move points: through the ledger API
//! of the points core (`store::ledger`), always inside the caller's
//! transaction, so that the points and the area's own change (an order, a
//! transfer, a qualified referral) commit together or not at all.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::db::Tx;

use crate::store::ledger::{self, Cause, EntryId, EntryKind, Posting};

/// Why points move, which decides the entry kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Points spent on a catalog item.
    Redemption,
    /// Points converted to or from a partner program.
    PartnerExchange,
    /// Points rewarding a qualified referral.
    Referral,
}

impl Purpose {
    fn kind(self) -> EntryKind {
        match self {
            Self::Redemption => EntryKind::Redeem,
            Self::PartnerExchange => EntryKind::Exchange,
            Self::Referral => EntryKind::Earn,
        }
    }
}

fn posting(
    program_id: &str,
    member_id: &str,
    purpose: Purpose,
    points: i64,
    reference: &str,
) -> Posting {
    Posting {
        program_id: program_id.to_owned(),
        member_id: member_id.to_owned(),
        kind: purpose.kind(),
        points,
        cause: Cause {
            reference: Some(reference.to_owned()),
            ..Cause::default()
        },
    }
}

/// Debits available points; INSUFFICIENT_BALANCE when there are not
/// enough. Returns the ledger entry id.
pub async fn debit(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    purpose: Purpose,
    points: i64,
    reference: &str,
) -> Result<String, ServiceError> {
    let outcome = ledger::debit(
        tx,
        &posting(program_id, member_id, purpose, points, reference),
    )
    .await?;
    Ok(outcome.entry_id.0)
}

/// Returns a debit's points to the lots they came from (once).
pub async fn reverse(
    tx: &mut Tx,
    program_id: &str,
    entry_id: &str,
    reason: &str,
) -> Result<String, ServiceError> {
    let entry =
        ledger::reverse_debit(tx, program_id, &EntryId(entry_id.to_owned()), reason).await?;
    Ok(entry.0)
}

/// Credits points available at once, expiring by the program's policy.
pub async fn credit(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    purpose: Purpose,
    points: i64,
    reference: &str,
    now: DateTime<Utc>,
) -> Result<String, ServiceError> {
    // expiring by the program's policy, like any other credit
    let lot = ledger::immediate_lot_terms(tx, program_id, now).await?;
    let entry = ledger::credit(
        tx,
        &posting(program_id, member_id, purpose, points, reference),
        lot,
    )
    .await?;
    Ok(entry.0)
}
