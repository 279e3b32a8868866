//! The ledger API every part of the rewards service posts points through,
//! inside its own transaction: [`credit`], [`debit`], [`reverse_debit`].
//!
//! Each posting appends one hash-chained entry, moves lots and the member's
//! balance, and appends its event (PointsEarned / PointsRedeemed) to the
//! outbox, all in the caller's transaction; callers commit and then call
//! `rt.outbox.notify()`.
//!
//! Concurrency: every posting first locks the chain head of its member's
//! lane (one row, see [`super::ledger_lanes`]), then touches the member's
//! balance and lots. The lane lock orders all writers of a member, so its
//! chain has no gaps and its balance updates never deadlock; a transaction
//! posting for members of several lanes locks those lanes first, in
//! ascending order. A debit is in addition a conditional update
//! (`available >= points`), so a balance can never be overdrawn whatever
//! the isolation. On SQLite writers are serialised by the database anyway.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use std::collections::HashMap;

use loyalty_common::db::{Engine, JsonType, Tx, engine_of, json_rows, now_micros};
use loyalty_common::events::{new_envelope, outbox};
use loyalty_proto::common::ErrorReason;
use loyalty_proto::events::event_envelope::Payload;
use loyalty_proto::events::{EventEnvelope, PointsEarned, PointsRedeemed};

pub(crate) use crate::domain::expiry::LotTerms;
use crate::domain::ledger::ChainedEntry;
#[allow(unused_imports)] // RuleRef: part of the ledger API for other modules
pub(crate) use crate::domain::ledger::{Cause, EntryKind, Posting, RuleRef};

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

pub(crate) use super::ledger_lanes::{Head, lock_lane};

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

/// Moves a member's balance by `deltas`, creating it on first use, and
/// answers its available points after the move (one statement).
pub(crate) async fn move_balance(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    deltas: &Deltas,
) -> Result<i64, ServiceError> {
    let moved = move_balances(tx, &[(program_id, member_id, deltas)]).await?;
    moved
        .get(&(program_id.to_owned(), member_id.to_owned()))
        .copied()
        .ok_or_else(|| ServiceError::internal("the balance move answered no row"))
}

/// [`move_balance`] for several members at once (each at most once), in
/// one statement; answers each one's available points after the move.
pub(crate) async fn move_balances(
    tx: &mut Tx,
    moves: &[(&str, &str, &Deltas)],
) -> Result<HashMap<(String, String), i64>, ServiceError> {
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[
            ("program_id", JsonType::Text),
            ("member_id", JsonType::Text),
            ("available", JsonType::BigInt),
            ("pending", JsonType::BigInt),
            ("lifetime", JsonType::BigInt),
        ],
    );
    let sql = format!(
        "INSERT INTO balances (program_id, member_id, available, pending, lifetime_earned) \
         SELECT r.program_id, r.member_id, r.available, r.pending, r.lifetime FROM {rows} WHERE true \
         ON CONFLICT (program_id, member_id) DO UPDATE SET \
         available = balances.available + excluded.available, \
         pending = balances.pending + excluded.pending, \
         lifetime_earned = balances.lifetime_earned + excluded.lifetime_earned \
         RETURNING program_id, member_id, available"
    );
    let json = serde_json::Value::Array(
        moves
            .iter()
            .map(|(program_id, member_id, d)| {
                serde_json::json!({
                    "program_id": program_id, "member_id": member_id,
                    "available": d.available, "pending": d.pending, "lifetime": d.lifetime,
                })
            })
            .collect(),
    );
    let moved: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(json.to_string())
        .fetch_all(&mut **tx)
        .await?;
    Ok(moved
        .into_iter()
        .map(|(p, m, available)| ((p, m), available))
        .collect())
}

/// An entry to append to a lane's chain.
pub(crate) struct NewEntry<'a> {
    pub entry_id: &'a str,
    pub member_id: &'a str,
    pub kind: EntryKind,
    pub deltas: &'a Deltas,
    pub cause: &'a Cause,
    pub reverses: Option<&'a str>,
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
    let entry = NewEntry {
        entry_id,
        member_id,
        kind,
        deltas,
        cause,
        reverses,
    };
    chain_entries(tx, &mut [head], &[(0, entry)]).await
}

