//! `flood`: what one client flooding the bus costs everybody else.
//!
//! A flooder emits N signals (default 200000) as fast as the bus takes them, to a subscriber
//! that reads slowly (4 KiB per millisecond, about 4 MB/s); meanwhile a bystander calls an
//! unrelated echo service, one call every `--interval-us` (default 1 ms), each call's
//! latency counted from when it was due (so a stall counts for every call it held up, not
//! once). The bystander's round trips are measured before the flood (idle, `--count` calls)
//! and for as long as the flood lasts. A bus that
//! lets the flooder's input run ahead of the bystander's call (long reads per connection,
//! replies written only after all of them) shows it as a bystander latency far above idle.
//!
//! Reported: bystander p50/p99 during the flood (the summary's percentiles), idle p50/p99
//! (params `idle_p50_ns`, `idle_p99_ns`), and the flood's rate in signals/s (messages/s).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::scenarios::{self, Common, Summary};
use crate::wire::{self, Outgoing};

/// Interface of the flood signal (the subscriber's rule names it).
const FLOOD_INTERFACE: &str = "org.bench.Flood";
/// Signals encoded per write by the flooder.
const BATCH: usize = 64;
/// What the slow subscriber reads per millisecond.
const SLOW_READ: usize = 4096;

/// Most floods one run makes to reach [`FloodParams::min_samples`].
pub const MAX_BURSTS: u32 = 100;

/// Flood parameters.
#[derive(Debug, Clone)]
pub struct FloodParams {
    /// Signals the flooder emits per flood (burst).
    pub signals: u64,
    /// Time between the bystander's calls (each is due at a fixed time; see `measure`).
    pub interval: Duration,
    /// Floods made at least (each with a fresh subscriber and flooder, `gap` apart).
    pub bursts: u32,
    /// More floods are made (up to [`MAX_BURSTS`]) until the bystander made this many calls
    /// during floods: a 200k flood on a fast bus lasts ~100 calls, so its p99 would be its
    /// single worst call.
    pub min_samples: u64,
    /// Idle time between floods: long enough for the bus to drop the last subscriber's queue
    /// and run its idle sweep (2 s after), so that every flood starts from a bus at rest.
    pub gap: Duration,
    /// File to write every call made during a flood to, one line each: flood number, when
    /// the call was due (CLOCK_MONOTONIC, ns, as `perf` timestamps), latency (ns).
    pub calls_log: Option<PathBuf>,
}

impl FloodParams {
    /// `signals` per flood, one flood, calls every `interval`.
    pub fn new(signals: u64, interval: Duration) -> FloodParams {
        FloodParams {
            signals,
            interval,
            bursts: 1,
            min_samples: 0,
            gap: Duration::from_millis(2500),
            calls_log: None,
        }
    }

    /// Whether another flood is due after `done` floods that gave `samples` calls.
    pub fn another_burst(&self, done: u32, samples: u64) -> bool {
        done < self.bursts.max(1) || (samples < self.min_samples && done < MAX_BURSTS)
    }
}

/// Idle and flood results.
pub struct FloodResult {
    /// Bystander round trips during the floods; messages/s is the floods' signals/s.
    pub flood: Summary,
    /// Bystander round trips before the first flood.
    pub idle: Summary,
    /// Floods made.
    pub bursts: u32,
}

impl FloodResult {
    /// Human-readable: both tables.
    pub fn table(&self) -> String {
        format!(
            "{}{}",
            self.idle.table().replacen("flood", "flood (idle)", 1),
            self.flood.table().replacen("flood", "flood (during)", 1)
        )
    }
}

