//! Storage of partner definitions, per-period usage and transfers. Usage
//! grows only by conditional updates, so concurrent exchanges never pass a
//! limit.

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use sqlx::AnyPool;

/// A partner as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRow {
    pub program_id: String,
    pub code: String,
    pub name: String,
    pub unit_name: String,
    pub rate_out: Option<(i64, i64)>,
    pub rate_in: Option<(i64, i64)>,
    pub limit_period: String,
    pub member_limit_out: i64,
    pub member_limit_in: i64,
    pub program_limit_out: i64,
    pub program_limit_in: i64,
    pub created_at: i64,
}

type PartnerTuple = (
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
);

macro_rules! partner_cols {
    () => {
        "program_id, code, name, unit_name, out_from, out_to, in_from, in_to, limit_period, \
         member_limit_out, member_limit_in, program_limit_out, program_limit_in, created_at"
    };
}

fn partner(t: PartnerTuple) -> PartnerRow {
    PartnerRow {
        program_id: t.0,
        code: t.1,
        name: t.2,
        unit_name: t.3,
        rate_out: t.4.zip(t.5),
        rate_in: t.6.zip(t.7),
        limit_period: t.8,
        member_limit_out: t.9,
        member_limit_in: t.10,
        program_limit_out: t.11,
        program_limit_in: t.12,
        created_at: t.13,
    }
}

/// Inserts a partner; false when the code exists already.
pub async fn insert_partner(tx: &mut Tx, p: &PartnerRow) -> Result<bool, ServiceError> {
    let done = sqlx::query(concat!(
        "INSERT INTO partners (",
        partner_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING"
    ))
    .bind(&p.program_id)
    .bind(&p.code)
    .bind(&p.name)
    .bind(&p.unit_name)
    .bind(p.rate_out.map(|r| r.0))
    .bind(p.rate_out.map(|r| r.1))
    .bind(p.rate_in.map(|r| r.0))
    .bind(p.rate_in.map(|r| r.1))
    .bind(&p.limit_period)
    .bind(p.member_limit_out)
    .bind(p.member_limit_in)
    .bind(p.program_limit_out)
    .bind(p.program_limit_in)
    .bind(p.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_partner(
    tx: &mut Tx,
    program_id: &str,
    code: &str,
) -> Result<Option<PartnerRow>, ServiceError> {
    let row: Option<PartnerTuple> = sqlx::query_as(concat!(
        "SELECT ",
        partner_cols!(),
        " FROM partners WHERE program_id = $1 AND code = $2"
    ))
    .bind(program_id)
    .bind(code)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(partner))
}

pub async fn list_partners(
    db: &AnyPool,
    program_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<PartnerRow>, ServiceError> {
    let rows: Vec<PartnerTuple> = sqlx::query_as(concat!(
        "SELECT ",
        partner_cols!(),
        " FROM partners WHERE program_id = $1 AND code > $2 ORDER BY code LIMIT $3"
    ))
    .bind(program_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(partner).collect())
}

/// One usage counter: partner, direction, scope (member id or `*` for the
/// whole program) and period.
#[derive(Debug, Clone, Copy)]
pub struct UsageKey<'a> {
    pub program_id: &'a str,
    pub partner_code: &'a str,
    pub direction: &'a str,
    pub scope: &'a str,
    pub period_key: &'a str,
}

/// Adds `amount` to a usage counter if it stays within `limit` (0 = none);
/// false otherwise. The row lock of the update serialises racing exchanges.
pub async fn use_allowance(
    tx: &mut Tx,
    k: UsageKey<'_>,
    amount: i64,
    limit: i64,
) -> Result<bool, ServiceError> {
    sqlx::query(
        "INSERT INTO partner_usage (program_id, partner_code, direction, scope, period_key, used) \
         VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT DO NOTHING",
    )
    .bind(k.program_id)
    .bind(k.partner_code)
    .bind(k.direction)
    .bind(k.scope)
    .bind(k.period_key)
    .execute(&mut **tx)
    .await?;
    let done = sqlx::query(
        "UPDATE partner_usage SET used = used + $1 WHERE program_id = $2 AND partner_code = $3 \
         AND direction = $4 AND scope = $5 AND period_key = $6 AND ($7 = 0 OR used + $1 <= $7)",
    )
    .bind(amount)
    .bind(k.program_id)
    .bind(k.partner_code)
    .bind(k.direction)
    .bind(k.scope)
    .bind(k.period_key)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// A transfer as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRow {
    pub transfer_id: String,
    pub program_id: String,
    pub member_id: String,
    pub partner_code: String,
    pub direction: String,
    pub points: i64,
    pub partner_units: i64,
    pub partner_reference: String,
    pub entry_id: String,
    pub created_at: i64,
}

type TransferTuple = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    String,
    i64,
);

macro_rules! transfer_cols {
    () => {
        "transfer_id, program_id, member_id, partner_code, direction, points, partner_units, \
         partner_reference, entry_id, created_at"
    };
}

fn transfer(t: TransferTuple) -> TransferRow {
    TransferRow {
        transfer_id: t.0,
        program_id: t.1,
        member_id: t.2,
        partner_code: t.3,
        direction: t.4,
        points: t.5,
        partner_units: t.6,
        partner_reference: t.7,
        entry_id: t.8,
        created_at: t.9,
    }
}

pub async fn insert_transfer(tx: &mut Tx, t: &TransferRow) -> Result<(), ServiceError> {
    sqlx::query(concat!(
        "INSERT INTO partner_transfers (",
        transfer_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    ))
    .bind(&t.transfer_id)
    .bind(&t.program_id)
    .bind(&t.member_id)
    .bind(&t.partner_code)
    .bind(&t.direction)
    .bind(t.points)
    .bind(t.partner_units)
    .bind(&t.partner_reference)
    .bind(&t.entry_id)
    .bind(t.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn list_transfers(
    db: &AnyPool,
    program_id: &str,
    member_id: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<TransferRow>, ServiceError> {
    let rows: Vec<TransferTuple> = sqlx::query_as(concat!(
        "SELECT ",
        transfer_cols!(),
        " FROM partner_transfers WHERE program_id = $1 AND member_id = $2 \
         AND ($3 = '' OR transfer_id < $3) ORDER BY transfer_id DESC LIMIT $4"
    ))
    .bind(program_id)
    .bind(member_id)
    .bind(before.unwrap_or_default())
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(transfer).collect())
}
