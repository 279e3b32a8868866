//! Storage of earning rules: every version is kept (what an order earned
//! stays explainable); the latest version of each rule is the one in force.

use loyalty_common::ServiceError;
use loyalty_common::db::{Tx, now_micros};
use loyalty_common::paging::Page;
use loyalty_proto::loyalty::rewards::v1 as pb;
use prost::Message;
use sqlx::{Any, Executor};

use crate::domain::earning_rules::{Rule, rule_from_proto};

fn decode(bytes: &[u8]) -> Result<pb::EarningRule, ServiceError> {
    pb::EarningRule::decode(bytes).map_err(ServiceError::internal)
}

async fn insert(tx: &mut Tx, rule: &pb::EarningRule) -> Result<(), ServiceError> {
    sqlx::query(
        "INSERT INTO earning_rules (program_id, rule_id, version, enabled, definition, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&rule.program_id)
    .bind(&rule.rule_id)
    .bind(rule.version)
    .bind(i64::from(rule.enabled))
    .bind(rule.encode_to_vec())
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Validates and stores a new rule as version 1 with a fresh id.
pub(crate) async fn create(
    tx: &mut Tx,
    mut rule: pb::EarningRule,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<pb::EarningRule, ServiceError> {
    rule.rule_id = uuid::Uuid::now_v7().to_string();
    rule.version = 1;
    rule.created_at = Some(loyalty_common::calendar::to_timestamp(now));
    rule_from_proto(&rule)?;
    insert(tx, &rule).await?;
    Ok(rule)
}

/// The latest version number of a rule (NOT_FOUND when unknown).
async fn latest_version(tx: &mut Tx, program_id: &str, rule_id: &str) -> Result<i64, ServiceError> {
    let v: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(version) FROM earning_rules WHERE program_id = $1 AND rule_id = $2",
    )
    .bind(program_id)
    .bind(rule_id)
    .fetch_one(&mut **tx)
    .await?;
    v.ok_or_else(|| ServiceError::not_found("earning rule", rule_id))
}

/// Stores `rule` as the next version; `rule.version` must be the current
/// one (FAILED_PRECONDITION otherwise: someone else changed it).
pub(crate) async fn update(
    tx: &mut Tx,
    mut rule: pb::EarningRule,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<pb::EarningRule, ServiceError> {
    let current = latest_version(tx, &rule.program_id, &rule.rule_id).await?;
    if rule.version != current {
        return Err(ServiceError::precondition(format!(
            "rule {} is at version {current}, not {}: read it again and retry",
            rule.rule_id, rule.version
        )));
    }
    rule.version = current + 1;
    rule.created_at = Some(loyalty_common::calendar::to_timestamp(now));
    rule_from_proto(&rule)?;
    insert(tx, &rule).await?;
    Ok(rule)
}

/// Retires a rule: a new, disabled version.
pub(crate) async fn retire(
    tx: &mut Tx,
    program_id: &str,
    rule_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<pb::EarningRule, ServiceError> {
    let current = latest_version(tx, program_id, rule_id).await?;
    let bytes: Vec<u8> = sqlx::query_scalar(
        "SELECT definition FROM earning_rules WHERE program_id = $1 AND rule_id = $2 AND version = $3",
    )
    .bind(program_id)
    .bind(rule_id)
    .bind(current)
    .fetch_one(&mut **tx)
    .await?;
    let mut rule = decode(&bytes)?;
    rule.version = current + 1;
    rule.enabled = false;
    rule.created_at = Some(loyalty_common::calendar::to_timestamp(now));
    insert(tx, &rule).await?;
    Ok(rule)
}

/// One version of a rule (0: the latest).
pub(crate) async fn get<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    program_id: &str,
    rule_id: &str,
    version: i64,
) -> Result<pb::EarningRule, ServiceError> {
    let bytes: Option<Vec<u8>> = sqlx::query_scalar(
        "SELECT definition FROM earning_rules WHERE program_id = $1 AND rule_id = $2 \
         AND ($3 = 0 OR version = $3) ORDER BY version DESC LIMIT 1",
    )
    .bind(program_id)
    .bind(rule_id)
    .bind(version)
    .fetch_optional(ex)
    .await?;
    bytes
        .as_deref()
        .map(decode)
        .transpose()?
        .ok_or_else(|| ServiceError::not_found("earning rule", rule_id))
}

const LATEST: &str = "SELECT r.rule_id, r.definition FROM earning_rules r WHERE r.program_id = $1 \
     AND r.version = (SELECT MAX(x.version) FROM earning_rules x WHERE x.program_id = r.program_id AND x.rule_id = r.rule_id)";

/// The latest version of each rule, by rule id, one page.
pub(crate) async fn list<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    program_id: &str,
    page: &Page,
) -> Result<Vec<pb::EarningRule>, ServiceError> {
    let sql = format!("{LATEST} AND r.rule_id > $2 ORDER BY r.rule_id LIMIT $3");
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .bind(page.after.clone().unwrap_or_default())
        .bind(page.fetch_limit())
        .fetch_all(ex)
        .await?;
    rows.iter().map(|(_, b)| decode(b)).collect()
}

/// The rules in force (latest version of each, enabled), parsed.
pub(crate) async fn in_force<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    program_id: &str,
) -> Result<Vec<Rule>, ServiceError> {
    let sql = format!("{LATEST} AND r.enabled = 1");
    let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(program_id)
        .fetch_all(ex)
        .await?;
    rows.iter()
        .map(|(_, b)| rule_from_proto(&decode(b)?))
        .collect()
}
