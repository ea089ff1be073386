//! sluicebus: a D-Bus message bus daemon on one `mio` reactor.
//!
//! Layers, dependencies pointing down: [`reactor`] (sockets, the only I/O) drives
//! [`bus`] (the sans-IO bus core: driver, names, match rules, routing, policy, limits),
//! which builds on [`wire`] (protocol: framing, validation, marshalling, SASL, addresses).
//! [`config`] and [`cli`] turn busconfig XML and dbus-daemon's command line into typed values.

//!
//! All `unsafe` code lives in [`sys`], behind safe functions; everything else is
//! `deny(unsafe_code)`.

#![deny(unsafe_code)]

pub mod bus;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod reactor;
#[allow(unsafe_code)]
pub mod sys;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_rng;