/// Appends entries to the chains of their lanes, in the order given:
/// `(index into heads, entry)`, every head locked. One statement on
/// PostgreSQL (entries and heads move together), two on SQLite, however
/// many entries.
pub(crate) async fn chain_entries(
    tx: &mut Tx,
    heads: &mut [&mut Head],
    entries: &[(usize, NewEntry<'_>)],
) -> Result<(), ServiceError> {
    if entries.is_empty() {
        return Ok(());
    }
    let created_at = now_micros();
    let mut rows = Vec::with_capacity(entries.len());
    let mut moved = vec![false; heads.len()];
    for (h, e) in entries {
        let head = &mut *heads[*h];
        let seq = head.seq + 1;
        let rules = e.cause.rules_text();
        let chained = ChainedEntry {
            program_id: &head.program_id,
            seq,
            entry_id: e.entry_id,
            member_id: e.member_id,
            kind: e.kind.as_str(),
            points: e.deltas.available + e.deltas.pending,
            available_delta: e.deltas.available,
            pending_delta: e.deltas.pending,
            lifetime_delta: e.deltas.lifetime,
            order_id: e.cause.order_id.as_deref().unwrap_or_default(),
            rules: &rules,
            staff_id: e.cause.staff_id.as_deref().unwrap_or_default(),
            reason: e.cause.reason.as_deref().unwrap_or_default(),
            reference: e.cause.reference.as_deref().unwrap_or_default(),
            reverses: e.reverses.unwrap_or_default(),
            created_at,
        };
        let hash = chained.hash(&head.hash);
        rows.push(serde_json::json!({
            "entry_id": e.entry_id, "program_id": head.program_id, "seq": seq,
            "member_id": e.member_id, "kind": chained.kind, "points": chained.points,
            "available_delta": chained.available_delta, "pending_delta": chained.pending_delta,
            "lifetime_delta": chained.lifetime_delta, "order_id": chained.order_id,
            "rules": rules, "staff_id": chained.staff_id, "reason": chained.reason,
            "reference": chained.reference, "reverses": e.reverses,
            "created_at": created_at, "prev_hash": head.hash, "hash": hash, "lane": head.lane,
        }));
        head.seq = seq;
        head.hash = hash;
        moved[*h] = true;
    }
    let head_rows: Vec<serde_json::Value> = heads
        .iter()
        .zip(&moved)
        .filter(|(_, m)| **m)
        .map(|(h, _)| {
            serde_json::json!({
                "program_id": h.program_id, "lane": h.lane, "seq": h.seq, "hash": h.hash,
            })
        })
        .collect();
    let engine = engine_of(tx);
    let text = JsonType::Text;
    let int = JsonType::BigInt;
    let entry_rows = json_rows(
        engine,
        1,
        "e",
        &[
            ("entry_id", text),
            ("program_id", text),
            ("seq", int),
            ("member_id", text),
            ("kind", text),
            ("points", int),
            ("available_delta", int),
            ("pending_delta", int),
            ("lifetime_delta", int),
            ("order_id", text),
            ("rules", text),
            ("staff_id", text),
            ("reason", text),
            ("reference", text),
            ("reverses", text),
            ("created_at", int),
            ("prev_hash", text),
            ("hash", text),
            ("lane", int),
        ],
    );
    // PostgreSQL binds the heads second (one statement), SQLite alone
    let heads_param = if engine == Engine::Postgres { 2 } else { 1 };
    let head_source = json_rows(
        engine,
        heads_param,
        "r",
        &[
            ("program_id", text),
            ("lane", int),
            ("seq", int),
            ("hash", text),
        ],
    );
    let update_heads = format!(
        "UPDATE ledger_heads SET seq = r.seq, hash = r.hash FROM {head_source} \
         WHERE ledger_heads.program_id = r.program_id AND ledger_heads.lane = r.lane"
    );
    let insert = "INSERT INTO ledger_entries (entry_id, program_id, seq, member_id, kind, points, \
         available_delta, pending_delta, lifetime_delta, order_id, rules, staff_id, reason, \
         reference, reverses, created_at, prev_hash, hash, lane) \
         SELECT e.entry_id, e.program_id, e.seq, e.member_id, e.kind, e.points, \
         e.available_delta, e.pending_delta, e.lifetime_delta, e.order_id, e.rules, e.staff_id, \
         e.reason, e.reference, e.reverses, e.created_at, e.prev_hash, e.hash, e.lane";
    let entries_json = serde_json::Value::Array(rows).to_string();
    let heads_json = serde_json::Value::Array(head_rows).to_string();
    let heads_moved = moved.iter().filter(|m| **m).count() as i64;
    let missing_head = || {
        ServiceError::internal(format!(
            "a ledger lane of program {} has no head row",
            heads[0].program_id
        ))
    };
    if engine == Engine::Postgres {
        // the entries are inserted only if every head moved
        let sql = format!(
            "WITH moved AS ({update_heads} RETURNING 1) {insert} FROM {entry_rows} \
             WHERE (SELECT COUNT(*) FROM moved) = $3"
        );
        let inserted = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(entries_json)
            .bind(heads_json)
            .bind(heads_moved)
            .execute(&mut **tx)
            .await?;
        if inserted.rows_affected() != entries.len() as u64 {
            return Err(missing_head());
        }
        return Ok(());
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("{insert} FROM {entry_rows}")))
        .bind(entries_json)
        .execute(&mut **tx)
        .await?;
    let updated = sqlx::query(sqlx::AssertSqlSafe(update_heads))
        .bind(heads_json)
        .execute(&mut **tx)
        .await?;
    if updated.rows_affected() != heads_moved as u64 {
        return Err(missing_head());
    }
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

/// A lot to insert.
pub(crate) struct NewLot<'a> {
    pub program_id: &'a str,
    pub member_id: &'a str,
    pub entry_id: &'a str,
    pub points: i64,
    pub remaining: i64,
    pub terms: LotTerms,
}

/// Inserts lots (one statement however many) and answers their ids.
pub(crate) async fn insert_lots(
    tx: &mut Tx,
    lots: &[NewLot<'_>],
) -> Result<Vec<String>, ServiceError> {
    if lots.is_empty() {
        return Ok(Vec::new());
    }
    let (text, int) = (JsonType::Text, JsonType::BigInt);
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[
            ("lot_id", text),
            ("program_id", text),
            ("member_id", text),
            ("entry_id", text),
            ("points", int),
            ("remaining", int),
            ("released", int),
            ("pending_until", int),
            ("expires_at", int),
            ("created_at", int),
        ],
    );
    let created_at = now_micros();
    let ids: Vec<String> = lots.iter().map(|_| new_id()).collect();
    let json = serde_json::Value::Array(
        lots.iter()
            .zip(&ids)
            .map(|(l, id)| {
                serde_json::json!({
                    "lot_id": id, "program_id": l.program_id, "member_id": l.member_id,
                    "entry_id": l.entry_id, "points": l.points, "remaining": l.remaining,
                    "released": i64::from(l.terms.pending_until.is_none()),
                    "pending_until": micros(l.terms.pending_until),
                    "expires_at": micros(l.terms.expires_at), "created_at": created_at,
                })
            })
            .collect(),
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO lots (lot_id, program_id, member_id, entry_id, points, remaining, released, \
         pending_until, expires_at, created_at) SELECT r.lot_id, r.program_id, r.member_id, \
         r.entry_id, r.points, r.remaining, r.released, r.pending_until, r.expires_at, \
         r.created_at FROM {rows}"
    )))
    .bind(json.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(ids)
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
    let mut head = lock_lane(tx, &posting.program_id, &posting.member_id).await?;
    credit_in_lane(tx, &mut head, posting, parts).await
}

