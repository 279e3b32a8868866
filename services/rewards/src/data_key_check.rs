//! The start-up check that this database is sealed with the configured data
//! key (docs/adr/0009-coupon-codes-at-rest.md). The first start records the
//! key's public identifier
//! ([`DataKeyId`](loyalty_common::data_key::DataKeyId)) in `data_key_check`; every later
//! start compares, and a replica given another key refuses to start, before
//! it serves a call or its sealing job seals anything with the wrong key,
//! instead of failing later on every sealed code (INTERNAL on lists,
//! NOT_FOUND at the till).
//!
//! A database sealed before the identifier was recorded (migration 0055)
//! records it only if a sealed coupon code opens with the key.

use std::sync::Arc;

use loyalty_common::ServiceError;
use loyalty_common::runtime::{Preparing, ServiceRuntime};
use sqlx::AnyPool;

/// Why the service refuses to start: names the setting, never a key.
pub(crate) const SEALED_WITH_ANOTHER_KEY: &str = "its database was sealed with another data key than the one configured \
     (setting data_key, LOYALTY_DATA_KEY): start it with the key the database was sealed with \
     (docs/RUNBOOK.md, Credentials)";

/// [`check`] as the service's start-up hook (`ServiceDef::prepare`).
pub(crate) fn prepare(rt: Arc<ServiceRuntime>) -> Preparing {
    Box::pin(async move { check(&rt).await })
}

/// Records the identifier of `rt`'s data key if none is recorded yet, and
/// fails if another one is. Safe against replicas starting together: the
/// first insert wins and every replica compares with what was kept.
pub(crate) async fn check(rt: &ServiceRuntime) -> Result<(), ServiceError> {
    let id = rt.data_key()?.id();
    let pool = rt.db.pool();
    if recorded(pool).await?.is_none() {
        if !crate::engagement::sealed_coupon_codes_open(rt).await? {
            return Err(ServiceError::precondition(SEALED_WITH_ANOTHER_KEY));
        }
        sqlx::query(
            "INSERT INTO data_key_check (id, key_id, created_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(rt.clock.now().timestamp_micros())
        .execute(pool)
        .await?;
    }
    match recorded(pool).await? {
        Some(kept) if kept == id.as_str() => Ok(()),
        Some(_) => Err(ServiceError::precondition(SEALED_WITH_ANOTHER_KEY)),
        None => Err(ServiceError::internal(
            "data_key_check holds no row right after recording one",
        )),
    }
}

/// The identifier recorded in this database, if any.
async fn recorded(pool: &AnyPool) -> Result<Option<String>, ServiceError> {
    Ok(
        sqlx::query_scalar("SELECT key_id FROM data_key_check WHERE id = 1")
            .fetch_optional(pool)
            .await?,
    )
}
