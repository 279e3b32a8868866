//! Storage of referral terms, codes, referrals, contact hashes and the
//! members known to have purchased.

use std::collections::HashSet;

use loyalty_common::ServiceError;
use loyalty_common::db::{
    JsonType, Tx, engine_of, is_unique_violation, json_rows, json_rows_lookup,
};
use sqlx::AnyPool;

use crate::engagement::codes;

/// Referral terms as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermsRow {
    pub program_id: String,
    pub enabled: bool,
    pub referrer_points: i64,
    pub referee_points: i64,
    pub min_purchase_minor: Option<i64>,
    pub min_purchase_currency: Option<String>,
}

pub async fn put_terms(tx: &mut Tx, t: &TermsRow, now: i64) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO referral_terms (program_id, enabled, referrer_points, referee_points, \
         min_purchase_minor, min_purchase_currency, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (program_id) DO UPDATE SET enabled = $2, referrer_points = $3, \
         referee_points = $4, min_purchase_minor = $5, min_purchase_currency = $6, updated_at = $7",
    )
    .bind(&t.program_id)
    .bind(i64::from(t.enabled))
    .bind(t.referrer_points)
    .bind(t.referee_points)
    .bind(t.min_purchase_minor)
    .bind(&t.min_purchase_currency)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

type TermsTuple = (String, i64, i64, i64, Option<i64>, Option<String>);

fn terms(t: TermsTuple) -> TermsRow {
    TermsRow {
        program_id: t.0,
        enabled: t.1 != 0,
        referrer_points: t.2,
        referee_points: t.3,
        min_purchase_minor: t.4,
        min_purchase_currency: t.5,
    }
}

pub async fn get_terms(db: &AnyPool, program_id: &str) -> Result<Option<TermsRow>, ServiceError> {
    let row: Option<TermsTuple> = sqlx::query_as(
        "SELECT program_id, enabled, referrer_points, referee_points, min_purchase_minor, \
         min_purchase_currency FROM referral_terms WHERE program_id = $1",
    )
    .bind(program_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(terms))
}

pub async fn get_terms_tx(tx: &mut Tx, program_id: &str) -> Result<Option<TermsRow>, ServiceError> {
    let row: Option<TermsTuple> = sqlx::query_as(
        "SELECT program_id, enabled, referrer_points, referee_points, min_purchase_minor, \
         min_purchase_currency FROM referral_terms WHERE program_id = $1",
    )
    .bind(program_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(terms))
}

/// The member's code, created with a fresh random code on first use.
pub async fn code_of(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    now: i64,
) -> Result<String, ServiceError> {
    for _ in 0..5 {
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT code FROM referral_codes WHERE program_id = $1 AND member_id = $2",
        )
        .bind(program_id)
        .bind(member_id)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(code) = existing {
            return Ok(code);
        }
        // DO NOTHING covers both a concurrent first call (the loop then
        // reads its code) and a code drawn twice (the loop draws again)
        sqlx::query(
            "INSERT INTO referral_codes (program_id, member_id, code, created_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(program_id)
        .bind(member_id)
        .bind(codes::new_referral_code())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Err(ServiceError::internal(
        "could not draw an unused referral code",
    ))
}

/// The member holding `code`.
pub async fn holder_of(
    tx: &mut Tx,
    program_id: &str,
    code: &str,
) -> Result<Option<String>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT member_id FROM referral_codes WHERE program_id = $1 AND code = $2",
    )
    .bind(program_id)
    .bind(code)
    .fetch_optional(&mut **tx)
    .await?)
}

/// A referral as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferralRow {
    pub referral_id: String,
    pub program_id: String,
    pub referrer_id: String,
    pub referee_id: String,
    pub state: String,
    pub referrer_points: i64,
    pub referee_points: i64,
    pub qualifying_order_id: Option<String>,
    pub created_at: i64,
    pub qualified_at: Option<i64>,
    pub clawed_back_at: Option<i64>,
}

type ReferralTuple = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    Option<String>,
    i64,
    Option<i64>,
    Option<i64>,
);

macro_rules! referral_cols {
    () => {
        "referral_id, program_id, referrer_id, referee_id, state, referrer_points, \
         referee_points, qualifying_order_id, created_at, qualified_at, clawed_back_at"
    };
}

