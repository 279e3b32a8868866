//! Pure rules of the rewards service: no I/O, unit- and property-tested.

pub mod ledger;
