//! Throughput, size, connection, fd-passing, memory and no-bus baseline scenarios.
//!
//! `pipelined` is the one open-loop-ish scenario: each client keeps M calls in flight, so its
//! rate is a saturation throughput, not the inverse of a latency. The others are closed loops
//! like `rtt`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::scenarios::{
    self, histogram, ping, record, send_quit as quit, Common, Progress, Summary, ECHO_INTERFACE,
};
use crate::wire::{self, Outgoing};

fn join<T>(t: thread::JoinHandle<io::Result<T>>, what: &str) -> io::Result<T> {
    t.join()
        .map_err(|_| io::Error::other(format!("{what} thread panicked")))?
}

/// `pipelined` parameters.
#[derive(Debug, Clone)]
pub struct PipelineParams {
    /// Client/echo-service pairs (N), each pair on its own two connections and threads.
    pub pairs: usize,
    /// Calls each client keeps in flight (M).
    pub inflight: usize,
}

/// Sends `n` calls keeping up to `inflight` outstanding; records each call's latency when
/// `hist` is given. Replies are matched by serial, so a bus that reorders is still measured.
fn pump(
    conn: &mut Conn,
    call: Outgoing<'_>,
    body: &[u8],
    n: u64,
    inflight: usize,
    mut hist: Option<&mut Histogram<u64>>,
) -> io::Result<()> {
    let mut outstanding: VecDeque<(u32, Instant)> = VecDeque::with_capacity(inflight);
    let (mut sent, mut done) = (0u64, 0u64);
    while done < n {
        while sent < n && outstanding.len() < inflight {
            let serial = conn.send(call, body)?;
            outstanding.push_back((serial, Instant::now()));
            sent += 1;
        }
        let h = conn.recv()?;
        if h.msg_type != wire::METHOD_RETURN && h.msg_type != wire::ERROR {
            continue;
        }
        let Some(i) = outstanding.iter().position(|&(s, _)| s == h.reply_serial) else {
            continue;
        };
        if h.msg_type == wire::ERROR {
            return Err(io::Error::other(format!("call failed: {}", h.error_name)));
        }
        if let Some((_, t0)) = outstanding.remove(i) {
            if let Some(hist) = hist.as_deref_mut() {
                record(hist, t0.elapsed());
            }
        }
        done += 1;
    }
    Ok(())
}

/// N client/echo pairs, each client keeping M calls in flight. `count` and `warmup` are totals,
/// split evenly over the pairs. Reports calls/s (iterations/s) and forwarded messages/s (2 per
/// call: the call and its reply); latencies are per call, under that load.
pub fn pipelined(c: &Common, p: &PipelineParams) -> io::Result<Summary> {
    let pairs = p.pairs.max(1);
    let inflight = p.inflight.max(1);
    let per_pair = c.count.div_ceil(pairs as u64).max(1);
    let warm_per_pair = c.warmup.div_ceil(pairs as u64);
    let barrier = Arc::new(Barrier::new(pairs + 1));
    let mut echoes = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..pairs {
        let echo = Conn::connect(&c.address)?;
        let mut client = Conn::connect(&c.address)?;
        let dest = echo.unique_name.clone();
        echoes.push(thread::spawn(move || scenarios::echo_loop(echo)));
        let barrier = barrier.clone();
        let payload = c.payload;
        clients.push(thread::spawn(move || -> io::Result<Histogram<u64>> {
            let mut body = Vec::new();
            wire::push_bytes(&mut body, &vec![0x5a; payload]);
            let call = ping(&dest, "ay");
            let warm = pump(&mut client, call, &body, warm_per_pair, inflight, None);
            // Every client reaches the barrier, even after an error, so none can hang it.
            barrier.wait();
            warm?;
            let mut hist = histogram()?;
            pump(
                &mut client,
                call,
                &body,
                per_pair,
                inflight,
                Some(&mut hist),
            )?;
            quit(&mut client, &dest)?;
            Ok(hist)
        }));
    }
    barrier.wait();
    let start = Instant::now();
    let mut hist = histogram()?;
    let mut first_err = None;
    for t in clients {
        match join(t, "client") {
            Ok(h) => {
                let _ = hist.add(&h);
            }
            Err(e) => first_err = first_err.or(Some(e)),
        }
    }
    let wall = start.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    for t in echoes {
        join(t, "echo")?;
    }
    Ok(Summary::from_hist(
        "pipelined",
        vec![
            ("pairs", pairs as u64),
            ("inflight", inflight as u64),
            ("payload", c.payload as u64),
        ],
        &hist,
        wall,
        2,
    ))
}

