//! Storage of each program's points policy (versioned; defaults until set).

use loyalty_common::ServiceError;
use loyalty_common::db::{Tx, now_micros};
use loyalty_proto::loyalty::rewards::v1 as pb;
use prost::Message;
use sqlx::{Any, Executor};

use crate::domain::expiry::PointsPolicy;

/// The program's policy, or the default one when none was set.
pub(crate) async fn load<'e, E: Executor<'e, Database = Any>>(
    ex: E,
    program_id: &str,
) -> Result<PointsPolicy, ServiceError> {
    let row: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT definition FROM program_policies WHERE program_id = $1")
            .bind(program_id)
            .fetch_optional(ex)
            .await?;
    match row {
        None => Ok(PointsPolicy::default_for(program_id)),
        Some(bytes) => {
            let p = pb::ProgramPolicy::decode(bytes.as_slice()).map_err(ServiceError::internal)?;
            PointsPolicy::from_proto(&p)
        }
    }
}

/// Stores a validated policy as the next version.
pub(crate) async fn save(tx: &mut Tx, policy: &PointsPolicy) -> Result<PointsPolicy, ServiceError> {
    let current: Option<i64> =
        sqlx::query_scalar("SELECT version FROM program_policies WHERE program_id = $1")
            .bind(&policy.program_id)
            .fetch_optional(&mut **tx)
            .await?;
    let mut stored = policy.clone();
    stored.version = current.unwrap_or(0) + 1;
    let bytes = stored.to_proto().encode_to_vec();
    sqlx::query(
        "INSERT INTO program_policies (program_id, definition, version, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (program_id) DO UPDATE SET definition = excluded.definition, \
         version = excluded.version, updated_at = excluded.updated_at",
    )
    .bind(&stored.program_id)
    .bind(bytes)
    .bind(stored.version)
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    Ok(stored)
}
