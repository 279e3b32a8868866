//! Storage of coupon pools, coupons and failed attempts. A coupon is
//! redeemed by one conditional update (not yet redeemed, not expired), so
//! of two concurrent redemptions exactly one succeeds.
//!
//! Codes are stored as a digest and a sealed form ([`CodeVault`]), never in
//! clear; rows issued before migration 0054 keep a clear `code` until
//! [`seal_clear_codes`] seals them, and lookups find both kinds meanwhile.

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use sqlx::AnyPool;

use super::vault::CodeVault;
use crate::engagement::codes;
use crate::engagement::support::new_id;

/// A pool as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRow {
    pub pool_id: String,
    pub program_id: String,
    pub name: String,
    pub description: String,
    pub discount_minor: Option<i64>,
    pub discount_currency: Option<String>,
    pub valid_days: i64,
    pub max_issued: i64,
    pub issued_count: i64,
    pub created_at: i64,
}

type PoolTuple = (
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
    i64,
    i64,
    i64,
    i64,
);

macro_rules! pool_cols {
    () => {
        "pool_id, program_id, name, description, discount_minor, discount_currency, valid_days, \
         max_issued, issued_count, created_at"
    };
}

fn pool(t: PoolTuple) -> PoolRow {
    PoolRow {
        pool_id: t.0,
        program_id: t.1,
        name: t.2,
        description: t.3,
        discount_minor: t.4,
        discount_currency: t.5,
        valid_days: t.6,
        max_issued: t.7,
        issued_count: t.8,
        created_at: t.9,
    }
}

pub async fn insert_pool(tx: &mut Tx, p: &PoolRow) -> Result<(), ServiceError> {
    sqlx::query(concat!(
        "INSERT INTO coupon_pools (",
        pool_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&p.pool_id)
    .bind(&p.program_id)
    .bind(&p.name)
    .bind(&p.description)
    .bind(p.discount_minor)
    .bind(&p.discount_currency)
    .bind(p.valid_days)
    .bind(p.max_issued)
    .bind(p.issued_count)
    .bind(p.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn get_pool_tx(
    tx: &mut Tx,
    program_id: &str,
    pool_id: &str,
) -> Result<Option<PoolRow>, ServiceError> {
    let row: Option<PoolTuple> = sqlx::query_as(concat!(
        "SELECT ",
        pool_cols!(),
        " FROM coupon_pools WHERE program_id = $1 AND pool_id = $2"
    ))
    .bind(program_id)
    .bind(pool_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(pool))
}

pub async fn get_pool(
    db: &AnyPool,
    program_id: &str,
    pool_id: &str,
) -> Result<Option<PoolRow>, ServiceError> {
    let row: Option<PoolTuple> = sqlx::query_as(concat!(
        "SELECT ",
        pool_cols!(),
        " FROM coupon_pools WHERE program_id = $1 AND pool_id = $2"
    ))
    .bind(program_id)
    .bind(pool_id)
    .fetch_optional(db)
    .await?;
    Ok(row.map(pool))
}

pub async fn list_pools(
    db: &AnyPool,
    program_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<PoolRow>, ServiceError> {
    let rows: Vec<PoolTuple> = sqlx::query_as(concat!(
        "SELECT ",
        pool_cols!(),
        " FROM coupon_pools WHERE program_id = $1 AND pool_id > $2 ORDER BY pool_id LIMIT $3"
    ))
    .bind(program_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(pool).collect())
}

/// A coupon as stored, its code opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponRow {
    pub coupon_id: String,
    pub program_id: String,
    pub pool_id: String,
    pub member_id: String,
    /// The canonical code (opened from its sealed form).
    pub code: String,
    pub source: String,
    pub campaign_id: Option<String>,
    pub issued_at: i64,
    pub expires_at: i64,
    pub redeemed_at: Option<i64>,
    pub redeemed_order_id: Option<String>,
    /// When the expiry job marked it expired (unset: not marked yet).
    pub expired_at: Option<i64>,
    /// The pool's description, for display.
    pub description: String,
}

type CouponTuple = (
    String,
    String,
    String,
    String,
    String,
    Option<Vec<u8>>,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<i64>,
    String,
);

macro_rules! coupon_cols {
    () => {
        "c.coupon_id, c.program_id, c.pool_id, c.member_id, c.code, c.code_sealed, c.source, \
         c.campaign_id, \
         c.issued_at, c.expires_at, c.redeemed_at, c.redeemed_order_id, c.expired_at, \
         p.description \
         FROM coupons c JOIN coupon_pools p ON p.pool_id = c.pool_id"
    };
}

/// The row with its code opened: from its sealed form, or as stored by a
/// row not sealed yet (issued before migration 0054).
fn coupon(vault: &CodeVault, t: CouponTuple) -> Result<CouponRow, ServiceError> {
    let code = match &t.5 {
        Some(sealed) => vault.open_or_fail(&t.1, &t.0, sealed)?,
        None => t.4,
    };
    Ok(CouponRow {
        coupon_id: t.0,
        program_id: t.1,
        pool_id: t.2,
        member_id: t.3,
        code,
        source: t.6,
        campaign_id: t.7,
        issued_at: t.8,
        expires_at: t.9,
        redeemed_at: t.10,
        redeemed_order_id: t.11,
        expired_at: t.12,
        description: t.13,
    })
}

/// The row found by typed `code`, which its opened code must be: a row
/// whose sealed code is another (moved there) is refused, not shown.
fn coupon_with_code(
    vault: &CodeVault,
    t: CouponTuple,
    code: &str,
) -> Result<CouponRow, ServiceError> {
    let row = coupon(vault, t)?;
    if row.code != code {
        tracing::error!(
            program_id = %row.program_id,
            coupon_id = %row.coupon_id,
            "coupon found by its code's digest holds another sealed code"
        );
        return Err(ServiceError::internal(
            "a coupon's sealed code does not match its digest",
        ));
    }
    Ok(row)
}

/// Rows matching a typed code: by digest, or by the clear code of a row
/// not sealed yet (one statement, an index probe for each).
macro_rules! by_code_where {
    ($p:literal, $d:literal, $c:literal) => {
        concat!(
            "program_id = $",
            $p,
            " AND (code_digest = $",
            $d,
            " OR (code = $",
            $c,
            " AND code <> ''))"
        )
    };
}

/// Why a coupon could not be issued.
#[derive(Debug)]
pub enum IssueError {
    PoolNotFound,
    PoolExhausted,
    Store(ServiceError),
}

impl From<ServiceError> for IssueError {
    fn from(e: ServiceError) -> Self {
        Self::Store(e)
    }
}

impl From<sqlx::Error> for IssueError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

impl From<IssueError> for ServiceError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::PoolNotFound => ServiceError::not_found("coupon pool", ""),
            IssueError::PoolExhausted => {
                ServiceError::precondition("the coupon pool has issued all its coupons")
            }
            IssueError::Store(e) => e,
        }
    }
}

