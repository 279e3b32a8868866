//! The ledger API every part of the rewards service posts points through,
//! inside its own transaction: [`credit`], [`debit`], [`reverse_debit`].
//!
//! Each posting appends one hash-chained entry, moves lots and the member's
//! balance, and appends its event (PointsEarned / PointsRedeemed) to the
//! outbox, all in the caller's transaction; callers commit and then call
//! `rt.outbox.notify()`.
//!
//! Concurrency: every posting first locks its program's chain head (one
//! row), then touches balance rows. The head lock orders all writers of a
//! program, so balance updates never deadlock and the chain has no gaps; a
//! debit is in addition a conditional update (`available >= points`), so a
//! balance can never be overdrawn whatever the isolation. On SQLite writers
//! are serialised by the database anyway.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::db::{Tx, now_micros};
use loyalty_common::events::{new_envelope, outbox};
use loyalty_proto::common::ErrorReason;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{PointsEarned, PointsRedeemed};

pub(crate) use crate::domain::expiry::LotTerms;
#[allow(unused_imports)] // RuleRef: part of the ledger API for other modules
pub(crate) use crate::domain::ledger::{Cause, EntryKind, Posting, RuleRef};
use crate::domain::ledger::{ChainedEntry, GENESIS_HASH};

/// The producer name on every event of this service.
pub(crate) const PRODUCER: &str = "rewards";

/// Id of a ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct EntryId(pub String);

/// Lot terms of points available at once under the program's policy
/// (expiring by it): what badge, referral and partner credits use.
pub(crate) async fn immediate_lot_terms(
    tx: &mut Tx,
    program_id: &str,
    now: DateTime<Utc>,
) -> Result<LotTerms, ServiceError> {
    Ok(super::ledger_policy::load(&mut **tx, program_id)
        .await?
        .immediate_lot(now))
}

/// Points taken from (positive) or returned to (negative) one lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LotUse {
    pub lot_id: String,
    pub points: i64,
}

/// What a debit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DebitOutcome {
    pub entry_id: EntryId,
    /// Lots used, soonest-expiring first.
    pub lots: Vec<LotUse>,
}

/// The refusal of a debit that would overdraw the balance.
pub(crate) fn insufficient(available: i64, wanted: i64) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: ErrorReason::InsufficientBalance,
        message: format!("not enough points: {available} available, {wanted} needed"),
    }
}

fn micros(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_micros())
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn check_positive(points: i64) -> Result<(), ServiceError> {
    if points > 0 {
        Ok(())
    } else {
        Err(ServiceError::invalid("points", "must be greater than 0"))
    }
}

/// The program's chain head, locked for the rest of the transaction.
#[derive(Debug)]
pub(crate) struct Head {
    program_id: String,
    seq: i64,
    hash: String,
}

/// Locks the program's chain head (creating it on first use). Every ledger
/// write takes this lock first.
pub(crate) async fn lock_head(tx: &mut Tx, program_id: &str) -> Result<Head, ServiceError> {
    // one statement: creates the head on first use, else locks its row
    let (seq, hash): (i64, String) = sqlx::query_as(
        "INSERT INTO ledger_heads (program_id, seq, hash) VALUES ($1, 0, $2) \
         ON CONFLICT (program_id) DO UPDATE SET seq = ledger_heads.seq RETURNING seq, hash",
    )
    .bind(program_id)
    .bind(GENESIS_HASH)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Head {
        program_id: program_id.to_owned(),
        seq,
        hash,
    })
}

