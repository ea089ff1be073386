//! Process-level startup of the bus, as dbus-daemon does it: sane standard descriptors,
//! printing the address and pid, daemonizing, the pid file, the fd limit, dropping privileges,
//! sd_notify, the transient service directory and logging to syslog.
//!
//! Everything here runs once, before the reactor exists (or after it stopped), so plain
//! blocking system calls are fine.

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, Uid, User};
use std::ffi::{CString, OsStr};
use std::io::{self, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Once, OnceLock};

use crate::cli::SyslogMode;

/// The file-descriptor limit dbus-daemon aims for when it may raise it.
pub const WANTED_FD_LIMIT: u64 = 65536;

/// Why a startup step failed. Displays as the message printed before the bus exits (or,
/// for [`DaemonError::FdLimit`], the warning logged).
#[derive(Debug)]
pub enum DaemonError {
    /// Writing a `--print-*` line to stdout failed.
    WriteStdout(io::Error),
    /// A `--print-*` descriptor is not open.
    InvalidFd(RawFd),
    /// Writing to a `--print-*` descriptor failed.
    WriteFd(RawFd, io::Error),
    /// The pid file exists already.
    PidfileExists(PathBuf),
    /// The pid file could not be created or written.
    WritePidfile(PathBuf, io::Error),
    /// `chdir("/")` before forking failed.
    Chdir(Errno),
    /// `fork` failed (or the process was not single-threaded).
    Fork(io::Error),
    /// RLIMIT_NOFILE could not be read.
    GetFdLimit(io::Error),
    /// RLIMIT_NOFILE could not be raised to the value given.
    FdLimit(u64, io::Error),
    /// `<user>` names no account.
    UnknownUser(String),
    /// `<user>` cannot be passed to the C library (it contains NUL).
    BadUserName(String),
    /// `initgroups` for `<user>` failed.
    SetGroups(String, Errno),
    /// `setgid` failed.
    SetGid(nix::unistd::Gid, Errno),
    /// `setuid` failed.
    SetUid(Uid, Errno),
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DaemonError::WriteStdout(e) => write!(f, "cannot write to stdout: {e}"),
            DaemonError::InvalidFd(fd) => write!(f, "Invalid file descriptor: {fd}"),
            DaemonError::WriteFd(fd, e) => write!(f, "cannot write to fd {fd}: {e}"),
            DaemonError::PidfileExists(path) => write!(
                f,
                "The pid file \"{}\" already exists; if no message bus is running, remove it",
                path.display()
            ),
            DaemonError::WritePidfile(path, e) => {
                write!(f, "Failed to write pid file \"{}\": {e}", path.display())
            }
            DaemonError::Chdir(e) => write!(f, "cannot change directory to /: {e}"),
            DaemonError::Fork(e) => write!(f, "Failed to fork the bus daemon: {e}"),
            DaemonError::GetFdLimit(e) => write!(f, "cannot get the fd limit: {e}"),
            DaemonError::FdLimit(to, e) => write!(f, "cannot raise the fd limit to {to}: {e}"),
            DaemonError::UnknownUser(name) => {
                write!(f, "Could not find user \"{name}\" to run the bus as")
            }
            DaemonError::BadUserName(name) => write!(f, "bad user name {name:?}"),
            DaemonError::SetGroups(name, e) => {
                write!(f, "Failed to set the groups of user \"{name}\": {e}")
            }
            DaemonError::SetGid(gid, e) => write!(f, "Failed to set GID to {gid}: {e}"),
            DaemonError::SetUid(uid, e) => write!(f, "Failed to set UID to {uid}: {e}"),
        }
    }
}

impl std::error::Error for DaemonError {}

// ---------------------------------------------------------------------------
// Standard descriptors
// ---------------------------------------------------------------------------

fn fd_is_open(fd: RawFd) -> bool {
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

/// Make descriptors 0–2 valid by opening `/dev/null` onto the closed ones, so that no
/// listening socket or pid-file descriptor can land on stdout and get written to by accident.
pub fn sanitize_std_fds() -> io::Result<()> {
    for fd in 0..=2 {
        if fd_is_open(fd) {
            continue;
        }
        // open() returns the lowest free number, which is `fd` itself here; dup2 makes sure.
        let null = nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty())?;
        if null != fd {
            nix::unistd::dup2(null, fd)?;
            let _ = nix::unistd::close(null);
        }
    }
    Ok(())
}