/// Round trips carrying an `ay` body of `size` bytes; bytes/s counts the payload both ways.
pub fn large(c: &Common, size: usize) -> io::Result<Summary> {
    let c = Common {
        payload: size,
        ..c.clone()
    };
    let echo = Conn::connect(&c.address)?;
    let client = Conn::connect(&c.address)?;
    scenarios::round_trips(&c, "large", client, echo).map(|(s, _)| s)
}

/// The physical floor: the same echo round trip between two threads over a socketpair, with
/// no bus in between. A bus round trip crosses two such hops each way.
pub fn baseline(c: &Common) -> io::Result<(Summary, Histogram<u64>)> {
    let (a, b) = UnixStream::pair()?;
    scenarios::round_trips(c, "baseline", Conn::from_stream(a), Conn::from_stream(b))
}

/// Connect + `AUTH EXTERNAL` + `Hello` + disconnect, one after another.
pub fn connect(c: &Common) -> io::Result<Summary> {
    let mut hist = histogram()?;
    let total = c.warmup + c.count;
    let progress = Progress::new(c.progress, "connect".to_owned(), total);
    let mut measured_start = Instant::now();
    for i in 0..total {
        if i == c.warmup {
            measured_start = Instant::now();
        }
        let t0 = Instant::now();
        drop(Conn::connect(&c.address)?);
        let dt = t0.elapsed();
        if i >= c.warmup {
            record(&mut hist, dt);
        }
        progress.tick(i + 1);
    }
    Ok(Summary::from_hist(
        "connect",
        vec![],
        &hist,
        measured_start.elapsed(),
        1,
    ))
}

/// Echo service for `fdpass`: answers each `Ping` with the descriptor it carried.
pub(crate) fn fd_echo_loop(mut conn: Conn) -> io::Result<()> {
    let mut out = Vec::new();
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &[]);
    body.clear();
    body.extend_from_slice(&0u32.to_le_bytes()); // `h`: index 0 into the fds
    loop {
        {
            let h = conn.recv()?;
            if h.msg_type != wire::METHOD_CALL || h.interface != ECHO_INTERFACE {
                continue;
            }
            if h.member == "Quit" {
                return Ok(());
            }
            if h.unix_fds != 1 {
                return Err(io::Error::other(format!(
                    "Ping carried UNIX_FDS={}, expected 1",
                    h.unix_fds
                )));
            }
            out.clear();
            let reply = Outgoing {
                msg_type: wire::METHOD_RETURN,
                reply_serial: h.serial,
                destination: h.sender,
                signature: "h",
                unix_fds: 1,
                ..Outgoing::default()
            };
            wire::encode(&mut out, &reply, &body);
        }
        let serial = conn.serial();
        out[8..12].copy_from_slice(&serial.to_le_bytes());
        let fd = conn
            .take_fd()
            .ok_or_else(|| io::Error::other("Ping arrived without its descriptor"))?;
        conn.send_raw_with_fd(&out, fd.as_fd())?;
    }
}

/// Round trips of a call carrying one unix fd, which the echo service sends back.
pub fn fdpass(c: &Common) -> io::Result<Summary> {
    let echo = Conn::connect_with(&c.address, true)?;
    let dest = echo.unique_name.clone();
    let echo_thread = thread::spawn(move || fd_echo_loop(echo));
    let mut client = Conn::connect_with(&c.address, true)?;
    let file = std::fs::File::open("/dev/null")?;
    let body = 0u32.to_le_bytes();
    let call = Outgoing {
        unix_fds: 1,
        ..ping(&dest, "h")
    };
    let mut hist = histogram()?;
    let total = c.warmup + c.count;
    let progress = Progress::new(c.progress, "fdpass".to_owned(), total);
    let mut measured_start = Instant::now();
    for i in 0..total {
        if i == c.warmup {
            measured_start = Instant::now();
        }
        let t0 = Instant::now();
        let serial = client.send_with_fd(call, &body, file.as_fd())?;
        let n = client.recv_reply(serial)?.unix_fds;
        let fd = client.take_fd();
        if n != 1 || fd.is_none() {
            return Err(io::Error::other("reply did not carry the descriptor back"));
        }
        drop(fd);
        let dt = t0.elapsed();
        if i >= c.warmup {
            record(&mut hist, dt);
        }
        progress.tick(i + 1);
    }
    let wall = measured_start.elapsed();
    quit(&mut client, &dest)?;
    join(echo_thread, "echo")?;
    Ok(Summary::from_hist("fdpass", vec![], &hist, wall, 1))
}