/// The stored balance row of a member (created at zero on first use).
pub(crate) async fn balance_row(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<crate::domain::ledger::BalanceRow, ServiceError> {
    let (available, pending, lifetime_earned): (i64, i64, i64) = sqlx::query_as(
        "INSERT INTO balances (program_id, member_id, available, pending, lifetime_earned) \
         VALUES ($1, $2, 0, 0, 0) ON CONFLICT (program_id, member_id) \
         DO UPDATE SET available = balances.available \
         RETURNING available, pending, lifetime_earned",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(crate::domain::ledger::BalanceRow {
        available,
        pending,
        lifetime_earned,
    })
}

/// Changes of one entry.
#[derive(Debug, Default)]
pub(crate) struct Deltas {
    pub available: i64,
    pub pending: i64,
    pub lifetime: i64,
}

/// Appends an entry to the chain (the head must be locked) and applies its
/// deltas to the member's balance.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn append_entry(
    tx: &mut Tx,
    head: &mut Head,
    entry_id: &str,
    member_id: &str,
    kind: EntryKind,
    deltas: &Deltas,
    cause: &Cause,
    reverses: Option<&str>,
) -> Result<(), ServiceError> {
    chain_entry(tx, head, entry_id, member_id, kind, deltas, cause, reverses).await?;
    apply_deltas(tx, &head.program_id, member_id, deltas).await
}

/// Moves a member's balance by `deltas`.
pub(crate) async fn apply_deltas(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    deltas: &Deltas,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE balances SET available = available + $1, pending = pending + $2, \
         lifetime_earned = lifetime_earned + $3 WHERE program_id = $4 AND member_id = $5",
    )
    .bind(deltas.available)
    .bind(deltas.pending)
    .bind(deltas.lifetime)
    .bind(program_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends an entry to the chain (the head must be locked); the balance is
/// the caller's business.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn chain_entry(
    tx: &mut Tx,
    head: &mut Head,
    entry_id: &str,
    member_id: &str,
    kind: EntryKind,
    deltas: &Deltas,
    cause: &Cause,
    reverses: Option<&str>,
) -> Result<(), ServiceError> {
    let seq = head.seq + 1;
    let created_at = now_micros();
    let rules = cause.rules_text();
    let chained = ChainedEntry {
        program_id: &head.program_id,
        seq,
        entry_id,
        member_id,
        kind: kind.as_str(),
        points: deltas.available + deltas.pending,
        available_delta: deltas.available,
        pending_delta: deltas.pending,
        lifetime_delta: deltas.lifetime,
        order_id: cause.order_id.as_deref().unwrap_or_default(),
        rules: &rules,
        staff_id: cause.staff_id.as_deref().unwrap_or_default(),
        reason: cause.reason.as_deref().unwrap_or_default(),
        reference: cause.reference.as_deref().unwrap_or_default(),
        reverses: reverses.unwrap_or_default(),
        created_at,
    };
    let hash = chained.hash(&head.hash);
    sqlx::query(
        "INSERT INTO ledger_entries (entry_id, program_id, seq, member_id, kind, points, \
         available_delta, pending_delta, lifetime_delta, order_id, rules, staff_id, reason, \
         reference, reverses, created_at, prev_hash, hash) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
    )
    .bind(entry_id)
    .bind(&head.program_id)
    .bind(seq)
    .bind(member_id)
    .bind(kind.as_str())
    .bind(chained.points)
    .bind(deltas.available)
    .bind(deltas.pending)
    .bind(deltas.lifetime)
    .bind(chained.order_id)
    .bind(&rules)
    .bind(chained.staff_id)
    .bind(chained.reason)
    .bind(chained.reference)
    .bind(reverses)
    .bind(created_at)
    .bind(&head.hash)
    .bind(&hash)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE ledger_heads SET seq = $1, hash = $2 WHERE program_id = $3")
        .bind(seq)
        .bind(&hash)
        .bind(&head.program_id)
        .execute(&mut **tx)
        .await?;
    head.seq = seq;
    head.hash = hash;
    Ok(())
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Points of a credit that go into lots when the member is in debt (a
/// negative available balance under the clawback policy): the debt is paid
/// first.
pub(crate) fn to_lots_after_debt(available_before: i64, points: i64) -> i64 {
    (available_before + points).clamp(0, points)
}

async fn insert_lot(
    tx: &mut Tx,
    posting: &Posting,
    entry_id: &str,
    points: i64,
    remaining: i64,
    lot: LotTerms,
) -> Result<String, ServiceError> {
    let lot_id = new_id();
    sqlx::query(
        "INSERT INTO lots (lot_id, program_id, member_id, entry_id, points, remaining, released, \
         pending_until, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&lot_id)
    .bind(&posting.program_id)
    .bind(&posting.member_id)
    .bind(entry_id)
    .bind(points)
    .bind(remaining)
    .bind(i64::from(lot.pending_until.is_none()))
    .bind(micros(lot.pending_until))
    .bind(micros(lot.expires_at))
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    Ok(lot_id)
}

/// Credits `posting.points` as one new lot with `lot` terms: pending when
/// `lot.pending_until` is set, else available at once (paying any debt
/// first). Appends PointsEarned to the outbox.
pub(crate) async fn credit(
    tx: &mut Tx,
    posting: &Posting,
    lot: LotTerms,
) -> Result<EntryId, ServiceError> {
    credit_lots(tx, posting, &[(posting.points, lot)]).await
}

/// Like [`credit`], with the points split over several lots (a transfer
/// keeps the expiry of the lots it came from). The parts must sum to
/// `posting.points`.
pub(crate) async fn credit_lots(
    tx: &mut Tx,
    posting: &Posting,
    parts: &[(i64, LotTerms)],
) -> Result<EntryId, ServiceError> {
    check_positive(posting.points)?;
    if parts.iter().map(|p| p.0).sum::<i64>() != posting.points || parts.iter().any(|p| p.0 <= 0) {
        return Err(ServiceError::internal(
            "credit parts do not add up to the posting",
        ));
    }
    let mut head = lock_head(tx, &posting.program_id).await?;
    let mut available = balance_row(tx, &posting.program_id, &posting.member_id)
        .await?
        .available;
    let entry_id = new_id();
    let mut deltas = Deltas {
        lifetime: if posting.kind.counts_as_earned() {
            posting.points
        } else {
            0
        },
        ..Deltas::default()
    };
    for (points, terms) in parts {
        let remaining = if terms.pending_until.is_some() {
            deltas.pending += points;
            *points
        } else {
            deltas.available += points;
            let r = to_lots_after_debt(available, *points);
            available += points;
            r
        };
        insert_lot(tx, posting, &entry_id, *points, remaining, *terms).await?;
    }
    append_entry(
        tx,
        &mut head,
        &entry_id,
        &posting.member_id,
        posting.kind,
        &deltas,
        &posting.cause,
        None,
    )
    .await?;
    let first = parts.first().map(|p| p.1).unwrap_or_default();
    let event = new_envelope(
        PRODUCER,
        &posting.program_id,
        &posting.member_id,
        Payload::PointsEarned(PointsEarned {
            entry_id: entry_id.clone(),
            points: posting.points,
            cause: posting.cause.summary(),
            pending_until: first.pending_until.map(timestamp),
            expires_at: first.expires_at.map(timestamp),
            entry_kind: posting.kind.as_str().to_owned(),
        }),
    );
    outbox::append(tx, &event).await?;
    Ok(EntryId(entry_id))
}

/// A lot that can give points: (lot id, remaining, expires_at micros).
pub(crate) type LotRow = (String, i64, Option<i64>);

/// The member's available lots with points, soonest-expiring first (lots
/// that never expire last), then oldest first.
pub(crate) async fn available_lots(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    limit: i64,
) -> Result<Vec<LotRow>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT lot_id, remaining, expires_at FROM lots \
         WHERE program_id = $1 AND member_id = $2 AND released = 1 AND remaining > 0 \
         ORDER BY COALESCE(expires_at, 9223372036854775807), created_at, lot_id LIMIT $3",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Takes `points` from the member's available lots, soonest-expiring first,
/// recording each use under `entry_id`. Returns the uses with each lot's
/// expiry. The caller has already moved the balance.
pub(crate) async fn consume_lots(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    entry_id: &str,
    points: i64,
) -> Result<Vec<(LotUse, Option<i64>)>, ServiceError> {
    let mut left = points;
    let mut used = Vec::new();
    while left > 0 {
        let lots = available_lots(tx, program_id, member_id, 64).await?;
        if lots.is_empty() {
            return Err(ServiceError::internal(format!(
                "ledger invariant broken: lots of member {member_id} hold {} points less than its balance",
                left
            )));
        }
        for (lot_id, remaining, expires_at) in lots {
            let take = remaining.min(left);
            sqlx::query("UPDATE lots SET remaining = remaining - $1 WHERE lot_id = $2")
                .bind(take)
                .bind(&lot_id)
                .execute(&mut **tx)
                .await?;
            record_use(tx, entry_id, &lot_id, take).await?;
            used.push((
                LotUse {
                    lot_id,
                    points: take,
                },
                expires_at,
            ));
            left -= take;
            if left == 0 {
                break;
            }
        }
    }
    Ok(used)
}

pub(crate) async fn record_use(
    tx: &mut Tx,
    entry_id: &str,
    lot_id: &str,
    points: i64,
) -> Result<(), ServiceError> {
    sqlx::query("INSERT INTO lot_uses (entry_id, lot_id, points) VALUES ($1, $2, $3)")
        .bind(entry_id)
        .bind(lot_id)
        .bind(points)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Takes `points` of available points from the balance or fails with
/// INSUFFICIENT_BALANCE (a conditional update: never overdraws).
pub(crate) async fn take_available(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    points: i64,
) -> Result<(), ServiceError> {
    let done = sqlx::query(
        "UPDATE balances SET available = available - $1 \
         WHERE program_id = $2 AND member_id = $3 AND available >= $1",
    )
    .bind(points)
    .bind(program_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        let row = balance_row(tx, program_id, member_id).await?;
        Err(insufficient(row.available, points))
    }
}

/// Debits `posting.points` of available points, FIFO over the soonest
/// expiring lots, recording which lots gave what. Appends PointsRedeemed.
/// INSUFFICIENT_BALANCE (FAILED_PRECONDITION) when not enough are available.
pub(crate) async fn debit(tx: &mut Tx, posting: &Posting) -> Result<DebitOutcome, ServiceError> {
    let (outcome, _) = debit_with_expiry(tx, posting).await?;
    Ok(outcome)
}

/// [`debit`], also answering each used lot's expiry (micros).
pub(crate) async fn debit_with_expiry(
    tx: &mut Tx,
    posting: &Posting,
) -> Result<(DebitOutcome, Vec<Option<i64>>), ServiceError> {
    check_positive(posting.points)?;
    let mut head = lock_head(tx, &posting.program_id).await?;
    balance_row(tx, &posting.program_id, &posting.member_id).await?;
    take_available(tx, &posting.program_id, &posting.member_id, posting.points).await?;
    let entry_id = new_id();
    let used = consume_lots(
        tx,
        &posting.program_id,
        &posting.member_id,
        &entry_id,
        posting.points,
    )
    .await?;
    // the conditional update moved the balance already
    chain_entry(
        tx,
        &mut head,
        &entry_id,
        &posting.member_id,
        posting.kind,
        &Deltas {
            available: -posting.points,
            ..Deltas::default()
        },
        &posting.cause,
        None,
    )
    .await?;
    let event = new_envelope(
        PRODUCER,
        &posting.program_id,
        &posting.member_id,
        Payload::PointsRedeemed(PointsRedeemed {
            entry_id: entry_id.clone(),
            points: posting.points,
            reference: posting.cause.summary(),
            entry_kind: posting.kind.as_str().to_owned(),
        }),
    );
    outbox::append(tx, &event).await?;
    let (lots, expiries) = used.into_iter().unzip();
    Ok((
        DebitOutcome {
            entry_id: EntryId(entry_id),
            lots,
        },
        expiries,
    ))
}

/// Reverses a debit (a cancelled redemption): returns its points to the
/// lots they came from, once. Appends PointsEarned (kind "reverse").
/// NOT_FOUND for an unknown entry, FAILED_PRECONDITION when the entry is
/// not a debit or was reversed already.
pub(crate) async fn reverse_debit(
    tx: &mut Tx,
    program_id: &str,
    entry_id: &EntryId,
    reason: &str,
) -> Result<EntryId, ServiceError> {
    let mut head = lock_head(tx, program_id).await?;
    let found: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT member_id, points, available_delta FROM ledger_entries WHERE program_id = $1 AND entry_id = $2",
    )
    .bind(program_id)
    .bind(&entry_id.0)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((member_id, points, available_delta)) = found else {
        return Err(ServiceError::not_found("ledger entry", &entry_id.0));
    };
    if points >= 0 || available_delta != points {
        return Err(ServiceError::precondition(format!(
            "ledger entry {} is not a debit of available points",
            entry_id.0
        )));
    }
    let already: Option<String> = sqlx::query_scalar(
        "SELECT entry_id FROM ledger_entries WHERE program_id = $1 AND reverses = $2",
    )
    .bind(program_id)
    .bind(&entry_id.0)
    .fetch_optional(&mut **tx)
    .await?;
    if already.is_some() {
        return Err(ServiceError::precondition(format!(
            "ledger entry {} was already reversed",
            entry_id.0
        )));
    }
    let returned = -points;
    let available = balance_row(tx, program_id, &member_id).await?.available;
    // under a debt, the debt is paid first; the rest goes back to the lots
    let mut skip = returned - to_lots_after_debt(available, returned);
    let uses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT lot_id, points FROM lot_uses WHERE entry_id = $1 AND points > 0 ORDER BY lot_id",
    )
    .bind(&entry_id.0)
    .fetch_all(&mut **tx)
    .await?;
    let new_entry = new_id();
    for (lot_id, taken) in uses {
        let back = (taken - skip).max(0);
        skip = (skip - taken).max(0);
        if back == 0 {
            continue;
        }
        sqlx::query("UPDATE lots SET remaining = remaining + $1 WHERE lot_id = $2")
            .bind(back)
            .bind(&lot_id)
            .execute(&mut **tx)
            .await?;
        record_use(tx, &new_entry, &lot_id, -back).await?;
    }
    let cause = Cause {
        reason: Some(reason.to_owned()),
        reference: Some(format!("reverses:{}", entry_id.0)),
        ..Cause::default()
    };
    append_entry(
        tx,
        &mut head,
        &new_entry,
        &member_id,
        EntryKind::Reverse,
        &Deltas {
            available: returned,
            ..Deltas::default()
        },
        &cause,
        Some(&entry_id.0),
    )
    .await?;
    let event = new_envelope(
        PRODUCER,
        program_id,
        &member_id,
        Payload::PointsEarned(PointsEarned {
            entry_id: new_entry.clone(),
            points: returned,
            cause: cause.summary(),
            pending_until: None,
            expires_at: None,
            entry_kind: EntryKind::Reverse.as_str().to_owned(),
        }),
    );
    outbox::append(tx, &event).await?;
    Ok(EntryId(new_entry))
}