/// Block SIGTERM, SIGINT and SIGHUP from the start. The reactor receives them through a
/// signalfd created later; blocking them now keeps one that arrives between printing the
/// address and the reactor's start pending instead of killing the bus uncleanly (a launcher may
/// send SIGTERM as soon as it has read the address). The mask survives the fork.
pub fn block_shutdown_signals() -> io::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut mask = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        mask.add(s);
    }
    mask.thread_block().map_err(io::Error::from)
}

/// Mark every inherited descriptor ≥ 3 close-on-exec, so that processes the bus starts later do
/// not inherit whatever our own parent leaked to us.
pub fn cloexec_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    // Collect first: the directory handle is itself one of the descriptors.
    let fds: Vec<RawFd> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
        }
    }
}

/// Write `line` to descriptor `fd` (as named by `--print-address=FD` / `--print-pid=FD`).
/// Fails with "Invalid file descriptor" when it is not open. The descriptor is left open; see
/// [`close_print_fd`].
pub fn print_to_fd(fd: RawFd, line: &str) -> Result<(), DaemonError> {
    if fd == 1 {
        // Go through std's buffered stdout so nothing printed earlier is reordered.
        let mut out = io::stdout();
        return out
            .write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .map_err(DaemonError::WriteStdout);
    }
    if !fd_is_open(fd) {
        return Err(DaemonError::InvalidFd(fd));
    }
    crate::sys::write_all_fd(fd, line.as_bytes()).map_err(|e| DaemonError::WriteFd(fd, e))
}

/// Close a `--print-*` descriptor once written, unless it is a standard stream (launchers read
/// until EOF on pipes, so keeping it open would hang them).
pub fn close_print_fd(fd: RawFd) {
    if fd > 2 {
        let _ = nix::unistd::close(fd);
    }
}

// ---------------------------------------------------------------------------
// Pid file
// ---------------------------------------------------------------------------

/// Refuse to start when the pid file already exists (dbus-daemon does not guess whether the
/// old bus still runs; the administrator removes a stale file).
pub fn check_pidfile_absent(path: &Path) -> Result<(), DaemonError> {
    if std::fs::symlink_metadata(path).is_ok() {
        return Err(DaemonError::PidfileExists(path.to_path_buf()));
    }
    Ok(())
}

/// Create the pid file exclusively (mode 0644) containing `pid` and a newline.
pub fn write_pidfile(path: &Path, pid: u32) -> Result<(), DaemonError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: io::Error| DaemonError::WritePidfile(path.to_path_buf(), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(err)?;
    f.write_all(format!("{pid}\n").as_bytes()).map_err(err)
}

/// Remove the pid file on the way out; a missing file is not an error.
pub fn remove_pidfile(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            log::warn!("cannot remove pid file {}: {e}", path.display());
        }
    }
}

// ---------------------------------------------------------------------------
// Forking
// ---------------------------------------------------------------------------

/// Which side of [`fork_daemon`] we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The original process; the value is the daemon's pid. It must report the pid and leave
    /// with `_exit` (see [`parent_exit`]).
    Parent(Pid),
    /// The daemon, already detached from the terminal and session.
    Child,
}

/// Daemonize: `chdir("/")` and fork. In the child, stdin/stdout (and stderr unless
/// `DBUS_DEBUG_OUTPUT` is set) go to `/dev/null`, umask becomes 022 unless `keep_umask`, and
/// the child starts a new session.
///
/// Must be called while the process is single-threaded and before the reactor (epoll set,
/// signalfd, blocked signal mask) exists, so that all of those belong to the child.
pub fn fork_daemon(keep_umask: bool) -> Result<Forked, DaemonError> {
    nix::unistd::chdir("/").map_err(DaemonError::Chdir)?;
    // Anything buffered must not be written twice.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // No threads exist before the reactor; the wrapper checks, so the child may run any code.
    match crate::sys::fork_single_threaded() {
        Err(e) => Err(DaemonError::Fork(e)),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => {
            let keep_stderr = std::env::var_os("DBUS_DEBUG_OUTPUT").is_some();
            if let Ok(null) = nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
                let targets: &[RawFd] = if keep_stderr { &[0, 1] } else { &[0, 1, 2] };
                for &t in targets {
                    if null != t {
                        let _ = nix::unistd::dup2(null, t);
                    }
                }
                if null > 2 {
                    let _ = nix::unistd::close(null);
                }
            }
            if !keep_umask {
                nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
            }
            if let Err(e) = nix::unistd::setsid() {
                log::warn!("setsid failed: {e}");
            }
            Ok(Forked::Child)
        }
    }
}

