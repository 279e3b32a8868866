//! Reads of the ledger: balances, entries, expiry reminders, and the
//! verification of a program's chain and balances.

use chrono::{DateTime, Duration, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_micros, to_timestamp};
use loyalty_common::db::Tx;
use loyalty_common::paging::Page;
use loyalty_proto::loyalty::rewards::v1 as pb;
use sqlx::{Any, Executor};

use crate::domain::expiry::Clawback;
use crate::domain::ledger::{
    BalanceRow, ChainedEntry, EntryKind, GENESIS_HASH, LedgerSums, balance_problems, verify_chain,
};

/// Points are "expiring soon" within this window.
pub(crate) const EXPIRING_SOON_DAYS: i64 = 30;

async fn balance_with<'e, E: Executor<'e, Database = Any> + Copy>(
    ex: E,
    program_id: &str,
    member_id: &str,
    now: DateTime<Utc>,
) -> Result<pb::Balance, ServiceError> {
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT available, pending, lifetime_earned FROM balances WHERE program_id = $1 AND member_id = $2",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_optional(ex)
    .await?;
    let (available, pending, lifetime_earned) = row.unwrap_or_default();
    let soon = (now + Duration::days(EXPIRING_SOON_DAYS)).timestamp_micros();
    let (expiring, next): (i64, Option<i64>) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(CASE WHEN expires_at <= $3 THEN remaining ELSE 0 END), 0) AS BIGINT), \
         MIN(expires_at) FROM lots \
         WHERE program_id = $1 AND member_id = $2 AND released = 1 AND remaining > 0 AND expires_at IS NOT NULL",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(soon)
    .fetch_one(ex)
    .await?;
    Ok(pb::Balance {
        available,
        pending,
        expiring_soon: expiring,
        lifetime_earned,
        next_expiry_at: next.map(|m| to_timestamp(from_micros(m))),
    })
}

/// A member's balance (zero for a member never seen).
pub(crate) async fn balance(
    db: &loyalty_common::db::Db,
    program_id: &str,
    member_id: &str,
    now: DateTime<Utc>,
) -> Result<pb::Balance, ServiceError> {
    balance_with(db.pool(), program_id, member_id, now).await
}

/// A member's balance as seen inside `tx`.
pub(crate) async fn balance_in_tx(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    now: DateTime<Utc>,
) -> Result<pb::Balance, ServiceError> {
    let conn: &mut sqlx::AnyConnection = tx;
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT available, pending, lifetime_earned FROM balances WHERE program_id = $1 AND member_id = $2",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (available, pending, lifetime_earned) = row.unwrap_or_default();
    let soon = (now + Duration::days(EXPIRING_SOON_DAYS)).timestamp_micros();
    let (expiring, next): (i64, Option<i64>) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(CASE WHEN expires_at <= $3 THEN remaining ELSE 0 END), 0) AS BIGINT), \
         MIN(expires_at) FROM lots \
         WHERE program_id = $1 AND member_id = $2 AND released = 1 AND remaining > 0 AND expires_at IS NOT NULL",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(soon)
    .fetch_one(&mut *conn)
    .await?;
    Ok(pb::Balance {
        available,
        pending,
        expiring_soon: expiring,
        lifetime_earned,
        next_expiry_at: next.map(|m| to_timestamp(from_micros(m))),
    })
}

type EntryRow = (
    String,
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
);

