//! The `sluicebus-container` launcher helper against a private bus: COMMAND mode, the printed
//! lines, signals, --watch-pid, --print-address-fd, and bus errors.

mod common;

use common::{eventually, lines_of, run_with_timeout, s, RawConn, TestBus, TIMEOUT};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const TOOL: &str = env!("CARGO_BIN_EXE_sluicebus-container");
const C1: &str = "org.freedesktop.DBus.Containers1";
const GET_ID: &[&str] = &[
    "dbus-send",
    "--session",
    "--print-reply",
    "--dest=org.freedesktop.DBus",
    "/",
    "org.freedesktop.DBus.GetId",
];

/// The tool aimed at `bus` with a type and a name, plus `extra` arguments.
fn tool(bus: &TestBus, extra: &[&str]) -> Command {
    let mut c = Command::new(TOOL);
    c.args(["--address", &bus.address])
        .args(["--type", "org.example.Sandbox", "--name", "myapp"])
        .args(extra)
        .env_remove("DBUS_SESSION_BUS_ADDRESS");
    c
}

/// A tool running in the background and the three lines it printed.
struct Running {
    child: Child,
    socket: String,
    address: String,
    instance: String,
}

impl Running {
    fn start(bus: &TestBus, extra: &[&str]) -> Running {
        let mut child = tool(bus, extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluicebus-container");
        let rx = lines_of(child.stdout.take().expect("stdout"));
        let mut lines = Vec::new();
        for _ in 0..3 {
            match rx.recv_timeout(TIMEOUT) {
                Ok(l) => lines.push(l),
                Err(_) => {
                    let _ = child.kill();
                    panic!("tool printed only {lines:?}; bus stderr:\n{}", bus.stderr());
                }
            }
        }
        Running {
            child,
            socket: lines[0].clone(),
            address: lines[1].clone(),
            instance: lines[2].clone(),
        }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own, not yet reaped child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Assert that the tool has settled: it has handled everything that happened so far and
    /// sleeps in poll(2) waiting for its next event, not exiting. Anything that would stop
    /// it later needs a new event, so this is a sentinel for "nothing stops it by accident".
    #[track_caller]
    fn assert_settled(&mut self) {
        let pid = self.child.id();
        let child = &mut self.child;
        let settled = eventually(TIMEOUT, || {
            matches!(child.try_wait(), Ok(Some(_))) || asleep_in_poll(pid)
        });
        assert!(settled, "sluicebus-container {pid} never settled in poll");
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "sluicebus-container exited"
        );
    }

    /// Exit code, panicking if the tool does not exit within the timeout.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sluicebus-container did not exit");
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether process `pid` sleeps in poll(2): state S, and the kernel function it waits in
/// (`/proc/PID/wchan`) is poll's.
fn asleep_in_poll(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    state == Some("S") && wchan.contains("poll")
}

fn is_socket(p: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// The instance path the bus reports for a fresh connection to `address`.
fn instance_of_new_connection(address: &str) -> String {
    let mut c = RawConn::connect(address);
    c.auth_external();
    let me = c.hello();
    let serial = c.call(
        Some(common::DBUS),
        common::DBUS_PATH,
        Some(C1),
        "GetConnectionInstance",
        &[s(&me)],
    );
    c.wait_reply(serial).expect_return().arg_str(0).to_string()
}

#[test]
fn command_runs_through_the_container_socket() {
    let bus = TestBus::start();
    let mut cmd = tool(&bus, &["--metadata", "k=v", "--"]);
    // The command sees the container socket and address; GetId goes through it.
    cmd.args([
        "sh",
        "-c",
        r#"test -S "$SLUICEBUS_CONTAINER_SOCKET" || exit 9
           case "$DBUS_SESSION_BUS_ADDRESS" in "unix:path=$SLUICEBUS_CONTAINER_SOCKET,"*) ;; *) exit 8;; esac
           echo "instance=$SLUICEBUS_CONTAINER_INSTANCE"
           exec "$@""#,
        "sh",
    ])
    .args(GET_ID);
    let out = run_with_timeout(cmd, TIMEOUT);
    let stdout = out.ok();
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() >= 5, "{out:#?}");
    let (socket, address, instance) = (lines[0], lines[1], lines[2]);
    assert!(socket.starts_with('/'), "{out:#?}");
    assert!(address.starts_with("unix:"), "{out:#?}");
    assert!(
        instance.starts_with("/org/freedesktop/DBus/Containers1/c"),
        "{out:#?}"
    );
    assert_eq!(lines[3], format!("instance={instance}"));
    assert!(stdout.contains("method return"), "{out:#?}");
    // The instance ended with the command: its socket is gone and the bus forgot it.
    assert!(!Path::new(socket).exists(), "{socket} still exists");
    let mut c = bus.client();
    let serial = c.call(
        Some(common::DBUS),
        common::DBUS_PATH,
        Some(C1),
        "GetInstanceInfo",
        &[common::Arg::Path(instance.to_string())],
    );
    c.wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.NotContainer");
}

