//! The few socket operations `nix` does not wrap, in one place, each `unsafe` block with its
//! SAFETY note.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Take ownership of an fd the kernel just handed us in SCM_RIGHTS.
pub fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the fd came from a successful recvmsg's SCM_RIGHTS and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Borrow a numeric fd given on the command line (`--print-address=FD`).
///
/// The caller has checked with `fcntl(F_GETFD)` that it is open.
pub fn borrow_fd(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: fds named on the command line stay open until we close them at startup.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Supplementary groups of the peer (SO_PEERGROUPS), or None when the kernel lacks it.
pub fn peer_groups(sock: &impl AsRawFd) -> Option<Vec<u32>> {
    let mut buf: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (buf.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: buf is valid for `len` bytes; the kernel writes at most that and updates len.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            buf.truncate(n);
            // Kept for the connection's lifetime: give back the unused part of the guess.
            buf.shrink_to_fit();
            return Some(buf);
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
            && n > buf.len()
            && n < 65536
        {
            buf.resize(n, 0);
            continue;
        }
        return None;
    }
}

/// Set once the kernel said it has no security module that labels sockets; it will not gain
/// one while the bus runs, so later connections skip the call.
static PEERSEC_UNSUPPORTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// The peer's security label (SO_PEERSEC), without a trailing NUL.
pub fn peer_security_label(sock: &impl AsRawFd) -> Option<Vec<u8>> {
    use std::sync::atomic::Ordering;
    if PEERSEC_UNSUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    let mut buf = vec![0u8; 256];
    loop {
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: buf is valid for `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERSEC,
                buf.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            buf.truncate(len as usize);
            while buf.last() == Some(&0) {
                buf.pop();
            }
            buf.shrink_to_fit();
            return (!buf.is_empty()).then_some(buf);
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE)
            && (len as usize) > buf.len()
            && (len as usize) < 65536
        {
            buf.resize(len as usize, 0);
            continue;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOPROTOOPT) {
            PEERSEC_UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        return None;
    }
}

/// Make `cmd`'s child start as if the bus had not touched its process state: an empty signal
/// mask (the reactor blocks the signals it reads through its signalfd, and masks survive exec)
/// and the fd limit the daemon was started with (`initial_fd_limit`, if it was raised).
pub fn prepare_child(cmd: &mut std::process::Command, initial_fd_limit: Option<(u64, u64)>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls sigprocmask and
    // setrlimit, which are async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(move || {
            let empty = nix::sys::signal::SigSet::empty();
            nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&empty),
                None,
            )
            .map_err(std::io::Error::from)?;
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

/// `SO_PEERPIDFD` (Linux 6.5+; the generic socket option number, as on x86 and arm).
const SO_PEERPIDFD: libc::c_int = 77;

/// A pidfd for the peer process (SO_PEERPIDFD), for `ProcessFD` in
/// GetConnectionCredentials; None on kernels without it.
pub fn peer_pidfd(sock: &impl AsRawFd) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a valid c_int buffer of `len` bytes; the kernel writes one fd number.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && fd >= 0).then(|| own_fd(fd))
}