/// Reads `conn`'s socket slowly, without parsing, until `stop`.
fn slow_reader(conn: Conn, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; SLOW_READ];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is valid for `buf.len()` bytes; the fd belongs to `conn`, alive here.
        let n = unsafe {
            libc::recv(
                conn.raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

/// `n` flood signals with `payload` bytes each, encoded ahead (so that the flooder's writes
/// cost it almost nothing and the bus, not the flooder, sets the pace), in writes of
/// `BATCH` signals.
fn encode_flood(conn: &mut Conn, n: u64, payload: usize) -> Vec<Vec<u8>> {
    encode_flood_to(conn, n, payload, None)
}

/// [`encode_flood`], or with `to` a flood of method calls to `to` that expect no reply
/// (`NO_REPLY_EXPECTED`), same interface and member.
fn encode_flood_to(conn: &mut Conn, n: u64, payload: usize, to: Option<&str>) -> Vec<Vec<u8>> {
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &vec![0x5a; payload]);
    let sig = Outgoing {
        msg_type: wire::SIGNAL,
        path: scenarios::SIG_PATH,
        interface: FLOOD_INTERFACE,
        member: scenarios::SIG_MEMBER,
        signature: "ay",
        ..Outgoing::default()
    };
    let sig = match to {
        Some(dest) => Outgoing {
            msg_type: wire::METHOD_CALL,
            flags: wire::NO_REPLY_EXPECTED,
            destination: dest,
            ..sig
        },
        None => sig,
    };
    encode_batches(conn, n, &sig, &body, BATCH)
}

/// `n` copies of `m` with `body`, each with the next serial of `conn`, encoded ahead in
/// writes of `batch` messages (so the bus, not the encoder, sets a flood's pace).
pub(crate) fn encode_batches(
    conn: &mut Conn,
    n: u64,
    m: &Outgoing<'_>,
    body: &[u8],
    batch: usize,
) -> Vec<Vec<u8>> {
    let mut writes = Vec::new();
    let mut done = 0;
    while done < n {
        let mut buf = Vec::new();
        let k = (n - done).min(batch as u64);
        for _ in 0..k {
            let serial = conn.serial();
            wire::encode(&mut buf, &Outgoing { serial, ..*m }, body);
        }
        writes.push(buf);
        done += k;
    }
    writes
}

/// Writes the encoded flood, then waits until the bus has handled all of it.
fn flooder(mut conn: Conn, writes: Vec<Vec<u8>>, sent: Arc<AtomicU64>) -> io::Result<()> {
    for (i, buf) in writes.iter().enumerate() {
        conn.send_raw(buf)?;
        sent.store(((i + 1) * BATCH) as u64, Ordering::Relaxed);
    }
    // Everything the bus read is relayed once this round trip returns.
    let serial = conn.call_driver("GetId", None)?;
    conn.recv_reply(serial).map(drop)
}

/// CLOCK_MONOTONIC now, ns (the clock `Instant` reads on Linux, and `perf -k mono`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn named<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<thread::JoinHandle<T>> {
    thread::Builder::new().name(name.to_owned()).spawn(f)
}

/// Runs the scenario (see the module documentation).
pub fn flood(c: &Common, p: &FloodParams) -> io::Result<FloodResult> {
    let echo = Conn::connect(&c.address)?;
    let echo_name = echo.unique_name.clone();
    let mut client = Conn::connect(&c.address)?;
    // Named, so that a scheduler trace (`perf sched timehist`) tells the threads apart.
    let echo_thread = named("flood-echo", move || scenarios::echo_loop(echo))?;
    let result = measure(c, p, &mut client, &echo_name);
    let quit = scenarios::send_quit(&mut client, &echo_name);
    let r = result?;
    quit?;
    match echo_thread.join() {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::other("echo thread panicked")),
    }
    Ok(r)
}

