//! `soak`: mixed traffic against a bus for minutes, watching its memory, its open fds and
//! what an unrelated client's method calls cost over time.
//!
//! Actors, each in its own thread(s), run until the end (each can be left out with `--mix`):
//! * `calls`: a client calls an echo service (`Ping`, 64-byte `ay`), `--calls-per-s`;
//! * `broadcast`: an emitter sends `org.bench.Soak.Tick` signals, `--signals-per-s`, to
//!   `--subscribers` readers that read everything;
//! * `fd`: a call carrying one unix fd to an fd echo service that sends it back, `--fd-per-s`;
//! * `churn`: connect, `AUTH EXTERNAL`, `Hello`, close, `--churn-per-s` (0: as fast as it
//!   goes);
//! * `slow`: a subscriber to the flood's signals that reads 4 KiB per millisecond (about
//!   4 MB/s) and, if the bus disconnects it, connects again (counted);
//! * `flood`: every `--flood-every-s` seconds a burst of `--flood-burst` signals, encoded
//!   ahead and written as fast as the bus takes them, then a round trip;
//! * the bystander (always): calls its own echo service, one call due every millisecond,
//!   each call's latency counted from when it was due (as in `flood`: a stall counts for
//!   every call it held up).
//!
//! Every `--sample-s` seconds the sampler reads the bus's `VmRSS` and `VmHWM`
//! (`/proc/PID/status`) and its open fds (`/proc/PID/fd`), and takes the bystander's latency
//! histogram of the interval (p50, p99) and each actor's count. Output: a table of the samples
//! and a summary (first, largest and last values); `--svg FILE` plots RSS, fds and the
//! bystander's p50/p99 over time. Nothing here depends on which bus it talks to.
//!
//! A rate is a pace, not a promise: an actor that falls behind catches up by at most one
//! second's worth, and the table reports what was done per second.

use std::fmt::Write as _;
use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::scenarios;
use crate::wire::{self, Outgoing};

/// Interface of the broadcast signals (their subscribers' rule names it).
const SOAK_INTERFACE: &str = "org.bench.Soak";
/// Interface of the flood's signals (only the slow reader subscribes).
const FLOOD_INTERFACE: &str = "org.bench.SoakFlood";
/// What the slow reader reads per millisecond.
const SLOW_READ: usize = 4096;
/// Flood signals per write.
const FLOOD_BATCH: usize = 64;
/// Time between the bystander's calls.
const BYSTANDER_INTERVAL: Duration = Duration::from_millis(1);

/// The actors `--mix` can name.
pub const ACTORS: [&str; 6] = ["calls", "broadcast", "fd", "churn", "slow", "flood"];

/// Soak parameters.
#[derive(Debug, Clone)]
pub struct SoakParams {
    /// Bus address.
    pub address: String,
    /// The bus process to watch.
    pub pid: u32,
    /// How long to run.
    pub duration: Duration,
    /// Time between samples.
    pub sample: Duration,
    /// Which actors run (names from [`ACTORS`]).
    pub mix: Vec<String>,
    /// Echo calls per second of the `calls` actor.
    pub calls_per_s: u64,
    /// Signals per second of the `broadcast` emitter.
    pub signals_per_s: u64,
    /// Readers of the broadcast.
    pub subscribers: usize,
    /// Fd-carrying round trips per second.
    pub fd_per_s: u64,
    /// Connections opened and closed per second (0: as fast as possible).
    pub churn_per_s: u64,
    /// Signals per flood burst.
    pub flood_burst: u64,
    /// Time from the start of one burst to the start of the next.
    pub flood_every: Duration,
    /// Where to write the SVG plot.
    pub svg: Option<PathBuf>,
    /// Name of the bus in the report and the plot's title.
    pub label: String,
    /// Progress (one line per sample) on stderr.
    pub progress: bool,
}

impl SoakParams {
    fn runs(&self, actor: &str) -> bool {
        self.mix.iter().any(|m| m == actor)
    }
}

/// What the actors did, counted as they go.
#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    signals_received: AtomicU64,
    fd_calls: AtomicU64,
    connects: AtomicU64,
    flooded: AtomicU64,
    slow_read_bytes: AtomicU64,
    slow_reconnects: AtomicU64,
}

