//! Leases in a service's own database: with several replicas, the holder of
//! a named lease is the one that runs a singleton task (the outbox relay, a
//! scheduled job). A lease expires unless renewed, so a crashed holder is
//! replaced. Rows live in the `jobs` table.

use std::time::Duration;

use crate::db::{Db, Tx, now_micros};

/// Takes or renews lease `name` for `holder` for `ttl`; false when another
/// holder has it and it has not expired.
pub async fn try_acquire(
    db: &Db,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let got = try_acquire_in(&mut tx, name, holder, ttl).await?;
    tx.commit().await?;
    Ok(got)
}

/// [`try_acquire`] inside the caller's transaction.
pub async fn try_acquire_in(
    tx: &mut Tx,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, sqlx::Error> {
    let now = now_micros();
    let until = now + i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2);
    let done = sqlx::query(
        "INSERT INTO jobs (name, holder, lease_until, updated_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until, \
         updated_at = excluded.updated_at \
         WHERE jobs.lease_until < $4 OR jobs.holder = excluded.holder OR jobs.holder IS NULL",
    )
    .bind(name)
    .bind(holder)
    .bind(until)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up at once (clean shutdown), if `holder` has it.
pub async fn release(db: &Db, name: &str, holder: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE jobs SET holder = NULL, lease_until = 0, updated_at = $3 WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .bind(now_micros())
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// A holder id unique to this process and task.
pub fn new_holder_id(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}
