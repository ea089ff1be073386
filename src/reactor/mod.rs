//! The reactor: the only code that touches `mio` and the listening and connection sockets,
//! so that the bus core stays free of I/O and can be tested without them.
//!
//! One `Poll` turns readiness, signals, timers, child exits and directory changes into events
//! for the [`Bus`]; the SASL exchange and the framing of bytes into messages happen here
//! first. The reactor then carries out the [`Effect`]s the bus queued (flushing output with
//! `sendmsg` of header and body slices, closing, spawning services, container sockets), and
//! answers what the bus must know in the middle of an event by implementing [`World`]
//! through `Host`.
//!
//! # Scheduling: one turn
//!
//! A turn of [`Reactor::run`] polls, puts every readable connection on the ready list
//! (`ready.rs`: each connection at most once, however many events or cut-offs it has),
//! then serves one round of it: each connection on the list gets one turn's budget of work,
//! then timers run and `apply_effects` writes everything the turn queued (replies, relayed
//! messages), and the next turn polls without waiting if the list is not empty. A
//! connection's budget is the first reached of:
//!
//! * [`READ_BUDGET`] (32 KiB) of bytes read: one `recvmsg` into a receive buffer;
//! * [`MESSAGE_BUDGET`] (32) messages handed to the bus. What a message costs the bus is
//!   mostly its routing, not its bytes: 32 KiB of 100-byte signals is 300 messages of work.
//!   The whole messages a read brought beyond the budget stay in their receive buffer
//!   (`Io::held`) and go first next turn, with no new read until they are gone.
//!
//! A connection whose budget ran out with input possibly left goes to the back of the list.
//! So a message is never held behind more than one budget of every other ready connection's
//! input (plus the writes that input caused), and what a turn produces leaves within that
//! turn: a client flooding the bus costs an unrelated method call a turn or two of about 32
//! messages per flooder, not the flood. Both budgets were picked by measuring a bystander's
//! round trip during a flood (`sluicebus-bench flood`, bench/README.md "a flood and a
//! bystander"). Bytes: with 256 KiB and repeat reads in one turn its p50 was 73 ms (calls paced
//! at 1 ms), with 32 KiB once per turn 0.56 ms (idle: 0.1 ms), 128 KiB still 26 ms.
//! Messages, for the flood's 100-byte signals: with the byte budget alone the bystander's
//! p50 was 5-35× its idle value; 32 messages per turn brings it to about 1.5× (8 and 16 do
//! no better within noise, 64 gives 1.7-2×, 128 3.5×) at the same flood rate. A message
//! longer than the byte budget is still received straight into its own buffer (`large.rs`);
//! those bytes, which cost only the copy, are charged an eighth while no other connection
//! is waiting (256 KiB per turn: all a sender with the default socket buffer can have
//! queued), a quarter while one is (128 KiB; `large_discount`).
//!
//! The budgets bound the bus's work ahead of a message; the kernel decides when the client
//! it is written to runs. A write to a Unix socket wakes the reader on the writer's CPU,
//! and a bus busy with a flood does not sleep, so with the kernel's default time slice
//! each woken client waited for a scheduler tick (2.5-4 ms a hop at 250 Hz): a bystander's
//! p99 during a flood was tens of ms. The bus therefore asks for a slice much longer than
//! its clients' (`sys::lengthen_time_slice`, 40 ms, at start): EEVDF lets a woken task with
//! a shorter slice than the running one's take the CPU at once when its deadline comes
//! first, which a long slice makes the usual case (p99 during a flood 2-3 ms; bench/README.md
//! "the bus's time slice"). Its share of the CPU is unchanged.
//!
//! Deadlines of connections (authentication, fds pending without their message) are kept in
//! heaps that drop entries of closed connections (`deadlines.rs`), so connection churn does
//! not hold memory until the deadlines would have expired.

pub mod container_sockets;
pub mod deadlines;
pub mod dir_watch;
pub mod large;
pub mod listener;
pub mod proc_info;
pub mod ready;
pub mod rx;
pub mod service_fs;

use crate::bus::connection::Credentials;
use crate::bus::world::{ListenError, ListenStep, SocketName, SocketProblem, World};
use crate::bus::{Bus, Clock, CloseReason, ConnId, Effect, HostFacts};
use crate::sys;
use crate::wire::auth::{AuthConfig, AuthStatus, Authenticator, Mechanism, Mechanisms};
use crate::wire::message::{self, HeaderCache, Message, FIXED_HEADER_LEN};
use crate::wire::WireError;
use container_sockets::SocketDir;
use deadlines::DeadlineHeap;
use dir_watch::DirWatch;
use large::LargeRead;
use listener::{Bound, Listener};
use mio::net::{TcpStream, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use ready::ReadyList;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Tokens at or above this value are listeners; below are connections (slab index).
const LISTENER_BASE: usize = 1 << 30;
/// Tokens from here up to LISTENER_BASE watch Containers1 `StopOnNotify` fds.
const NOTIFY_BASE: usize = 1 << 29;
/// Token of the signalfd.
const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
/// Token of the inotify instance watching configuration and service directories.
const DIR_WATCH_TOKEN: Token = Token(usize::MAX - 2);
/// Token of the timerfd that wakes the loop for the idle sweep.
const SWEEP_TOKEN: Token = Token(usize::MAX - 3);
/// Bytes one connection may read per loop turn before the others get a go (see the module
/// header: the bound on what a flooding peer can put ahead of anyone else's message).
pub const READ_BUDGET: usize = 32 * 1024;
/// Messages one connection may have handled per loop turn (see the module header): what a
/// message costs is mostly its routing, not its bytes, so for small messages this is the
/// bound that acts; the rest of what a read brought waits in its buffer ([`Io::held`]).
pub const MESSAGE_BUDGET: usize = 32;
/// Bytes of a large message (received straight into its own buffer, `large.rs`) cost the
/// budget this many times less than bytes of small messages, each of which is framed,
/// validated and routed (measured: 7 % less throughput for 1 MiB round trips with no
/// discount): 256 KiB per turn while no other connection waits for its turn, half of that
/// while one does ([`large_discount`]).
const LARGE_DISCOUNT: usize = 8;

/// The discount for one read of a large message. Alone, a turn may take 256 KiB: a
/// sender's socket holds at most its SO_SNDBUF (208 KiB by default, `net.core.wmem_default`;
/// reads of 219,264 bytes seen), so one `recvmsg` takes all that is queued and its short
/// read ends the connection's turn. With 128 KiB each fill took two reads and a turn between
/// them: 12 `recvmsg` and 10 `epoll_wait` per 1 MiB message, now 7 and 5 (dbus-broker, which
/// asks for all that its message lacks: 7 and 11). With `others_waiting`, 128 KiB as
/// before, so that their turn comes after less copying (a bystander's round trip during 1
/// MiB round trips: bench/README.md, "1 MiB bodies").
#[inline]
fn large_discount(others_waiting: bool) -> usize {
    if others_waiting {
        LARGE_DISCOUNT / 2
    } else {
        LARGE_DISCOUNT
    }
}
/// Bytes read per `recvmsg` into a receive buffer: one turn's budget. The buffers are
/// [`FRONT_MAX`] longer, for the start of a message cut by the previous read.
const SCRATCH: usize = READ_BUDGET;
/// Longest cut-off message start copied in front of the next read's bytes (so that the
/// message is relayed from the receive buffer); a longer one is gathered apart (`consume`).
/// Bounds the copy per read whatever the peer's pace.
const FRONT_MAX: usize = 2048;
/// Messages written per `sendmsg` batch (at most).
const BATCH: usize = 16;
/// How long an emptied outgoing queue keeps its buffer before a sweep frees it.
const SWEEP_AFTER: Duration = Duration::from_secs(2);
/// Bytes released from the queues after which the heap is trimmed while they are still
/// being released (`Reactor::return_released`): each trim then returns about this much,
/// about a millisecond of the kernel's time.
const RETURN_STEP: usize = 8 << 20;
/// A loop turn longer than this is logged: every client waits while one runs.
const SLOW_TURN: Duration = Duration::from_millis(500);
/// Most fds one `recvmsg` can carry (kernel limit per message).
const MAX_FDS_PER_RECV: usize = 253;

/// Accepted socket.
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
        }
    }
}

/// Socket-side state of one connection.
struct Io {
    stream: Stream,
    /// SASL in progress; None once authenticated.
    auth: Option<Box<Authenticator>>,
    /// Bytes received but not yet consumed (a partial message or auth line).
    partial: Vec<u8>,
    /// Whole messages an earlier read brought that the turn's [`MESSAGE_BUDGET`] left
    /// unhandled (and whatever follows them): handled first next turn, before any new read.
    held: Option<Held>,
    /// A message longer than one read, being received into its own buffer.
    large: Option<Box<LargeRead>>,
    /// The last message started was large: read the next one's fixed header alone first, so
    /// that if it is large too, its body goes straight into its own buffer instead of through
    /// a receive buffer and a copy (cleared as soon as a header read finds a small one).
    header_first: bool,
    /// Fds received and not yet attached to a message.
    fds: Vec<OwnedFd>,
    /// The last valid header received, so a repeated one is not walked again.
    header_cache: HeaderCache,
    /// When authentication (and Hello) must be complete.
    auth_deadline: Option<Instant>,
    /// When fds received without their whole message must have been claimed
    /// (`pending_fd_timeout`); None while no fds are pending.
    fd_deadline: Option<Instant>,
    /// The peer hung up (or the socket failed) with data possibly still queued: no further
    /// edge will come, so reads go on until end of stream, turn after turn.
    hup: bool,
    /// Registered for writability (only while the socket is full): keeps readiness
    /// events in arrival order and spares a wakeup each time a peer drains its socket.
    want_write: bool,
    /// The bus was told this connection holds a partial message (`Bus::receiving`).
    partial_charged: bool,
}

