//! `sluicebus-dbus-proxy`, the xdg-dbus-proxy front end: its command line errors, the
//! fallback to the real xdg-dbus-proxy on a bus that cannot filter (dbus-daemon, or a
//! sluicebus without `Allow`/`Socket`), and, on a bus that can, a filtered Containers1
//! instance listening on the proxy's PATH with a Flatpak identity, gone when `--fd` closes.

mod common;

use common::{eventually, lines_of, run_with_timeout, session_config, skip, RawConn, TempDir};
use common::{TestBus, DBUS, DBUS_PATH, TIMEOUT};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

const PROXY: &str = env!("CARGO_BIN_EXE_sluicebus-dbus-proxy");
const XDG_DBUS_PROXY: &str = "/usr/bin/xdg-dbus-proxy";
const DBUS_DAEMON: &str = "/usr/bin/dbus-daemon";

/// The proxy binary with a clean environment for the variables it reads.
fn proxy_cmd() -> Command {
    let mut c = Command::new(PROXY);
    clean_env(&mut c);
    c
}

/// No fallback chosen by the environment, and no Flatpak keyfile (a missing file).
fn clean_env(c: &mut Command) {
    c.env_remove("SLUICEBUS_FALLBACK_PROXY").env(
        "SLUICEBUS_FLATPAK_INFO",
        "/nonexistent/sluicebus-test/flatpak-info",
    );
}

/// Let the child inherit `fds` at the same numbers (they are close-on-exec in this process,
/// so no other test's child gets them).
fn inherit(cmd: &mut Command, fds: Vec<RawFd>) {
    // SAFETY: the closure only calls fcntl(2), which is async-signal-safe, allocates nothing
    // and takes no locks, as required between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Whether bwrap can make a sandbox here (it needs user namespaces or root).
fn bwrap_usable() -> bool {
    Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe2")
}

/// A proxy process started with `--fd` and the read end of that pipe.
struct Proxy {
    child: Child,
    /// Our end of `--fd`; dropping it tells the proxy to stop.
    sync: Option<OwnedFd>,
    stderr: mpsc::Receiver<String>,
}

impl Proxy {
    /// Start `cmd` with `--fd=N` prepended (and `extra` descriptors inherited) and wait for
    /// its readiness byte. Panics, with its stderr, if it exits or says nothing in time.
    fn start(cmd: Command, extra: Vec<RawFd>) -> Proxy {
        let (r, w) = pipe();
        let mut real = Command::new(cmd.get_program());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => real.env(k, v),
                None => real.env_remove(k),
            };
        }
        real.arg(format!("--fd={}", w.as_raw_fd()))
            .args(cmd.get_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut fds = extra;
        fds.push(w.as_raw_fd());
        inherit(&mut real, fds);
        let mut child = real.spawn().expect("spawn sluicebus-dbus-proxy");
        drop(w);
        let stderr = lines_of(child.stderr.take().expect("stderr"));
        let byte = read_byte(&r);
        let mut p = Proxy {
            child,
            sync: Some(r),
            stderr,
        };
        if byte != Some(b'x') {
            let status = p.child.try_wait().ok().flatten();
            panic!(
                "no readiness byte (got {byte:?}, status {status:?}); stderr:\n{}",
                p.stderr_now().join("\n")
            );
        }
        p
    }

    /// The stderr lines so far (waits for the stream's end if the process has exited).
    fn stderr_now(&mut self) -> Vec<String> {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        let mut v = Vec::new();
        loop {
            let next = if exited {
                self.stderr.recv_timeout(TIMEOUT).ok()
            } else {
                self.stderr.try_recv().ok()
            };
            match next {
                Some(l) => v.push(l),
                None => return v,
            }
        }
    }

    /// The program the process runs now (after any exec).
    fn exe(&self) -> PathBuf {
        std::fs::read_link(format!("/proc/{}/exe", self.child.id())).expect("read /proc/PID/exe")
    }

    /// Close our end of `--fd` and return the exit code the proxy ends with.
    fn stop(&mut self) -> Option<i32> {
        drop(self.sync.take());
        let mut status = None;
        let exited = eventually(TIMEOUT, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        assert!(exited, "the proxy did not exit after --fd was closed");
        status.and_then(|s| s.code())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One byte from `fd`, or None on end of file, error or timeout.
fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut f = File::from(fd.try_clone().expect("dup"));
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut b = [0u8; 1];
        let r = match f.read(&mut b) {
            Ok(1) => Some(b[0]),
            _ => None,
        };
        let _ = tx.send(r);
    });
    rx.recv_timeout(TIMEOUT).ok().flatten()
}

