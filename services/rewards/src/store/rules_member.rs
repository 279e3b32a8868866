//! What the rules engine knows of each member (tier and multiplier from
//! TierChanged, purchase count, check-in streak) and what each rule gave
//! them per local day (caps).

use chrono::NaiveDate;
use loyalty_common::ServiceError;
use std::collections::HashMap;

use loyalty_common::db::{JsonType, Tx, engine_of, json_rows};

use crate::domain::earning_rules::{Application, CapPeriod, CapUsage};

/// A member as the rules engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberState {
    pub tier: String,
    pub multiplier_bp: i64,
    pub purchase_count: i64,
    pub last_check_in: Option<NaiveDate>,
    pub streak_days: u32,
}

async fn ensure(tx: &mut Tx, program_id: &str, member_id: &str) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO member_state (program_id, member_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(program_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The member's state (defaults for a member never seen).
pub(crate) async fn load(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<MemberState, ServiceError> {
    let row: Option<(String, i64, i64, String, i64)> = sqlx::query_as(
        "SELECT tier, multiplier_bp, purchase_count, last_check_in, streak_days FROM member_state \
         WHERE program_id = $1 AND member_id = $2",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_optional(&mut **tx)
    .await?;
    let (tier, multiplier_bp, purchase_count, last, streak) =
        row.unwrap_or((String::new(), 10_000, 0, String::new(), 0));
    Ok(MemberState {
        tier,
        multiplier_bp,
        purchase_count,
        last_check_in: NaiveDate::parse_from_str(&last, "%Y-%m-%d").ok(),
        streak_days: u32::try_from(streak).unwrap_or(0),
    })
}

/// Records the member's tier (from TierChanged).
pub(crate) async fn set_tier(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    tier: &str,
    multiplier_bp: i64,
) -> Result<(), ServiceError> {
    ensure(tx, program_id, member_id).await?;
    sqlx::query(
        "UPDATE member_state SET tier = $1, multiplier_bp = $2 WHERE program_id = $3 AND member_id = $4",
    )
    .bind(tier)
    .bind(if multiplier_bp > 0 { multiplier_bp } else { 10_000 })
    .bind(program_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Counts one more purchase of each member (each at most once) and
/// answers their states after that, by (program, member): one statement,
/// the rows stay locked until commit.
pub(crate) async fn count_purchases_returning(
    tx: &mut Tx,
    members: &[(&str, &str)],
) -> Result<HashMap<(String, String), MemberState>, ServiceError> {
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[
            ("program_id", JsonType::Text),
            ("member_id", JsonType::Text),
        ],
    );
    let json = serde_json::Value::Array(
        members
            .iter()
            .map(|(p, m)| serde_json::json!({"program_id": p, "member_id": m}))
            .collect(),
    );
    let rows: Vec<(String, String, String, i64, i64, String, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO member_state (program_id, member_id, purchase_count) \
             SELECT r.program_id, r.member_id, 1 FROM {rows} WHERE true \
             ON CONFLICT (program_id, member_id) DO UPDATE SET purchase_count = member_state.purchase_count + 1 \
             RETURNING program_id, member_id, tier, multiplier_bp, purchase_count, last_check_in, streak_days"
        )))
        .bind(json.to_string())
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(p, m, tier, multiplier_bp, purchase_count, last, streak)| {
                let state = MemberState {
                    tier,
                    multiplier_bp,
                    purchase_count,
                    last_check_in: NaiveDate::parse_from_str(&last, "%Y-%m-%d").ok(),
                    streak_days: u32::try_from(streak).unwrap_or(0),
                };
                ((p, m), state)
            },
        )
        .collect())
}

/// Records a check-in day and the streak it makes.
pub(crate) async fn set_check_in(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    day: NaiveDate,
    streak: u32,
) -> Result<(), ServiceError> {
    ensure(tx, program_id, member_id).await?;
    sqlx::query(
        "UPDATE member_state SET last_check_in = $1, streak_days = $2 WHERE program_id = $3 AND member_id = $4",
    )
    .bind(day.format("%Y-%m-%d").to_string())
    .bind(i64::from(streak))
    .bind(program_id)
    .bind(member_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn day_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// What capped rules already gave the member: today, this local month, ever.
pub(crate) async fn cap_usage(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    today: NaiveDate,
) -> Result<CapUsage, ServiceError> {
    let mut usage = cap_usage_of(tx, &[(program_id, member_id, today)]).await?;
    Ok(usage
        .remove(&(program_id.to_owned(), member_id.to_owned()))
        .unwrap_or_default())
}

/// [`cap_usage`] of several members (each with its own local day) in one
/// statement. Members without awards are absent from the answer.
pub(crate) async fn cap_usage_of(
    tx: &mut Tx,
    members: &[(&str, &str, NaiveDate)],
) -> Result<HashMap<(String, String), CapUsage>, ServiceError> {
    if members.is_empty() {
        return Ok(HashMap::new());
    }
    let engine = engine_of(tx);
    let text = JsonType::Text;
    let rows = json_rows(
        engine,
        1,
        "r",
        &[
            ("program_id", text),
            ("member_id", text),
            ("today", text),
            ("month_start", text),
        ],
    );
    let sums = "t.rule_id, \
         CAST(COALESCE(SUM(CASE WHEN t.local_day = r.today THEN t.points ELSE 0 END), 0) AS BIGINT) AS day, \
         CAST(COALESCE(SUM(CASE WHEN t.local_day >= r.month_start AND t.local_day <= r.today \
         THEN t.points ELSE 0 END), 0) AS BIGINT) AS month, \
         CAST(COALESCE(SUM(t.points), 0) AS BIGINT) AS ever";
    let on = "t.program_id = r.program_id AND t.member_id = r.member_id";
    let sql = match engine {
        // a lateral probe per member, whatever the planner thinks of the
        // table's size
        loyalty_common::db::Engine::Postgres => format!(
            "SELECT r.program_id, r.member_id, a.rule_id, a.day, a.month, a.ever FROM {rows} \
             CROSS JOIN LATERAL (SELECT {sums} FROM rule_awards t WHERE {on} GROUP BY t.rule_id) a"
        ),
        loyalty_common::db::Engine::Sqlite => format!(
            "SELECT r.program_id, r.member_id, {sums} FROM {rows} JOIN rule_awards t ON {on} \
             GROUP BY r.program_id, r.member_id, t.rule_id"
        ),
    };
    let json = serde_json::Value::Array(
        members
            .iter()
            .map(|(p, m, today)| {
                serde_json::json!({
                    "program_id": p, "member_id": m, "today": day_text(*today),
                    "month_start": format!("{}-01", today.format("%Y-%m")),
                })
            })
            .collect(),
    );
    let found: Vec<(String, String, String, i64, i64, i64)> =
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(json.to_string())
            .fetch_all(&mut **tx)
            .await?;
    let mut usage: HashMap<(String, String), CapUsage> = HashMap::new();
    for (program, member, rule, day, month, ever) in found {
        let u = usage.entry((program, member)).or_default();
        u.0.insert((rule.clone(), CapPeriod::Day), day);
        u.0.insert((rule.clone(), CapPeriod::Month), month);
        u.0.insert((rule, CapPeriod::Lifetime), ever);
    }
    Ok(usage)
}

/// Records what each rule (not base/tier) gave today.
pub(crate) async fn record_awards(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    today: NaiveDate,
    applications: &[Application],
) -> Result<(), ServiceError> {
    record_awards_of(tx, &[(program_id, member_id, today, applications)]).await
}

/// [`record_awards`] of several purchases (of distinct members) in one
/// statement.
pub(crate) async fn record_awards_of(
    tx: &mut Tx,
    awards: &[(&str, &str, NaiveDate, &[Application])],
) -> Result<(), ServiceError> {
    let json: Vec<serde_json::Value> = awards
        .iter()
        .flat_map(|(program_id, member_id, today, applications)| {
            let day = day_text(*today);
            applications
                .iter()
                .filter(|a| a.version > 0 && a.points > 0)
                .map(move |a| {
                    serde_json::json!({
                        "program_id": program_id, "member_id": member_id,
                        "rule_id": a.rule_id, "local_day": day, "points": a.points,
                    })
                })
        })
        .collect();
    if json.is_empty() {
        return Ok(());
    }
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[
            ("program_id", JsonType::Text),
            ("member_id", JsonType::Text),
            ("rule_id", JsonType::Text),
            ("local_day", JsonType::Text),
            ("points", JsonType::BigInt),
        ],
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO rule_awards (program_id, member_id, rule_id, local_day, points) \
         SELECT r.program_id, r.member_id, r.rule_id, r.local_day, r.points FROM {rows} WHERE true \
         ON CONFLICT (program_id, member_id, rule_id, local_day) DO UPDATE SET points = rule_awards.points + excluded.points"
    )))
    .bind(serde_json::Value::Array(json).to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