/// `VmRSS` of one process in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vmrss(&s).ok_or_else(|| io::Error::other(format!("no VmRSS for pid {pid}")))
}

fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The processes in process group `pgid`, as (pid, command name).
pub fn group_members(pgid: u32) -> io::Result<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let Ok(e) = e else { continue };
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((comm, pg)) = parse_stat(&stat) {
            if pg == pgid {
                out.push((pid, comm));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// (comm, pgrp) from `/proc/PID/stat`; comm may contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // After ") ": state, ppid, pgrp.
    let pg = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    Some((comm, pg))
}

/// RSS of one process at the three stages of [`memory`], in KiB.
#[derive(Debug, Clone, PartialEq)]
pub struct MemRow {
    /// Process name.
    pub name: String,
    /// Idle bus.
    pub idle: u64,
    /// With the idle connections open.
    pub conns: u64,
    /// With the match rules installed as well.
    pub rules: u64,
}

/// Result of [`memory`]: one row per bus process plus the parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MemReport {
    /// Per-process rows.
    pub rows: Vec<MemRow>,
    /// Idle connections opened.
    pub n_conns: usize,
    /// Match rules installed.
    pub n_rules: usize,
}

impl MemReport {
    /// Sum over processes.
    pub fn total(&self) -> MemRow {
        let mut t = MemRow {
            name: "total".to_owned(),
            idle: 0,
            conns: 0,
            rules: 0,
        };
        for r in &self.rows {
            t.idle += r.idle;
            t.conns += r.conns;
            t.rules += r.rules;
        }
        t
    }

    /// KiB per connection and per rule of the total (growth over the previous stage).
    pub fn per_conn_and_rule(&self) -> (f64, f64) {
        let t = self.total();
        (
            (t.conns as f64 - t.idle as f64) / self.n_conns.max(1) as f64,
            (t.rules as f64 - t.conns as f64) / self.n_rules.max(1) as f64,
        )
    }

    /// Human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "memory (VmRSS, KiB; {} idle connections, {} match rules)\n  {:<22} {:>10} {:>10} {:>10}\n",
            self.n_conns, self.n_rules, "process", "idle", "+conns", "+rules"
        );
        let mut rows = self.rows.clone();
        if rows.len() > 1 {
            rows.push(self.total());
        }
        for r in &rows {
            out.push_str(&format!(
                "  {:<22} {:>10} {:>10} {:>10}\n",
                r.name, r.idle, r.conns, r.rules
            ));
        }
        let (pc, pr) = self.per_conn_and_rule();
        out.push_str(&format!(
            "  KiB per connection {pc:.2}, KiB per rule {pr:.3}\n"
        ));
        out
    }
}

/// Settles, then reads every pid's RSS.
fn snapshot(pids: &[(u32, String)]) -> io::Result<Vec<u64>> {
    // Give the bus a moment to finish any deferred work (and the kernel to account it).
    thread::sleep(Duration::from_millis(200));
    pids.iter().map(|(p, _)| rss_kib(*p)).collect()
}

