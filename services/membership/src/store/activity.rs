//! Qualifying activity (the exact input of tier windows) and tier history.

use chrono::{DateTime, Utc};
use loyalty_common::ServiceError;
use loyalty_common::calendar::{from_micros, to_micros, to_timestamp};
use loyalty_common::db::Tx;
use loyalty_proto::loyalty::membership::v1 as pb;
use sqlx::AnyConnection;

use crate::domain::program::Metric;
use crate::domain::tiers::{Activity, ActivityKind};

/// Records an activity once per source; false when it was there already.
pub async fn record(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    kind: ActivityKind,
    source_id: &str,
    amount: i64,
    occurred_at: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO qualifying_activity (program_id, kind, source_id, member_id, amount, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(program_id)
    .bind(kind.as_str())
    .bind(source_id)
    .bind(member_id)
    .bind(amount)
    .bind(to_micros(occurred_at))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// When (and for whom) a purchase was recorded: refunds count at their
/// purchase's time, so a refund leaves the window with its purchase.
pub async fn purchase_of(
    c: &mut AnyConnection,
    program_id: &str,
    order_id: &str,
) -> Result<Option<(String, i64, DateTime<Utc>)>, ServiceError> {
    let row: Option<(String, i64, i64)> = sqlx::query_as(
        "SELECT member_id, amount, occurred_at FROM qualifying_activity WHERE program_id = $1 AND kind = 'purchase' AND source_id = $2",
    )
    .bind(program_id)
    .bind(order_id)
    .fetch_optional(c)
    .await?;
    Ok(row.map(|(m, a, t)| (m, a, from_micros(t))))
}

/// Sum of refunds already recorded against an order (they are keyed
/// `<order>/<refund>`).
pub async fn refunded_of(
    c: &mut AnyConnection,
    program_id: &str,
    order_id: &str,
) -> Result<i64, ServiceError> {
    let prefix = format!("{order_id}/");
    Ok(sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM qualifying_activity \
         WHERE program_id = $1 AND kind = 'refund' AND substr(source_id, 1, length($2)) = $2",
    )
    .bind(program_id)
    .bind(prefix)
    .fetch_one(c)
    .await?)
}

/// The qualifying value of a member in `[from, to)`, computed in SQL.
pub async fn value(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
    metric: Metric,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, ServiceError> {
    let sql = match metric {
        Metric::Spend => {
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM qualifying_activity \
             WHERE program_id = $1 AND member_id = $2 AND occurred_at >= $3 AND occurred_at < $4 AND kind IN ('purchase', 'refund')"
        }
        Metric::Points => {
            "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM qualifying_activity \
             WHERE program_id = $1 AND member_id = $2 AND occurred_at >= $3 AND occurred_at < $4 AND kind = 'points'"
        }
        Metric::OrderCount => {
            "SELECT CAST(COUNT(*) AS BIGINT) FROM qualifying_activity \
             WHERE program_id = $1 AND member_id = $2 AND occurred_at >= $3 AND occurred_at < $4 AND kind = 'purchase'"
        }
    };
    let v: i64 = sqlx::query_scalar(sql)
        .bind(program_id)
        .bind(member_id)
        .bind(to_micros(from))
        .bind(to_micros(to))
        .fetch_one(c)
        .await?;
    Ok(v.max(0))
}

/// Activity of the members in `(after, last]` of a program since `from`
/// (one chunk of the evaluation job), ordered by member.
pub async fn of_member_range(
    c: &mut AnyConnection,
    program_id: &str,
    after: &str,
    last: &str,
    from: DateTime<Utc>,
) -> Result<Vec<(String, Activity)>, ServiceError> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT member_id, kind, amount, occurred_at FROM qualifying_activity \
         WHERE program_id = $1 AND member_id > $2 AND member_id <= $3 AND occurred_at >= $4 ORDER BY member_id",
    )
    .bind(program_id)
    .bind(after)
    .bind(last)
    .bind(to_micros(from))
    .fetch_all(c)
    .await?;
    rows.into_iter()
        .map(|(m, kind, amount, at)| {
            let kind = ActivityKind::parse(&kind)
                .ok_or_else(|| super::decode_err("activity kind", &kind))?;
            Ok((
                m,
                Activity {
                    kind,
                    amount,
                    occurred_at: from_micros(at),
                },
            ))
        })
        .collect()
}

/// Every activity of a member, oldest first (for the export).
pub async fn all_of(
    c: &mut AnyConnection,
    program_id: &str,
    member_id: &str,
) -> Result<Vec<pb::QualifyingActivity>, ServiceError> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT kind, source_id, amount, occurred_at FROM qualifying_activity \
         WHERE program_id = $1 AND member_id = $2 ORDER BY occurred_at, source_id",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_all(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(kind, source_id, amount, at)| pb::QualifyingActivity {
            kind,
            source_id,
            amount,
            occurred_at: Some(to_timestamp(from_micros(at))),
        })
        .collect())
}

/// Appends a tier change to the member's history.
pub async fn record_tier_change(
    tx: &mut Tx,
    member_id: &str,
    from: &str,
    to: &str,
    reason: &str,
    value: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tier_history (member_id, from_tier, to_tier, reason, qualifying_value, changed_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(member_id)
    .bind(from)
    .bind(to)
    .bind(reason)
    .bind(value)
    .bind(to_micros(at))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Tier history, newest first, before sequence `before` (paging cursor).
pub async fn tier_history(
    c: &mut AnyConnection,
    member_id: &str,
    before: i64,
    limit: i64,
) -> Result<Vec<(i64, pb::TierChange)>, ServiceError> {
    let rows: Vec<(i64, String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT seq, from_tier, to_tier, reason, qualifying_value, changed_at FROM tier_history \
         WHERE member_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
    )
    .bind(member_id)
    .bind(before)
    .bind(limit)
    .fetch_all(c)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, from_tier, to_tier, reason, qualifying_value, at)| {
            (
                seq,
                pb::TierChange {
                    from_tier,
                    to_tier,
                    reason,
                    qualifying_value,
                    changed_at: Some(to_timestamp(from_micros(at))),
                },
            )
        })
        .collect())
}
