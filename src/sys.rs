//! Every `unsafe` block of sluicebus, each behind a small safe function.
//!
//! # Why there is any `unsafe` at all
//!
//! `std` and `nix` cover almost everything a bus needs, but not quite all of it:
//!
//! * **Descriptors the kernel hands over as numbers.** `SCM_RIGHTS` (fd passing, D-Bus
//!   specification "Message Format", `UNIX_FDS`), `SO_PEERPIDFD`, `pidfd_open` and systemd
//!   socket activation all produce raw fd numbers. Turning a number into an [`OwnedFd`] is
//!   `unsafe` because Rust's I/O safety says an fd has exactly one owner: wrapping a number
//!   someone else owns leads to a double close, and the second close may hit an unrelated
//!   file that reused the number. `nix` 0.29 returns such fds as `RawFd`.
//! * **Socket options `nix` does not know**: `SO_PEERGROUPS`, `SO_PEERSEC` and `SO_PEERPIDFD`
//!   (credentials dbus-daemon reports in `GetConnectionCredentials`), and `SO_DOMAIN` (with
//!   `SO_TYPE` and `SO_ACCEPTCONN`, to check a caller-provided Containers1 socket) go
//!   through `libc::getsockopt` with a caller-supplied buffer.
//! * **epoll entries mio does not make**: mio registers everything edge-triggered; the
//!   listening sockets are registered level-triggered ([`epoll_level`]).
//! * **Process control**: `fork` (daemonizing, as `dbus-daemon --fork` does), `_exit`,
//!   code run between `fork` and `exec` (`CommandExt::pre_exec`), the SIGPIPE
//!   disposition (`sigaction`), and an interval timer (`setitimer`) whose SIGALRM bounds an
//!   `accept` on a socket a Containers1 caller provided and may have made blocking; the
//!   process's time slice (`sched_getattr`/`sched_setattr`, which libc only wraps as
//!   raw system calls: [`lengthen_time_slice`]).
//! * **libc services without a safe binding**: `openlog`/`syslog`, `getrandom` and
//!   `malloc_trim` and `mallopt` (giving a drained flood's heap back to the kernel).
//! * **A buffer filled by the kernel but zeroed lazily** ([`ZeroedOnDemand`]): a large
//!   message is received straight into the shared buffer it will be relayed from, and only
//!   the part about to be read into is zeroed, so a peer that announces a large message and
//!   sends nothing commits no memory (`std` has no safe "initialise as you go" `Rc<[u8]>`).
//!
//! # Invariants the wrappers rely on
//!
//! * **Fd ownership.** [`own_fd`] is only applied to numbers the kernel has just created for
//!   us (`recvmsg`'s `SCM_RIGHTS`, `getsockopt(SO_PEERPIDFD)`, `pidfd_open`) or that systemd
//!   passed to this process (`LISTEN_FDS`, taken at most once). Nothing else in the process
//!   can know these numbers yet, so the new `OwnedFd` is their only owner.
//! * **Borrowing by number** ([`borrow_fd`]) lasts for a single system call on a descriptor
//!   just checked to be open. A write to an fd number can never break memory safety; at
//!   worst it fails with `EBADF`.
//! * **Buffers passed to the kernel** are live Rust allocations, and the length we pass is
//!   the length of that allocation in bytes; the kernel writes at most that much and reports
//!   how much it wrote, and only that prefix is used.
//! * **Initialisation**: a `MaybeUninit` byte is read as `u8` only after it was written
//!   (zeroed or copied); [`ZeroedOnDemand`] tracks that boundary and never moves it past
//!   bytes it has not written itself, or that `recvmsg` did not report having written
//!   ([`ZeroedOnDemand::recv_tail`], which hands the kernel raw pointers only).
//! * **`fork` in a single-threaded process.** After `fork` only the calling thread exists in
//!   the child; if other threads held locks (the allocator's, stdio's), the child would
//!   deadlock on them. [`fork_single_threaded`] checks `/proc/self/task` and refuses to fork
//!   a process with more than one thread, so the child may run ordinary Rust code.
//! * **Async-signal safety between `fork` and `exec`.** `std::process::Command` forks from
//!   a possibly multi-threaded process, so `pre_exec` closures ([`prepare_child`],
//!   [`unblock_in_child`]) only make async-signal-safe system calls (`sigprocmask`,
//!   `sched_setattr`, `setrlimit`), allocate nothing and take no locks.
//! * **Signal dispositions**: only `SIG_IGN` and, for SIGALRM, a handler with an empty
//!   body are installed, so no handler code that does anything can run at an arbitrary
//!   point.
//!
//! Functions that accept raw fd numbers are `unsafe fn` with a `# Safety` section; every
//! caller lives in this module and states why the number is owned or open there.

use std::ffi::CStr;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

// ---------------------------------------------------------------------------
// Raw descriptors
// ---------------------------------------------------------------------------