/// A client on the bus at `address` that owns `name`.
fn owner(address: &str, name: &str) -> RawConn {
    let mut c = RawConn::connect(address);
    c.auth_external();
    c.hello();
    assert_eq!(c.request_name(name, 0), 1, "RequestName {name}");
    c
}

/// A client that connected through the proxy's socket at `path`; its ListNames.
fn names_through(path: &Path) -> (RawConn, Vec<String>) {
    let mut c = RawConn::connect(&format!("unix:path={}", path.display()));
    c.auth_external();
    c.hello();
    let names = c.driver("ListNames", &[]).expect_return().arg_strs(0);
    (c, names)
}

/// The bus's Containers1 SupportedArguments, or None without Containers1.
fn supported_arguments(bus: &TestBus) -> Option<String> {
    let out = bus.gdbus(
        "call",
        &[
            "--dest",
            DBUS,
            "--object-path",
            DBUS_PATH,
            "--method",
            "org.freedesktop.DBus.Properties.Get",
            "org.freedesktop.DBus.Containers1",
            "SupportedArguments",
        ],
    );
    out.success().then(|| out.stdout.clone())
}

fn can_filter(supported: Option<&str>) -> bool {
    supported.is_some_and(|s| s.contains("'Allow'") && s.contains("'Socket'"))
}

/// Run the proxy to completion with `args`; (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = proxy_cmd();
    c.args(args);
    let out = run_with_timeout(c, TIMEOUT);
    (out.status.and_then(|s| s.code()), out.stdout, out.stderr)
}

#[test]
fn command_line_errors_and_help() {
    let (code, _, err) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("usage: sluicebus-dbus-proxy"), "{err}");

    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("--call=NAME=RULE") && out.contains("--fallback-proxy"),
        "{out}"
    );

    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("sluicebus-dbus-proxy "), "{out}");

    let d = TempDir::new("proxy-cli");
    let sock = d.path().join("sock");
    let sock = sock.to_str().expect("utf-8 path");
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "unknown argument --bogus"),
        (&["unix:path=/x"], "no socket path given"),
        (
            &["--filter", "unix:path=/x", sock],
            "must follow its ADDRESS PATH",
        ),
        (
            &["--fd=x", "unix:path=/x", sock],
            "--fd=x: not a file descriptor",
        ),
        (&["--fd=3"], "no proxies specified"),
        (&["unix:path=/x", sock, "--talk=:1.7"], "is a unique name"),
        (
            &["unix:path=/x", sock, "--own=org.*"],
            "\"org.*\" is not a valid bus name",
        ),
        (
            &["unix:path=/x", sock, "--call=org.a.B"],
            "expected NAME=RULE",
        ),
        (
            &["unix:path=/x", sock, "--call=org.a.B=Frob"],
            "neither *, INTERFACE.* nor",
        ),
        (
            &["unix:path=/x", sock, "--broadcast=org.a.B=@/a/"],
            "is not an object path",
        ),
        (
            &["unix:path=/x", sock, "--container-type=x"],
            "interface name",
        ),
        // --args=FD with a descriptor that is not open.
        (
            &["--args=987", "unix:path=/x", sock],
            "cannot read --args=987",
        ),
    ];
    for (args, want) in cases {
        let (code, _, err) = run(args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            err.lines()
                .next()
                .is_some_and(|l| l.starts_with("sluicebus-dbus-proxy: ")),
            "{args:?}: {err}"
        );
    }
    // Nothing was bound by a command line that failed.
    assert!(!Path::new(sock).exists());
}

