//! The sans-IO bus core.

pub mod limits;
pub mod match_index;
pub mod match_rule;
pub mod names;
pub mod policy;

/// A connection's identity inside the bus: its slab index (also its reactor token).
pub type ConnId = usize;
