//! `sluicebus-dbus-proxy`: a drop-in for xdg-dbus-proxy that relays nothing.
//!
//! It takes xdg-dbus-proxy's command line (parsed and translated in
//! [`sluicebus::proxy_cli`]). For each `ADDRESS PATH` pair it connects to the bus at ADDRESS,
//! binds a listening socket at PATH and hands it to the bus with Containers1
//! `AddServer(sssa{sv}a{sv})`: named argument `Socket` (the listening socket), `Allow` (the
//! translated `--see/--talk/--own/--call/--broadcast` rules, only with `--filter`; without it
//! the instance is unfiltered, as the proxy is) and `StopOnNotify` (a duplicate of `--fd`).
//! Clients that connect to PATH then talk to the bus directly, contained and filtered by the
//! bus itself. Like xdg-dbus-proxy it writes one byte to `--fd` once every proxy is ready and
//! exits when the other end of `--fd` is closed.
//!
//! When a bus cannot do this (no Containers1, `SupportedArguments` without `Socket` or, with
//! `--filter`, `Allow`, no fd passing, an address this client cannot reach), the real
//! xdg-dbus-proxy is executed with the same arguments (ours removed, `--args=FD` expanded),
//! before anything was bound or created.

// The few system calls that need `unsafe` are in `sluicebus::sys`.
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use sluicebus::bus_client::{ClientError, Conn};
use sluicebus::proxy_cli::{self, AllowRule, Command, Identity, Invocation, ProxySpec};
use sluicebus::wire::marshal::{BodyReader, BodyWriter, Value};

const PROG: &str = "sluicebus-dbus-proxy";

const USAGE: &str = "\
usage: sluicebus-dbus-proxy [OPTIONS...] [ADDRESS PATH [OPTIONS...] ...]

An xdg-dbus-proxy replacement: for each ADDRESS PATH pair, the bus at ADDRESS is asked
(org.freedesktop.DBus.Containers1.AddServer) to listen on PATH itself and to apply the
proxy's policy to the clients that connect there. Nothing is relayed. A bus that cannot
do this gets the real xdg-dbus-proxy instead, with the same arguments.

