//! Membership rules, free of I/O: contact normalisation, profile
//! validation, consent decisions, program tier rules, tier evaluation and
//! progress, and segment rules.

pub mod consent;
pub mod contact;
pub mod profile;
pub mod program;
pub mod segment;
pub mod tiers;
