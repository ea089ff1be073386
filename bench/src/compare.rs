//! `compare`: starts sluicebus, dbus-daemon and, when they will start, dbus-broker and busd on
//! private sockets, runs `fanout` for every (K, R) against each, interleaved round by round so
//! that machine noise hits all buses alike, and prints Markdown tables of the medians.
//!
//! Every bus runs in its own process group, which is terminated when the [`Bus`] is dropped, so
//! nothing outlives the run (dbus-broker-launch forks the broker itself). A scenario that fails
//! on one bus leaves that bus's cell `n/a` instead of ending the run.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::Conn;
use crate::filtered::{self, FilterParams, FilterReport};
use crate::more::{self, MemReport, PipelineParams};
use crate::relay;
use crate::scenarios::{self, fixed, median, Common, FanoutParams};

/// Where the journal socket lives; dbus-broker-launch logs there and fails without it.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// How long a bus that we poll for readiness (dbus-broker, busd) gets to answer `Hello`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Buses that may be missing or fail to start on a machine; they are skipped with a message.
const OPTIONAL_BUSES: [&str; 2] = ["dbus-broker", "busd"];

/// Options of the `compare` subcommand.
#[derive(Debug, Clone)]
pub struct CompareOpts {
    /// sluicebus binary.
    pub sluicebus: PathBuf,
    /// dbus-daemon binary.
    pub dbus_daemon: PathBuf,
    /// busd binary given with `--busd`; `None` looks it up (see [`find_busd`]).
    pub busd: Option<PathBuf>,
    /// Which buses to run (`sluicebus`, `dbus-daemon`, `dbus-broker`, `busd`).
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
    /// N values of `pipelined` (pairs).
    pub pairs: Vec<usize>,
    /// M of `pipelined` (calls in flight per client).
    pub inflight: usize,
    /// Body sizes of `large`.
    pub sizes: Vec<usize>,
    /// Idle connections for `memory` (0 skips the memory section).
    pub mem_conns: usize,
    /// Match rules for `memory`.
    pub mem_rules: usize,
    /// Where to write the SVG of the rtt latency CDFs.
    pub svg: Option<PathBuf>,
    /// N of `filtered` (Containers1 `Allow` rules; 0 skips it).
    pub filter_rules: usize,
    /// `--pin`: the CPU the bench's own threads run on, set once the buses are started.
    pub pin: Option<usize>,
    /// `--pin-bus`: the CPU every bus starts pinned to.
    pub pin_bus: Option<usize>,
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
        while Instant::now() < deadline && !self.leader_exited() {
            thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: as above; stragglers in the group (the forked broker) go too.
        unsafe { libc::kill(-pg, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Bus {
    /// Whether the group leader has exited, without reaping it (WNOWAIT), so its pid, which
    /// is also the group id `Drop` signals, cannot be reused meanwhile.
    fn leader_exited(&self) -> bool {
        // SAFETY: siginfo_t is plain data, for which all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: reading si_pid of a siginfo filled (or zeroed) above.
        r == 0 && unsafe { info.si_pid() } != 0
    }

    /// The bus's processes (its whole process group: for dbus-broker, the launcher and the
    /// broker it forks).
    fn processes(&self) -> io::Result<Vec<(u32, String)>> {
        more::group_members(self.child.id())
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
    /// Binds the socket unless something already listens there (then `None`). A socket file
    /// nobody listens on (left by a run that was killed) is replaced: dbus-broker-launch would
    /// fail on it with "Connection refused".
    fn bind() -> io::Result<Option<Journal>> {
        let path = PathBuf::from(JOURNAL_SOCKET);
        if path.exists() {
            let probe = UnixDatagram::unbound()?;
            match probe.connect(&path) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(&path)?
                }
                _ => return Ok(None),
            }
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

/// Whether `p` is a regular file with an execute bit set.
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The busd binary: `explicit` (from `--busd`) when given and executable, else `busd` in a
/// directory of `path_var`, else `$CARGO_HOME/bin/busd`, else `$HOME/.cargo/bin/busd` (where
/// `cargo install busd` puts it, often not on PATH). The environment comes in as arguments so
/// tests need not change the process's own.
pub fn find_busd(
    explicit: Option<&Path>,
    path_var: Option<&OsStr>,
    cargo_home: Option<&OsStr>,
    home: Option<&OsStr>,
) -> Option<PathBuf> {
    if let Some(p) = explicit {
        // An explicit path that does not work is not silently replaced by another binary.
        return is_executable(p).then(|| p.to_path_buf());
    }
    let on_path = path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        // An empty PATH entry means the current directory; not a place to pick a bus from.
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join("busd"));
    let cargo = cargo_home
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(h).join("bin/busd"));
    let home = home
        .filter(|h| !h.is_empty())
        .map(|h| Path::new(h).join(".cargo/bin/busd"));
    on_path.chain(cargo).chain(home).find(|p| is_executable(p))
}

/// Starts busd on `dir/busd.sock` with `config`; if busd exits on it, says so on stderr and
/// starts it without `--config` (busd's default: `/usr/share/dbus-1/session.conf` if present,
/// else its built-in settings).
fn start_busd(bin: Option<&Path>, config: &Path, dir: &Path) -> io::Result<Bus> {
    let bin = find_busd(
        bin,
        std::env::var_os("PATH").as_deref(),
        std::env::var_os("CARGO_HOME").as_deref(),
        std::env::var_os("HOME").as_deref(),
    )
    .ok_or_else(|| match bin {
        Some(p) => io::Error::other(format!("{} is not an executable file", p.display())),
        None => io::Error::other(
            "not found on PATH, in $CARGO_HOME/bin or ~/.cargo/bin (cargo install busd, or --busd PATH)",
        ),
    })?;
    let sock = dir.join("busd.sock");
    match spawn_busd(&bin, Some(config), &sock) {
        Ok(bus) => Ok(bus),
        // Exited on its own: most likely it refused the configuration file.
        Err((e, true)) => {
            eprintln!(
                "compare: busd did not start with --config {} ({e}); retrying without --config",
                config.display()
            );
            let _ = std::fs::remove_file(&sock);
            spawn_busd(&bin, None, &sock).map_err(|(e, _)| e)
        }
        Err((e, false)) => Err(e),
    }
}

/// One attempt at starting busd; the error says whether busd exited by itself (`true`) or did
/// not get ready in time (`false`, already stopped by dropping the [`Bus`]).
fn spawn_busd(bin: &Path, config: Option<&Path>, sock: &Path) -> Result<Bus, (io::Error, bool)> {
    let mut cmd = Command::new(bin);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .arg("--address")
        .arg(format!("unix:path={}", sock.display()))
        .arg("--print-address")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            (
                io::Error::new(e.kind(), format!("{}: {e}", bin.display())),
                false,
            )
        })?;
    let stdout = child.stdout.take();
    let mut bus = Bus {
        name: "busd".to_owned(),
        address: String::new(),
        child,
    };
    // A thread reads the printed address, so a busd that never prints cannot block us past the
    // deadline; it then drains stdout until busd exits, so later writes never hit a closed pipe.
    let (tx, rx) = mpsc::channel();
    if let Some(out) = stdout {
        thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line.trim().to_owned());
            let _ = io::copy(&mut r, &mut io::sink());
        });
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if bus.leader_exited() {
            // Its own stderr (inherited) says why.
            let e = io::Error::other("busd exited before answering Hello");
            return Err((e, true));
        }
        if bus.address.is_empty() {
            if let Ok(a) = rx.try_recv() {
                bus.address = a;
            }
        }
        // Ready means it answers Hello, as for the broker: printing the address is not enough.
        if !bus.address.is_empty() && Conn::connect(&bus.address).is_ok() {
            return Ok(bus);
        }
        if Instant::now() > deadline {
            return Err((
                io::Error::other(format!(
                    "busd did not answer Hello within {} s",
                    READY_TIMEOUT.as_secs()
                )),
                false,
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts the bus called `name` in `dir` as `compare` runs it; `journal` keeps the journal
/// stand-in that dbus-broker needs alive.
fn start_bus(
    name: &str,
    o: &CompareOpts,
    dir: &Path,
    journal: &mut Option<Journal>,
) -> io::Result<Bus> {
    match o.pin_bus {
        Some(cpu) => crate::pin::with_cpu(cpu, || start_bus_unpinned(name, o, dir, journal)),
        None => start_bus_unpinned(name, o, dir, journal),
    }
}

fn start_bus_unpinned(
    name: &str,
    o: &CompareOpts,
    dir: &Path,
    journal: &mut Option<Journal>,
) -> io::Result<Bus> {
    match name {
        "sluicebus" => {
            start_daemon_like(name, &o.sluicebus, &o.config, &dir.join("sluicebus.sock"))
        }
        "dbus-daemon" => {
            start_daemon_like(name, &o.dbus_daemon, &o.config, &dir.join("daemon.sock"))
        }
        "dbus-broker" => {
            match Journal::bind() {
                Ok(j) => *journal = j,
                Err(e) => eprintln!("compare: cannot bind {JOURNAL_SOCKET}: {e}"),
            }
            start_broker(&o.config, dir)
        }
        "busd" => start_busd(o.busd.as_deref(), &o.config, dir),
        other => Err(io::Error::other(format!("unknown bus {other:?}"))),
    }
}

/// `serve BUS`: starts one bus as `compare` would, prints `PID ADDRESS` (PID = the process that
/// relays messages: for dbus-broker the broker, not its launcher) and keeps it running until
/// stdin reaches EOF. `syscalls.sh` attaches strace to that PID.
pub fn serve(o: &CompareOpts, name: &str) -> io::Result<()> {
    let dir = std::env::temp_dir().join(format!("sluicebus-bench-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let mut _journal = None;
        let bus = start_bus(name, o, &dir, &mut _journal)?;
        let procs = bus.processes()?;
        let pid = procs
            .iter()
            .find(|(_, n)| n == name)
            .or(procs.first())
            .map(|(p, _)| *p)
            .ok_or_else(|| io::Error::other("bus has no processes"))?;
        println!("{pid} {}", bus.address);
        let mut sink = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut sink)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A bus started exactly as `compare` starts it, for the subcommands that run their own
/// loops over the buses (`flood-compare`); dropping it stops the bus.
pub(crate) struct Started {
    bus: Bus,
    _journal: Option<Journal>,
}

impl Started {
    /// The bus's name (`sluicebus`, `dbus-daemon`, …).
    pub(crate) fn name(&self) -> &str {
        &self.bus.name
    }

    /// Its address.
    pub(crate) fn address(&self) -> &str {
        &self.bus.address
    }
}

/// Starts bus `name` in `dir` with the binaries and configuration of `o` (see `start_bus`).
pub(crate) fn start_one(name: &str, o: &CompareOpts, dir: &Path) -> io::Result<Started> {
    let mut journal = None;
    let bus = start_bus(name, o, dir, &mut journal)?;
    Ok(Started {
        bus,
        _journal: journal,
    })
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
        match start_bus(name, o, dir, &mut _journal) {
            Ok(b) => {
                eprintln!("compare: {} at {}", b.name, b.address);
                buses.push(b);
            }
            // The broker needs systemd pieces some machines lack; busd may not be installed.
            Err(e) if OPTIONAL_BUSES.contains(&name.as_str()) => {
                eprintln!("compare: skipping {name}: {e}")
            }
            Err(e) => return Err(e),
        }
    }
    // After the buses started, so that they do not inherit it (the relay process, started
    // later, does: it stands in for a bus on the client's CPU).
    if let Some(cpu) = o.pin {
        crate::pin::pin_current_thread(cpu)?;
    }
    if o.pin.is_some() || o.pin_bus.is_some() {
        let show = |c: Option<usize>| c.map_or("unpinned".to_owned(), |c| format!("CPU {c}"));
        eprintln!(
            "compare: bench threads {}, buses {}",
            show(o.pin),
            show(o.pin_bus)
        );
    }

    // Memory first, on freshly started buses (nothing else has touched them yet).
    let mut mem: Vec<Option<MemReport>> = vec![None; buses.len()];
    if o.mem_conns > 0 {
        for (bi, bus) in buses.iter().enumerate() {
            let r = bus.processes().and_then(|pids| {
                more::memory(&bus.address, &pids, o.mem_conns, o.mem_rules, false)
            });
            match r {
                Ok(r) => {
                    if o.progress {
                        eprint!("[memory] {}\n{}", bus.name, r.table());
                    }
                    mem[bi] = Some(r);
                }
                Err(e) => eprintln!("[memory] {}: {e}", bus.name),
            }
        }
    }

    // (bus, K, R) -> per-round p50 and p99; bus -> per-round rtt p50.
    let mut p50: BTreeMap<(usize, usize, usize), Vec<f64>> = BTreeMap::new();
    let mut p99: BTreeMap<(usize, usize, usize), Vec<f64>> = BTreeMap::new();
    let mut rtt: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    // (metric row, bus) -> per-round values of the other scenarios.
    let mut other: Metrics = Metrics::new();
    let mut base: Vec<f64> = Vec::new();
    let mut relay_base: Vec<f64> = Vec::new();
    let mut rtt_hists: Vec<Histogram<u64>> = Vec::new();
    for _ in &buses {
        rtt_hists.push(scenarios::histogram()?);
    }
    // Per bus: the `filtered` rounds, and whether the bus turned out not to support it.
    let mut filter: Vec<FilterReport> = vec![FilterReport::default(); buses.len()];
    let mut no_filter = vec![o.filter_rules == 0; buses.len()];
    let filter_k = o.subscribers.iter().copied().max().unwrap_or(10);
    let common = |bus: &Bus, count: u64| Common {
        address: bus.address.clone(),
        count: count.max(1),
        warmup: (count / 10).clamp(1, o.warmup.max(1)),
        payload: 0,
        progress: false,
    };
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
                    let what = format!("fanout K={k} R={r}");
                    let Some(s) = ok(bus, &what, scenarios::fanout(&c, &p)) else {
                        continue;
                    };
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
        let floor = Common {
            address: String::new(),
            count: o.count,
            warmup: o.warmup,
            payload: 0,
            progress: false,
        };
        let (b, _) = more::baseline(&floor)?;
        base.push(b.p50);
        // The relay process is the floor for a bus; if it fails its cells show n/a.
        let relay_p50 = match relay::relay(&floor) {
            Ok((r, _)) => {
                relay_base.push(r.p50);
                format!("{:.1} µs", r.p50)
            }
            Err(e) => {
                eprintln!("compare: relay failed: {e} (n/a)");
                "n/a".to_owned()
            }
        };
        if o.progress {
            eprintln!(
                "[round {}/{}] floors: socketpair p50 {:.1} µs, relay p50 {relay_p50}",
                round + 1,
                o.rounds,
                b.p50
            );
        }
        for (bi, bus) in buses.iter().enumerate() {
            let mut log = Vec::new();
            if let Some((s, h)) = ok(bus, "rtt", scenarios::rtt_hist(&common(bus, o.count))) {
                let _ = rtt_hists[bi].add(&h);
                rtt.entry(bi).or_default().push(s.p50);
                push(&mut other, "rtt p99 [µs]", bi, s.p99);
                log.push(format!("rtt p50 {:.1} µs", s.p50));
            } else {
                touch(&mut other, "rtt p99 [µs]");
            }
            for &n in &o.pairs {
                let row = format!("pipelined N={n} M={} [msg/s]", o.inflight);
                let params = PipelineParams {
                    pairs: n,
                    inflight: o.inflight,
                };
                let r = more::pipelined(&common(bus, o.count * 10), &params);
                if let Some(s) = ok(bus, &format!("pipelined N={n}"), r) {
                    push(&mut other, &row, bi, s.deliveries_per_sec);
                    log.push(format!("pipe N={n} {:.0} msg/s", s.deliveries_per_sec));
                } else {
                    // The row exists even if every bus fails it, so the table shows n/a.
                    touch(&mut other, &row);
                }
            }
            for &size in &o.sizes {
                let row = format!("large {} [MB/s]", size_label(size));
                // Cap each run at about 64 MiB of payload per direction.
                let n = ((64usize << 20) / size.max(1)).clamp(20, o.count as usize) as u64;
                let what = format!("large {}", size_label(size));
                if let Some(s) = ok(bus, &what, more::large(&common(bus, n), size)) {
                    push(&mut other, &row, bi, s.bytes_per_sec / 1e6);
                    log.push(format!(
                        "{} {:.0} MB/s",
                        size_label(size),
                        s.bytes_per_sec / 1e6
                    ));
                } else {
                    touch(&mut other, &row);
                }
            }
            if let Some(s) = ok(bus, "connect", more::connect(&common(bus, o.count / 2))) {
                push(&mut other, "connect [conn/s]", bi, s.per_sec);
                log.push(format!("connect {:.0}/s", s.per_sec));
            } else {
                touch(&mut other, "connect [conn/s]");
            }
            if let Some(s) = ok(bus, "fdpass", more::fdpass(&common(bus, o.count))) {
                push(&mut other, "fdpass p50 [µs]", bi, s.p50);
                push(&mut other, "fdpass [calls/s]", bi, s.per_sec);
                log.push(format!("fdpass p50 {:.1} µs", s.p50));
            } else {
                touch(&mut other, "fdpass p50 [µs]");
                touch(&mut other, "fdpass [calls/s]");
            }
            if !no_filter[bi] {
                let p = FilterParams {
                    rules: o.filter_rules,
                    subscribers: filter_k,
                    rounds: 1,
                    per_instance: filtered::PER_INSTANCE,
                    rotate: round,
                    only: None,
                };
                match filtered::filtered(&common(bus, o.count), &p) {
                    Ok(r) => {
                        let ratio = r.round_ratios().first().copied().unwrap_or(f64::NAN);
                        log.push(format!("filtered/unfiltered rtt p50 {ratio:.2}"));
                        filter[bi].extend(&r);
                    }
                    // Asked once: a bus without Containers1 Allow stays n/a.
                    Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                        eprintln!("compare: {} filtered: {e} (n/a)", bus.name);
                        no_filter[bi] = true;
                    }
                    Err(e) => eprintln!("compare: {} filtered failed: {e} (n/a)", bus.name),
                }
            }
            if o.progress {
                eprintln!(
                    "[round {}/{}] {:<12} {}",
                    round + 1,
                    o.rounds,
                    bus.name,
                    log.join(", ")
                );
            }
        }
    }

    let names: Vec<String> = buses.iter().map(|b| b.name.clone()).collect();
    drop(buses);
    print!("{}", report(&names, o, &mut p50, &mut p99, &mut rtt));
    print!(
        "{}",
        report_other(
            &names,
            &mut other,
            &mut rtt,
            Floors {
                socketpair_p50: median(&mut base),
                relay_p50: median(&mut relay_base),
            },
            &mem
        )
    );
    if o.filter_rules > 0 {
        print!(
            "{}",
            report_filter(&names, o.filter_rules, filter_k, &mut filter)
        );
    }
    if let Some(path) = &o.svg {
        let series: Vec<(&str, &Histogram<u64>)> = names
            .iter()
            .map(String::as_str)
            .zip(rtt_hists.iter())
            .collect();
        std::fs::write(path, cdf_svg(&series))?;
        eprintln!("compare: wrote {}", path.display());
    }
    Ok(())
}

/// A failed run costs only its cell: said on stderr and nothing recorded, so the table shows
/// n/a (or the median of the rounds that did work).
fn ok<T>(bus: &Bus, what: &str, r: io::Result<T>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("compare: {} {what} failed: {e} (n/a)", bus.name);
            None
        }
    }
}

/// Metric rows in insertion order, each with per-bus per-round values.
type Metrics = Vec<(String, BTreeMap<usize, Vec<f64>>)>;

fn push(m: &mut Metrics, row: &str, bus: usize, v: f64) {
    let i = touch(m, row);
    m[i].1.entry(bus).or_default().push(v);
}

/// The index of `row`, added (with no values) if new.
fn touch(m: &mut Metrics, row: &str) -> usize {
    match m.iter().position(|(r, _)| r == row) {
        Some(i) => i,
        None => {
            m.push((row.to_owned(), BTreeMap::new()));
            m.len() - 1
        }
    }
}

fn size_label(size: usize) -> String {
    if size >= 1 << 20 && size % (1 << 20) == 0 {
        format!("{} MiB", size >> 20)
    } else if size >= 1024 && size % 1024 == 0 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

/// Ratio columns: sluicebus (when present, else the first bus) against each other bus.
fn ratio_cols(names: &[String]) -> (usize, Vec<usize>) {
    let me = names.iter().position(|n| n == "sluicebus").unwrap_or(0);
    (me, (0..names.len()).filter(|&i| i != me).collect())
}

/// Medians of the no-bus round trips (NaN when they did not run).
#[derive(Debug, Clone, Copy)]
struct Floors {
    /// `baseline`: echo over a socketpair between two threads.
    socketpair_p50: f64,
    /// `relay`: the same echo through a do-nothing relay process.
    relay_p50: f64,
}

/// The tables of everything besides fanout: medians over rounds, sluicebus/other ratios,
/// rtt against the socketpair and relay floors, and memory.
fn report_other(
    names: &[String],
    other: &mut Metrics,
    rtt: &mut BTreeMap<usize, Vec<f64>>,
    floors: Floors,
    mem: &[Option<MemReport>],
) -> String {
    let (me, others) = ratio_cols(names);
    let mut out = String::from(
        "\nother scenarios, median over rounds (ratio = sluicebus / other; for µs lower is better, \
         for rates higher is better)\n\n| scenario |",
    );
    for n in names {
        out.push_str(&format!(" {n} |"));
    }
    for &i in &others {
        out.push_str(&format!(" {} / {} |", names[me], names[i]));
    }
    out.push_str("\n|---|");
    for _ in 0..names.len() + others.len() {
        out.push_str("---|");
    }
    out.push('\n');
    let mut rows: Vec<(String, Vec<f64>)> = Vec::new();
    let med_rtt: Vec<f64> = (0..names.len())
        .map(|b| rtt.get_mut(&b).map(|v| median(v)).unwrap_or(f64::NAN))
        .collect();
    rows.push(("rtt p50 [µs]".to_owned(), med_rtt.clone()));
    for (row, per_bus) in other.iter_mut() {
        let meds = (0..names.len())
            .map(|b| per_bus.get_mut(&b).map(|v| median(v)).unwrap_or(f64::NAN))
            .collect();
        rows.push((row.clone(), meds));
    }
    if mem.iter().any(Option::is_some) {
        let pick = |f: &dyn Fn(&MemReport) -> f64| -> Vec<f64> {
            mem.iter()
                .map(|m| m.as_ref().map(f).unwrap_or(f64::NAN))
                .collect()
        };
        let n_conns = mem.iter().flatten().map(|m| m.n_conns).next().unwrap_or(0);
        let n_rules = mem.iter().flatten().map(|m| m.n_rules).next().unwrap_or(0);
        rows.push((
            "RSS idle [KiB]".to_owned(),
            pick(&|m| m.total().idle as f64),
        ));
        rows.push((
            format!("RSS + {n_conns} conns [KiB]"),
            pick(&|m| m.total().conns as f64),
        ));
        rows.push((
            format!("RSS + {n_rules} rules [KiB]"),
            pick(&|m| m.total().rules as f64),
        ));
        rows.push((
            "KiB per connection".to_owned(),
            pick(&|m| m.per_conn_and_rule().0),
        ));
        rows.push((
            "KiB per match rule".to_owned(),
            pick(&|m| m.per_conn_and_rule().1),
        ));
    }
    for (row, meds) in &rows {
        out.push_str(&format!("| {row} |"));
        for m in meds {
            out.push_str(&format!(" {} |", fmt_num(*m)));
        }
        for &i in &others {
            out.push_str(&format!(" {} |", fixed(meds[me] / meds[i], 2)));
        }
        out.push('\n');
    }
    let Floors {
        socketpair_p50: base,
        relay_p50: relay,
    } = floors;
    out.push_str(&format!(
        "\nphysical floor: echo over a socketpair between two threads, no bus: p50 {} µs \
         (a bus round trip is two such hops each way, so the floor is 2 × {} = {} µs); \
         do-nothing relay process (epoll_wait, read, write per hop; the same round trip with a \
         process in the middle, as with a bus): p50 {} µs\n\n\
         | bus | rtt p50 [µs] | rtt p50 / (2 × floor) | relay p50 [µs] | rtt p50 / relay p50 |\n\
         |---|---|---|---|---|\n",
        fixed(base, 1),
        fixed(base, 1),
        fixed(2.0 * base, 1),
        fixed(relay, 1)
    ));
    for (bi, n) in names.iter().enumerate() {
        out.push_str(&format!(
            "| {n} | {} | {} | {} | {} |\n",
            fixed(med_rtt[bi], 1),
            fixed(med_rtt[bi] / (2.0 * base), 2),
            fixed(relay, 1),
            fixed(med_rtt[bi] / relay, 2)
        ));
    }
    if mem.iter().flatten().any(|m| m.rows.len() > 1) {
        out.push_str("\nmemory by process (VmRSS KiB: idle / + conns / + rules)\n\n| bus | process | idle | + conns | + rules |\n|---|---|---|---|---|\n");
        for (bi, m) in mem.iter().enumerate() {
            if m.is_none() {
                out.push_str(&format!("| {} | n/a | n/a | n/a | n/a |\n", names[bi]));
            }
            for r in m.iter().flat_map(|m| m.rows.iter()) {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    names[bi], r.name, r.idle, r.conns, r.rules
                ));
            }
        }
    }
    out
}

