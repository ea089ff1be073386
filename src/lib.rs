//! sluicebus: a D-Bus message bus daemon on one `mio` reactor.
//!
//! Layers, dependencies pointing down: [`reactor`] (sockets, the only I/O) drives
//! [`bus`] (the sans-IO bus core: driver, names, match rules, routing, policy, limits),
//! which builds on [`wire`] (protocol: framing, validation, marshalling, SASL, addresses).
//! [`config`] and [`cli`] turn busconfig XML and dbus-daemon's command line into typed values.

pub mod bus;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod reactor;
pub mod userdb;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_rng;