impl Counters {
    fn get(&self) -> [u64; 6] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            l(&self.calls),
            l(&self.signals_received),
            l(&self.fd_calls),
            l(&self.connects),
            l(&self.flooded),
            l(&self.slow_reconnects),
        ]
    }
}

/// One sample (one row of the table).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Seconds since the actors started.
    pub t: f64,
    /// The bus's VmRSS, KiB.
    pub rss_kib: u64,
    /// The bus's VmHWM (peak RSS so far), KiB.
    pub hwm_kib: u64,
    /// Open fds of the bus.
    pub fds: u64,
    /// Bystander calls completed in the interval.
    pub bystander_calls: u64,
    /// Bystander p50 over the interval, µs.
    pub p50_us: f64,
    /// Bystander p99 over the interval, µs.
    pub p99_us: f64,
    /// Per second over the interval: echo calls, broadcast copies received, fd round trips,
    /// connections churned, flood signals written.
    pub rates: [f64; 5],
    /// Slow-reader reconnects so far (the bus disconnected it).
    pub slow_reconnects: u64,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// Bus name.
    pub label: String,
    /// Actors that ran.
    pub mix: Vec<String>,
    /// VmRSS (KiB) and fds before the actors connected.
    pub before: (u64, u64),
    /// One per `--sample-s`.
    pub samples: Vec<Sample>,
    /// Actors that stopped early, and why.
    pub stopped: Vec<String>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

