//! Listening sockets from D-Bus listen addresses, and the connectable address each prints.

use crate::wire::address::{self, Family, ListenAddress};
use crate::wire::auth::NONCE_LEN;
use mio::net::{TcpListener, UnixListener};
use std::io;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};

/// A bound, listening socket.
pub enum Listener {
    /// AF_UNIX (path or abstract).
    Unix(UnixListener),
    /// TCP.
    Tcp(TcpListener),
}

/// A listener plus what to print and clean up.
pub struct Bound {
    /// The socket.
    pub listener: Listener,
    /// Connectable address with guid, as printed by `--print-address`.
    pub address: String,
    /// Socket file to unlink on exit.
    pub cleanup: Option<PathBuf>,
    /// The server GUID sent in `OK` (shared with each connection's SASL state).
    pub guid: std::rc::Rc<str>,
    /// A `nonce-tcp:` listener's nonce file (removed when the listener is dropped).
    pub nonce: Option<NonceFile>,
    /// How many connections to accept per turn, and whether epoll watches it now.
    pub pace: Pace,
}

/// Connections accepted from one listener in a turn of a connect burst.
pub const ACCEPT_BURST: usize = 64;

/// How many connections the reactor accepts from a listener per turn.
///
/// Listeners are registered level-triggered (`sys::epoll_level`): epoll reports one in every
/// turn while connections wait in its queue, so accepting fewer than are queued loses none,
/// and the reactor need not call `accept` until it fails with `EAGAIN` (edge-triggered, it
/// had to: one call per turn that found the queue empty). A connection that comes while the
/// bus is busy with others (the `connect` benchmark's, one client after another) is accepted
/// by one call. A listener reported again in the turn after one that used its whole budget
/// may have had connections left: a burst, from which up to [`ACCEPT_BURST`] are taken per
/// turn rather than one per `epoll_wait`, the last call of a drained burst finding none.
/// After a turn that found the queue empty, the budget is one again: under steady load
/// (clients connecting one after another, several at a time), a listener is reported in
/// nearly every turn, and draining each time cost an `accept` that found nothing in nearly
/// every turn, not every other one.
#[derive(Debug, Default)]
pub struct Pace {
    /// The reactor turn of the last accept from this listener.
    last_turn: Option<u64>,
    /// That turn's accepting ended without finding the queue empty.
    full: bool,
    /// Out of the epoll set's interest: accepting paused at `max_incomplete_connections`,
    /// or `accept` lacking resources (descriptors, memory), which would otherwise report
    /// the listener again at once, every turn.
    pub off: bool,
}

impl Pace {
    /// The most connections to accept in reactor turn `turn` (counted by the reactor, one
    /// per `epoll_wait`).
    pub fn budget(&mut self, turn: u64) -> usize {
        let burst = self.full && self.last_turn.is_some_and(|t| t.wrapping_add(1) == turn);
        self.last_turn = Some(turn);
        self.full = true;
        if burst {
            ACCEPT_BURST
        } else {
            1
        }
    }

    /// This turn's `accept` found the queue empty.
    pub fn drained(&mut self) {
        self.full = false;
    }
}

/// The nonce file of a `nonce-tcp:` listener, as dbus-daemon makes it: 16 random bytes in
/// `nonce` inside a fresh `dbus_nonce-XXXXXXXX` directory, private to the bus's user, in
/// the temporary directory (`$TMPDIR`, `$TMP`, `$TEMP`, else `/tmp`). Clients prove they
/// can read it by sending the bytes first (D-Bus specification, "Nonce-authenticated TCP
/// Sockets"). The file and its directory are removed on drop.
pub struct NonceFile {
    dir: PathBuf,
    path: PathBuf,
    bytes: [u8; NONCE_LEN],
}

impl NonceFile {
    /// Make a new nonce and its file.
    pub fn create() -> io::Result<NonceFile> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let mut bytes = [0u8; NONCE_LEN];
        crate::sys::getrandom(&mut bytes)?;
        let tmp = ["TMPDIR", "TMP", "TEMP"]
            .iter()
            .find_map(|v| std::env::var_os(v).filter(|d| !d.is_empty()))
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
        let mut attempt = 0;
        let dir = loop {
            let dir = tmp.join(format!("dbus_nonce-{}", &random_suffix()[..8]));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let path = dir.join("nonce");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(NonceFile { dir, path, bytes })
    }

    /// The file clients read the nonce from (printed as `noncefile=`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The nonce.
    pub fn bytes(&self) -> [u8; NONCE_LEN] {
        self.bytes
    }
}

impl Drop for NonceFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

fn random_suffix() -> String {
    let g = crate::auth_world::new_guid();
    g.chars().take(10).collect()
}

fn bind_unix_path(path: &Path) -> io::Result<StdUnixListener> {
    // An existing *socket* at the path is stale: remove it (as dbus-daemon does).
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    let l = StdUnixListener::bind(path)?;
    // Access is decided by authentication and policy, not file modes: like dbus-daemon,
    // make the socket connectable by every uid (the umask would otherwise lock others out).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))?;
    Ok(l)
}