#[test]
fn command_exit_status_is_passed_on() {
    let bus = TestBus::start();
    let mut cmd = tool(&bus, &["--", "sh", "-c", "exit 7"]);
    cmd.stdout(Stdio::null());
    let out = run_with_timeout(cmd, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(7), "{out:#?}");
    let out = run_with_timeout(tool(&bus, &["false", "ignored"]), TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
}

#[test]
fn printed_lines_work_until_sigterm() {
    let bus = TestBus::start();
    let mut t = Running::start(&bus, &["--metadata", "a=b"]);
    assert!(is_socket(&t.socket), "{} is not a socket", t.socket);
    assert!(
        t.address.contains(&t.socket),
        "{} / {}",
        t.address,
        t.socket
    );
    let mut cmd = Command::new("dbus-send");
    cmd.arg(format!("--bus={}", t.address)).args(&GET_ID[2..]);
    run_with_timeout(cmd, TIMEOUT).ok();
    // Connections through the printed address belong to the printed instance.
    assert_eq!(instance_of_new_connection(&t.address), t.instance);
    // Nothing stops it by accident: it is back to waiting after those connections.
    t.assert_settled();
    assert!(is_socket(&t.socket));
    t.signal(libc::SIGTERM);
    assert_eq!(t.exit_code(), Some(0));
    assert!(!Path::new(&t.socket).exists(), "{} still exists", t.socket);
    bus.client();
}

#[test]
fn sigint_stops_too() {
    let bus = TestBus::start();
    let mut t = Running::start(&bus, &[]);
    t.signal(libc::SIGINT);
    assert_eq!(t.exit_code(), Some(0));
    assert!(!Path::new(&t.socket).exists());
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    let bus = TestBus::start();
    let mut t = Running::start(&bus, &["--", "sleep", "30"]);
    assert!(is_socket(&t.socket));
    t.signal(libc::SIGTERM);
    // sleep dies of SIGTERM: 128 + 15.
    assert_eq!(t.exit_code(), Some(143));
    assert!(!Path::new(&t.socket).exists());
}

#[test]
fn watch_pid_ends_the_instance() {
    let bus = TestBus::start();
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let pid = sleeper.id().to_string();
    let mut t = Running::start(&bus, &["--watch-pid", &pid]);
    // The live process does not end it: the tool waits on it.
    t.assert_settled();
    assert!(is_socket(&t.socket));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(t.exit_code(), Some(0));
    assert!(!Path::new(&t.socket).exists());
}

#[test]
fn watch_pid_of_missing_process_fails_before_adding() {
    let bus = TestBus::start();
    let mut gone = Command::new("true").spawn().expect("true");
    let pid = gone.id().to_string();
    let _ = gone.wait();
    let out = run_with_timeout(tool(&bus, &["--watch-pid", &pid]), TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(out.stderr.contains("no such process"), "{out:#?}");
}

#[test]
fn print_address_fd() {
    let bus = TestBus::start();
    let file = bus.dir().join("lines");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        r#"exec "$0" --address "$1" --type a.b --name n --print-address-fd 3 -- true 3>"$2""#,
        TOOL,
        &bus.address,
    ])
    .arg(&file);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(out.ok().is_empty(), "{out:#?}");
    let text = std::fs::read_to_string(&file).expect("lines file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text:?}");
    assert!(
        lines[1].starts_with("unix:") && lines[2].starts_with('/'),
        "{text:?}"
    );
    // A closed fd is an error that leaves no instance behind.
    let out = run_with_timeout(tool(&bus, &["--print-address-fd", "9", "true"]), TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stderr.contains("--print-address-fd 9"), "{out:#?}");
}

#[test]
fn bus_errors_are_reported_with_their_name() {
    let bus = TestBus::start();
    let mut cmd = Command::new(TOOL);
    cmd.args([
        "--address",
        &bus.address,
        "--type",
        "not a type",
        "--name",
        "x",
    ])
    .args(["--", "true"]);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(
        out.stderr
            .contains("org.freedesktop.DBus.Error.InvalidArgs"),
        "{out:#?}"
    );
    // Named arguments are not on the command line, but metadata over the limit is a bus error.
    let big = format!("k={}", "x".repeat(100_000));
    let out = run_with_timeout(tool(&bus, &["--metadata", &big, "true"]), TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("org.freedesktop.DBus.Error.LimitsExceeded"),
        "{out:#?}"
    );
}