/// What an issue is for.
#[derive(Debug, Clone)]
pub struct IssueRequest<'a> {
    pub program_id: &'a str,
    pub pool_id: &'a str,
    pub member_id: &'a str,
    /// "redemption", "direct", "campaign".
    pub source: &'static str,
    /// Dedupe key of automatic issues; a second issue answers the first coupon.
    pub issue_key: Option<String>,
    pub campaign_id: Option<String>,
    pub now: i64,
}

/// Issues a coupon with a fresh random code. Returns the coupon and whether
/// it is new (false: the issue key had been used, this is that coupon).
pub async fn issue(
    tx: &mut Tx,
    vault: &CodeVault,
    r: &IssueRequest<'_>,
) -> Result<(CouponRow, bool), IssueError> {
    if let Some(key) = &r.issue_key
        && let Some(existing) = by_issue_key(tx, vault, r.program_id, key).await?
    {
        return Ok((existing, false));
    }
    let pool = get_pool_tx(tx, r.program_id, r.pool_id)
        .await?
        .ok_or(IssueError::PoolNotFound)?;
    let counted = sqlx::query(
        "UPDATE coupon_pools SET issued_count = issued_count + 1 \
         WHERE program_id = $1 AND pool_id = $2 AND (max_issued = 0 OR issued_count < max_issued)",
    )
    .bind(r.program_id)
    .bind(r.pool_id)
    .execute(&mut **tx)
    .await?;
    if counted.rows_affected() != 1 {
        return Err(IssueError::PoolExhausted);
    }
    let expires_at = r
        .now
        .saturating_add(pool.valid_days.saturating_mul(86_400_000_000));
    let coupon_id = new_id();
    // 80 random bits: a collision is practically impossible, but the
    // unique index decides; draw again rather than fail.
    for _ in 0..3 {
        let code = codes::new_coupon_code();
        let inserted = sqlx::query(
            "INSERT INTO coupons (coupon_id, program_id, pool_id, member_id, code, code_digest, \
             code_sealed, source, issue_key, campaign_id, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4, '', $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
        )
        .bind(&coupon_id)
        .bind(r.program_id)
        .bind(r.pool_id)
        .bind(r.member_id)
        .bind(vault.digest(r.program_id, &code))
        .bind(vault.seal(r.program_id, &coupon_id, &code)?)
        .bind(r.source)
        .bind(&r.issue_key)
        .bind(&r.campaign_id)
        .bind(r.now)
        .bind(expires_at)
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 1 {
            let row = CouponRow {
                coupon_id,
                program_id: r.program_id.to_owned(),
                pool_id: r.pool_id.to_owned(),
                member_id: r.member_id.to_owned(),
                code,
                source: r.source.to_owned(),
                campaign_id: r.campaign_id.clone(),
                issued_at: r.now,
                expires_at,
                redeemed_at: None,
                redeemed_order_id: None,
                expired_at: None,
                description: pool.description,
            };
            return Ok((row, true));
        }
    }
    Err(IssueError::Store(ServiceError::internal(
        "could not draw an unused coupon code",
    )))
}

