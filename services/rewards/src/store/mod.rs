//! Storage of the rewards service (sqlx over SQLite and PostgreSQL).

pub(crate) mod ledger;
pub(crate) mod ledger_behaviour;
pub(crate) mod ledger_lanes;
pub(crate) mod ledger_policy;
pub(crate) mod ledger_purchases;
pub(crate) mod ledger_queries;
pub(crate) mod rules;
pub(crate) mod rules_cache;
pub(crate) mod rules_member;
