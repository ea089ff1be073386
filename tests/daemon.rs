//! Process-level startup, checked against dbus-daemon's behaviour: command-line exit codes,
//! forking, the pid file, `--print-*` descriptors, the built-in configuration, launchers
//! (dbus-run-session and Debian's installed fork test), sd_notify and `<user>`.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const FORK_SCRIPT: &str = "/usr/lib/dbus-1.0/installed-tests/dbus/test-dbus-daemon-fork.sh";
const TESTS_DATA: &str = "/usr/lib/dbus-1.0/installed-tests/dbus/data";

/// Environment variable marking every process a test started, so a daemon that a failing test
/// left behind (forked daemons are not our children) can be found and ended.
const MARKER: &str = "SLUICEBUS_DAEMON_TEST_MARKER";

fn marker_value(tag: &str) -> String {
    format!("{tag}-{}", std::process::id())
}

/// SIGKILL processes carrying `MARKER=value` in their environment (ours only).
fn kill_marked(value: &str) {
    let needle = format!("{MARKER}={value}").into_bytes();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) {
            if env.split(|b| *b == 0).any(|kv| kv == needle.as_slice()) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Ends marked leftovers when a test finishes, passed or not.
struct Marked(String);

impl Drop for Marked {
    fn drop(&mut self) {
        kill_marked(&self.0);
    }
}

/// A plain command for the daemon with a clean environment.
fn daemon_cmd(marker: &str) -> Command {
    let mut c = Command::new(daemon_path());
    c.env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DBUS_DEBUG_OUTPUT")
        .env_remove("NOTIFY_SOCKET")
        .env(MARKER, marker);
    c
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            state != Some("Z")
        }
        Err(_) => false,
    }
}

fn wait_gone(pid: i32) -> bool {
    eventually(TIMEOUT, || !alive(pid))
}

fn sigterm(pid: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// `/proc/PID/status` field (e.g. "Umask", "Uid").
fn status_field(pid: i32, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

fn get_id(address: &str) -> String {
    let mut c = Command::new("dbus-send");
    c.arg(format!("--bus={address}"))
        .arg("--print-reply=literal")
        .arg("--reply-timeout=5000")
        .arg("--dest=org.freedesktop.DBus")
        .arg("/org/freedesktop/DBus")
        .arg("org.freedesktop.DBus.GetId");
    let out = run_with_timeout(c, TIMEOUT);
    let id = out.ok().trim().to_string();
    assert_eq!(id.len(), 32, "GetId answered {id:?}");
    id
}

/// Pid of the process serving the bus at `address`, asked from its driver (both daemons answer
/// for their own name).
fn serving_pid(address: &str) -> u32 {
    let mut c = RawConn::connect(address);
    c.auth_external();
    c.hello();
    c.driver("GetConnectionUnixProcessID", &[s(DBUS)])
        .expect_return()
        .arg_u32(0)
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let conf = dir.join("bus.conf");
    let xml = session_config(extra).replace(
        "<listen>unix:tmpdir=/tmp</listen>",
        &format!("<listen>unix:path={}/bus</listen>", dir.display()),
    );
    std::fs::write(&conf, xml).expect("write config");
    conf
}

/// Start `cmd` (stdin and stderr closed) and read the first line it prints on stdout.
fn first_line_of(cmd: &mut Command) -> (std::process::Child, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// Run `sh -c SCRIPT DAEMON ARGS…` (the script execs the daemon as `"$0"`), with the clean
/// environment of [`daemon_cmd`] and the marker; returns once the shell has exited.
fn daemon_via_sh(marker: &str, script: &str, args: &[&str]) -> CmdOutput {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(script)
        .arg(daemon_path())
        .args(args)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DBUS_DEBUG_OUTPUT")
        .env_remove("NOTIFY_SOCKET")
        .env(MARKER, marker);
    run_with_timeout(c, TIMEOUT)
}

/// Run the daemon with `--fork --print-address=8 --print-pid=9` through a shell that redirects
/// 8 and 9 to files (as the installed test does); `pre` runs in the shell first. Returns the
/// command output, address and pid.
fn run_forking(marker: &str, dir: &Path, pre: &str, args: &[&str]) -> (CmdOutput, String, i32) {
    let addr_file = dir.join("address");
    let pid_file = dir.join("printed-pid");
    let script = format!(
        "{pre}\nexec \"$0\" \"$@\" 8>'{}' 9>'{}'",
        addr_file.display(),
        pid_file.display()
    );
    let mut all = vec!["--fork", "--print-address=8", "--print-pid=9"];
    all.extend_from_slice(args);
    let start = Instant::now();
    let out = daemon_via_sh(marker, &script, &all);
    assert!(out.success(), "--fork did not exit 0: {out:#?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "--fork took {:?}",
        start.elapsed()
    );
    // Both lines are there as soon as the parent has exited.
    let address = std::fs::read_to_string(&addr_file).expect("address file");
    let pid_text = std::fs::read_to_string(&pid_file).expect("pid file");
    assert!(address.ends_with('\n') && pid_text.ends_with('\n'));
    let pid: i32 = pid_text.trim().parse().expect("numeric pid");
    (out, address.trim().to_string(), pid)
}

#[test]
fn installed_fork_script_passes_all_three() {
    if !Path::new(FORK_SCRIPT).exists() {
        skip(
            "installed_fork_script_passes_all_three",
            &format!("{FORK_SCRIPT} not installed"),
        );
        return;
    }
    let marker = marker_value("script");
    let _guard = Marked(marker.clone());
    let mut c = Command::new("sh");
    c.arg(FORK_SCRIPT)
        .env("DBUS_TEST_DAEMON", daemon_path())
        .env("DBUS_TEST_DATA", TESTS_DATA)
        .env("DBUS_TEST_DBUS_SEND", "dbus-send")
        .env_remove("DBUS_TEST_DATADIR")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env(MARKER, &marker);
    // The script exports DBUS_DEBUG_OUTPUT, so forked daemons keep the stderr pipe open until
    // they are killed; the script kills each one.
    let out = run_with_timeout(c, Duration::from_secs(60));
    assert!(out.success(), "{out:#?}");
    for n in 1..=3 {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("ok {n} "))),
            "case {n} did not pass: {out:#?}"
        );
    }
    assert!(!out.stdout.contains("not ok"), "{out:#?}");
}

