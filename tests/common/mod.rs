//! Shared harness for sluicebus integration tests.
//!
//! Every test starts its own private bus ([`TestBus`]) from a temporary config
//! listening on a `unix:path` in a temporary directory. The daemon binary is
//! `$SLUICEBUS_TEST_DAEMON` when set (so the same tests can be run against
//! `/usr/bin/dbus-daemon` to prove that they encode real dbus-daemon behaviour),
//! otherwise the `sluicebus` binary built by cargo.
//!
//! Clients: the CLI tools (dbus-send, gdbus, busctl, dbus-monitor), python3-dbus
//! scripts in `tests/py/`, and [`RawConn`], a minimal hand-written client that
//! can also send malformed input.
#![allow(dead_code)]

pub mod peers;

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Default timeout for anything that should happen "immediately".
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The bus driver's well-known name.
pub const DBUS: &str = "org.freedesktop.DBus";
/// The bus driver's object path.
pub const DBUS_PATH: &str = "/org/freedesktop/DBus";

/// Python interpreter that has python3-dbus (Debian's, not a pyenv shim).
pub const PYTHON: &str = "/usr/bin/python3";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh private temporary directory, removed by [`TempDir`]'s Drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Create a new directory under `$TMPDIR` (or /tmp).
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for attempt in 0..100 {
            let p = base.join(format!(
                "sluicebus-{}-{}-{}-{}-{}",
                tag,
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst),
                nanos,
                attempt
            ));
            if std::fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        panic!(
            "cannot create a temporary directory under {}",
            base.display()
        );
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // SLUICEBUS_TEST_KEEP=1 leaves the directories (daemon stderr, configs) for a post-mortem.
        if std::env::var_os("SLUICEBUS_TEST_KEEP").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `read` that retries when a signal interrupts it: the test process receives signals
/// (children exiting), and an interrupted read is not the end of the stream.
pub fn read_retrying(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Wait up to `grace` for `child` to exit after being asked to, then kill it; always reaped.
fn reap_within(child: &mut Child, grace: Duration) {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Poll `f` every 20 ms until it returns true or `timeout` passes; returns whether it did.
///
/// For waiting on something outside the bus's message order (a process starting or exiting,
/// a file appearing or going away), never for proving that something did not happen: for
/// that, use a sentinel ([`RawConn::sync`], [`RawConn::barrier`], [`RawConn::watch_departures`]).
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True when the tests run with effective uid 0.
pub fn running_as_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Say on stderr that `test` (or a part of it) is skipped and why: a test that cannot run
/// here returns early, but never silently.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP: {test}: {reason}");
}

/// The lines `r` produces, read in a thread until end of file (also after the receiver is
/// dropped, so a child writing to a pipe never gets SIGPIPE).
pub fn lines_of<R: Read + Send + 'static>(mut r: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while let Ok(1) = read_retrying(&mut r, &mut b) {
            if b[0] == b'\n' {
                let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
                line.clear();
            } else {
                line.push(b[0]);
            }
        }
    });
    rx
}

/// Path of the daemon under test.
pub fn daemon_path() -> PathBuf {
    match std::env::var_os("SLUICEBUS_TEST_DAEMON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_sluicebus")),
    }
}

/// The reference dbus-daemon the differential tests put beside the daemon under test.
#[track_caller]
pub fn reference_daemon() -> PathBuf {
    let p = PathBuf::from("/usr/bin/dbus-daemon");
    assert!(
        p.exists(),
        "{} is missing (tools/test installs dbus-daemon)",
        p.display()
    );
    p
}

/// The outcomes of a differential test, case by case: each case's transcript on sluicebus
/// and on the reference dbus-daemon; the differing ones are kept for one failure that shows
/// them all. With the environment variable `table` set, every case is printed.
pub struct SideBySide {
    show: bool,
    what: &'static str,
    diffs: Vec<String>,
}

impl SideBySide {
    /// Cases of `what` ("scenarios", "policies", ...), printed when `table` is set.
    pub fn new(what: &'static str, table: &str) -> SideBySide {
        SideBySide {
            show: std::env::var_os(table).is_some(),
            what,
            diffs: Vec::new(),
        }
    }

    /// Record case `title`: what sluicebus and the reference did.
    pub fn check(&mut self, title: &str, ours: &str, reference: &str) {
        let row = format!("== {title}\n-- sluicebus\n{ours}-- dbus-daemon\n{reference}");
        if self.show {
            eprintln!("{row}");
        }
        if ours != reference {
            self.diffs.push(row);
        }
    }

    /// Fail, showing every differing case, if there was one.
    #[track_caller]
    pub fn finish(self) {
        assert!(
            self.diffs.is_empty(),
            "{} {} differ:\n{}",
            self.diffs.len(),
            self.what,
            self.diffs.join("\n")
        );
    }
}

/// True when the tests run against the reference dbus-daemon.
pub fn is_reference_daemon() -> bool {
    daemon_path()
        .file_name()
        .map(|n| n == "dbus-daemon")
        .unwrap_or(false)
}

/// Directory of the python helper scripts.
pub fn py_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("py")
}

/// The policy used by default: the stock session bus policy.
pub const SESSION_POLICY: &str = r#"<policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>"#;

/// The text of a D-Bus service file (`[D-BUS Service]`) activating `name` with `exec`.
pub fn service_file_text(name: &str, exec: &str) -> String {
    format!("[D-BUS Service]\nName={name}\nExec={exec}\n")
}

/// Write `dir/NAME.service` activating `name` with `exec`.
pub fn write_service_file(dir: &Path, name: &str, exec: &str) {
    std::fs::write(
        dir.join(format!("{name}.service")),
        service_file_text(name, exec),
    )
    .expect("write a service file");
}

