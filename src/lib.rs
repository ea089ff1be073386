//! sluicebus: a D-Bus message bus daemon, a drop-in for dbus-daemon, on one `mio` reactor.
//!
//! Layers, dependencies pointing down: [`reactor`] (the event loop, the only code that touches
//! `mio` and the bus's sockets) drives [`bus`] (the bus core: driver, names, match rules,
//! routing, policy, limits, activation, Containers1), which builds on [`wire`] (protocol:
//! framing, validation, marshalling, SASL, addresses). `bus` and `wire` make no system calls
//! (the `architecture` test checks), so they can be tested without sockets, files or a clock.
//! [`config`] and [`cli`] turn busconfig XML and dbus-daemon's command line into typed values.
//! [`auth_world`] (with [`keyring`]) is the system the SASL machine in [`wire::auth`] asks
//! for randomness, users and DBUS_COOKIE_SHA1 cookies; [`userdb`] resolves the user and
//! group names of the configuration's policy; [`daemon`] is process startup.
//! [`proxy_cli`] is the command line of `sluicebus-dbus-proxy`, the xdg-dbus-proxy front end.
//!
//! All `unsafe` code lives in [`sys`], behind safe functions; everything else is
//! `deny(unsafe_code)`.

#![deny(unsafe_code)]

pub mod auth_world;
pub mod bus;
pub mod bus_client;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod keyring;
pub mod proxy_cli;
pub mod reactor;
#[allow(unsafe_code)]
pub mod sys;
pub mod userdb;
pub mod wire;

#[cfg(test)]
pub(crate) mod test_rng;