/// A member's entries, newest first, one page (cursor: sequence).
pub(crate) async fn entries(
    db: &loyalty_common::db::Db,
    program_id: &str,
    member_id: &str,
    page: &Page,
) -> Result<Vec<pb::LedgerEntry>, ServiceError> {
    let before: i64 = page
        .after
        .as_deref()
        .and_then(|a| a.parse().ok())
        .unwrap_or(i64::MAX);
    let rows: Vec<EntryRow> = sqlx::query_as(
        "SELECT entry_id, seq, kind, points, order_id, rules, staff_id, reason, reference, created_at \
         FROM ledger_entries WHERE program_id = $1 AND member_id = $2 AND seq < $3 ORDER BY seq DESC LIMIT $4",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(before)
    .bind(page.fetch_limit())
    .fetch_all(db.pool())
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (entry_id, seq, kind, points, order_id, rules, staff_id, reason, reference, created_at) in
        rows
    {
        let lots: Vec<(String, i64)> = sqlx::query_as(
            "SELECT lot_id, points FROM lot_uses WHERE entry_id = $1 ORDER BY lot_id",
        )
        .bind(&entry_id)
        .fetch_all(db.pool())
        .await?;
        out.push(pb::LedgerEntry {
            entry_id,
            sequence: seq,
            kind: EntryKind::parse(&kind).map_or(0, |k| k.to_proto() as i32),
            points,
            order_id,
            rules: rules
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            staff_id,
            reason,
            reference,
            created_at: Some(to_timestamp(from_micros(created_at))),
            lots: lots
                .into_iter()
                .map(|(lot_id, points)| pb::LotUse { lot_id, points })
                .collect(),
        });
    }
    Ok(out)
}

#[derive(sqlx::FromRow)]
struct ChainRow {
    entry_id: String,
    seq: i64,
    member_id: String,
    kind: String,
    points: i64,
    available_delta: i64,
    pending_delta: i64,
    lifetime_delta: i64,
    order_id: String,
    rules: String,
    staff_id: String,
    reason: String,
    reference: String,
    reverses: Option<String>,
    created_at: i64,
    prev_hash: String,
    hash: String,
}

/// What VerifyLedger found.
#[derive(Debug, Default)]
pub(crate) struct Verification {
    pub entries_checked: i64,
    pub first_break: Option<crate::domain::ledger::ChainBreak>,
    /// The lane of `first_break`.
    pub first_break_lane: i64,
    pub mismatches: Vec<(String, String)>,
}

/// Walks every lane of the program's chain from its first entry (lanes in
/// ascending order; the first break found is reported with its lane) and
/// checks every member's balance against its entries and lots.
pub(crate) async fn verify(
    db: &loyalty_common::db::Db,
    program_id: &str,
    negative_allowed: Clawback,
) -> Result<Verification, ServiceError> {
    let mut out = Verification::default();
    let lanes = super::ledger_lanes::stored_lane_count(db.pool(), program_id)
        .await?
        .unwrap_or(1);
    for lane in 0..lanes {
        let (checked, first_break) = verify_lane(db, program_id, lane).await?;
        out.entries_checked += checked;
        if first_break.is_some() {
            out.first_break = first_break;
            out.first_break_lane = lane;
            break;
        }
    }
    out.mismatches = balance_mismatches(
        db,
        program_id,
        negative_allowed == Clawback::NegativeBalance,
    )
    .await?;
    Ok(out)
}

/// Walks one lane's chain: entries checked and the first break.
async fn verify_lane(
    db: &loyalty_common::db::Db,
    program_id: &str,
    lane: i64,
) -> Result<(i64, Option<crate::domain::ledger::ChainBreak>), ServiceError> {
    let mut checked = 0;
    let mut seq = 1;
    let mut prev = GENESIS_HASH.to_owned();
    loop {
        let rows: Vec<ChainRow> = sqlx::query_as(
            "SELECT entry_id, seq, member_id, kind, points, available_delta, pending_delta, lifetime_delta, \
             order_id, rules, staff_id, reason, reference, reverses, created_at, prev_hash, hash \
             FROM ledger_entries WHERE program_id = $1 AND lane = $2 AND seq >= $3 ORDER BY seq LIMIT 2000",
        )
        .bind(program_id)
        .bind(lane)
        .bind(seq)
        .fetch_all(db.pool())
        .await?;
        if rows.is_empty() {
            break;
        }
        let n = rows.len();
        let chained = rows.iter().map(|r| {
            (
                ChainedEntry {
                    program_id,
                    seq: r.seq,
                    entry_id: &r.entry_id,
                    member_id: &r.member_id,
                    kind: &r.kind,
                    points: r.points,
                    available_delta: r.available_delta,
                    pending_delta: r.pending_delta,
                    lifetime_delta: r.lifetime_delta,
                    order_id: &r.order_id,
                    rules: &r.rules,
                    staff_id: &r.staff_id,
                    reason: &r.reason,
                    reference: &r.reference,
                    reverses: r.reverses.as_deref().unwrap_or_default(),
                    created_at: r.created_at,
                },
                r.prev_hash.as_str(),
                r.hash.as_str(),
            )
        });
        let bad_points = rows
            .iter()
            .find(|r| r.points != r.available_delta + r.pending_delta);
        match verify_chain(chained, seq, prev.clone()) {
            Ok((next, hash)) => {
                checked += n as i64;
                seq = next;
                prev = hash;
            }
            Err(b) => {
                checked += b.seq - seq;
                return Ok((checked, Some(b)));
            }
        }
        if let Some(r) = bad_points {
            return Ok((
                checked,
                Some(crate::domain::ledger::ChainBreak {
                    entry_id: r.entry_id.clone(),
                    seq: r.seq,
                    problem: "its points differ from its available and pending changes".into(),
                }),
            ));
        }
    }
    // the head must point at the last entry: a deleted tail shows here
    let head: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, hash FROM ledger_heads WHERE program_id = $1 AND lane = $2")
            .bind(program_id)
            .bind(lane)
            .fetch_optional(db.pool())
            .await?;
    if let Some((head_seq, head_hash)) = head
        && (head_seq != seq - 1 || head_hash != prev)
    {
        return Ok((
            checked,
            Some(crate::domain::ledger::ChainBreak {
                entry_id: String::new(),
                seq,
                problem: format!(
                    "lane {lane}: the chain ends at sequence {} but its head says {head_seq}: entries were removed",
                    seq - 1
                ),
            }),
        ));
    }
    Ok((checked, None))
}

type SumsRow = (String, i64, i64, i64, i64, i64, i64, i64, i64, i64);

/// Every member of the program whose balance disagrees with its entries
/// or lots (the ledger invariant), with what disagrees.
pub(crate) async fn balance_mismatches(
    db: &loyalty_common::db::Db,
    program_id: &str,
    negative_allowed: bool,
) -> Result<Vec<(String, String)>, ServiceError> {
    let rows: Vec<SumsRow> = sqlx::query_as(
        "SELECT m.member_id, \
           COALESCE(b.available, 0), COALESCE(b.pending, 0), COALESCE(b.lifetime_earned, 0), \
           COALESCE(e.available, 0), COALESCE(e.pending, 0), COALESCE(e.lifetime, 0), \
           COALESCE(l.released, 0), COALESCE(l.pending, 0), COALESCE(l.bad, 0) \
         FROM (SELECT member_id FROM balances WHERE program_id = $1 \
               UNION SELECT member_id FROM ledger_entries WHERE program_id = $1 \
               UNION SELECT member_id FROM lots WHERE program_id = $1) m \
         LEFT JOIN balances b ON b.program_id = $1 AND b.member_id = m.member_id \
         LEFT JOIN (SELECT member_id, CAST(SUM(available_delta) AS BIGINT) AS available, \
                      CAST(SUM(pending_delta) AS BIGINT) AS pending, CAST(SUM(lifetime_delta) AS BIGINT) AS lifetime \
                    FROM ledger_entries WHERE program_id = $1 GROUP BY member_id) e ON e.member_id = m.member_id \
         LEFT JOIN (SELECT member_id, \
                      CAST(SUM(CASE WHEN released = 1 THEN remaining ELSE 0 END) AS BIGINT) AS released, \
                      CAST(SUM(CASE WHEN released = 0 THEN remaining ELSE 0 END) AS BIGINT) AS pending, \
                      CAST(SUM(CASE WHEN remaining < 0 OR remaining > points THEN 1 ELSE 0 END) AS BIGINT) AS bad \
                    FROM lots WHERE program_id = $1 GROUP BY member_id) l ON l.member_id = m.member_id \
         ORDER BY m.member_id",
    )
    .bind(program_id)
    .fetch_all(db.pool())
    .await?;
    let mut out = Vec::new();
    for r in rows {
        let problems = balance_problems(
            BalanceRow {
                available: r.1,
                pending: r.2,
                lifetime_earned: r.3,
            },
            LedgerSums {
                available: r.4,
                pending: r.5,
                lifetime: r.6,
                released_lots: r.7,
                pending_lots: r.8,
                bad_lots: r.9,
            },
            negative_allowed,
        );
        if !problems.is_empty() {
            out.push((r.0, problems.join("; ")));
        }
    }
    Ok(out)
}

/// Members with available points expiring before `until`, by member id.
pub(crate) async fn expiry_reminders(
    db: &loyalty_common::db::Db,
    program_id: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    page: &Page,
) -> Result<Vec<pb::ExpiryReminder>, ServiceError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT member_id, CAST(SUM(remaining) AS BIGINT), MIN(expires_at) FROM lots \
         WHERE program_id = $1 AND released = 1 AND remaining > 0 AND expires_at > $2 AND expires_at <= $3 \
         AND member_id > $4 GROUP BY member_id ORDER BY member_id LIMIT $5",
    )
    .bind(program_id)
    .bind(now.timestamp_micros())
    .bind(until.timestamp_micros())
    .bind(page.after.clone().unwrap_or_default())
    .bind(page.fetch_limit())
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|(member_id, points, first)| pb::ExpiryReminder {
            member_id,
            points,
            first_expires_at: Some(to_timestamp(from_micros(first))),
        })
        .collect())
}