#[test]
fn contained_callers_cannot_nest() {
    let bus = TestBus::start();
    let t = Running::start(&bus, &[]);
    let mut cmd = Command::new(TOOL);
    cmd.args([
        "--address",
        &t.address,
        "--type",
        "a.b",
        "--name",
        "x",
        "true",
    ]);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{out:#?}"
    );
}

#[test]
fn usage_and_connection_errors() {
    let out = run_with_timeout(
        {
            let mut c = Command::new(TOOL);
            c.arg("--help");
            c
        },
        TIMEOUT,
    );
    assert!(out.ok().contains("--print-address-fd"), "{out:#?}");
    let mut c = Command::new(TOOL);
    c.args(["--name", "x"]);
    let out = run_with_timeout(c, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{out:#?}");
    let mut c = Command::new(TOOL);
    c.args(["--address", "unix:path=/nonexistent/sluicebus/bus"])
        .args(["--type", "a.b", "--name", "x"]);
    let out = run_with_timeout(c, TIMEOUT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stderr.contains("cannot connect"), "{out:#?}");
}

#[test]
fn instance_stopped_elsewhere_ends_the_tool() {
    let bus = TestBus::start();
    let mut t = Running::start(&bus, &[]);
    let mut c = bus.client();
    let serial = c.call(
        Some(common::DBUS),
        common::DBUS_PATH,
        Some(C1),
        "StopInstance",
        &[common::Arg::Path(t.instance.clone())],
    );
    c.wait_reply(serial).expect_return();
    assert_eq!(t.exit_code(), Some(1));
}

#[test]
fn bus_going_away_ends_the_tool() {
    let bus = TestBus::start();
    let mut t = Running::start(&bus, &[]);
    drop(bus);
    assert_eq!(t.exit_code(), Some(1));
}

/// A COMMAND that cannot be started ends the tool with a shell's status (POSIX sh, "Command
/// Search and Execution"): 127 when it is not found, 126 when it is not executable. The
/// instance it had created is stopped.
#[test]
fn command_that_cannot_run_exits_127_or_126() {
    use std::os::unix::fs::PermissionsExt;
    let bus = TestBus::start();
    let not_exec = bus.dir().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_exec = not_exec.to_str().unwrap().to_string();
    for (cmd, code) in [
        ("/nonexistent/sluicebus-test/cmd", 127),
        ("sluicebus-test-no-such-command", 127),
        (not_exec.as_str(), 126),
    ] {
        let out = run_with_timeout(tool(&bus, &["--", cmd]), TIMEOUT);
        assert_eq!(
            out.status.and_then(|s| s.code()),
            Some(code),
            "{cmd}: {out:#?}"
        );
        assert!(out.stderr.contains(cmd), "{cmd}: {out:#?}");
        let socket = out.stdout.lines().next().expect("socket line").to_string();
        assert!(socket.starts_with('/'), "{out:#?}");
        assert!(!Path::new(&socket).exists(), "{cmd}: {socket} left behind");
    }
}

#[test]
fn empty_metadata_key_is_a_usage_error() {
    let bus = TestBus::start();
    for m in ["=v", "="] {
        let out = run_with_timeout(tool(&bus, &["--metadata", m, "true"]), TIMEOUT);
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{m}: {out:#?}");
        assert!(out.stderr.contains("KEY=VALUE"), "{m}: {out:#?}");
        assert!(out.stdout.is_empty(), "{m}: {out:#?}");
    }
}

#[test]
fn version() {
    let mut c = Command::new(TOOL);
    c.arg("--version");
    let out = run_with_timeout(c, TIMEOUT);
    let first = out.ok().lines().next().unwrap_or_default().to_string();
    assert_eq!(
        first,
        format!("sluicebus-container {}", env!("CARGO_PKG_VERSION"))
    );
}

/// dbus-daemon has no Containers1 (Debian builds it without): the tool names the error and
/// says what it means.
#[test]
fn bus_without_containers1_gets_a_hint() {
    let dir = common::TempDir::new("no-containers1");
    let address = format!("unix:path={}/bus", dir.path().display());
    let mut daemon = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!("--address={address}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dbus-daemon");
    let rx = lines_of(daemon.stdout.take().expect("stdout"));
    let ready = rx.recv_timeout(TIMEOUT);
    let out = ready.as_ref().map(|_| {
        let mut c = Command::new(TOOL);
        c.args([
            "--address",
            &address,
            "--type",
            "a.b",
            "--name",
            "x",
            "true",
        ]);
        run_with_timeout(c, TIMEOUT)
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    let out = out.expect("dbus-daemon printed no address");
    assert_eq!(out.status.and_then(|s| s.code()), Some(1), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(
        out.stderr
            .contains("org.freedesktop.DBus.Error.UnknownInterface"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains(&format!(
            "the bus at {address} does not support org.freedesktop.DBus.Containers1; is it sluicebus?"
        )),
        "{out:#?}"
    );
}

/// The README's bubblewrap launcher, verbatim but for the app: it runs with and without
/// `XDG_RUNTIME_DIR`, the app reaches the bus through the mounted container socket, and its
/// standard output reaches the caller.
#[test]
fn readme_bwrap_example_works() {
    let probe = Command::new("bwrap")
        .args([
            "--ro-bind",
            "/",
            "/",
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        common::skip(
            "readme_bwrap_example_works",
            "bwrap missing or cannot create namespaces here",
        );
        return;
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let block = readme
        .split("```sh\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .find(|b| b.contains("exec bwrap"))
        .expect("README has a bwrap example");
    assert!(block.starts_with("sluicebus-container "), "{block}");
    assert!(block.ends_with("myapp'"), "{block}");
    // The app is a script outside /tmp: the sandbox mounts a tmpfs there when
    // XDG_RUNTIME_DIR is unset, which would hide it (and the whole checkout, when that lives
    // under /tmp as a CI clone may).
    let app = std::path::PathBuf::from("/var/tmp")
        .join(format!("sluicebus-readme-app-{}.sh", std::process::id()));
    std::fs::write(
        &app,
        "#!/bin/sh\necho \"app says hello, bus $DBUS_SESSION_BUS_ADDRESS\"\n\
         exec dbus-send --session --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.GetId\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = format!(
        "{}{}'",
        block
            .strip_suffix("myapp'")
            .unwrap()
            .replacen("sluicebus-container ", "\"$TOOL\" ", 1),
        app.display()
    );
    let bus = TestBus::start();
    let runtime = bus.dir().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    for xdg in [None, Some(&runtime)] {
        let mut c = Command::new("sh");
        c.args(["-c", &script])
            .env("TOOL", TOOL)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address);
        match xdg {
            Some(d) => c.env("XDG_RUNTIME_DIR", d),
            None => c.env_remove("XDG_RUNTIME_DIR"),
        };
        let out = run_with_timeout(c, TIMEOUT);
        let stdout = out.ok();
        let rt = xdg.map_or("/tmp".to_string(), |d| d.display().to_string());
        assert!(
            stdout.starts_with(&format!("app says hello, bus unix:path={rt}/bus\n")),
            "{out:#?}"
        );
        assert!(stdout.contains("method return"), "{out:#?}");
    }
    let _ = std::fs::remove_file(&app);
}

/// `--talk`/`--call` make a filtered instance: the wrapped command reaches the names the
/// rules allow and finds the others absent, with xdg-dbus-proxy's option syntax.
#[test]
fn policy_options_make_a_filtered_instance() {
    let bus = TestBus::for_containers("");
    let _talk = bus.echo_service("org.example.Talk");
    let _call = bus.echo_service("org.example.Call");
    let _hidden = bus.echo_service("org.example.Hidden");
    let script = r#"
call() { d=$1; m=$2; shift 2; gdbus call --session --dest "$d" --object-path /org/example/Echo --method "$m" "$@" 2>&1; }
echo "talk: $(call org.example.Talk org.example.Echo.Add 1 2)"
echo "call-ok: $(call org.example.Call org.example.Echo.Echo x)"
echo "call-no: $(call org.example.Call org.example.Echo.Add 1 2 | grep -o 'Error\.[A-Za-z]*')"
echo "hidden: $(call org.example.Hidden org.example.Echo.Echo x | grep -o 'Error\.[A-Za-z]*')"
"#;
    let out = tool(
        &bus,
        &[
            "--talk",
            "org.example.Talk",
            "--call=org.example.Call=org.example.Echo.Echo@/org/example/*",
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .output()
    .expect("run sluicebus-container");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap_or_else(|| {
                panic!(
                    "no {k} line in {text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_owned()
    };
    // gdbus prints "(3,)" for Add's reply; the calls go through whole or not at all.
    assert!(line("talk").contains("(3,)"), "{text}");
    assert_eq!(line("call-ok"), "('x',)", "{text}");
    assert_eq!(line("call-no"), "Error.AccessDenied", "{text}");
    assert_eq!(line("hidden"), "Error.ServiceUnknown", "{text}");
    assert!(out.status.success(), "{text}");
    // Bad rules are usage errors, as in xdg-dbus-proxy.
    let bad = tool(&bus, &["--talk", ":1.5"]).output().expect("run");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
