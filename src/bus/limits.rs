//! Resource limits (`<limit name="…">` in the bus configuration, with the names and defaults
//! of dbus-daemon's bus/config-parser.c).
//!
//! Every limit is a non-negative value that fits a signed 32-bit integer, exactly as dbus-daemon
//! requires; the fields are therefore `u32` (never above `i32::MAX`). Timeouts are milliseconds.
//!
//! Every name dbus-daemon knows is accepted, so its configuration files load unchanged.
//! `max_incoming_bytes` and `max_incoming_unix_fds` are enforced by back-pressure, as in
//! dbus-daemon (reading a connection pauses, nothing is dropped), over what the bus holds of
//! what the connection sent (`quota.rs`).
//!
//! Four names are sluicebus's own, in dbus-daemon's style, for the per-uid quotas dbus-daemon
//! lacks and dbus-broker has (`quota.rs`): `max_bytes_per_user`, `max_unix_fds_per_user`,
//! `max_names_per_user`, `max_match_rules_per_user`. Left unset, each is the matching
//! per-connection limit times `max_connections_per_user`, the conversion dbus-broker's
//! launcher makes from dbus-daemon's per-connection limits to its per-user ones: a uid can
//! then hold what its connections could hold each, so a single-user session bus never
//! notices the quota, and a configuration sets a tighter one where uids must be kept apart.

use std::fmt;

/// Why a `<limit>` element was refused. Displays as dbus-daemon words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    /// No limit has this name.
    Unknown(String),
    /// The value is negative.
    Negative(String),
    /// The value does not fit a signed 32-bit integer.
    TooLarge(String),
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitError::Unknown(name) => write!(f, "There is no limit called \"{name}\""),
            LimitError::Negative(name) => {
                write!(f, "<limit name=\"{name}\"> must be a positive number")
            }
            LimitError::TooLarge(name) => write!(f, "<limit name=\"{name}\"> value is too large"),
        }
    }
}

impl std::error::Error for LimitError {}

/// The limits a bus enforces. `Default` gives dbus-daemon's built-in values (used for every limit a
/// configuration file does not set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bytes the bus may hold of what one connection sent (its messages queued for
    /// receivers, charged as `delivery::cost`, plus the message it is sending) before reading
    /// from it pauses (back-pressure, never a drop).
    pub max_incoming_bytes: u32,
    /// Fds the bus may hold of what one connection sent (in its queued messages and received
    /// ahead of its message) before reading from it pauses.
    pub max_incoming_unix_fds: u32,
    /// Bytes queued for sending to one connection before further messages to it are refused.
    pub max_outgoing_bytes: u32,
    /// Fds queued for sending to one connection before further messages to it are refused.
    pub max_outgoing_unix_fds: u32,
    /// Largest message accepted (the protocol's own 128 MiB cap applies on top).
    pub max_message_size: u32,
    /// Most fds one message may carry.
    pub max_message_unix_fds: u32,
    /// Milliseconds an activated service has to take its name.
    pub service_start_timeout: u32,
    /// Milliseconds a connection has to finish authentication.
    pub auth_timeout: u32,
    /// Milliseconds a connection may keep fds pending in the bus's incoming queue.
    pub pending_fd_timeout: u32,
    /// Most authenticated connections.
    pub max_completed_connections: u32,
    /// Most connections still authenticating.
    pub max_incomplete_connections: u32,
    /// Most connections per uid.
    pub max_connections_per_user: u32,
    /// Most activations in flight.
    pub max_pending_service_starts: u32,
    /// Most well-known names one connection may own or queue for.
    pub max_names_per_connection: u32,
    /// Most match rules per connection.
    pub max_match_rules_per_connection: u32,
    /// Most outstanding method calls awaiting a reply, per connection.
    pub max_replies_per_connection: u32,
    /// Milliseconds after which a pending method call is answered with `NoReply` by the bus.
    /// `None` = never (dbus-daemon's default; a configured value of 0 also means never, since
    /// dbus-daemon only expires replies when the timeout is positive).
    pub reply_timeout: Option<u32>,
    /// Containers1: most containers on the bus.
    pub max_containers: u32,
    /// Containers1: most containers one uid may create.
    pub max_containers_per_user: u32,
    /// Containers1: largest metadata dictionary per container, in bytes.
    pub max_container_metadata_bytes: u32,
    /// Containers1: most connections per container.
    pub max_connections_per_container: u32,
    /// Bytes all connections of one uid may make the bus hold (see [`Limits::bytes_per_user`];
    /// None: derived).
    pub max_bytes_per_user: Option<u32>,
    /// Fds all connections of one uid may make the bus hold (None: derived).
    pub max_unix_fds_per_user: Option<u32>,
    /// Well-known names all connections of one uid may own or queue for (None: derived).
    pub max_names_per_user: Option<u32>,
    /// Match rules all connections of one uid may have (None: derived).
    pub max_match_rules_per_user: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_incoming_bytes: 133_169_152,
            max_incoming_unix_fds: 64,
            max_outgoing_bytes: 133_169_152,
            max_outgoing_unix_fds: 64,
            max_message_size: 33_554_432,
            max_message_unix_fds: 16,
            service_start_timeout: 25_000,
            auth_timeout: 30_000,
            pending_fd_timeout: 150_000,
            max_completed_connections: 2048,
            max_incomplete_connections: 64,
            max_connections_per_user: 256,
            max_pending_service_starts: 512,
            max_names_per_connection: 512,
            max_match_rules_per_connection: 512,
            max_replies_per_connection: 128,
            reply_timeout: None,
            max_containers: 512,
            max_containers_per_user: 16,
            max_container_metadata_bytes: 4096,
            max_connections_per_container: 8,
            max_bytes_per_user: None,
            max_unix_fds_per_user: None,
            max_names_per_user: None,
            max_match_rules_per_user: None,
        }
    }
}