async fn by_issue_key(
    tx: &mut Tx,
    vault: &CodeVault,
    program_id: &str,
    key: &str,
) -> Result<Option<CouponRow>, ServiceError> {
    let row: Option<CouponTuple> = sqlx::query_as(concat!(
        "SELECT ",
        coupon_cols!(),
        " WHERE c.program_id = $1 AND c.issue_key = $2"
    ))
    .bind(program_id)
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|t| coupon(vault, t)).transpose()
}

/// The coupon `coupon_id` of `program_id`.
pub async fn by_id(
    db: &AnyPool,
    vault: &CodeVault,
    program_id: &str,
    coupon_id: &str,
) -> Result<Option<CouponRow>, ServiceError> {
    let row: Option<CouponTuple> = sqlx::query_as(concat!(
        "SELECT ",
        coupon_cols!(),
        " WHERE c.program_id = $1 AND c.coupon_id = $2"
    ))
    .bind(program_id)
    .bind(coupon_id)
    .fetch_optional(db)
    .await?;
    row.map(|t| coupon(vault, t)).transpose()
}

/// The coupon of the canonical `code`, read in a transaction
/// (`&mut **tx`) or from the pool.
pub async fn by_code<'e, E>(
    db: E,
    vault: &CodeVault,
    program_id: &str,
    code: &str,
) -> Result<Option<CouponRow>, ServiceError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row: Option<CouponTuple> = sqlx::query_as(concat!(
        "SELECT ",
        coupon_cols!(),
        " WHERE c.",
        by_code_where!("1", "2", "3")
    ))
    .bind(program_id)
    .bind(vault.digest(program_id, code))
    .bind(code)
    .fetch_optional(db)
    .await?;
    row.map(|t| coupon_with_code(vault, t, code)).transpose()
}

/// Marks the coupon redeemed for `order_id` if it is unused and unexpired
/// (by its validity, whether or not the expiry job marked it yet); false
/// otherwise (the caller reads it to say why).
pub async fn redeem(
    tx: &mut Tx,
    vault: &CodeVault,
    program_id: &str,
    code: &str,
    order_id: &str,
    now: i64,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(concat!(
        "UPDATE coupons SET redeemed_at = $1, redeemed_order_id = $2 WHERE ",
        by_code_where!("3", "4", "5"),
        " AND redeemed_at IS NULL AND expired_at IS NULL AND expires_at > $1"
    ))
    .bind(now)
    .bind(order_id)
    .bind(program_id)
    .bind(vault.digest(program_id, code))
    .bind(code)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Which of a member's coupons a list holds.
#[derive(Debug, Clone, Copy)]
pub struct MemberCoupons<'a> {
    pub program_id: &'a str,
    pub member_id: &'a str,
    /// 0 all, 1 usable, 2 redeemed, 3 expired.
    pub state: i64,
    pub now: i64,
    /// Only coupons before this id (the page cursor).
    pub before: Option<&'a str>,
    pub limit: i64,
}

