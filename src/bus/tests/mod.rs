//! Sans-IO tests of the bus core through [`harness::Harness`]. Only `harness.rs` touches
//! `Bus` internals; the case files use its API.

mod harness;

mod activation;
mod close;
mod containers;
mod driver;
mod filter;
mod limits;
mod names;
mod quota;
mod routing;
