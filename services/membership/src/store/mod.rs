//! Storage: thin functions over the service's own tables, written once for
//! both engines (`sqlx::Any`, `$n` placeholders, BIGINT microseconds).
//! Reads take a connection (from the pool or a transaction); writes take
//! the caller's transaction so that state, history and events commit
//! together.

pub mod activity;
pub mod consents;
pub mod groups;
pub mod members;
pub mod programs;
pub mod segments;

use loyalty_common::ServiceError;

/// A row decode failure is a bug or a corrupted row: internal.
pub(crate) fn decode_err(what: &str, e: impl std::fmt::Display) -> ServiceError {
    ServiceError::internal(format!("stored {what} does not decode: {e}"))
}