pub async fn list_member_coupons(
    db: &AnyPool,
    vault: &CodeVault,
    q: &MemberCoupons<'_>,
) -> Result<Vec<CouponRow>, ServiceError> {
    let MemberCoupons {
        program_id,
        member_id,
        state,
        now,
        before,
        limit,
    } = *q;
    let rows: Vec<CouponTuple> = sqlx::query_as(concat!(
        "SELECT ",
        coupon_cols!(),
        " WHERE c.program_id = $1 AND c.member_id = $2 AND ($3 = '' OR c.coupon_id < $3) \
         AND ($4 = 0 \
           OR ($4 = 1 AND c.redeemed_at IS NULL AND c.expired_at IS NULL AND c.expires_at > $5) \
           OR ($4 = 2 AND c.redeemed_at IS NOT NULL) \
           OR ($4 = 3 AND c.redeemed_at IS NULL AND (c.expired_at IS NOT NULL OR c.expires_at <= $5))) \
         ORDER BY c.coupon_id DESC LIMIT $6"
    ))
    .bind(program_id)
    .bind(member_id)
    .bind(before.unwrap_or_default())
    .bind(state)
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter().map(|t| coupon(vault, t)).collect()
}

/// Seals up to `limit` codes still stored in clear (rows issued before
/// migration 0054, or by a replica not upgraded yet) and blanks them, in
/// `tx`. Idempotent: a sealed row leaves the set scanned, and each update
/// is conditional on the clear code still being there. Returns how many
/// rows it sealed.
pub async fn seal_clear_codes(
    tx: &mut Tx,
    vault: &CodeVault,
    limit: i64,
) -> Result<u64, ServiceError> {
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT coupon_id, program_id, code FROM coupons WHERE code <> '' LIMIT $1")
            .bind(limit)
            .fetch_all(&mut **tx)
            .await?;
    let mut sealed = 0;
    for (coupon_id, program_id, clear) in rows {
        // codes were stored canonical; a row that is not keeps its text as
        // is, so that typing it exactly still finds it
        let code = codes::normalise(&clear, codes::COUPON_CODE_LEN).unwrap_or(clear.clone());
        let done = sqlx::query(
            "UPDATE coupons SET code_digest = $1, code_sealed = $2, code = '' \
             WHERE coupon_id = $3 AND code = $4",
        )
        .bind(vault.digest(&program_id, &code))
        .bind(vault.seal(&program_id, &coupon_id, &code)?)
        .bind(&coupon_id)
        .bind(&clear)
        .execute(&mut **tx)
        .await?;
        sealed += done.rows_affected();
    }
    Ok(sealed)
}

/// One sealed code (program, coupon, sealed form), if any row holds one:
/// what the start-up key check opens to tell whether a database recorded
/// no data key yet was sealed with the configured one.
pub async fn any_sealed_code(
    pool: &AnyPool,
) -> Result<Option<(String, String, Vec<u8>)>, ServiceError> {
    Ok(sqlx::query_as(
        "SELECT program_id, coupon_id, code_sealed FROM coupons \
         WHERE code_sealed IS NOT NULL LIMIT 1",
    )
    .fetch_optional(pool)
    .await?)
}

/// Takes one attempt of `caller`'s budget for the window starting at
/// `window_start` if fewer than `max` are used; false when the budget is
/// spent. An attempt counts while it runs, so a burst of concurrent
/// guesses cannot pass the limit; a successful one gives its slot back
/// ([`give_back_attempt`]), a failed one keeps it.
pub async fn take_attempt(
    tx: &mut Tx,
    program_id: &str,
    caller: &str,
    window_start: i64,
    max: i64,
) -> Result<bool, ServiceError> {
    sqlx::query(
        "INSERT INTO coupon_attempt_failures (program_id, caller, window_start, failures) \
         VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING",
    )
    .bind(program_id)
    .bind(caller)
    .bind(window_start)
    .execute(&mut **tx)
    .await?;
    let done = sqlx::query(
        "UPDATE coupon_attempt_failures SET failures = failures + 1 \
         WHERE program_id = $1 AND caller = $2 AND window_start = $3 AND failures < $4",
    )
    .bind(program_id)
    .bind(caller)
    .bind(window_start)
    .bind(max)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Returns the slot of an attempt that did not fail.
pub async fn give_back_attempt(
    tx: &mut Tx,
    program_id: &str,
    caller: &str,
    window_start: i64,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE coupon_attempt_failures SET failures = failures - 1 \
         WHERE program_id = $1 AND caller = $2 AND window_start = $3 AND failures > 0",
    )
    .bind(program_id)
    .bind(caller)
    .bind(window_start)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