#[test]
fn fork_prints_address_and_pid_then_serves() {
    let marker = marker_value("fork");
    let _guard = Marked(marker.clone());
    let dir = TempDir::new("fork");
    let conf = write_config(dir.path(), "");
    let (_out, address, pid) = run_forking(
        &marker,
        dir.path(),
        "",
        &[&format!("--config-file={}", conf.display())],
    );
    assert!(address.starts_with("unix:path="), "{address}");
    assert!(alive(pid), "forked daemon {pid} is not running");
    get_id(&address);
    // Detached: own session, working directory /.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        fields.get(3).copied(),
        Some(pid.to_string().as_str()),
        "session id: {stat}"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        Path::new("/")
    );
    sigterm(pid);
    assert!(wait_gone(pid), "daemon survived SIGTERM");
    assert!(!dir.path().join("bus").exists(), "socket file left behind");
}

#[test]
fn fork_sets_umask_unless_keep_umask() {
    let marker = marker_value("umask");
    let _guard = Marked(marker.clone());
    for (extra, want) in [("", "0022"), ("<keep_umask/>", "0077")] {
        let dir = TempDir::new("umask");
        let conf = write_config(dir.path(), extra);
        let (_out, address, pid) = run_forking(
            &marker,
            dir.path(),
            "umask 077",
            &[&format!("--config-file={}", conf.display())],
        );
        get_id(&address);
        assert_eq!(status_field(pid, "Umask"), want, "config extra {extra:?}");
        sigterm(pid);
        assert!(wait_gone(pid));
    }
}

#[test]
fn config_fork_element_and_nofork_override() {
    let marker = marker_value("cfgfork");
    let _guard = Marked(marker.clone());
    // <fork/> alone daemonizes.
    let dir = TempDir::new("cfgfork");
    let conf = write_config(dir.path(), "<fork/>");
    let addr_file = dir.path().join("address");
    let pid_file = dir.path().join("printed-pid");
    let script = format!(
        "exec \"$0\" --print-address=8 --print-pid=9 --config-file='{}' 8>'{}' 9>'{}'",
        conf.display(),
        addr_file.display(),
        pid_file.display()
    );
    let out = daemon_via_sh(&marker, &script, &[]);
    assert!(out.success(), "{out:#?}");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    get_id(std::fs::read_to_string(&addr_file).unwrap().trim());
    sigterm(pid);
    assert!(wait_gone(pid));

    // --nofork wins over <fork/>: the daemon stays in the foreground.
    let dir = TempDir::new("cfgnofork");
    let conf = write_config(dir.path(), "<fork/>");
    let (mut child, line) = first_line_of(
        daemon_cmd(&marker)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-pid"]),
    );
    assert_eq!(line.trim(), child.id().to_string());
    // The process we started is the one serving the bus (no fork behind the printed pid),
    // and after that round trip it still runs.
    let address = format!("unix:path={}/bus", dir.path().display());
    assert_eq!(serving_pid(&address), child.id(), "another process serves");
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "--nofork daemon exited"
    );
    sigterm(child.id() as i32);
    let st = child.wait().unwrap();
    assert!(st.success(), "{st:?}");
}

