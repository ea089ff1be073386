//! What the bus asks of the world: the one channel from the sans-IO core to the reactor.
//!
//! The bus never touches a socket, a process or a file. Whatever it decides that needs one
//! is queued as an [`Effect`] and drained by the reactor with [`super::Bus::poll_effect`],
//! in the order the bus decided it.

use super::service_start::SpawnRequest;
use super::ConnId;
use std::fmt;
use std::os::fd::{OwnedFd, RawFd};

/// One thing the reactor must do for the bus.
#[derive(Debug)]
pub enum Effect {
    /// New messages are queued for this connection: write them out.
    Flush(ConnId),
    /// Close this connection (its queue is flushed first, as far as the socket takes it),
    /// then report it with [`super::Bus::disconnect`].
    Close(ConnId, CloseReason),
    /// A Containers1 instance stopped listening: stop accepting on its socket and unlink
    /// the socket file, unless the caller provided the socket (AddServer's `Socket`): then
    /// only close the bus's copy of it.
    Unlisten(u64),
    /// Watch this `StopOnNotify` fd (owned by the instance) for hang-up and report it with
    /// [`super::Bus::container_notify_hangup`].
    WatchNotify(u64, RawFd),
    /// Stop watching an instance's `StopOnNotify` fd; it closes when the effect is dropped,
    /// which must be after it left the poll set.
    UnwatchNotify(u64, OwnedFd),
    /// Start an activatable service's process; report with [`super::Bus::spawned`] or
    /// [`super::Bus::spawn_failed`], and its exit with [`super::Bus::child_exited`].
    /// Boxed: rare, and inline it tripled the size of every effect (a flush per message).
    Spawn(Box<SpawnRequest>),
    /// A new configuration is in force: aim the directory watches at its directories.
    Reconfigured,
    /// This connection was paused ([`super::Bus::may_read`] said no) and may be read again:
    /// put it back on the ready list (its socket raises no new edge for data already there).
    Resume(ConnId),
}

/// Why a connection is closed: the reactor's own reasons and the bus's, one type for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its end.
    EndOfStream,
    /// A socket read failed.
    ReadError,
    /// A socket write failed.
    WriteError,
    /// SASL failed (bad mechanism, bad data, too many rejections).
    AuthFailed,
    /// `auth_timeout` passed before Hello.
    AuthTimedOut,
    /// ANONYMOUS authentication succeeded but the configuration does not allow anonymous.
    AnonymousNotAllowed,
    /// The policy (or a container's owner check) refused the authenticated identity.
    RefusedByPolicy,
    /// The fixed header is invalid (endianness, version, length over the limit).
    InvalidFraming,
    /// A message failed validation.
    InvalidMessage,
    /// A message declared more fds than arrived with it, or more than allowed.
    FdCountMismatch,
    /// The kernel truncated the fds of one `recvmsg` (more than fit).
    TooManyFds,
    /// Fds arrived without negotiating `NEGOTIATE_UNIX_FD`.
    FdsWithoutNegotiation,
    /// More fds arrived ahead of their message than one message may carry.
    TooManyPendingFds,
    /// Fds arrived ahead of their message and waited longer than `pending_fd_timeout`.
    PendingFdsTimedOut,
    /// A message arrived before authentication completed.
    MessageBeforeAuth,
    /// A message to a peer arrived before Hello.
    MessageBeforeHello,
    /// A monitor connection sent a message (monitors may only listen).
    MonitorSent,
    /// The connection's Containers1 instance was stopped.
    ContainerStopped,
    /// A signal was due to the connection while its outgoing queue was over its limit
    /// ([`super::Bus::drop_slow_receiver`]).
    OutgoingQueueFull,
    /// The message it was sending took its uid past its quota (`quota.rs`).
    QuotaExceeded,
}

impl CloseReason {
    /// The short text logged with the close.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::EndOfStream => "end of stream",
            CloseReason::ReadError => "read error",
            CloseReason::WriteError => "write error",
            CloseReason::AuthFailed => "authentication failed",
            CloseReason::AuthTimedOut => "authentication timed out",
            CloseReason::AnonymousNotAllowed => "anonymous not allowed",
            CloseReason::RefusedByPolicy => "refused by policy",
            CloseReason::InvalidFraming => "invalid message framing",
            CloseReason::InvalidMessage => "invalid message",
            CloseReason::FdCountMismatch => "fd count mismatch",
            CloseReason::TooManyFds => "too many fds",
            CloseReason::FdsWithoutNegotiation => "fds without negotiation",
            CloseReason::TooManyPendingFds => "too many pending fds",
            CloseReason::PendingFdsTimedOut => "pending fds timed out",
            CloseReason::MessageBeforeAuth => "message before authentication",
            CloseReason::MessageBeforeHello => "message to a peer before Hello",
            CloseReason::MonitorSent => "monitor connections may not send messages",
            CloseReason::ContainerStopped => "container instance stopped",
            CloseReason::OutgoingQueueFull => "outgoing queue over its limit",
            CloseReason::QuotaExceeded => "over its uid's quota",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}