/// Take ownership of the descriptor `fd`.
///
/// # Safety
///
/// `fd` must be an open descriptor that nothing else in the process owns or will close: the
/// returned [`OwnedFd`] closes it when dropped.
pub unsafe fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller guarantees `fd` is open and has no other owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Borrow the descriptor `fd` for `'a`.
///
/// # Safety
///
/// `fd` must be open, and stay open (nobody closes it) for all of `'a`.
pub unsafe fn borrow_fd<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: the caller guarantees `fd` stays open for `'a`.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Whether `fd` is an open descriptor of this process.
fn fd_is_open(fd: RawFd) -> bool {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

/// Whether descriptor `fd` has hung up or failed (or is not open), checked without waiting.
/// Only the poll result is read, so any number is harmless: nothing is read from or written
/// to the descriptor.
pub fn hung_up(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid, initialised pollfd that lives across the call, and nfds is 1;
    // poll(2) only writes `revents`.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

/// Write all of `buf` to descriptor `fd`, a number given on the command line (such as
/// `--print-address=FD`) and thus inherited, not owned by any object in this process.
/// Retries on `EINTR`; fails with `EBADF` when `fd` is not open.
pub fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        if !fd_is_open(fd) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        // SAFETY: `fd` was just seen open, and the borrow ends with this one write call. Should
        // another thread close the number in between, the write fails with EBADF or reaches
        // whatever reused it; neither can affect memory safety.
        let fd_ref = unsafe { borrow_fd(fd) };
        match nix::unistd::write(fd_ref, buf) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
            Ok(n) => buf = buf.get(n..).unwrap_or(&[]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A close-on-exec duplicate of descriptor `fd`, a number given on the command line (such
/// as xdg-dbus-proxy's `--fd=FD` or `--args=FD`) and thus inherited, not owned by anything in
/// this process. The original number stays open; the duplicate can be read, written, polled
/// and passed on like any owned descriptor. Fails with `EBADF` when `fd` is not open.
pub fn dup_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 || !fd_is_open(fd) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: `fd` was just seen open, and the borrow ends with the one fcntl(F_DUPFD_CLOEXEC)
    // below. Should another thread close the number in between, the call fails with EBADF or
    // duplicates whatever reused it; neither can affect memory safety.
    let borrowed = unsafe { borrow_fd(fd) };
    borrowed.try_clone_to_owned()
}

/// Set once [`systemd_listen_fds`] has handed out the descriptors, so they get one owner.
static LISTEN_FDS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Take ownership of the listening sockets systemd passed (`LISTEN_FDS` descriptors from 3,
/// meant for this process when `LISTEN_PID` is unset or ours; sd_listen_fds(3)).
///
/// Succeeds once per process; later calls, and calls without passed sockets, fail with
/// `InvalidInput`.
pub fn systemd_listen_fds() -> io::Result<Vec<OwnedFd>> {
    let none = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "systemd: address but no sockets were passed (LISTEN_FDS)",
        )
    };
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_none_or(|p| p == std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if !pid_ok || !(1..=65536).contains(&n) {
        return Err(none());
    }
    let fds = 3..3 + n;
    if !fds.clone().all(fd_is_open) {
        return Err(none());
    }
    if LISTEN_FDS_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(none());
    }
    Ok(fds
        .map(|fd| {
            // SAFETY: systemd passed these open descriptors to this process (checked above by
            // LISTEN_PID and F_GETFD); the flag above lets only this one call take them, so
            // each gets exactly one owner.
            unsafe { own_fd(fd) }
        })
        .collect())
}

/// What one [`recv_with_fds`] brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes read into the buffer (0: end of stream).
    pub bytes: usize,
    /// Descriptors appended to the caller's vector.
    pub fds: usize,
    /// The kernel dropped descriptors that did not fit the control buffer (`MSG_CTRUNC`).
    pub truncated: bool,
}

/// `recvmsg` on socket `fd` into `buf`, with `cmsg` as control buffer; descriptors passed
/// with `SCM_RIGHTS` arrive close-on-exec and are appended to `fds`, owned.
pub fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> nix::Result<Received> {
    // SAFETY: `buf` is a live, writable allocation of `buf.len()` bytes.
    unsafe { recvmsg_into(fd, buf.as_mut_ptr(), buf.len(), cmsg, fds) }
}

/// `recvmsg(MSG_CMSG_CLOEXEC)` on `fd` into `len` bytes at `base`, the capacity of `cmsg` as
/// control buffer; `SCM_RIGHTS` descriptors are appended to `fds`. Called once per read of
/// every connection: the control data is walked only when the kernel returned some (almost
/// never: fds are rare), and nothing is built per call beyond the header (`nix`'s `recvmsg`
/// and its control-message iterator cost about 40 instructions a read).
///
/// # Safety
///
/// `base` must point to `len` bytes the kernel may write (initialised or not) that stay
/// live for the call; only the prefix the result reports may then be read.
#[inline(always)]
unsafe fn recvmsg_into(
    fd: RawFd,
    base: *mut u8,
    len: usize,
    cmsg: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> nix::Result<Received> {
    let mut iov = libc::iovec {
        iov_base: base.cast(),
        iov_len: len,
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_iov = &mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cmsg.as_mut_ptr().cast();
    hdr.msg_controllen = cmsg.capacity() as _;
    // SAFETY: `iov` describes `len` writable bytes (the caller's promise), `msg_control`
    // the capacity of `cmsg`; the kernel writes at most that much of each and reports how
    // much it wrote. `fd` is only read through (see the module notes).
    let r = unsafe { libc::recvmsg(fd, &mut hdr, libc::MSG_CMSG_CLOEXEC) };
    let Ok(bytes) = usize::try_from(r) else {
        return Err(nix::errno::Errno::last());
    };
    let mut got = 0;
    if hdr.msg_controllen > 0 {
        // SAFETY: `hdr` is the header the kernel just filled in; the CMSG_* macros walk
        // within `msg_controllen` bytes of `msg_control`, and each header and fd number is
        // read unaligned (a Vec<u8> promises no alignment).
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&hdr);
            while !c.is_null() {
                let h: libc::cmsghdr = std::ptr::read_unaligned(c);
                if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                    let payload = (h.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                    for i in 0..payload / std::mem::size_of::<libc::c_int>() {
                        // The kernel installed this descriptor in our table during the
                        // recvmsg above; its number exists nowhere else yet.
                        fds.push(own_fd(std::ptr::read_unaligned(data.add(i))));
                        got += 1;
                    }
                }
                c = libc::CMSG_NXTHDR(&hdr, c);
            }
        }
    }
    Ok(Received {
        bytes: bytes.min(len),
        fds: got,
        truncated: hdr.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Most descriptors [`send_with_fds`] passes in one call (the kernel's limit per message,
/// `SCM_MAX_FD`).
pub const MAX_SEND_FDS: usize = 253;

/// `sendmsg(MSG_NOSIGNAL)` of `iov` on socket `fd`, with `fds` (at most [`MAX_SEND_FDS`]) as
/// `SCM_RIGHTS` riding with the first byte; returns the bytes the socket took. The control
/// message is built on the stack and only when there are fds to pass (`nix`'s `sendmsg`
/// sums and packs its control list on every call).
pub fn send_with_fds(fd: RawFd, iov: &[io::IoSlice<'_>], fds: &[RawFd]) -> nix::Result<usize> {
    /// Room for `CMSG_SPACE` of [`MAX_SEND_FDS`] ints (1032 bytes on 64-bit Linux), 8-byte
    /// aligned as a `cmsghdr` must be.
    const SPACE: usize = 1040;
    // Left uninitialised unless there are fds: zeroing it for every write cost more than
    // the whole call's own work.
    let mut control = MaybeUninit::<[u64; SPACE / 8]>::uninit();
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; the kernel only reads it.
    hdr.msg_iov = iov.as_ptr() as *mut libc::iovec;
    hdr.msg_iovlen = iov.len() as _;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        let space = unsafe { libc::CMSG_SPACE(payload as libc::c_uint) } as usize;
        if fds.len() > MAX_SEND_FDS || space > SPACE {
            return Err(nix::errno::Errno::EINVAL);
        }
        hdr.msg_control = control.as_mut_ptr().cast();
        hdr.msg_controllen = space as _;
        // SAFETY: `control` is a live, 8-byte aligned buffer of `SPACE >= space` bytes: its
        // first `space` bytes are zeroed (padding included, which the kernel reads), then
        // the first header and its `payload` bytes of data, which fit in them, are written
        // (CMSG_FIRSTHDR is non-null for `msg_controllen >= size_of::<cmsghdr>()`); the fd
        // numbers are copied, not owned.
        unsafe {
            std::ptr::write_bytes(control.as_mut_ptr().cast::<u8>(), 0, space);
            let c = libc::CMSG_FIRSTHDR(&hdr);
            if c.is_null() {
                return Err(nix::errno::Errno::EINVAL);
            }
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload as libc::c_uint) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), payload);
        }
    }
    // SAFETY: `hdr` points at `iov` (live for the call, read only) and, with fds, at
    // `control` (filled above); the kernel reads them and writes nothing of ours. `fd` is
    // only written through (see the module notes).
    let r = unsafe { libc::sendmsg(fd, &hdr, libc::MSG_NOSIGNAL) };
    usize::try_from(r).map_err(|_| nix::errno::Errno::last())
}

/// A pidfd for process `pid` (`pidfd_open(2)`, Linux 5.3+). Fails with `ESRCH` when there is
/// no such process, `ENOSYS` on older kernels.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: a system call with integer arguments only; it touches no memory of ours.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: pidfd_open just created this descriptor for us; nothing else knows it.
    Ok(unsafe { own_fd(fd) })
}

// ---------------------------------------------------------------------------
// Socket options nix does not wrap
// ---------------------------------------------------------------------------

/// Plain integers: every bit pattern the kernel writes is a valid value.
trait PlainInt: Copy {}
impl PlainInt for u8 {}
impl PlainInt for u32 {}
impl PlainInt for i32 {}

/// `getsockopt(SOL_SOCKET, opt)` into `buf`: the number of bytes the kernel wrote, or the
/// error with the length it reported (`ERANGE` says how much would be needed).
fn getsockopt_into<T: PlainInt>(
    sock: &impl AsRawFd,
    opt: libc::c_int,
    buf: &mut [T],
) -> Result<usize, (io::Error, usize)> {
    let size = std::mem::size_of_val(buf);
    let mut len = libc::socklen_t::try_from(size).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `buf` is a live, writable allocation of `size >= len` bytes; the kernel writes
    // at most `len` bytes into it and stores the real length in `len`. T is a plain integer
    // type, so whatever bytes it writes leave valid T values.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let len = len as usize;
    if rc == 0 {
        Ok(len.min(size))
    } else {
        Err((io::Error::last_os_error(), len))
    }
}

/// Supplementary groups of the peer (SO_PEERGROUPS), with room for one more (the caller
/// adds the primary group), or None when the kernel lacks it.
pub fn peer_groups(sock: &impl AsRawFd) -> Option<Vec<u32>> {
    const GID: usize = std::mem::size_of::<libc::gid_t>();
    // The usual few groups are read on the stack and copied once into a vector of their
    // final size (kept for the connection's lifetime): one allocation per connection.
    let mut small: [libc::gid_t; 64] = [0; 64];
    let need = match getsockopt_into(sock, libc::SO_PEERGROUPS, &mut small) {
        Ok(n) => {
            let groups = small.get(..n / GID)?;
            let mut v = Vec::with_capacity(groups.len() + 1);
            v.extend_from_slice(groups);
            return Some(v);
        }
        Err((e, need)) if e.raw_os_error() == Some(libc::ERANGE) => need / GID,
        Err(_) => return None,
    };
    let mut buf: Vec<libc::gid_t> = vec![0; need.clamp(1, 65536)];
    loop {
        match getsockopt_into(sock, libc::SO_PEERGROUPS, &mut buf) {
            Ok(n) => {
                buf.truncate(n / GID);
                buf.shrink_to_fit();
                return Some(buf);
            }
            Err((e, need)) => {
                let n = need / GID;
                if e.raw_os_error() == Some(libc::ERANGE) && n > buf.len() && n < 65536 {
                    buf.resize(n, 0);
                    continue;
                }
                return None;
            }
        }
    }
}

/// Put `fd` into the epoll set `epfd` (mio's, so its events come back as mio events with
/// `token`, which mio reads from the event's data), or change its entry: level-triggered,
/// readable, or with no interest at all (`readable` false: a listener at rest, for which
/// epoll reports nothing, a listening socket raising no hang-up). mio always registers
/// edge-triggered; a listener registered level-triggered is reported by every `epoll_wait`
/// while connections wait in its queue, so the reactor can accept a bounded number per
/// turn without a last `accept` that finds the queue empty (epoll(7), "Level-triggered
/// and edge-triggered").
pub fn epoll_level(
    epfd: &impl AsRawFd,
    fd: &impl AsRawFd,
    token: usize,
    readable: bool,
    add: bool,
) -> io::Result<()> {
    let mut ev = libc::epoll_event {
        events: if readable { libc::EPOLLIN as u32 } else { 0 },
        u64: token as u64,
    };
    let op = if add {
        libc::EPOLL_CTL_ADD
    } else {
        libc::EPOLL_CTL_MOD
    };
    // SAFETY: `ev` is a live, initialised epoll_event the kernel only reads; both fds are
    // borrowed open descriptors (a closed one fails with EBADF).
    let rc = unsafe { libc::epoll_ctl(epfd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Take `fd` out of the epoll set `epfd` (an entry made with [`epoll_level`]).
pub fn epoll_remove(epfd: &impl AsRawFd, fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: both fds are borrowed open descriptors; EPOLL_CTL_DEL reads no event (a
    // null pointer is allowed since Linux 2.6.9).
    let rc = unsafe {
        libc::epoll_ctl(
            epfd.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd.as_raw_fd(),
            std::ptr::null_mut(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Set once the kernel said it has no security module that labels sockets; it will not gain
/// one while the bus runs, so later connections skip the call.
static PEERSEC_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// The peer's security label (SO_PEERSEC), without a trailing NUL.
pub fn peer_security_label(sock: &impl AsRawFd) -> Option<Vec<u8>> {
    if PEERSEC_UNSUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    let mut buf = vec![0u8; 256];
    loop {
        match getsockopt_into(sock, libc::SO_PEERSEC, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                while buf.last() == Some(&0) {
                    buf.pop();
                }
                buf.shrink_to_fit();
                return (!buf.is_empty()).then_some(buf);
            }
            Err((e, need)) => {
                if e.raw_os_error() == Some(libc::ERANGE) && need > buf.len() && need < 65536 {
                    buf.resize(need, 0);
                    continue;
                }
                if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
                    PEERSEC_UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                return None;
            }
        }
    }
}

/// An integer socket option (`getsockopt(SOL_SOCKET, opt)`); fails with `ENOTSOCK` when
/// `sock` is not a socket.
fn socket_int(sock: &impl AsRawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: [libc::c_int; 1] = [0];
    match getsockopt_into(sock, opt, &mut v) {
        Ok(n) if n == std::mem::size_of::<libc::c_int>() => Ok(v[0]),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "short socket option value",
        )),
        Err((e, _)) => Err(e),
    }
}

/// The family, type and listening state of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketKind {
    /// `SO_DOMAIN`: `libc::AF_UNIX`, `libc::AF_INET`, ...
    pub domain: libc::c_int,
    /// `SO_TYPE`: `libc::SOCK_STREAM`, `libc::SOCK_DGRAM`, ...
    pub kind: libc::c_int,
    /// `SO_ACCEPTCONN`: `listen(2)` was called on it.
    pub listening: bool,
}

/// What kind of socket `sock` is (`SO_DOMAIN`, `SO_TYPE`, `SO_ACCEPTCONN`; nix 0.29 has no
/// `SO_DOMAIN`, and its `SO_TYPE` getter does not expect types it does not know). Fails
/// with `ENOTSOCK` for anything but a socket (a file, a pipe).
pub fn socket_kind(sock: &impl AsRawFd) -> io::Result<SocketKind> {
    Ok(SocketKind {
        domain: socket_int(sock, libc::SO_DOMAIN)?,
        kind: socket_int(sock, libc::SO_TYPE)?,
        listening: socket_int(sock, libc::SO_ACCEPTCONN)? != 0,
    })
}

/// `SO_PEERPIDFD` (Linux 6.5+; the generic socket option number, as on x86 and arm).
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for the peer process (SO_PEERPIDFD), for `ProcessFD` in
/// GetConnectionCredentials; None on kernels without it.
pub fn peer_pidfd(sock: &impl AsRawFd) -> Option<OwnedFd> {
    let mut fd: [libc::c_int; 1] = [-1];
    let n = getsockopt_into(sock, SO_PEERPIDFD, &mut fd).ok()?;
    let fd = fd[0];
    if n != std::mem::size_of::<libc::c_int>() || fd < 0 {
        return None;
    }
    // SAFETY: getsockopt(SO_PEERPIDFD) just created this pidfd for us; nothing else knows it.
    Some(unsafe { own_fd(fd) })
}

// ---------------------------------------------------------------------------
// Processes and signals
// ---------------------------------------------------------------------------

/// Make `cmd`'s child start as if the bus had not touched its process state: an empty signal
/// mask (the reactor blocks the signals it reads through its signalfd, and masks survive exec),
/// the fd limit the daemon was started with (`initial_fd_limit`, if it was raised) and the
/// kernel's default time slice (a slice set with `sched_setattr` survives fork and exec;
/// see [`lengthen_time_slice`]).
pub fn prepare_child(cmd: &mut std::process::Command, initial_fd_limit: Option<(u64, u64)>) {
    use std::os::unix::process::CommandExt;
    let reset_slice = SLICE_LENGTHENED.load(Ordering::Relaxed);
    // SAFETY: the closure runs between fork and exec and only calls sigprocmask,
    // sched_setattr and setrlimit, which are async-signal-safe system calls; it allocates
    // nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            let empty = nix::sys::signal::SigSet::empty();
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&empty),
                None,
            )
            .map_err(io::Error::from)?;
            if reset_slice {
                default_time_slice();
            }
            if let Some((soft, hard)) = initial_fd_limit {
                // Best effort: a child with a higher limit is not an error.
                let _ = nix::sys::resource::setrlimit(
                    nix::sys::resource::Resource::RLIMIT_NOFILE,
                    soft,
                    hard,
                );
            }
            Ok(())
        });
    }
}