/// Bus RSS idle, with `n_conns` idle connections (after `Hello`), and with `n_rules` match rules
/// installed on the first of them (1000 per connection).
pub fn memory(
    address: &str,
    pids: &[(u32, String)],
    n_conns: usize,
    n_rules: usize,
    progress: bool,
) -> io::Result<MemReport> {
    raise_nofile();
    let idle = snapshot(pids)?;
    let mut conns = Vec::with_capacity(n_conns);
    for i in 0..n_conns {
        conns.push(Conn::connect(address)?);
        if progress && (i + 1) % 250 == 0 {
            eprintln!("[memory] {}/{n_conns} connections", i + 1);
        }
    }
    let with_conns = snapshot(pids)?;
    let mut next = 0;
    for conn in conns.iter_mut() {
        if next >= n_rules {
            break;
        }
        let n = 1000.min(n_rules - next);
        let rules: Vec<String> = (next..next + n).map(scenarios::idle_rule).collect();
        conn.add_matches(&rules, 256)?;
        next += n;
    }
    if next < n_rules {
        return Err(io::Error::other("not enough connections to hold the rules"));
    }
    let with_rules = snapshot(pids)?;
    drop(conns);
    Ok(MemReport {
        rows: pids
            .iter()
            .enumerate()
            .map(|(i, (_, name))| MemRow {
                name: name.clone(),
                idle: idle[i],
                conns: with_conns[i],
                rules: with_rules[i],
            })
            .collect(),
        n_conns,
        n_rules,
    })
}

/// 1000+ connections need as many descriptors: lift the soft limit to the hard one.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmrss_and_stat_parsing() {
        let st = "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    1234 kB\nVmData: 5 kB\n";
        assert_eq!(parse_vmrss(st), Some(1234));
        assert_eq!(parse_vmrss("Name: x\n"), None);
        assert_eq!(parse_vmrss("VmRSS: lots kB\n"), None);
        assert_eq!(
            parse_stat("42 (dbus-broker) S 1 40 40 0 -1"),
            Some(("dbus-broker".to_owned(), 40))
        );
        assert_eq!(
            parse_stat("42 (a) b) S 1 7 7"),
            Some(("a) b".to_owned(), 7))
        );
        assert_eq!(parse_stat("42 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
        // Our own process is in some group and has an RSS.
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
    }

    #[test]
    fn mem_report_totals_and_ratios() {
        let r = MemReport {
            rows: vec![
                MemRow {
                    name: "a".into(),
                    idle: 1000,
                    conns: 3000,
                    rules: 4000,
                },
                MemRow {
                    name: "b".into(),
                    idle: 100,
                    conns: 100,
                    rules: 100,
                },
            ],
            n_conns: 1000,
            n_rules: 10000,
        };
        assert_eq!(r.total().idle, 1100);
        let (pc, pr) = r.per_conn_and_rule();
        assert!((pc - 2.0).abs() < 1e-9);
        assert!((pr - 0.1).abs() < 1e-9);
        assert!(r.table().contains("total"));
    }

    #[test]
    fn baseline_and_pump_over_socketpair() {
        let c = Common {
            address: String::new(),
            count: 50,
            warmup: 5,
            payload: 16,
            progress: false,
        };
        let (s, h) = baseline(&c).unwrap();
        assert_eq!(s.samples, 50);
        assert_eq!(h.len(), 50);
        assert!(s.bytes_per_sec > 0.0);
        // Pipelining over the same echo, 8 in flight.
        let (a, b) = UnixStream::pair().unwrap();
        let echo = thread::spawn(move || scenarios::echo_loop(Conn::from_stream(b)));
        let mut client = Conn::from_stream(a);
        let mut hist = histogram().unwrap();
        let call = ping("", "ay");
        let mut body = Vec::new();
        wire::push_bytes(&mut body, &[1, 2, 3]);
        pump(&mut client, call, &body, 100, 8, Some(&mut hist)).unwrap();
        assert_eq!(hist.len(), 100);
        quit(&mut client, "").unwrap();
        echo.join().unwrap().unwrap();
    }

    #[test]
    fn fd_roundtrip_over_socketpair() {
        // Descriptor passing through Conn without a bus: what fdpass relies on.
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = Conn::from_stream(a);
        let mut rx = Conn::from_stream(b);
        rx.set_unix_fd_for_test();
        let f = std::fs::File::open("/dev/null").unwrap();
        let call = Outgoing {
            unix_fds: 1,
            ..ping("", "h")
        };
        tx.send_with_fd(call, &0u32.to_le_bytes(), f.as_fd())
            .unwrap();
        let n = rx.recv().unwrap().unix_fds;
        assert_eq!(n, 1);
        assert!(rx.take_fd().is_some());
        assert!(rx.take_fd().is_none());
    }
}
