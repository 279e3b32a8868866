//! Storage of catalog items, stock, per-member holdings and redemption
//! orders. Stock and holdings change only by conditional updates, so that
//! concurrent redemptions can never oversell or pass a member's limit.

use loyalty_common::ServiceError;
use loyalty_common::db::Tx;
use sqlx::AnyPool;

/// A catalog item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRow {
    pub item_id: String,
    pub program_id: String,
    pub kind: String,
    pub name: String,
    pub description: String,
    pub points_cost: i64,
    pub unlimited_stock: bool,
    pub stock_remaining: i64,
    pub per_member_limit: i64,
    pub eligible_tiers: Vec<String>,
    pub valid_from: Option<i64>,
    pub valid_until: Option<i64>,
    pub coupon_pool_id: Option<String>,
    pub active: bool,
    pub created_at: i64,
}

type ItemTuple = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    i64,
    i64,
);

macro_rules! item_cols {
    () => {
        "item_id, program_id, kind, name, description, points_cost, unlimited_stock, \
         stock_remaining, per_member_limit, eligible_tiers, valid_from, valid_until, \
         coupon_pool_id, active, created_at"
    };
}

fn item(t: ItemTuple) -> ItemRow {
    ItemRow {
        item_id: t.0,
        program_id: t.1,
        kind: t.2,
        name: t.3,
        description: t.4,
        points_cost: t.5,
        unlimited_stock: t.6 != 0,
        stock_remaining: t.7,
        per_member_limit: t.8,
        eligible_tiers: t
            .9
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        valid_from: t.10,
        valid_until: t.11,
        coupon_pool_id: t.12,
        active: t.13 != 0,
        created_at: t.14,
    }
}

