//! Programs: the validated definition stored whole, with its version.

use chrono::{DateTime, Utc};
use loyalty_common::calendar::{ProgramTz, from_micros, to_micros, to_timestamp};
use loyalty_common::db::Tx;
use loyalty_common::money::Currency;
use loyalty_common::{ServiceError, Violations};
use loyalty_proto::loyalty::membership::v1 as pb;
use prost::Message;
use sqlx::AnyConnection;

use crate::domain::program::{TierRules, check_id, parse_tier_rules};

/// A program as the service uses it.
#[derive(Debug, Clone)]
pub struct ProgramRecord {
    /// The definition as stored, with version and timestamps filled in.
    pub proto: pb::Program,
    pub rules: TierRules,
    pub tz: ProgramTz,
    pub currency: Currency,
}

/// Validates a program definition from a request (`program.*` paths).
pub fn validate(p: &pb::Program) -> Result<(TierRules, ProgramTz, Currency), ServiceError> {
    let mut v = Violations::new();
    v.check("program.program_id", check_id(&p.program_id));
    if p.name.trim().is_empty() || p.name.chars().count() > 100 {
        v.add("program.name", "must have 1 to 100 characters");
    }
    let currency = v.check("program.currency", Currency::parse(&p.currency));
    let tz = match ProgramTz::parse("program.time_zone", &p.time_zone) {
        Ok(tz) => Some(tz),
        Err(ServiceError::InvalidArgument(fv)) => {
            for f in fv {
                v.add(f.field, f.description);
            }
            None
        }
        Err(e) => return Err(e),
    };
    let rules = parse_tier_rules(p, &mut v);
    v.finish()?;
    match (rules, tz, currency) {
        (Some(rules), Some(tz), Some(currency)) => Ok((rules, tz, currency)),
        _ => Err(ServiceError::invalid("program", "is invalid")),
    }
}

/// The definition part of a program (what makes two creates "the same").
pub fn definition(p: &pb::Program) -> pb::Program {
    pb::Program {
        version: 0,
        created_at: None,
        updated_at: None,
        ..p.clone()
    }
}

/// A program from its stored columns.
pub(crate) fn record(
    bytes: &[u8],
    version: i64,
    created: i64,
    updated: i64,
) -> Result<ProgramRecord, ServiceError> {
    let mut proto = pb::Program::decode(bytes).map_err(|e| super::decode_err("program", e))?;
    let (rules, tz, currency) = validate(&proto).map_err(|e| super::decode_err("program", e))?;
    proto.version = version;
    proto.created_at = Some(to_timestamp(from_micros(created)));
    proto.updated_at = Some(to_timestamp(from_micros(updated)));
    Ok(ProgramRecord {
        proto,
        rules,
        tz,
        currency,
    })
}

pub async fn get(
    c: &mut AnyConnection,
    program_id: &str,
) -> Result<Option<ProgramRecord>, ServiceError> {
    let row: Option<(Vec<u8>, i64, i64, i64)> = sqlx::query_as(
        "SELECT definition, version, created_at, updated_at FROM programs WHERE program_id = $1",
    )
    .bind(program_id)
    .fetch_optional(c)
    .await?;
    row.map(|(b, v, cr, up)| record(&b, v, cr, up)).transpose()
}

/// The program, or NOT_FOUND.
pub async fn require(
    c: &mut AnyConnection,
    program_id: &str,
) -> Result<ProgramRecord, ServiceError> {
    get(c, program_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("program", program_id))
}

/// Inserts a new program; false when the id is taken.
pub async fn insert(
    tx: &mut Tx,
    p: &pb::Program,
    now: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "INSERT INTO programs (program_id, definition, version, created_at, updated_at) \
         VALUES ($1, $2, 1, $3, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&p.program_id)
    .bind(definition(p).encode_to_vec())
    .bind(to_micros(now))
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Replaces the definition if the version is still `version`.
pub async fn update(
    tx: &mut Tx,
    p: &pb::Program,
    version: i64,
    now: DateTime<Utc>,
) -> Result<bool, ServiceError> {
    let done = sqlx::query(
        "UPDATE programs SET definition = $1, version = version + 1, updated_at = $2 \
         WHERE program_id = $3 AND version = $4",
    )
    .bind(definition(p).encode_to_vec())
    .bind(to_micros(now))
    .bind(&p.program_id)
    .bind(version)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ids of every program, in order (the evaluation job walks them).
pub async fn next_program_after(
    c: &mut AnyConnection,
    after: &str,
) -> Result<Option<String>, ServiceError> {
    Ok(sqlx::query_scalar(
        "SELECT program_id FROM programs WHERE program_id > $1 ORDER BY program_id LIMIT 1",
    )
    .bind(after)
    .fetch_optional(c)
    .await?)
}