impl SoakReport {
    /// Markdown table of the samples, then a summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "soak: {} ({}), VmRSS {:.1} MiB and {} fds before the clients connected\n",
            self.label,
            self.mix.join(","),
            mib(self.before.0),
            self.before.1
        );
        s.push_str(
            "| t [s] | VmRSS [MiB] | VmHWM [MiB] | fds | bystander p50 [µs] | p99 [µs] | calls/s | \
             signal copies/s | fd calls/s | connects/s | flood signals/s | slow reconnects |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for x in &self.samples {
            let _ = writeln!(
                s,
                "| {:.0} | {:.1} | {:.1} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
                x.t,
                mib(x.rss_kib),
                mib(x.hwm_kib),
                x.fds,
                x.p50_us,
                x.p99_us,
                x.rates[0],
                x.rates[1],
                x.rates[2],
                x.rates[3],
                x.rates[4],
                x.slow_reconnects
            );
        }
        s.push('\n');
        s.push_str(&self.summary());
        for why in &self.stopped {
            let _ = writeln!(s, "stopped early: {why}");
        }
        s
    }

    /// One line: first, largest and last RSS and fds, median and largest bystander p50/p99.
    pub fn summary(&self) -> String {
        let Some((first, last)) = self.samples.first().zip(self.samples.last()) else {
            return "no samples\n".to_owned();
        };
        let max = |f: fn(&Sample) -> f64| self.samples.iter().map(f).fold(0.0, f64::max);
        let med = |f: fn(&Sample) -> f64| {
            let mut v: Vec<f64> = self.samples.iter().map(f).collect();
            scenarios::median(&mut v)
        };
        format!(
            "summary {}: VmRSS first {:.1} / max {:.1} / last {:.1} MiB (VmHWM {:.1}); fds first {} / \
             max {} / last {}; bystander p50 median {:.0} µs (max {:.0}), p99 median {:.0} µs (max {:.0})\n",
            self.label,
            mib(first.rss_kib),
            max(|x| x.rss_kib as f64) / 1024.0,
            mib(last.rss_kib),
            mib(last.hwm_kib),
            first.fds,
            max(|x| x.fds as f64),
            last.fds,
            med(|x| x.p50_us),
            max(|x| x.p50_us),
            med(|x| x.p99_us),
            max(|x| x.p99_us),
        )
    }

    /// Three stacked panels over time: VmRSS and VmHWM (MiB), open fds, bystander p50 and
    /// p99 (µs, log scale). Hand-written SVG, no dependencies.
    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const PH: f64 = 170.0;
        const L: f64 = 70.0;
        const R: f64 = 20.0;
        const TOP: f64 = 40.0;
        const GAP: f64 = 45.0;
        let t_max = self.samples.last().map_or(1.0, |x| x.t).max(1.0);
        let x_of = |t: f64| L + (W - L - R) * t / t_max;
        let h = TOP + 3.0 * (PH + GAP) + 10.0;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
             fill=\"white\"/>\n<text x=\"{L}\" y=\"22\" font-size=\"15\">soak: {} ({})</text>\n",
            esc(&self.label),
            esc(&self.mix.join(", "))
        );
        type Series<'a> = (&'a str, &'a str, Box<dyn Fn(&Sample) -> f64 + 'a>);
        let panels: [(&str, bool, Vec<Series<'_>>); 3] = [
            (
                "bus memory [MiB]",
                false,
                vec![
                    ("VmRSS", "#1f77b4", Box::new(|x: &Sample| mib(x.rss_kib))),
                    ("VmHWM", "#aec7e8", Box::new(|x: &Sample| mib(x.hwm_kib))),
                ],
            ),
            (
                "bus open fds",
                false,
                vec![("fds", "#2ca02c", Box::new(|x: &Sample| x.fds as f64))],
            ),
            (
                "bystander round trip [µs, log]",
                true,
                vec![
                    ("p50", "#d62728", Box::new(|x: &Sample| x.p50_us)),
                    ("p99", "#ff9896", Box::new(|x: &Sample| x.p99_us)),
                ],
            ),
        ];
        for (i, (title, log, series)) in panels.iter().enumerate() {
            let y0 = TOP + i as f64 * (PH + GAP);
            let vals = || {
                series
                    .iter()
                    .flat_map(|(_, _, f)| self.samples.iter().map(f))
            };
            let (lo, hi) = if *log {
                let lo = vals().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
                let lo = if lo.is_finite() { lo } else { 1.0 };
                let hi = vals().fold(lo * 10.0, f64::max);
                (lo.log10().floor(), hi.log10().ceil())
            } else {
                (0.0, vals().fold(1.0, f64::max) * 1.1)
            };
            let y_of = |v: f64| {
                let v = if *log { v.max(1e-9).log10() } else { v };
                y0 + PH - PH * ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
            };
            let _ = writeln!(
                s,
                "<rect x=\"{L}\" y=\"{y0}\" width=\"{}\" height=\"{PH}\" fill=\"none\" \
                 stroke=\"#888\"/>\n<text x=\"{L}\" y=\"{}\">{}</text>",
                W - L - R,
                y0 - 6.0,
                esc(title)
            );
            // Y ticks: the bounds and the middle (decades on a log scale).
            let ticks: Vec<f64> = if *log {
                (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
            } else {
                vec![0.0, hi / 2.0, hi]
            };
            for v in ticks {
                let y = y_of(v);
                let _ = writeln!(
                    s,
                    "<line x1=\"{L}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
                     <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                    W - R,
                    L - 4.0,
                    y + 4.0,
                    tick_label(v)
                );
            }
            let mut lx = W - R - 10.0;
            for (name, color, f) in series.iter().rev() {
                let pts: Vec<String> = self
                    .samples
                    .iter()
                    .map(|x| format!("{:.1},{:.1}", x_of(x.t), y_of(f(x))))
                    .collect();
                let _ = writeln!(
                    s,
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\
                     <text x=\"{lx}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{color}\">{name}</text>",
                    pts.join(" "),
                    y0 + 14.0
                );
                // Room for this label (about 8 px a character) and a gap before the next.
                lx -= 8.0 * name.len() as f64 + 16.0;
            }
        }
        let yb = TOP + 3.0 * (PH + GAP) - GAP + 16.0;
        for k in 0..=4 {
            let t = t_max * k as f64 / 4.0;
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{yb}\" text-anchor=\"middle\">{t:.0} s</text>",
                x_of(t)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn tick_label(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// VmRSS and VmHWM of `pid`, KiB.
fn mem_kib(pid: u32) -> io::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no {name} for pid {pid}")))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Open fds of `pid` (entries of `/proc/PID/fd`).
fn fd_count(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Runs `f` `rate` times per second (as fast as it goes for 0) until `stop`. Falling behind,
/// it catches up by at most one second's worth.
fn paced(rate: u64, stop: &AtomicBool, mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let mut start = Instant::now();
    let mut k = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(at) = (k * 1_000_000_000).checked_div(rate) {
            let due = start + Duration::from_nanos(at);
            let now = Instant::now();
            match due.checked_duration_since(now) {
                Some(wait) => thread::sleep(wait),
                None if now - due > Duration::from_secs(1) => {
                    start = now;
                    k = 0;
                }
                None => {}
            }
            k += 1;
        }
        f()?;
    }
    Ok(())
}

/// The actors' threads, each ending with a result.
struct Actors {
    threads: Vec<(&'static str, thread::JoinHandle<io::Result<()>>)>,
}

impl Actors {
    fn spawn(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) -> io::Result<()> {
        let h = thread::Builder::new().name(name.to_owned()).spawn(f)?;
        self.threads.push((name, h));
        Ok(())
    }

    /// Actors that already ended, with why (removed from the list).
    fn ended(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.threads.len() {
            if self.threads[i].1.is_finished() {
                let (name, h) = self.threads.swap_remove(i);
                out.push(match h.join() {
                    Ok(Ok(())) => format!("{name}: ended"),
                    Ok(Err(e)) => format!("{name}: {e}"),
                    Err(_) => format!("{name}: panicked"),
                });
            } else {
                i += 1;
            }
        }
        out
    }
}

/// Runs the soak (see the module documentation). The actors' threads are not joined: some
/// block in reads on the bus; they end with the process.
pub fn soak(p: &SoakParams) -> io::Result<SoakReport> {
    for m in &p.mix {
        if !ACTORS.contains(&m.as_str()) {
            return Err(io::Error::other(format!(
                "--mix: unknown actor {m:?} (known: {})",
                ACTORS.join(",")
            )));
        }
    }
    let before = (mem_kib(p.pid)?.0, fd_count(p.pid)?);
    let stop = Arc::new(AtomicBool::new(false));
    let n = Arc::new(Counters::default());
    let mut actors = Actors {
        threads: Vec::new(),
    };
    let addr = p.address.clone();

    // The bystander and its echo service.
    let bystander_hist = Arc::new(Mutex::new(scenarios::histogram()?));
    let by_echo = Conn::connect(&addr)?;
    let by_dest = by_echo.unique_name.clone();
    actors.spawn("bystander-echo", move || scenarios::echo_loop(by_echo))?;
    {
        let mut client = Conn::connect(&addr)?;
        let (hist, stop) = (bystander_hist.clone(), stop.clone());
        actors.spawn("bystander", move || {
            bystander(&mut client, &by_dest, &hist, &stop)
        })?;
    }
    if p.runs("calls") {
        let echo = Conn::connect(&addr)?;
        let dest = echo.unique_name.clone();
        actors.spawn("calls-echo", move || scenarios::echo_loop(echo))?;
        let mut client = Conn::connect(&addr)?;
        let (n, stop, rate) = (n.clone(), stop.clone(), p.calls_per_s);
        actors.spawn("calls", move || {
            let mut body = Vec::new();
            wire::push_bytes(&mut body, &[0x5a; 64]);
            let call = scenarios::ping(&dest, "ay");
            paced(rate, &stop, || {
                let serial = client.send(call, &body)?;
                client.recv_reply(serial)?;
                n.calls.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        })?;
    }
    if p.runs("broadcast") {
        for _ in 0..p.subscribers {
            let mut sub = Conn::connect(&addr)?;
            sub.add_matches(&[format!("type='signal',interface='{SOAK_INTERFACE}'")], 1)?;
            let n = n.clone();
            actors.spawn("subscriber", move || loop {
                let h = sub.recv()?;
                if h.interface == SOAK_INTERFACE {
                    n.signals_received.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        }
        let mut emitter = Conn::connect(&addr)?;
        let (stop, rate) = (stop.clone(), p.signals_per_s);
        actors.spawn("emitter", move || {
            let mut body = Vec::new();
            wire::push_bytes(&mut body, &[0x5a; 64]);
            let sig = Outgoing {
                msg_type: wire::SIGNAL,
                path: scenarios::SIG_PATH,
                interface: SOAK_INTERFACE,
                member: scenarios::SIG_MEMBER,
                signature: "ay",
                ..Outgoing::default()
            };
            paced(rate, &stop, || emitter.send(sig, &body).map(drop))
        })?;
    }
    if p.runs("fd") {
        let echo = Conn::connect_with(&addr, true)?;
        let dest = echo.unique_name.clone();
        actors.spawn("fd-echo", move || crate::more::fd_echo_loop(echo))?;
        let mut client = Conn::connect_with(&addr, true)?;
        let (n, stop, rate) = (n.clone(), stop.clone(), p.fd_per_s);
        actors.spawn("fd", move || {
            let file = std::fs::File::open("/dev/null")?;
            let body = 0u32.to_le_bytes();
            let call = Outgoing {
                unix_fds: 1,
                ..scenarios::ping(&dest, "h")
            };
            paced(rate, &stop, || {
                let serial = client.send_with_fd(call, &body, file.as_fd())?;
                let back = client.recv_reply(serial)?.unix_fds;
                if back != 1 || client.take_fd().is_none() {
                    return Err(io::Error::other("reply did not carry the descriptor back"));
                }
                n.fd_calls.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        })?;
    }
    if p.runs("churn") {
        let (n, stop, rate, addr) = (n.clone(), stop.clone(), p.churn_per_s, addr.clone());
        actors.spawn("churn", move || {
            paced(rate, &stop, || {
                drop(Conn::connect(&addr)?);
                n.connects.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        })?;
    }
    if p.runs("slow") {
        let (n, stop, addr) = (n.clone(), stop.clone(), addr.clone());
        actors.spawn("slow", move || slow_reader(&addr, &n, &stop))?;
    }
    if p.runs("flood") {
        let mut conn = Conn::connect(&addr)?;
        let (n, stop, burst, every) = (n.clone(), stop.clone(), p.flood_burst, p.flood_every);
        actors.spawn("flood", move || {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                next += every;
                for buf in encode_flood(&mut conn, burst) {
                    conn.send_raw(&buf)?;
                    let k = wire_count(&buf);
                    n.flooded.fetch_add(k, Ordering::Relaxed);
                }
                let serial = conn.call_driver("GetId", None)?;
                conn.recv_reply(serial)?;
            }
            Ok(())
        })?;
    }

    // Sampling.
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut stopped = Vec::new();
    let mut last_counts = n.get();
    let mut last_t = start;
    let mut k = 1u32;
    while start.elapsed() < p.duration {
        let due = start + p.sample * k;
        k += 1;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let now = Instant::now();
        let (rss_kib, hwm_kib) = mem_kib(p.pid)?;
        let fds = fd_count(p.pid)?;
        let hist = {
            let mut h = bystander_hist
                .lock()
                .map_err(|_| io::Error::other("bystander panicked"))?;
            let taken = h.clone();
            h.reset();
            taken
        };
        let counts = n.get();
        let dt = (now - last_t).as_secs_f64().max(1e-9);
        let rate = |i: usize| (counts[i] - last_counts[i]) as f64 / dt;
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        let x = Sample {
            t: (now - start).as_secs_f64(),
            rss_kib,
            hwm_kib,
            fds,
            bystander_calls: hist.len(),
            p50_us: us(0.5),
            p99_us: us(0.99),
            rates: [rate(0), rate(1), rate(2), rate(3), rate(4)],
            slow_reconnects: counts[5],
        };
        if p.progress {
            eprintln!(
                "soak {}: t={:.0}s VmRSS {:.1} MiB, {} fds, bystander p50 {:.0} µs p99 {:.0} µs ({} calls)",
                p.label,
                x.t,
                mib(rss_kib),
                fds,
                x.p50_us,
                x.p99_us,
                x.bystander_calls
            );
        }
        for why in actors.ended() {
            if p.progress {
                eprintln!("soak {}: actor stopped: {why}", p.label);
            }
            stopped.push(why);
        }
        samples.push(x);
        last_counts = counts;
        last_t = now;
    }
    stop.store(true, Ordering::Relaxed);
    let report = SoakReport {
        label: p.label.clone(),
        mix: p.mix.clone(),
        before,
        samples,
        stopped,
    };
    if let Some(path) = &p.svg {
        std::fs::write(path, report.svg())?;
    }
    Ok(report)
}

/// Messages in an encoded buffer of whole messages.
fn wire_count(mut buf: &[u8]) -> u64 {
    let mut k = 0;
    while let Ok(len) = wire::message_len(buf) {
        if len > buf.len() {
            break;
        }
        buf = &buf[len..];
        k += 1;
    }
    k
}

/// `n` flood signals (no payload) in writes of [`FLOOD_BATCH`].
fn encode_flood(conn: &mut Conn, n: u64) -> Vec<Vec<u8>> {
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &[]);
    let sig = Outgoing {
        msg_type: wire::SIGNAL,
        path: scenarios::SIG_PATH,
        interface: FLOOD_INTERFACE,
        member: scenarios::SIG_MEMBER,
        signature: "ay",
        ..Outgoing::default()
    };
    crate::flood::encode_batches(conn, n, &sig, &body, FLOOD_BATCH)
}

/// Subscribes to the flood and reads it slowly, without parsing; connects again when the bus
/// hangs up (a bus may disconnect a reader that falls too far behind).
fn slow_reader(addr: &str, n: &Counters, stop: &AtomicBool) -> io::Result<()> {
    let mut buf = vec![0u8; SLOW_READ];
    while !stop.load(Ordering::Relaxed) {
        let mut sub = Conn::connect(addr)?;
        sub.add_matches(&[format!("type='signal',interface='{FLOOD_INTERFACE}'")], 1)?;
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: `buf` is valid for `buf.len()` bytes; the fd belongs to `sub`, alive here.
            let r = unsafe {
                libc::recv(
                    sub.raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if r == 0 {
                break;
            }
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::WouldBlock {
                    break;
                }
            } else {
                n.slow_read_bytes.fetch_add(r as u64, Ordering::Relaxed);
            }
            thread::sleep(Duration::from_millis(1));
        }
        if !stop.load(Ordering::Relaxed) {
            n.slow_reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// One call due every [`BYSTANDER_INTERVAL`], latency counted from when it was due, into
/// `hist` (which the sampler empties every interval).
fn bystander(
    client: &mut Conn,
    dest: &str,
    hist: &Mutex<Histogram<u64>>,
    stop: &AtomicBool,
) -> io::Result<()> {
    // Sleeps as short as the interval need the default 50 µs timer slack gone.
    // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's timer slack.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
    let mut body = Vec::new();
    wire::push_bytes(&mut body, &[0x5a; 64]);
    let call = scenarios::ping(dest, "ay");
    let start = Instant::now();
    for k in 0u32.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = start + BYSTANDER_INTERVAL * k;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let serial = client.send(call, &body)?;
        client.recv_reply(serial)?;
        let dt = due.elapsed();
        let mut h = hist
            .lock()
            .map_err(|_| io::Error::other("sampler panicked"))?;
        scenarios::record(&mut h, dt);
    }
    Ok(())
}

/// Usage of `soak`, for the main usage text.
pub const USAGE: &str = "\
  soak    --pid P [--seconds S | --minutes M] [--sample-s 5] [--mix calls,broadcast,fd,churn,slow,flood]
          [--calls-per-s 1000] [--signals-per-s 200] [--subscribers 4] [--fd-per-s 200]
          [--churn-per-s 50] [--flood-burst 100000] [--flood-every-s 20] [--svg FILE] [--label NAME]
          mixed traffic for S seconds (default 60) while a bystander calls an echo service every
          ms; every sample: the bus's VmRSS/VmHWM and open fds (/proc/P), bystander p50/p99 over
          the interval, what each actor did; a Markdown table, a summary, an SVG (--churn-per-s 0:
          as fast as it goes; --mix churn alone: the connection-churn memory check)
";

/// `sluicebus-bench [global options] soak [soak options]`: `global` holds what came before
/// the scenario's name (`--address`, `--quiet`).
pub fn run_cli(global: &[String], args: &[String]) -> Result<(), String> {
    fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, String> {
        *i += 1;
        args.get(*i)
            .map(String::as_str)
            .ok_or_else(|| format!("{flag} needs a value"))
    }
    fn number<T: std::str::FromStr>(s: &str, flag: &str) -> Result<T, String> {
        s.parse()
            .map_err(|_| format!("{flag}: not a number: {s:?}"))
    }
    let mut address = std::env::var("DBUS_SESSION_BUS_ADDRESS").ok();
    let mut progress = true;
    let mut i = 0;
    while i < global.len() {
        match global[i].as_str() {
            "--address" => address = Some(value(global, &mut i, "--address")?.to_owned()),
            "--quiet" => progress = false,
            a => return Err(format!("soak: unexpected argument {a:?} before `soak`")),
        }
        i += 1;
    }
    let mut p = SoakParams {
        address: address.ok_or("soak: no --address and no DBUS_SESSION_BUS_ADDRESS")?,
        pid: 0,
        duration: Duration::from_secs(60),
        sample: Duration::from_secs(5),
        mix: ACTORS.map(String::from).to_vec(),
        calls_per_s: 1000,
        signals_per_s: 200,
        subscribers: 4,
        fd_per_s: 200,
        churn_per_s: 50,
        flood_burst: 100_000,
        flood_every: Duration::from_secs(20),
        svg: None,
        label: "bus".to_owned(),
        progress,
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "--pid" => p.pid = number(value(args, &mut i, a)?, a)?,
            "--seconds" => p.duration = Duration::from_secs(number(value(args, &mut i, a)?, a)?),
            "--minutes" => {
                p.duration = Duration::from_secs(60 * number::<u64>(value(args, &mut i, a)?, a)?)
            }
            "--sample-s" => p.sample = Duration::from_secs_f64(number(value(args, &mut i, a)?, a)?),
            "--mix" => {
                p.mix = value(args, &mut i, a)?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            }
            "--calls-per-s" => p.calls_per_s = number(value(args, &mut i, a)?, a)?,
            "--signals-per-s" => p.signals_per_s = number(value(args, &mut i, a)?, a)?,
            "--subscribers" => p.subscribers = number(value(args, &mut i, a)?, a)?,
            "--fd-per-s" => p.fd_per_s = number(value(args, &mut i, a)?, a)?,
            "--churn-per-s" => p.churn_per_s = number(value(args, &mut i, a)?, a)?,
            "--flood-burst" => p.flood_burst = number(value(args, &mut i, a)?, a)?,
            "--flood-every-s" => {
                p.flood_every = Duration::from_secs_f64(number(value(args, &mut i, a)?, a)?)
            }
            "--svg" => p.svg = Some(value(args, &mut i, a)?.into()),
            "--label" => p.label = value(args, &mut i, a)?.to_owned(),
            _ => return Err(format!("soak: unexpected argument {a:?}\n\n{USAGE}")),
        }
        i += 1;
    }
    if p.pid == 0 {
        return Err("soak needs --pid (the bus process id)".into());
    }
    if p.sample.is_zero() {
        return Err("--sample-s must be above 0".into());
    }
    let r = soak(&p).map_err(|e| format!("soak: {e}"))?;
    print!("{}", r.table());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, rss: u64, p50: f64) -> Sample {
        Sample {
            t,
            rss_kib: rss,
            hwm_kib: rss * 2,
            fds: 12,
            bystander_calls: 100,
            p50_us: p50,
            p99_us: p50 * 10.0,
            rates: [1.0, 2.0, 3.0, 4.0, 5.0],
            slow_reconnects: 0,
        }
    }

    fn report() -> SoakReport {
        SoakReport {
            label: "bus<1>".into(),
            mix: vec!["calls".into(), "churn".into()],
            before: (2048, 10),
            samples: vec![sample(2.0, 4096, 50.0), sample(4.0, 8192, 70.0)],
            stopped: vec![],
        }
    }

    #[test]
    fn table_has_a_row_per_sample_and_a_summary() {
        let t = report().table();
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 3, "header and two samples:\n{t}");
        assert!(
            rows[2].starts_with("| 4 | 8.0 | 16.0 | 12 | 70 | 700 |"),
            "{t}"
        );
        assert!(
            t.contains("VmRSS first 4.0 / max 8.0 / last 8.0 MiB"),
            "{t}"
        );
        assert!(t.contains("p50 median 60 µs (max 70)"), "{t}");
    }

    #[test]
    fn svg_has_three_panels_and_escapes_the_label() {
        let s = report().svg();
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<polyline").count(), 5, "{s}");
        assert!(s.contains("bus&lt;1&gt;") && !s.contains("bus<1>"));
        assert!(!s.contains("NaN") && !s.contains("inf"), "{s}");
    }

    #[test]
    fn wire_count_counts_whole_messages() {
        let mut buf = Vec::new();
        for serial in 1..=3 {
            let m = Outgoing {
                msg_type: wire::SIGNAL,
                serial,
                path: "/a",
                interface: "a.b",
                member: "C",
                ..Outgoing::default()
            };
            wire::encode(&mut buf, &m, &[]);
        }
        assert_eq!(wire_count(&buf), 3);
        assert_eq!(
            wire_count(&buf[..buf.len() - 1]),
            2,
            "a cut message is not counted"
        );
        assert_eq!(wire_count(&[]), 0);
    }

    #[test]
    fn paced_runs_until_stopped() {
        let stop = AtomicBool::new(false);
        let mut k = 0;
        paced(0, &stop, || {
            k += 1;
            if k == 5 {
                stop.store(true, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(k, 5);
    }
}