#[test]
fn pidfile_written_and_removed() {
    let marker = marker_value("pidfile");
    let _guard = Marked(marker.clone());
    let dir = TempDir::new("pidfile");
    let pidfile = dir.path().join("bus.pid");
    let conf = write_config(
        dir.path(),
        &format!("<pidfile>{}</pidfile>", pidfile.display()),
    );

    // Without forking: our own pid.
    let (mut child, line) = first_line_of(
        daemon_cmd(&marker)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"]),
    );
    get_id(line.trim());
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", child.id())
    );
    sigterm(child.id() as i32);
    assert!(child.wait().unwrap().success());
    assert!(!pidfile.exists(), "pid file not removed on SIGTERM");

    // An existing pid file refuses the start, naming the file, and is left alone.
    std::fs::write(&pidfile, "1\n").unwrap();
    let mut c = daemon_cmd(&marker);
    c.arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"]);
    let out = run_with_timeout(c, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(
        out.stderr.contains(&pidfile.display().to_string()),
        "{out:#?}"
    );
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), "1\n");
    assert!(
        !dir.path().join("bus").exists(),
        "socket bound although the start was refused"
    );

    // --nopidfile ignores <pidfile> entirely.
    let (mut child, line) = first_line_of(
        daemon_cmd(&marker)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"]),
    );
    get_id(line.trim());
    assert_eq!(std::fs::read_to_string(&pidfile).unwrap(), "1\n");
    sigterm(child.id() as i32);
    assert!(child.wait().unwrap().success());
    assert!(
        pidfile.exists(),
        "--nopidfile removed someone else's pid file"
    );
    std::fs::remove_file(&pidfile).unwrap();

    // Forking: the file holds the daemon's pid, the same one --print-pid reports.
    let (_out, address, pid) = run_forking(
        &marker,
        dir.path(),
        "",
        &[&format!("--config-file={}", conf.display())],
    );
    get_id(&address);
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{pid}\n")
    );
    sigterm(pid);
    assert!(wait_gone(pid));
    let deadline = Instant::now() + TIMEOUT;
    while pidfile.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert!(!pidfile.exists(), "forked daemon left its pid file");
}

#[test]
fn same_descriptor_for_address_and_pid() {
    if is_reference_daemon() {
        // dbus-daemon closes the descriptor after the address and then fails on the pid.
        skip(
            "same_descriptor_for_address_and_pid",
            "sluicebus only (dbus-daemon fails on the pid)",
        );
        return;
    }
    let marker = marker_value("samefd");
    let _guard = Marked(marker.clone());
    let dir = TempDir::new("samefd");
    let conf = write_config(dir.path(), "");
    let out_file = dir.path().join("out");
    let script = format!(
        "exec \"$0\" --fork --print-address=7 --print-pid=7 --config-file='{}' 7>'{}'",
        conf.display(),
        out_file.display()
    );
    let out = daemon_via_sh(&marker, &script, &[]);
    assert!(out.success(), "{out:#?}");
    let text = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    get_id(lines[0]);
    let pid: i32 = lines[1].parse().unwrap();
    sigterm(pid);
    assert!(wait_gone(pid));
}

#[test]
fn dbus_run_session_works() {
    let marker = marker_value("drs");
    let _guard = Marked(marker.clone());
    let mut c = Command::new("dbus-run-session");
    c.arg(format!("--dbus-daemon={}", daemon_path().display()))
        .args([
            "--",
            "dbus-send",
            "--session",
            "--dest=org.freedesktop.DBus",
            "--print-reply",
            "/",
            "org.freedesktop.DBus.GetId",
        ])
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env(MARKER, &marker);
    let out = run_with_timeout(c, Duration::from_secs(20));
    assert!(out.success(), "{out:#?}");
    assert!(out.stdout.contains("method return"), "{out:#?}");
    assert!(out.stdout.contains("string \""), "{out:#?}");
}