fn bind_unix_abstract(name: &[u8]) -> io::Result<StdUnixListener> {
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new_abstract(name)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr)?;
    listen(&fd, Backlog::new(128).unwrap_or(Backlog::MAXCONN))?;
    Ok(StdUnixListener::from(fd))
}

/// Bind one listen address. `guid` is the server GUID to attach.
pub fn bind(addr: &ListenAddress, guid: &str) -> io::Result<Bound> {
    let (std_listener, address, cleanup) = match addr {
        ListenAddress::UnixPath(p) => {
            let l = bind_unix_path(p)?;
            (l, address::format_unix_path(p, guid), Some(p.clone()))
        }
        ListenAddress::UnixAbstract(name) => {
            let l = bind_unix_abstract(name)?;
            (l, address::format_unix_abstract(name, guid), None)
        }
        ListenAddress::UnixDir(dir) | ListenAddress::UnixTmpdir(dir) => {
            let p = dir.join(format!("dbus-{}", random_suffix()));
            let l = bind_unix_path(&p)?;
            (l, address::format_unix_path(&p, guid), Some(p))
        }
        ListenAddress::UnixRuntime => {
            let dir = std::env::var_os("XDG_RUNTIME_DIR").ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "unix:runtime=yes was specified but XDG_RUNTIME_DIR is not set",
                )
            })?;
            let p = PathBuf::from(dir).join("bus");
            let l = bind_unix_path(&p)?;
            (l, address::format_unix_path(&p, guid), Some(p))
        }
        ListenAddress::Tcp {
            host,
            port,
            family,
            bind: bind_host,
        } => {
            let (listener, port) = bind_tcp(host, *port, *family, bind_host.as_deref())?;
            return Ok(Bound {
                listener,
                address: address::format_tcp(host, port, *family, guid),
                cleanup: None,
                guid: guid.into(),
                nonce: None,
                pace: Pace::default(),
            });
        }
        ListenAddress::NonceTcp {
            host,
            port,
            family,
            bind: bind_host,
        } => {
            let (listener, port) = bind_tcp(host, *port, *family, bind_host.as_deref())?;
            let nonce = NonceFile::create()?;
            return Ok(Bound {
                listener,
                address: address::format_nonce_tcp(host, port, *family, nonce.path(), guid),
                cleanup: None,
                guid: guid.into(),
                nonce: Some(nonce),
                pace: Pace::default(),
            });
        }
        ListenAddress::Systemd => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "use systemd_listeners() for systemd: addresses",
            ))
        }
    };
    std_listener.set_nonblocking(true)?;
    Ok(Bound {
        listener: Listener::Unix(UnixListener::from_std(std_listener)),
        address,
        cleanup,
        guid: guid.into(),
        nonce: None,
        pace: Pace::default(),
    })
}

/// Bind a TCP listener for `tcp:` or `nonce-tcp:`; returns it and the port it got.
fn bind_tcp(
    host: &str,
    port: u16,
    family: Option<Family>,
    bind_host: Option<&str>,
) -> io::Result<(Listener, u16)> {
    let h = bind_host.unwrap_or(host);
    let h = if h == "*" { "0.0.0.0" } else { h };
    let sa = std::net::ToSocketAddrs::to_socket_addrs(&(h, port))?
        .find(|a| match family {
            Some(Family::Ipv4) => a.is_ipv4(),
            Some(Family::Ipv6) => a.is_ipv6(),
            None => true,
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address for host"))?;
    let std_tcp = std::net::TcpListener::bind(sa)?;
    std_tcp.set_nonblocking(true)?;
    let port = std_tcp.local_addr()?.port();
    Ok((Listener::Tcp(TcpListener::from_std(std_tcp)), port))
}

/// Sockets passed by systemd socket activation (`LISTEN_FDS`, starting at fd 3).
pub fn systemd_listeners(guid: &str) -> io::Result<Vec<Bound>> {
    let mut out = Vec::new();
    for owned in crate::sys::systemd_listen_fds()? {
        let l = StdUnixListener::from(owned);
        l.set_nonblocking(true)?;
        let address = match l
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        {
            Some(p) => address::format_unix_path(&p, guid),
            None => format!("unix:guid={guid}"),
        };
        out.push(Bound {
            listener: Listener::Unix(UnixListener::from_std(l)),
            address,
            cleanup: None,
            guid: guid.into(),
            nonce: None,
            pace: Pace::default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_turn_unless_reported_after_a_full_turn() {
        let mut p = Pace::default();
        assert_eq!(p.budget(5), 1);
        // Reported again in the next turn: connections may have been left queued.
        assert_eq!(p.budget(6), ACCEPT_BURST);
        assert_eq!(p.budget(7), ACCEPT_BURST);
        // That turn drained the queue: the next report is of new connections.
        p.drained();
        assert_eq!(p.budget(8), 1);
        assert_eq!(p.budget(9), ACCEPT_BURST);
        // A turn without it: the queue was empty; the next connection comes alone.
        assert_eq!(p.budget(11), 1);
        assert_eq!(p.budget(20), 1);
    }
}