/// A session-like config whose body is `extra` plus the stock policy.
pub fn session_config(extra: &str) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  {SESSION_POLICY}
  {extra}
</busconfig>
"#
    )
}

/// How dbus-daemon describes this process in its log lines and refusals:
/// `uid=U pid=P comm="…"`, comm being the first 50 bytes of the command line with the
/// arguments joined by spaces.
pub fn loginfo_of_this_process() -> String {
    let raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let raw = &raw[..raw.len().min(50)];
    let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let cmd = String::from_utf8_lossy(&raw[..end]).replace('\0', " ");
    // SAFETY: getuid takes no arguments and cannot fail.
    let uid = unsafe { libc::getuid() };
    format!("uid={uid} pid={} comm=\"{cmd}\"", std::process::id())
}

/// Output of a finished (or timed-out) command.
#[derive(Debug)]
pub struct CmdOutput {
    /// Exit status; None when the command was killed after the timeout.
    pub status: Option<ExitStatus>,
    /// Captured stdout (lossy UTF-8).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8).
    pub stderr: String,
}

impl CmdOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.map(|s| s.success()).unwrap_or(false)
    }

    /// Panic with full diagnostics unless the command succeeded; returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success(), "command failed: {self:#?}");
        &self.stdout
    }
}

/// Run `cmd` with stdin closed, capturing output, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> CmdOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot spawn {cmd:?}: {e}"),
    };
    let out = reader_thread(child.stdout.take());
    let err = reader_thread(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    CmdOutput {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn reader_thread<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// A private bus daemon, killed on Drop.
pub struct TestBus {
    child: Child,
    /// The address the daemon printed (e.g. `unix:path=/tmp/…/bus,guid=…`).
    pub address: String,
    /// Path of the listening socket.
    pub socket: PathBuf,
    stderr_path: PathBuf,
    dir: TempDir,
}

impl TestBus {
    /// Start a bus with the stock session policy.
    pub fn start() -> TestBus {
        Self::with_config(&session_config(""))
    }

    /// Start a bus with the session policy plus `extra`, for Containers1 tests: a uid-0 bus
    /// puts container sockets in /run/dbus/containers, which packaging creates, so this
    /// creates it when running as root.
    pub fn for_containers(extra: &str) -> TestBus {
        if running_as_root() {
            let _ = std::fs::create_dir_all("/run/dbus/containers");
        }
        Self::with_config(&session_config(extra))
    }

    /// Start a bus with the session policy plus `<limit>` elements.
    pub fn with_limits(limits: &[(&str, u64)]) -> TestBus {
        let extra: String = limits
            .iter()
            .map(|(n, v)| format!("<limit name=\"{n}\">{v}</limit>\n"))
            .collect();
        Self::with_config(&session_config(&extra))
    }

    /// Start a bus from a complete config document. `<listen>` elements are
    /// overridden: the daemon always gets `--address=unix:path=<tempdir>/bus`.
    pub fn with_config(xml: &str) -> TestBus {
        let dir = TempDir::new("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, xml).expect("write config");
        Self::with_config_file(dir, &conf, &[])
    }

    /// Like [`TestBus::with_config`], with extra environment variables for the daemon.
    pub fn with_config_env(xml: &str, env: &[(&str, &Path)]) -> TestBus {
        let dir = TempDir::new("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, xml).expect("write config");
        Self::with_config_file(dir, &conf, env)
    }

    /// Like [`TestBus::with_config`], with `RUST_LOG` set but empty (which must mean the
    /// default level: refusals and activations logged), for tests that read the log.
    pub fn with_config_logging(xml: &str) -> TestBus {
        let dir = TempDir::new("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, xml).expect("write config");
        Self::with_config_file(dir, &conf, &[("RUST_LOG", Path::new(""))])
    }

    /// Like [`TestBus::with_config`], but `<dir>/bus.conf` is a symlink to
    /// [`TestBus::linked_config`] (`<dir>/real/bus.conf`): edits of that file change no
    /// directory the bus watches, so only SIGHUP or ReloadConfig reload it.
    pub fn with_linked_config(xml: &str) -> TestBus {
        let dir = TempDir::new("bus");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("create config directory");
        std::fs::write(real.join("bus.conf"), xml).expect("write config");
        let conf = dir.path().join("bus.conf");
        std::os::unix::fs::symlink("real/bus.conf", &conf).expect("link config");
        Self::with_config_file(dir, &conf, &[])
    }

    /// The file behind the symlink of [`TestBus::with_linked_config`].
    pub fn linked_config(&self) -> PathBuf {
        self.dir().join("real").join("bus.conf")
    }

    /// Like [`TestBus::with_config`], but `daemon` runs it whatever the daemon under test is
    /// (for tests that put sluicebus and dbus-daemon side by side).
    pub fn with_daemon(daemon: &Path, xml: &str) -> TestBus {
        let dir = TempDir::new("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, xml).expect("write config");
        Self::with_daemon_and_config_file(daemon, dir, &conf, &[])
    }

    /// Like [`TestBus::with_daemon`], or the daemon's complaint if it exits instead of
    /// printing its address (a configuration it refuses).
    pub fn try_with_daemon(daemon: &Path, xml: &str) -> Result<TestBus, String> {
        let dir = TempDir::new("bus");
        let conf = dir.path().join("bus.conf");
        std::fs::write(&conf, xml).expect("write config");
        Self::try_start(daemon, dir, &conf, &[])
    }

    fn with_config_file(dir: TempDir, conf: &Path, env: &[(&str, &Path)]) -> TestBus {
        Self::with_daemon_and_config_file(&daemon_path(), dir, conf, env)
    }

    fn with_daemon_and_config_file(
        daemon: &Path,
        dir: TempDir,
        conf: &Path,
        env: &[(&str, &Path)],
    ) -> TestBus {
        Self::try_start(daemon, dir, conf, env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start(
        daemon: &Path,
        dir: TempDir,
        conf: &Path,
        env: &[(&str, &Path)],
    ) -> Result<TestBus, String> {
        let socket = dir.path().join("bus");
        let stderr_path = dir.path().join("daemon.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr file");
        let mut child = Command::new(daemon)
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--print-address=1")
            .arg(format!("--address=unix:path={}", socket.display()))
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start daemon {}: {e}", daemon.display()));
        // The first line is the address; the rest is drained so the daemon never gets SIGPIPE.
        let rx = lines_of(child.stdout.take().expect("daemon stdout"));
        let address = match rx.recv_timeout(TIMEOUT) {
            Ok(a) => a.trim_end_matches('\r').to_string(),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(format!(
                    "daemon {} printed no address within {:?} (status {:?}); stderr:\n{}",
                    daemon.display(),
                    TIMEOUT,
                    status,
                    err
                ));
            }
        };
        assert!(
            address.starts_with("unix:"),
            "unexpected address line {address:?}"
        );
        Ok(TestBus {
            child,
            address,
            socket,
            stderr_path,
            dir,
        })
    }

    /// Pid of the daemon process (started with `--nofork`, so it is the one serving).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Scratch directory private to this bus (removed on Drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// True while the daemon process has not exited.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Assert that the daemon still runs and serves a brand-new client
    /// (Hello, GetId, ListNames, and dbus-send ListNames).
    #[track_caller]
    pub fn assert_alive(&mut self) {
        assert!(self.running(), "daemon exited; stderr:\n{}", self.stderr());
        let mut c = self.client();
        let id = c.driver("GetId", &[]).expect_return();
        let id = id.arg_str(0).to_string();
        assert_eq!(id.len(), 32, "GetId {id:?}");
        let names = c.driver("ListNames", &[]).expect_return().arg_strs(0);
        assert!(names.iter().any(|n| n == c.unique()), "{names:?}");
        let out = self.dbus_send(&[
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.ListNames",
        ]);
        assert!(out.ok().contains("org.freedesktop.DBus"), "{out:#?}");
    }

    /// A connected, authenticated raw client that has said Hello.
    pub fn client(&self) -> RawConn {
        let mut c = RawConn::connect(&self.address);
        c.auth_external();
        c.hello();
        c
    }

    /// A raw socket connection with nothing sent yet.
    pub fn raw(&self) -> RawConn {
        RawConn::connect(&self.address)
    }

    /// `dbus-send --bus=ADDR ARGS…`
    pub fn dbus_send(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("dbus-send");
        cmd.arg(format!("--bus={}", self.address)).args(args);
        run_with_timeout(cmd, TIMEOUT)
    }

    /// `gdbus SUBCOMMAND --address ADDR ARGS…`
    pub fn gdbus(&self, subcommand: &str, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("gdbus");
        cmd.arg(subcommand)
            .arg("--address")
            .arg(&self.address)
            .args(args);
        run_with_timeout(cmd, TIMEOUT)
    }

    /// `gdbus call` of a method on the bus driver.
    pub fn gdbus_driver(&self, method: &str, args: &[&str]) -> CmdOutput {
        let m = format!("org.freedesktop.DBus.{method}");
        let mut all = vec![
            "--dest",
            DBUS,
            "--object-path",
            DBUS_PATH,
            "--method",
            m.as_str(),
        ];
        all.extend_from_slice(args);
        self.gdbus("call", &all)
    }

    /// `busctl --address=ADDR ARGS…`
    pub fn busctl(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new("busctl");
        cmd.arg(format!("--address={}", self.address))
            .arg("--no-pager")
            .args(args);
        run_with_timeout(cmd, TIMEOUT)
    }

    /// Run `tests/py/client.py ADDR ARGS…` with python3-dbus.
    pub fn py_client(&self, args: &[&str]) -> CmdOutput {
        let mut cmd = Command::new(PYTHON);
        cmd.arg(py_dir().join("client.py"))
            .arg(&self.address)
            .args(args);
        run_with_timeout(cmd, TIMEOUT)
    }

    /// Start the python3-dbus echo service owning `name`.
    pub fn echo_service(&self, name: &str) -> PyService {
        PyService::start(&self.address, name)
    }

    /// Start an unfiltered `dbus-monitor` and wait until it sees traffic.
    pub fn monitor(&self) -> Monitor {
        Monitor::start(self)
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        // SIGTERM first so a well-behaved daemon can clean up its socket.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid; it has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        reap_within(&mut self.child, Duration::from_secs(2));
    }
}

/// A running python3-dbus echo service (tests/py/echo_service.py).
pub struct PyService {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Unique name of the service's connection.
    pub unique: String,
}

impl PyService {
    /// Start the service and wait until it owns `name`.
    pub fn start(address: &str, name: &str) -> PyService {
        let mut child = Command::new(PYTHON)
            .arg(py_dir().join("echo_service.py"))
            .arg(address)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn echo_service.py");
        let stdin = child.stdin.take();
        let rx = lines_of(child.stdout.take().expect("service stdout"));
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("echo service did not become ready");
            }
        };
        let unique = line
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("unexpected service output {line:?}"))
            .to_string();
        PyService {
            child,
            stdin,
            unique,
        }
    }

    /// Stop the service (closing its stdin) and wait for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stdin.take());
        reap_within(&mut self.child, Duration::from_secs(3));
    }
}

impl Drop for PyService {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An unfiltered dbus-monitor whose output is collected in the background.
pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Emits the probe signals that mark how far the monitor's output is complete.
    probe: RawConn,
    probes: u32,
}

impl Monitor {
    fn start(bus: &TestBus) -> Monitor {
        let mut child = Command::new("dbus-monitor")
            .arg("--address")
            .arg(&bus.address)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dbus-monitor");
        let stdout = child.stdout.take().expect("monitor stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        thread::spawn(move || {
            let mut stdout = stdout;
            let mut cur = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = read_retrying(&mut stdout, &mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if b == b'\n' {
                        if let Ok(mut v) = l2.lock() {
                            v.push(String::from_utf8_lossy(&cur).into_owned());
                        }
                        cur.clear();
                    } else {
                        cur.push(b);
                    }
                }
            }
        });
        let mut m = Monitor {
            child,
            lines,
            probe: bus.client(),
            probes: 0,
        };
        // The monitor is ready once it reports a probe signal sent after it started (it may
        // miss the ones sent before it has subscribed, so probe until one shows).
        let deadline = Instant::now() + TIMEOUT;
        while !m.probe_seen(Duration::from_millis(200)) {
            assert!(Instant::now() < deadline, "dbus-monitor never became ready");
        }
        m
    }

    /// Emit a new probe signal and wait up to `timeout` for the monitor to print it. Once it
    /// has, every message the bus showed the monitor before the probe is complete in
    /// [`Monitor::messages`] (dbus-monitor prints in order, a message's argument lines
    /// before the next message).
    fn probe_seen(&mut self, timeout: Duration) -> bool {
        self.probes += 1;
        let tag = format!("monitor-probe-{}", self.probes);
        self.probe.signal(
            None,
            "/probe",
            "org.example.Probe",
            "MonitorProbe",
            &[s(&tag)],
        );
        let want = format!("string \"{tag}\"");
        let deadline = Instant::now() + timeout;
        loop {
            if self.messages().iter().any(|m| m.contains(&want)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The messages seen so far, one string per message (header line + args).
    pub fn messages(&self) -> Vec<String> {
        let lines = self.lines.lock().map(|v| v.clone()).unwrap_or_default();
        let mut out: Vec<String> = Vec::new();
        for l in lines {
            if l.starts_with(' ') || l.starts_with('\t') {
                if let Some(last) = out.last_mut() {
                    last.push('\n');
                    last.push_str(&l);
                }
            } else if !l.is_empty() {
                out.push(l);
            }
        }
        out
    }

    /// Wait until a message satisfying `pred` has been seen; return it, complete with all its
    /// argument lines (a probe printed after it is the sentinel for that).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.messages().iter().any(|m| pred(m)) {
                assert!(self.probe_seen(TIMEOUT), "dbus-monitor stopped printing");
                return self.messages().into_iter().find(|m| pred(m));
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------

/// D-Bus message types.
pub mod msg_type {
    /// METHOD_CALL
    pub const METHOD_CALL: u8 = 1;
    /// METHOD_RETURN
    pub const METHOD_RETURN: u8 = 2;
    /// ERROR
    pub const ERROR: u8 = 3;
    /// SIGNAL
    pub const SIGNAL: u8 = 4;
}

/// Message flag NO_REPLY_EXPECTED.
pub const FLAG_NO_REPLY_EXPECTED: u8 = 0x1;
/// Message flag NO_AUTO_START.
pub const FLAG_NO_AUTO_START: u8 = 0x2;

/// A body argument or a parsed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    /// `s`
    Str(String),
    /// `o`
    Path(String),
    /// `g`
    Sig(String),
    /// `u`
    U32(u32),
    /// `i`
    I32(i32),
    /// `b`
    Bool(bool),
    /// `y`
    Byte(u8),
    /// `a…` of basic values
    Array(Vec<Arg>),
    /// Anything this small parser does not decode.
    Other,
}

impl Arg {
    fn sig(&self) -> &'static str {
        match self {
            Arg::Str(_) => "s",
            Arg::Path(_) => "o",
            Arg::Sig(_) => "g",
            Arg::U32(_) => "u",
            Arg::I32(_) => "i",
            Arg::Bool(_) => "b",
            Arg::Byte(_) => "y",
            Arg::Array(_) => "as",
            Arg::Other => "",
        }
    }
}

/// Shorthand for `Arg::Str`.
pub fn s(v: &str) -> Arg {
    Arg::Str(v.to_string())
}

/// Little-endian marshaller for the subset of types the tests need.
#[derive(Default)]
pub struct Writer {
    /// Bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    /// Pad with zeros to a multiple of `n`.
    pub fn pad(&mut self, n: usize) {
        while self.buf.len() % n != 0 {
            self.buf.push(0);
        }
    }
    /// BYTE
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// UINT32
    pub fn u32(&mut self, v: u32) {
        self.pad(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// STRING / OBJECT_PATH
    pub fn str(&mut self, v: &str) {
        self.u32(v.len() as u32);
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }
    /// SIGNATURE
    pub fn sig(&mut self, v: &str) {
        self.buf.push(v.len() as u8);
        self.buf.extend_from_slice(v.as_bytes());
        self.buf.push(0);
    }
    /// Any supported argument.
    pub fn arg(&mut self, a: &Arg) {
        match a {
            Arg::Str(v) | Arg::Path(v) => self.str(v),
            Arg::Sig(v) => self.sig(v),
            Arg::U32(v) => self.u32(*v),
            Arg::I32(v) => self.u32(*v as u32),
            Arg::Bool(v) => self.u32(u32::from(*v)),
            Arg::Byte(v) => self.u8(*v),
            Arg::Array(items) => {
                self.u32(0);
                let len_at = self.buf.len() - 4;
                let start = self.buf.len();
                for i in items {
                    self.arg(i);
                }
                let len = (self.buf.len() - start) as u32;
                self.buf[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
            }
            Arg::Other => {}
        }
    }
}

/// Fields of a message to build with [`build_message`].
#[derive(Default, Clone)]
pub struct MsgSpec<'a> {
    /// Message type (see [`msg_type`]).
    pub msg_type: u8,
    /// Flags byte.
    pub flags: u8,
    /// Serial.
    pub serial: u32,
    /// PATH field.
    pub path: Option<&'a str>,
    /// INTERFACE field.
    pub interface: Option<&'a str>,
    /// MEMBER field.
    pub member: Option<&'a str>,
    /// ERROR_NAME field.
    pub error_name: Option<&'a str>,
    /// REPLY_SERIAL field.
    pub reply_serial: Option<u32>,
    /// DESTINATION field.
    pub destination: Option<&'a str>,
    /// SIGNATURE field override (default: derived from `args`).
    pub signature: Option<&'a str>,
    /// Body arguments.
    pub args: &'a [Arg],
    /// UNIX_FDS field (fds sent alongside, e.g. with `sendmsg`).
    pub unix_fds: Option<u32>,
}

/// Marshal a little-endian message.
pub fn build_message(m: &MsgSpec<'_>) -> Vec<u8> {
    let mut body = Writer::default();
    let mut sig = String::new();
    for a in m.args {
        body.arg(a);
        sig.push_str(a.sig());
    }
    let sig = m.signature.map(str::to_string).unwrap_or(sig);
    let mut w = Writer::default();
    w.u8(b'l');
    w.u8(m.msg_type);
    w.u8(m.flags);
    w.u8(1);
    w.u32(body.buf.len() as u32);
    w.u32(m.serial);
    w.u32(0); // header fields array length, patched below
    let fields_start = w.buf.len(); // 16, already 8-aligned
    let field = |w: &mut Writer, code: u8, ty: &str, val: &Arg| {
        w.pad(8);
        w.u8(code);
        w.sig(ty);
        w.arg(val);
    };
    if let Some(p) = m.path {
        field(&mut w, 1, "o", &Arg::Path(p.into()));
    }
    if let Some(v) = m.interface {
        field(&mut w, 2, "s", &s(v));
    }
    if let Some(v) = m.member {
        field(&mut w, 3, "s", &s(v));
    }
    if let Some(v) = m.error_name {
        field(&mut w, 4, "s", &s(v));
    }
    if let Some(v) = m.reply_serial {
        field(&mut w, 5, "u", &Arg::U32(v));
    }
    if let Some(v) = m.destination {
        field(&mut w, 6, "s", &s(v));
    }
    if !sig.is_empty() {
        field(&mut w, 8, "g", &Arg::Sig(sig));
    }
    if let Some(n) = m.unix_fds {
        field(&mut w, 9, "u", &Arg::U32(n));
    }
    let flen = (w.buf.len() - fields_start) as u32;
    w.buf[12..16].copy_from_slice(&flen.to_le_bytes());
    w.pad(8);
    w.buf.extend_from_slice(&body.buf);
    w.buf
}

/// A parsed incoming message.
#[derive(Debug, Clone, Default)]
pub struct RawMsg {
    /// Message type.
    pub msg_type: u8,
    /// Flags.
    pub flags: u8,
    /// Serial.
    pub serial: u32,
    /// PATH
    pub path: Option<String>,
    /// INTERFACE
    pub interface: Option<String>,
    /// MEMBER
    pub member: Option<String>,
    /// ERROR_NAME
    pub error_name: Option<String>,
    /// REPLY_SERIAL
    pub reply_serial: Option<u32>,
    /// DESTINATION
    pub destination: Option<String>,
    /// SENDER
    pub sender: Option<String>,
    /// SIGNATURE (empty if absent)
    pub signature: String,
    /// UNIX_FDS
    pub unix_fds: Option<u32>,
    /// Codes of header fields this parser does not know (should be none:
    /// the bus strips them).
    pub unknown_fields: Vec<u8>,
    /// Decoded body (basic types and arrays of them only).
    pub args: Vec<Arg>,
}

impl RawMsg {
    /// Panic unless this is a METHOD_RETURN; returns self for chaining.
    #[track_caller]
    pub fn expect_return(self) -> RawMsg {
        assert_eq!(
            self.msg_type,
            msg_type::METHOD_RETURN,
            "expected a method return, got {self:#?}"
        );
        self
    }

    /// Panic unless this is an ERROR named `name`.
    #[track_caller]
    pub fn expect_error(self, name: &str) -> RawMsg {
        assert_eq!(
            self.msg_type,
            msg_type::ERROR,
            "expected error {name}, got {self:#?}"
        );
        assert_eq!(self.error_name.as_deref(), Some(name), "{self:#?}");
        self
    }

    /// String argument `i` (panics if absent or not a string).
    #[track_caller]
    pub fn arg_str(&self, i: usize) -> &str {
        match self.args.get(i) {
            Some(Arg::Str(v)) | Some(Arg::Path(v)) => v,
            other => panic!("arg {i} is {other:?} in {self:#?}"),
        }
    }

    /// UINT32 argument `i`.
    #[track_caller]
    pub fn arg_u32(&self, i: usize) -> u32 {
        match self.args.get(i) {
            Some(Arg::U32(v)) => *v,
            other => panic!("arg {i} is {other:?} in {self:#?}"),
        }
    }

    /// BOOLEAN argument `i`.
    #[track_caller]
    pub fn arg_bool(&self, i: usize) -> bool {
        match self.args.get(i) {
            Some(Arg::Bool(v)) => *v,
            other => panic!("arg {i} is {other:?} in {self:#?}"),
        }
    }

    /// `as` argument `i`.
    #[track_caller]
    pub fn arg_strs(&self, i: usize) -> Vec<String> {
        match self.args.get(i) {
            Some(Arg::Array(v)) => v
                .iter()
                .map(|a| match a {
                    Arg::Str(s) => s.clone(),
                    other => panic!("array element {other:?}"),
                })
                .collect(),
            other => panic!("arg {i} is {other:?} in {self:#?}"),
        }
    }

    /// True for a signal with this member from the driver.
    pub fn is_driver_signal(&self, member: &str) -> bool {
        self.msg_type == msg_type::SIGNAL
            && self.member.as_deref() == Some(member)
            && self.sender.as_deref() == Some(DBUS)
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
}

impl Reader<'_> {
    fn align(&mut self, n: usize) -> Option<()> {
        let p = self.pos.checked_add(n - 1)? / n * n;
        if p > self.buf.len() {
            return None;
        }
        self.pos = p;
        Some(())
    }
    fn u8(&mut self) -> Option<u8> {
        let v = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }
    fn u32(&mut self) -> Option<u32> {
        self.align(4)?;
        let b: [u8; 4] = self.buf.get(self.pos..self.pos + 4)?.try_into().ok()?;
        self.pos += 4;
        Some(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let v = self.buf.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(v)
    }
    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        let v = String::from_utf8_lossy(self.bytes(n)?).into_owned();
        self.u8()?;
        Some(v)
    }
    fn signature(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        let v = String::from_utf8_lossy(self.bytes(n)?).into_owned();
        self.u8()?;
        Some(v)
    }
    /// Read one complete type from `sig` starting at `*i`.
    fn value(&mut self, sig: &[u8], i: &mut usize) -> Option<Arg> {
        let c = *sig.get(*i)?;
        *i += 1;
        Some(match c {
            b's' => Arg::Str(self.string()?),
            b'o' => Arg::Path(self.string()?),
            b'g' => Arg::Sig(self.signature()?),
            b'u' => Arg::U32(self.u32()?),
            b'i' => Arg::I32(self.u32()? as i32),
            b'b' => Arg::Bool(self.u32()? != 0),
            b'y' => Arg::Byte(self.u8()?),
            b'h' => Arg::U32(self.u32()?),
            b'a' => {
                let elem = *sig.get(*i)?;
                if !b"sogyuib".contains(&elem) {
                    return None;
                }
                let len = self.u32()? as usize;
                if elem == b'y' {
                    *i += 1;
                    let v = self.bytes(len)?.iter().map(|&b| Arg::Byte(b)).collect();
                    return Some(Arg::Array(v));
                }
                let end = self.pos.checked_add(len)?;
                let mut v = Vec::new();
                let start_i = *i;
                while self.pos < end {
                    let mut j = start_i;
                    v.push(self.value(sig, &mut j)?);
                }
                *i = start_i + 1;
                Arg::Array(v)
            }
            _ => return None,
        })
    }
}

/// A method call to the bus driver (`org.freedesktop.DBus.MEMBER`, no arguments), marshalled
/// with the given serial, for tests that write raw bytes.
pub fn driver_call_bytes(serial: u32, member: &str) -> Vec<u8> {
    build_message(&MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        serial,
        path: Some(DBUS_PATH),
        interface: Some(DBUS),
        member: Some(member),
        destination: Some(DBUS),
        ..Default::default()
    })
}

/// Parse one complete message from `buf`; returns (message, bytes consumed),
/// Ok(None) when more bytes are needed, Err on garbage.
pub fn parse_message(buf: &[u8]) -> Result<Option<(RawMsg, usize)>, String> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let big = match buf[0] {
        b'l' => false,
        b'B' => true,
        other => return Err(format!("bad endianness byte {other:#x}")),
    };
    let mut r = Reader { buf, pos: 4, big };
    let body_len = r.u32().ok_or("short")? as usize;
    let serial = r.u32().ok_or("short")?;
    let flen = r.u32().ok_or("short")? as usize;
    let hdr_end = 16usize.checked_add(flen).ok_or("overflow")?;
    let body_start = hdr_end.checked_add(7).ok_or("overflow")? / 8 * 8;
    let total = body_start.checked_add(body_len).ok_or("overflow")?;
    if buf.len() < total {
        return Ok(None);
    }
    let mut m = RawMsg {
        msg_type: buf[1],
        flags: buf[2],
        serial,
        ..Default::default()
    };
    let mut r = Reader {
        buf: &buf[..hdr_end],
        pos: 16,
        big,
    };
    while r.pos < hdr_end {
        r.align(8).ok_or("bad header padding")?;
        if r.pos >= hdr_end {
            break;
        }
        let code = r.u8().ok_or("short field")?;
        let ty = r.signature().ok_or("short field sig")?;
        let mut i = 0;
        let v = r
            .value(ty.as_bytes(), &mut i)
            .ok_or_else(|| format!("cannot decode header field {code} of type {ty}"))?;
        let text = match &v {
            Arg::Str(x) | Arg::Path(x) | Arg::Sig(x) => Some(x.clone()),
            _ => None,
        };
        let num = match v {
            Arg::U32(x) => Some(x),
            _ => None,
        };
        match code {
            1 => m.path = text,
            2 => m.interface = text,
            3 => m.member = text,
            4 => m.error_name = text,
            5 => m.reply_serial = num,
            6 => m.destination = text,
            7 => m.sender = text,
            8 => m.signature = text.unwrap_or_default(),
            9 => m.unix_fds = num,
            other => m.unknown_fields.push(other),
        }
    }
    let mut r = Reader {
        buf: &buf[body_start..total],
        pos: 0,
        big,
    };
    let sig = m.signature.clone().into_bytes();
    let mut i = 0;
    while i < sig.len() {
        match r.value(&sig, &mut i) {
            Some(v) => m.args.push(v),
            None => {
                m.args.push(Arg::Other);
                break;
            }
        }
    }
    Ok(Some((m, total)))
}

/// Extract the socket path (or abstract name) of the first unix address.
pub fn unix_socket_of(address: &str) -> (bool, String) {
    for addr in address.split(';') {
        let Some(rest) = addr.strip_prefix("unix:") else {
            continue;
        };
        for kv in rest.split(',') {
            if let Some(v) = kv.strip_prefix("path=") {
                return (false, unescape(v));
            }
            if let Some(v) = kv.strip_prefix("abstract=") {
                return (true, unescape(v));
            }
        }
    }
    panic!("no unix:path/abstract in address {address:?}");
}

fn unescape(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hexpair = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(x) = u8::from_str_radix(hexpair, 16) {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Hex-encode ASCII as SASL expects.
pub fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A minimal hand-written D-Bus client over a unix socket.
pub struct RawConn {
    /// The socket.
    pub stream: UnixStream,
    inbuf: Vec<u8>,
    stash: VecDeque<RawMsg>,
    serial: u32,
    unique: String,
    /// Set once a read saw end of file (or a hard error).
    eof: bool,
}

impl RawConn {
    /// Connect to the first unix address in `address`.
    pub fn connect(address: &str) -> RawConn {
        let (abstract_ns, path) = unix_socket_of(address);
        let stream = if abstract_ns {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(path.as_bytes())
                .expect("abstract address");
            UnixStream::connect_addr(&sa)
        } else {
            UnixStream::connect(&path)
        }
        .unwrap_or_else(|e| panic!("connect {address}: {e}"));
        RawConn {
            stream,
            inbuf: Vec::new(),
            stash: VecDeque::new(),
            serial: 0,
            unique: String::new(),
            eof: false,
        }
    }

    /// Our unique name (after [`RawConn::hello`]).
    pub fn unique(&self) -> &str {
        &self.unique
    }

    /// Write raw bytes; errors (peer already closed) are returned, not panicked.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Read one `\r\n`-terminated SASL line (without the terminator).
    pub fn read_line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.inbuf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.inbuf[..pos]).into_owned();
                self.inbuf.drain(..pos + 2);
                return Some(line);
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Read more bytes into the buffer; false on EOF, error or timeout.
    fn fill(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let _ = self
            .stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
        let mut buf = [0u8; 65536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    return false;
                }
                Ok(n) => {
                    self.inbuf.extend_from_slice(&buf[..n]);
                    return true;
                }
                // A signal to the test process (a child exiting) is not a timeout.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    return false
                }
                Err(_) => {
                    self.eof = true;
                    return false;
                }
            }
        }
    }

    /// NUL byte, SASL EXTERNAL with our uid, then BEGIN. Panics on failure.
    pub fn auth_external(&mut self) {
        self.send_bytes(b"\0").expect("send NUL");
        self.auth_external_no_nul();
    }

    /// Like [`RawConn::auth_external`] when the leading NUL was already sent.
    pub fn auth_external_no_nul(&mut self) {
        // SAFETY: getuid takes no arguments and cannot fail.
        let uid = unsafe { libc::getuid() };
        self.send_bytes(format!("AUTH EXTERNAL {}\r\n", hex(&uid.to_string())).as_bytes())
            .expect("send AUTH");
        let line = self.read_line(TIMEOUT).expect("no answer to AUTH");
        assert!(line.starts_with("OK "), "AUTH EXTERNAL answered {line:?}");
        self.send_bytes(b"BEGIN\r\n").expect("send BEGIN");
    }

    /// Next serial number.
    pub fn next_serial(&mut self) -> u32 {
        self.serial += 1;
        self.serial
    }

    /// Send a message built from `spec` (serial assigned if 0); returns the serial.
    pub fn send(&mut self, mut spec: MsgSpec<'_>) -> u32 {
        if spec.serial == 0 {
            spec.serial = self.next_serial();
        }
        let bytes = build_message(&spec);
        self.send_bytes(&bytes).expect("send message");
        spec.serial
    }

    /// Send a method call; returns its serial.
    pub fn call(
        &mut self,
        dest: Option<&str>,
        path: &str,
        iface: Option<&str>,
        member: &str,
        args: &[Arg],
    ) -> u32 {
        self.send(MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            path: Some(path),
            interface: iface,
            member: Some(member),
            destination: dest,
            args,
            ..Default::default()
        })
    }

    /// Emit a signal (broadcast when `dest` is None); returns its serial.
    pub fn signal(
        &mut self,
        dest: Option<&str>,
        path: &str,
        iface: &str,
        member: &str,
        args: &[Arg],
    ) -> u32 {
        self.send(MsgSpec {
            msg_type: msg_type::SIGNAL,
            path: Some(path),
            interface: Some(iface),
            member: Some(member),
            destination: dest,
            args,
            ..Default::default()
        })
    }

    /// Receive the next message (stashed ones first).
    pub fn recv(&mut self, timeout: Duration) -> Option<RawMsg> {
        if let Some(m) = self.stash.pop_front() {
            return Some(m);
        }
        self.recv_wire(Instant::now() + timeout)
    }

    fn recv_wire(&mut self, deadline: Instant) -> Option<RawMsg> {
        loop {
            match parse_message(&self.inbuf) {
                Ok(Some((m, n))) => {
                    self.inbuf.drain(..n);
                    return Some(m);
                }
                Ok(None) => {}
                Err(e) => panic!("bus sent unparsable data: {e}"),
            }
            if !self.fill(deadline) {
                return None;
            }
        }
    }

    /// Wait for the reply to `serial`, stashing other messages for [`RawConn::recv`].
    #[track_caller]
    pub fn wait_reply(&mut self, serial: u32) -> RawMsg {
        let deadline = Instant::now() + TIMEOUT;
        if let Some(pos) = self
            .stash
            .iter()
            .position(|m| m.reply_serial == Some(serial))
        {
            return self.stash.remove(pos).expect("stashed");
        }
        loop {
            match self.recv_wire(deadline) {
                Some(m) if m.reply_serial == Some(serial) => return m,
                Some(m) => self.stash.push_back(m),
                None => panic!("no reply to serial {serial} within {TIMEOUT:?}"),
            }
        }
    }

    /// Call a bus driver method and wait for its reply.
    #[track_caller]
    pub fn driver(&mut self, member: &str, args: &[Arg]) -> RawMsg {
        let serial = self.call(Some(DBUS), DBUS_PATH, Some(DBUS), member, args);
        self.wait_reply(serial)
    }

    /// Say Hello and remember the unique name.
    #[track_caller]
    pub fn hello(&mut self) -> String {
        let r = self.driver("Hello", &[]).expect_return();
        self.unique = r.arg_str(0).to_string();
        self.unique.clone()
    }

    /// RequestName → reply code.
    #[track_caller]
    pub fn request_name(&mut self, name: &str, flags: u32) -> u32 {
        self.driver("RequestName", &[s(name), Arg::U32(flags)])
            .expect_return()
            .arg_u32(0)
    }

    /// ReleaseName → reply code.
    #[track_caller]
    pub fn release_name(&mut self, name: &str) -> u32 {
        self.driver("ReleaseName", &[s(name)])
            .expect_return()
            .arg_u32(0)
    }

    /// AddMatch, panicking unless it succeeds.
    #[track_caller]
    pub fn add_match(&mut self, rule: &str) {
        self.driver("AddMatch", &[s(rule)]).expect_return();
    }

    /// The messages already received (stash first) plus those readable right now, without
    /// waiting for more. Not a way to show that something was not delivered (use
    /// [`RawConn::sync`]); for keeping a busy connection's queue short.
    pub fn take_ready(&mut self) -> Vec<RawMsg> {
        let mut v: Vec<RawMsg> = self.stash.drain(..).collect();
        let deadline = Instant::now() + Duration::from_millis(1);
        while let Some(m) = self.recv_wire(deadline) {
            v.push(m);
        }
        v
    }

    /// Round-trip sentinel: call the driver's GetId and return every message that reached
    /// this connection before the reply (stashed ones first), consuming them.
    ///
    /// The bus writes a connection's messages in order, so anything it had queued for this
    /// connection before it answered is in the result; together with [`RawConn::barrier`]
    /// on the sender (or a reply the sender waited for), this proves that a message was *not*
    /// delivered without waiting for a time window.
    #[track_caller]
    pub fn sync(&mut self) -> Vec<RawMsg> {
        let serial = self.call(Some(DBUS), DBUS_PATH, Some(DBUS), "GetId", &[]);
        let (before, reply) = self.recv_until(TIMEOUT, |m| m.reply_serial == Some(serial));
        let reply =
            reply.unwrap_or_else(|| panic!("no reply to the sync GetId within {TIMEOUT:?}"));
        assert_eq!(
            reply.msg_type,
            msg_type::METHOD_RETURN,
            "sync GetId failed: {reply:#?}"
        );
        before
    }

    /// Round trip to the driver that leaves earlier messages for [`RawConn::recv`]: once it
    /// returns, the bus has processed (routed, refused or dropped) everything this connection
    /// sent before it.
    #[track_caller]
    pub fn barrier(&mut self) {
        self.driver("GetId", &[]).expect_return();
    }

    /// [`RawConn::sync`], then panic if any message before the sentinel satisfies `pred`.
    #[track_caller]
    pub fn assert_none_before_sentinel(&mut self, what: &str, pred: impl Fn(&RawMsg) -> bool) {
        let got = self.sync();
        assert!(!got.iter().any(pred), "{what}: {got:#?}");
    }

    /// Subscribe to the driver's NameOwnerChanged signals, to see other connections leave
    /// ([`RawConn::next_departure`]).
    #[track_caller]
    pub fn watch_departures(&mut self) {
        self.add_match(
            "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'",
        );
    }

    /// Wait (up to [`TIMEOUT`]) until the bus announces that a unique name other than ours
    /// left, and return the messages received before that announcement plus the name. A
    /// departure is a sentinel for everything the departed connection sent: the bus handles
    /// a connection's messages before its hang-up. Needs [`RawConn::watch_departures`].
    #[track_caller]
    pub fn next_departure(&mut self) -> (Vec<RawMsg>, String) {
        let me = self.unique.clone();
        let (before, m) = self.recv_until(TIMEOUT, |m| {
            m.is_driver_signal("NameOwnerChanged")
                && matches!(m.args.as_slice(),
                    [Arg::Str(n), Arg::Str(old), Arg::Str(new)]
                        if n.starts_with(':') && *n == *old && new.is_empty() && *n != me)
        });
        let m = m.unwrap_or_else(|| panic!("no connection left within {TIMEOUT:?}: {before:#?}"));
        (before, m.arg_str(0).to_string())
    }

    /// Receive until a message satisfying `pred`; earlier ones are returned too.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&RawMsg) -> bool,
    ) -> (Vec<RawMsg>, Option<RawMsg>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(m) = self.stash.pop_front() {
            if pred(&m) {
                return (seen, Some(m));
            }
            seen.push(m);
        }
        while let Some(m) = self.recv_wire(deadline) {
            if pred(&m) {
                return (seen, Some(m));
            }
            seen.push(m);
        }
        (seen, None)
    }

    /// Every message the bus sends (stash first) until it closes the connection, and whether
    /// it closed it within `timeout`. The close is the sentinel: nothing can come after it.
    pub fn until_closed(&mut self, timeout: Duration) -> (Vec<RawMsg>, bool) {
        let mut v: Vec<RawMsg> = self.stash.drain(..).collect();
        let deadline = Instant::now() + timeout;
        while let Some(m) = self.recv_wire(deadline) {
            v.push(m);
        }
        (v, self.eof)
    }

    /// True if the bus closes the connection within `timeout` (anything it
    /// still sends is discarded).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(deadline - now));
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    return false
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }
}