/// Unblock `mask` in `cmd`'s child before it executes (signals a signalfd reads stay blocked
/// across exec otherwise); signals blocked by whoever started us stay blocked.
pub fn unblock_in_child(cmd: &mut std::process::Command, mask: nix::sys::signal::SigSet) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls pthread_sigmask, which is async-signal-safe; it
    // allocates nothing and touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            mask.thread_unblock()
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
        });
    }
}

/// Ignore SIGPIPE: writes to vanished peers return EPIPE instead of killing the process.
pub fn ignore_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no handler code, so nothing can execute at an unsafe point.
    unsafe { sigaction(Signal::SIGPIPE, &act) }.map(|_| ())
}

/// Does nothing: its only effect is that a blocking system call it interrupts returns
/// `EINTR` (see [`interrupt_within`]).
extern "C" fn interrupt_only(_: libc::c_int) {}

/// Make SIGALRM interrupt a blocking system call (`EINTR`) instead of killing the process:
/// an empty handler, installed without `SA_RESTART`. SIGALRM comes only from
/// [`interrupt_within`]'s timer.
pub fn install_alarm_interrupt() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(interrupt_only),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler touches nothing (no memory, no errno, no locks), so it is
    // async-signal-safe wherever it interrupts.
    unsafe { sigaction(Signal::SIGALRM, &act) }.map(|_| ())
}

