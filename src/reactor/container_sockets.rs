//! The listening sockets of Containers1 instances: where they go, how they are made, and
//! which instance each listener slot serves.
//!
//! The bus decides when an instance listens; this module does the filesystem and socket
//! work it asks for (through [`crate::bus::World::listen_container`] and
//! [`crate::bus::Effect::Unlisten`]): it binds the bus's own sockets, and checks a socket
//! the caller provided (AddServer's `Socket` named argument).

use crate::bus::world::{ListenError, ListenStep, SocketName, SocketProblem};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// Where container sockets go, chosen on first use.
#[derive(Debug, Default)]
pub struct SocketDir {
    dir: Option<PathBuf>,
}

impl SocketDir {
    /// The directory for container sockets, created on first use for per-user buses.
    pub fn get(&mut self, daemon_uid: u32) -> Result<PathBuf, ListenError> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let (dir, create) = choose_dir(daemon_uid, std::env::var_os("XDG_RUNTIME_DIR"), tmp_dir());
        if let Some(parent) = create {
            for d in [parent.as_path(), dir.as_path()] {
                if let Err(error) = mkdir_private(d) {
                    return Err(ListenError {
                        path: d.to_owned(),
                        step: ListenStep::CreateDir,
                        error,
                    });
                }
            }
        }
        self.dir = Some(dir.clone());
        Ok(dir)
    }
}

/// Where sockets go: `/run/dbus/containers` (pre-existing) for a uid-0 bus, else
/// `$XDG_RUNTIME_DIR/dbus-1/containers` (created; the parent to create is returned too),
/// else the temporary directory.
fn choose_dir(
    daemon_uid: u32,
    xdg_runtime_dir: Option<std::ffi::OsString>,
    tmp: PathBuf,
) -> (PathBuf, Option<PathBuf>) {
    if daemon_uid == 0 {
        return (PathBuf::from("/run/dbus/containers"), None);
    }
    match xdg_runtime_dir {
        Some(x) if !x.is_empty() => {
            let parent = PathBuf::from(x).join("dbus-1");
            (parent.join("containers"), Some(parent))
        }
        _ => (tmp, None),
    }
}

