//! The sans-IO bus core.

pub mod limits;
pub mod match_rule;
pub mod names;
pub mod policy;
