//! Storage of the rewards service (sqlx over SQLite and PostgreSQL).

pub(crate) mod ledger;