/// `setitimer(ITIMER_REAL)`: SIGALRM every `period` from `period` on (zero: disarm).
fn set_real_timer(period: std::time::Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(period.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(period.subsec_micros() as i32),
    };
    let val = libc::itimerval {
        it_interval: tv,
        it_value: tv,
    };
    // SAFETY: `val` is a live, initialised itimerval the kernel only reads; the old value is
    // not asked for (null).
    let rc = unsafe { libc::setitimer(libc::ITIMER_REAL, &val, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Run `f` (one system call that could block on a descriptor another process controls)
/// with SIGALRM repeating every `period` until it returns: a call that would block fails
/// with `EINTR` within about `period` (the repetition covers a signal that arrives just
/// before the call starts). Needs [`install_alarm_interrupt`]; the caller's call must not
/// retry on `EINTR`.
pub fn interrupt_within<T>(period: std::time::Duration, f: impl FnOnce() -> T) -> T {
    let armed = set_real_timer(period).is_ok();
    let r = f();
    if armed {
        let _ = set_real_timer(std::time::Duration::ZERO);
    }
    r
}

/// Threads of this process, from `/proc/self/task`.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// `fork(2)`, refused unless this process has exactly one thread.
///
/// With a single thread no lock can be held by a thread that vanishes in the child, so the
/// child may go on running ordinary code (allocate, log, open files). Only the calling
/// thread can create threads, so the check cannot be outdated when `fork` runs.
pub fn fork_single_threaded() -> io::Result<nix::unistd::ForkResult> {
    match thread_count()? {
        1 => {}
        n => {
            return Err(io::Error::other(format!(
                "refusing to fork a process with {n} threads"
            )))
        }
    }
    // SAFETY: the process has one thread (checked above), so the child inherits no lock
    // held by another thread and may run arbitrary code.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// `_exit(2)`: end the process now, without destructors, atexit handlers or stdio flushing.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an integer, touches no memory of ours and never returns.
    unsafe { libc::_exit(code) }
}

// ---------------------------------------------------------------------------
// syslog
// ---------------------------------------------------------------------------

/// `openlog(ident, LOG_PID, facility)`. `ident` is `'static` because syslog keeps the
/// pointer and uses it for every later record.
pub fn openlog(ident: &'static CStr, facility: libc::c_int) {
    // SAFETY: `ident` is NUL-terminated and lives for the rest of the process, as openlog
    // requires of the pointer it keeps.
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, facility) };
}

/// `syslog(prio, "%s", text)`: one record, the text never read as a format.
pub fn syslog(prio: libc::c_int, text: &CStr) {
    // SAFETY: both strings are NUL-terminated and live for the call; the format consumes
    // exactly the one %s argument given.
    unsafe { libc::syslog(prio, c"%s".as_ptr(), text.as_ptr()) };
}

// ---------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------

/// Fill `buf` from the kernel's CSPRNG (`getrandom(2)`, else `/dev/urandom`).
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0usize;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or(&mut []);
        // SAFETY: the pointer and length describe `rest`, a live, writable byte slice; the
        // kernel writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // Old kernels lack getrandom(2); the device gives the same bytes.
            use std::io::Read;
            return std::fs::File::open("/dev/urandom")?.read_exact(rest);
        }
        filled = filled.saturating_add(usize::try_from(n).unwrap_or(0));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The bus's time slice
