//! Pure rules of the rewards service: no I/O, unit- and property-tested.

pub mod earning_rules;
pub mod expiry;
pub mod ledger;
pub mod ledger_refund;