/// Leave the parent of [`fork_daemon`] without running destructors or atexit handlers, which
/// belong to the daemon now (socket files, buffered output).
pub fn parent_exit(code: i32) -> ! {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    crate::sys::exit_now(code)
}

// ---------------------------------------------------------------------------
// Resource limits
// ---------------------------------------------------------------------------

static INITIAL_FD_LIMIT: OnceLock<(u64, u64)> = OnceLock::new();

/// The RLIMIT_NOFILE (soft, hard) found at startup, before [`raise_fd_limit`]; services the bus
/// starts should get this back rather than the raised limit.
pub fn initial_fd_limit() -> Option<(u64, u64)> {
    INITIAL_FD_LIMIT.get().copied()
}

/// The (soft, hard) limit to set given the current one, or None to leave it alone. Root raises
/// the soft limit to at least [`WANTED_FD_LIMIT`] (and the hard limit along with it); anybody
/// may lift the soft limit to the hard one. `u64::MAX` stands for "infinity".
pub fn fd_limit_target(soft: u64, hard: u64, root: bool) -> Option<(u64, u64)> {
    let (mut s, mut h) = (soft, hard);
    if root {
        if s < WANTED_FD_LIMIT {
            s = WANTED_FD_LIMIT;
        }
        if h < s {
            h = s;
        }
    }
    if s < h {
        s = h;
    }
    (s != soft || h != hard).then_some((s, h))
}

// rlim_t is u64 on 64-bit Linux but not on every target.
#[allow(clippy::useless_conversion)]
fn get_nofile() -> io::Result<(u64, u64)> {
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)?;
    Ok((u64::from(soft), u64::from(hard)))
}

fn set_nofile(soft: u64, hard: u64) -> io::Result<()> {
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
        .map_err(io::Error::from)
}

/// Raise RLIMIT_NOFILE as [`fd_limit_target`] says; the error is for an info line, not fatal.
/// Root without CAP_SYS_RESOURCE (e.g. in a container) still gets the soft limit lifted to the
/// hard one.
pub fn raise_fd_limit() -> Result<(), DaemonError> {
    let (soft, hard) = get_nofile().map_err(DaemonError::GetFdLimit)?;
    let _ = INITIAL_FD_LIMIT.set((soft, hard));
    let Some((s, h)) = fd_limit_target(soft, hard, Uid::effective().is_root()) else {
        return Ok(());
    };
    let Err(e) = set_nofile(s, h) else {
        return Ok(());
    };
    if let Some((s2, h2)) = fd_limit_target(soft, hard, false) {
        if set_nofile(s2, h2).is_ok() {
            // dbus-daemon logs the failed raise at its INFO level too.
            log::info!("fd limit raised to {s2} only (not to {s}: {e})");
            return Ok(());
        }
    }
    Err(DaemonError::FdLimit(s, e))
}

// ---------------------------------------------------------------------------
// Transient service directory
// ---------------------------------------------------------------------------

/// `$XDG_RUNTIME_DIR/dbus-1/services` when XDG_RUNTIME_DIR is set and non-empty.
pub fn runtime_servicedir() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|v| !v.is_empty())
        .map(|d| PathBuf::from(d).join("dbus-1").join("services"))
}

/// Create `runtime_dir/dbus-1` and `runtime_dir/dbus-1/services` (mode 0700) if missing; the
/// runtime directory itself must exist. Returns the services directory.
pub fn ensure_runtime_servicedir(runtime_dir: &Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = runtime_dir.join("dbus-1");
    let services = base.join("services");
    for d in [&base, &services] {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", d.display()))),
        }
    }
    Ok(services)
}