fn tmp_dir() -> PathBuf {
    ["TMPDIR", "TMP", "TEMP"]
        .iter()
        .find_map(|k| std::env::var_os(k).filter(|v| !v.is_empty()))
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

fn mkdir_private(d: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(d) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Bind `dir/dbus-<name>`, non-blocking, connectable by every uid (the uid check is done
/// at authentication). `name` is random (ten characters of a fresh GUID).
pub fn bind(dir: &Path, name: &str) -> Result<(UnixListener, PathBuf), ListenError> {
    let path = dir.join(format!("dbus-{name}"));
    let err = |error| ListenError {
        path: path.clone(),
        step: ListenStep::Bind,
        error,
    };
    let l = UnixListener::bind(&path).map_err(err)?;
    let setup = || -> std::io::Result<()> {
        l.set_nonblocking(true)?;
        use std::os::unix::fs::PermissionsExt;
        // Best effort, as dbus-daemon: the umask could otherwise lock the sandbox out.
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        Ok(())
    };
    if let Err(e) = setup() {
        let _ = std::fs::remove_file(&path);
        return Err(err(e));
    }
    Ok((l, path))
}

/// Check a caller-provided socket (AddServer's `Socket`, the upstream Containers1 design's
/// caller-provided listening socket): it must be an `AF_UNIX` `SOCK_STREAM` socket that is
/// listening, bound to an absolute path or an abstract name (a listening unix socket is
/// always bound: `listen(2)` refuses unbound ones, and the kernel's autobind gives an
/// abstract name). `fd` is the bus's own close-on-exec duplicate; it is not yet
/// non-blocking (see [`make_nonblocking`]). Returns it as a listener, and its name.
pub fn check_provided(fd: OwnedFd) -> Result<(UnixListener, SocketName), ListenError> {
    let unsuitable = |problem, error| ListenError {
        path: PathBuf::new(),
        step: ListenStep::Unsuitable(problem),
        error,
    };
    let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let kind = crate::sys::socket_kind(&fd).map_err(|e| unsuitable(SocketProblem::NotSocket, e))?;
    if kind.domain != libc::AF_UNIX {
        return Err(unsuitable(SocketProblem::NotUnix, invalid()));
    }
    if kind.kind != libc::SOCK_STREAM {
        return Err(unsuitable(SocketProblem::NotStream, invalid()));
    }
    if !kind.listening {
        return Err(unsuitable(SocketProblem::NotListening, invalid()));
    }
    let l = UnixListener::from(fd);
    let addr = l
        .local_addr()
        .map_err(|e| unsuitable(SocketProblem::Unnamed, e))?;
    use std::os::linux::net::SocketAddrExt;
    let name = if let Some(p) = addr.as_pathname() {
        if !p.is_absolute() {
            return Err(unsuitable(SocketProblem::RelativePath, invalid()));
        }
        SocketName::Path(p.to_owned())
    } else if let Some(a) = addr.as_abstract_name() {
        SocketName::Abstract(a.to_vec())
    } else {
        return Err(unsuitable(SocketProblem::Unnamed, invalid()));
    };
    Ok((l, name))
}

/// Make a checked caller-provided socket non-blocking, as the reactor needs. `O_NONBLOCK`
/// belongs to the open file description, which the caller's fd shares: the caller's copy
/// becomes non-blocking too, as with any listening socket shared between processes.
pub fn make_nonblocking(l: &UnixListener) -> Result<(), ListenError> {
    l.set_nonblocking(true).map_err(|error| ListenError {
        path: PathBuf::new(),
        step: ListenStep::Adopt,
        error,
    })
}

/// How long an `accept` on a caller-provided socket may block before SIGALRM interrupts it.
pub const ACCEPT_INTERRUPT: std::time::Duration = std::time::Duration::from_millis(20);

/// Accept a connection on a caller-provided socket.
///
/// The caller keeps its own fd of the socket, which shares the bus's open file description,
/// so it can clear `O_NONBLOCK` at any time; an `accept` would then block the whole bus
/// until someone connects (the caller could also take the pending connection itself first).
/// So the flag is checked before each call (cleared: [`Tampered`] error), and the call runs
/// under [`crate::sys::interrupt_within`], so a flag cleared between the check and the call
/// costs at most [`ACCEPT_INTERRUPT`] (`Interrupted` error). Either way the reactor stops
/// serving the socket.
pub fn accept_provided(
    l: &mio::net::UnixListener,
) -> std::io::Result<(mio::net::UnixStream, std::os::unix::net::SocketAddr)> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::fd::AsRawFd;
    let flags = fcntl(l.as_raw_fd(), FcntlArg::F_GETFL)?;
    if !OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK) {
        return Err(std::io::Error::other(Tampered));
    }
    crate::sys::interrupt_within(ACCEPT_INTERRUPT, || l.accept())
}

/// The caller made its provided socket blocking (see [`accept_provided`]).
#[derive(Debug)]
pub struct Tampered;

impl std::fmt::Display for Tampered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the caller made the socket blocking")
    }
}

impl std::error::Error for Tampered {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_choice() {
        let tmp = PathBuf::from("/tmpx");
        assert_eq!(
            choose_dir(0, Some("/run/user/0".into()), tmp.clone()),
            (PathBuf::from("/run/dbus/containers"), None)
        );
        assert_eq!(
            choose_dir(1000, Some("/run/user/1000".into()), tmp.clone()),
            (
                PathBuf::from("/run/user/1000/dbus-1/containers"),
                Some(PathBuf::from("/run/user/1000/dbus-1"))
            )
        );
        assert_eq!(choose_dir(1000, None, tmp.clone()), (tmp.clone(), None));
        assert_eq!(choose_dir(1000, Some("".into()), tmp.clone()), (tmp, None));
    }
}