/// On dbus-daemon (no Containers1) the real xdg-dbus-proxy runs with the same arguments,
/// including those read from `--args=FD`: it writes the readiness byte, filters, and stops
/// when `--fd` closes.
#[test]
fn falls_back_to_xdg_dbus_proxy_on_dbus_daemon() {
    if !Path::new(DBUS_DAEMON).exists() || !Path::new(XDG_DBUS_PROXY).exists() {
        skip(
            "falls_back_to_xdg_dbus_proxy_on_dbus_daemon",
            "needs /usr/bin/dbus-daemon and /usr/bin/xdg-dbus-proxy (tools/test installs them)",
        );
        return;
    }
    let bus = TestBus::with_daemon(Path::new(DBUS_DAEMON), &session_config(""));
    let _visible = owner(&bus.address, "org.example.Visible");
    let _hidden = owner(&bus.address, "org.example.Hidden");
    let path = bus.dir().join("proxy");

    // The pair and its policy come through --args=FD, a file the child inherits.
    let args_file = bus.dir().join("args");
    let text = format!(
        "{}\0{}\0--filter\0--talk=org.example.Visible\0",
        bus.address,
        path.display()
    );
    std::fs::write(&args_file, text).expect("write args");
    let args_fd = OwnedFd::from(File::open(&args_file).expect("open args"));
    let mut cmd = proxy_cmd();
    cmd.arg(format!("--args={}", args_fd.as_raw_fd()))
        .arg("--container-name=ignored-by-xdg-dbus-proxy");
    let mut p = Proxy::start(cmd, vec![args_fd.as_raw_fd()]);

    assert_eq!(
        std::fs::canonicalize(p.exe()).ok(),
        std::fs::canonicalize(XDG_DBUS_PROXY).ok(),
        "the process should now be xdg-dbus-proxy"
    );
    let (mut c, names) = names_through(&path);
    assert!(
        names.iter().any(|n| n == "org.example.Visible"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "org.example.Hidden"),
        "{names:?}"
    );
    let id = c.driver("GetId", &[]).expect_return();
    assert_eq!(id.arg_str(0).len(), 32);

    assert_eq!(p.stop(), Some(0));
    let err = p.stderr_now();
    assert!(
        err.iter()
            .any(|l| l.contains("org.freedesktop.DBus.Containers1")
                && l.ends_with(&format!("running {XDG_DBUS_PROXY}"))),
        "{err:?}"
    );
}