// ---------------------------------------------------------------------------

/// The time slice the bus asks for ([`lengthen_time_slice`]): 40 ms, against the kernel's
/// default of 0.7-3 ms (0.75 ms × 1 + log2 of the CPUs, at most 8). A woken client takes
/// the CPU from a busy bus unless the bus's slice ends sooner than the client's would, so
/// the longer the bus's slice the rarer that is. Calls over 1 ms among about 1,000 made
/// during 200k-signal floods (2 vCPUs, 4 runs each): with a 4.2 ms slice 103-189, 14 ms
/// 35-124, 42 ms 13-71, 100 ms (the most the kernel takes) 18-37. The cost falls on a
/// process that never sleeps sharing a busy bus's CPU: it may wait one slice of the bus's.
const SLICE_NS: u64 = 40_000_000;

/// Whether [`lengthen_time_slice`] changed the bus's slice: its children then get the
/// default back ([`prepare_child`]).
static SLICE_LENGTHENED: AtomicBool = AtomicBool::new(false);

/// Ask the kernel for a time slice of [`SLICE_NS`] (`sched_setattr` with `sched_runtime`
/// for a `SCHED_OTHER` task, Linux 6.12 and later), so that a client the bus wakes runs at
/// once even when the bus has more to do. Returns the new slice in ns, or `None` where
/// nothing was changed (another policy, an older kernel, a default slice as long already,
/// an error).
///
/// Why: a write to a Unix socket wakes the reader with a "sync" wake-up, which places it on
/// the writer's CPU. Under EEVDF a running task keeps its CPU for its whole slice unless the
/// woken one has a shorter slice than its own ("run to parity"); a bus busy with a flood,
/// whose reads are left over from turn to turn, never sleeps, so the echo service or client
/// it wakes waited for the bus's slice to end at a scheduler tick: 2.5–4 ms a hop at
/// 250 Hz, even with another CPU idle. With a slice longer than the clients' default, every
/// client it wakes has the shorter slice and may take the CPU at once; it does when its
/// virtual deadline (when it woke, plus its slice) comes before the bus's. What the bus
/// gets over time is unchanged: that is its weight, from its nice value, which is kept
/// as it was, as is its policy.
pub fn lengthen_time_slice() -> Option<u64> {
    let mut attr = own_sched_attr()?;
    let fair = [libc::SCHED_OTHER, libc::SCHED_BATCH]
        .iter()
        .any(|&p| u32::try_from(p).is_ok_and(|p| p == attr.sched_policy));
    // Kernels before 6.12 report no slice (0) and take none.
    if !fair || attr.sched_runtime == 0 || attr.sched_runtime >= SLICE_NS {
        return None;
    }
    attr.sched_runtime = SLICE_NS;
    if !set_own_sched_attr(&attr) {
        return None;
    }
    SLICE_LENGTHENED.store(true, Ordering::Relaxed);
    Some(SLICE_NS)
}