pub async fn insert_item(tx: &mut Tx, i: &ItemRow) -> Result<(), ServiceError> {
    sqlx::query(concat!(
        "INSERT INTO catalog_items (",
        item_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    ))
    .bind(&i.item_id)
    .bind(&i.program_id)
    .bind(&i.kind)
    .bind(&i.name)
    .bind(&i.description)
    .bind(i.points_cost)
    .bind(i64::from(i.unlimited_stock))
    .bind(i.stock_remaining)
    .bind(i.per_member_limit)
    .bind(i.eligible_tiers.join("\n"))
    .bind(i.valid_from)
    .bind(i.valid_until)
    .bind(&i.coupon_pool_id)
    .bind(i64::from(i.active))
    .bind(i.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes the fields an update may change.
pub async fn update_item(tx: &mut Tx, i: &ItemRow) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE catalog_items SET name = $1, description = $2, points_cost = $3, \
         per_member_limit = $4, eligible_tiers = $5, valid_from = $6, valid_until = $7, \
         active = $8 WHERE program_id = $9 AND item_id = $10",
    )
    .bind(&i.name)
    .bind(&i.description)
    .bind(i.points_cost)
    .bind(i.per_member_limit)
    .bind(i.eligible_tiers.join("\n"))
    .bind(i.valid_from)
    .bind(i.valid_until)
    .bind(i64::from(i.active))
    .bind(&i.program_id)
    .bind(&i.item_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn get_item_tx(
    tx: &mut Tx,
    program_id: &str,
    item_id: &str,
) -> Result<Option<ItemRow>, ServiceError> {
    let row: Option<ItemTuple> = sqlx::query_as(concat!(
        "SELECT ",
        item_cols!(),
        " FROM catalog_items WHERE program_id = $1 AND item_id = $2"
    ))
    .bind(program_id)
    .bind(item_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(item))
}

pub async fn get_item(
    pool: &AnyPool,
    program_id: &str,
    item_id: &str,
) -> Result<Option<ItemRow>, ServiceError> {
    let row: Option<ItemTuple> = sqlx::query_as(concat!(
        "SELECT ",
        item_cols!(),
        " FROM catalog_items WHERE program_id = $1 AND item_id = $2"
    ))
    .bind(program_id)
    .bind(item_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(item))
}

/// Items after `after` (item id order), active only unless asked.
pub async fn list_items(
    pool: &AnyPool,
    program_id: &str,
    include_inactive: bool,
    after: &str,
    limit: i64,
) -> Result<Vec<ItemRow>, ServiceError> {
    let rows: Vec<ItemTuple> = sqlx::query_as(concat!(
        "SELECT ",
        item_cols!(),
        " FROM catalog_items WHERE program_id = $1 AND item_id > $2 AND (active = 1 OR $3 = 1) \
         ORDER BY item_id LIMIT $4"
    ))
    .bind(program_id)
    .bind(after)
    .bind(i64::from(include_inactive))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(item).collect())
}

/// Takes `quantity` units of stock if that many remain (unlimited items
/// always succeed). The row lock of this update serialises concurrent
/// redemptions of one item.
pub async fn take_stock(
    tx: &mut Tx,
    program_id: &str,
    item_id: &str,
    quantity: i64,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE catalog_items SET stock_remaining = CASE WHEN unlimited_stock = 1 \
         THEN stock_remaining ELSE stock_remaining - $1 END \
         WHERE program_id = $2 AND item_id = $3 AND (unlimited_stock = 1 OR stock_remaining >= $1)",
    )
    .bind(quantity)
    .bind(program_id)
    .bind(item_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Adds `delta` units (negative removes) to a limited stock, never below
/// zero; false when the item is unlimited or the stock is too small.
pub async fn add_stock(
    tx: &mut Tx,
    program_id: &str,
    item_id: &str,
    delta: i64,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE catalog_items SET stock_remaining = stock_remaining + $1 \
         WHERE program_id = $2 AND item_id = $3 AND unlimited_stock = 0 AND stock_remaining + $1 >= 0",
    )
    .bind(delta)
    .bind(program_id)
    .bind(item_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Returns stock taken by a cancelled order (no-op for unlimited items).
pub async fn return_stock(
    tx: &mut Tx,
    program_id: &str,
    item_id: &str,
    quantity: i64,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE catalog_items SET stock_remaining = stock_remaining + $1 \
         WHERE program_id = $2 AND item_id = $3 AND unlimited_stock = 0",
    )
    .bind(quantity)
    .bind(program_id)
    .bind(item_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Adds `quantity` to what a member holds of an item if that stays within
/// `limit` (0 = none). The conditional update makes the limit hold under
/// concurrent redemptions by one member.
pub async fn hold(
    tx: &mut Tx,
    program_id: &str,
    item_id: &str,
    member_id: &str,
    quantity: i64,
    limit: i64,
) -> Result<bool, ServiceError> {
    sqlx::query(
        "INSERT INTO catalog_holdings (program_id, item_id, member_id, held) VALUES ($1, $2, $3, 0) \
         ON CONFLICT DO NOTHING",
    )
    .bind(program_id)
    .bind(item_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    let done = sqlx::query(
        "UPDATE catalog_holdings SET held = held + $1 \
         WHERE program_id = $2 AND item_id = $3 AND member_id = $4 AND ($5 = 0 OR held + $1 <= $5)",
    )
    .bind(quantity)
    .bind(program_id)
    .bind(item_id)
    .bind(member_id)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Releases what a cancelled order held.
pub async fn release(
    tx: &mut Tx,
    program_id: &str,
    item_id: &str,
    member_id: &str,
    quantity: i64,
) -> Result<(), ServiceError> {
    sqlx::query(
        "UPDATE catalog_holdings SET held = held - $1 \
         WHERE program_id = $2 AND item_id = $3 AND member_id = $4",
    )
    .bind(quantity)
    .bind(program_id)
    .bind(item_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The member's tier as the points core knows it from TierChanged events
/// (empty when none was assigned yet).
pub async fn member_tier(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<String, ServiceError> {
    let tier: Option<String> = sqlx::query_scalar(
        "SELECT tier FROM member_state WHERE program_id = $1 AND member_id = $2",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(tier.unwrap_or_default())
}

/// A redemption order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedemptionRow {
    pub redemption_id: String,
    pub program_id: String,
    pub member_id: String,
    pub item_id: String,
    pub quantity: i64,
    pub points: i64,
    pub state: String,
    pub coupon_id: Option<String>,
    pub debit_entry_id: String,
    pub created_at: i64,
    pub updated_at: i64,
}

type RedemptionTuple = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    String,
    Option<String>,
    String,
    i64,
    i64,
);

macro_rules! redemption_cols {
    () => {
        "redemption_id, program_id, member_id, item_id, quantity, points, state, coupon_id, \
         debit_entry_id, created_at, updated_at"
    };
}

fn redemption(t: RedemptionTuple) -> RedemptionRow {
    RedemptionRow {
        redemption_id: t.0,
        program_id: t.1,
        member_id: t.2,
        item_id: t.3,
        quantity: t.4,
        points: t.5,
        state: t.6,
        coupon_id: t.7,
        debit_entry_id: t.8,
        created_at: t.9,
        updated_at: t.10,
    }
}

pub async fn insert_redemption(tx: &mut Tx, r: &RedemptionRow) -> Result<(), ServiceError> {
    sqlx::query(concat!(
        "INSERT INTO redemptions (",
        redemption_cols!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    ))
    .bind(&r.redemption_id)
    .bind(&r.program_id)
    .bind(&r.member_id)
    .bind(&r.item_id)
    .bind(r.quantity)
    .bind(r.points)
    .bind(&r.state)
    .bind(&r.coupon_id)
    .bind(&r.debit_entry_id)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn get_redemption_tx(
    tx: &mut Tx,
    program_id: &str,
    redemption_id: &str,
) -> Result<Option<RedemptionRow>, ServiceError> {
    let row: Option<RedemptionTuple> = sqlx::query_as(concat!(
        "SELECT ",
        redemption_cols!(),
        " FROM redemptions WHERE program_id = $1 AND redemption_id = $2"
    ))
    .bind(program_id)
    .bind(redemption_id)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(redemption))
}

pub async fn get_redemption(
    pool: &AnyPool,
    program_id: &str,
    redemption_id: &str,
) -> Result<Option<RedemptionRow>, ServiceError> {
    let row: Option<RedemptionTuple> = sqlx::query_as(concat!(
        "SELECT ",
        redemption_cols!(),
        " FROM redemptions WHERE program_id = $1 AND redemption_id = $2"
    ))
    .bind(program_id)
    .bind(redemption_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(redemption))
}

/// A member's orders before `before` (newest first; empty = from the newest).
pub async fn list_redemptions(
    pool: &AnyPool,
    program_id: &str,
    member_id: &str,
    before: Option<&str>,
    limit: i64,
) -> Result<Vec<RedemptionRow>, ServiceError> {
    let rows: Vec<RedemptionTuple> = sqlx::query_as(concat!(
        "SELECT ",
        redemption_cols!(),
        " FROM redemptions WHERE program_id = $1 AND member_id = $2 \
         AND ($3 = '' OR redemption_id < $3) ORDER BY redemption_id DESC LIMIT $4"
    ))
    .bind(program_id)
    .bind(member_id)
    .bind(before.unwrap_or_default())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(redemption).collect())
}

/// Moves an order from `from` to `to`; false when it was not in `from`.
pub async fn transition(
    tx: &mut Tx,
    program_id: &str,
    redemption_id: &str,
    from: &str,
    to: &str,
    now: i64,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE redemptions SET state = $1, updated_at = $2 \
         WHERE program_id = $3 AND redemption_id = $4 AND state = $5",
    )
    .bind(to)
    .bind(now)
    .bind(program_id)
    .bind(redemption_id)
    .bind(from)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records the ledger entry that returned a cancelled order's points.
pub async fn set_reversal(
    tx: &mut Tx,
    redemption_id: &str,
    entry_id: &str,
) -> Result<(), ServiceError> {
    sqlx::query("UPDATE redemptions SET reversal_entry_id = $1 WHERE redemption_id = $2")
        .bind(entry_id)
        .bind(redemption_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