#[test]
fn version_help_introspect_and_usage_errors() {
    let marker = marker_value("cli");
    let run = |args: &[&str]| {
        let mut c = daemon_cmd(&marker);
        c.args(args);
        run_with_timeout(c, TIMEOUT)
    };
    let code = |o: &CmdOutput| o.status.and_then(|s| s.code());

    let v = run(&["--version"]);
    assert_eq!(code(&v), Some(0), "{v:#?}");
    assert!(!v.stdout.trim().is_empty());

    for h in ["--help", "-h", "-?"] {
        let o = run(&[h]);
        assert_eq!(code(&o), Some(1), "{h}: {o:#?}");
        assert!(o.stderr.contains("--config-file"), "{h}: {o:#?}");
    }

    let i = run(&["--introspect"]);
    assert_eq!(code(&i), Some(0), "{i:#?}");
    assert!(i.stdout.contains("<node"), "{i:#?}");
    assert!(i.stdout.contains("org.freedesktop.DBus"), "{i:#?}");

    let u = run(&["--session", "--bogus"]);
    assert_eq!(code(&u), Some(1), "{u:#?}");
    assert!(
        u.stderr.contains("--print-address"),
        "usage expected: {u:#?}"
    );
    assert!(u.stdout.is_empty());

    let d = run(&["--session", "--system"]);
    assert_eq!(code(&d), Some(1), "{d:#?}");
    assert!(d.stderr.contains("already requested"), "{d:#?}");

    let f = run(&["--session", "--print-address=x"]);
    assert_eq!(code(&f), Some(1), "{f:#?}");
    assert!(f.stderr.contains("Invalid file descriptor"), "{f:#?}");

    // A well-formed but closed descriptor fails at print time (before anything is forked).
    let dir = TempDir::new("closedfd");
    let conf = write_config(dir.path(), "");
    let c = run(&[
        &format!("--config-file={}", conf.display()),
        "--nofork",
        "--print-address=57",
    ]);
    assert_eq!(code(&c), Some(1), "{c:#?}");
    assert!(c.stderr.contains("57") || is_reference_daemon(), "{c:#?}");
    assert!(
        !dir.path().join("bus").exists(),
        "socket left behind after a failed start"
    );
}

#[test]
fn bad_config_files_are_named() {
    let marker = marker_value("badconf");
    let dir = TempDir::new("badconf");
    let missing = dir.path().join("missing.conf");
    let broken = dir.path().join("broken.conf");
    std::fs::write(
        &broken,
        "<busconfig><listen>unix:tmpdir=/tmp</listen><bogus/></busconfig>",
    )
    .unwrap();
    let nolisten = dir.path().join("nolisten.conf");
    std::fs::write(&nolisten, "<busconfig><type>session</type></busconfig>").unwrap();
    for f in [&missing, &broken, &nolisten] {
        let mut c = daemon_cmd(&marker);
        c.arg(format!("--config-file={}", f.display()))
            .args(["--nofork", "--print-address=1"]);
        let out = run_with_timeout(c, TIMEOUT);
        assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
        // dbus-daemon names the file only when it cannot read it.
        let named = out.stderr.contains(&f.display().to_string());
        assert!(
            named || (is_reference_daemon() && f != &missing),
            "error does not name {}: {out:#?}",
            f.display()
        );
        assert!(out.stdout.is_empty(), "{out:#?}");
    }
    // --address does not excuse a missing <listen> (dbus-daemon 1.14 refuses too).
    let mut c = daemon_cmd(&marker);
    c.arg(format!("--config-file={}", nolisten.display()))
        .arg(format!("--address=unix:path={}/bus", dir.path().display()))
        .args(["--nofork", "--print-address=1"]);
    let out = run_with_timeout(c, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stderr.contains("<listen>"), "{out:#?}");
    assert!(!dir.path().join("bus").exists());
}

