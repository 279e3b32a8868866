//! Bulk population of a membership database with plain SQL (PostgreSQL
//! `generate_series`, SQLite recursive CTE), for benchmarks and for tests
//! that need more members than RPCs would enrol quickly. Members are
//! `m00000001`… (id order = number order), tiers cycle BASE, SILVER, GOLD,
//! PLATINUM, every member is due for evaluation at `due`, and member `i`
//! has one purchase of `(i % 7) * 2000.00` at `bought`.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use loyalty_common::db::{Db, Engine};

const MEMBERS_PG: &str = "INSERT INTO members (member_id, program_id, external_id, phone, email, locale, status, enrolment_channel, \
     tier_code, tier_since, next_evaluation_at, enrol_fingerprint, version, enrolled_at, updated_at) \
     SELECT 'm' || lpad(i::text, 8, '0'), $1, 'ext' || i, '+86139' || lpad(i::text, 8, '0'), 'm' || i || '@example.com', 'zh-CN', \
     'active', 'app', CASE i % 4 WHEN 0 THEN 'BASE' WHEN 1 THEN 'SILVER' WHEN 2 THEN 'GOLD' ELSE 'PLATINUM' END, \
     $2, $3, '', 1, $2, $2 FROM generate_series($4::bigint, $5::bigint) AS i";

const ACTIVITY_PG: &str = "INSERT INTO qualifying_activity (program_id, kind, source_id, member_id, amount, occurred_at) \
     SELECT $1, 'purchase', 'o' || i, 'm' || lpad(i::text, 8, '0'), (i % 7) * 200000, $2 \
     FROM generate_series($3::bigint, $4::bigint) AS i";

const MEMBERS_SQLITE: &str = "WITH RECURSIVE seq(i) AS (SELECT $4 UNION ALL SELECT i + 1 FROM seq WHERE i < $5) \
     INSERT INTO members (member_id, program_id, external_id, phone, email, locale, status, enrolment_channel, \
     tier_code, tier_since, next_evaluation_at, enrol_fingerprint, version, enrolled_at, updated_at) \
     SELECT 'm' || printf('%08d', i), $1, 'ext' || i, '+86139' || printf('%08d', i), 'm' || i || '@example.com', 'zh-CN', \
     'active', 'app', CASE i % 4 WHEN 0 THEN 'BASE' WHEN 1 THEN 'SILVER' WHEN 2 THEN 'GOLD' ELSE 'PLATINUM' END, \
     $2, $3, '', 1, $2, $2 FROM seq";

const ACTIVITY_SQLITE: &str = "WITH RECURSIVE seq(i) AS (SELECT $3 UNION ALL SELECT i + 1 FROM seq WHERE i < $4) \
     INSERT INTO qualifying_activity (program_id, kind, source_id, member_id, amount, occurred_at) \
     SELECT $1, 'purchase', 'o' || i, 'm' || printf('%08d', i), (i % 7) * 200000, $2 FROM seq";

/// Inserts members 1..=n of `program_id` (an existing program with tiers
/// BASE/SILVER/GOLD/PLATINUM), in batches of 100k rows per transaction.
pub async fn load(
    db: &Db,
    program_id: &str,
    n: i64,
    enrolled: DateTime<Utc>,
    due: DateTime<Utc>,
    bought: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let (members, activity) = match db.engine() {
        Engine::Postgres => (MEMBERS_PG, ACTIVITY_PG),
        Engine::Sqlite => (MEMBERS_SQLITE, ACTIVITY_SQLITE),
    };
    let mut from = 1;
    while from <= n {
        let to = (from + 99_999).min(n);
        let mut tx = db.begin().await?;
        sqlx::query(members)
            .bind(program_id)
            .bind(enrolled.timestamp_micros())
            .bind(due.timestamp_micros())
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        sqlx::query(activity)
            .bind(program_id)
            .bind(bought.timestamp_micros())
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        from = to + 1;
    }
    if db.engine() == Engine::Postgres {
        sqlx::query("ANALYZE").execute(db.pool()).await?;
    }
    Ok(())
}

/// The member id of number `i`.
pub fn member_id(i: i64) -> String {
    format!("m{i:08}")
}