// ---------------------------------------------------------------------------
// Changing user
// ---------------------------------------------------------------------------

/// Look up `<user>`: a user name, or failing that a numeric uid.
pub fn resolve_user(name: &str) -> Result<User, DaemonError> {
    let not_found = || DaemonError::UnknownUser(name.to_owned());
    if let Ok(Some(u)) = User::from_name(name) {
        return Ok(u);
    }
    let uid: u32 = name.parse().map_err(|_| not_found())?;
    User::from_uid(Uid::from_raw(uid))
        .ok()
        .flatten()
        .ok_or_else(not_found)
}

/// Switch to `<user>` (its groups, gid, then uid). Nothing to do when already running as that
/// user; otherwise this needs root and any failure is fatal (a bus must not keep privileges it
/// was told to drop).
pub fn switch_user(name: &str) -> Result<(), DaemonError> {
    let u = resolve_user(name)?;
    if nix::unistd::getuid() == u.uid
        && nix::unistd::geteuid() == u.uid
        && nix::unistd::getgid() == u.gid
    {
        return Ok(());
    }
    let cname =
        CString::new(u.name.as_bytes()).map_err(|_| DaemonError::BadUserName(name.to_owned()))?;
    nix::unistd::initgroups(&cname, u.gid)
        .map_err(|e| DaemonError::SetGroups(name.to_owned(), e))?;
    nix::unistd::setgid(u.gid).map_err(|e| DaemonError::SetGid(u.gid, e))?;
    nix::unistd::setuid(u.uid).map_err(|e| DaemonError::SetUid(u.uid, e))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------

/// Send `state` (e.g. `READY=1`) to the service manager at `$NOTIFY_SOCKET`. Ok(false) when
/// the variable is unset.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(s) if !s.is_empty() => sd_notify_to(&s, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Send `state` as one datagram to the notification socket `socket`: a path, or an abstract
/// name written with a leading `@`.
pub fn sd_notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(bytes.get(1..).unwrap_or(&[]))?
        }
        Some(b'/') => SocketAddr::from_pathname(Path::new(socket))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither a path nor an abstract (@) name",
            ))
        }
    };
    let sock = UnixDatagram::unbound()?;
    let n = sock.send_to_addr(state.as_bytes(), &addr)?;
    if n != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short notification",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Logging
// ---------------------------------------------------------------------------

const LOG_STDERR: u8 = 1;
const LOG_SYSLOG: u8 = 2;

/// Where log records go; stderr only until [`set_log_mode`] says otherwise.
static LOG_TARGETS: AtomicU8 = AtomicU8::new(LOG_STDERR);
static OPENLOG: Once = Once::new();

/// An env_logger (filtering by `RUST_LOG`, default `info`, writing to stderr) that can also, or
/// instead, write to syslog.
pub struct BusLogger {
    inner: env_logger::Logger,
}