/// [`credit_lots`] with the member's lane already locked (`head`).
pub(crate) async fn credit_in_lane(
    tx: &mut Tx,
    head: &mut Head,
    posting: &Posting,
    parts: &[(i64, LotTerms)],
) -> Result<EntryId, ServiceError> {
    let (entry, event) = credit_unannounced(tx, head, posting, parts).await?;
    outbox::append(tx, &event).await?;
    Ok(entry)
}

/// The balance moves of a credit of `parts` (pending or available).
pub(crate) fn credit_deltas(posting: &Posting, parts: &[(i64, LotTerms)]) -> Deltas {
    let mut deltas = Deltas {
        lifetime: if posting.kind.counts_as_earned() {
            posting.points
        } else {
            0
        },
        ..Deltas::default()
    };
    for (points, terms) in parts {
        if terms.pending_until.is_some() {
            deltas.pending += points;
        } else {
            deltas.available += points;
        }
    }
    deltas
}

/// The lots of a credit of `parts`, given the member's available points
/// before it: available parts pay any debt first.
pub(crate) fn lots_of_credit<'a>(
    posting: &'a Posting,
    entry_id: &'a str,
    parts: &[(i64, LotTerms)],
    mut available: i64,
) -> Vec<NewLot<'a>> {
    parts
        .iter()
        .map(|(points, terms)| {
            let remaining = if terms.pending_until.is_some() {
                *points
            } else {
                let r = to_lots_after_debt(available, *points);
                available += points;
                r
            };
            NewLot {
                program_id: &posting.program_id,
                member_id: &posting.member_id,
                entry_id,
                points: *points,
                remaining,
                terms: *terms,
            }
        })
        .collect()
}

