//! The `relay` scenario: the `baseline` echo round trip, but every message goes through a
//! separate do-nothing relay process (client thread → relay → echo thread and back).
//!
//! A bus is a process of its own that has to wake up for every hop, so a socketpair between two
//! threads (`baseline`) is a floor no bus can reach. The relay does only what any bus must do per
//! hop: `epoll_wait`, `read`, `write`. Its round trip is the honest floor for "the bus adds
//! nothing".
//!
//! The relay runs as this very executable re-run with the hidden subcommand [`CHILD_ARG`]
//! (`std::env::current_exe()`), its two sockets passed as stdin and stdout: no fork in a
//! threaded process, and nothing shared with the measuring process but the sockets.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::scenarios::{self, Common, Summary};

/// The hidden subcommand that turns this executable into the relay (stdin ↔ stdout).
pub const CHILD_ARG: &str = "relay-child";

/// Bytes moved per `read`.
const BUF: usize = 64 * 1024;

/// How long the relay process gets to exit after both sockets were closed.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the relay did, for tests.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct RelayStats {
    /// Bytes forwarded a → b and b → a.
    pub bytes: [u64; 2],
    /// Times a write could not take everything (EAGAIN), so a direction waited for writability.
    pub blocked: u64,
}

/// One direction's bytes read but not yet written.
struct Dir {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Dir {
    fn pending(&self) -> bool {
        self.start < self.end
    }
}

/// How far one direction got.
enum Step {
    /// Everything read so far is written; the source may be read again when readable.
    Idle,
    /// The destination is full: wait for it to become writable, do not read the source.
    Blocked,
    /// The source reached EOF or a side is gone.
    Closed,
}

fn gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Moves bytes `src` → `dst`: first whatever is pending, then reads until a short read (the
/// level-triggered epoll reports the source again if more arrives, so one `read` per message
/// is enough, as in a bus) or until the destination is full.
fn pump(d: &mut Dir, src: &File, dst: &File, moved: &mut u64) -> io::Result<Step> {
    let mut more = true;
    loop {
        while d.pending() {
            match (&*dst).write(&d.buf[d.start..d.end]) {
                Ok(0) => return Ok(Step::Closed),
                Ok(n) => {
                    d.start += n;
                    *moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if gone(&e) => return Ok(Step::Closed),
                Err(e) => return Err(e),
            }
        }
        if !more {
            return Ok(Step::Idle);
        }
        match (&*src).read(&mut d.buf) {
            Ok(0) => return Ok(Step::Closed),
            Ok(n) => {
                d.start = 0;
                d.end = n;
                more = n == d.buf.len();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Idle),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if gone(&e) => return Ok(Step::Closed),
            Err(e) => return Err(e),
        }
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; no pointers involved.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn epoll_ctl(ep: &OwnedFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll and target descriptors, `ev` lives across the call.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The relay itself: forwards bytes between `a` and `b` in both directions until either side
/// reaches EOF (or hangs up), then returns. Both descriptors are made nonblocking and watched by
/// one level-triggered epoll instance; a direction whose destination is full keeps its unwritten
/// bytes, stops reading its source and waits for writability, while the other direction goes on.
pub fn relay_child(a: OwnedFd, b: OwnedFd) -> io::Result<RelayStats> {
    set_nonblocking(a.as_raw_fd())?;
    set_nonblocking(b.as_raw_fd())?;
    // SAFETY: epoll_create1 has no memory arguments; the result is checked before use.
    let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(raw) };
    let files = [File::from(a), File::from(b)];
    let mut dirs = [0, 1].map(|_| Dir {
        buf: vec![0; BUF],
        start: 0,
        end: 0,
    });
    const IN: u32 = libc::EPOLLIN as u32;
    const OUT: u32 = libc::EPOLLOUT as u32;
    let mut interest = [IN, IN];
    for (i, f) in files.iter().enumerate() {
        epoll_ctl(&ep, libc::EPOLL_CTL_ADD, f.as_raw_fd(), IN, i as u64)?;
    }
    let mut stats = RelayStats::default();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 2];
    loop {
        // SAFETY: `events` is a valid buffer of 2 entries for the kernel to fill.
        let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), events.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Direction i moves files[i] → files[1 - i]: it runs when its source is readable or
        // its destination writable.
        let mut run = [false; 2];
        let mut hangup = false;
        for ev in events.iter().take(n as usize) {
            let (flags, i) = (ev.events, (ev.u64 & 1) as usize);
            if flags & (IN | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0 {
                run[i] = true;
            }
            if flags & OUT != 0 {
                run[1 - i] = true;
            }
            hangup |= flags & (libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) != 0;
        }
        for i in 0..2 {
            if !run[i] {
                continue;
            }
            let (src, dst) = (&files[i], &files[1 - i]);
            match pump(&mut dirs[i], src, dst, &mut stats.bytes[i])? {
                Step::Closed => return Ok(stats),
                Step::Blocked => stats.blocked += 1,
                Step::Idle => {}
            }
        }
        // A hung-up peer ends the relay like EOF does (and a level-triggered HUP on a socket we
        // are not reading would otherwise wake us in a loop).
        if hangup {
            return Ok(stats);
        }
        for (i, f) in files.iter().enumerate() {
            // Read a side only while its direction has nothing pending; watch it for
            // writability only while the other direction has bytes for it.
            let want = if dirs[i].pending() { 0 } else { IN }
                | if dirs[1 - i].pending() { OUT } else { 0 };
            if want != interest[i] {
                epoll_ctl(&ep, libc::EPOLL_CTL_MOD, f.as_raw_fd(), want, i as u64)?;
                interest[i] = want;
            }
        }
    }
}

/// Entry point of the relay process ([`CHILD_ARG`]): relays between stdin and stdout.
pub fn child_main() -> io::Result<()> {
    let a = io::stdin().as_fd().try_clone_to_owned()?;
    let b = io::stdout().as_fd().try_clone_to_owned()?;
    relay_child(a, b).map(drop)
}

/// A started relay, to be waited for after the run.
enum Running {
    Process(Child),
    /// Unit tests: the test harness is not this executable, so `relay-child` cannot be re-run.
    #[cfg(test)]
    Thread(thread::JoinHandle<io::Result<RelayStats>>),
}

impl Running {
    /// Waits for the relay to exit (it does once the client's socket is closed); kills it first
    /// when the run failed, or when it does not exit within [`EXIT_TIMEOUT`].
    fn finish(self, failed: bool) -> io::Result<()> {
        match self {
            Running::Process(mut child) => {
                if failed {
                    let _ = child.kill();
                }
                let deadline = Instant::now() + EXIT_TIMEOUT;
                loop {
                    if let Some(status) = child.try_wait()? {
                        if failed || status.success() {
                            return Ok(());
                        }
                        return Err(io::Error::other(format!("relay process: {status}")));
                    }
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        child.wait()?;
                        return Err(io::Error::other("relay process did not exit; killed"));
                    }
                    thread::sleep(Duration::from_millis(1));
                }
            }
            #[cfg(test)]
            Running::Thread(t) => t
                .join()
                .map_err(|_| io::Error::other("relay thread panicked"))?
                .map(drop),
        }
    }
}

/// Starts `exe relay-child` with `r1` as stdin and `r2` as stdout. The `Command` (and with it
/// the parent's copies of r1 and r2) is dropped right after the spawn, so the relay sees EOF as
/// soon as the measuring side closes its ends.
fn spawn(exe: &Path, r1: OwnedFd, r2: OwnedFd) -> io::Result<Running> {
    Command::new(exe)
        .arg(CHILD_ARG)
        .stdin(Stdio::from(r1))
        .stdout(Stdio::from(r2))
        .spawn()
        .map(Running::Process)
}

/// Sets up (c1, r1) and (c2, r2), starts the relay on r1/r2, runs the round trips on c1/c2 and
/// waits for the relay to exit.
fn run_with(
    c: &Common,
    start: impl FnOnce(OwnedFd, OwnedFd) -> io::Result<Running>,
) -> io::Result<(Summary, Histogram<u64>)> {
    let (c1, r1) = UnixStream::pair()?;
    let (c2, r2) = UnixStream::pair()?;
    let relay = start(r1.into(), r2.into())?;
    // The client Conn is dropped when round_trips returns, which ends the relay.
    let result = scenarios::round_trips(c, "relay", Conn::from_stream(c1), Conn::from_stream(c2));
    let end = relay.finish(result.is_err());
    let r = result?;
    end?;
    Ok(r)
}

/// The `rtt` echo through a do-nothing relay process: client → relay → echo → relay → client.
pub fn relay(c: &Common) -> io::Result<(Summary, Histogram<u64>)> {
    let exe = std::env::current_exe()?;
    run_with(c, |r1, r2| spawn(&exe, r1, r2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_thread(r1: OwnedFd, r2: OwnedFd) -> io::Result<Running> {
        Ok(Running::Thread(thread::spawn(move || relay_child(r1, r2))))
    }

    /// A socketpair whose first end times out instead of hanging when the relay loses bytes.
    fn pair() -> (UnixStream, UnixStream) {
        let (c, r) = UnixStream::pair().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        (c, r)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(i as u8 | 1))
            .collect()
    }

    #[test]
    fn round_trips_through_the_relay() {
        let c = Common {
            address: String::new(),
            count: 200,
            warmup: 10,
            payload: 100,
            progress: false,
        };
        let (s, h) = run_with(&c, in_thread).unwrap();
        assert_eq!(s.scenario, "relay");
        assert_eq!(s.samples, 200);
        assert_eq!(h.len(), 200);
        assert!(s.p50 > 0.0 && s.p50 <= s.p99);
        assert!(s.json().starts_with("{\"scenario\":\"relay\","));
    }

    #[test]
    fn one_mebibyte_each_way_at_once_survives_partial_writes() {
        const N: usize = 1 << 20;
        let (c1, r1) = pair();
        let (c2, r2) = pair();
        let relay = thread::spawn(move || relay_child(r1.into(), r2.into()));
        let (up, down) = (pattern(N, 3), pattern(N, 7));
        // Both sides write their whole mebibyte before anyone reads: the relay has to hold
        // back both directions (far more than the socket buffers) without losing a byte.
        let mut w1 = c1.try_clone().unwrap();
        let mut w2 = c2.try_clone().unwrap();
        let (u, d) = (up.clone(), down.clone());
        let t1 = thread::spawn(move || w1.write_all(&u));
        let t2 = thread::spawn(move || w2.write_all(&d));
        thread::sleep(Duration::from_millis(100));
        let mut r2 = c2.try_clone().unwrap();
        let reader = thread::spawn(move || {
            let mut got = vec![0; N];
            r2.read_exact(&mut got).map(|_| got)
        });
        let mut got_down = vec![0; N];
        (&c1).read_exact(&mut got_down).unwrap();
        let got_up = reader.join().unwrap().unwrap();
        t1.join().unwrap().unwrap();
        t2.join().unwrap().unwrap();
        assert!(got_up == up, "a -> b corrupted");
        assert!(got_down == down, "b -> a corrupted");
        // EOF on one side ends the relay.
        drop(c1);
        let stats = relay.join().unwrap().unwrap();
        assert_eq!(stats.bytes, [N as u64, N as u64]);
        assert!(stats.blocked > 0, "never had to wait for writability");
    }

    #[test]
    fn exits_when_the_far_side_closes_while_blocked() {
        let (c1, r1) = pair();
        let (c2, r2) = pair();
        let relay = thread::spawn(move || relay_child(r1.into(), r2.into()));
        // Nobody reads c2, so the relay blocks on it; then c2 goes away.
        let mut w = c1.try_clone().unwrap();
        let writer = thread::spawn(move || w.write_all(&vec![1; 1 << 20]));
        thread::sleep(Duration::from_millis(100));
        drop(c2);
        let stats = relay.join().unwrap().unwrap();
        assert!(stats.bytes[0] > 0 && stats.bytes[0] < 1 << 20, "{stats:?}");
        // With the relay gone the writer fails instead of hanging.
        drop(c1);
        assert!(writer.join().unwrap().is_err());
    }

    #[test]
    fn bad_descriptor_is_an_error_not_a_hang() {
        let (c1, r1) = UnixStream::pair().unwrap();
        // A directory opened read-only: epoll refuses regular files and directories.
        let dir: OwnedFd = File::open("/").unwrap().into();
        assert!(relay_child(r1.into(), dir).is_err());
        drop(c1);
    }

    #[test]
    fn spawn_failure_is_reported() {
        let (_c1, r1) = UnixStream::pair().unwrap();
        let (_c2, r2) = UnixStream::pair().unwrap();
        let r = spawn(
            Path::new("/nonexistent/sluicebus-bench"),
            r1.into(),
            r2.into(),
        );
        assert!(r.is_err());
    }
}
