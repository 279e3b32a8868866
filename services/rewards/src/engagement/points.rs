//! The one place the engagement areas move points: through the ledger API
//! of the points core (`store::ledger`), always inside the caller's
//! transaction, so that the points and the area's own change (an order, a
//! transfer, a qualified referral) commit together or not at all.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use loyalty_common::events::{new_envelope, outbox};
use loyalty_proto::events::PointsRedeemed;
use loyalty_proto::events::event_envelope::Payload;

use crate::domain::expiry::Clawback;
use crate::domain::ledger_refund::plan_clawback;
use crate::store::ledger::{self, Cause, Deltas, EntryId, EntryKind, Posting};
use crate::store::ledger_policy;

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

/// Locks the ledger lanes of `members` in the one global order, before a
/// transaction moves points of more than one member (a referral rewards
/// both sides): two such transactions then never wait on each other in a
/// cycle, whatever order they name the members in.
pub async fn lock_members(
    tx: &mut Tx,
    program_id: &str,
    members: &[&str],
) -> Result<(), ServiceError> {
    crate::store::ledger_lanes::lock_lanes(tx, members.iter().map(|m| (program_id, *m))).await?;
    Ok(())
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

/// What a clawback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clawed {
    pub entry_id: String,
    /// Taken from the balance (below zero when the policy allows a debt).
    pub taken: i64,
    /// Not taken: already spent, and the policy writes such points off.
    pub written_off: i64,
}

/// Takes back `points` credited earlier whose reason was undone, the way a
/// refund takes back a purchase's points: from the available lots, the
/// rest by the program's clawback policy (written off, or a negative
/// balance). One reversing entry, announced as PointsRedeemed when points
/// moved.
pub async fn claw_back(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    points: i64,
    reference: &str,
    reason: &str,
) -> Result<Clawed, ServiceError> {
    let mut head = ledger::lock_lane(tx, program_id, member_id).await?;
    let policy = ledger_policy::load(&mut **tx, program_id).await?;
    let available = ledger::balance_row(tx, program_id, member_id)
        .await?
        .available;
    let claw = plan_clawback(
        points,
        0,
        available,
        policy.clawback == Clawback::NegativeBalance,
    );
    let entry_id = ledger::new_id();
    if claw.from_available > 0 {
        ledger::consume_lots(tx, program_id, member_id, &entry_id, claw.from_available).await?;
    }
    let taken = claw.from_available + claw.debt;
    let cause = Cause {
        reason: Some(if claw.written_off > 0 {
            format!("{reason}; {} already spent, written off", claw.written_off)
        } else {
            reason.to_owned()
        }),
        reference: Some(reference.to_owned()),
        ..Cause::default()
    };
    ledger::append_entry(
        tx,
        &mut head,
        &entry_id,
        member_id,
        EntryKind::Reverse,
        &Deltas {
            available: -taken,
            pending: 0,
            lifetime: -points,
        },
        &cause,
        None,
    )
    .await?;
    if taken > 0 {
        let event = new_envelope(
            ledger::PRODUCER,
            program_id,
            member_id,
            Payload::PointsRedeemed(PointsRedeemed {
                entry_id: entry_id.clone(),
                points: taken,
                reference: cause.summary(),
                entry_kind: EntryKind::Reverse.as_str().to_owned(),
            }),
        );
        outbox::append(tx, &event).await?;
    }
    Ok(Clawed {
        entry_id,
        taken,
        written_off: claw.written_off,
    })
}
