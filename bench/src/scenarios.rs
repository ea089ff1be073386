//! The measured scenarios: `fanout` (signal delivery to K subscribers with R idle match rules
//! installed) and `rtt` (method call round trip through the bus to an echo service).
//!
//! Both are closed loops: one message in flight at a time, so a sample is pure latency, and the
//! reported rate is simply the inverse of the mean latency (not a saturation throughput).

use std::io::{self, Write};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::wire::{self, Outgoing};

/// Interface, member and path of the benchmark signal.
pub const SIG_INTERFACE: &str = "org.bench.Sig";
/// Member of the benchmark signal.
pub const SIG_MEMBER: &str = "Tick";
/// Object path the benchmark signal is emitted from (no installed rule names it).
pub const SIG_PATH: &str = "/org/bench/Emitter";
/// The rule every subscriber installs.
pub const MATCHING_RULE: &str = "type='signal',interface='org.bench.Sig',member='Tick'";

/// Parameters shared by all scenarios.
#[derive(Debug, Clone)]
pub struct Common {
    /// Bus address.
    pub address: String,
    /// Measured iterations.
    pub count: u64,
    /// Unmeasured iterations first (caches, allocator, CPU frequency).
    pub warmup: u64,
    /// Payload bytes carried as `ay`.
    pub payload: usize,
    /// Print progress on stderr.
    pub progress: bool,
}

/// The non-matching rule number `i`: same interface as the signal, different path, so a bus
/// that indexes only by interface still has to look at every one of them.
pub fn idle_rule(i: usize) -> String {
    format!("type='signal',interface='{SIG_INTERFACE}',path='/org/bench/Foo{i}'")
}

/// Latency summary of one run, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Scenario name.
    pub scenario: &'static str,
    /// Key/value description of the parameters (for the report).
    pub params: Vec<(&'static str, u64)>,
    /// Measured samples.
    pub samples: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Mean.
    pub mean: f64,
    /// Completed iterations per second of wall time.
    pub per_sec: f64,
    /// Messages delivered to receivers per second (fanout: iterations × K).
    pub deliveries_per_sec: f64,
    /// Payload bytes moved per second (`large`: 2 × size × calls/s; 0 elsewhere).
    pub bytes_per_sec: f64,
}

impl Summary {
    pub(crate) fn from_hist(
        scenario: &'static str,
        params: Vec<(&'static str, u64)>,
        h: &Histogram<u64>,
        wall: Duration,
        fan: u64,
    ) -> Summary {
        let us = |ns: u64| ns as f64 / 1000.0;
        let secs = wall.as_secs_f64().max(1e-9);
        Summary {
            scenario,
            params,
            samples: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
            per_sec: h.len() as f64 / secs,
            deliveries_per_sec: (h.len() * fan) as f64 / secs,
            bytes_per_sec: 0.0,
        }
    }

    /// Human-readable table.
    pub fn table(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{} ({})\n  samples      {:>12}\n  p50    [µs]  {:>12.1}\n  p90    [µs]  {:>12.1}\n  \
             p99    [µs]  {:>12.1}\n  p99.9  [µs]  {:>12.1}\n  max    [µs]  {:>12.1}\n  \
             mean   [µs]  {:>12.1}\n  iterations/s {:>12.0}\n  messages/s   {:>12.0}\n  \
             bytes/s      {:>12.0}\n",
            self.scenario,
            params.join(" "),
            self.samples,
            self.p50,
            self.p90,
            self.p99,
            self.p999,
            self.max,
            self.mean,
            self.per_sec,
            self.deliveries_per_sec,
            self.bytes_per_sec
        )
    }

    /// One JSON object (hand-written: every value is a number or a fixed identifier).
    pub fn json(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!(
            "{{\"scenario\":\"{}\",\"params\":{{{}}},\"samples\":{},\"unit\":\"us\",\"p50\":{:.3},\
             \"p90\":{:.3},\"p99\":{:.3},\"p99_9\":{:.3},\"max\":{:.3},\"mean\":{:.3},\
             \"iterations_per_sec\":{:.1},\"messages_per_sec\":{:.1},\"bytes_per_sec\":{:.1}}}",
            self.scenario,
            params.join(","),
            self.samples,
            self.p50,
            self.p90,
            self.p99,
            self.p999,
            self.max,
            self.mean,
            self.per_sec,
            self.deliveries_per_sec,
            self.bytes_per_sec
        )
    }
}

/// The median (NaN for no values); sorts `v`.
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `v` with `prec` decimals, or `n/a` when there is no value (a failed or skipped run).
pub(crate) fn fixed(v: f64, prec: usize) -> String {
    if v.is_finite() {
        format!("{v:.prec$}")
    } else {
        "n/a".to_owned()
    }
}