/// Without a fallback to run, the proxy fails with a one-line reason and binds nothing.
#[test]
fn no_fallback_is_a_one_line_error() {
    if !Path::new(DBUS_DAEMON).exists() {
        skip(
            "no_fallback_is_a_one_line_error",
            "needs /usr/bin/dbus-daemon",
        );
        return;
    }
    let bus = TestBus::with_daemon(Path::new(DBUS_DAEMON), &session_config(""));
    let path = bus.dir().join("proxy");
    let path_s = path.to_str().expect("utf-8 path");
    let (code, _, err) = run(&[
        "--fallback-proxy=/nonexistent/xdg-dbus-proxy",
        &bus.address,
        path_s,
        "--filter",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no fallback: /nonexistent/xdg-dbus-proxy does not exist"),
        "{err}"
    );
    assert!(!path.exists());

    // The environment variable names the fallback too; the option wins over it.
    let mut c = proxy_cmd();
    c.env("SLUICEBUS_FALLBACK_PROXY", "/nonexistent/from-env")
        .args([&bus.address, path_s]);
    let out = run_with_timeout(c, TIMEOUT);
    assert!(
        out.stderr.contains("/nonexistent/from-env does not exist"),
        "{out:?}"
    );

    // Falling back to this very program would loop: refused.
    let (code, _, err) = run(&[&format!("--fallback-proxy={PROXY}"), &bus.address, path_s]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is this program"), "{err}");
}

/// A sluicebus whose AddServer lacks `Allow` or `Socket` gets the same fallback.
#[test]
fn falls_back_when_sluicebus_cannot_filter() {
    let bus = TestBus::start();
    let supported = supported_arguments(&bus);
    if can_filter(supported.as_deref()) {
        skip(
            "falls_back_when_sluicebus_cannot_filter",
            "this bus supports Allow and Socket (proxy_end_to_end covers it)",
        );
        return;
    }
    if !Path::new(XDG_DBUS_PROXY).exists() {
        skip(
            "falls_back_when_sluicebus_cannot_filter",
            "needs /usr/bin/xdg-dbus-proxy",
        );
        return;
    }
    let _visible = owner(&bus.address, "org.example.Visible");
    let _hidden = owner(&bus.address, "org.example.Hidden");
    let path = bus.dir().join("proxy");
    let mut cmd = proxy_cmd();
    cmd.arg(&bus.address)
        .arg(&path)
        .args(["--filter", "--see=org.example.Visible"]);
    let mut p = Proxy::start(cmd, Vec::new());
    assert_eq!(
        std::fs::canonicalize(p.exe()).ok(),
        std::fs::canonicalize(XDG_DBUS_PROXY).ok()
    );
    let (_c, names) = names_through(&path);
    assert!(
        names.iter().any(|n| n == "org.example.Visible"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "org.example.Hidden"),
        "{names:?}"
    );
    assert_eq!(p.stop(), Some(0));
    let err = p.stderr_now();
    assert!(
        err.iter().any(|l| l.contains("AddServer does not support")
            || l.contains("no org.freedesktop.DBus.Containers1")),
        "{err:?}"
    );
}

/// On a bus that filters: no relay, a contained client at PATH that sees only what the
/// rules allow, a Flatpak identity from the keyfile, a second unfiltered pair, and the
/// instances gone (clients disconnected, sockets removed) when `--fd` closes.
#[test]
fn proxy_end_to_end() {
    let bus = TestBus::start();
    let supported = supported_arguments(&bus);
    if !can_filter(supported.as_deref()) {
        skip(
            "proxy_end_to_end",
            &format!(
                "the bus's AddServer lacks Allow or Socket (SupportedArguments: {})",
                supported.as_deref().map_or("no Containers1", str::trim)
            ),
        );
        return;
    }
    let _visible = owner(&bus.address, "org.example.Visible");
    let _hidden = owner(&bus.address, "org.example.Hidden");
    let info = bus.dir().join("flatpak-info");
    std::fs::write(
        &info,
        "[Application]\nname=org.example.App\nruntime=runtime/org.example.Platform/x86_64/1\n\n\
         [Instance]\ninstance-id=3141592\nbranch=stable\n",
    )
    .expect("write flatpak-info");
    let filtered = bus.dir().join("filtered");
    let open = bus.dir().join("open");
    let mut cmd = proxy_cmd();
    cmd.env("SLUICEBUS_FLATPAK_INFO", &info)
        // A fallback would be a failure here.
        .arg("--fallback-proxy=/nonexistent/xdg-dbus-proxy")
        .arg(&bus.address)
        .arg(&filtered)
        .args(["--filter", "--talk=org.example.Visible"])
        .arg(&bus.address)
        .arg(&open);
    let mut p = Proxy::start(cmd, Vec::new());
    assert_eq!(
        std::fs::canonicalize(p.exe()).ok(),
        std::fs::canonicalize(PROXY).ok(),
        "no exec expected"
    );

    let (mut contained, names) = names_through(&filtered);
    assert!(
        names.iter().any(|n| n == "org.example.Visible"),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "org.example.Hidden"),
        "{names:?}"
    );
    let (mut unfiltered, names) = names_through(&open);
    assert!(names.iter().any(|n| n == "org.example.Hidden"), "{names:?}");

    // Nothing is relayed: the bus sees the client's own process, not the proxy's.
    let pid = bus.gdbus_driver("GetConnectionUnixProcessID", &[contained.unique()]);
    assert_eq!(pid.ok().trim(), format!("(uint32 {},)", std::process::id()));
    // The bus knows who the contained client is.
    let out = bus.gdbus(
        "call",
        &[
            "--dest",
            DBUS,
            "--object-path",
            DBUS_PATH,
            "--method",
            "org.freedesktop.DBus.Containers1.GetConnectionInfo",
            contained.unique(),
        ],
    );
    let text = out.ok();
    for want in [
        "'org.flatpak'",
        "'org.example.App'",
        "'3141592'",
        "'Instance.branch': <'stable'>",
        "'Application.runtime': <'runtime/org.example.Platform/x86_64/1'>",
    ] {
        assert!(text.contains(want), "{want} missing in {text}");
    }

    assert_eq!(p.stop(), Some(0));
    assert!(
        contained.closed_within(TIMEOUT),
        "contained client still connected"
    );
    assert!(
        unfiltered.closed_within(TIMEOUT),
        "unfiltered client still connected"
    );
    assert!(!filtered.exists() && !open.exists(), "sockets left behind");
    assert!(p.stderr_now().is_empty());
}

/// The README's bwrap recipe, as Flatpak runs the proxy: readiness byte on a pipe, the
/// socket bind-mounted as the sandbox's session bus, the pipe's read end kept by bwrap
/// (`--sync-fd`), and the proxy gone once the sandboxed command ends. On a bus that cannot
/// filter, the same recipe runs through the fallback, so the policy holds either way.
#[test]
fn bwrap_recipe_from_the_readme() {
    if !bwrap_usable() {
        skip(
            "bwrap_recipe_from_the_readme",
            "bwrap is missing or cannot create a sandbox here",
        );
        return;
    }
    let bus = TestBus::start();
    if !can_filter(supported_arguments(&bus).as_deref()) && !Path::new(XDG_DBUS_PROXY).exists() {
        skip(
            "bwrap_recipe_from_the_readme",
            "the bus cannot filter and /usr/bin/xdg-dbus-proxy is missing",
        );
        return;
    }
    let _visible = owner(&bus.address, "org.example.Visible");
    let _hidden = owner(&bus.address, "org.example.Hidden");
    let rt = bus.dir().join("rt");
    std::fs::create_dir(&rt).expect("create runtime dir");
    let bin_dir = Path::new(PROXY).parent().expect("binary directory");
    let script = r#"
rt=$XDG_RUNTIME_DIR
exec 3< <(exec sluicebus-dbus-proxy --fd=1 "$DBUS_SESSION_BUS_ADDRESS" "$rt/app-bus" \
              --filter --talk=org.example.Visible)
read -r -n1 -u 3 ready || exit 1     # the bus listens on $rt/app-bus now
exec bwrap --ro-bind / / --dev /dev --proc /proc --tmpfs "$rt" \
     --bind "$rt/app-bus" "$rt/bus" \
     --setenv DBUS_SESSION_BUS_ADDRESS "unix:path=$rt/bus" \
     --sync-fd 3 dbus-send --session --print-reply --dest=org.freedesktop.DBus \
     / org.freedesktop.DBus.ListNames
"#;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut search = std::ffi::OsString::from(bin_dir);
    search.push(":");
    search.push(path);
    let mut cmd = Command::new("bash");
    clean_env(&mut cmd);
    cmd.args(["-c", script])
        .env("PATH", search)
        .env("XDG_RUNTIME_DIR", &rt)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(out.success(), "{out:#?}");
    assert!(out.stdout.contains("\"org.example.Visible\""), "{out:#?}");
    assert!(!out.stdout.contains("org.example.Hidden"), "{out:#?}");
    // The sandbox ended, so the pipe's read end is closed: the proxy stops and removes its
    // socket.
    assert!(
        eventually(TIMEOUT, || !rt.join("app-bus").exists()),
        "the proxy's socket is still there after the sandbox ended"
    );
}

/// A keyfile larger than the bus's `max_container_metadata_bytes`: the instance is created
/// without the metadata (type, app id and instance id still identify the app), with a
/// warning, rather than not at all.
#[test]
fn oversized_flatpak_metadata_is_dropped() {
    let bus = TestBus::with_limits(&[("max_container_metadata_bytes", 300)]);
    let supported = supported_arguments(&bus);
    if !can_filter(supported.as_deref()) {
        skip(
            "oversized_flatpak_metadata_is_dropped",
            "the bus's AddServer lacks Allow or Socket",
        );
        return;
    }
    let info = bus.dir().join("flatpak-info");
    let big = "x".repeat(1000);
    std::fs::write(
        &info,
        format!("[Application]\nname=org.example.Big\n[Instance]\ninstance-id=9\nbig={big}\n"),
    )
    .expect("write flatpak-info");
    let path = bus.dir().join("proxy");
    let mut cmd = proxy_cmd();
    cmd.env("SLUICEBUS_FLATPAK_INFO", &info)
        .arg("--fallback-proxy=/nonexistent/xdg-dbus-proxy")
        .arg(&bus.address)
        .arg(&path)
        .arg("--filter");
    let mut p = Proxy::start(cmd, Vec::new());
    let (contained, _) = names_through(&path);
    let out = bus.gdbus(
        "call",
        &[
            "--dest",
            DBUS,
            "--object-path",
            DBUS_PATH,
            "--method",
            "org.freedesktop.DBus.Containers1.GetConnectionInfo",
            contained.unique(),
        ],
    );
    let text = out.ok();
    assert!(
        text.contains("'org.example.Big'") && text.contains("'9'"),
        "{text}"
    );
    assert!(!text.contains("Instance.big"), "{text}");
    assert_eq!(p.stop(), Some(0));
    let err = p.stderr_now();
    assert!(
        err.iter()
            .any(|l| l.contains("LimitsExceeded") && l.ends_with("retrying without metadata")),
        "{err:?}"
    );
}

/// When the bus goes away the instances are gone with it: the proxy says so, removes its
/// socket and exits 1.
#[test]
fn exits_when_the_bus_goes_away() {
    let bus = TestBus::start();
    if !can_filter(supported_arguments(&bus).as_deref()) {
        skip(
            "exits_when_the_bus_goes_away",
            "the bus's AddServer lacks Allow or Socket",
        );
        return;
    }
    let dir = TempDir::new("proxy-bus-gone");
    let path = dir.path().join("proxy");
    let mut cmd = proxy_cmd();
    cmd.arg("--fallback-proxy=/nonexistent/xdg-dbus-proxy")
        .arg(&bus.address)
        .arg(&path);
    let mut p = Proxy::start(cmd, Vec::new());
    assert!(path.exists());
    drop(bus);
    let mut status = None;
    assert!(
        eventually(TIMEOUT, || {
            status = p.child.try_wait().ok().flatten();
            status.is_some()
        }),
        "the proxy outlived its bus"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(!path.exists(), "socket left behind");
    let err = p.stderr_now();
    assert!(
        err.iter()
            .any(|l| l.ends_with("the bus closed the connection")),
        "{err:?}"
    );
}

/// Flatpak's launch, reproduced: the proxy runs in its own bwrap sandbox with the app's
/// keyfile mounted at `/.flatpak-info`, its arguments passed on an `--args` fd and its
/// readiness on an `--fd` pipe; the app runs in a second sandbox with PATH bound as its
/// session bus. The app reaches what `--talk` allows and finds the rest absent; an outside
/// service sees its Flatpak identity on the bus; closing the pipe ends it all.
#[test]
fn flatpak_shaped_launch() {
    if !bwrap_usable() {
        skip(
            "flatpak_shaped_launch",
            "bwrap is missing or cannot create a sandbox here",
        );
        return;
    }
    let bus = TestBus::for_containers("");
    if !can_filter(supported_arguments(&bus).as_deref()) {
        skip("flatpak_shaped_launch", "this bus cannot filter");
        return;
    }
    let _svc = bus.echo_service("org.example.Svc");
    let _hidden = bus.echo_service("org.example.Hidden");
    let dir = TempDir::new("flatpak");
    let d = dir.path();
    std::fs::write(
        d.join("flatpak-info"),
        "[Application]\nname=org.example.App\nruntime=runtime/org.example.Platform/x86_64/1\n\n[Instance]\ninstance-id=4242\nbranch=stable\n",
    )
    .expect("write keyfile");
    let app_bus = d.join("app-bus");
    let mut args = Vec::new();
    for a in [
        bus.address.as_str(),
        app_bus.to_str().expect("utf-8 path"),
        "--filter",
        "--talk=org.example.Svc",
    ] {
        args.extend_from_slice(a.as_bytes());
        args.push(0);
    }
    std::fs::write(d.join("args"), args).expect("write args");
    // The proxy's sandbox, built on an empty root as Flatpak builds it (so /.flatpak-info
    // can be mounted): the system's /usr and /etc, the bus's and this test's directories,
    // the keyfile at /.flatpak-info, --args on fd 4, --fd on its stdout.
    let bus_dir = bus
        .address
        .strip_prefix("unix:path=")
        .and_then(|p| p.split(',').next())
        .and_then(|p| Path::new(p).parent())
        .expect("a unix:path bus address")
        .to_owned();
    let mut proxy = Command::new("bash")
        .arg("-c")
        .arg(
            r#"exec 4<"$DIR/args"
exec bwrap --ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
     --symlink usr/bin /bin --symlink usr/sbin /sbin --ro-bind /etc /etc \
     --dev /dev --proc /proc --bind "$DIR" "$DIR" --bind "$BUS_DIR" "$BUS_DIR" \
     --ro-bind "$(dirname "$PROXY")" "$(dirname "$PROXY")" \
     --ro-bind "$DIR/flatpak-info" /.flatpak-info -- "$PROXY" --fd=1 --args=4"#,
        )
        .env("DIR", d)
        .env("BUS_DIR", &bus_dir)
        .env("PROXY", PROXY)
        .env_remove("SLUICEBUS_FLATPAK_INFO")
        .env_remove("SLUICEBUS_FALLBACK_PROXY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the proxy's sandbox");
    let mut ready_pipe = proxy.stdout.take().expect("proxy stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut byte = [0u8; 1];
        let got = ready_pipe.read_exact(&mut byte).map(|()| byte[0]);
        let _ = tx.send((got.ok(), ready_pipe));
    });
    let (ready, ready_pipe) = rx.recv_timeout(TIMEOUT).expect("readiness byte in time");
    assert!(ready.is_some(), "the proxy wrote no readiness byte");

    // The app's sandbox: PATH bound as its session bus.
    let app_script = r#"
import sys, dbus
b = dbus.SessionBus()
print(b.get_unique_name(), flush=True)
def outcome(dest):
    try:
        return str(b.get_object(dest, '/org/example/Echo', introspect=False).Echo('hi', dbus_interface='org.example.Echo'))
    except dbus.exceptions.DBusException as e:
        return e.get_dbus_name()
print('svc', outcome('org.example.Svc'), flush=True)
print('hidden', outcome('org.example.Hidden'), flush=True)
sys.stdin.readline()
"#;
    let mut app = Command::new("bwrap")
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"])
        .args(["--tmpfs", "/run", "--bind"])
        .arg(&app_bus)
        .arg("/run/flatpak-bus")
        .args([
            "--setenv",
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/run/flatpak-bus",
            "--",
            "/usr/bin/python3",
            "-c",
            app_script,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the app's sandbox");
    let lines = lines_of(app.stdout.take().expect("app stdout"));
    let next = || lines.recv_timeout(TIMEOUT).expect("a line from the app");
    let unique = next();
    assert_eq!(next(), "svc hi");
    assert_eq!(next(), "hidden org.freedesktop.DBus.Error.ServiceUnknown");

    // An outside service asks the bus who the caller is.
    let out = Command::new("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args(["--print-reply", "--dest=org.freedesktop.DBus", DBUS_PATH])
        .arg("org.freedesktop.DBus.Containers1.GetConnectionInfo")
        .arg(format!("string:{unique}"))
        .output()
        .expect("dbus-send");
    let info = String::from_utf8_lossy(&out.stdout);
    for want in [
        "org.flatpak",
        "org.example.App",
        "4242",
        "Instance.branch",
        "stable",
    ] {
        assert!(
            info.contains(want),
            "{want} missing from:\n{info}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Flatpak closes its end of the pipe when the app is done: everything goes.
    drop(app.stdin.take());
    let _ = app.wait();
    drop(ready_pipe);
    let exited = eventually(TIMEOUT, || matches!(proxy.try_wait(), Ok(Some(_))));
    if !exited {
        let _ = proxy.kill();
        let _ = proxy.wait();
    }
    assert!(exited, "the proxy did not exit when --fd closed");
    assert!(
        eventually(TIMEOUT, || !app_bus.exists()),
        "the proxy's socket outlived it"
    );
}
