//! `compare`: starts sluicebus, dbus-daemon and (when it will start) dbus-broker on private
//! sockets, runs `fanout` for every (K, R) against each, interleaved round by round so that
//! machine noise hits all buses alike, and prints Markdown tables of the medians.
//!
//! Every bus runs in its own process group, which is terminated when the [`Bus`] is dropped, so
//! nothing outlives the run (dbus-broker-launch forks the broker itself).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::scenarios::{self, Common, FanoutParams};

/// Where the journal socket lives; dbus-broker-launch logs there and fails without it.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Options of the `compare` subcommand.
#[derive(Debug, Clone)]
pub struct CompareOpts {
    /// sluicebus binary.
    pub sluicebus: PathBuf,
    /// dbus-daemon binary.
    pub dbus_daemon: PathBuf,
    /// Which buses to run (`sluicebus`, `dbus-daemon`, `dbus-broker`).
    pub buses: Vec<String>,
    /// Configuration file all buses are started with.
    pub config: PathBuf,
    /// Rounds (each runs every configuration once on every bus).
    pub rounds: usize,
    /// R values.
    pub rules: Vec<usize>,
    /// K values.
    pub subscribers: Vec<usize>,
    /// Measured iterations per run.
    pub count: u64,
    /// Warm-up iterations per run.
    pub warmup: u64,
    /// Print progress.
    pub progress: bool,
}

/// A running bus; dropping it stops its whole process group.
struct Bus {
    name: String,
    address: String,
    child: Child,
}