fn measure(
    c: &Common,
    p: &FloodParams,
    client: &mut Conn,
    echo_name: &str,
) -> io::Result<FloodResult> {
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &vec![0x5a; c.payload]);
    let call = scenarios::ping(echo_name, "ay");
    // A call due at `due`: sent then (or at once if the previous one overran), its latency
    // counted from `due`. Calls back to back would sample a stalled bus once per stall and an
    // idle one thousands of times; paced calls sample every moment alike (a stall of 20 ms
    // counts as the 20 calls that were due during it: no coordinated omission).
    let paced = |client: &mut Conn, due: Instant| -> io::Result<Duration> {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let serial = client.send(call, &body)?;
        client.recv_reply(serial)?;
        Ok(due.elapsed())
    };
    // Sleeps as short as the interval need the default 50 µs timer slack gone.
    // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let interval = p.interval;
    for _ in 0..c.warmup {
        paced(client, Instant::now())?;
    }
    let mut idle = scenarios::histogram()?;
    let t_idle = Instant::now();
    for k in 0..c.count {
        scenarios::record(&mut idle, paced(client, t_idle + interval * k as u32)?);
    }
    let idle_wall = t_idle.elapsed();
    let (n, payload) = (p.signals, c.payload);
    let mut during = scenarios::histogram()?;
    let mut flood_wall = Duration::ZERO;
    let mut log = Vec::new();
    let (mono0, inst0) = (monotonic_ns(), Instant::now());
    let mut bursts = 0u32;
    while p.another_burst(bursts, during.len()) {
        if bursts > 0 {
            thread::sleep(p.gap);
        }
        // A fresh subscriber and flooder each time: every flood meets the bus as the first
        // did (the last subscriber's queue is dropped in the gap).
        let mut sub = Conn::connect(&c.address)?;
        sub.add_matches(&[format!("type='signal',interface='{FLOOD_INTERFACE}'")], 1)?;
        let mut flood_conn = Conn::connect(&c.address)?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = stop.clone();
            named("flood-reader", move || slow_reader(sub, stop))?
        };
        let writes = encode_flood(&mut flood_conn, n, payload);
        let sent = Arc::new(AtomicU64::new(0));
        let label = format!("flood {}", bursts + 1);
        let progress = scenarios::Progress::new(c.progress, label, n);
        let flood_start = Instant::now();
        let flooder = {
            let sent = sent.clone();
            named("flood-flooder", move || flooder(flood_conn, writes, sent))?
        };
        let mut last = 0;
        // At least one call, however fast the flood goes.
        let mut calls = Ok(());
        for k in 0u32.. {
            let due = flood_start + interval * k;
            let d = match paced(client, due) {
                Ok(d) => d,
                Err(e) => {
                    calls = Err(e);
                    break;
                }
            };
            scenarios::record(&mut during, d);
            if p.calls_log.is_some() {
                let at = mono0 + due.saturating_duration_since(inst0).as_nanos() as u64;
                log.push((bursts + 1, at, d.as_nanos() as u64));
            }
            if flooder.is_finished() {
                break;
            }
            let s = sent.load(Ordering::Relaxed) / (n / 10).max(1) * (n / 10).max(1);
            if s != last {
                progress.tick(s);
                last = s;
            }
        }
        flood_wall += flood_start.elapsed();
        let flooded = flooder.join();
        stop.store(true, Ordering::Relaxed);
        let _ = reader.join();
        calls?;
        match flooded {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("flooder thread panicked")),
        }
        bursts += 1;
    }
    if let Some(path) = &p.calls_log {
        let mut s = String::from("# flood due_monotonic_ns latency_ns\n");
        for (b, at, d) in &log {
            s.push_str(&format!("{b} {at} {d}\n"));
        }
        std::fs::write(path, s)?;
    }
    let ns = |h: &hdrhistogram::Histogram<u64>, q| h.value_at_quantile(q);
    let params = vec![
        ("signals", n),
        ("payload", payload as u64),
        ("interval_us", interval.as_micros() as u64),
        ("idle_p50_ns", ns(&idle, 0.5)),
        ("idle_p99_ns", ns(&idle, 0.99)),
        ("bursts", u64::from(bursts)),
    ];
    let mut flood = Summary::from_hist("flood", params.clone(), &during, flood_wall, 1);
    // The rate that matters here is the floods', not the bystander's.
    flood.deliveries_per_sec = (n * u64::from(bursts)) as f64 / flood_wall.as_secs_f64().max(1e-9);
    let idle = Summary::from_hist("flood", params, &idle, idle_wall, 1);
    Ok(FloodResult {
        flood,
        idle,
        bursts,
    })
}

/// What a `memory-flood` subscriber does once the flood is queued for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Starts reading and drains its queue.
    Read,
    /// Disconnects (the bus drops its queue).
    Disconnect,
}

/// What a `memory-flood` floods with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Signals, to a subscriber of their interface.
    Signals,
    /// Method calls that expect no reply, to a service (by unique name).
    Calls,
}

/// `memory-flood` parameters.
#[derive(Debug, Clone)]
pub struct MemoryFloodParams {
    /// Messages in the flood.
    pub signals: u64,
    /// Signals or calls.
    pub kind: Kind,
    /// What the receiver does once everything is queued.
    pub then: Then,
    /// How long after draining the last VmRSS is read.
    pub settle: Duration,
    /// How long the receiver waits, with the bus at rest, before it reads or disconnects.
    pub hold: Duration,
    /// Whether a third client makes a round trip after the drain (traffic, as on a live bus).
    pub traffic_after: bool,
}

/// `memory-flood` results, VmRSS of the bus in KiB.
pub struct MemoryFlood {
    /// Signals or calls.
    pub kind: Kind,
    /// Messages sent.
    pub signals: u64,
    /// Messages the receiver got (fewer when the bus disconnected it at its limit, or
    /// refused calls past it).
    pub received: u64,
    /// Before the flood, every client connected.
    pub idle_kib: u64,
    /// The bus's high-water mark (VmHWM) at the end of the flood.
    pub peak_kib: u64,
    /// `settle` after the queue drained (or the subscriber left).
    pub after_kib: u64,
    /// When VmRSS first came within 10 MiB of idle after draining, if it did.
    pub back_after: Option<Duration>,
    /// How long after draining `after_kib` was read.
    pub settle: Duration,
}