fn referral(t: ReferralTuple) -> ReferralRow {
    ReferralRow {
        referral_id: t.0,
        program_id: t.1,
        referrer_id: t.2,
        referee_id: t.3,
        state: t.4,
        referrer_points: t.5,
        referee_points: t.6,
        qualifying_order_id: t.7,
        created_at: t.8,
        qualified_at: t.9,
        clawed_back_at: t.10,
    }
}

pub async fn referral_of_referee(
    tx: &mut Tx,
    program_id: &str,
    referee_id: &str,
) -> Result<Option<ReferralRow>, ServiceError> {
    let row: Option<ReferralTuple> = sqlx::query_as(concat!(
        "SELECT ",
        referral_cols!(),
        " FROM referrals WHERE program_id = $1 AND referee_id = $2"
    ))
    .bind(program_id)
    .bind(referee_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(referral))
}

/// Inserts a pending referral; false when the referee was referred
/// meanwhile (the unique index decides).
pub async fn insert_referral(tx: &mut Tx, r: &ReferralRow) -> Result<bool, ServiceError> {
    let done = sqlx::query(concat!(
        "INSERT INTO referrals (",
        referral_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING"
    ))
    .bind(&r.referral_id)
    .bind(&r.program_id)
    .bind(&r.referrer_id)
    .bind(&r.referee_id)
    .bind(&r.state)
    .bind(r.referrer_points)
    .bind(r.referee_points)
    .bind(&r.qualifying_order_id)
    .bind(r.created_at)
    .bind(r.qualified_at)
    .bind(r.clawed_back_at)
    .execute(&mut **tx)
    .await;
    match done {
        Ok(d) => Ok(d.rows_affected() == 1),
        Err(e) if is_unique_violation(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The qualifying order of a referral: its id, and what it cost when the
/// purchase announced an amount (needed to tell a refund in full).
#[derive(Debug, Clone)]
pub struct QualifyingOrder<'a> {
    pub order_id: &'a str,
    pub amount: Option<(i64, &'a str)>,
}

/// Pending → qualified, once; false when it was not pending.
pub async fn qualify(
    tx: &mut Tx,
    referral_id: &str,
    referrer_points: i64,
    referee_points: i64,
    order: &QualifyingOrder<'_>,
    now: i64,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE referrals SET state = 'qualified', referrer_points = $1, referee_points = $2, \
         qualifying_order_id = $3, qualified_at = $4, qualifying_minor = $5, \
         qualifying_currency = $6 WHERE referral_id = $7 AND state = 'pending'",
    )
    .bind(referrer_points)
    .bind(referee_points)
    .bind(order.order_id)
    .bind(now)
    .bind(order.amount.map(|a| a.0))
    .bind(order.amount.map(|a| a.1.to_owned()))
    .bind(referral_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Counts a refund of the referral's qualifying order, once per refund id,
/// and answers whether the order is now refunded in full. A refund in
/// another currency than the order's, or of an order whose cost is not
/// known, never makes it full.
pub async fn count_refund(
    tx: &mut Tx,
    referral_id: &str,
    refund_id: &str,
    refunded_minor: i64,
    currency: &str,
) -> Result<bool, ServiceError> {
    let new = sqlx::query(
        "INSERT INTO referral_refunds (referral_id, refund_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(referral_id)
    .bind(refund_id)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if new {
        sqlx::query(
            "UPDATE referrals SET refunded_minor = refunded_minor + $1 \
             WHERE referral_id = $2 AND qualifying_currency = $3",
        )
        .bind(refunded_minor)
        .bind(referral_id)
        .bind(currency)
        .execute(&mut **tx)
        .await?;
    }
    let (cost, refunded): (Option<i64>, i64) = sqlx::query_as(
        "SELECT qualifying_minor, refunded_minor FROM referrals WHERE referral_id = $1",
    )
    .bind(referral_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(cost.is_some_and(|c| refunded >= c))
}

/// Qualified → clawed back, once; false when it was not qualified.
pub async fn claw_back(tx: &mut Tx, referral_id: &str, now: i64) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE referrals SET state = 'clawed_back', clawed_back_at = $1 \
         WHERE referral_id = $2 AND state = 'qualified'",
    )
    .bind(now)
    .bind(referral_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn list_referrals(
    db: &AnyPool,
    program_id: &str,
    referrer_id: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<ReferralRow>, ServiceError> {
    let rows: Vec<ReferralTuple> = sqlx::query_as(concat!(
        "SELECT ",
        referral_cols!(),
        " FROM referrals WHERE program_id = $1 AND referrer_id = $2 \
         AND ($3 = '' OR referral_id < $3) ORDER BY referral_id DESC LIMIT $4"
    ))
    .bind(program_id)
    .bind(referrer_id)
    .bind(before.unwrap_or_default())
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(referral).collect())
}

/// Stores a member's contact hashes (adding to what is known).
pub async fn add_contact_hashes(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    hashes: &[String],
) -> Result<(), ServiceError> {
    for h in hashes {
        sqlx::query(
            "INSERT INTO member_contact_hashes (program_id, member_id, contact_hash) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(program_id)
        .bind(member_id)
        .bind(h)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

pub async fn contact_hashes(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<Vec<String>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT contact_hash FROM member_contact_hashes WHERE program_id = $1 AND member_id = $2",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_all(&mut **tx)
    .await?)
}

/// Whether another member already referred in the program holds `hash`.
pub async fn hash_already_referred(
    tx: &mut Tx,
    program_id: &str,
    hash: &str,
    except_member: &str,
) -> Result<bool, ServiceError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM member_contact_hashes h JOIN referrals r \
         ON r.program_id = h.program_id AND r.referee_id = h.member_id \
         WHERE h.program_id = $1 AND h.contact_hash = $2 AND h.member_id <> $3",
    )
    .bind(program_id)
    .bind(hash)
    .bind(except_member)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n > 0)
}

/// Erases what is personal of a member: its contact hashes.
pub async fn erase_member(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<(), ServiceError> {
    sqlx::query("DELETE FROM member_contact_hashes WHERE program_id = $1 AND member_id = $2")
        .bind(program_id)
        .bind(member_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records each member's first purchase (the first order in input order
/// is the one kept), many in one statement.
pub async fn record_purchases(
    tx: &mut Tx,
    purchases: &[(&str, &str, &str)],
) -> Result<(), ServiceError> {
    if purchases.is_empty() {
        return Ok(());
    }
    let text = JsonType::Text;
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[
            ("program_id", text),
            ("member_id", text),
            ("order_id", text),
        ],
    );
    let json = serde_json::Value::Array(
        purchases
            .iter()
            .map(|(p, m, o)| serde_json::json!({"program_id": p, "member_id": m, "order_id": o}))
            .collect(),
    );
    // `WHERE true`: SQLite would read ON CONFLICT as a join's ON otherwise
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO referral_purchasers (program_id, member_id, first_order_id) \
         SELECT r.program_id, r.member_id, r.order_id FROM {rows} WHERE true ON CONFLICT DO NOTHING"
    )))
    .bind(json.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The members among `members` referred by someone and not yet
/// qualified: one statement, probing the referee index per member.
pub async fn pending_referees(
    tx: &mut Tx,
    members: &[(&str, &str)],
) -> Result<HashSet<(String, String)>, ServiceError> {
    if members.is_empty() {
        return Ok(HashSet::new());
    }
    let text = JsonType::Text;
    let from = json_rows_lookup(
        engine_of(tx),
        1,
        &[("program_id", text), ("member_id", text)],
        "referrals",
        "t.program_id = r.program_id AND t.referee_id = r.member_id",
    );
    let json = serde_json::Value::Array(
        members
            .iter()
            .map(|(p, m)| serde_json::json!({"program_id": p, "member_id": m}))
            .collect(),
    );
    let found: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT t.program_id, t.referee_id, t.state FROM {from}"
    )))
    .bind(json.to_string())
    .fetch_all(&mut **tx)
    .await?;
    Ok(found
        .into_iter()
        .filter(|(_, _, state)| state == "pending")
        .map(|(p, m, _)| (p, m))
        .collect())
}

pub async fn has_purchased(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<bool, ServiceError> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM referral_purchasers WHERE program_id = $1 AND member_id = $2",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n > 0)
}