impl log::Log for BusLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        let targets = LOG_TARGETS.load(Ordering::Relaxed);
        if targets & LOG_STDERR != 0 {
            self.inner.log(record);
        }
        if targets & LOG_SYSLOG != 0 {
            syslog_write(record.level(), &record.args().to_string());
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Install [`BusLogger`] as the `log` backend. Call once, first thing.
pub fn init_logging() {
    let rust_log = std::env::var("RUST_LOG").ok();
    let inner = env_logger::Builder::new()
        .parse_filters(log_filter(rust_log.as_deref()))
        .format_timestamp(None)
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(BusLogger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// The log filter for a `RUST_LOG` value: unset, empty or blank means the default, `info`
/// (env_logger alone reads an empty `RUST_LOG` as "errors only", which would hide every
/// warning, refusals included).
fn log_filter(rust_log: Option<&str>) -> &str {
    match rust_log {
        Some(v) if !v.trim().is_empty() => v,
        _ => "info",
    }
}

/// The targets (stderr, syslog) for a logging mode: the command line wins, else `<syslog/>`
/// means syslog plus stderr.
pub fn log_targets(cli: Option<SyslogMode>, config_syslog: bool) -> (bool, bool) {
    match cli {
        Some(SyslogMode::Never) => (true, false),
        Some(SyslogMode::Always) => (true, true),
        Some(SyslogMode::Only) => (false, true),
        None if config_syslog => (true, true),
        None => (true, false),
    }
}

/// Choose where log records go. The system bus logs with facility LOG_DAEMON, others LOG_USER.
pub fn set_log_mode(cli: Option<SyslogMode>, config_syslog: bool, system_bus: bool) {
    let (stderr, syslog) = log_targets(cli, config_syslog);
    if syslog {
        OPENLOG.call_once(|| {
            let facility = if system_bus {
                libc::LOG_DAEMON
            } else {
                libc::LOG_USER
            };
            crate::sys::openlog(c"sluicebus", facility);
        });
    }
    let bits = if stderr { LOG_STDERR } else { 0 } | if syslog { LOG_SYSLOG } else { 0 };
    LOG_TARGETS.store(bits, Ordering::Relaxed);
}

/// Report the error that ends the process: always on stderr (where launchers look for it, and
/// which is /dev/null in a forked daemon), and in syslog too when logging there.
pub fn report_fatal(msg: &str) {
    eprintln!("{msg}");
    if LOG_TARGETS.load(Ordering::Relaxed) & LOG_SYSLOG != 0 {
        syslog_write(log::Level::Error, msg);
    }
}

fn syslog_write(level: log::Level, msg: &str) {
    let prio = match level {
        log::Level::Error => libc::LOG_ERR,
        log::Level::Warn => libc::LOG_WARNING,
        log::Level::Info => libc::LOG_INFO,
        log::Level::Debug | log::Level::Trace => libc::LOG_DEBUG,
    };
    // Interior NULs (possible in peer-supplied names quoted in messages) would truncate.
    let text = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    crate::sys::syslog(prio, &text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_rust_log_means_the_default_level() {
        assert_eq!(log_filter(None), "info");
        assert_eq!(log_filter(Some("")), "info");
        assert_eq!(log_filter(Some("  ")), "info");
        assert_eq!(log_filter(Some("debug")), "debug");
        assert_eq!(log_filter(Some("sluicebus=warn")), "sluicebus=warn");
    }
    use std::io::Read;
    use std::os::fd::IntoRawFd;
    use std::os::unix::fs::PermissionsExt;

    fn tempdir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "sluicebus-daemon-unit-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn fd_limit_targets() {
        // Unprivileged: soft up to hard, never beyond.
        assert_eq!(fd_limit_target(1024, 4096, false), Some((4096, 4096)));
        assert_eq!(fd_limit_target(1024, 1024, false), None);
        assert_eq!(
            fd_limit_target(1024, u64::MAX, false),
            Some((u64::MAX, u64::MAX))
        );
        // Root: at least 65536, hard raised along.
        assert_eq!(fd_limit_target(1024, 4096, true), Some((65536, 65536)));
        assert_eq!(
            fd_limit_target(1024, 1 << 20, true),
            Some((1 << 20, 1 << 20))
        );
        assert_eq!(fd_limit_target(65536, 65536, true), None);
        assert_eq!(fd_limit_target(u64::MAX, u64::MAX, true), None);
        assert_eq!(fd_limit_target(100_000, 100_000, true), None);
    }

    #[test]
    fn raise_fd_limit_records_initial() {
        let before = get_nofile().unwrap();
        // Lifting the soft limit to the hard one is always permitted; only root's raise
        // beyond the hard limit may fail (no CAP_SYS_RESOURCE in a container).
        if let Err(e) = raise_fd_limit() {
            assert!(
                Uid::effective().is_root() && before.1 < WANTED_FD_LIMIT,
                "{e}"
            );
        }
        assert!(initial_fd_limit().is_some());
        let after = get_nofile().unwrap();
        assert!(
            after.0 >= before.0 && after.0 == after.1,
            "{before:?} -> {after:?}"
        );
    }

    #[test]
    fn pidfile_lifecycle() {
        let d = tempdir("pid");
        let p = d.join("bus.pid");
        check_pidfile_absent(&p).unwrap();
        write_pidfile(&p, 4242).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "4242\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o644, 0, "mode {mode:o}");
        let e = check_pidfile_absent(&p).unwrap_err().to_string();
        assert!(e.contains("bus.pid") && e.contains("exists"), "{e}");
        // Exclusive creation: an existing file is never overwritten.
        assert!(write_pidfile(&p, 1).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "4242\n");
        remove_pidfile(&p);
        assert!(!p.exists());
        remove_pidfile(&p); // already gone: quiet
        assert!(write_pidfile(&d.join("missing/dir/pid"), 1).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn print_to_pipe_and_bad_fd() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let wfd = w.into_raw_fd();
        print_to_fd(wfd, "unix:path=/x,guid=0\n").unwrap();
        close_print_fd(wfd);
        let mut s = String::new();
        std::fs::File::from(r).read_to_string(&mut s).unwrap();
        assert_eq!(s, "unix:path=/x,guid=0\n");
        // A descriptor that is not open is an error, not a panic. (Not `wfd` again: tests run
        // in parallel threads and another one may have been given that number meanwhile.)
        let e = print_to_fd(-1, "x\n").unwrap_err();
        assert_eq!(e.to_string(), "Invalid file descriptor: -1");
        assert!(print_to_fd(i32::MAX, "x\n").is_err());
    }

    #[test]
    fn runtime_servicedir_created_0700() {
        let d = tempdir("rt");
        let s = ensure_runtime_servicedir(&d).unwrap();
        assert_eq!(s, d.join("dbus-1/services"));
        for p in [d.join("dbus-1"), s.clone()] {
            let m = std::fs::metadata(&p).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.permissions().mode() & 0o777, 0o700, "{}", p.display());
        }
        // Idempotent.
        ensure_runtime_servicedir(&d).unwrap();
        // A file in the way is an error.
        let d2 = tempdir("rt2");
        std::fs::write(d2.join("dbus-1"), "").unwrap();
        assert!(ensure_runtime_servicedir(&d2).is_err());
        // A missing runtime directory is an error, not created behind the user's back.
        assert!(ensure_runtime_servicedir(&d.join("nope")).is_err());
        assert!(!d.join("nope").exists());
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&d2).unwrap();
    }

    #[test]
    fn users() {
        assert_eq!(resolve_user("root").unwrap().uid.as_raw(), 0);
        assert_eq!(resolve_user("0").unwrap().name, "root");
        assert!(resolve_user("no-such-user-sluicebus").is_err());
        assert!(resolve_user("").is_err());
        assert!(resolve_user("4294967296").is_err());
        // Switching to ourselves is a no-op that needs no privileges.
        let me = User::from_uid(nix::unistd::getuid()).unwrap().unwrap();
        if nix::unistd::getgid() == me.gid {
            switch_user(&me.name).unwrap();
        }
        if !Uid::effective().is_root() {
            assert!(switch_user("root").is_err());
        }
    }

    #[test]
    fn notify_path_and_abstract() {
        use std::os::unix::net::UnixDatagram;
        let d = tempdir("notify");
        let path = d.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        sd_notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("sluicebus-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server2 = UnixDatagram::bind_addr(&addr).unwrap();
        sd_notify_to(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = server2.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");

        assert!(sd_notify_to(OsStr::new("relative"), "READY=1").is_err());
        assert!(sd_notify_to(OsStr::new(""), "READY=1").is_err());
        // Nobody listening.
        assert!(sd_notify_to(d.join("absent").as_os_str(), "READY=1").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn log_target_choice() {
        assert_eq!(log_targets(None, false), (true, false));
        assert_eq!(log_targets(None, true), (true, true));
        assert_eq!(log_targets(Some(SyslogMode::Never), true), (true, false));
        assert_eq!(log_targets(Some(SyslogMode::Always), false), (true, true));
        assert_eq!(log_targets(Some(SyslogMode::Only), false), (false, true));
    }

    #[test]
    fn shutdown_signals_blocked() {
        use nix::sys::signal::{SigSet, SigmaskHow, Signal};
        block_shutdown_signals().unwrap();
        let mut cur = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, None, Some(&mut cur)).unwrap();
        for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            assert!(cur.contains(s), "{s:?}");
        }
        assert!(!cur.contains(Signal::SIGUSR1));
    }

    #[test]
    fn std_fds_stay_valid() {
        sanitize_std_fds().unwrap();
        for fd in 0..=2 {
            assert!(fd_is_open(fd));
        }
    }
}