impl Limits {
    /// Every limit name `set` accepts, in dbus-daemon's documentation order.
    pub const NAMES: &'static [&'static str] = &[
        "max_incoming_bytes",
        "max_incoming_unix_fds",
        "max_outgoing_bytes",
        "max_outgoing_unix_fds",
        "max_message_size",
        "max_message_unix_fds",
        "service_start_timeout",
        "auth_timeout",
        "pending_fd_timeout",
        "max_completed_connections",
        "max_incomplete_connections",
        "max_connections_per_user",
        "max_pending_service_starts",
        "max_names_per_connection",
        "max_match_rules_per_connection",
        "max_replies_per_connection",
        "reply_timeout",
        "max_containers",
        "max_containers_per_user",
        "max_container_metadata_bytes",
        "max_connections_per_container",
        "max_bytes_per_user",
        "max_unix_fds_per_user",
        "max_names_per_user",
        "max_match_rules_per_user",
    ];

    /// A per-uid quota: `set` if configured, else `per_connection` times
    /// `max_connections_per_user` (saturating), as dbus-broker's launcher derives its
    /// per-user limits.
    fn per_user(&self, set: Option<u32>, per_connection: u32) -> usize {
        match set {
            Some(v) => v as usize,
            None => {
                (per_connection as usize).saturating_mul(self.max_connections_per_user as usize)
            }
        }
    }

    /// `max_bytes_per_user` in force (derived from `max_incoming_bytes` if not set).
    pub fn bytes_per_user(&self) -> usize {
        self.per_user(self.max_bytes_per_user, self.max_incoming_bytes)
    }

    /// `max_unix_fds_per_user` in force (derived from `max_incoming_unix_fds` if not set).
    pub fn unix_fds_per_user(&self) -> usize {
        self.per_user(self.max_unix_fds_per_user, self.max_incoming_unix_fds)
    }

    /// `max_names_per_user` in force (derived from `max_names_per_connection` if not set).
    pub fn names_per_user(&self) -> usize {
        self.per_user(self.max_names_per_user, self.max_names_per_connection)
    }

    /// `max_match_rules_per_user` in force (derived from `max_match_rules_per_connection`
    /// if not set).
    pub fn match_rules_per_user(&self) -> usize {
        self.per_user(
            self.max_match_rules_per_user,
            self.max_match_rules_per_connection,
        )
    }

    /// Set the limit called `name` (a dbus-daemon limit name) to `value`. Unknown names, negative
    /// values and values above `i32::MAX` are rejected with a message suitable for a config error.
    pub fn set(&mut self, name: &str, value: i64) -> Result<(), LimitError> {
        let slot: &mut u32 = match name {
            "max_incoming_bytes" => &mut self.max_incoming_bytes,
            "max_incoming_unix_fds" => &mut self.max_incoming_unix_fds,
            "max_outgoing_bytes" => &mut self.max_outgoing_bytes,
            "max_outgoing_unix_fds" => &mut self.max_outgoing_unix_fds,
            "max_message_size" => &mut self.max_message_size,
            "max_message_unix_fds" => &mut self.max_message_unix_fds,
            "service_start_timeout" => &mut self.service_start_timeout,
            "auth_timeout" => &mut self.auth_timeout,
            "pending_fd_timeout" => &mut self.pending_fd_timeout,
            "max_completed_connections" => &mut self.max_completed_connections,
            "max_incomplete_connections" => &mut self.max_incomplete_connections,
            "max_connections_per_user" => &mut self.max_connections_per_user,
            "max_pending_service_starts" => &mut self.max_pending_service_starts,
            "max_names_per_connection" => &mut self.max_names_per_connection,
            "max_match_rules_per_connection" => &mut self.max_match_rules_per_connection,
            "max_replies_per_connection" => &mut self.max_replies_per_connection,
            "max_containers" => &mut self.max_containers,
            "max_containers_per_user" => &mut self.max_containers_per_user,
            "max_container_metadata_bytes" => &mut self.max_container_metadata_bytes,
            "max_connections_per_container" => &mut self.max_connections_per_container,
            "reply_timeout" => {
                let v = Self::check(name, value)?;
                self.reply_timeout = if v == 0 { None } else { Some(v) };
                return Ok(());
            }
            "max_bytes_per_user" => {
                self.max_bytes_per_user = Some(Self::check(name, value)?);
                return Ok(());
            }
            "max_unix_fds_per_user" => {
                self.max_unix_fds_per_user = Some(Self::check(name, value)?);
                return Ok(());
            }
            "max_names_per_user" => {
                self.max_names_per_user = Some(Self::check(name, value)?);
                return Ok(());
            }
            "max_match_rules_per_user" => {
                self.max_match_rules_per_user = Some(Self::check(name, value)?);
                return Ok(());
            }
            _ => return Err(LimitError::Unknown(name.to_owned())),
        };
        *slot = Self::check(name, value)?;
        Ok(())
    }

    /// The current value of the limit called `name`, as configured (`reply_timeout` "never"
    /// reads as -1, dbus-daemon's representation). `None` for an unknown name.
    pub fn get(&self, name: &str) -> Option<i64> {
        let v: usize = match name {
            "max_incoming_bytes" => self.max_incoming_bytes as usize,
            "max_incoming_unix_fds" => self.max_incoming_unix_fds as usize,
            "max_outgoing_bytes" => self.max_outgoing_bytes as usize,
            "max_outgoing_unix_fds" => self.max_outgoing_unix_fds as usize,
            "max_message_size" => self.max_message_size as usize,
            "max_message_unix_fds" => self.max_message_unix_fds as usize,
            "service_start_timeout" => self.service_start_timeout as usize,
            "auth_timeout" => self.auth_timeout as usize,
            "pending_fd_timeout" => self.pending_fd_timeout as usize,
            "max_completed_connections" => self.max_completed_connections as usize,
            "max_incomplete_connections" => self.max_incomplete_connections as usize,
            "max_connections_per_user" => self.max_connections_per_user as usize,
            "max_pending_service_starts" => self.max_pending_service_starts as usize,
            "max_names_per_connection" => self.max_names_per_connection as usize,
            "max_match_rules_per_connection" => self.max_match_rules_per_connection as usize,
            "max_replies_per_connection" => self.max_replies_per_connection as usize,
            "max_containers" => self.max_containers as usize,
            "max_containers_per_user" => self.max_containers_per_user as usize,
            "max_container_metadata_bytes" => self.max_container_metadata_bytes as usize,
            "max_connections_per_container" => self.max_connections_per_container as usize,
            "reply_timeout" => return Some(self.reply_timeout.map_or(-1, i64::from)),
            "max_bytes_per_user" => self.bytes_per_user(),
            "max_unix_fds_per_user" => self.unix_fds_per_user(),
            "max_names_per_user" => self.names_per_user(),
            "max_match_rules_per_user" => self.match_rules_per_user(),
            _ => return None,
        };
        Some(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn check(name: &str, value: i64) -> Result<u32, LimitError> {
        if value < 0 {
            return Err(LimitError::Negative(name.to_owned()));
        }
        if value > i64::from(i32::MAX) {
            return Err(LimitError::TooLarge(name.to_owned()));
        }
        // In range 0..=i32::MAX, so the conversion cannot fail.
        u32::try_from(value).map_err(|_| LimitError::TooLarge(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_dbus_daemon() {
        let l = Limits::default();
        assert_eq!(l.max_incoming_bytes, 127 * 1024 * 1024);
        assert_eq!(l.max_outgoing_bytes, 127 * 1024 * 1024);
        assert_eq!(l.max_message_size, 32 * 1024 * 1024);
        assert_eq!(l.max_incoming_unix_fds, 64);
        assert_eq!(l.max_message_unix_fds, 16);
        assert_eq!(l.service_start_timeout, 25_000);
        assert_eq!(l.auth_timeout, 30_000);
        assert_eq!(l.pending_fd_timeout, 150_000);
        assert_eq!(l.max_completed_connections, 2048);
        assert_eq!(l.max_incomplete_connections, 64);
        assert_eq!(l.max_connections_per_user, 256);
        assert_eq!(l.max_pending_service_starts, 512);
        assert_eq!(l.max_names_per_connection, 512);
        assert_eq!(l.max_match_rules_per_connection, 512);
        assert_eq!(l.max_replies_per_connection, 128);
        assert_eq!(l.reply_timeout, None);
        assert_eq!(l.max_containers, 512);
        assert_eq!(l.max_containers_per_user, 16);
        assert_eq!(l.max_container_metadata_bytes, 4096);
        assert_eq!(l.max_connections_per_container, 8);
        // Per-uid quotas: the per-connection limit times max_connections_per_user.
        assert_eq!(l.bytes_per_user(), 256 * 127 * 1024 * 1024);
        assert_eq!(l.unix_fds_per_user(), 256 * 64);
        assert_eq!(l.names_per_user(), 256 * 512);
        assert_eq!(l.match_rules_per_user(), 256 * 512);
        assert_eq!(l.get("max_bytes_per_user"), Some(256 * 127 * 1024 * 1024));
    }

    #[test]
    fn per_user_quotas_follow_their_per_connection_limits_unless_set() {
        let mut l = Limits::default();
        l.set("max_connections_per_user", 4).unwrap();
        l.set("max_incoming_bytes", 1000).unwrap();
        assert_eq!(l.bytes_per_user(), 4000);
        l.set("max_bytes_per_user", 1500).unwrap();
        assert_eq!(l.bytes_per_user(), 1500);
        l.set("max_incoming_bytes", 10).unwrap();
        assert_eq!(l.bytes_per_user(), 1500);
        assert!(l.set("max_names_per_user", -1).is_err());
    }

    #[test]
    fn set_and_get_every_name() {
        let mut l = Limits::default();
        for (i, name) in Limits::NAMES.iter().enumerate() {
            let v = 1000 + i as i64;
            l.set(name, v).unwrap();
            assert_eq!(l.get(name), Some(v), "{name}");
        }
        assert_eq!(l.max_connections_per_container, 1020);
        assert_eq!(l.reply_timeout, Some(1016));
    }

    #[test]
    fn reply_timeout_zero_means_never() {
        let mut l = Limits::default();
        l.set("reply_timeout", 100).unwrap();
        assert_eq!(l.reply_timeout, Some(100));
        l.set("reply_timeout", 0).unwrap();
        assert_eq!(l.reply_timeout, None);
        assert_eq!(l.get("reply_timeout"), Some(-1));
    }

    #[test]
    fn rejects_bad_values() {
        let mut l = Limits::default();
        assert_eq!(
            l.set("max_bees", 1).unwrap_err().to_string(),
            "There is no limit called \"max_bees\""
        );
        assert_eq!(
            l.set("max_names_per_connection", -1)
                .unwrap_err()
                .to_string(),
            "<limit name=\"max_names_per_connection\"> must be a positive number"
        );
        assert_eq!(
            l.set("max_names_per_connection", 3_123_123_123)
                .unwrap_err()
                .to_string(),
            "<limit name=\"max_names_per_connection\"> value is too large"
        );
        assert!(l
            .set("max_names_per_connection", i64::from(i32::MAX) + 1)
            .is_err());
        assert!(l.set("reply_timeout", -1).is_err());
        // Failed sets leave the value untouched.
        assert_eq!(l.max_names_per_connection, 512);
        l.set("max_names_per_connection", i64::from(i32::MAX))
            .unwrap();
        assert_eq!(l.max_names_per_connection, i32::MAX as u32);
        l.set("max_message_size", 0).unwrap();
        assert_eq!(l.max_message_size, 0);
        assert_eq!(l.get("nope"), None);
    }
}