/// The PointsEarned event of a credit.
pub(crate) fn points_earned(
    posting: &Posting,
    entry_id: &str,
    parts: &[(i64, LotTerms)],
) -> EventEnvelope {
    let first = parts.first().map(|p| p.1).unwrap_or_default();
    new_envelope(
        PRODUCER,
        &posting.program_id,
        &posting.member_id,
        Payload::PointsEarned(PointsEarned {
            entry_id: entry_id.to_owned(),
            points: posting.points,
            cause: posting.cause.summary(),
            pending_until: first.pending_until.map(timestamp),
            expires_at: first.expires_at.map(timestamp),
            entry_kind: posting.kind.as_str().to_owned(),
        }),
    )
}

/// [`credit_in_lane`] leaving its PointsEarned event to the caller, which
/// appends it with its own (one outbox statement for both).
pub(crate) async fn credit_unannounced(
    tx: &mut Tx,
    head: &mut Head,
    posting: &Posting,
    parts: &[(i64, LotTerms)],
) -> Result<(EntryId, EventEnvelope), ServiceError> {
    check_positive(posting.points)?;
    if parts.iter().map(|p| p.0).sum::<i64>() != posting.points || parts.iter().any(|p| p.0 <= 0) {
        return Err(ServiceError::internal(
            "credit parts do not add up to the posting",
        ));
    }
    let entry_id = new_id();
    let deltas = credit_deltas(posting, parts);
    // the balance moves first (one statement), its answer says how much
    // debt the credit pays before its lots hold anything
    let available = move_balance(tx, &posting.program_id, &posting.member_id, &deltas).await?
        - deltas.available;
    let lots = lots_of_credit(posting, &entry_id, parts, available);
    insert_lots(tx, &lots).await?;
    chain_entry(
        tx,
        head,
        &entry_id,
        &posting.member_id,
        posting.kind,
        &deltas,
        &posting.cause,
        None,
    )
    .await?;
    let event = points_earned(posting, &entry_id, parts);
    Ok((EntryId(entry_id), event))
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
                "ledger invariant broken: lots of member {member_id} hold {left} points less than its balance"
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
    let mut head = lock_lane(tx, &posting.program_id, &posting.member_id).await?;
    debit_in_lane(tx, &mut head, posting).await
}

/// [`debit_with_expiry`] with the member's lane already locked (`head`).
pub(crate) async fn debit_in_lane(
    tx: &mut Tx,
    head: &mut Head,
    posting: &Posting,
) -> Result<(DebitOutcome, Vec<Option<i64>>), ServiceError> {
    check_positive(posting.points)?;
    // a member with no balance row yet fails the update like one with 0
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
        head,
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
    // an entry's member never changes: its lane is locked from here on, and
    // a concurrent reversal of the same entry waits here
    let mut head = lock_lane(tx, program_id, &member_id).await?;
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