impl Io {
    /// Register for writability or not; nothing to do (every flush of an idle bus) costs
    /// only the comparison, inlined.
    #[inline]
    fn set_interest(&mut self, registry: &mio::Registry, token: Token, write: bool) {
        if self.want_write != write {
            self.change_interest(registry, token, write);
        }
    }

    #[cold]
    fn change_interest(&mut self, registry: &mio::Registry, token: Token, write: bool) {
        let interest = if write {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let res = match &mut self.stream {
            Stream::Unix(s) => registry.reregister(s, token, interest),
            Stream::Tcp(s) => registry.reregister(s, token, interest),
        };
        match res {
            Ok(()) => self.want_write = write,
            Err(e) => log::warn!("cannot change interest of connection {}: {e}", token.0),
        }
    }
}

/// The unhandled rest of a receive buffer: `buf[range]`, starting at a message boundary.
struct Held {
    buf: Rc<[u8]>,
    range: std::ops::Range<usize>,
}

/// What handling a buffer left of it, `buf[range]`: whole messages the turn's budget cut
/// off (`cut`), or else the start of a message that a later read completes (or nothing).
/// Returned up to where the connection is looked at anyway, and kept there ([`Rest::keep`]).
struct Rest {
    buf: Rc<[u8]>,
    range: std::ops::Range<usize>,
    cut: bool,
}

impl Rest {
    /// Keep it in `io`: held for the next turn (`Io::held`; returns true), or as the start
    /// of the next message (`keep_rest`).
    #[inline(always)]
    fn keep(self, io: &mut Io, max_message_size: usize) -> bool {
        if self.cut {
            // Its bytes, if any, are in the buffer in front of this read's.
            io.partial.clear();
            io.held = Some(Held {
                buf: self.buf,
                range: self.range,
            });
            return true;
        }
        if self.range.is_empty() {
            // The usual read ends on a message boundary: what `keep_rest` does with nothing
            // (an idle connection holds no buffer), without slicing for it.
            if io.partial.capacity() != 0 {
                io.partial = Vec::new();
            }
            return false;
        }
        keep_rest(
            io,
            self.buf.get(self.range).unwrap_or(&[]),
            max_message_size,
        );
        false
    }
}

/// What happened to a connection during a read.
enum ReadOutcome {
    Open,
    /// Open, and the read left nothing to follow up: authenticated, ended on a message
    /// boundary, nothing held, pending or charged (found at the read's last look at the
    /// connection, so that `read` need not look again).
    Settled,
    /// Budget exhausted while data may remain: come back next turn.
    More,
    Closed(CloseReason),
}

/// The sockets and files behind the bus: what it asks of the world ([`World`]).
struct Host {
    registry: mio::Registry,
    /// Listener slots: the configured addresses, then Containers1 sockets.
    listeners: Vec<Option<Bound>>,
    /// Containers1 instance served by each listener slot (None: a configured listener).
    listener_container: Vec<Option<u64>>,
    /// Socket-side state of each connection, by token.
    io: Vec<Option<Io>>,
    /// Where container sockets go.
    socket_dir: SocketDir,
    daemon_uid: u32,
    /// The configuration file (None: the built-in session default).
    config_path: Option<PathBuf>,
}

impl World for Host {
    fn peer_pidfd(&self, id: ConnId) -> Option<OwnedFd> {
        match &self.io.get(id)?.as_ref()?.stream {
            Stream::Unix(s) => sys::peer_pidfd(s),
            Stream::Tcp(_) => None,
        }
    }

    fn listen_container(
        &mut self,
        instance: u64,
        provided: Option<OwnedFd>,
    ) -> Result<(SocketName, String), ListenError> {
        // `cleanup`: the file to unlink when the instance stops; never the caller's.
        let (listener, name, cleanup) = match provided {
            None => {
                let dir = self.socket_dir.get(self.daemon_uid)?;
                let name: String = crate::auth_world::new_guid().chars().take(10).collect();
                let (listener, path) = container_sockets::bind(&dir, &name)?;
                (listener, SocketName::Path(path.clone()), Some(path))
            }
            Some(fd) => {
                let (listener, name) = container_sockets::check_provided(fd)?;
                if self.is_listener(&listener) {
                    return Err(ListenError {
                        path: PathBuf::new(),
                        step: ListenStep::Unsuitable(SocketProblem::InUse),
                        error: io::ErrorKind::InvalidInput.into(),
                    });
                }
                container_sockets::make_nonblocking(&listener)?;
                (listener, name, None)
            }
        };
        let guid = crate::auth_world::new_guid();
        let l = mio::net::UnixListener::from_std(listener);
        // Reuse a free slot: no event for an old token survives past its poll batch.
        let idx = self
            .listeners
            .iter()
            .zip(&self.listener_container)
            .position(|(b, c)| b.is_none() && c.is_none())
            .unwrap_or(self.listeners.len());
        if let Err(error) = sys::epoll_level(&self.registry, &l, LISTENER_BASE + idx, true, true) {
            if let Some(path) = &cleanup {
                let _ = std::fs::remove_file(path);
            }
            return Err(ListenError {
                step: if cleanup.is_some() {
                    ListenStep::Bind
                } else {
                    ListenStep::Adopt
                },
                path: cleanup.unwrap_or_default(),
                error,
            });
        }
        let b = Bound {
            listener: Listener::Unix(l),
            address: String::new(),
            cleanup,
            guid: guid.as_str().into(),
            nonce: None,
            pace: listener::Pace::default(),
        };
        if idx == self.listeners.len() {
            self.listeners.push(Some(b));
            self.listener_container.push(Some(instance));
        } else {
            self.listeners[idx] = Some(b);
            self.listener_container[idx] = Some(instance);
        }
        Ok((name, guid))
    }

    /// Every reload (SIGHUP, ReloadConfig, a watched directory changing) reads the
    /// configuration here, so this is where the service manager hears of it: like
    /// dbus-daemon's `bus_context_reload_config`, `RELOADING=1` before and `READY=1` after,
    /// whether or not the new configuration could be read (the bus keeps serving either way).
    /// The bus applies the result before it handles anything else.
    fn load_config(&mut self) -> Result<crate::config::Config, crate::config::ConfigError> {
        notify_manager("RELOADING=1");
        let loaded = match &self.config_path {
            Some(path) => crate::config::load(path),
            None => Ok(crate::config::builtin_session()),
        };
        notify_manager("READY=1");
        loaded
    }
}

/// Tell the service manager (`$NOTIFY_SOCKET`, if set) about a state change; a failure is
/// logged, never fatal.
fn notify_manager(state: &str) {
    if let Err(e) = crate::daemon::sd_notify(state) {
        log::warn!("cannot notify the service manager: {e}");
    }
}

impl Host {
    /// Whether `sock` is (a duplicate of) one of the bus's listening sockets: the same
    /// socket inode as a configured listener or another instance's.
    fn is_listener(&self, sock: &impl AsRawFd) -> bool {
        let inode = |fd: RawFd| nix::sys::stat::fstat(fd).ok().map(|s| (s.st_dev, s.st_ino));
        let Some(me) = inode(sock.as_raw_fd()) else {
            return false;
        };
        self.listeners.iter().flatten().any(|b| {
            let fd = match &b.listener {
                Listener::Unix(l) => l.as_raw_fd(),
                Listener::Tcp(l) => l.as_raw_fd(),
            };
            inode(fd) == Some(me)
        })
    }

    /// Turn epoll's interest in listener `idx` on or off (see [`listener::Pace::off`]).
    fn listener_interest(&mut self, idx: usize, on: bool) {
        let Some(Some(b)) = self.listeners.get_mut(idx) else {
            return;
        };
        if b.pace.off != on {
            return;
        }
        let token = LISTENER_BASE + idx;
        let res = match &b.listener {
            Listener::Unix(l) => sys::epoll_level(&self.registry, l, token, on, false),
            Listener::Tcp(l) => sys::epoll_level(&self.registry, l, token, on, false),
        };
        match res {
            Ok(()) => b.pace.off = !on,
            Err(e) => log::warn!("cannot change the epoll interest of a listener: {e}"),
        }
    }

    /// Stop accepting on Containers1 instance `n`'s socket and unlink it if the bus made
    /// it. A caller-provided socket is only closed (its open file description is shared
    /// with the caller, so it is deregistered explicitly: closing our fd alone would not
    /// take it out of the epoll set).
    fn unlisten(&mut self, n: u64) {
        let Some(idx) = self.listener_container.iter().position(|&c| c == Some(n)) else {
            return;
        };
        if let Some(Some(b)) = self.listeners.get_mut(idx).map(Option::take) {
            if let Listener::Unix(l) = &b.listener {
                let _ = sys::epoll_remove(&self.registry, l);
            }
            if let Some(path) = &b.cleanup {
                if let Err(e) = std::fs::remove_file(path) {
                    log::warn!("cannot remove container socket {}: {e}", path.display());
                }
            }
        }
        if let Some(c) = self.listener_container.get_mut(idx) {
            *c = None;
        }
    }
}

/// The facts about this host the bus is started with: a fresh bus ID, the machine ID, the
/// daemon's uid and the time.
pub fn host_facts() -> HostFacts {
    HostFacts {
        bus_id: crate::auth_world::new_guid(),
        machine_id: read_machine_id(),
        daemon_uid: nix::unistd::geteuid().as_raw(),
        daemon_pid: std::process::id(),
        now: Instant::now(),
        xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        environment: std::env::vars_os().collect(),
        service_fs: Rc::new(service_fs::RealFs),
        processes: Rc::new(proc_info::ProcFs),
    }
}

/// The machine ID from /var/lib/dbus/machine-id or /etc/machine-id, else a random one.
fn read_machine_id() -> String {
    for path in ["/var/lib/dbus/machine-id", "/etc/machine-id"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return s.to_owned();
            }
        }
    }
    crate::auth_world::new_guid()
}