impl Drop for Bus {
    fn drop(&mut self) {
        let pg = self.child.id() as libc::pid_t;
        // The leader is not reaped until `wait` below, so the group id cannot be reused between
        // these two signals.
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(-pg, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            // WNOWAIT: look without reaping.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a valid, writable siginfo_t.
            let r = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pg as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                )
            };
            // SAFETY: reading si_pid of a siginfo filled (or zeroed) above.
            if r == 0 && unsafe { info.si_pid() } != 0 {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; stragglers in the group (the forked broker) go too.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Starts a dbus-daemon-compatible binary and reads the address it prints.
fn start_daemon_like(name: &str, bin: &Path, config: &Path, sock: &Path) -> io::Result<Bus> {
    let mut child = Command::new(bin)
        .arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--print-address"])
        .arg(format!("--address=unix:path={}", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", bin.display())))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut bus = Bus {
        name: name.to_owned(),
        address: String::new(),
        child,
    };
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    bus.address = line.trim().to_owned();
    if bus.address.is_empty() {
        return Err(io::Error::other(format!("{name} printed no address")));
    }
    Ok(bus)
}

/// The journal stand-in for dbus-broker-launch: a datagram socket drained by a thread.
struct Journal {
    path: PathBuf,
    created_dirs: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    drain: Option<thread::JoinHandle<()>>,
}

impl Journal {
    /// Binds the socket unless something already listens there (then `None`).
    fn bind() -> io::Result<Option<Journal>> {
        let path = PathBuf::from(JOURNAL_SOCKET);
        if path.exists() {
            return Ok(None);
        }
        let mut created_dirs = Vec::new();
        let mut missing = Vec::new();
        let mut d = path.parent();
        while let Some(dir) = d {
            if dir.exists() {
                break;
            }
            missing.push(dir.to_path_buf());
            d = dir.parent();
        }
        for dir in missing.iter().rev() {
            std::fs::create_dir(dir)?;
            created_dirs.push(dir.clone());
        }
        let sock = UnixDatagram::bind(&path)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let drain = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop2.load(Ordering::Relaxed) {
                let _ = sock.recv(&mut buf);
            }
        });
        Ok(Some(Journal {
            path,
            created_dirs,
            stop,
            drain: Some(drain),
        }))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.drain.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        for dir in self.created_dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Starts dbus-broker through systemd-socket-activate + dbus-broker-launch.
fn start_broker(config: &Path, dir: &Path) -> io::Result<Bus> {
    let sock = dir.join("broker.sock");
    let runtime = dir.join("broker-run");
    std::fs::create_dir_all(&runtime)?;
    let address = format!("unix:path={}", sock.display());
    let child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&sock)
        .arg(format!("--setenv=DBUS_SESSION_BUS_ADDRESS={address}"))
        .arg(format!("--setenv=XDG_RUNTIME_DIR={}", runtime.display()))
        .args(["dbus-broker-launch", "--scope", "user", "--config-file"])
        .arg(config)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()?;
    let mut bus = Bus {
        name: "dbus-broker".to_owned(),
        address,
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = bus.child.try_wait()? {
            return Err(io::Error::other(format!("dbus-broker-launch exited: {st}")));
        }
        if sock.exists() && Conn::connect(&bus.address).is_ok() {
            return Ok(bus);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(
                "dbus-broker did not answer Hello within 10 s",
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the comparison and prints the Markdown report on stdout.
pub fn run(o: &CompareOpts) -> io::Result<()> {
    let dir = std::env::temp_dir().join(format!("sluicebus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = run_in(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(o: &CompareOpts, dir: &Path) -> io::Result<()> {
    let mut _journal = None;
    let mut buses = Vec::new();
    for name in &o.buses {
        let started = match name.as_str() {
            "sluicebus" => {
                start_daemon_like(name, &o.sluicebus, &o.config, &dir.join("sluicebus.sock"))
            }
            "dbus-daemon" => {
                start_daemon_like(name, &o.dbus_daemon, &o.config, &dir.join("daemon.sock"))
            }
            "dbus-broker" => {
                match Journal::bind() {
                    Ok(j) => _journal = j,
                    Err(e) => eprintln!("compare: cannot bind {JOURNAL_SOCKET}: {e}"),
                }
                start_broker(&o.config, dir)
            }
            other => Err(io::Error::other(format!("unknown bus {other:?}"))),
        };
        match started {
            Ok(b) => {
                eprintln!("compare: {} at {}", b.name, b.address);
                buses.push(b);
            }
            // The broker is optional: it needs systemd pieces some machines lack.
            Err(e) if name == "dbus-broker" => eprintln!("compare: skipping dbus-broker: {e}"),
            Err(e) => return Err(e),
        }
    }

    // (bus, K, R) -> per-round p50 and p99; bus -> per-round rtt p50.
    let mut p50: BTreeMap<(usize, usize, usize), Vec<f64>> = BTreeMap::new();
    let mut p99: BTreeMap<(usize, usize, usize), Vec<f64>> = BTreeMap::new();
    let mut rtt: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for round in 0..o.rounds {
        for &k in &o.subscribers {
            for &r in &o.rules {
                for (bi, bus) in buses.iter().enumerate() {
                    let c = Common {
                        address: bus.address.clone(),
                        count: o.count,
                        warmup: o.warmup,
                        payload: 0,
                        progress: false,
                    };
                    let p = FanoutParams {
                        subscribers: k,
                        rules: r,
                        rules_per_conn: 1000,
                    };
                    let s = scenarios::fanout(&c, &p).map_err(|e| {
                        io::Error::other(format!("{} fanout K={k} R={r}: {e}", bus.name))
                    })?;
                    if o.progress {
                        eprintln!(
                            "[round {}/{}] {:<12} K={k:<3} R={r:<6} p50 {:>8.1} µs  p99 {:>8.1} µs",
                            round + 1,
                            o.rounds,
                            bus.name,
                            s.p50,
                            s.p99
                        );
                    }
                    p50.entry((bi, k, r)).or_default().push(s.p50);
                    p99.entry((bi, k, r)).or_default().push(s.p99);
                }
            }
        }
        for (bi, bus) in buses.iter().enumerate() {
            let c = Common {
                address: bus.address.clone(),
                count: o.count,
                warmup: o.warmup,
                payload: 0,
                progress: false,
            };
            let s = scenarios::rtt(&c)
                .map_err(|e| io::Error::other(format!("{} rtt: {e}", bus.name)))?;
            if o.progress {
                eprintln!(
                    "[round {}/{}] {:<12} rtt p50 {:>8.1} µs",
                    round + 1,
                    o.rounds,
                    bus.name,
                    s.p50
                );
            }
            rtt.entry(bi).or_default().push(s.p50);
        }
    }

    let names: Vec<String> = buses.iter().map(|b| b.name.clone()).collect();
    drop(buses);
    print!("{}", report(&names, o, &mut p50, &mut p99, &mut rtt));
    Ok(())
}

type Runs = BTreeMap<(usize, usize, usize), Vec<f64>>;

/// Formats the Markdown tables (medians over rounds).
fn report(
    names: &[String],
    o: &CompareOpts,
    p50: &mut Runs,
    p99: &mut Runs,
    rtt: &mut BTreeMap<usize, Vec<f64>>,
) -> String {
    let mut out = String::new();
    for (title, runs) in [("p50", p50), ("p99", p99)] {
        out.push_str(&format!(
            "\nfanout latency, {title} in µs (median of {} rounds × {} signals each)\n\n",
            o.rounds, o.count
        ));
        let first = *o.rules.first().unwrap_or(&0);
        let last = *o.rules.last().unwrap_or(&0);
        out.push_str("| bus | K |");
        for r in &o.rules {
            out.push_str(&format!(" R={r} |"));
        }
        out.push_str(&format!(" R={last} / R={first} |\n|---|---|"));
        for _ in &o.rules {
            out.push_str("---|");
        }
        out.push_str("---|\n");
        for (bi, name) in names.iter().enumerate() {
            for &k in &o.subscribers {
                out.push_str(&format!("| {name} | {k} |"));
                let mut meds = Vec::new();
                for &r in &o.rules {
                    let m = runs
                        .get_mut(&(bi, k, r))
                        .map(|v| median(v))
                        .unwrap_or(f64::NAN);
                    meds.push(m);
                    out.push_str(&format!(" {m:.1} |"));
                }
                let ratio = meds.last().copied().unwrap_or(f64::NAN)
                    / meds.first().copied().unwrap_or(f64::NAN);
                out.push_str(&format!(" {ratio:.2} |\n"));
            }
        }
    }
    out.push_str("\nmethod call round trip (rtt), p50 in µs, median over rounds\n\n| bus | rtt p50 |\n|---|---|\n");
    for (bi, name) in names.iter().enumerate() {
        let m = rtt.get_mut(&bi).map(|v| median(v)).unwrap_or(f64::NAN);
        out.push_str(&format!("| {name} | {m:.1} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn report_has_ratio_column() {
        let o = CompareOpts {
            sluicebus: "x".into(),
            dbus_daemon: "y".into(),
            buses: vec![],
            config: "c".into(),
            rounds: 1,
            rules: vec![10, 10000],
            subscribers: vec![1],
            count: 5,
            warmup: 0,
            progress: false,
        };
        let mut p50 = Runs::new();
        p50.insert((0, 1, 10), vec![10.0]);
        p50.insert((0, 1, 10000), vec![20.0]);
        let mut p99 = Runs::new();
        let mut rtt = BTreeMap::new();
        rtt.insert(0, vec![30.0, 50.0]);
        let s = report(&["busA".into()], &o, &mut p50, &mut p99, &mut rtt);
        assert!(
            s.contains("| bus | K | R=10 | R=10000 | R=10000 / R=10 |"),
            "{s}"
        );
        assert!(s.contains("| busA | 1 | 10.0 | 20.0 | 2.00 |"), "{s}");
        assert!(s.contains("| busA | 40.0 |"), "{s}");
    }
}