/// Give this process the kernel's default slice back (a `sched_runtime` of 0), keeping its
/// policy and nice value as they are now. Only system calls, nothing allocated: safe
/// between fork and exec.
fn default_time_slice() {
    if let Some(mut attr) = own_sched_attr() {
        attr.sched_runtime = 0;
        // Best effort: a child left with the bus's longer slice still runs.
        let _ = set_own_sched_attr(&attr);
    }
}

/// This thread's scheduling attributes (`sched_getattr`), with only the flags
/// `sched_setattr` takes back. Makes no allocation.
fn own_sched_attr() -> Option<libc::sched_attr> {
    let size = u32::try_from(std::mem::size_of::<libc::sched_attr>()).ok()?;
    let mut attr = MaybeUninit::<libc::sched_attr>::zeroed();
    // SAFETY: sched_getattr writes at most `size` bytes, the size of `attr`, into it; pid 0
    // is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, attr.as_mut_ptr(), size, 0) };
    if r != 0 {
        return None;
    }
    // SAFETY: zero is a valid value for every field, and the call above succeeded.
    let mut attr = unsafe { attr.assume_init() };
    attr.size = size;
    attr.sched_flags &= libc::SCHED_FLAG_RESET_ON_FORK as u64;
    Some(attr)
}

/// Set this thread's scheduling attributes (`sched_setattr`); whether the kernel took them.
fn set_own_sched_attr(attr: &libc::sched_attr) -> bool {
    // SAFETY: sched_setattr reads `attr`, a live value, for the length in its `size` field,
    // which `own_sched_attr` set to the size of the type.
    unsafe { libc::syscall(libc::SYS_sched_setattr, 0, std::ptr::from_ref(attr), 0) == 0 }
}