#[test]
fn builtin_session_config_without_config_file() {
    if is_reference_daemon() {
        // dbus-daemon insists on a configuration file.
        skip(
            "builtin_session_config_without_config_file",
            "sluicebus only (dbus-daemon needs a config file)",
        );
        return;
    }
    let marker = marker_value("builtin");
    let rt = TempDir::new("xdgrt");
    let (mut child, line) = first_line_of(
        daemon_cmd(&marker)
            .args(["--nofork", "--print-address"])
            .env("XDG_RUNTIME_DIR", rt.path()),
    );
    let want = format!("unix:path={}/bus,guid=", rt.path().display());
    assert!(line.starts_with(&want), "{line:?} (want {want}…)");
    get_id(line.trim());
    // The transient service directory was created, private.
    use std::os::unix::fs::PermissionsExt;
    for d in ["dbus-1", "dbus-1/services"] {
        let m = std::fs::metadata(rt.path().join(d)).unwrap();
        assert!(m.is_dir());
        assert_eq!(m.permissions().mode() & 0o777, 0o700, "{d}");
    }
    sigterm(child.id() as i32);
    assert!(child.wait().unwrap().success());
    assert!(
        !rt.path().join("bus").exists(),
        "socket not removed on exit"
    );
}

#[test]
fn sd_notify_ready_and_stopping() {
    if is_reference_daemon() {
        skip("sd_notify_ready_and_stopping", "sluicebus only");
        return;
    }
    let marker = marker_value("notify");
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let conf = write_config(dir.path(), "");
    let mut child = daemon_cmd(&marker)
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means serving.
    get_id(&format!("unix:path={}/bus", dir.path().display()));
    sigterm(child.id() as i32);
    let n = sock.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// dbus-daemon tells the service manager about every configuration reload, whichever way it
/// was asked for: `RELOADING=1`, then `READY=1` once it serves again (its
/// `bus_context_reload_config`), also when the new configuration is broken and the running
/// one stays.
#[test]
fn sd_notify_reloading_then_ready_on_sighup_and_reload_config() {
    let marker = marker_value("notify-reload");
    let _cleanup = Marked(marker.clone());
    let dir = TempDir::new("notify-reload");
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(TIMEOUT)).unwrap();
    let conf = write_config(dir.path(), "");
    let mut child = daemon_cmd(&marker)
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork"])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = format!("unix:path={}/bus", dir.path().display());
    let mut buf = [0u8; 256];
    let mut next = |what: &str| -> String {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next("READY=1 at startup"), "READY=1");
    get_id(&address);

    // SIGHUP.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    assert_eq!(next("RELOADING=1 after SIGHUP"), "RELOADING=1");
    assert_eq!(next("READY=1 after SIGHUP"), "READY=1");
    get_id(&address);

    // The driver's ReloadConfig, through dbus-send.
    let reload = || {
        let mut c = Command::new("dbus-send");
        c.arg(format!("--bus={address}"))
            .args(["--print-reply", "--reply-timeout=5000"])
            .arg("--dest=org.freedesktop.DBus")
            .arg("/org/freedesktop/DBus")
            .arg("org.freedesktop.DBus.ReloadConfig");
        run_with_timeout(c, TIMEOUT)
    };
    let out = reload();
    assert!(out.success(), "{out:#?}");
    assert_eq!(next("RELOADING=1 after ReloadConfig"), "RELOADING=1");
    assert_eq!(next("READY=1 after ReloadConfig"), "READY=1");

    // A broken configuration: the reload fails, the bus still serves and says so.
    std::fs::write(dir.path().join("broken.xml"), "<busconfig><nonsense").unwrap();
    std::fs::rename(dir.path().join("broken.xml"), &conf).unwrap();
    let out = reload();
    assert!(
        !out.success(),
        "a broken configuration was accepted: {out:#?}"
    );
    // A watched-directory reload (sluicebus) may come first; each one is a pair.
    assert_eq!(next("RELOADING=1 after a failed reload"), "RELOADING=1");
    assert_eq!(next("READY=1 after a failed reload"), "READY=1");
    get_id(&address);

    sigterm(child.id() as i32);
    loop {
        let m = next("STOPPING=1");
        if m == "STOPPING=1" {
            break;
        }
        assert!(m == "RELOADING=1" || m == "READY=1", "unexpected {m:?}");
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn user_element_drops_privileges() {
    if !running_as_root() {
        skip("user_element_drops_privileges", "needs root");
        return;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some((nobody, nogroup)) = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .and_then(|l| Some((l.split(':').nth(2)?, l.split(':').nth(3)?)))
    else {
        skip("user_element_drops_privileges", "no user nobody");
        return;
    };
    let marker = marker_value("user");
    let dir = TempDir::new("user");
    let pidfile = dir.path().join("bus.pid");
    let conf = write_config(
        dir.path(),
        &format!(
            "<user>nobody</user><pidfile>{}</pidfile>",
            pidfile.display()
        ),
    );
    let (mut child, line) = first_line_of(
        daemon_cmd(&marker)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"]),
    );
    assert!(line.starts_with("unix:path="), "{line:?}");
    let pid = child.id() as i32;
    let deadline = Instant::now() + TIMEOUT;
    let want = format!("{nobody}\t{nobody}\t{nobody}\t{nobody}");
    while status_field(pid, "Uid") != want && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(status_field(pid, "Uid"), want);
    assert_eq!(
        status_field(pid, "Gid"),
        format!("{nogroup}\t{nogroup}\t{nogroup}\t{nogroup}")
    );
    // Supplementary groups are those of nobody, not root's.
    assert!(!status_field(pid, "Groups")
        .split_whitespace()
        .any(|g| g == "0"));
    // Written (as root) before the switch.
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{pid}\n")
    );
    sigterm(pid);
    assert!(child.wait().unwrap().success());
}

#[test]
fn syslog_only_keeps_stderr_quiet() {
    if is_reference_daemon() {
        // dbus-daemon has no RUST_LOG; its verbosity cannot be raised the same way.
        skip(
            "syslog_only_keeps_stderr_quiet",
            "sluicebus only (RUST_LOG)",
        );
        return;
    }
    let marker = marker_value("syslog");
    let dir = TempDir::new("syslog");
    let conf = write_config(dir.path(), "");
    let stderr_of = |mode: &str| -> String {
        let err_path = dir.path().join(format!("stderr{mode}"));
        let mut child = daemon_cmd(&marker)
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", mode])
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
            .spawn()
            .unwrap();
        let address = format!("unix:path={}/bus", dir.path().display());
        // Listening once a connection is accepted (the file exists from bind on, before listen).
        let sock = dir.path().join("bus");
        assert!(
            eventually(TIMEOUT, || std::os::unix::net::UnixStream::connect(&sock)
                .is_ok()),
            "the daemon never listened on {}",
            sock.display()
        );
        // A client coming and going makes the bus log at debug level; the watcher sees it
        // leave, so the bus has handled (and logged) the hang-up before SIGTERM.
        let mut watcher = RawConn::connect(&address);
        watcher.auth_external();
        watcher.hello();
        watcher.watch_departures();
        get_id(&address);
        watcher.next_departure();
        sigterm(child.id() as i32);
        assert!(child.wait().unwrap().success());
        std::fs::read_to_string(&err_path).unwrap()
    };
    let loud = stderr_of("--nosyslog");
    assert!(
        loud.contains("DEBUG"),
        "--nosyslog logged nothing: {loud:?}"
    );
    let quiet = stderr_of("--syslog-only");
    assert!(quiet.is_empty(), "--syslog-only wrote to stderr: {quiet:?}");
}

#[test]
fn fixed_fd_limit_is_reported_once_at_info() {
    // Only root tries to go past the hard limit; without CAP_SYS_RESOURCE it cannot.
    if !running_as_root() {
        skip("fixed_fd_limit_is_reported_once_at_info", "needs root");
        return;
    }
    // Hard limits below the 65536 both daemons want: with room to lift the soft limit
    // (sluicebus still does) and without.
    for nofile in ["1024:4096", "4096:4096"] {
        let marker = marker_value("fdlimit");
        let _cleanup = Marked(marker.clone());
        let dir = TempDir::new("fdlimit");
        let conf = write_config(dir.path(), "");
        let err_path = dir.path().join("stderr");
        let mut child = Command::new("prlimit")
            .arg(format!("--nofile={nofile}"))
            .args(["--", "setpriv", "--inh-caps=-sys_resource"])
            .args(["--bounding-set=-sys_resource", "--"])
            .arg(daemon_path())
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--print-address=1"])
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("RUST_LOG")
            .env(MARKER, &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        let _ = std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
        assert!(
            line.starts_with("unix:path="),
            "{nofile}: no address: {line:?}; stderr: {}",
            stderr()
        );
        let address = line.trim().to_string();
        // The bus serves (so start-up, limit included, is over); a reload must not say it
        // again.
        get_id(&address);
        let mut c = Command::new("dbus-send");
        c.arg(format!("--bus={address}"))
            .args(["--print-reply", "--dest=org.freedesktop.DBus"])
            .args(["/org/freedesktop/DBus", "org.freedesktop.DBus.ReloadConfig"]);
        run_with_timeout(c, TIMEOUT).ok();
        let pid = child.id() as i32;
        if !is_reference_daemon() {
            // The soft limit is still lifted to the hard one (dbus-daemon leaves it).
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let files = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .unwrap_or_default();
            assert_eq!(
                files.split_whitespace().skip(3).take(2).collect::<Vec<_>>(),
                ["4096", "4096"],
                "{files:?}"
            );
        }
        sigterm(pid);
        assert!(child.wait().unwrap().success());
        let all = stderr();
        let said: Vec<&str> = all.lines().filter(|l| l.contains("fd limit")).collect();
        // dbus-daemon logs it once, at its INFO level ("Failed to set fd limit to 65536: …").
        assert_eq!(said.len(), 1, "{nofile}: {all}");
        if !is_reference_daemon() {
            assert!(said[0].starts_with("[INFO "), "{nofile}: {all}");
        }
    }
}

#[test]
fn listen_alternatives_use_the_first_that_works() {
    // The `;`-separated entries of one address are alternatives (dbus_server_listen): the
    // first that can listen is used, the rest are never bound.
    let marker = marker_value("alternatives");
    let _cleanup = Marked(marker.clone());
    let dir = TempDir::new("alternatives");
    let d = dir.path().display().to_string();
    let conf = write_config(dir.path(), "");
    let serve = |address: &str| -> (std::process::Child, String) {
        let (child, line) = first_line_of(
            daemon_cmd(&marker)
                .arg(format!("--config-file={}", conf.display()))
                .args(["--nofork", "--print-address=1"])
                .arg(format!("--address={address}")),
        );
        let line = line.trim().to_string();
        // Serving: everything it was going to bind is bound.
        get_id(&line);
        (child, line)
    };
    let stop = |mut child: std::process::Child| {
        sigterm(child.id() as i32);
        assert!(child.wait().unwrap().success());
    };
    let (child, line) = serve(&format!("unix:path={d}/a;unix:path={d}/b"));
    assert!(
        line.starts_with(&format!("unix:path={d}/a,guid=")),
        "{line}"
    );
    assert!(
        !dir.path().join("b").exists(),
        "the second entry was bound too"
    );
    stop(child);
    // An entry that cannot listen (no such directory) gives way to the next.
    let (child, line) = serve(&format!("unix:path={d}/missing/a;unix:path={d}/b"));
    assert!(
        line.starts_with(&format!("unix:path={d}/b,guid=")),
        "{line}"
    );
    stop(child);
    // So does an unknown transport; entries after the one used are not even looked at.
    let (child, line) = serve(&format!("bogus:x=y;unix:path={d}/b;unix:"));
    assert!(
        line.starts_with(&format!("unix:path={d}/b,guid=")),
        "{line}"
    );
    stop(child);
    // The same in <listen>.
    let listen = dir.path().join("listen.conf");
    let xml = std::fs::read_to_string(&conf).unwrap().replace(
        &format!("<listen>unix:path={d}/bus</listen>"),
        &format!("<listen>unix:path={d}/missing/a;unix:path={d}/c</listen>"),
    );
    assert!(xml.contains("/c</listen>"));
    std::fs::write(&listen, xml).unwrap();
    let (child, line) = first_line_of(
        daemon_cmd(&marker)
            .arg(format!("--config-file={}", listen.display()))
            .args(["--nofork", "--print-address=1"]),
    );
    assert!(
        line.starts_with(&format!("unix:path={d}/c,guid=")),
        "{line}"
    );
    get_id(line.trim());
    stop(child);
    // None works: exit 1, naming the first failure.
    let mut c = daemon_cmd(&marker);
    c.arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .arg(format!(
            "--address=unix:path={d}/missing/a;unix:path={d}/missing/b"
        ));
    let out = run_with_timeout(c, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(out.stderr.contains(&format!("{d}/missing/a")), "{out:#?}");
    // A malformed entry that is reached is an error, not skipped.
    let mut c = daemon_cmd(&marker);
    c.arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .arg(format!("--address=unix:;unix:path={d}/b"));
    let out = run_with_timeout(c, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
}