pub(crate) fn histogram() -> io::Result<Histogram<u64>> {
    // 1 ns .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| io::Error::other(e.to_string()))
}

pub(crate) fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = (d.as_nanos() as u64).clamp(1, 60_000_000_000);
    // In bounds by the clamp above, so this cannot fail.
    let _ = h.record(ns);
}

/// Prints progress roughly every 10 % (and at the end) when enabled.
pub(crate) struct Progress {
    on: bool,
    label: String,
    total: u64,
    step: u64,
}

impl Progress {
    pub(crate) fn new(on: bool, label: String, total: u64) -> Progress {
        Progress {
            on,
            label,
            total,
            step: (total / 10).max(1),
        }
    }

    pub(crate) fn tick(&self, done: u64) {
        if self.on && (done % self.step == 0 || done == self.total) {
            eprintln!("[{}] {done}/{}", self.label, self.total);
        }
    }
}

/// Fanout parameters.
#[derive(Debug, Clone)]
pub struct FanoutParams {
    /// Number of subscribers (K), each with [`MATCHING_RULE`].
    pub subscribers: usize,
    /// Number of non-matching rules (R) installed on extra connections.
    pub rules: usize,
    /// Rules per extra connection.
    pub rules_per_conn: usize,
}

/// Emits one signal at a time and measures until every subscriber has received it.
///
/// Subscribers are read one after another with blocking reads in this thread: the sample ends
/// when the last of them has its copy, which is the "delivered to all" time (copies that
/// arrived earlier wait in their socket buffer). No extra threads compete for the 2 CPUs.
pub fn fanout(c: &Common, p: &FanoutParams) -> io::Result<Summary> {
    if p.subscribers == 0 {
        return Err(io::Error::other("--subscribers must be at least 1"));
    }
    let setup = Instant::now();
    let mut emitter = Conn::connect(&c.address)?;
    let mut subs = Vec::with_capacity(p.subscribers);
    for _ in 0..p.subscribers {
        let mut s = Conn::connect(&c.address)?;
        s.add_matches(&[MATCHING_RULE.to_owned()], 1)?;
        subs.push(s);
    }
    // Idle rules live on their own connections: they must cost nothing, so they are never read.
    let per = p.rules_per_conn.max(1);
    let mut idle = Vec::new();
    let mut next = 0;
    while next < p.rules {
        let n = per.min(p.rules - next);
        let rules: Vec<String> = (next..next + n).map(idle_rule).collect();
        let mut conn = Conn::connect(&c.address)?;
        conn.add_matches(&rules, 256)?;
        idle.push(conn);
        next += n;
        if c.progress {
            eprintln!("[fanout] installed {next}/{} idle rules", p.rules);
        }
    }
    if c.progress {
        eprintln!("[fanout] setup took {:.2} s", setup.elapsed().as_secs_f64());
    }
    let s = emit_loop(
        c,
        format!("fanout K={} R={}", p.subscribers, p.rules),
        &mut emitter,
        &mut subs,
    )?;
    drop(idle);
    Ok(Summary {
        params: vec![
            ("subscribers", p.subscribers as u64),
            ("rules", p.rules as u64),
            ("payload", c.payload as u64),
        ],
        ..s
    })
}

/// The measured loop of `fanout` (also used by `filtered`): `emitter` emits
/// `org.bench.Sig.Tick` one at a time, each sample lasting until every one of `subs` (already
/// subscribed) has read its copy. The summary's params name only the subscribers.
pub(crate) fn emit_loop(
    c: &Common,
    label: String,
    emitter: &mut Conn,
    subs: &mut [Conn],
) -> io::Result<Summary> {
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &vec![0x5a; c.payload]);
    let sig = Outgoing {
        msg_type: wire::SIGNAL,
        path: SIG_PATH,
        interface: SIG_INTERFACE,
        member: SIG_MEMBER,
        signature: "ay",
        ..Outgoing::default()
    };
    let mut hist = histogram()?;
    let total = c.warmup + c.count;
    let progress = Progress::new(c.progress, label, total);
    let mut measured_start = Instant::now();
    let mut waiting: Vec<usize> = Vec::with_capacity(subs.len());
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(subs.len());
    for i in 0..total {
        if i == c.warmup {
            measured_start = Instant::now();
        }
        let t0 = Instant::now();
        let serial = emitter.send(sig, &body)?;
        collect_copies(subs, serial, &mut waiting, &mut pfds)?;
        let dt = t0.elapsed();
        if i >= c.warmup {
            record(&mut hist, dt);
        }
        progress.tick(i + 1);
    }
    let wall = measured_start.elapsed();
    Ok(Summary::from_hist(
        "fanout",
        vec![("subscribers", subs.len() as u64)],
        &hist,
        wall,
        subs.len() as u64,
    ))
}