/// The event loop and everything it owns.
pub struct Reactor {
    poll: Poll,
    bus: Bus,
    host: Host,
    /// Where small messages are received and relayed from (`rx.rs`).
    rx: rx::RxBuffers,
    cmsg: Vec<u8>,
    /// What SASL answers, before it is queued (reused: no allocation per line).
    sasl_out: Vec<u8>,
    signals: SignalFd,
    /// Connections with input to read this turn: readable ones, and those whose last read
    /// stopped at [`READ_BUDGET`]; each at most once.
    ready: ReadyList,
    /// Authentication deadlines, live while [`Io::auth_deadline`] holds them.
    auth_deadlines: DeadlineHeap,
    /// `pending_fd_timeout` deadlines, live while [`Io::fd_deadline`] holds them.
    fd_deadlines: DeadlineHeap,
    stop: bool,
    /// When to free the buffers of queues that emptied (None: nothing to sweep).
    sweep_at: Option<Instant>,
    /// Turns spent so far releasing closed connections' queues (`Bus::reap`; debug log).
    reap_turns: u32,
    /// Fires at `sweep_at` (set with it in `arm_sweep`): the kernel keeps that time, so a
    /// turn need not read the clock to learn whether the sweep is due, nor to work out
    /// the poll's timeout for it (a bus relaying one message per turn then reads no clock
    /// at all). None if no timerfd could be made: `sweep_at` is then polled as a deadline.
    sweep_timer: Option<TimerFd>,
    /// `sweep_timer` fired since the last sweep: `sweep_at` may be due.
    sweep_fired: bool,
    /// Accepting stopped at `max_incomplete_connections`; resumed by housekeeping.
    accept_paused: bool,
    /// `accept` failed for lack of resources (descriptors, memory): listeners are off until
    /// a connection closes.
    accept_starved: bool,
    /// Turns of the event loop so far (one per `epoll_wait`; `listener::Pace`).
    turn: u64,
    /// Containers1 instance of each `StopOnNotify` watch slot.
    notify_watch: Vec<Option<(u64, RawFd)>>,
    /// Watches the configuration and service directories (None if inotify is unavailable).
    dir_watch: Option<DirWatch>,
}