// ---------------------------------------------------------------------------
// Giving freed heap back to the kernel
// ---------------------------------------------------------------------------

/// Set the allocator up for a bus whose queues can grow by millions of small messages and
/// drain at once: glibc's "fastbins" are turned off (`mallopt(M_MXFAST, 0)`). A freed small
/// block then merges with its free neighbours as it is freed, a few instructions each,
/// instead of waiting in a fastbin until some later call merges them all in one go: after
/// a 2M-signal flood drained, that deferred merge of 2M blocks ran inside the idle sweep's
/// [`malloc_trim`] (`malloc_consolidate`, a third of the profile of that 70-120 ms turn, in
/// which no other client is served; with fastbins off the same sweep took 45-67 ms). The small blocks the hot path frees and takes again come from glibc's
/// per-size cache (tcache), which is unaffected: instructions per relayed message did not
/// change. A no-op where the C library is not glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes no pointers; M_MXFAST with 0 is a documented setting and
        // only changes which free lists glibc uses from then on.
        unsafe {
            libc::mallopt(libc::M_MXFAST, 0);
        }
    }
}

/// Ask the allocator to return free heap pages to the kernel (glibc's `malloc_trim(0)`:
/// the top of the heap and every whole free page inside it). After a flood of small
/// messages drains, glibc keeps what they occupied, so the process would stay at its peak
/// size; the reactor calls this while a large queue is released, every few MiB, and from
/// its idle sweep after a large burst, never per message: it walks the heap's free lists
/// and returns all their pages in one call. Returns whether any memory was released. A
/// no-op (false) where the C library is not glibc.
pub fn malloc_trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and only rearranges the allocator's own
        // free lists under its lock; it is safe to call at any time outside a signal
        // handler (this is the main loop), and no Rust allocation is touched: only memory
        // already freed is released.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

// ---------------------------------------------------------------------------
// Lazily zeroed buffers
// ---------------------------------------------------------------------------

/// A shared byte buffer of fixed length whose bytes are zeroed only when asked for, so
/// memory is committed as it is used. Becomes an `Rc<[u8]>` without a copy once every byte
/// has been initialised.
pub struct ZeroedOnDemand {
    /// Never cloned before [`ZeroedOnDemand::finish`], so `Rc::get_mut` always succeeds.
    buf: Rc<[MaybeUninit<u8>]>,
    /// Bytes below this index are initialised.
    init: usize,
}