impl MemoryFlood {
    /// Human-readable: one line per figure.
    pub fn table(&self) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        format!(
            "memory-flood: {} {}, {} received by the {}\n  VmRSS idle  {:>8.1} MiB\n  \
             VmHWM peak  {:>8.1} MiB\n  VmRSS after {:>8.1} MiB ({:.1} s after draining; within \
             10 MiB of idle after {})\n",
            self.signals,
            match self.kind {
                Kind::Signals => "signals",
                Kind::Calls => "no-reply calls",
            },
            self.received,
            match self.kind {
                Kind::Signals => "subscriber",
                Kind::Calls => "service",
            },
            mib(self.idle_kib),
            mib(self.peak_kib),
            mib(self.after_kib),
            self.settle.as_secs_f64(),
            self.back_after
                .map_or("never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        )
    }
}

pub(crate) fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} for pid {pid}")))
}

/// `memory-flood`: the bus's memory through a flood of `signals` small signals to a
/// subscriber that does not read, then reads (or disconnects): VmRSS idle, the peak, and
/// `settle` after the queue drained (the bus's idle sweep runs 2 s after queues empty).
///
/// With [`Kind::Calls`] the flood is method calls that expect no reply, to a service (`sub`)
/// that does not read, by its unique name; the rest is the same.
pub fn memory_flood(c: &Common, pid: u32, p: &MemoryFloodParams) -> io::Result<MemoryFlood> {
    let (signals, kind, then, settle) = (p.signals, p.kind, p.then, p.settle);
    let mut sub = Conn::connect(&c.address)?;
    if kind == Kind::Signals {
        sub.add_matches(&[format!("type='signal',interface='{FLOOD_INTERFACE}'")], 1)?;
    }
    let mut flood_conn = Conn::connect(&c.address)?;
    let mut other = Conn::connect(&c.address)?;
    let to = (kind == Kind::Calls).then(|| sub.unique_name.clone());
    let writes = encode_flood_to(&mut flood_conn, signals, c.payload, to.as_deref());
    let idle_kib = status_kib(pid, "VmRSS:")?;
    flooder(flood_conn, writes, Arc::new(AtomicU64::new(0)))?;
    thread::sleep(p.hold);
    let peak_kib = status_kib(pid, "VmHWM:")?;
    let mut received = 0;
    match then {
        Then::Read => {
            // Everything queued for `sub` comes before this reply (or the bus hung up on it,
            // at its max_outgoing_bytes: then the call or a read fails).
            if let Ok(serial) = sub.call_driver("GetId", None) {
                loop {
                    match sub.recv() {
                        Ok(h) if h.reply_serial == serial => break,
                        Ok(h) => {
                            received += u64::from(
                                h.interface == FLOOD_INTERFACE
                                    && matches!(h.msg_type, wire::SIGNAL | wire::METHOD_CALL),
                            )
                        }
                        Err(_) => break,
                    }
                }
            }
        }
        Then::Disconnect => drop(sub),
    }
    // Some traffic after the drain, as on any live bus (a sweep is armed when a queue
    // empties after a write).
    if p.traffic_after {
        let serial = other.call_driver("GetId", None)?;
        other.recv_reply(serial)?;
    }
    let drained = Instant::now();
    let mut back_after = None;
    let mut after_kib;
    loop {
        after_kib = status_kib(pid, "VmRSS:")?;
        if back_after.is_none() && after_kib <= idle_kib + 10 * 1024 {
            back_after = Some(drained.elapsed());
        }
        if drained.elapsed() >= settle {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(MemoryFlood {
        kind,
        signals,
        received,
        idle_kib,
        peak_kib,
        after_kib,
        back_after,
        settle,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_go_on_until_enough_samples_within_the_cap() {
        let mut p = FloodParams::new(200, Duration::from_millis(1));
        // One flood by default, whatever it gave.
        assert!(p.another_burst(0, 0));
        assert!(!p.another_burst(1, 0));
        p.bursts = 3;
        assert!(p.another_burst(2, 10_000));
        assert!(!p.another_burst(3, 0));
        p.bursts = 1;
        p.min_samples = 1000;
        assert!(p.another_burst(1, 999));
        assert!(!p.another_burst(1, 1000));
        assert!(p.another_burst(MAX_BURSTS - 1, 0));
        assert!(!p.another_burst(MAX_BURSTS, 0));
    }
}