/// The `filtered` section: per bus the medians of rtt and fanout directly, through an
/// unfiltered Containers1 instance and through a filtered one, with the ratios (n/a for a bus
/// without Containers1 `Allow`), and the target for each bus that ran it.
fn report_filter(names: &[String], n: usize, k: usize, filter: &mut [FilterReport]) -> String {
    let mut out = format!(
        "\nfiltering cost (Containers1 Allow with N={n} rules, fanout K={k}; median over rounds; \
         n/a: the bus has no Containers1 Allow)\n\n{}",
        FilterReport::header("bus | ")
    );
    let mut verdicts = String::new();
    for (name, r) in names.iter().zip(filter.iter_mut()) {
        r.rules = n;
        r.subscribers = k;
        out.push_str(&r.rows(&format!("{name} | ")));
        if r.rounds() > 0 {
            verdicts.push_str(&format!("{name}: {}\n", r.verdict()));
        }
    }
    if !verdicts.is_empty() {
        out.push('\n');
        out.push_str(&verdicts);
    }
    out
}

/// Numbers for tables: large ones without decimals, small ones with enough to read.
fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".to_owned()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG of each histogram's CDF, log-scaled latency axis from the smallest p0 to the largest
/// p99.9 (the far tail is left out so the body of the distributions stays readable).
fn cdf_svg(series: &[(&str, &Histogram<u64>)]) -> String {
    const W: f64 = 860.0;
    const H: f64 = 420.0;
    const L: f64 = 60.0;
    const R: f64 = 290.0;
    const T: f64 = 20.0;
    const B: f64 = 50.0;
    const COLORS: [&str; 6] = [
        "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let us = |ns: u64| ns as f64 / 1000.0;
    let live: Vec<&(&str, &Histogram<u64>)> =
        series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let lo = live
        .iter()
        .map(|(_, h)| us(h.min()))
        .fold(f64::INFINITY, f64::min)
        .max(0.1);
    let hi = live
        .iter()
        .map(|(_, h)| us(h.value_at_quantile(0.999)))
        .fold(0.0, f64::max)
        .max(lo * 2.0);
    let (llo, lhi) = (lo.log10(), hi.log10());
    let x = |v: f64| L + (v.max(lo).min(hi).log10() - llo) / (lhi - llo) * (W - L - R);
    let y = |q: f64| T + (1.0 - q) * (H - T - B);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"14\" text-anchor=\"middle\">method call round trip latency, CDF (all rounds)</text>\n",
        (L + W - R) / 2.0
    );
    // Axes, grid and labels.
    for q in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
        out.push_str(&format!(
            "<line x1=\"{L}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{2}\" y=\"{3:.1}\" text-anchor=\"end\">{q}</text>\n",
            y(q),
            W - R,
            L - 6.0,
            y(q) + 4.0
        ));
    }
    let mut decade = 10f64.powf(llo.floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo && v <= hi {
                out.push_str(&format!(
                    "<line x1=\"{0:.1}\" y1=\"{T}\" x2=\"{0:.1}\" y2=\"{1}\" stroke=\"#ddd\"/>\
                     <text x=\"{0:.1}\" y=\"{2}\" text-anchor=\"middle\">{3}</text>\n",
                    x(v),
                    H - B,
                    H - B + 16.0,
                    fmt_num(v)
                ));
            }
        }
        decade *= 10.0;
    }
    out.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">latency [µs, log scale]</text>\n\
         <rect x=\"{L}\" y=\"{T}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n",
        (L + W - R) / 2.0,
        H - 12.0,
        W - L - R,
        H - T - B
    ));
    for (i, (name, h)) in live.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut pts = Vec::new();
        for step in 0..=400 {
            let q = step as f64 / 400.0 * 0.999;
            pts.push(format!("{:.1},{:.1}", x(us(h.value_at_quantile(q))), y(q)));
        }
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <line x1=\"{2}\" y1=\"{3}\" x2=\"{4}\" y2=\"{3}\" stroke=\"{color}\" stroke-width=\"3\"/>\
             <text x=\"{5}\" y=\"{6}\">{1} (p50 {7:.1} µs)</text>\n",
            pts.join(" "),
            xml_escape(name),
            W - R + 10.0,
            T + 10.0 + 20.0 * i as f64,
            W - R + 30.0,
            W - R + 34.0,
            T + 14.0 + 20.0 * i as f64,
            us(h.value_at_quantile(0.5))
        ));
    }
    out.push_str("</svg>\n");
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
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
                    out.push_str(&format!(" {} |", fixed(m, 1)));
                }
                let ratio = meds.last().copied().unwrap_or(f64::NAN)
                    / meds.first().copied().unwrap_or(f64::NAN);
                out.push_str(&format!(" {} |\n", fixed(ratio, 2)));
            }
        }
    }
    out.push_str("\nmethod call round trip (rtt), p50 in µs, median over rounds\n\n| bus | rtt p50 |\n|---|---|\n");
    for (bi, name) in names.iter().enumerate() {
        let m = rtt.get_mut(&bi).map(|v| median(v)).unwrap_or(f64::NAN);
        out.push_str(&format!("| {name} | {} |\n", fixed(m, 1)));
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

    /// Options for the report tests: one round, the given R values and pair counts.
    fn test_opts(rules: Vec<usize>, pairs: Vec<usize>) -> CompareOpts {
        CompareOpts {
            sluicebus: "x".into(),
            dbus_daemon: "y".into(),
            busd: None,
            buses: vec![],
            config: "c".into(),
            rounds: 1,
            rules,
            subscribers: vec![1],
            count: 5,
            warmup: 0,
            progress: false,
            pairs,
            inflight: 1,
            sizes: vec![],
            mem_conns: 0,
            mem_rules: 0,
            svg: None,
            filter_rules: 1000,
            pin: None,
            pin_bus: None,
        }
    }

    #[test]
    fn report_has_ratio_column() {
        let o = test_opts(vec![10, 10000], vec![1]);
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

    /// A scratch directory removed at the end of the test.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir()
                .join(format!("sluicebus-bench-test-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }

        /// Creates `rel` (and its directories) with the given mode.
        fn file(&self, rel: &str, mode: u32) -> PathBuf {
            use std::os::unix::fs::PermissionsExt;
            let p = self.0.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn find_busd_order_and_rejections() {
        let t = Scratch::new("find-busd");
        let os = |p: &Path| p.as_os_str().to_owned();
        let a = t.0.join("a");
        let b = t.0.join("b");
        let cargo = t.0.join("cargo");
        let home = t.0.join("home");
        let path = std::env::join_paths([&a, &b]).unwrap();
        let find = |explicit: Option<&Path>| {
            find_busd(
                explicit,
                Some(&path),
                Some(os(&cargo).as_os_str()),
                Some(os(&home).as_os_str()),
            )
        };
        assert_eq!(find(None), None, "nothing installed yet");
        // Not executable, and a directory named busd: neither counts.
        t.file("a/busd", 0o644);
        std::fs::create_dir_all(b.join("busd")).unwrap();
        assert_eq!(find(None), None);
        let in_home = t.file("home/.cargo/bin/busd", 0o755);
        assert_eq!(find(None), Some(in_home.clone()));
        let in_cargo = t.file("cargo/bin/busd", 0o755);
        assert_eq!(find(None), Some(in_cargo), "CARGO_HOME before HOME");
        let on_path = t.file("a/busd", 0o755);
        assert_eq!(find(None), Some(on_path), "PATH first");
        // An explicit path wins, and a bad one is not replaced by the lookup.
        assert_eq!(find(Some(&in_home)), Some(in_home.clone()));
        assert_eq!(find(Some(&t.0.join("missing"))), None);
        assert_eq!(find(Some(&b.join("busd"))), None);
        // Empty or absent variables are ignored, not taken as the current directory or root.
        assert_eq!(
            find_busd(None, Some(OsStr::new("")), Some(OsStr::new("")), None),
            None
        );
        assert_eq!(
            find_busd(None, None, None, Some(os(&home).as_os_str())),
            Some(in_home)
        );
    }

    #[test]
    fn start_busd_missing_binary_is_an_error_not_a_panic() {
        let t = Scratch::new("missing-busd");
        let e = start_busd(Some(&t.0.join("nope")), Path::new("/dev/null"), &t.0)
            .err()
            .expect("no binary, no bus");
        assert!(e.to_string().contains("not an executable"), "{e}");
    }

    #[test]
    fn start_busd_falls_back_when_config_refused() {
        // A stand-in busd: exits 1 when given --config, else prints the address and then
        // never answers Hello; the fallback must be tried and then time out, not hang.
        let t = Scratch::new("fallback-busd");
        let bin = t.0.join("busd");
        std::fs::write(
            &bin,
            "#!/bin/sh\nfor a; do [ \"$a\" = --config ] && exit 1; done\ntouch \"$0.plain\"\nexit 3\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Writing and then running a file races with other test threads forking (the child
        // briefly holds the write descriptor): "Text file busy". Retry that one.
        let mut tries = 0;
        let e = loop {
            let e = start_busd(Some(&bin), Path::new("/dev/null"), &t.0)
                .err()
                .expect("the stand-in never gets ready");
            tries += 1;
            if !e.to_string().contains("Text file busy") || tries == 20 {
                break e;
            }
            thread::sleep(Duration::from_millis(50));
        };
        assert!(e.to_string().contains("exited"), "{e}");
        assert!(t.0.join("busd.plain").exists(), "retried without --config");
    }

    #[test]
    fn other_table_has_a_column_and_ratio_per_bus_and_na_cells() {
        let names: Vec<String> = ["sluicebus", "dbus-daemon", "busd"]
            .map(String::from)
            .to_vec();
        let mut other = Metrics::new();
        push(&mut other, "fdpass p50 [µs]", 0, 10.0);
        push(&mut other, "fdpass p50 [µs]", 1, 20.0);
        // busd failed fdpass: its row was only touched.
        touch(&mut other, "fdpass p50 [µs]");
        let mut rtt = BTreeMap::new();
        rtt.insert(0, vec![30.0]);
        rtt.insert(2, vec![60.0]);
        let floors = Floors {
            socketpair_p50: 5.0,
            relay_p50: 20.0,
        };
        let s = report_other(&names, &mut other, &mut rtt, floors, &[None, None, None]);
        assert!(
            s.contains(
                "| scenario | sluicebus | dbus-daemon | busd | sluicebus / dbus-daemon | sluicebus / busd |"
            ),
            "{s}"
        );
        assert!(
            s.contains("| rtt p50 [µs] | 30.0 | n/a | 60.0 | n/a | 0.50 |"),
            "{s}"
        );
        assert!(
            s.contains("| fdpass p50 [µs] | 10.0 | 20.0 | n/a | 0.50 | n/a |"),
            "{s}"
        );
        assert!(s.contains("| busd | 60.0 | 6.00 | 20.0 | 3.00 |"), "{s}");
        assert!(
            s.contains("| sluicebus | 30.0 | 3.00 | 20.0 | 1.50 |"),
            "{s}"
        );
        assert!(
            s.contains("| dbus-daemon | n/a | n/a | 20.0 | n/a |"),
            "{s}"
        );
        assert!(
            s.contains("floor is 2 × 5.0 = 10.0 µs); do-nothing relay process"),
            "{s}"
        );
        assert!(s.contains("): p50 20.0 µs\n"), "{s}");
        assert!(!s.contains("NaN"), "{s}");
        // A relay that failed in every round: its cells are n/a, the socketpair floor stays.
        let floors = Floors {
            socketpair_p50: 5.0,
            relay_p50: f64::NAN,
        };
        let s = report_other(&names, &mut other, &mut rtt, floors, &[None, None, None]);
        assert!(s.contains("| sluicebus | 30.0 | 3.00 | n/a | n/a |"), "{s}");
        assert!(s.contains("): p50 n/a µs\n"), "{s}");
        assert!(!s.contains("NaN"), "{s}");
    }

    #[test]
    fn fanout_table_shows_missing_runs_as_na() {
        let o = test_opts(vec![10, 100], vec![]);
        let mut p50 = Runs::new();
        p50.insert((0, 1, 10), vec![10.0]);
        p50.insert((0, 1, 100), vec![15.0]);
        p50.insert((1, 1, 10), vec![12.0]);
        let mut p99 = Runs::new();
        let names: Vec<String> = ["sluicebus", "busd"].map(String::from).to_vec();
        let s = report(&names, &o, &mut p50, &mut p99, &mut BTreeMap::new());
        assert!(s.contains("| sluicebus | 1 | 10.0 | 15.0 | 1.50 |"), "{s}");
        assert!(s.contains("| busd | 1 | 12.0 | n/a | n/a |"), "{s}");
        assert!(s.contains("| busd | n/a |"), "{s}");
        assert!(!s.contains("NaN"), "{s}");
    }
}
