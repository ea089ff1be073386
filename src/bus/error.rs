//! Everything the bus can tell a client went wrong, and the one map from that to D-Bus
//! error names (spec "Message Bus Messages" and the error names dbus-daemon uses).

/// An error the bus sends back to a client, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Generic failure (second Hello, unknown uid, config reload failure).
    Failed,
    /// Policy, privilege, wrong path, pre-Hello driver call, duplicate expected reply.
    AccessDenied,
    /// A quota or configured limit was hit.
    LimitsExceeded,
    /// No service file provides the name (auto-start or StartServiceByName).
    ServiceUnknown,
    /// The name has no owner and no auto-start was requested.
    NameHasNoOwner,
    /// Fds sent to a peer that cannot receive them, or a feature not built in.
    NotSupported,
    /// The callee disconnected or the reply timed out.
    NoReply,
    /// Bad arguments to a driver method.
    InvalidArgs,
    /// A match rule could not be parsed or validated.
    MatchRuleInvalid,
    /// RemoveMatch of a rule the connection does not have.
    MatchRuleNotFound,
    /// No such method on the driver.
    UnknownMethod,
    /// No such interface at that path on the driver.
    UnknownInterface,
    /// No such property.
    UnknownProperty,
    /// Properties.Set on a read-only property.
    PropertyReadOnly,
    /// No pid known for the connection.
    UnixProcessIdUnknown,
    /// Solaris audit data is never available here.
    AdtAuditDataUnknown,
    /// No SELinux context known.
    SelinuxSecurityContextUnknown,
    /// A service did not appear in time.
    TimedOut,
    /// A file the bus needs is missing (ReloadConfig's configuration file, the container
    /// socket directory).
    FileNotFound,
    /// A container socket path is already bound.
    AddressInUse,
    /// Containers1: the connection or path is not a container instance.
    NotContainer,
    /// The activation helper or service exited before taking its name.
    SpawnChildExited,
    /// The activated service was killed by a signal before taking its name.
    SpawnChildSignaled,
    /// The service's executable could not be run.
    SpawnExecFailed,
    /// The service name is invalid (the launch helper's verdict).
    SpawnServiceNotValid,
    /// The launch helper found no valid bus configuration (or no `<user>` in it).
    SpawnConfigInvalid,
    /// The launch helper could not set up the service's environment.
    SpawnSetupFailed,
    /// The launch helper found no service file for the name.
    SpawnServiceNotFound,
    /// The launch helper's own permissions are wrong, or the service file is (dbus-daemon
    /// reports both under this name).
    SpawnPermissionsInvalid,
    /// A system-bus service file lacks what helper activation needs (`User`).
    SpawnFileInvalid,
    /// The launch helper ran out of memory.
    NoMemory,
}

impl ErrorKind {
    /// Every kind, for tests and documentation of the map.
    pub const ALL: &'static [ErrorKind] = &[
        ErrorKind::Failed,
        ErrorKind::AccessDenied,
        ErrorKind::LimitsExceeded,
        ErrorKind::ServiceUnknown,
        ErrorKind::NameHasNoOwner,
        ErrorKind::NotSupported,
        ErrorKind::NoReply,
        ErrorKind::InvalidArgs,
        ErrorKind::MatchRuleInvalid,
        ErrorKind::MatchRuleNotFound,
        ErrorKind::UnknownMethod,
        ErrorKind::UnknownInterface,
        ErrorKind::UnknownProperty,
        ErrorKind::PropertyReadOnly,
        ErrorKind::UnixProcessIdUnknown,
        ErrorKind::AdtAuditDataUnknown,
        ErrorKind::SelinuxSecurityContextUnknown,
        ErrorKind::TimedOut,
        ErrorKind::FileNotFound,
        ErrorKind::AddressInUse,
        ErrorKind::NotContainer,
        ErrorKind::SpawnChildExited,
        ErrorKind::SpawnChildSignaled,
        ErrorKind::SpawnExecFailed,
        ErrorKind::SpawnServiceNotValid,
        ErrorKind::SpawnConfigInvalid,
        ErrorKind::SpawnSetupFailed,
        ErrorKind::SpawnServiceNotFound,
        ErrorKind::SpawnPermissionsInvalid,
        ErrorKind::SpawnFileInvalid,
        ErrorKind::NoMemory,
    ];

    /// The D-Bus error name: the one place kinds become names.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Failed => "org.freedesktop.DBus.Error.Failed",
            ErrorKind::AccessDenied => "org.freedesktop.DBus.Error.AccessDenied",
            ErrorKind::LimitsExceeded => "org.freedesktop.DBus.Error.LimitsExceeded",
            ErrorKind::ServiceUnknown => "org.freedesktop.DBus.Error.ServiceUnknown",
            ErrorKind::NameHasNoOwner => "org.freedesktop.DBus.Error.NameHasNoOwner",
            ErrorKind::NotSupported => "org.freedesktop.DBus.Error.NotSupported",
            ErrorKind::NoReply => "org.freedesktop.DBus.Error.NoReply",
            ErrorKind::InvalidArgs => "org.freedesktop.DBus.Error.InvalidArgs",
            ErrorKind::MatchRuleInvalid => "org.freedesktop.DBus.Error.MatchRuleInvalid",
            ErrorKind::MatchRuleNotFound => "org.freedesktop.DBus.Error.MatchRuleNotFound",
            ErrorKind::UnknownMethod => "org.freedesktop.DBus.Error.UnknownMethod",
            ErrorKind::UnknownInterface => "org.freedesktop.DBus.Error.UnknownInterface",
            ErrorKind::UnknownProperty => "org.freedesktop.DBus.Error.UnknownProperty",
            ErrorKind::PropertyReadOnly => "org.freedesktop.DBus.Error.PropertyReadOnly",
            ErrorKind::UnixProcessIdUnknown => "org.freedesktop.DBus.Error.UnixProcessIdUnknown",
            ErrorKind::AdtAuditDataUnknown => "org.freedesktop.DBus.Error.AdtAuditDataUnknown",
            ErrorKind::SelinuxSecurityContextUnknown => {
                "org.freedesktop.DBus.Error.SELinuxSecurityContextUnknown"
            }
            ErrorKind::TimedOut => "org.freedesktop.DBus.Error.TimedOut",
            ErrorKind::FileNotFound => "org.freedesktop.DBus.Error.FileNotFound",
            ErrorKind::AddressInUse => "org.freedesktop.DBus.Error.AddressInUse",
            ErrorKind::NotContainer => "org.freedesktop.DBus.Error.NotContainer",
            ErrorKind::SpawnChildExited => "org.freedesktop.DBus.Error.Spawn.ChildExited",
            ErrorKind::SpawnChildSignaled => "org.freedesktop.DBus.Error.Spawn.ChildSignaled",
            ErrorKind::SpawnExecFailed => "org.freedesktop.DBus.Error.Spawn.ExecFailed",
            ErrorKind::SpawnServiceNotValid => "org.freedesktop.DBus.Error.Spawn.ServiceNotValid",
            ErrorKind::SpawnConfigInvalid => "org.freedesktop.DBus.Error.Spawn.ConfigInvalid",
            ErrorKind::SpawnSetupFailed => "org.freedesktop.DBus.Error.Spawn.FailedToSetup",
            ErrorKind::SpawnServiceNotFound => "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
            ErrorKind::SpawnPermissionsInvalid => {
                "org.freedesktop.DBus.Error.Spawn.PermissionsInvalid"
            }
            ErrorKind::SpawnFileInvalid => "org.freedesktop.DBus.Error.Spawn.FileInvalid",
            ErrorKind::NoMemory => "org.freedesktop.DBus.Error.NoMemory",
        }
    }
}