Options:
    --help                       Print this help
    --version                    Print the version
    --fd=FD                      Write a byte to FD when ready; exit when FD is closed
    --args=FD                    Read NUL-separated arguments from FD
    --container-type=TYPE        Container type outside Flatpak
                                 (default org.freedesktop.DBus.Proxy)
    --container-name=NAME        App name outside Flatpak (default: PATH's file name)
    --fallback-proxy=PATH        The xdg-dbus-proxy to run when the bus cannot filter
                                 (default $SLUICEBUS_FALLBACK_PROXY, else
                                 /usr/bin/xdg-dbus-proxy)

Proxy options (after ADDRESS PATH, for that proxy):
    --filter                     Apply the policy below (otherwise: no filtering)
    --log                        Accepted; nothing passes through this process
    --sloppy-names               Accepted; unique-name visibility is the bus's policy
    --see=NAME                   NAME is visible
    --talk=NAME                  NAME is visible and can be called and heard
    --own=NAME                   as --talk, and NAME may be owned
    --call=NAME=RULE             calls to NAME matching RULE are allowed
    --broadcast=NAME=RULE        broadcasts from NAME matching RULE are received

NAME may end in .* (the name and every name below it). RULE is [METHOD][@PATH]: METHOD is
*, INTERFACE.* or INTERFACE.METHOD; PATH is an object path, or /PATH/* for a subtree.

Inside a Flatpak sandbox (/.flatpak-info exists; $SLUICEBUS_FLATPAK_INFO overrides the
path) the instance is of type org.flatpak, named by the app id, with the keyfile's other
entries as metadata.
";

const DBUS_PATH: &str = "/org/freedesktop/DBus";
const CONTAINERS1: &str = "org.freedesktop.DBus.Containers1";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// The error a bus limit (here: max_container_metadata_bytes) is reported with.
const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";

/// A failure, printed as one line.
#[derive(Debug)]
enum Failure {
    /// The bus answered with an error.
    Bus { name: String, text: String },
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Bus { name, text } if text.is_empty() => write!(f, "{name}"),
            Failure::Bus { name, text } => write!(f, "{name}: {text}"),
            Failure::Other(s) => f.write_str(s),
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

/// Connect to the first `unix:path=` / `unix:abstract=` entry of `address` that accepts.
/// Connect to the bus of `spec` and check that it can serve it: Containers1 with the named
/// arguments [`proxy_cli::required_arguments`] in its `SupportedArguments` property.
/// The error is the reason to fall back.
fn probe(spec: &ProxySpec) -> Result<Conn, String> {
    let mut c = Conn::open(&spec.address, true).map_err(|e| e.to_string())?;
    let mut body = BodyWriter::new();
    body.str(CONTAINERS1).str("SupportedArguments");
    let reply = c
        .call(DBUS_PATH, PROPERTIES, "Get", &body, &[])
        .map_err(|e| format!("no {CONTAINERS1}.SupportedArguments ({e})"))?;
    let supported = match BodyReader::new(&reply).value() {
        Ok(Value::Variant(v)) => match *v {
            Value::Array(_, items) => items
                .into_iter()
                .filter_map(|i| match i {
                    Value::Str(s) => Some(s),
                    _ => None,
                })
                .collect::<Vec<String>>(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let missing: Vec<&str> = proxy_cli::required_arguments(spec)
        .into_iter()
        .filter(|a| !supported.iter().any(|s| s == a))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "AddServer does not support {} (SupportedArguments: {})",
            missing.join(", "),
            if supported.is_empty() {
                "none".to_string()
            } else {
                supported.join(", ")
            }
        ));
    }
    Ok(c)
}

/// The AddServer arguments of one proxy.
fn add_server_body(id: &Identity, allow: Option<&[AllowRule]>, with_notify: bool) -> BodyWriter {
    let mut body = BodyWriter::new();
    body.str(&id.container_type)
        .str(&id.app_id)
        .str(&id.instance_id)
        .array("{sv}", |w| {
            for (k, v) in &id.metadata {
                w.dict_entry(|w| {
                    w.str(k).variant("s", |w| {
                        w.str(v);
                    });
                });
            }
        })
        .array("{sv}", |w| {
            // fd 0 is the listening socket, fd 1 the --fd duplicate.
            w.dict_entry(|w| {
                w.str("Socket").variant("h", |w| {
                    w.fd(0);
                });
            });
            if with_notify {
                w.dict_entry(|w| {
                    w.str("StopOnNotify").variant("h", |w| {
                        w.fd(1);
                    });
                });
            }
            if let Some(rules) = allow {
                w.dict_entry(|w| {
                    w.str("Allow").variant(proxy_cli::ALLOW_SIGNATURE, |w| {
                        w.array("(usos)", |w| {
                            for r in rules {
                                w.structure("(usos)", |w| {
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
    body
}

/// A running proxy: its bus connection and what to clean up.
struct Running {
    conn: Conn,
    address: String,
    path: PathBuf,
    instance: String,
}

/// Bind the listening socket at `path`. Like xdg-dbus-proxy, a file already there is
/// removed first (a stale socket of an earlier run would make bind fail).
fn listen(path: &Path) -> Result<UnixListener, Failure> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| other(&format!("cannot listen on {}", path.display()), e))?;
    l.set_nonblocking(true)
        .map_err(|e| other(&format!("cannot listen on {}", path.display()), e))?;
    Ok(l)
}

/// Create the instance of one proxy on its (probed) connection.
fn start(
    mut conn: Conn,
    spec: &ProxySpec,
    id: &Identity,
    notify: Option<&OwnedFd>,
) -> Result<Running, Failure> {
    let listener = listen(&spec.path)?;
    let mut fds = vec![listener.as_fd()];
    if let Some(n) = notify {
        fds.push(n.as_fd());
    }
    let allow = spec.filter.then_some(&spec.allow[..]);
    let mut reply = conn.call(
        DBUS_PATH,
        CONTAINERS1,
        "AddServer",
        &add_server_body(id, allow, notify.is_some()),
        &fds,
    );
    // A Flatpak keyfile can exceed the bus's max_container_metadata_bytes. The type, app id
    // and instance id identify the app; the rest is a convenience, so try once without it
    // rather than leave the app without a bus.
    if matches!(&reply, Err(ClientError::Bus { name, .. }) if name == LIMITS_EXCEEDED)
        && !id.metadata.is_empty()
    {
        if let Err(e) = &reply {
            eprintln!(
                "{PROG}: {}: AddServer: {e}; retrying without metadata",
                spec.address
            );
        }
        let bare = Identity {
            metadata: Vec::new(),
            ..id.clone()
        };
        reply = conn.call(
            DBUS_PATH,
            CONTAINERS1,
            "AddServer",
            &add_server_body(&bare, allow, notify.is_some()),
            &fds,
        );
    }
    drop(fds);
    let reply = match reply {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&spec.path);
            return Err(e.into());
        }
    };
    // The bus listens on its own copy of the socket from now on.
    drop(listener);
    let instance = BodyReader::new(&reply)
        .str()
        .map(str::to_string)
        .map_err(|_| {
            Failure::Other(format!(
                "unexpected AddServer reply ({})",
                reply.signature()
            ))
        })?;
    Ok(Running {
        conn,
        address: spec.address.clone(),
        path: spec.path.clone(),
        instance,
    })
}

/// The identity for the proxy at `socket_path`: Flatpak's keyfile if there is one.
fn identity(inv: &Invocation, flatpak: Option<&Identity>, socket_path: &Path) -> Identity {
    match flatpak {
        Some(id) => id.clone(),
        None => proxy_cli::plain_identity(inv, socket_path),
    }
}

/// Read the Flatpak keyfile, if this runs in a Flatpak sandbox.
fn read_flatpak_info() -> Result<Option<Identity>, Failure> {
    let path = std::env::var_os(proxy_cli::FLATPAK_INFO_ENV)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(proxy_cli::FLATPAK_INFO_PATH));
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(other(&format!("cannot read {}", path.display()), e)),
    };
    let text = String::from_utf8(text)
        .map_err(|_| Failure::Other(format!("{}: not UTF-8", path.display())))?;
    proxy_cli::flatpak_identity(&text)
        .map(Some)
        .map_err(|e| Failure::Other(format!("{}: {e}", path.display())))
}

/// Replace this process with the real xdg-dbus-proxy; returns only on failure.
fn fallback(inv: &Invocation, address: &str, reason: &str) -> ExitCode {
    let proxy = proxy_cli::fallback_path(inv, std::env::var_os(proxy_cli::FALLBACK_ENV));
    let me = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    if me.is_some() && std::fs::canonicalize(&proxy).ok() == me {
        eprintln!(
            "{PROG}: {address}: {reason}; the fallback {} is this program",
            proxy.display()
        );
        return ExitCode::FAILURE;
    }
    if !proxy.exists() {
        eprintln!(
            "{PROG}: {address}: {reason}; no fallback: {} does not exist",
            proxy.display()
        );
        return ExitCode::FAILURE;
    }
    eprintln!("{PROG}: {address}: {reason}; running {}", proxy.display());
    let e = std::process::Command::new(&proxy)
        .args(&inv.forwarded)
        .exec();
    eprintln!("{PROG}: cannot run {}: {e}", proxy.display());
    ExitCode::FAILURE
}

/// Remove the sockets of `running` (xdg-dbus-proxy removes its socket when it stops).
fn unlink_all(running: &[Running]) {
    for r in running {
        let _ = std::fs::remove_file(&r.path);
    }
}

fn run(inv: Invocation) -> ExitCode {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("{PROG}: {e}");
        ExitCode::FAILURE
    };
    let sync = match inv.sync_fd {
        Some(fd) => match sluicebus::sys::dup_inherited_fd(fd) {
            Ok(d) => Some(d),
            Err(e) => return fail(&format!("--fd={fd}: {e}")),
        },
        None => None,
    };
    // Every bus must do the work before anything is created: one fallback serves all.
    let mut conns = Vec::new();
    for spec in &inv.proxies {
        match probe(spec) {
            Ok(c) => conns.push(c),
            Err(reason) => {
                drop(conns);
                return fallback(&inv, &spec.address, &reason);
            }
        }
    }
    let flatpak = match read_flatpak_info() {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    let mut running: Vec<Running> = Vec::new();
    for (conn, spec) in conns.into_iter().zip(&inv.proxies) {
        let id = identity(&inv, flatpak.as_ref(), &spec.path);
        match start(conn, spec, &id, sync.as_ref()) {
            Ok(r) => running.push(r),
            Err(e) => {
                unlink_all(&running);
                return fail(&format!("{}: AddServer: {e}", spec.address));
            }
        }
    }
    if let Some(s) = &sync {
        // The readiness byte (xdg-dbus-proxy(1), --fd); like the proxy, a failed write is
        // only reported.
        let mut f = std::fs::File::from(match s.try_clone() {
            Ok(d) => d,
            Err(e) => return fail(&format!("--fd: {e}")),
        });
        if let Err(e) = f.write_all(b"x") {
            eprintln!("{PROG}: cannot write to --fd: {e}");
        }
    }
    let code = wait(&mut running, sync.as_ref());
    unlink_all(&running);
    code
}

/// Wait until `--fd` is closed by its peer (stop the instances, exit 0) or a bus goes away
/// (exit 1). Messages from the bus are read and dropped.
fn wait(running: &mut [Running], sync: Option<&OwnedFd>) -> ExitCode {
    loop {
        let mut fds: Vec<PollFd<'_>> = Vec::new();
        // No events requested: hang-up and error are always reported (poll(2)), and a write
        // end of a pipe never becomes readable.
        if let Some(s) = sync {
            fds.push(PollFd::new(s.as_fd(), PollFlags::empty()));
        }
        for r in running.iter() {
            fds.push(PollFd::new(r.conn.stream().as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("{PROG}: poll: {e}");
                return ExitCode::FAILURE;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let (sync_ready, bus_ready) = match sync {
            Some(_) => (ready.first().copied().unwrap_or(false), ready.get(1..)),
            None => (false, ready.get(..)),
        };
        if sync_ready {
            // Stop explicitly so that the contained connections are gone before we exit (the
            // bus would also stop each instance on StopOnNotify or when we disconnect).
            for r in running.iter_mut() {
                let mut b = BodyWriter::new();
                b.object_path(&r.instance);
                if let Err(e) = r.conn.call(DBUS_PATH, CONTAINERS1, "StopInstance", &b, &[]) {
                    if !matches!(&e, ClientError::Bus { name, .. } if name.ends_with(".NotContainer"))
                    {
                        eprintln!("{PROG}: {}: StopInstance: {e}", r.address);
                    }
                }
            }
            return ExitCode::SUCCESS;
        }
        for (r, ready) in running.iter_mut().zip(bus_ready.unwrap_or_default()) {
            if !ready {
                continue;
            }
            let gone = match r.conn.fill() {
                Ok(true) => loop {
                    match r.conn.next_buffered() {
                        Ok(Some(_)) => {}
                        Ok(None) => break None,
                        Err(e) => break Some(e.to_string()),
                    }
                },
                Ok(false) => Some("the bus closed the connection".to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = gone {
                eprintln!("{PROG}: {}: {why}", r.address);
                return ExitCode::FAILURE;
            }
        }
    }
}

/// The contents of an `--args=FD` descriptor (read to its end; the number stays open).
fn read_args_fd(fd: std::os::fd::RawFd) -> Result<Vec<u8>, String> {
    let dup = sluicebus::sys::dup_inherited_fd(fd).map_err(|e| e.to_string())?;
    let mut data = Vec::new();
    std::fs::File::from(dup)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    Ok(data)
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.is_empty() {
        eprint!("{USAGE}");
        return ExitCode::FAILURE;
    }
    match proxy_cli::parse(args, read_args_fd) {
        Err(e) => {
            eprintln!("{PROG}: {e}\nTry '{PROG} --help'.");
            ExitCode::FAILURE
        }
        Ok(Command::Help) => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!("{PROG} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Command::Run(inv)) => run(inv),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluicebus::wire::marshal::MessageBuilder;
    use sluicebus::wire::message::Message;

    const DBUS: &str = "org.freedesktop.DBus";

    /// The AddServer call as the bus will parse it: the 2024 signature, the identity, the
    /// metadata as strings and the named arguments with their fd indices and rules.
    #[test]
    fn add_server_message() {
        let id = Identity {
            container_type: "org.flatpak".into(),
            app_id: "org.example.App".into(),
            instance_id: "7".into(),
            metadata: vec![("Instance.branch".into(), "stable".into())],
        };
        let rules = [AllowRule {
            flags: proxy_cli::SEE | proxy_cli::OBJECT_PATH_IS_SUBTREE,
            name: "org.a".into(),
            path: "/p".into(),
            interface: "org.a.I.*".into(),
        }];
        let body = add_server_body(&id, Some(&rules), true);
        let bytes = MessageBuilder::method_call(DBUS_PATH, Some(CONTAINERS1), "AddServer")
            .destination(DBUS)
            .unix_fds(2)
            .build(1, &body);
        let msg = Message::parse(bytes.into(), 2).expect("valid message");
        assert_eq!(msg.signature(), "sssa{sv}a{sv}");
        let mut r = BodyReader::new(&msg);
        assert_eq!(r.str().ok(), Some("org.flatpak"));
        assert_eq!(r.str().ok(), Some("org.example.App"));
        assert_eq!(r.str().ok(), Some("7"));
        let s = |v: &str| Value::Str(v.into());
        let var = |v: Value| Value::Variant(Box::new(v));
        assert_eq!(
            r.value().ok(),
            Some(Value::Dict(
                "s".into(),
                "v".into(),
                vec![(s("Instance.branch"), var(s("stable")))]
            ))
        );
        let allow = Value::Array(
            "(usos)".into(),
            vec![Value::Struct(vec![
                Value::U32(0x06),
                s("org.a"),
                Value::ObjectPath("/p".into()),
                s("org.a.I.*"),
            ])],
        );
        assert_eq!(
            r.value().ok(),
            Some(Value::Dict(
                "s".into(),
                "v".into(),
                vec![
                    (s("Socket"), var(Value::Fd(0))),
                    (s("StopOnNotify"), var(Value::Fd(1))),
                    (s("Allow"), var(allow)),
                ]
            ))
        );
        // Unfiltered and without --fd: only the socket.
        let body = add_server_body(&id, None, false);
        let bytes = MessageBuilder::method_call(DBUS_PATH, Some(CONTAINERS1), "AddServer")
            .unix_fds(1)
            .build(1, &body);
        let msg = Message::parse(bytes.into(), 1).expect("valid message");
        let mut r = BodyReader::new(&msg);
        for _ in 0..4 {
            r.skip().expect("argument");
        }
        assert_eq!(
            r.value().ok(),
            Some(Value::Dict(
                "s".into(),
                "v".into(),
                vec![(s("Socket"), var(Value::Fd(0)))]
            ))
        );
    }
}