impl ZeroedOnDemand {
    /// A buffer of `len` bytes starting with `prefix` (cut to `len`); the rest is not yet
    /// zeroed.
    pub fn with_prefix(len: usize, prefix: &[u8]) -> Self {
        let mut buf = Rc::<[u8]>::new_uninit_slice(len);
        let take = prefix.len().min(len);
        if let (Some(dst), Some(src)) = (
            Rc::get_mut(&mut buf).and_then(|b| b.get_mut(..take)),
            prefix.get(..take),
        ) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = MaybeUninit::new(*s);
            }
        }
        ZeroedOnDemand { buf, init: take }
    }

    /// Total length.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the buffer has length 0.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// How many leading bytes are initialised (given, written or zeroed).
    pub fn initialized(&self) -> usize {
        self.init
    }

    /// The first `end` bytes (at most the length), zeroing those not initialised yet.
    pub fn prefix_mut(&mut self, end: usize) -> &mut [u8] {
        let Some(buf) = Rc::get_mut(&mut self.buf) else {
            // Not shared before `finish`, so this cannot happen.
            return &mut [];
        };
        let end = end.min(buf.len());
        if end > self.init {
            if let Some(fresh) = buf.get_mut(self.init..end) {
                fresh.fill(MaybeUninit::new(0));
            }
            self.init = end;
        }
        let Some(done) = buf.get_mut(..end) else {
            return &mut [];
        };
        // SAFETY: `end <= init`, and every byte below `init` was written by `with_prefix`,
        // the zeroing above, or through an earlier `&mut [u8]` from here (which can only
        // store initialised bytes); MaybeUninit<u8> and u8 have the same layout.
        unsafe { &mut *(done as *mut [MaybeUninit<u8>] as *mut [u8]) }
    }

    /// `recvmsg` on socket `fd` into at most `max` bytes right after the initialised prefix
    /// (fewer if the buffer ends sooner), without zeroing them first: the kernel only writes
    /// there, and only the bytes it reports having written join the prefix. Control data and
    /// descriptors as in [`recv_with_fds`].
    pub fn recv_tail(
        &mut self,
        fd: RawFd,
        max: usize,
        cmsg: &mut Vec<u8>,
        fds: &mut Vec<OwnedFd>,
    ) -> nix::Result<Received> {
        let init = self.init;
        let Some(tail) = Rc::get_mut(&mut self.buf).and_then(|b| b.get_mut(init..)) else {
            // Not shared before `finish`, and `init <= len`: cannot happen.
            return Err(nix::errno::Errno::EINVAL);
        };
        let len = tail.len().min(max);
        // Raw pointers only: no reference to the uninitialised bytes is ever formed.
        // SAFETY: `tail` is `len` or more writable bytes of our live allocation.
        let r = unsafe { recvmsg_into(fd, tail.as_mut_ptr().cast(), len, cmsg, fds) }?;
        self.init = init + r.bytes;
        Ok(r)
    }

    /// The whole buffer, if every byte is initialised; else None.
    pub fn finish(self) -> Option<Rc<[u8]>> {
        if self.init < self.buf.len() {
            return None;
        }
        // SAFETY: `init == len`: every byte is initialised (see `prefix_mut`).
        Some(unsafe { self.buf.assume_init() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_on_demand_zeroes_only_what_is_asked_for() {
        let mut z = ZeroedOnDemand::with_prefix(8, b"ab");
        assert_eq!(z.initialized(), 2);
        assert_eq!(z.prefix_mut(4), b"ab\0\0");
        assert_eq!(z.initialized(), 4);
        // Asking for less never forgets what was initialised.
        assert_eq!(z.prefix_mut(1), b"a");
        assert_eq!(z.initialized(), 4);
        assert_eq!(z.prefix_mut(100).len(), 8);
        z.prefix_mut(8)[7] = b'z';
        assert_eq!(&z.finish().unwrap()[..], b"ab\0\0\0\0\0z");
        let short = ZeroedOnDemand::with_prefix(4, b"a");
        assert!(short.finish().is_none());
    }

    #[test]
    fn recv_tail_receives_into_the_uninitialised_rest_with_fds() {
        use nix::sys::socket::{sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags};
        use nix::sys::socket::{SockFlag, SockType};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::empty(),
        )
        .unwrap();
        let passed = [a.as_raw_fd()];
        let cmsgs = [ControlMessage::ScmRights(&passed)];
        let iov = [io::IoSlice::new(b"cdefgh")];
        sendmsg::<()>(a.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).unwrap();
        let mut z = ZeroedOnDemand::with_prefix(10, b"ab");
        let mut cmsg = nix::cmsg_space!([RawFd; 4]);
        let mut fds = Vec::new();
        // At most `max` bytes; the rest stays queued.
        let r = z.recv_tail(b.as_raw_fd(), 4, &mut cmsg, &mut fds).unwrap();
        assert_eq!((r.bytes, r.fds, r.truncated), (4, 1, false));
        assert_eq!(fds.len(), 1);
        assert_eq!(z.initialized(), 6);
        assert_eq!(z.prefix_mut(6), b"abcdef");
        write_all_fd(a.as_raw_fd(), b"ijkl").unwrap();
        // Never past the end of the buffer.
        let r = z
            .recv_tail(b.as_raw_fd(), 100, &mut cmsg, &mut fds)
            .unwrap();
        assert_eq!((r.bytes, r.fds), (4, 0));
        assert_eq!(&z.finish().unwrap()[..], b"abcdefghij");
    }

    #[test]
    fn write_all_fd_reports_a_closed_fd() {
        let e = write_all_fd(987_654, b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        getrandom(&mut a).unwrap();
        getrandom(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