/// An error reply: kind plus the human-readable text sent as its one STRING argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusError {
    /// Which error.
    pub kind: ErrorKind,
    /// Message text.
    pub text: String,
    /// A name reported by someone else and passed on as given: systemd's
    /// `ActivationFailure` carries its own error name, which dbus-daemon relays to the
    /// callers waiting for the activation. Only [`BusError::relayed`] sets it.
    relayed: Option<Box<str>>,
}

impl BusError {
    /// Build an error reply.
    pub fn new(kind: ErrorKind, text: impl Into<String>) -> Self {
        BusError {
            kind,
            text: text.into(),
            relayed: None,
        }
    }

    /// Log this refusal's text as a warning and return it: dbus-daemon logs each refusal
    /// (policy, limits, privilege) with the same words it answers with.
    pub fn logged(self) -> Self {
        log::warn!("{}", self.text);
        self
    }

    /// An error whose name came from another party (systemd's `ActivationFailure`).
    /// `name` must already be a valid error name; `kind` is what it means to the bus.
    pub fn relayed(kind: ErrorKind, name: &str, text: impl Into<String>) -> Self {
        BusError {
            relayed: Some(name.into()),
            ..BusError::new(kind, text)
        }
    }

    /// The D-Bus error name to send.
    pub fn name(&self) -> &str {
        self.relayed.as_deref().unwrap_or(self.kind.name())
    }
}

/// A driver method's arguments could not be read. The dispatcher checked the signature
/// already, so this is a malformed body that still passed validation; dbus-daemon answers
/// such calls with `InvalidArgs` too.
impl From<crate::wire::WireError> for BusError {
    fn from(_: crate::wire::WireError) -> Self {
        BusError::new(ErrorKind::InvalidArgs, "Invalid arguments")
    }
}

/// Shorthand for driver handlers.
pub type BusResult<T> = Result<T, BusError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_valid_name() {
        let mut seen = std::collections::HashSet::new();
        for &k in ErrorKind::ALL {
            let name = k.name();
            assert!(name.starts_with("org.freedesktop.DBus.Error."), "{k:?}");
            assert!(crate::wire::names::is_valid_error_name(name), "{k:?}");
            assert!(seen.insert(name), "{name} used twice");
        }
    }

    #[test]
    fn names_as_dbus_daemon_sends_them() {
        // Spelled out once more: these are what clients match on.
        for (k, n) in [
            (
                ErrorKind::NotContainer,
                "org.freedesktop.DBus.Error.NotContainer",
            ),
            (
                ErrorKind::FileNotFound,
                "org.freedesktop.DBus.Error.FileNotFound",
            ),
            (
                ErrorKind::AddressInUse,
                "org.freedesktop.DBus.Error.AddressInUse",
            ),
            (
                ErrorKind::SpawnChildSignaled,
                "org.freedesktop.DBus.Error.Spawn.ChildSignaled",
            ),
            (
                ErrorKind::SelinuxSecurityContextUnknown,
                "org.freedesktop.DBus.Error.SELinuxSecurityContextUnknown",
            ),
        ] {
            assert_eq!(k.name(), n);
        }
    }

    #[test]
    fn relayed_names_pass_through() {
        let e = BusError::new(ErrorKind::TimedOut, "t");
        assert_eq!(e.name(), ErrorKind::TimedOut.name());
        let e = BusError::relayed(ErrorKind::SpawnChildExited, "org.example.Oops", "t");
        assert_eq!(e.name(), "org.example.Oops");
        assert_eq!(e.kind, ErrorKind::SpawnChildExited);
    }
}
