//! Storage of badge definitions, member counters and awarded badges.

use std::collections::{HashMap, HashSet};

use loyalty_common::ServiceError;
use loyalty_common::db::{JsonType, Tx, engine_of, json_rows};
use sqlx::AnyPool;

use super::rules::{Condition, Counter, Counters};

/// A badge definition as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadgeRow {
    pub program_id: String,
    pub code: String,
    pub name: String,
    pub description: String,
    pub conditions: Vec<Condition>,
    pub created_at: i64,
}

type BadgeTuple = (String, String, String, String, String, i64);

/// Conditions as stored: `counter>=n`, one per line.
pub fn encode_conditions(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| format!("{}>={}", c.counter.as_str(), c.at_least))
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_conditions(text: &str) -> Vec<Condition> {
    text.lines()
        .filter_map(|l| {
            let (counter, n) = l.split_once(">=")?;
            Some(Condition {
                counter: Counter::parse(counter)?,
                at_least: n.parse().ok()?,
            })
        })
        .collect()
}

fn badge(t: BadgeTuple) -> BadgeRow {
    BadgeRow {
        program_id: t.0,
        code: t.1,
        name: t.2,
        description: t.3,
        conditions: decode_conditions(&t.4),
        created_at: t.5,
    }
}

/// Inserts a definition; false when the code exists already.
pub async fn insert_badge(tx: &mut Tx, b: &BadgeRow) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "INSERT INTO badges (program_id, code, name, description, conditions, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&b.program_id)
    .bind(&b.code)
    .bind(&b.name)
    .bind(&b.description)
    .bind(encode_conditions(&b.conditions))
    .bind(b.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_badge(
    tx: &mut Tx,
    program_id: &str,
    code: &str,
) -> Result<Option<BadgeRow>, ServiceError> {
    let row: Option<BadgeTuple> = sqlx::query_as(
        "SELECT program_id, code, name, description, conditions, created_at FROM badges \
         WHERE program_id = $1 AND code = $2",
    )
    .bind(program_id)
    .bind(code)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(badge))
}

pub async fn list_badges(
    db: &AnyPool,
    program_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<BadgeRow>, ServiceError> {
    let rows: Vec<BadgeTuple> = sqlx::query_as(
        "SELECT program_id, code, name, description, conditions, created_at FROM badges \
         WHERE program_id = $1 AND code > $2 ORDER BY code LIMIT $3",
    )
    .bind(program_id)
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(badge).collect())
}

/// Every definition of a program (evaluated on each counted event).
pub async fn all_badges(tx: &mut Tx, program_id: &str) -> Result<Vec<BadgeRow>, ServiceError> {
    let rows: Vec<BadgeTuple> = sqlx::query_as(
        "SELECT program_id, code, name, description, conditions, created_at FROM badges \
         WHERE program_id = $1 ORDER BY code",
    )
    .bind(program_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(badge).collect())
}

/// A member's fact to count: (program, member, fact).
pub type Fact<'a> = (&'a str, &'a str, &'a str);

/// Records facts as counted (one statement however many); answers those
/// recorded now, i.e. not counted before. A fact given twice is recorded
/// once.
pub async fn count_facts(
    tx: &mut Tx,
    facts: &[Fact<'_>],
) -> Result<HashSet<(String, String, String)>, ServiceError> {
    if facts.is_empty() {
        return Ok(HashSet::new());
    }
    let text = JsonType::Text;
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[("program_id", text), ("member_id", text), ("fact", text)],
    );
    let json = serde_json::Value::Array(
        facts
            .iter()
            .map(|(p, m, f)| serde_json::json!({"program_id": p, "member_id": m, "fact": f}))
            .collect(),
    );
    // `WHERE true`: SQLite would read ON CONFLICT as a join's ON otherwise
    let counted: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO badge_counted_facts (program_id, member_id, fact) \
         SELECT r.program_id, r.member_id, r.fact FROM {rows} WHERE true \
         ON CONFLICT DO NOTHING RETURNING program_id, member_id, fact"
    )))
    .bind(json.to_string())
    .fetch_all(&mut **tx)
    .await?;
    Ok(counted.into_iter().collect())
}

