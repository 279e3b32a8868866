//! Idempotent mutating calls: a call replayed with the same key returns the
//! original answer without doing the work again; the same key with other
//! parameters is refused. The key is claimed in the transaction of the work,
//! so the claim and the effects commit together or not at all.
//!
//! A concurrent duplicate on PostgreSQL blocks on the key's unique index
//! until the first transaction ends, then sees its stored answer (or, if it
//! rolled back, claims the key itself). This relies on READ COMMITTED, the
//! isolation [`Db::begin`] uses: the SELECT after the blocked insert takes a
//! fresh snapshot that includes the winner's row. On SQLite writers are
//! serialised, so a duplicate simply runs after the first.
//!
//! Services name the request field `idempotency_key` ([`KEY_FIELD`]); the
//! scope is the method and the program (`rewards.Redeem/<program_id>`), so
//! keys of different programs never collide.

use std::future::Future;
use std::pin::Pin;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::ServiceError;
use crate::db::{Db, Tx, now_micros};

/// Longest accepted idempotency key.
pub const MAX_KEY_LEN: usize = 128;

/// The request field carrying the key, named in validation errors.
pub const KEY_FIELD: &str = "idempotency_key";

/// The result of claiming a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: do the work, then [`complete`].
    New,
    /// Used before with the same parameters: this is the stored answer.
    Replay(Vec<u8>),
    /// Used before with different parameters.
    Mismatch,
}

/// Checks a caller-supplied key; `field` names it in the error.
pub fn validate_key(field: &str, key: &str) -> Result<(), ServiceError> {
    if key.is_empty() {
        return Err(ServiceError::invalid(
            field,
            "is required (any unique string per operation, e.g. a UUID)",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(ServiceError::invalid(
            field,
            format!("is longer than {MAX_KEY_LEN} characters"),
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ServiceError::invalid(
            field,
            "must be printable ASCII without spaces",
        ));
    }
    Ok(())
}

/// SHA-256 of the encoded request: prost encodes a given message the same
/// way every time in one build, so equal requests have equal fingerprints.
pub fn fingerprint<M: Message>(request: &M) -> String {
    hex::encode(Sha256::digest(request.encode_to_vec()))
}

/// Claims `key` within `scope` in the caller's transaction.
pub async fn claim(
    tx: &mut Tx,
    scope: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Claim, ServiceError> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(fingerprint)
    .bind(now_micros())
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let (hash, response): (String, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND idem_key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(&mut **tx)
    .await?;
    if hash != fingerprint {
        return Ok(Claim::Mismatch);
    }
    // A committed claim always has its answer: it is stored in the same
    // transaction. Without one, this transaction claimed it already.
    response.map(Claim::Replay).ok_or_else(|| {
        ServiceError::Conflict(format!(
            "idempotency key {key:?} is in use by this operation"
        ))
    })
}

/// Stores the answer of a claimed key (same transaction as the claim).
pub async fn complete(
    tx: &mut Tx,
    scope: &str,
    key: &str,
    response: &[u8],
) -> Result<(), ServiceError> {
    let done =
        sqlx::query("UPDATE idempotency_keys SET response = $1 WHERE scope = $2 AND idem_key = $3")
            .bind(response)
            .bind(scope)
            .bind(key)
            .execute(&mut **tx)
            .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(ServiceError::internal(format!(
            "idempotency key {key:?} completed without being claimed"
        )))
    }
}

/// A boxed future borrowing the transaction.
pub type WorkFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T, ServiceError>> + Send + 't>>;

/// Runs `work` once per (`scope`, `key`): validates the key (as field
/// [`KEY_FIELD`]), begins a transaction, claims the key, runs the work in
/// it, stores the encoded answer, commits. A replay decodes the stored
/// answer; other parameters give `IdempotencyKeyReused`. A failing work
/// stores nothing, so the key can be used again.
///
/// `work` writes through the transaction it is given and must not call
/// `db.begin()` itself (on SQLite that waits for the writer it holds):
/// `|tx| Box::pin(async move { …; Ok(resp) })`.
pub async fn run_idempotent<Req, Resp, F>(
    db: &Db,
    scope: &str,
    key: &str,
    request: &Req,
    work: F,
) -> Result<Resp, ServiceError>
where
    Req: Message,
    Resp: Message + Default,
    F: for<'t> FnOnce(&'t mut Tx) -> WorkFuture<'t, Resp>,
{
    validate_key(KEY_FIELD, key)?;
    let print = fingerprint(request);
    let mut tx = db.begin().await?;
    match claim(&mut tx, scope, key, &print).await? {
        Claim::New => {}
        Claim::Replay(bytes) => {
            tx.rollback().await?;
            return Resp::decode(bytes.as_slice()).map_err(ServiceError::internal);
        }
        Claim::Mismatch => {
            tx.rollback().await?;
            return Err(ServiceError::IdempotencyKeyReused {
                key: key.to_owned(),
            });
        }
    }
    let response = work(&mut tx).await?;
    complete(&mut tx, scope, key, &response.encode_to_vec()).await?;
    tx.commit().await?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_naming_the_field() {
        assert!(validate_key("idempotency_key", "7f7c-01").is_ok());
        for bad in ["", "has space", &"k".repeat(129)] {
            let err = validate_key("idempotency_key", bad).unwrap_err();
            let ServiceError::InvalidArgument(v) = err else {
                panic!()
            };
            assert_eq!(v[0].field, "idempotency_key");
        }
    }

    #[test]
    fn equal_requests_have_equal_fingerprints() {
        let a = prost_types::Duration {
            seconds: 5,
            nanos: 0,
        };
        let b = prost_types::Duration {
            seconds: 6,
            nanos: 0,
        };
        assert_eq!(fingerprint(&a), fingerprint(&a.clone()));
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
