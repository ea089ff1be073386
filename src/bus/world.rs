//! What the bus may ask of the world while it handles an event, synchronously.
//!
//! Some answers must be in the reply the bus is building (the path of a container socket
//! for `AddServer`, the pidfd for `GetConnectionCredentials`), so they cannot wait for an
//! [`super::Effect`]. The reactor implements this trait over its sockets and the system; a
//! test implements it with values.

use super::ConnId;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

/// The world outside the bus core, as seen while handling one event.
pub trait World {
    /// A fresh pidfd for the process at the other end of `id`'s socket (`SO_PEERPIDFD`: the
    /// process that connected, fixed by the kernel at connect time, so it cannot be a later
    /// process reusing the pid). None if unsupported, gone, or not a unix socket.
    fn peer_pidfd(&self, id: ConnId) -> Option<OwnedFd>;

    /// Start accepting on a listening socket for Containers1 instance `instance`, and
    /// return where clients reach it and the server GUID of its address. Connections
    /// accepted there are handed to [`super::Bus::accept_contained`] with `instance`.
    ///
    /// Without `provided`, the world creates the socket in the bus's container socket
    /// directory, connectable by every uid (the uid is checked at authentication), and
    /// unlinks it on [`super::Effect::Unlisten`]. With `provided` (AddServer's `Socket`
    /// named argument: the upstream Containers1 design's caller-provided listening socket;
    /// the bus's own duplicate of the caller's fd), the world checks that it is a listening
    /// `AF_UNIX` `SOCK_STREAM` socket not already serving this bus, accepts on it, and on
    /// `Unlisten` only closes it: the caller's path is never unlinked.
    fn listen_container(
        &mut self,
        instance: u64,
        provided: Option<OwnedFd>,
    ) -> Result<(SocketName, String), ListenError>;

    /// Read the configuration again, from the file the bus was started with (or the
    /// built-in default), for `ReloadConfig`.
    fn load_config(&mut self) -> Result<crate::config::Config, crate::config::ConfigError>;
}

/// Where clients reach a container socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketName {
    /// A socket file.
    Path(PathBuf),
    /// A name in Linux's abstract socket namespace (without its leading NUL byte), which a
    /// caller-provided socket may have: it has no file.
    Abstract(Vec<u8>),
}

/// What the bus may learn about a peer's process, for the `comm="…"` of its log lines and
/// refusals (dbus-daemon's "loginfo"). Asked only when such a line is written, at most once
/// per connection (`Bus::loginfo` keeps the answer), never while routing a message.
pub trait ProcessInfo {
    /// The command line of process `pid` as dbus-daemon shows it: the arguments joined by
    /// spaces, cut to [`COMMAND_LINE_MAX`] bytes. None if it cannot be read.
    fn command_line(&self, pid: u32) -> Option<String>;
}

/// The longest command line [`ProcessInfo::command_line`] returns, in bytes (dbus-daemon
/// shows at most 50).
pub const COMMAND_LINE_MAX: usize = 50;

/// Knows no process (tests, and hosts without `/proc`).
pub struct NoProcesses;

impl ProcessInfo for NoProcesses {
    fn command_line(&self, _pid: u32) -> Option<String> {
        None
    }
}

/// Why a container socket could not be created, with the path it concerns.
#[derive(Debug)]
pub struct ListenError {
    /// The directory or socket path that failed (empty for a caller-provided socket).
    pub path: PathBuf,
    /// What failed: creating the directory, binding the socket, or the caller's socket.
    pub step: ListenStep,
    /// The operating system's error.
    pub error: std::io::Error,
}

/// The step of [`World::listen_container`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenStep {
    /// Creating the private socket directory.
    CreateDir,
    /// Binding or setting up the socket.
    Bind,
    /// The caller-provided socket cannot serve: the caller's mistake (`error` is what the
    /// check's system call said, if it failed).
    Unsuitable(SocketProblem),
    /// Setting up a suitable caller-provided socket failed (non-blocking mode, polling).
    Adopt,
}

/// What is wrong with a caller-provided container socket (AddServer's `Socket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketProblem {
    /// The fd is not a socket (a file, a pipe, ...).
    NotSocket,
    /// A socket of another family than `AF_UNIX` (TCP, ...).
    NotUnix,
    /// An `AF_UNIX` socket of another type than `SOCK_STREAM` (datagram, seqpacket).
    NotStream,
    /// A stream socket that is not listening (`listen(2)` was not called on it).
    NotListening,
    /// Bound to no name clients could connect to.
    Unnamed,
    /// Bound to a relative path: relative to the caller's working directory, which the
    /// bus does not know, so it cannot tell clients where to connect.
    RelativePath,
    /// Already a listening socket of this bus (a configured address or another
    /// instance's): accepting on it twice would hand its clients to the wrong listener.
    InUse,
}

/// A filesystem with no service files at all (tests, and buses without service
/// directories).
pub struct NoFiles;

impl super::activation::ServiceFs for NoFiles {
    fn list(&self, _dir: &std::path::Path) -> std::io::Result<Vec<std::ffi::OsString>> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn stat(&self, _path: &std::path::Path) -> std::io::Result<super::activation::FileStamp> {
        Err(std::io::ErrorKind::NotFound.into())
    }
    fn read(&self, _path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        Err(std::io::ErrorKind::NotFound.into())
    }
}

/// A world with nothing behind it: no sockets, no container directory.
pub struct NoWorld;

impl World for NoWorld {
    fn peer_pidfd(&self, _id: ConnId) -> Option<OwnedFd> {
        None
    }

    fn listen_container(
        &mut self,
        _instance: u64,
        _provided: Option<OwnedFd>,
    ) -> Result<(SocketName, String), ListenError> {
        Err(ListenError {
            path: PathBuf::new(),
            step: ListenStep::Bind,
            error: std::io::Error::from(std::io::ErrorKind::Unsupported),
        })
    }

    fn load_config(&mut self) -> Result<crate::config::Config, crate::config::ConfigError> {
        Ok(crate::config::builtin_session())
    }
}