/// Adds to members' counters (`best_streak` raises the best streak), one
/// statement for all, and answers them after the change. The members must
/// be distinct.
pub async fn bump_all(
    tx: &mut Tx,
    adds: &[((&str, &str), Counters)],
) -> Result<HashMap<(String, String), Counters>, ServiceError> {
    if adds.is_empty() {
        return Ok(HashMap::new());
    }
    let (text, int) = (JsonType::Text, JsonType::BigInt);
    let rows = json_rows(
        engine_of(tx),
        1,
        "r",
        &[
            ("program_id", text),
            ("member_id", text),
            ("purchases", int),
            ("reviews", int),
            ("check_ins", int),
            ("best_streak", int),
        ],
    );
    let json = serde_json::Value::Array(
        adds.iter()
            .map(|((p, m), c)| {
                serde_json::json!({
                    "program_id": p, "member_id": m, "purchases": c.purchases,
                    "reviews": c.reviews, "check_ins": c.check_ins, "best_streak": c.best_streak,
                })
            })
            .collect(),
    );
    // a member's first count creates the row
    let rows: Vec<(String, String, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO badge_counters (program_id, member_id, purchases, reviews, check_ins, best_streak) \
         SELECT r.program_id, r.member_id, r.purchases, r.reviews, r.check_ins, r.best_streak \
         FROM {rows} WHERE true ON CONFLICT (program_id, member_id) DO UPDATE SET \
         purchases = badge_counters.purchases + excluded.purchases, \
         reviews = badge_counters.reviews + excluded.reviews, \
         check_ins = badge_counters.check_ins + excluded.check_ins, \
         best_streak = CASE WHEN badge_counters.best_streak < excluded.best_streak \
         THEN excluded.best_streak ELSE badge_counters.best_streak END \
         RETURNING program_id, member_id, purchases, reviews, check_ins, best_streak"
    )))
    .bind(json.to_string())
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p, m, purchases, reviews, check_ins, best_streak)| {
            (
                (p, m),
                Counters {
                    purchases,
                    reviews,
                    check_ins,
                    best_streak,
                },
            )
        })
        .collect())
}

/// Codes of the badges a member holds.
pub async fn held(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
) -> Result<Vec<String>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT code FROM member_badges WHERE program_id = $1 AND member_id = $2",
    )
    .bind(program_id)
    .bind(member_id)
    .fetch_all(&mut **tx)
    .await?)
}

/// Awards a badge; false when the member holds it already.
pub async fn award(
    tx: &mut Tx,
    program_id: &str,
    member_id: &str,
    code: &str,
    now: i64,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "INSERT INTO member_badges (program_id, member_id, code, awarded_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(code)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// An awarded badge with its definition, for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwardRow {
    pub code: String,
    pub name: String,
    pub description: String,
    pub awarded_at: i64,
}

/// A member's badges, newest first; the cursor is `awarded_at/code`.
pub async fn list_awards(
    db: &AnyPool,
    program_id: &str,
    member_id: &str,
    before: Option<(i64, String)>,
    limit: i64,
) -> Result<Vec<AwardRow>, ServiceError> {
    let (at, code) = before.unwrap_or((i64::MAX, String::new()));
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT m.code, b.name, b.description, m.awarded_at FROM member_badges m \
         JOIN badges b ON b.program_id = m.program_id AND b.code = m.code \
         WHERE m.program_id = $1 AND m.member_id = $2 \
         AND (m.awarded_at < $3 OR (m.awarded_at = $3 AND m.code < $4)) \
         ORDER BY m.awarded_at DESC, m.code DESC LIMIT $5",
    )
    .bind(program_id)
    .bind(member_id)
    .bind(at)
    .bind(code)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(code, name, description, awarded_at)| AwardRow {
            code,
            name,
            description,
            awarded_at,
        })
        .collect())
}
