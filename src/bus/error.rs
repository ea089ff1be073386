//! The D-Bus errors the bus itself can answer with, mapped to their names in one place.

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
    /// The activation helper or service exited before taking its name.
    SpawnChildExited,
    /// The service's executable could not be run.
    SpawnExecFailed,
    /// The service file is invalid.
    SpawnServiceNotValid,
}

impl ErrorKind {
    /// The D-Bus error name.
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
            ErrorKind::SpawnChildExited => "org.freedesktop.DBus.Error.Spawn.ChildExited",
            ErrorKind::SpawnExecFailed => "org.freedesktop.DBus.Error.Spawn.ExecFailed",
            ErrorKind::SpawnServiceNotValid => "org.freedesktop.DBus.Error.Spawn.ServiceNotValid",
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
}

impl BusError {
    /// Build an error reply.
    pub fn new(kind: ErrorKind, text: impl Into<String>) -> Self {
        BusError {
            kind,
            text: text.into(),
        }
    }
}

/// Shorthand for driver handlers.
pub type BusResult<T> = Result<T, BusError>;