/// Reads every subscriber's copy of signal `serial`, in whatever order the copies arrive: one
/// thread polls all subscriber sockets and serves each as it becomes readable, so the result
/// does not depend on the order in which a bus writes the copies (a fixed reading order would
/// favour a bus that happens to write in the opposite order, waking the reader only once).
fn collect_copies(
    subs: &mut [Conn],
    serial: u32,
    waiting: &mut Vec<usize>,
    pfds: &mut Vec<libc::pollfd>,
) -> io::Result<()> {
    waiting.clear();
    waiting.extend(0..subs.len());
    while !waiting.is_empty() {
        let buffered = waiting.iter().any(|&k| subs[k].has_message());
        pfds.clear();
        pfds.extend(waiting.iter().map(|&k| libc::pollfd {
            fd: subs[k].raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        // Block only when no copy is already buffered; 30 s like the sockets' read timeout.
        let timeout = if buffered { 0 } else { 30_000 };
        // SAFETY: `pfds` is a valid, initialised array of `pfds.len()` pollfd structs.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 && !buffered {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "fanout: a subscriber got no copy within 30 s",
            ));
        }
        let mut i = 0;
        while i < waiting.len() {
            let k = waiting[i];
            let ready = pfds[i].revents != 0 || subs[k].has_message();
            if ready && got_copy(&mut subs[k], serial)? {
                waiting.swap_remove(i);
                pfds.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
    Ok(())
}

/// Reads what one readable subscriber has (at least one message); true once the copy of
/// `serial` was among it.
fn got_copy(s: &mut Conn, serial: u32) -> io::Result<bool> {
    loop {
        let h = s.recv()?;
        if h.msg_type == wire::SIGNAL && h.serial == serial && h.member == SIG_MEMBER {
            return Ok(true);
        }
        if !s.has_message() {
            return Ok(false);
        }
    }
}

/// Answers `Ping` calls with the call's body until `Quit` arrives or the bus hangs up.
pub(crate) fn echo_loop(mut conn: Conn) -> io::Result<()> {
    let mut out = Vec::new();
    loop {
        let h = conn.recv()?;
        if h.msg_type != wire::METHOD_CALL || h.interface != ECHO_INTERFACE {
            continue;
        }
        if h.member == "Quit" {
            return Ok(());
        }
        out.clear();
        let reply = Outgoing {
            msg_type: wire::METHOD_RETURN,
            reply_serial: h.serial,
            destination: h.sender,
            signature: h.signature,
            ..Outgoing::default()
        };
        // `h` borrows the connection's buffer, so encode first with serial 0 and patch it in.
        wire::encode(&mut out, &reply, h.body);
        let serial = conn.serial();
        out[8..12].copy_from_slice(&serial.to_le_bytes());
        conn.send_raw(&out)?;
    }
}

/// Round-trip method calls: client → bus → echo service (own thread) → bus → client.
pub fn rtt(c: &Common) -> io::Result<Summary> {
    rtt_hist(c).map(|(s, _)| s)
}

/// [`rtt`], also returning the latency histogram (compare merges them for the CDF plot).
pub fn rtt_hist(c: &Common) -> io::Result<(Summary, Histogram<u64>)> {
    let echo = Conn::connect(&c.address)?;
    let client = Conn::connect(&c.address)?;
    round_trips(c, "rtt", client, echo)
}

/// The measured loop shared by `rtt`, `large` and `baseline`: `client` calls the echo service
/// on `echo` (run in its own thread) one call at a time.
pub(crate) fn round_trips(
    c: &Common,
    scenario: &'static str,
    mut client: Conn,
    echo: Conn,
) -> io::Result<(Summary, Histogram<u64>)> {
    let echo_name = echo.unique_name.clone();
    let echo_thread = thread::spawn(move || echo_loop(echo));
    let measured = call_loop(c, scenario, &mut client, &echo_name);
    // Stop the echo service even when the loop failed, so that its thread ends.
    let quit = send_quit(&mut client, &echo_name);
    let (s, hist) = measured?;
    quit?;
    match echo_thread.join() {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::other("echo thread panicked")),
    }
    Ok((s, hist))
}

/// Object path of the echo service's object.
pub const ECHO_PATH: &str = "/org/bench/Echo";
/// Interface of the echo service (members `Ping` and `Quit`).
pub const ECHO_INTERFACE: &str = "org.bench.Echo";
/// The echoed method.
pub const ECHO_MEMBER: &str = "Ping";

/// The echo call every echo scenario sends, to the echo service at `dest`.
pub(crate) fn ping<'a>(dest: &'a str, signature: &'a str) -> Outgoing<'a> {
    Outgoing {
        msg_type: wire::METHOD_CALL,
        path: ECHO_PATH,
        interface: ECHO_INTERFACE,
        member: ECHO_MEMBER,
        destination: dest,
        signature,
        ..Outgoing::default()
    }
}

/// Tells the echo service at `dest` to stop (no reply expected).
pub(crate) fn send_quit(client: &mut Conn, dest: &str) -> io::Result<()> {
    let quit = Outgoing {
        member: "Quit",
        flags: wire::NO_REPLY_EXPECTED,
        ..ping(dest, "")
    };
    client.send(quit, &[]).map(drop)
}

/// The measured loop of `rtt` (also used by `filtered`): `client` calls `Ping` on the echo
/// service at `dest` one call at a time, `warmup` + `count` calls.
pub(crate) fn call_loop(
    c: &Common,
    scenario: &'static str,
    client: &mut Conn,
    dest: &str,
) -> io::Result<(Summary, Histogram<u64>)> {
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &vec![0x5a; c.payload]);
    let call = ping(dest, "ay");
    let mut hist = histogram()?;
    let total = c.warmup + c.count;
    let progress = Progress::new(c.progress, scenario.to_owned(), total);
    let mut measured_start = Instant::now();
    for i in 0..total {
        if i == c.warmup {
            measured_start = Instant::now();
        }
        let t0 = Instant::now();
        let serial = client.send(call, &body)?;
        client.recv_reply(serial)?;
        let dt = t0.elapsed();
        if i >= c.warmup {
            record(&mut hist, dt);
        }
        progress.tick(i + 1);
    }
    let wall = measured_start.elapsed();
    let mut s = Summary::from_hist(
        scenario,
        vec![("payload", c.payload as u64)],
        &hist,
        wall,
        1,
    );
    // Each round trip carries the payload twice (call and reply).
    s.bytes_per_sec = s.per_sec * 2.0 * c.payload as f64;
    Ok((s, hist))
}

/// Writes `s` to stdout as a table or JSON line.
pub fn print(s: &Summary, json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    if json {
        writeln!(out, "{}", s.json())
    } else {
        write!(out, "{}", s.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_percentiles_and_json() {
        let mut h = histogram().unwrap();
        for us in 1..=1000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        record(&mut h, Duration::ZERO); // clamped to 1 ns, still counted
        let s = Summary::from_hist("rtt", vec![("payload", 0)], &h, Duration::from_secs(1), 2);
        assert_eq!(s.samples, 1001);
        assert!((s.p50 - 500.0).abs() < 1.0, "{}", s.p50);
        assert!((s.p99 - 990.0).abs() < 2.0, "{}", s.p99);
        assert!((s.max - 1000.0).abs() < 1.0, "{}", s.max);
        assert!((s.deliveries_per_sec - 2002.0).abs() < 1e-6);
        let j = s.json();
        assert!(j.starts_with("{\"scenario\":\"rtt\",\"params\":{\"payload\":0},\"samples\":1001,"));
        assert!(j.ends_with('}'));
        assert!(s.table().contains("p99.9"));
    }

    #[test]
    fn copies_are_collected_in_any_order() {
        use std::os::unix::net::UnixStream;
        let mut subs = Vec::new();
        let mut senders = Vec::new();
        for _ in 0..3 {
            let (a, b) = UnixStream::pair().unwrap();
            a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            subs.push(Conn::from_stream(a));
            senders.push(Conn::from_stream(b));
        }
        let tick = Outgoing {
            msg_type: wire::SIGNAL,
            path: SIG_PATH,
            interface: SIG_INTERFACE,
            member: SIG_MEMBER,
            ..Outgoing::default()
        };
        let other = Outgoing {
            member: "Other",
            ..tick
        };
        // Every sender: an unrelated signal (serial 1), then the copy (serial 2), the last
        // subscriber first and with pauses, so the reader has to wait in poll.
        let writer = std::thread::spawn(move || {
            for s in senders.iter_mut().rev() {
                s.send(other, &[]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
                assert_eq!(s.send(tick, &[]).unwrap(), 2);
            }
            senders
        });
        let (mut waiting, mut pfds) = (Vec::new(), Vec::new());
        collect_copies(&mut subs, 2, &mut waiting, &mut pfds).unwrap();
        assert!(waiting.is_empty());
        let mut senders = writer.join().unwrap();
        // Nothing was left half-read: a second round, written in order, is found too.
        for s in senders.iter_mut() {
            assert_eq!(s.send(tick, &[]).unwrap(), 3);
        }
        collect_copies(&mut subs, 3, &mut waiting, &mut pfds).unwrap();
        assert!(waiting.is_empty());
    }

    #[test]
    fn idle_rules_are_distinct_and_do_not_match_the_signal_path() {
        assert_ne!(idle_rule(1), idle_rule(2));
        assert!(idle_rule(7).contains("path='/org/bench/Foo7'"));
        assert!(!idle_rule(7).contains(SIG_PATH));
    }
}
