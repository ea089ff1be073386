//! `sluicebus-container`: ask a bus for an org.freedesktop.DBus.Containers1 instance and
//! keep it alive for a sandbox launcher written in shell.
//!
//! The tool is a tiny blocking D-Bus client (SASL EXTERNAL over a unix socket) that calls the
//! 2021 `AddServer(ssa{sv}a{sv})`, prints the socket path, the connectable address and the
//! instance path, and then holds its bus connection open: the bus stops the instance when its
//! creator disconnects, so our lifetime is the instance's lifetime.

// The few system calls that need `unsafe` are in `sluicebus::sys`.
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use sluicebus::bus_client::{ClientError, Conn};
use sluicebus::wire::marshal::{BodyReader, BodyWriter, Value};

const USAGE: &str = "\
Usage: sluicebus-container [OPTIONS] --type TYPE --name NAME [--] [COMMAND [ARGS...]]

Create an org.freedesktop.DBus.Containers1 instance (a private listening socket on the bus
whose connections are tagged as contained) and keep it alive.

Options:
  --address ADDR        bus to use (default: $DBUS_SESSION_BUS_ADDRESS, else
                        unix:path=$XDG_RUNTIME_DIR/bus)
  --session             use the session bus (the default)
  --system              use the system bus ($DBUS_SYSTEM_BUS_ADDRESS, else
                        unix:path=/run/dbus/system_bus_socket)
  --type TYPE           container technology, reversed-DNS (e.g. org.example.Sandbox)
  --name NAME           app/container name (any string, may be empty)
  --metadata KEY=VALUE  metadata entry, sent as a string; may be repeated
  --watch-pid PID       stop the instance and exit 0 when process PID exits
  --filter              make the instance filtered (deny by default; see below)
  --see NAME            (implies --filter) NAME is visible inside; as xdg-dbus-proxy
  --talk NAME           ... and may be called (any method, with fds), its broadcasts heard
  --own NAME            ... and may be owned
  --call NAME=RULE      calls matching RULE = [METHOD][@PATH] may be sent to NAME
  --broadcast NAME=RULE broadcasts from NAME matching RULE are heard
                        (NAME.* covers NAME and the names below it; METHOD is iface.Member,
                        iface.* or *; PATH is /exact or /subtree/*)
  --print-address-fd FD print the three lines to FD instead of stdout (FD is closed
                        afterwards so a reader sees end-of-file)
  -h, --help            show this help
  --version             show the version

Output (three lines, to stdout or FD, as soon as the instance exists):
  1. filesystem path of the container socket
  2. connectable D-Bus address of that socket
  3. object path of the container instance

Lifetime: the instance lives as long as this process keeps its bus connection.
  - without COMMAND: until SIGTERM/SIGINT (or --watch-pid exits); then it calls
    StopInstance and exits 0;
  - with COMMAND: COMMAND runs with DBUS_SESSION_BUS_ADDRESS set to the container address
    and SLUICEBUS_CONTAINER_SOCKET / SLUICEBUS_CONTAINER_INSTANCE set to lines 1 and 3.
    SIGTERM/SIGINT are forwarded to COMMAND. When COMMAND exits the instance is stopped and
    the tool exits with COMMAND's status (128+N if killed by signal N).
  - if the instance is removed by someone else or the bus goes away, the tool exits 1
    (without COMMAND) or keeps waiting for COMMAND.

Exit status: 0 on success, 1 on errors (bus errors are printed with their D-Bus error
name), 2 on usage errors, 126 if COMMAND cannot be executed, 127 if it is not found, or
COMMAND's status.
";

const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
const CONTAINERS1: &str = "org.freedesktop.DBus.Containers1";
const SYSTEM_BUS: &str = "unix:path=/run/dbus/system_bus_socket";
/// Fallback poll period for --watch-pid when pidfd_open is unavailable.
const PROC_POLL_MS: u16 = 200;

/// Parsed command line.
#[derive(Debug, Default, PartialEq)]
struct Options {
    address: Option<String>,
    system: bool,
    container_type: Option<String>,
    name: Option<String>,
    metadata: Vec<(String, String)>,
    watch_pid: Option<i32>,
    print_fd: Option<RawFd>,
    /// `--filter` or a policy option: the instance gets `Allow` (these rules).
    filter: bool,
    allow: Vec<sluicebus::proxy_cli::AllowRule>,
    command: Vec<OsString>,
    help: bool,
    version: bool,
}

/// Why the tool failed.
#[derive(Debug)]
enum Failure {
    /// The bus answered with an error.
    Bus { name: String, text: String },
    /// COMMAND could not be started; exit with `code` as a shell does (126: found but not
    /// executable, 127: not found).
    Exec { code: u8, text: String },
    /// Anything else (I/O, protocol, setup).
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Bus { name, text } if text.is_empty() => write!(f, "{name}"),
            Failure::Bus { name, text } => write!(f, "{name}: {text}"),
            Failure::Exec { text, .. } | Failure::Other(text) => f.write_str(text),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Bus { name, text } => Failure::Bus { name, text },
            ClientError::Other(s) => Failure::Other(s),
        }
    }
}

fn other(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Other(format!("{what}: {e}"))
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    // Option values must be text: they travel as D-Bus strings or are parsed as numbers.
    fn text(v: Option<OsString>, opt: &str) -> Result<String, String> {
        let v = v.ok_or_else(|| format!("{opt} needs a value"))?;
        v.into_string()
            .map_err(|_| format!("the value of {opt} is not valid UTF-8"))
    }
    while let Some(arg) = it.next() {
        let Some(s) = arg.to_str() else {
            // Not an option: the command starts here.
            o.command.push(arg);
            break;
        };
        // Accept both "--opt value" and "--opt=value".
        let (opt, inline) = match s.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k.to_string(), Some(OsString::from(v))),
            _ => (s.to_string(), None),
        };
        let takes_value = matches!(
            opt.as_str(),
            "--address"
                | "--type"
                | "--name"
                | "--metadata"
                | "--watch-pid"
                | "--print-address-fd"
                | "--see"
                | "--talk"
                | "--own"
                | "--call"
                | "--broadcast"
        );
        if !takes_value && inline.is_some() {
            return Err(format!("{opt} takes no value"));
        }
        let value = if takes_value {
            Some(text(inline.or_else(|| it.next()), &opt)?)
        } else {
            None
        };
        let value = value.unwrap_or_default();
        match opt.as_str() {
            "-h" | "--help" => o.help = true,
            "--version" => o.version = true,
            "--system" => o.system = true,
            "--session" => o.system = false,
            "--address" => o.address = Some(value),
            "--filter" => o.filter = true,
            "--see" | "--talk" | "--own" | "--call" | "--broadcast" => {
                let rule = sluicebus::proxy_cli::policy_option(&format!("{opt}={value}"))?
                    .ok_or_else(|| format!("{opt}: not a policy option"))?;
                o.allow.push(rule);
                o.filter = true;
            }
            "--type" => o.container_type = Some(value),
            "--name" => o.name = Some(value),
            "--metadata" => {
                let (k, v) = value
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("--metadata wants KEY=VALUE, got {value:?}"))?;
                o.metadata.push((k.to_string(), v.to_string()));
            }
            "--watch-pid" => {
                let pid = value
                    .parse::<i32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("--watch-pid wants a process id, got {value:?}"))?;
                o.watch_pid = Some(pid);
            }
            "--print-address-fd" => {
                let fd = value
                    .parse::<RawFd>()
                    .ok()
                    .filter(|f| *f >= 0)
                    .ok_or_else(|| format!("--print-address-fd wants an fd, got {value:?}"))?;
                o.print_fd = Some(fd);
            }
            "--" => {
                o.command.extend(it.by_ref());
                break;
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => {
                o.command.push(arg);
                o.command.extend(it.by_ref());
                break;
            }
        }
    }
    if o.help || o.version {
        return Ok(o);
    }
    if o.container_type.is_none() {
        return Err("--type is required".into());
    }
    if o.name.is_none() {
        return Err("--name is required".into());
    }
    Ok(o)
}

/// The bus address to use: explicit, else the system or session default.
fn bus_address(o: &Options, env: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if let Some(a) = &o.address {
        return Ok(a.clone());
    }
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    if o.system {
        return Ok(nonempty("DBUS_SYSTEM_BUS_ADDRESS").unwrap_or_else(|| SYSTEM_BUS.into()));
    }
    if let Some(a) = nonempty("DBUS_SESSION_BUS_ADDRESS") {
        return Ok(a);
    }
    // Same fallback as sd-bus and recent libdbus: the per-user bus socket.
    match nonempty("XDG_RUNTIME_DIR") {
        Some(d) => Ok(format!(
            "unix:path={}",
            sluicebus::wire::address::escape(d.as_bytes()) + "/bus"
        )),
        None => Err(
            "no bus address: pass --address, or set DBUS_SESSION_BUS_ADDRESS or XDG_RUNTIME_DIR"
                .into(),
        ),
    }
}

/// Connect to the first `unix:path=` / `unix:abstract=` entry of `address` that accepts.
/// What AddServer returned.
struct Instance {
    path: String,
    socket: Vec<u8>,
    address: String,
}

fn add_server(c: &mut Conn, o: &Options, address: &str) -> Result<Instance, Failure> {
    let mut body = BodyWriter::new();
    body.str(o.container_type.as_deref().unwrap_or_default())
        .str(o.name.as_deref().unwrap_or_default())
        .array("{sv}", |w| {
            for (k, v) in &o.metadata {
                w.dict_entry(|w| {
                    w.str(k).variant("s", |w| {
                        w.str(v);
                    });
                });
            }
        })
        .array("{sv}", |w| {
            if o.filter {
                w.dict_entry(|w| {
                    w.str("Allow").variant("a(usos)", |w| {
                        w.array("(usos)", |w| {
                            for r in &o.allow {
                                w.structure("usos", |w| {
                                    w.u32(r.flags)
                                        .str(&r.name)
                                        .object_path(&r.path)
                                        .str(&r.interface);
                                });
                            }
                        });
                    });
                });
            }
        });
    let reply = c
        .call(DBUS_PATH, CONTAINERS1, "AddServer", &body, &[])
        .map_err(|e| match Failure::from(e) {
            // A bus without the interface (dbus-daemon as Debian builds it) answers
            // UnknownInterface or UnknownMethod: say what that means.
            Failure::Bus { name, text }
                if name == "org.freedesktop.DBus.Error.UnknownInterface"
                    || name == "org.freedesktop.DBus.Error.UnknownMethod" =>
            {
                Failure::Bus {
                    name,
                    text: format!(
                        "{text}\nthe bus at {address} does not support {CONTAINERS1}; is it sluicebus?"
                    ),
                }
            }
            e => e,
        })?;
    let bad = || {
        Failure::Other(format!(
            "unexpected AddServer reply ({})",
            reply.signature()
        ))
    };
    if reply.signature() != "oays" {
        return Err(bad());
    }
    let mut r = BodyReader::new(&reply);
    let path = r.str().map_err(|_| bad())?.to_string();
    let socket = match r.value().map_err(|_| bad())? {
        Value::Array(_, bytes) => bytes
            .iter()
            .filter_map(|v| match v {
                Value::Byte(b) => Some(*b),
                _ => None,
            })
            .collect::<Vec<u8>>(),
        _ => return Err(bad()),
    };
    // The path is a bytestring with a trailing NUL (GVariant convention).
    let socket = socket.strip_suffix(&[0]).unwrap_or(&socket).to_vec();
    let address = r.str().map_err(|_| bad())?.to_string();
    Ok(Instance {
        path,
        socket,
        address,
    })
}

/// Write the three lines to stdout or `fd` (closing `fd` afterwards, unless it is stdio).
fn print_instance(inst: &Instance, fd: Option<RawFd>) -> Result<(), Failure> {
    let mut text = inst.socket.clone();
    text.push(b'\n');
    text.extend_from_slice(inst.address.as_bytes());
    text.push(b'\n');
    text.extend_from_slice(inst.path.as_bytes());
    text.push(b'\n');
    match fd {
        None | Some(1) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&text)
                .and_then(|_| out.flush())
                .map_err(|e| other("writing to stdout", e))
        }
        Some(fd) => {
            if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
                return Err(Failure::Other(format!("--print-address-fd {fd}: not open")));
            }
            let r = sluicebus::sys::write_all_fd(fd, &text);
            // The user handed the fd to us: close it so a reader sees EOF (stdio fds are lent).
            if fd > 2 {
                let _ = nix::unistd::close(fd);
            }
            r.map_err(|e| other(&format!("writing to fd {fd}"), e))
        }
    }
}

/// A pidfd for `pid`, or None when the kernel lacks pidfd_open (then /proc is polled).
fn pidfd_open(pid: i32) -> Result<Option<OwnedFd>, Failure> {
    let e = match sluicebus::sys::pidfd_open(pid) {
        Ok(fd) => return Ok(Some(fd)),
        Err(e) => e,
    };
    match e.raw_os_error() {
        Some(libc::ESRCH) => Err(Failure::Other(format!(
            "--watch-pid {pid}: no such process"
        ))),
        Some(libc::ENOSYS) | Some(libc::EPERM) => Ok(None),
        _ => Err(other("pidfd_open", e)),
    }
}

fn proc_alive(pid: i32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// COMMAND could not be started: the status a shell would give (POSIX `sh`, "Command
/// Search and Execution"): 127 when it is not found, 126 when it cannot be executed.
fn exec_failure(prog: &std::ffi::OsStr, e: std::io::Error) -> Failure {
    let code = match e.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    };
    Failure::Exec {
        code,
        text: format!("cannot run {}: {e}", prog.to_string_lossy()),
    }
}

/// Why the wait loop ended.
enum End {
    /// SIGTERM/SIGINT without a command, or the watched process exited.
    Stop,
    /// The command exited with this status.
    Command(i32),
    /// The bus connection closed or the instance was removed elsewhere.
    Lost(String),
}

fn status_code(st: std::process::ExitStatus) -> i32 {
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Wait until something ends the instance's life.
fn wait(
    c: &mut Conn,
    inst: &Instance,
    sfd: &mut SignalFd,
    pidfd: Option<&OwnedFd>,
    watch_pid: Option<i32>,
    mut child: Option<&mut Child>,
) -> Result<End, Failure> {
    let mut lost: Option<String> = None;
    loop {
        // A child that exited before we blocked in poll is caught here, SIGCHLD or not.
        if let Some(ch) = child.as_deref_mut() {
            if let Some(st) = ch.try_wait().map_err(|e| other("waiting for COMMAND", e))? {
                return Ok(End::Command(status_code(st)));
            }
        } else if let Some(why) = lost.take() {
            return Ok(End::Lost(why));
        }
        if pidfd.is_none() && watch_pid.is_some_and(|p| !proc_alive(p)) {
            return Ok(End::Stop);
        }
        // Once the bus is gone, stop polling its (permanently readable) socket.
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        let bus_idx = lost.is_none().then(|| {
            fds.push(PollFd::new(c.stream().as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let pid_idx = pidfd.map(|p| {
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            fds.len() - 1
        });
        let timeout = if pidfd.is_none() && watch_pid.is_some() {
            PollTimeout::from(PROC_POLL_MS)
        } else {
            PollTimeout::NONE
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(other("poll", e)),
        }
        let ready = |i: Option<usize>| {
            i.and_then(|i| fds.get(i))
                .and_then(|f| f.revents())
                .is_some_and(|r| !r.is_empty())
        };
        let (sig_ready, bus_ready, pid_ready) = (ready(Some(0)), ready(bus_idx), ready(pid_idx));
        drop(fds);
        if pid_ready {
            return Ok(End::Stop);
        }
        if sig_ready {
            while let Ok(Some(info)) = sfd.read_signal() {
                let signo = info.ssi_signo as i32;
                if signo == libc::SIGTERM || signo == libc::SIGINT {
                    match child.as_deref_mut() {
                        // A wrapper passes the request on and lets COMMAND decide.
                        Some(ch) => {
                            let pid = nix::unistd::Pid::from_raw(ch.id() as i32);
                            if let Ok(s) = Signal::try_from(signo) {
                                let _ = nix::sys::signal::kill(pid, s);
                            }
                        }
                        None => return Ok(End::Stop),
                    }
                }
            }
        }
        if bus_ready {
            if !c.fill()? {
                lost = Some("the bus closed the connection".into());
                continue;
            }
            while let Some(m) = c.next_buffered()? {
                if m.msg_type == 4
                    && m.interface() == Some(CONTAINERS1)
                    && m.member() == Some("InstanceRemoved")
                    && BodyReader::new(&m).str().ok() == Some(inst.path.as_str())
                {
                    lost = Some(format!("instance {} was removed", inst.path));
                }
            }
        }
    }
}

fn run(o: Options) -> Result<ExitCode, Failure> {
    let address = bus_address(&o, |k| std::env::var(k).ok()).map_err(Failure::Other)?;
    // Signals become readable events; blocked before anything can arrive. The mask is
    // inherited across exec, so COMMAND gets it cleared again (see pre_exec below).
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(|e| other("sigprocmask", e))?;
    let mut sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| other("signalfd", e))?;
    // Check the watched process before creating anything, so a bad pid leaves nothing behind.
    let pidfd = match o.watch_pid {
        Some(p) => {
            let fd = pidfd_open(p)?;
            if fd.is_none() && !proc_alive(p) {
                return Err(Failure::Other(format!("--watch-pid {p}: no such process")));
            }
            fd
        }
        None => None,
    };

    let mut c = Conn::open(&address, false)?;
    let inst = add_server(&mut c, &o, &address)?;
    // Best effort: learn when someone else stops our instance.
    let rule = format!(
        "type='signal',sender='{DBUS}',interface='{CONTAINERS1}',member='InstanceRemoved',arg0path='{}'",
        inst.path
    );
    let mut b = BodyWriter::new();
    b.str(&rule);
    let _ = c.call(DBUS_PATH, DBUS, "AddMatch", &b, &[]);

    let result = (|| {
        print_instance(&inst, o.print_fd)?;
        let mut child = match o.command.split_first() {
            Some((prog, args)) => Some({
                let mut cmd = Command::new(prog);
                sluicebus::sys::unblock_in_child(&mut cmd, mask);
                cmd.args(args)
                    .env("DBUS_SESSION_BUS_ADDRESS", &inst.address)
                    .env(
                        "SLUICEBUS_CONTAINER_SOCKET",
                        std::ffi::OsStr::from_bytes(&inst.socket),
                    )
                    .env("SLUICEBUS_CONTAINER_INSTANCE", &inst.path)
                    .spawn()
                    .map_err(|e| exec_failure(prog, e))?
            }),
            None => None,
        };
        wait(
            &mut c,
            &inst,
            &mut sfd,
            pidfd.as_ref(),
            o.watch_pid,
            child.as_mut(),
        )
    })();

    // Stop explicitly rather than relying on the disconnect, so the socket is gone
    // before we exit (a caller may check right after).
    let lost = matches!(result, Ok(End::Lost(_)));
    if !lost {
        let mut b = BodyWriter::new();
        b.object_path(&inst.path);
        match c
            .call(DBUS_PATH, CONTAINERS1, "StopInstance", &b, &[])
            .map_err(Failure::from)
        {
            Ok(_) => {}
            // Already gone (stopped by someone else): nothing to do.
            Err(Failure::Bus { name, .. }) if name.ends_with(".NotContainer") => {}
            Err(e) => eprintln!("sluicebus-container: StopInstance: {e}"),
        }
    }
    match result? {
        End::Stop => Ok(ExitCode::SUCCESS),
        End::Command(code) => Ok(ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))),
        End::Lost(why) => Err(Failure::Other(why)),
    }
}

fn main() -> ExitCode {
    let o = match parse_args(std::env::args_os().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluicebus-container: {e}\nTry 'sluicebus-container --help'.");
            return ExitCode::from(2);
        }
    };
    if o.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if o.version {
        print!(
            "{}",
            sluicebus::cli::version_text("sluicebus-container", &[])
        );
        return ExitCode::SUCCESS;
    }
    match run(o) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluicebus-container: {e}");
            match e {
                Failure::Exec { code, .. } => ExitCode::from(code),
                _ => ExitCode::from(1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Options, String> {
        parse_args(v.iter().map(OsString::from))
    }

    #[test]
    fn parses_full_command_line() {
        let o = args(&[
            "--address=unix:path=/x",
            "--type",
            "org.example.Sandbox",
            "--name=app",
            "--metadata",
            "k=v=w",
            "--metadata=e=",
            "--watch-pid",
            "42",
            "--print-address-fd",
            "3",
            "--",
            "prog",
            "--type",
        ])
        .unwrap();
        assert_eq!(o.address.as_deref(), Some("unix:path=/x"));
        assert_eq!(o.container_type.as_deref(), Some("org.example.Sandbox"));
        assert_eq!(o.name.as_deref(), Some("app"));
        assert_eq!(
            o.metadata,
            vec![("k".into(), "v=w".into()), ("e".into(), String::new())]
        );
        assert_eq!(o.watch_pid, Some(42));
        assert_eq!(o.print_fd, Some(3));
        assert_eq!(o.command, vec![OsString::from("prog"), "--type".into()]);
    }

    #[test]
    fn command_without_double_dash_and_empty_name() {
        let o = args(&["--type", "a.b", "--name", "", "sh", "-c", "x"]).unwrap();
        assert_eq!(o.name.as_deref(), Some(""));
        assert_eq!(
            o.command,
            vec![OsString::from("sh"), "-c".into(), "x".into()]
        );
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(args(&["--name", "n"]).unwrap_err().contains("--type"));
        assert!(args(&["--type", "a.b"]).unwrap_err().contains("--name"));
        assert!(args(&["--type"]).unwrap_err().contains("needs a value"));
        assert!(args(&["--type", "a.b", "--name", "n", "--bogus"])
            .unwrap_err()
            .contains("unknown option"));
        assert!(args(&["--type", "a.b", "--name", "n", "--metadata", "novalue"]).is_err());
        assert!(args(&["--type", "a.b", "--name", "n", "--metadata", "=v"])
            .unwrap_err()
            .contains("KEY=VALUE"));
        assert!(args(&["--version"]).unwrap().version);
        assert!(args(&["--type", "a.b", "--name", "n", "--watch-pid", "0"]).is_err());
        assert!(args(&["--type", "a.b", "--name", "n", "--watch-pid", "x"]).is_err());
        assert!(args(&["--type", "a.b", "--name", "n", "--print-address-fd", "-1"]).is_err());
        assert!(args(&["--type", "a.b", "--name", "n", "--system=yes"]).is_err());
        assert!(args(&["--help"]).unwrap().help);
    }

    #[test]
    fn chooses_bus_address() {
        let o = args(&["--type", "a.b", "--name", "n"]).unwrap();
        let env = |k: &str| match k {
            "DBUS_SESSION_BUS_ADDRESS" => Some("unix:path=/s".to_string()),
            "XDG_RUNTIME_DIR" => Some("/run/user/7".to_string()),
            _ => None,
        };
        assert_eq!(bus_address(&o, env).unwrap(), "unix:path=/s");
        let no_session = |k: &str| (k == "XDG_RUNTIME_DIR").then(|| "/run/user/7".to_string());
        assert_eq!(
            bus_address(&o, no_session).unwrap(),
            "unix:path=/run/user/7/bus"
        );
        assert!(bus_address(&o, |_| None).is_err());
        let sys = args(&["--system", "--type", "a.b", "--name", "n"]).unwrap();
        assert_eq!(bus_address(&sys, env).unwrap(), SYSTEM_BUS);
        let explicit = args(&[
            "--system",
            "--address",
            "unix:abstract=z",
            "--type",
            "a.b",
            "--name",
            "n",
        ])
        .unwrap();
        assert_eq!(bus_address(&explicit, env).unwrap(), "unix:abstract=z");
    }
}
