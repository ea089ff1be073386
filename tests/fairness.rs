//! Fair scheduling in the reactor: a connection with a large backlog of input cannot put
//! more than one turn's budget ahead of anybody else's message: one read budget of bytes,
//! and no more than the message budget however small its messages are.
//!
//! Timing-free: the bus is stopped (SIGSTOP) while the clients write their backlogs, so that
//! when it resumes every backlog is already in its socket, and the order in which a
//! subscriber receives the relayed messages (the bus relays in the order it handles them)
//! shows how the bus interleaved its reads. No assertion is about how long anything takes.

mod common;

use common::*;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Instant;

use sluicebus::reactor::{MESSAGE_BUDGET, READ_BUDGET};

const FLOOD: &str = "org.example.Flood";

/// The process state letter of `pid` (`T`: stopped) from /proc/PID/stat.
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after = stat.rsplit_once(')').expect("comm in stat").1;
    after.trim_start().chars().next().expect("state")
}

/// The bus process stopped with SIGSTOP until this is dropped (SIGCONT).
struct Stopped(u32);

impl Stopped {
    fn new(bus: &TestBus) -> Stopped {
        let pid = bus.pid();
        // SAFETY: kill(2) on our own child process; no memory is involved.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
        assert!(
            eventually(TIMEOUT, || state(pid) == 'T'),
            "the bus did not stop"
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// Payload of the flood signals of most tests: a 1000-byte string, so that the byte budget
/// is the bound that acts (a read of it holds fewer messages than the message budget).
const BIG: usize = 1000;
/// No payload: a read budget of such signals holds ten times the message budget.
const TINY: usize = 0;
/// Signals of a small-message backlog: several read budgets' worth (a socket's buffer holds
/// tens of thousands, which a debug build relays slowly).
const TINY_BACKLOG: usize = 2000;

/// One flood signal with a `payload`-byte string: the bytes on the wire.
fn flood_signal(serial: u32, payload: usize) -> Vec<u8> {
    let payload = "x".repeat(payload);
    build_message(&MsgSpec {
        msg_type: msg_type::SIGNAL,
        serial,
        path: Some("/flood"),
        interface: Some(FLOOD),
        member: Some("Tick"),
        args: &[s(&payload)],
        ..Default::default()
    })
}

/// Write flood signals on `c` without blocking until its socket is full (the bus being
/// stopped) or, for small signals, [`TINY_BACKLOG`] of them are written. Returns how many whole signals went in, their length, and the bytes of the
/// batch that went in only in part (to be written once the bus runs again).
fn fill_backlog(c: &mut RawConn, payload: usize) -> (usize, usize, Vec<u8>) {
    let fd = c.stream.as_raw_fd();
    let big: libc::c_int = 4 << 20;
    // SAFETY: setsockopt on a socket we own with a correctly sized int (the kernel caps
    // the value at wmem_max).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &big as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    c.stream.set_nonblocking(true).expect("nonblocking");
    let mut whole = 0;
    // The serial is a fixed-size field: every signal has the same length.
    let len = flood_signal(1, payload).len();
    // Several signals per write: the socket's buffer is charged per write, and small ones
    // would fill it with few signals.
    let rest = loop {
        let batch: Vec<u8> = (0..16)
            .flat_map(|_| {
                let serial = c.next_serial();
                flood_signal(serial, payload)
            })
            .collect();
        match c.stream.write(&batch) {
            Ok(n) if n == batch.len() && payload == TINY && whole + 16 >= TINY_BACKLOG => {
                whole += 16;
                break Vec::new();
            }
            Ok(n) if n == batch.len() => whole += 16,
            Ok(n) => {
                whole += n / len;
                break batch[n..].to_vec();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Vec::new(),
            Err(e) => panic!("write backlog: {e}"),
        }
    };
    c.stream.set_nonblocking(false).expect("blocking");
    (whole, len, rest)
}

/// Most messages of `len` bytes one connection has handled in one turn: a read of the
/// budget completes those inside it plus the one whose start an earlier read left
/// buffered, and never more than the message budget.
fn per_turn(len: usize) -> usize {
    (READ_BUDGET / len + 1).min(MESSAGE_BUDGET)
}

/// The flood signals `sub` receives until `done` says it has all it waits for, as the
/// sender of each in order, plus the position of the first message satisfying `mark` among
/// them (its count of flood signals before it).
fn collect(
    sub: &mut RawConn,
    mark: impl Fn(&RawMsg) -> bool,
    done: impl Fn(&[String]) -> bool,
) -> (Vec<String>, Option<usize>) {
    let mut senders = Vec::new();
    let mut marked = None;
    let deadline = Instant::now() + 6 * TIMEOUT;
    while !done(&senders) {
        assert!(Instant::now() < deadline, "flood not relayed in time");
        let m = sub
            .recv(TIMEOUT)
            .unwrap_or_else(|| panic!("subscriber starved after {} signals", senders.len()));
        if mark(&m) && marked.is_none() {
            marked = Some(senders.len());
        }
        if m.interface.as_deref() == Some(FLOOD) && m.member.as_deref() == Some("Tick") {
            senders.push(m.sender.clone().expect("sender"));
        }
    }
    (senders, marked)
}

/// A bystander's call written after a flooder's whole backlog is handled after at most one
/// read budget of that backlog, not after all of it (the bus used to read 256 KiB, twice,
/// from a connection before it looked at anybody else).
#[test]
fn a_call_is_not_queued_behind_a_flood_backlog() {
    call_behind_backlog(BIG);
}

/// The same with signals so small that one read budget holds about ten message budgets:
/// the call goes after at most one message budget of them (32 KiB of 100-byte signals was
/// 300 messages of routing work ahead of it).
#[test]
fn a_call_is_not_queued_behind_a_read_of_small_messages() {
    call_behind_backlog(TINY);
}

fn call_behind_backlog(payload: usize) {
    if is_reference_daemon() {
        skip("fairness", "sluicebus's scheduling");
        return;
    }
    let bus = TestBus::start();
    // The subscriber of the flood is also the service the bystander calls: its incoming
    // stream shows where the bus handled the call within the flood.
    let mut sub = bus.client();
    sub.add_match(&format!("type='signal',interface='{FLOOD}'"));
    let mut flooder = bus.client();
    let mut bystander = bus.client();
    let service = sub.unique().to_string();

    let (backlog, len, rest) = {
        let _stopped = Stopped::new(&bus);
        let b = fill_backlog(&mut flooder, payload);
        bystander.call(Some(&service), "/", Some("org.example.Svc"), "Ping", &[]);
        b
    };
    flooder.send_bytes(&rest).expect("rest of the backlog");
    let bound = per_turn(len);
    assert!(
        backlog >= 4 * bound,
        "the kernel took only {backlog} signals of {len} bytes: too few to tell"
    );
    let (senders, before) = collect(
        &mut sub,
        |m| m.member.as_deref() == Some("Ping"),
        |s| s.len() >= backlog,
    );
    let before = before.expect("the bystander's call reached the service");
    assert!(
        before <= bound,
        "the call came after {before} of {backlog} flood signals of {len} bytes; at most one \
         turn's budget ({READ_BUDGET} bytes, {MESSAGE_BUDGET} messages: {bound} signals) may \
         go first"
    );
    assert!(senders.iter().all(|s| *s == flooder.unique()));
    // Nothing was lost on the way.
    flooder.barrier();
}

/// Two flooders with backlogs are served in turns of at most one read budget each, never
/// two budgets of one while the other waits; a call written after both goes after at most
/// one budget of each.
#[test]
fn flooders_take_turns_of_one_read_budget() {
    flooders_take_turns(BIG);
}

/// The same with small signals: turns of at most one message budget each.
#[test]
fn flooders_of_small_messages_take_turns_of_one_message_budget() {
    flooders_take_turns(TINY);
}

fn flooders_take_turns(payload: usize) {
    if is_reference_daemon() {
        skip("fairness", "sluicebus's scheduling");
        return;
    }
    let bus = TestBus::start();
    let mut sub = bus.client();
    sub.add_match(&format!("type='signal',interface='{FLOOD}'"));
    let mut f1 = bus.client();
    let mut f2 = bus.client();
    let mut bystander = bus.client();
    let service = sub.unique().to_string();
    let (b1, b2, len) = {
        let _stopped = Stopped::new(&bus);
        let (k1, len, rest1) = fill_backlog(&mut f1, payload);
        let (k2, _, rest2) = fill_backlog(&mut f2, payload);
        bystander.call(Some(&service), "/", Some("org.example.Svc"), "Ping", &[]);
        ((k1, rest1), (k2, rest2), len)
    };
    f1.send_bytes(&b1.1).expect("rest of backlog 1");
    f2.send_bytes(&b2.1).expect("rest of backlog 2");
    let (k1, k2) = (b1.0, b2.0);
    let bound = per_turn(len);
    assert!(
        k1.min(k2) >= 4 * bound,
        "the kernel took only {k1} and {k2} signals: too few to tell"
    );
    let (n1, n2) = (f1.unique().to_string(), f2.unique().to_string());
    let (senders, before) = collect(
        &mut sub,
        |m| m.member.as_deref() == Some("Ping"),
        |s| {
            s.iter().filter(|x| **x == n1).count() >= k1
                && s.iter().filter(|x| **x == n2).count() >= k2
        },
    );
    let before = before.expect("the bystander's call reached the service");
    assert!(
        before <= 2 * bound,
        "the call came after {before} flood signals; at most one budget of each flooder \
         ({bound} signals) may go first"
    );
    // Runs of one flooder's signals while the other still had a backlog in its socket (a
    // whole signal of it not yet handled) are at most one turn's worth.
    let mut counts = [0usize; 2];
    let mut run = 0usize;
    let mut prev = None;
    for (i, s) in senders.iter().enumerate() {
        let who = usize::from(*s == n2);
        run = if prev == Some(who) { run + 1 } else { 1 };
        prev = Some(who);
        counts[who] += 1;
        let other_waiting = counts[1 - who] + 1 < [k1, k2][1 - who];
        assert!(
            !other_waiting || run <= bound,
            "signal {i}: {run} signals in a row from flooder {} while the other had {} left \
             (one turn's budget is {bound} signals)",
            who + 1,
            [k1, k2][1 - who] - counts[1 - who]
        );
    }
}

/// A client that writes more than one read budget and hangs up at once is read to the end
/// and then disconnected: the hang-up is remembered across turns (it raises no second
/// event), so every whole message of the backlog is handled and the departure announced.
#[test]
fn a_hang_up_behind_a_backlog_is_seen() {
    let bus = TestBus::start();
    let mut watcher = bus.client();
    watcher.add_match(&format!("type='signal',interface='{FLOOD}'"));
    watcher.watch_departures();
    let mut flooder = bus.client();
    let gone = flooder.unique().to_string();
    let backlog = {
        let _stopped = Stopped::new(&bus);
        let (k, len, _rest) = fill_backlog(&mut flooder, BIG);
        assert!(
            k * len > 2 * READ_BUDGET,
            "the kernel took only {k} signals: too few to tell"
        );
        drop(flooder);
        k
    };
    let (before, name) = watcher.next_departure();
    assert_eq!(name, gone);
    let got = before
        .iter()
        .filter(|m| m.interface.as_deref() == Some(FLOOD))
        .count();
    assert_eq!(got, backlog, "whole signals handled before the departure");
    let mut bus = bus;
    bus.assert_alive();
}

/// The `se.slice` line of /proc/PID/sched (ns), where the kernel has one (EEVDF, Linux 6.6
/// and later).
fn slice_of(pid: &str) -> Option<u64> {
    slice_in(&std::fs::read_to_string(format!("/proc/{pid}/sched")).ok()?)
}

/// The value of the `se.slice` line in `sched`, text in the form of /proc/PID/sched.
fn slice_in(sched: &str) -> Option<u64> {
    let line = sched.lines().find(|l| l.starts_with("se.slice"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

/// A client's slice (this test process's, the kernel's default), or `None` where the test
/// does not apply: another bus under test, or a kernel without slices (said on stderr).
fn client_slice() -> Option<u64> {
    if is_reference_daemon() {
        return None;
    }
    let slice = slice_of("self");
    if slice.is_none() {
        skip(
            "time slice",
            "this kernel reports no slice in /proc/PID/sched",
        );
    }
    slice
}

/// A bus busy with a flood never sleeps, and the clients its writes wake are placed on its
/// CPU: with the kernel's default slice they waited for a scheduler tick there, a few ms
/// per hop. The bus asks for a longer slice than its clients have, so a client it wakes
/// (with the default, shorter slice) runs first; the slice is in /proc/PID/sched.
#[test]
fn the_bus_has_a_longer_time_slice_than_its_clients() {
    let Some(default) = client_slice() else {
        return;
    };
    let bus = TestBus::start();
    let bus_slice = slice_of(&bus.pid().to_string()).expect("the bus's slice");
    if bus_slice == default && !slice_is_settable() {
        skip(
            "time slice",
            "this kernel takes no slice from sched_setattr",
        );
        return;
    }
    assert!(
        bus_slice > default && bus_slice <= 100_000_000,
        "bus slice {bus_slice} ns, a client's {default} ns"
    );
}

/// Whether this kernel takes a `SCHED_OTHER` slice (`sched_runtime`, Linux 6.12): a thread
/// of its own asks for 2 ms and reads its slice back.
fn slice_is_settable() -> bool {
    std::thread::spawn(|| {
        let attr = libc::sched_attr {
            size: std::mem::size_of::<libc::sched_attr>() as u32,
            sched_policy: libc::SCHED_OTHER as u32,
            sched_flags: 0,
            sched_nice: 0,
            sched_priority: 0,
            sched_runtime: 2_000_000,
            sched_deadline: 0,
            sched_period: 0,
        };
        // SAFETY: the kernel reads `attr`, a live value of the size in its `size` field;
        // pid 0 is this short-lived thread.
        let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
        r == 0 && slice_of("thread-self") == Some(2_000_000)
    })
    .join()
    .expect("the probing thread")
}

/// The longer slice is the bus's own: an activated service starts with the kernel's
/// default, not the bus's (a slice set with sched_setattr survives fork and exec).
#[test]
fn an_activated_service_starts_with_the_default_time_slice() {
    let Some(default) = client_slice() else {
        return;
    };
    let dir = TempDir::new("slice-service");
    let out = dir.path().join("slice");
    let script = dir.path().join("service.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ngrep se.slice /proc/$$/sched > {}.tmp && mv {0}.tmp {0}\nexit 3\n",
            out.display()
        ),
    )
    .expect("write the service");
    write_service_file(
        dir.path(),
        "org.example.Slice",
        &format!("/bin/sh {}", script.display()),
    );
    let bus = TestBus::with_config(&session_config(&format!(
        "<servicedir>{}</servicedir>",
        dir.path().display()
    )));
    let bus_slice = slice_of(&bus.pid().to_string()).expect("the bus's slice");
    let mut c = bus.client();
    // The service exits (status 3) without taking its name; the error comes after it has
    // exited, so its file is written by then.
    c.driver("StartServiceByName", &[s("org.example.Slice"), Arg::U32(0)])
        .expect_error("org.freedesktop.DBus.Error.Spawn.ChildExited");
    let line = std::fs::read_to_string(&out).expect("the service wrote its slice");
    let slice = slice_in(&line).unwrap_or_else(|| panic!("no slice in {line:?}"));
    assert_eq!(
        slice, default,
        "the service's slice (the bus's: {bus_slice})"
    );
}