impl Reactor {
    /// Create the reactor around `bus` with already bound `listeners`. `config_path` is
    /// the configuration file reloads read (None: the built-in session default).
    pub fn new(
        mut bus: Bus,
        listeners: Vec<Bound>,
        config_path: Option<PathBuf>,
    ) -> io::Result<Reactor> {
        // The system clock, read once per turn on demand (`run`).
        bus.set_clock(Clock::reading(Instant::now));
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGCHLD,
        ] {
            mask.add(s);
        }
        mask.thread_block().map_err(io::Error::from)?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNAL_TOKEN,
            Interest::READABLE,
        )?;
        // Writing to a closed peer must not kill the bus.
        let _ = sys::ignore_sigpipe();
        // Bounds accepts on caller-provided container sockets (container_sockets.rs).
        sys::install_alarm_interrupt().map_err(io::Error::from)?;
        let mut r = Reactor {
            poll,
            bus,
            host: Host {
                registry,
                listeners: Vec::new(),
                listener_container: Vec::new(),
                io: Vec::new(),
                socket_dir: SocketDir::default(),
                daemon_uid: nix::unistd::geteuid().as_raw(),
                config_path,
            },
            rx: rx::RxBuffers::new(FRONT_MAX + SCRATCH),
            cmsg: nix::cmsg_space!([RawFd; MAX_FDS_PER_RECV]),
            sasl_out: Vec::new(),
            signals,
            ready: ReadyList::default(),
            auth_deadlines: DeadlineHeap::default(),
            fd_deadlines: DeadlineHeap::default(),
            stop: false,
            sweep_at: None,
            reap_turns: 0,
            sweep_timer: None,
            sweep_fired: false,
            accept_paused: false,
            accept_starved: false,
            turn: 0,
            notify_watch: Vec::new(),
            dir_watch: None,
        };
        r.start_dir_watch();
        r.start_sweep_timer();
        for b in listeners {
            r.add_listener(b)?;
        }
        Ok(r)
    }

    fn add_listener(&mut self, b: Bound) -> io::Result<usize> {
        let idx = self.host.listeners.len();
        let token = LISTENER_BASE + idx;
        // Level-triggered (`listener::Pace`).
        match &b.listener {
            Listener::Unix(l) => sys::epoll_level(self.poll.registry(), l, token, true, true)?,
            Listener::Tcp(l) => sys::epoll_level(self.poll.registry(), l, token, true, true)?,
        }
        self.host.listeners.push(Some(b));
        self.host.listener_container.push(None);
        Ok(idx)
    }

    /// Carry out what the bus asked for, in order.
    fn apply_effects(&mut self) {
        while let Some(effect) = self.bus.poll_effect() {
            match effect {
                Effect::Flush(id) => self.flush(id),
                Effect::Close(id, why) => {
                    log::info!("closing connection {id}: {why}");
                    // What the bus queued for it before closing it (an error) goes first.
                    self.flush(id);
                    self.close(id, why);
                }
                Effect::Unlisten(n) => self.host.unlisten(n),
                Effect::WatchNotify(n, raw) => self.watch_notify(n, raw),
                Effect::UnwatchNotify(n, fd) => {
                    for slot in self.notify_watch.iter_mut() {
                        if let Some((c, raw)) = *slot {
                            if c == n {
                                let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
                                *slot = None;
                            }
                        }
                    }
                    // Closed only now that it is no longer registered.
                    drop(fd);
                }
                Effect::Spawn(req) => self.spawn_service(*req),
                Effect::Reconfigured => self.aim_dir_watch(),
                // A paused connection may be read again (`bus/quota.rs`): its data is
                // already in the socket and raises no new edge.
                Effect::Resume(id) => {
                    self.ready.push(id);
                }
            }
        }
    }

    /// Watch a `StopOnNotify` fd for hang-up.
    fn watch_notify(&mut self, n: u64, raw: RawFd) {
        let idx = self
            .notify_watch
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.notify_watch.len());
        let token = Token(NOTIFY_BASE + idx);
        // No interest in data: only hang-up and error, which epoll always reports.
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&raw), token, Interest::READABLE)
        {
            Ok(()) => {
                if idx == self.notify_watch.len() {
                    self.notify_watch.push(Some((n, raw)));
                } else {
                    self.notify_watch[idx] = Some((n, raw));
                }
                // An fd that hung up before registration still raises an event
                // (epoll reports the current state on registration).
            }
            Err(e) => {
                log::warn!("cannot watch StopOnNotify fd of container {n}: {e}");
                self.bus.container_notify_hangup(n);
            }
        }
    }

    /// Readiness on a `StopOnNotify` fd: stop its instance on hang-up or error.
    fn notify_event(&mut self, idx: usize, ev: &mio::event::Event) {
        let Some(Some((n, raw))) = self.notify_watch.get(idx).copied() else {
            return;
        };
        if ev.is_read_closed() || ev.is_write_closed() || ev.is_error() {
            log::info!("container {n}: StopOnNotify fd hung up");
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
            if let Some(slot) = self.notify_watch.get_mut(idx) {
                *slot = None;
            }
            self.bus.container_notify_hangup(n);
        }
    }

    /// Run until SIGTERM/SIGINT. Removes socket files on the way out.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        // The clock (the bus's, `bus::Clock`) is read at most once per turn, on the first
        // demand after the poll returns: reads, dispatch, deadlines and the next poll's
        // timeout all use that time. A deadline is then met at most one turn late (a turn
        // takes microseconds; the timeout rounds up by a millisecond anyway), one set in a
        // turn is set from that turn's time, and a turn that sets and checks no deadline
        // (a relayed message, usually) reads no clock at all.
        while !self.stop {
            // The bus's earliest deadline (service starts, replies), asked once per turn
            // and used twice: for the poll's timeout and, after the reads, for whether
            // `housekeeping` has anything to look at. A deadline this turn's reads set is
            // therefore first looked at by the next turn, whose poll it bounds (it is at
            // least its timeout away, so it was not due yet, but for a timeout of 0 ms,
            // which is then met one turn, at most a millisecond, late). Asking the bus
            // again after the reads cost a relayed message about 20 instructions.
            let bus_deadline = self.bus.next_deadline();
            // Reads left over or closed connections' queues being released (`Bus::reap`):
            // no waiting.
            let busy = !self.at_rest();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                self.timeout(bus_deadline)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // The last turn's reading, if it took one (taken during that turn: `timeout`
            // reads nothing when reads are left over, the only case it is used for).
            let before = self.bus.clock().taken();
            self.bus.clock().new_turn();
            self.turn = self.turn.wrapping_add(1);
            // Had the poll nothing to wait for (reads left over), the time since the last
            // one returned is the last turn's: a flood's turns are the ones that grow long.
            // Such a turn reads the clock at once, so the next one can time it (a turn after
            // an idle poll is timed from its first reading, if it took one).
            if busy {
                let now = self.bus.clock().now();
                if let Some(before) = before.filter(|&b| now.duration_since(b) > SLOW_TURN) {
                    log::warn!(
                        "one event loop turn took {} ms",
                        now.duration_since(before).as_millis()
                    );
                }
            }
            for ev in events.iter() {
                let t = ev.token();
                // Connections first: nearly every event is one of theirs (the other
                // tokens are all above NOTIFY_BASE).
                if t.0 < NOTIFY_BASE {
                    let id = t.0;
                    let closed = ev.is_read_closed() || ev.is_error();
                    if closed || ev.is_readable() {
                        if closed {
                            // A hang-up that came with the data will raise no further
                            // edge: read until EOF then.
                            if let Some(Some(io)) = self.host.io.get_mut(id) {
                                io.hup = true;
                            }
                        }
                        self.ready.push(id);
                    }
                    if ev.is_writable() {
                        self.flush(id);
                    }
                } else if t == SIGNAL_TOKEN {
                    self.on_signal();
                } else if t == SWEEP_TOKEN {
                    // Consume the expiry (the fd is non-blocking), so the next one is a
                    // new edge; an event without one (the timer was set again since)
                    // is no expiry.
                    if self.sweep_timer.as_ref().is_some_and(|t| t.wait().is_ok()) {
                        self.sweep_fired = true;
                    }
                } else if t == DIR_WATCH_TOKEN {
                    if self.dir_watch.as_mut().is_some_and(DirWatch::drain) {
                        // The bus answers lookup misses from its table for watched
                        // directories: tell it of any watch lost, and reload now, before the
                        // messages later in this batch (one may be for a service just added).
                        if let Some(w) = &self.dir_watch {
                            self.bus.set_watched_dirs(w.watched());
                        }
                        log::info!(
                            "a watched configuration or service directory changed; reloading"
                        );
                        self.reload();
                    }
                } else if t.0 >= LISTENER_BASE {
                    self.accept(t.0 - LISTENER_BASE, self.bus.clock().now());
                } else {
                    self.notify_event(t.0 - NOTIFY_BASE, ev);
                }
            }
            // One round: each ready connection reads at most READ_BUDGET, once; those cut
            // off go to the back of the list for the next turn, after a flush and a poll.
            for _ in 0..self.ready.round() {
                let Some(id) = self.ready.pop() else { break };
                self.read(id);
            }
            // Without a deadline or a paused listener there is nothing to keep, and no need
            // for the time.
            if self.accept_paused || self.has_deadline(bus_deadline) {
                self.housekeeping(self.bus.clock().now());
            }
            // A piece of what closed connections left queued (`Bus::reap`): a close
            // costs every other client at most one budget's drops per turn, however much
            // was queued.
            if self.bus.reaping() {
                self.reap_turns += 1;
                if !self.bus.reap(crate::bus::delivery::REAP_BUDGET) {
                    log::debug!(
                        "queues of closed connections released in {} turns",
                        std::mem::take(&mut self.reap_turns)
                    );
                }
                self.return_released();
            }
            self.apply_effects();
            // After the turn's writes, when only queues whose sockets are full still hold
            // anything: before them, on a busy bus, the turn's own deliveries were nearly
            // always queued and the pool never found the bus idle (a flood's slots stayed).
            // And only at rest: with reads left over or queues still being reaped, the
            // pool cannot shrink yet and a sweep (its turn took 79-111 ms after 2M
            // signals) would stall the clients being served; both keep the poll's timeout
            // at zero, so the first turn at rest comes soon (the timer's expiry is kept
            // until then). The clock is asked only when the sweep timer fired (or there
            // is none).
            if (self.sweep_fired || self.sweep_timer.is_none())
                && self.at_rest()
                && self.sweep_at.is_some_and(|t| t <= self.bus.clock().now())
            {
                self.sweep_fired = false;
                self.sweep_idle_queues();
            }
        }
        self.cleanup();
        Ok(())
    }

    /// How long a bus at rest (`at_rest`) waits for events: until the earliest deadline
    /// (from the clock's time), forever without deadlines. `bus_deadline`: the bus's
    /// (`Bus::next_deadline`).
    fn timeout(&self, bus_deadline: Option<Instant>) -> Option<Duration> {
        // The usual turn has no deadline at all: found without comparing any times.
        let sweep_polled = self.sweep_timer.is_none() && self.sweep_at.is_some();
        if !sweep_polled && !self.has_deadline(bus_deadline) {
            return None;
        }
        // Pairwise, not an iterator over an array of four: this runs every turn.
        let t = earlier(
            earlier(self.auth_deadlines.peek(), self.fd_deadlines.peek()),
            earlier(
                bus_deadline,
                self.sweep_at.filter(|_| self.sweep_timer.is_none()),
            ),
        )?;
        Some(t.saturating_duration_since(self.bus.clock().now()) + Duration::from_millis(1))
    }

    /// Whether `housekeeping` has a deadline to look at (authentication, pending fds, the
    /// bus's service starts and replies, `bus_deadline`); which one is earliest does not
    /// matter here.
    fn has_deadline(&self, bus_deadline: Option<Instant>) -> bool {
        bus_deadline.is_some() || !self.auth_deadlines.is_empty() || !self.fd_deadlines.is_empty()
    }

    /// The bus went quiet after a burst: let the shared queue pool give back what the burst
    /// grew it to, if nothing is queued anywhere, and, if the burst queued a lot, have the
    /// allocator return the freed heap to the kernel (glibc otherwise keeps a drained
    /// flood's small buffers: issue 11). A small burst costs no heap walk. Armed by a write
    /// that empties a queue or a close that drops one (`arm_sweep`), run at the end of a
    /// turn, after its writes.
    ///
    /// Called only at rest (`at_rest`). If the queues still hold a lot (a reader that is
    /// slow or gone quiet with a flood queued), the sweep is dropped rather than run: the
    /// pool cannot shrink while anything is queued, and trimming would walk a big heap for
    /// little; the write that empties that queue, or its connection's close, arms the
    /// sweep again, and the burst's peak is still counted then.
    ///
    /// The pool's chunks are freed `RELEASE_CHUNKS` (4 MiB) per sweep, the sweep coming
    /// back `RELEASE_PAUSE` later for the rest, each time followed by a trim: a 2M-signal
    /// flood left about 250 MB of chunks, and freeing them and trimming in one turn took
    /// 70-120 ms (one such sweep turn per flood); in pieces, each took about 1 ms. What the
    /// queued messages' copies held was mostly given back while they were released
    /// (`return_released`), so the trim here has little left to do.
    fn sweep_idle_queues(&mut self) {
        /// Queued bytes (at the burst's peak) from which a sweep trims the heap.
        const TRIM_AFTER_BYTES: usize = 1 << 20;
        /// Pool chunks (256 KiB each) freed per sweep.
        const RELEASE_CHUNKS: usize = 16;
        /// How soon the sweep comes back while chunks are left to free: the bus serves
        /// everything that arrived meanwhile first.
        const RELEASE_PAUSE: Duration = Duration::from_millis(5);
        self.sweep_at = None;
        let queued = self.bus.queued_bytes();
        if queued >= TRIM_AFTER_BYTES {
            log::debug!("idle sweep dropped: {queued} bytes still queued");
            return;
        }
        let burst = self.bus.shrink_idle_queues();
        let (freed, more) = self.bus.release_idle_queues(RELEASE_CHUNKS);
        if more {
            self.arm_sweep_in(RELEASE_PAUSE, "queue pool chunks left to free");
        }
        if burst >= TRIM_AFTER_BYTES || freed > 0 {
            let released = crate::sys::malloc_trim();
            self.bus.queue_memory_returned();
            log::debug!(
                "idle sweep after {burst} queued bytes, {freed} bytes of pool freed: heap \
                 trimmed ({released})"
            );
        } else {
            log::debug!("idle sweep after {burst} queued bytes: no trim");
        }
    }

    /// While a large queue is released (written to a reader that caught up, or dropped
    /// after its connection closed, `Bus::reap`), have the allocator give back what it
    /// freed every [`RETURN_STEP`] bytes, rather than all of it in the idle sweep: glibc
    /// keeps freed small blocks, and returning a 2M-signal flood's (about 250 MB of
    /// copies) in one `malloc_trim` took one turn of 25-40 ms in the kernel alone. Called
    /// only where a big queue is being released (a reap turn, a write that filled the
    /// socket): never on the relay path.
    fn return_released(&mut self) {
        if self.bus.queue_bytes_released() >= RETURN_STEP {
            let released = crate::sys::malloc_trim();
            self.bus.queue_memory_returned();
            log::debug!("heap trimmed while queues are released ({released})");
        }
    }

    /// Whether the bus has nothing to do until the next event: no reads left over and no
    /// closed connection's queue being released.
    fn at_rest(&self) -> bool {
        self.ready.is_empty() && !self.bus.reaping()
    }

    fn housekeeping(&mut self, now: Instant) {
        if self.accept_paused
            && self.bus.incomplete_count()
                < self.bus.config().limits.max_incomplete_connections as usize
        {
            self.accept_paused = false;
            // Level-triggered: those with connections queued are reported by the next poll.
            if !self.accept_starved {
                for idx in 0..self.host.listeners.len() {
                    self.host.listener_interest(idx, true);
                }
            }
        }
        self.bus.on_timer(now);
        while let Some((_, id)) = self
            .auth_deadlines
            .pop_due(now, |t, id| auth_live(&self.host.io, t, id))
        {
            if let Some(Some(io)) = self.host.io.get_mut(id) {
                io.auth_deadline = None;
            }
            if self.bus.is_incomplete(id) {
                log::info!("connection {id}: authentication timed out");
                self.close(id, CloseReason::AuthTimedOut);
            }
        }
        while let Some((_, id)) = self
            .fd_deadlines
            .pop_due(now, |t, id| fd_live(&self.host.io, t, id))
        {
            let Some(Some(io)) = self.host.io.get_mut(id) else {
                continue;
            };
            io.fd_deadline = None;
            if !io.fds.is_empty() {
                log::warn!(
                    "connection {id} ({}) has had unix fds pending for too long, closing it (pending_fd_timeout={} ms)",
                    self.bus.log_name(id),
                    self.bus.config().limits.pending_fd_timeout
                );
                self.close(id, CloseReason::PendingFdsTimedOut);
            }
        }
    }

    fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGHUP) => self.reload(),
                Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) => self.stop = true,
                Ok(Signal::SIGCHLD) => self.reap_children(),
                _ => {}
            }
        }
    }

    fn reload(&mut self) {
        if let Err(e) = self.bus.reload_from_disk(&mut self.host) {
            log::warn!("Unable to reload configuration: {e}");
        }
    }

    /// Watch the configuration and service directories; without inotify the bus still
    /// rescans service directories on a lookup miss and reloads on SIGHUP/ReloadConfig.
    fn start_dir_watch(&mut self) {
        let w = match DirWatch::new() {
            Ok(w) => w,
            Err(e) => {
                log::info!("not watching configuration directories: {e}");
                return;
            }
        };
        let registered = self.poll.registry().register(
            &mut SourceFd(&w.fd()),
            DIR_WATCH_TOKEN,
            Interest::READABLE,
        );
        if let Err(e) = registered {
            log::info!("not watching configuration directories: {e}");
            return;
        }
        self.dir_watch = Some(w);
        self.aim_dir_watch();
    }

    /// Point the watch at the current configuration's directories (they change on reload).
    fn aim_dir_watch(&mut self) {
        let Some(w) = self.dir_watch.as_mut() else {
            return;
        };
        let config = self.bus.config().config_dirs.iter().map(|d| d.as_path());
        w.set(config.chain(self.bus.service_dirs()));
        self.bus.set_watched_dirs(w.watched());
    }

    /// Start the process activation asked for. `Command::spawn` returns once the child has
    /// exec'd (or failed to), so the loop is never blocked on the service itself.
    fn spawn_service(&mut self, req: crate::bus::service_start::SpawnRequest) {
        {
            let Some((prog, args)) = req.argv.split_first() else {
                return;
            };
            let mut cmd = std::process::Command::new(prog);
            cmd.args(args)
                .env_clear()
                .envs(req.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdin(std::process::Stdio::null());
            match spawn_unblocked(&mut cmd) {
                Ok(child) => {
                    log::info!("Activating service name='{}' pid {}", req.name, child.id());
                    self.bus.spawned(&req.name, child.id());
                    // The child is reaped through SIGCHLD and waitpid, not through `Child`.
                    drop(child);
                }
                Err(e) => {
                    let text = format!("Failed to execute program {prog}: {e}");
                    log::info!("Activated service '{}' failed: {text}", req.name);
                    self.bus.spawn_failed(&req.name, &text);
                }
            }
        }
    }

    /// Collect exited children and tell the bus.
    fn reap_children(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    self.bus.child_exited(pid.as_raw() as u32, Some(code), None)
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    self.bus
                        .child_exited(pid.as_raw() as u32, None, Some(sig as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Accept what listener `idx` has queued, as much as its [`listener::Pace`] allows
    /// this turn. Kept out of line: inlined into the event loop, its one caller, it made
    /// the relay path's per-message instruction counts (bench/instructions.sh) rise by up
    /// to 4.
    #[inline(never)]
    fn accept(&mut self, idx: usize, now: Instant) {
        let budget = match self.host.listeners.get_mut(idx) {
            Some(Some(b)) => b.pace.budget(self.turn),
            _ => return,
        };
        for _ in 0..budget {
            let Some(Some(bound)) = self.host.listeners.get(idx) else {
                return;
            };
            if self.bus.incomplete_count()
                >= self.bus.config().limits.max_incomplete_connections as usize
            {
                // Stop accepting until some connection completes (dbus-daemon behaviour);
                // housekeeping resumes. Off epoll's interest meanwhile: level-triggered, the
                // queued connections would report the listener in every turn.
                if !self.accept_paused {
                    log::info!("too many incomplete connections; not accepting for now");
                }
                self.accept_paused = true;
                self.host.listener_interest(idx, false);
                return;
            }
            let guid = bound.guid.clone();
            let nonce = bound.nonce.as_ref().map(|n| n.bytes());
            let container = self.host.listener_container.get(idx).copied().flatten();
            // A container socket the bus did not make (nothing to unlink) is the caller's.
            let provided = container.filter(|_| bound.cleanup.is_none());
            let (stream, unix) = match &bound.listener {
                Listener::Unix(l) => match provided
                    .map_or_else(|| l.accept(), |_| container_sockets::accept_provided(l))
                {
                    Ok((s, _)) => (Stream::Unix(s), true),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.drained(idx);
                        return;
                    }
                    Err(e) => {
                        log::warn!("accept failed: {e}");
                        if let Some(n) = provided.filter(|_| {
                            e.kind() == io::ErrorKind::Interrupted
                                || e.get_ref()
                                    .is_some_and(|i| i.is::<container_sockets::Tampered>())
                        }) {
                            log::warn!("container {n}: no longer accepting on the socket its creator provided");
                            self.bus.container_socket_failed(n);
                        } else {
                            self.accept_failed(&e);
                        }
                        return;
                    }
                },
                Listener::Tcp(l) => match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        (Stream::Tcp(s), false)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.drained(idx);
                        return;
                    }
                    Err(e) => {
                        log::warn!("accept failed: {e}");
                        self.accept_failed(&e);
                        return;
                    }
                },
            };
            let creds = match &stream {
                Stream::Unix(s) => unix_credentials(s),
                Stream::Tcp(_) => Credentials::default(),
            };
            let peer_uid = creds.uid;
            let id = match container {
                None => self.bus.accept(creds),
                Some(n) => match self.bus.accept_contained(creds, n) {
                    Some(id) => id,
                    // Over the instance's limit (or stopped): dropped before any SASL.
                    None => continue,
                },
            };
            let mut mechanisms = Mechanisms::new();
            if container.is_some() {
                // Container sockets authenticate with EXTERNAL only.
                mechanisms.push(Mechanism::External);
            } else {
                for m in self
                    .bus
                    .config()
                    .auth
                    .iter()
                    .filter_map(|m| Mechanism::parse(m))
                {
                    if !mechanisms.contains(&m) {
                        // Cannot fail: at most the three distinct mechanisms.
                        let _ = mechanisms.try_push(m);
                    }
                }
            }
            let auth = Authenticator::new(AuthConfig {
                mechanisms,
                unix_fd_capable: unix,
                peer_uid,
                guid,
                nonce,
            });
            let deadline =
                now + Duration::from_millis(self.bus.config().limits.auth_timeout as u64);
            let io = Io {
                stream,
                auth: Some(Box::new(auth)),
                partial: Vec::new(),
                held: None,
                large: None,
                header_first: false,
                fds: Vec::new(),
                header_cache: HeaderCache::default(),
                auth_deadline: Some(deadline),
                fd_deadline: None,
                hup: false,
                want_write: false,
                partial_charged: false,
            };
            if self.host.io.len() <= id {
                self.host.io.resize_with(id + 1, || None);
            }
            self.host.io[id] = Some(io);
            self.auth_deadlines.push(deadline, id);
            // A client writes its first SASL line right after connect(), so by the time the
            // bus runs it is usually there: read it now and answer it in this turn, instead
            // of one epoll_wait later. Read before the socket joins the epoll set: registered
            // first, the bytes already queued raise an edge that the next epoll_wait reports
            // after they were read (a recvmsg that finds nothing); registered after, only
            // what arrives from now on does. (dbus-broker reads a new connection at once
            // too, but after registering it.)
            self.read(id);
            let Some(Some(io)) = self.host.io.get_mut(id) else {
                continue; // closed by what it sent
            };
            let res = match &mut io.stream {
                Stream::Unix(s) => self
                    .poll
                    .registry()
                    .register(s, Token(id), Interest::READABLE),
                Stream::Tcp(s) => self
                    .poll
                    .registry()
                    .register(s, Token(id), Interest::READABLE),
            };
            if let Err(e) = res {
                log::warn!("cannot register connection: {e}");
                self.close(id, CloseReason::ReadError);
            }
        }
    }

    /// Listener `idx`'s queue was found empty.
    fn drained(&mut self, idx: usize) {
        if let Some(Some(b)) = self.host.listeners.get_mut(idx) {
            b.pace.drained();
        }
    }

    /// `accept` on a listener failed with `e`. A failure for lack of descriptors or
    /// memory leaves the connection queued, and the level-triggered listener would be
    /// reported (and fail) again in every turn: it is taken out of epoll's interest until a
    /// connection closes. Other failures (a connection aborted while queued) took the
    /// connection off the queue.
    fn accept_failed(&mut self, e: &io::Error) {
        if matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        ) {
            self.accept_starved = true;
            for i in 0..self.host.listeners.len() {
                self.host.listener_interest(i, false);
            }
        }
    }

    /// Read what is available on `id`, up to [`READ_BUDGET`], and hand complete messages to
    /// the bus.
    fn read(&mut self, id: ConnId) {
        // Back-pressure (`bus/quota.rs`): a connection over `max_incoming_bytes` or its uid's
        // quota is left unread, off the ready list, until `Effect::Resume`.
        if !self.bus.may_read(id) {
            return;
        }
        let outcome = self.read_inner(id);
        // The usual read, checked in one look: authenticated, ended on a message boundary,
        // nothing held, pending or charged (what the two calls below would find).
        if matches!(outcome, ReadOutcome::Settled) {
            return;
        }
        if let (ReadOutcome::Open, Some(Some(io))) = (&outcome, self.host.io.get(id)) {
            if io.auth_deadline.is_none()
                && io.held.is_none()
                && io.large.is_none()
                && io.partial.is_empty()
                && io.fds.is_empty()
                && !io.partial_charged
            {
                return;
            }
        }
        self.check_complete(id);
        if !matches!(outcome, ReadOutcome::Closed(_)) {
            self.report_partial(id);
        }
        match outcome {
            ReadOutcome::Open | ReadOutcome::Settled => {}
            ReadOutcome::More => {
                self.ready.push(id);
            }
            ReadOutcome::Closed(why) => {
                log::debug!("connection {id} closed: {why}");
                self.close(id, why);
            }
        }
    }

    /// Tell the bus what `id`'s partial message holds (its quota charge, `bus/quota.rs`).
    fn report_partial(&mut self, id: ConnId) {
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return;
        };
        // Messages held for the next turn (and any start of one behind them) are not charged:
        // they are already read, and only handling them, which a connection paused at its
        // limit would never get to, could release the charge (`max_incoming_bytes` 1 would
        // stop it for good). dbus-daemon likewise stops reading at the limit but dispatches
        // what it has loaded. They hold at most one receive buffer per connection.
        let (bytes, fds) = if io.held.is_some() {
            (0, 0)
        } else {
            let large = io.large.as_ref().map_or(0, |l| l.received());
            (io.partial.len() + large, io.fds.len())
        };
        // The usual read ends on a message boundary: nothing held before or after.
        if bytes == 0 && fds == 0 && !io.partial_charged {
            return;
        }
        io.partial_charged = bytes != 0 || fds != 0;
        self.bus.receiving(id, bytes, fds);
    }

    /// A connection that finished authentication and Hello no longer needs its
    /// authentication deadline: retire it now rather than when it would expire.
    fn check_complete(&mut self, id: ConnId) {
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return;
        };
        if io.auth_deadline.is_none() || self.bus.is_incomplete(id) {
            return;
        }
        io.auth_deadline = None;
        self.auth_deadlines
            .retire(|t, id| auth_live(&self.host.io, t, id));
    }

    fn read_inner(&mut self, id: ConnId) -> ReadOutcome {
        let mut budget = READ_BUDGET;
        let mut messages = MESSAGE_BUDGET;
        loop {
            let Some(Some(io)) = self.host.io.get_mut(id) else {
                return ReadOutcome::Open;
            };
            // Messages an earlier read brought go first, and no new read while any are left
            // (only ever found on the first pass: a read that holds some ends the turn).
            if io.held.is_some() {
                match self.resume_held(id, &mut messages) {
                    Ok(true) => return ReadOutcome::More,
                    Ok(false) => continue,
                    Err(why) => return ReadOutcome::Closed(why),
                }
            }
            let fd = io.stream.fd();
            let drain = io.hup;
            let large = io.large.is_some();
            let header_only =
                !large && io.header_first && io.partial.is_empty() && io.auth.is_none();
            let discount = large_discount(large && !self.ready.is_empty());
            // What `consume` would otherwise look up again: nothing below changes them.
            let kept = io.partial.len();
            let authenticating = io.auth.is_some();
            let (wanted, received) = match io.large.as_mut() {
                Some(lr) => {
                    let max = budget * discount;
                    let wanted = max.min(lr.remaining());
                    let r = lr.recv(fd, max, &mut self.cmsg, &mut io.fds);
                    (wanted, r.map(classify))
                }
                None => {
                    let cap = if header_only {
                        FIXED_HEADER_LEN
                    } else {
                        SCRATCH
                    };
                    // The cut-off start of a message goes in front of the new bytes, so the
                    // message is framed and relayed from this buffer like the others.
                    let buf = self.rx.writable();
                    let at = match buf.get_mut(..kept) {
                        // Nearly every read starts on a message boundary: no memcpy call.
                        _ if kept == 0 => 0,
                        Some(head) if kept <= FRONT_MAX => {
                            head.copy_from_slice(&io.partial);
                            kept
                        }
                        _ => 0,
                    };
                    let end = (at + budget.min(cap)).min(buf.len());
                    let dst = buf.get_mut(at..end).unwrap_or(&mut []);
                    (dst.len(), recv(fd, dst, &mut self.cmsg, &mut io.fds))
                }
            };
            let (n, got_fds) = match received {
                Ok(Received::Data { n, fds }) => (n, fds),
                Ok(Received::Truncated) => {
                    log::info!("connection {id}: fds truncated (MSG_CTRUNC); disconnecting");
                    return ReadOutcome::Closed(CloseReason::TooManyFds);
                }
                Err(nix::errno::Errno::EAGAIN) => return ReadOutcome::Open,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::debug!("connection {id}: read error {e}");
                    return ReadOutcome::Closed(CloseReason::ReadError);
                }
            };
            if n == 0 {
                return ReadOutcome::Closed(CloseReason::EndOfStream);
            }
            if got_fds > 0 {
                let unix_fd = self.bus.unix_fd(id);
                if !unix_fd
                    && self
                        .host
                        .io
                        .get(id)
                        .and_then(|o| o.as_ref())
                        .is_some_and(|io| io.auth.is_none())
                {
                    log::info!("connection {id}: sent fds without negotiating fd passing");
                    return ReadOutcome::Closed(CloseReason::FdsWithoutNegotiation);
                }
            }
            let step = if large {
                self.received_large(id).map(|()| None)
            } else {
                self.consume(id, n, kept, authenticating, &mut messages)
            };
            let rest = match step {
                Ok(rest) => rest,
                Err(why) => return ReadOutcome::Closed(why),
            };
            // One look at the connection for all that follows up the step (each look is a
            // bounds check and a test of the slot: about 8 instructions a read).
            let max = self.bus.config().limits.max_message_size as usize;
            let Some(Some(io)) = self.host.io.get_mut(id) else {
                return ReadOutcome::Open;
            };
            let held = rest.is_some_and(|rest| rest.keep(io, max));
            if header_only {
                // A header read that did not start a large message: back to full reads.
                io.header_first = io.large.is_some();
            }
            let settled = io.auth_deadline.is_none()
                && io.held.is_none()
                && io.large.is_none()
                && io.partial.is_empty()
                && io.fds.is_empty()
                && !io.partial_charged;
            if !io.fds.is_empty() || io.fd_deadline.is_some() {
                if let Err(why) = self.check_pending_fds(id) {
                    return ReadOutcome::Closed(why);
                }
            }
            // Messages left in the buffer raise no new edge: come back for them next turn.
            if held || messages == 0 {
                return ReadOutcome::More;
            }
            // A short read without fds means the socket is drained: the next byte that
            // arrives raises a new edge, so no EAGAIN round trip is needed. One with fds
            // proves nothing (the kernel ends a read after the data that carried them), and
            // with edge-triggered readiness bytes left queued would raise no new event: the
            // loop reads again, usually to EAGAIN. FIONREAD would be a system call as well,
            // and putting the read off until after the turn's writes gained nothing measurable.
            if n < wanted && got_fds == 0 && !drain {
                return if settled {
                    ReadOutcome::Settled
                } else {
                    ReadOutcome::Open
                };
            }
            // Charged only now: a read that ends the connection's turn above needs no count.
            budget = budget.saturating_sub(if large { n.div_ceil(discount) } else { n });
            if budget == 0 {
                return ReadOutcome::More;
            }
        }
    }

    /// Fds received ahead of the rest of their message are held for it, but not without
    /// bound: no more than one message may carry (`max_message_unix_fds`), and for no longer
    /// than `pending_fd_timeout`, else a peer could make the bus hold descriptors until it
    /// runs out of them.
    fn check_pending_fds(&mut self, id: ConnId) -> Result<(), CloseReason> {
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return Ok(());
        };
        if io.fds.is_empty() {
            if io.fd_deadline.take().is_some() {
                self.fd_deadlines
                    .retire(|t, id| fd_live(&self.host.io, t, id));
            }
            return Ok(());
        }
        let limits = &self.bus.config().limits;
        let (max, timeout) = (
            limits.max_message_unix_fds as usize,
            Duration::from_millis(u64::from(limits.pending_fd_timeout)),
        );
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return Ok(());
        };
        // Fds of messages already received but held for the next turn are not pending: a
        // peer may send several fd-carrying messages in one go.
        if io.fds.len() > max && io.held.is_none() {
            log::info!(
                "connection {id}: {} unix fds received without their message (limit {max}); disconnecting",
                io.fds.len()
            );
            return Err(CloseReason::TooManyPendingFds);
        }
        if io.fd_deadline.is_none() {
            let t = self.bus.clock().now() + timeout;
            io.fd_deadline = Some(t);
            self.fd_deadlines.push(t, id);
        }
        Ok(())
    }

    /// More bytes of `id`'s large message arrived (`LargeRead::recv` counted them); relay it
    /// once complete.
    fn received_large(&mut self, id: ConnId) -> Result<(), CloseReason> {
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return Ok(());
        };
        let Some(lr) = io.large.as_mut() else {
            return Ok(());
        };
        if lr.remaining() > 0 {
            return Ok(());
        }
        match io.large.take().and_then(|lr| lr.finish()) {
            Some(data) => {
                let len = data.len();
                self.deliver(id, data, 0..len).map(|_| ())
            }
            None => Ok(()),
        }
    }

    /// Process `n` fresh bytes in the current receive buffer for connection `id` (after the
    /// connection's `kept` partial bytes, which `read_inner` put in front of them when they
    /// fit; `authenticating`: its SASL exchange is not over).
    /// Returns what is left of the buffer for the caller to keep ([`Rest::keep`]; None:
    /// nothing to do).
    fn consume(
        &mut self,
        id: ConnId,
        n: usize,
        kept: usize,
        authenticating: bool,
        messages: &mut usize,
    ) -> Result<Option<Rest>, CloseReason> {
        let rx = self.rx.current();
        let (buf, range) = if kept <= FRONT_MAX {
            (rx, 0..kept + n)
        } else {
            let max = self.bus.config().limits.max_message_size as usize;
            let Some(Some(io)) = self.host.io.get_mut(id) else {
                return Ok(None);
            };
            // Too long to copy in front of every read (a peer sending a message a few bytes
            // at a time would make that quadratic): gather it here, and make a buffer of it
            // only once its first message is complete.
            io.partial.extend_from_slice(rx.get(..n).unwrap_or(&[]));
            let incomplete = io.auth.is_none()
                && io.partial.first_chunk().is_some_and(|fixed| {
                    message::frame_len(fixed, max).is_ok_and(|len| len > io.partial.len())
                });
            if incomplete {
                return Ok(None);
            }
            let all: Rc<[u8]> = Rc::from(std::mem::take(&mut io.partial));
            let len = all.len();
            (all, 0..len)
        };
        self.process_buffer(id, buf, range, authenticating, messages)
            .map(Some)
    }

    /// Handle the messages in `buf[range]` (`process`), as many as `messages` allows, and
    /// return what is left of it for [`Rest::keep`]. `authenticating`: whether the
    /// connection may still be in its SASL exchange.
    // Inlined into both callers: as a call it cost about 30 instructions per message.
    #[inline(always)]
    fn process_buffer(
        &mut self,
        id: ConnId,
        buf: Rc<[u8]>,
        range: std::ops::Range<usize>,
        authenticating: bool,
        messages: &mut usize,
    ) -> Result<Rest, CloseReason> {
        let (used, cut) = self.process(id, &buf, range.clone(), authenticating, messages)?;
        Ok(Rest {
            buf,
            range: used..range.end,
            cut,
        })
    }

    /// Handle `id`'s held messages (`Io::held`), as many as `messages` allows. Returns
    /// whether some are still left; once none are, the start of a message that may follow
    /// them is kept as after any read.
    fn resume_held(&mut self, id: ConnId, messages: &mut usize) -> Result<bool, CloseReason> {
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return Ok(false);
        };
        let Some(Held { buf, range }) = io.held.take() else {
            return Ok(false);
        };
        // Nothing is read while messages are held, so `Io::partial` is empty here.
        let rest = self.process_buffer(id, buf, range, true, messages)?;
        let max = self.bus.config().limits.max_message_size as usize;
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return Ok(false);
        };
        Ok(rest.keep(io, max))
    }

    /// Feed bytes to SASL or the message framer; returns bytes consumed.
    /// `buf[range]` holds the bytes; returns the offset in `buf` up to which they were used.
    /// At most `*messages` messages are handled (each one counted off); the bool is true
    /// when a whole message was left for that reason.
    // Inlined into both callers (a fresh read, held messages): as a call it cost about 30
    // instructions per read.
    #[inline(always)]
    fn process(
        &mut self,
        id: ConnId,
        shared: &Rc<[u8]>,
        range: std::ops::Range<usize>,
        authenticating: bool,
        messages: &mut usize,
    ) -> Result<(usize, bool), CloseReason> {
        // What follows `pos`, advanced with it (slicing anew from `pos` cost a bounds check
        // more per message).
        let mut rest = shared.get(range.clone()).unwrap_or(&[]);
        let mut pos = range.start;
        // Authentication phase.
        if let Some(Some(io)) = self.host.io.get_mut(id).filter(|_| authenticating) {
            if let Some(auth) = io.auth.as_mut() {
                let mut out = std::mem::take(&mut self.sasl_out);
                out.clear();
                let world = &mut crate::auth_world::SystemAuthWorld::default();
                let (used, status) = auth.feed(rest, &mut out, world);
                for why in auth.take_rejections() {
                    log::info!("connection {id}: authentication rejected: {why}");
                }
                pos += used;
                rest = rest.get(used..).unwrap_or(&[]);
                if !out.is_empty() {
                    self.bus.sasl_reply(id, &out);
                }
                if out.capacity() <= 4096 {
                    self.sasl_out = out;
                }
                match status {
                    AuthStatus::NeedMore => return Ok((pos, false)),
                    AuthStatus::Failed(why) => {
                        log::info!("connection {id}: authentication failed: {why}");
                        // Like dbus-daemon, write the lines queued so far (the last
                        // REJECTED among them) before closing: best effort, never waiting.
                        self.flush(id);
                        return Err(CloseReason::AuthFailed);
                    }
                    AuthStatus::Authenticated(outcome) => {
                        if outcome.anonymous && !self.bus.config().allow_anonymous {
                            log::info!("connection {id}: anonymous connections are not allowed");
                            return Err(CloseReason::AnonymousNotAllowed);
                        }
                        if let Some(Some(io)) = self.host.io.get_mut(id) {
                            io.auth = None;
                        }
                        if !self.bus.authenticated(id, outcome.uid, outcome.unix_fd) {
                            return Err(CloseReason::RefusedByPolicy);
                        }
                    }
                }
            }
        }
        // Message phase.
        let max = self.bus.config().limits.max_message_size as usize;
        loop {
            let Some(fixed) = rest.first_chunk::<FIXED_HEADER_LEN>() else {
                return Ok((pos, false));
            };
            let len = match message::frame_len(fixed, max) {
                Ok(l) => l,
                Err(e) => {
                    log::info!("connection {id}: {e}; disconnecting");
                    return Err(CloseReason::InvalidFraming);
                }
            };
            let Some((_, after)) = rest.split_at_checked(len) else {
                return Ok((pos, false));
            };
            if *messages == 0 {
                return Ok((pos, true));
            }
            *messages -= 1;
            let msg = pos..pos + len;
            pos += len;
            rest = after;
            if !self.deliver(id, shared.clone(), msg)? {
                return Ok((pos, false));
            }
        }
    }

    /// Validate one framed message (one walk of its header), attach its fds and hand it to
    /// the bus. Returns whether the connection may go on sending (false once it is gone or
    /// being closed).
    fn deliver(
        &mut self,
        id: ConnId,
        buffer: Rc<[u8]>,
        range: std::ops::Range<usize>,
    ) -> Result<bool, CloseReason> {
        let max_fds = self.bus.config().limits.max_message_unix_fds as usize;
        let Some(Some(io)) = self.host.io.get_mut(id) else {
            return Ok(false);
        };
        // Matched by reference: the message is routed where parsing put it.
        let fds_available = io.fds.len().min(max_fds);
        let parsed =
            Message::parse_framed_cached(buffer, range, fds_available, &mut io.header_cache);
        let msg = match &parsed {
            Ok(m) => m,
            Err(WireError::BadFds) => {
                log::info!("connection {id}: message declares more fds than the {} received (limit {max_fds}); disconnecting", io.fds.len());
                return Err(CloseReason::FdCountMismatch);
            }
            Err(e) => {
                log::info!("connection {id}: invalid message: {e}; disconnecting");
                return Err(CloseReason::InvalidMessage);
            }
        };
        let declared = msg.unix_fds as usize;
        let fds = if declared == 0 {
            None
        } else {
            // Straight into the shared slice: `Drain` knows its length, so this is one
            // allocation (through a `Vec` it was two, and a free).
            Some(io.fds.drain(..declared).collect::<Rc<[OwnedFd]>>())
        };
        self.bus.dispatch(id, msg, fds, &mut self.host);
        Ok(!self.bus.is_closing(id))
    }

    /// Write as much of `id`'s queue as the socket takes.
    fn flush(&mut self, id: ConnId) {
        self.bus.flushing(id);
        loop {
            let Some(Some(io)) = self.host.io.get(id) else {
                return;
            };
            let fd = io.stream.fd();
            // Only `set_interest` changes it, and not before this pass ends.
            let want_write = io.want_write;
            let Some(pending) = self.bus.pending(id) else {
                return;
            };
            let result = {
                let mut iov: arrayvec::ArrayVec<IoSlice<'_>, { BATCH * 4 }> =
                    arrayvec::ArrayVec::new();
                let mut raw_fds: arrayvec::ArrayVec<RawFd, MAX_FDS_PER_RECV> =
                    arrayvec::ArrayVec::new();
                for (i, out) in pending.enumerate() {
                    if i >= BATCH {
                        break;
                    }
                    let with_fds = out.n_fds() > 0;
                    if with_fds {
                        // Fds go with the first byte of their message, one such message per
                        // call.
                        if i > 0 {
                            break;
                        }
                        if out.written == 0 {
                            if let Some(f) = &out.fds {
                                for fd in f.iter() {
                                    if raw_fds.try_push(fd.as_raw_fd()).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    push_slices(out, &mut iov);
                    if with_fds {
                        break;
                    }
                }
                if iov.is_empty() {
                    if let Some(Some(io)) = self.host.io.get_mut(id) {
                        io.set_interest(&self.host.registry, Token(id), false);
                    }
                    return;
                }
                sys::send_with_fds(fd, &iov, &raw_fds)
            };
            match result {
                Ok(n) => {
                    if self.bus.written(id, n) {
                        // Keep the pool's slots for the next messages, but shrink it once
                        // the bus has gone quiet (see `sweep_idle_queues`).
                        self.arm_sweep("a queue emptied");
                        // All written: no second look at the queue, nor at the connection
                        // unless it was waiting for writability (the usual write was not).
                        if want_write {
                            if let Some(Some(io)) = self.host.io.get_mut(id) {
                                io.set_interest(&self.host.registry, Token(id), false);
                            }
                        }
                        return;
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    if let Some(Some(io)) = self.host.io.get_mut(id) {
                        io.set_interest(&self.host.registry, Token(id), true);
                    }
                    // A queue that fills the socket may be a flood draining.
                    self.return_released();
                    return;
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log::debug!("connection {id}: write error {e}");
                    self.bus.close(id, CloseReason::WriteError);
                    return;
                }
            }
        }
    }

    /// Drop a connection: close its socket, tell the bus, free the slot.
    fn close(&mut self, id: ConnId, _why: CloseReason) {
        let Some(slot) = self.host.io.get_mut(id) else {
            return;
        };
        // No explicit deregister (one syscall per connection saved): closing the socket
        // removes it from the epoll set, as nothing else holds it: sockets are
        // close-on-exec, and `Command::spawn` returns only after the child's exec.
        let Some(io) = slot.take() else {
            return;
        };
        // Its deadlines are stale now (the slot is empty): let the heaps forget them.
        if io.auth_deadline.is_some() {
            self.auth_deadlines
                .retire(|t, id| auth_live(&self.host.io, t, id));
        }
        if io.fd_deadline.is_some() {
            self.fd_deadlines
                .retire(|t, id| fd_live(&self.host.io, t, id));
        }
        drop(io);
        if self.accept_starved {
            // A descriptor (and memory) came free: try accepting again.
            self.accept_starved = false;
            if !self.accept_paused {
                for idx in 0..self.host.listeners.len() {
                    self.host.listener_interest(idx, true);
                }
            }
        }
        // A receiver that goes away (or is disconnected at its queue limit) with messages
        // still queued empties its queue without any write, which is what otherwise arms
        // the sweep: arm it here too, or a flood queued for a reader that never read would
        // stay in the allocator until some unrelated queue happened to drain (issue 11).
        let had_queue = self.bus.pending(id).is_some_and(|mut q| q.next().is_some());
        self.bus.disconnect(id);
        if had_queue {
            self.arm_sweep("a connection closed with messages queued");
        }
    }

    /// Schedule the idle sweep (`sweep_idle_queues`) `SWEEP_AFTER` from now, unless one is
    /// already due; `why` goes to the debug log, so the trigger can be followed.
    // Inlined for the check: nearly every write that empties a queue (nearly every relayed
    // message's) finds the sweep already armed (as a call, 11 instructions per message).
    #[inline(always)]
    fn arm_sweep(&mut self, why: &str) {
        if self.sweep_at.is_none() {
            self.arm_sweep_in(SWEEP_AFTER, why);
        }
    }

    /// Schedule the idle sweep `after` from now, unless one is already due.
    #[cold]
    #[inline(never)]
    fn arm_sweep_in(&mut self, after: Duration, why: &str) {
        if self.sweep_at.is_none() {
            log::debug!("idle sweep armed: {why}");
            // The timer is set after the time is read, so it never fires before `sweep_at`.
            self.sweep_at = Some(self.bus.clock().now() + after);
            self.sweep_fired = false;
            if let Some(timer) = &self.sweep_timer {
                let when = Expiration::OneShot(TimeSpec::from_duration(after));
                if let Err(e) = timer.set(when, TimerSetTimeFlags::empty()) {
                    log::warn!("cannot set the idle sweep timer: {e}; polling for it instead");
                    self.drop_sweep_timer();
                }
            }
        }
    }

    /// Make the idle sweep's timerfd (`sweep_timer`); without one the sweep's time is
    /// polled like the other deadlines.
    fn start_sweep_timer(&mut self) {
        let timer = match TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        ) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("cannot create the idle sweep timer: {e}; polling for it instead");
                return;
            }
        };
        let raw = timer.as_fd().as_raw_fd();
        match self
            .poll
            .registry()
            .register(&mut SourceFd(&raw), SWEEP_TOKEN, Interest::READABLE)
        {
            Ok(()) => self.sweep_timer = Some(timer),
            Err(e) => log::warn!("cannot watch the idle sweep timer: {e}; polling for it instead"),
        }
    }

    /// Stop using the sweep timer (it could not be set): `sweep_at` is polled again.
    fn drop_sweep_timer(&mut self) {
        if let Some(timer) = self.sweep_timer.take() {
            let raw = timer.as_fd().as_raw_fd();
            let _ = self.poll.registry().deregister(&mut SourceFd(&raw));
        }
    }

    fn cleanup(&mut self) {
        for b in self.host.listeners.iter().flatten() {
            if let Some(p) = &b.cleanup {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Append the iovecs of one queued message, skipping what was already written.
#[inline]
fn push_slices<'a, const N: usize>(
    out: &'a crate::bus::connection::Outgoing,
    iov: &mut arrayvec::ArrayVec<IoSlice<'a>, N>,
) {
    use crate::bus::connection::OutHeader;
    use crate::wire::message::RelayHeader;
    // The usual case, a message not yet started with room for all its pieces: pushed
    // straight, without building its list of parts and walking it for what to skip. This
    // repeats `Outgoing::parts`'s layout (calling it here cost 63 instructions per relayed
    // message under callgrind): change both together.
    if out.written == 0 && iov.remaining_capacity() >= 4 {
        let body = out
            .data
            .get(out.body.start as usize..out.body.end as usize)
            .unwrap_or(&[]);
        match &out.header {
            OutHeader::None => {}
            OutHeader::Relay(RelayHeader::Splice {
                fixed,
                middle,
                tail,
            }) => {
                let middle = out
                    .data
                    .get(middle.start as usize..middle.end as usize)
                    .unwrap_or(&[]);
                // One capacity check and one length update for all four (pushed one by
                // one they cost about 12 instructions more).
                let _ = iov.try_extend_from_slice(&[
                    IoSlice::new(fixed),
                    IoSlice::new(middle),
                    IoSlice::new(tail),
                    IoSlice::new(body),
                ]);
                return;
            }
            OutHeader::Relay(RelayHeader::Rebuilt(h)) => {
                let _ = iov.try_extend_from_slice(&[IoSlice::new(h), IoSlice::new(body)]);
                return;
            }
        }
        let _ = iov.try_push(IoSlice::new(body));
        return;
    }
    push_written_slices(out, iov);
}

/// [`push_slices`] of a message partly written, or near the end of the batch.
#[cold]
fn push_written_slices<'a, const N: usize>(
    out: &'a crate::bus::connection::Outgoing,
    iov: &mut arrayvec::ArrayVec<IoSlice<'a>, N>,
) {
    let mut skip = out.written;
    for p in out.parts() {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        if iov.try_push(IoSlice::new(&p[skip..])).is_err() {
            return;
        }
        skip = 0;
    }
}

/// Credentials of a unix peer: SO_PEERCRED, SO_PEERGROUPS, SO_PEERSEC.
fn unix_credentials(s: &UnixStream) -> Credentials {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let mut c = Credentials::default();
    if let Ok(cred) = getsockopt(s, PeerCredentials) {
        c.uid = Some(cred.uid());
        if cred.pid() > 0 {
            c.pid = Some(cred.pid() as u32);
        }
        if let Some(mut groups) = sys::peer_groups(s) {
            groups.push(cred.gid());
            groups.sort_unstable();
            groups.dedup();
            c.gids = Some(groups);
        }
    }
    c.security_label = sys::peer_security_label(s);
    c
}

/// Spawn with the signals the reactor blocks (for its signalfd) unblocked in the child.
fn spawn_unblocked(cmd: &mut std::process::Command) -> io::Result<std::process::Child> {
    sys::prepare_child(cmd, crate::daemon::initial_fd_limit());
    cmd.spawn()
}

/// The earlier of two optional deadlines (None: no deadline).
#[inline]
fn earlier(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether `(t, id)` is connection `id`'s current authentication deadline.
fn auth_live(io: &[Option<Io>], t: Instant, id: ConnId) -> bool {
    io.get(id)
        .and_then(|o| o.as_ref())
        .is_some_and(|io| io.auth_deadline == Some(t))
}

/// Whether `(t, id)` is connection `id`'s current pending-fd deadline.
fn fd_live(io: &[Option<Io>], t: Instant, id: ConnId) -> bool {
    io.get(id)
        .and_then(|o| o.as_ref())
        .is_some_and(|io| io.fd_deadline == Some(t))
}

/// What one `recvmsg` brought.
enum Received {
    /// `n` bytes (0: end of stream) and `fds` descriptors, appended to the connection's fds.
    Data { n: usize, fds: usize },
    /// The kernel dropped descriptors that did not fit (MSG_CTRUNC).
    Truncated,
}

/// Receive into `buf`, collecting any passed fds (close-on-exec) into `fds`.
fn recv(
    fd: RawFd,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> nix::Result<Received> {
    sys::recv_with_fds(fd, buf, cmsg, fds).map(classify)
}

fn classify(r: sys::Received) -> Received {
    if r.truncated {
        return Received::Truncated;
    }
    Received::Data {
        n: r.bytes,
        fds: r.fds,
    }
}

/// Keep `rest`, the start of a message a read cut off, for the next read: in front of it
/// (`partial`), or, for a message longer than one read, as the start of its own buffer.
#[inline(always)]
fn keep_rest(io: &mut Io, rest: &[u8], max_message_size: usize) {
    if rest.is_empty() {
        // The usual read ends on a message boundary. An idle connection holds no buffer
        // (memory per connection).
        io.partial = Vec::new();
        return;
    }
    io.partial.clear();
    if !start_large(io, rest, max_message_size) {
        if io.partial.capacity() > 4 * rest.len().max(4096) {
            // Nor one much larger than what it keeps.
            io.partial = Vec::new();
        }
        io.partial.extend_from_slice(rest);
    }
}

/// Bytes left over after framing start a message longer than one read: receive the rest of
/// it straight into its own buffer. Returns false (nothing done) for anything else.
fn start_large(io: &mut Io, rest: &[u8], max_message_size: usize) -> bool {
    if io.auth.is_some() {
        return false;
    }
    let Some(fixed) = rest.first_chunk::<FIXED_HEADER_LEN>() else {
        return false;
    };
    match message::frame_len(fixed, max_message_size) {
        Ok(len) if len > READ_BUDGET && len > rest.len() => {
            io.large = Some(Box::new(LargeRead::new(len, rest)));
            io.header_first = true;
            true
        }
        _ => false,
    }
}
