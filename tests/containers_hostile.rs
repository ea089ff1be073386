//! org.freedesktop.DBus.Containers1 under hostile use: malformed and oversized metadata, thousands
//! of instances, creators dying mid-call, contained floods. Every test checks that the bus stays
//! up, still serves a fresh client, and leaks neither socket files nor listening fds.
//!
//! Messages are marshalled by hand ([`RawConn`] plus a tiny body writer) so that wrong signatures
//! and wire-limit bodies can be sent.

mod common;

use common::{
    build_message, driver_call_bytes, eventually, msg_type, running_as_root, Arg, MsgSpec, RawConn,
    RawMsg, TestBus, Writer, DBUS, DBUS_PATH, FLAG_NO_REPLY_EXPECTED, PYTHON, TIMEOUT,
};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const C1: &str = "org.freedesktop.DBus.Containers1";
const INVALID_ARGS: &str = "org.freedesktop.DBus.Error.InvalidArgs";
const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";
const NOT_CONTAINER: &str = "org.freedesktop.DBus.Error.NotContainer";
const SIG_2021: &str = "ssa{sv}a{sv}";

// ---------------------------------------------------------------------------------------------
// Helpers

fn bus_with(extra: &str) -> TestBus {
    TestBus::for_containers(extra)
}

/// The directory the bus puts container sockets in (same choice as the daemon makes for the
/// uid the tests run as; the daemon inherits our environment).
fn socket_dir() -> PathBuf {
    if running_as_root() {
        return PathBuf::from("/run/dbus/containers");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("dbus-1").join("containers"),
        _ => std::env::temp_dir(),
    }
}

/// Socket files in the container directory that nobody listens on any more (connect is
/// refused): what a leak looks like. Live sockets of other buses on the machine are ignored.
fn stale_socket_files() -> HashSet<PathBuf> {
    let Ok(rd) = std::fs::read_dir(socket_dir()) else {
        return HashSet::new();
    };
    rd.filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dbus-"))
        })
        .filter(|p| {
            matches!(std::os::unix::net::UnixStream::connect(p),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        })
        .collect()
}

/// Open fds of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |rd| rd.count())
}

/// Whether something listens on the unix socket `sock`: a connect succeeds (the connection
/// is dropped again at once). Asks about this one path only, so other buses binding and
/// closing sockets at the same time cannot change the answer.
fn listening(sock: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(sock).is_ok()
}

/// Bound unix sockets held by `pid` whose path lies in the container socket directory: the
/// listening sockets of its live instances. Reads the machine-wide /proc/net/unix, which the
/// kernel produces piecewise: while other tests create and close sockets an entry can be
/// skipped, so this only ever undercounts. Good for "none left" (polled), not for counting
/// live ones (use [`listening`] on the known paths).
fn container_listeners(pid: u32) -> usize {
    let dir = socket_dir();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    let mut bound: HashSet<u64> = HashSet::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if let (Some(inode), Some(path)) = (cols.get(6), cols.get(7)) {
            if Path::new(path).parent() == Some(dir.as_path()) {
                if let Ok(i) = inode.parse() {
                    bound.insert(i);
                }
            }
        }
    }
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse::<u64>()
                .ok()
        })
        .filter(|i| bound.contains(i))
        .count()
}

/// Everything a hostile test must leave behind: a live bus serving a new client, no listening
/// container socket in the daemon, no new stale socket file.
#[track_caller]
fn assert_clean(bus: &mut TestBus, stale_before: &HashSet<PathBuf>) {
    bus.assert_alive();
    let pid = bus.pid();
    assert!(
        eventually(Duration::from_secs(5), || container_listeners(pid) == 0),
        "bus still holds {} container listening sockets",
        container_listeners(pid)
    );
    // Other buses (other tests) bind, listen and unlink concurrently in the same directory: a
    // file refusing connections between another bus's bind and listen is not a leak, and
    // such a file soon listens or goes. A leak stays refused.
    let mut leaked: Vec<PathBuf> = Vec::new();
    let settled = eventually(Duration::from_secs(5), || {
        leaked = stale_socket_files()
            .difference(stale_before)
            .cloned()
            .collect();
        leaked.is_empty()
    });
    assert!(settled, "stale socket files left: {leaked:?}");
}

// --- body marshalling ---------------------------------------------------------------------------

/// A method call to the Containers1 interface with a hand-made body of signature `sig`.
fn c1_call(serial: u32, member: &str, sig: &str, body: &[u8], flags: u8) -> Vec<u8> {
    let mut m = build_message(&MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        flags,
        serial,
        path: Some(DBUS_PATH),
        interface: Some(C1),
        member: Some(member),
        destination: Some(DBUS),
        signature: if sig.is_empty() { None } else { Some(sig) },
        args: &[],
        ..Default::default()
    });
    // build_message wrote an empty body: patch in the real length and append it.
    let len = u32::try_from(body.len()).expect("body fits u32");
    m[4..8].copy_from_slice(&len.to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// Marshal an array whose elements have alignment `align`, filled by `f`.
fn array(w: &mut Writer, align: usize, f: impl FnOnce(&mut Writer)) {
    w.u32(0);
    let at = w.buf.len() - 4;
    w.pad(align);
    let start = w.buf.len();
    f(w);
    let len = u32::try_from(w.buf.len() - start).expect("array fits u32");
    w.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// One `{sv}` entry whose variant has signature `sig` and value written by `val`.
fn entry_sv(w: &mut Writer, key: &str, sig: &str, val: impl FnOnce(&mut Writer)) {
    w.pad(8);
    w.str(key);
    w.sig(sig);
    val(w);
}

/// Body of the 2021 AddServer: type, name, metadata written by `meta`, empty named args.
/// Also returns how many bytes the bus charges against max_container_metadata_bytes.
fn add_server_body(ty: &str, name: &str, meta: impl FnOnce(&mut Writer)) -> (Vec<u8>, usize) {
    let mut w = Writer::default();
    w.str(ty);
    w.str(name);
    w.pad(4);
    let before = w.buf.len();
    array(&mut w, 8, meta);
    let charged = w.buf.len() - before + ty.len() + name.len();
    array(&mut w, 8, |_| {});
    (w.buf, charged)
}

/// A plain, valid AddServer body.
fn plain_body() -> Vec<u8> {
    add_server_body("com.example.Hostile", "app", |_| {}).0
}

fn add_server_raw(c: &mut RawConn, sig: &str, body: &[u8]) -> RawMsg {
    let serial = c.next_serial();
    c.send_bytes(&c1_call(serial, "AddServer", sig, body, 0))
        .expect("send AddServer");
    c.wait_reply(serial)
}

/// Successful AddServer → (instance path, socket path, address).
#[track_caller]
fn add_server_ok(c: &mut RawConn) -> (String, PathBuf, String) {
    let r = add_server_raw(c, SIG_2021, &plain_body()).expect_return();
    instance_of(&r)
}

fn instance_of(r: &RawMsg) -> (String, PathBuf, String) {
    let path = r.arg_str(0).to_string();
    let sock: Vec<u8> = match r.args.get(1) {
        Some(Arg::Array(v)) => v
            .iter()
            .map(|a| match a {
                Arg::Byte(b) => *b,
                other => panic!("socket path element {other:?}"),
            })
            .collect(),
        other => panic!("socket path arg {other:?} in {r:#?}"),
    };
    assert_eq!(sock.last(), Some(&0), "socket path lacks its NUL");
    let sock = PathBuf::from(String::from_utf8_lossy(&sock[..sock.len() - 1]).into_owned());
    (path, sock, r.arg_str(2).to_string())
}

/// GetInstanceInfo(path) reply.
fn instance_info(c: &mut RawConn, path: &str) -> RawMsg {
    let serial = c.call(
        Some(DBUS),
        DBUS_PATH,
        Some(C1),
        "GetInstanceInfo",
        &[Arg::Path(path.to_string())],
    );
    c.wait_reply(serial)
}

/// True if `c`'s AddServer got `error`, or the bus closed the connection without replying
/// (both acceptable answers to a body the wire rules forbid).
fn rejected(c: &mut RawConn, serial: u32) -> bool {
    let (_, m) = c.recv_until(Duration::from_secs(10), |m| m.reply_serial == Some(serial));
    match m {
        // No reply: acceptable only if the bus dropped the connection.
        None => c.closed_within(TIMEOUT),
        Some(m) => m.msg_type == msg_type::ERROR,
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Hostile metadata

#[test]
fn nested_variants_in_metadata() {
    let mut bus = bus_with("");
    let stale = stale_socket_files();
    let mut c = bus.client();
    // a{sv} is array + dict entry; 60 variants more keep the total at 62 ≤ 64, valid on the wire.
    let (body, charged) = add_server_body("com.example.Deep", "deep", |w| {
        entry_sv(w, "deep", "v", |w| {
            for _ in 0..59 {
                w.sig("v");
            }
            w.sig("s");
            w.str("bottom");
        });
    });
    assert!(charged < 4096);
    let r = add_server_raw(&mut c, SIG_2021, &body).expect_return();
    let (path, sock, _) = instance_of(&r);
    assert!(sock.exists());
    let info = instance_info(&mut c, &path).expect_return();
    assert_eq!(info.signature, "a{sv}ssa{sv}", "{info:#?}");

    // Far deeper than the wire allows: refused (error or disconnect), never stored.
    let (body, _) = add_server_body("com.example.Deep", "deeper", |w| {
        entry_sv(w, "deep", "v", |w| {
            for _ in 0..199 {
                w.sig("v");
            }
            w.sig("s");
            w.str("bottom");
        });
    });
    let mut c2 = bus.client();
    let serial = c2.next_serial();
    c2.send_bytes(&c1_call(serial, "AddServer", SIG_2021, &body, 0))
        .expect("send");
    assert!(rejected(&mut c2, serial), "200 nested variants accepted");
    drop(c2);
    // The next instance number was either consumed by the refused call or not: c1 or c2 must
    // not exist as a live instance.
    for n in 1..3 {
        instance_info(&mut c, &format!("/org/freedesktop/DBus/Containers1/c{n}"))
            .expect_error(NOT_CONTAINER);
    }
    drop(c);
    assert!(
        eventually(Duration::from_secs(5), || !sock.exists()),
        "{sock:?} survives its creator"
    );
    assert_clean(&mut bus, &stale);
}

#[test]
fn huge_dict_and_limit_boundary() {
    let mut bus = bus_with("");
    let stale = stale_socket_files();
    let pid = bus.pid();
    let mut c = bus.client();

    // 100k entries (~2.4 MB, well under max_message_size, far over 4096 bytes).
    let (body, charged) = add_server_body("com.example.Huge", "huge", |w| {
        for i in 0..100_000u32 {
            entry_sv(w, &format!("k{i}"), "u", |w| w.u32(i));
        }
    });
    assert!(charged > 1_000_000);
    add_server_raw(&mut c, SIG_2021, &body).expect_error(LIMITS_EXCEEDED);
    assert_eq!(container_listeners(pid), 0);

    // One `ay` entry sized so that the charged total is exactly the limit, then one more.
    let with_payload = |n: usize| {
        add_server_body("com.example.Edge", "edge", |w| {
            entry_sv(w, "blob", "ay", |w| {
                w.u32(u32::try_from(n).expect("small"));
                w.buf.extend(std::iter::repeat_n(0xa5, n));
            });
        })
    };
    let (_, base) = with_payload(0);
    let n = 4096 - base;
    let (exact, charged) = with_payload(n);
    assert_eq!(charged, 4096);
    let (path, sock, _) = instance_of(&add_server_raw(&mut c, SIG_2021, &exact).expect_return());
    assert!(sock.exists());
    let (over, charged) = with_payload(n + 1);
    assert_eq!(charged, 4097);
    add_server_raw(&mut c, SIG_2021, &over).expect_error(LIMITS_EXCEEDED);
    // The accepted one is intact and listening; the refused ones left nothing.
    instance_info(&mut c, &path).expect_return();
    assert!(listening(&sock), "{sock:?} not listening");
    assert!(container_listeners(pid) <= 1);
    drop(c);
    assert!(eventually(Duration::from_secs(5), || !sock.exists()));
    assert_clean(&mut bus, &stale);
}

#[test]
fn wrong_signatures_and_key_types() {
    let mut bus = bus_with("");
    let stale = stale_socket_files();
    let pid = bus.pid();
    let mut c = bus.client();

    let mut w = Writer::default();
    w.str("com.example.T");
    w.str("n");
    // a{iv}: an int key instead of a string.
    array(&mut w, 8, |w| {
        w.pad(8);
        w.u32(7);
        w.sig("s");
        w.str("x");
    });
    array(&mut w, 8, |_| {});
    add_server_raw(&mut c, "ssa{iv}a{sv}", &w.buf).expect_error(INVALID_ARGS);

    // a{ss}: metadata values not variants.
    let mut w = Writer::default();
    w.str("com.example.T");
    w.str("n");
    array(&mut w, 8, |w| {
        w.pad(8);
        w.str("k");
        w.str("v");
    });
    array(&mut w, 8, |_| {});
    add_server_raw(&mut c, "ssa{ss}a{sv}", &w.buf).expect_error(INVALID_ARGS);

    // Metadata as a plain string; missing named arguments; no body at all; extra argument.
    let mut w = Writer::default();
    w.str("com.example.T");
    w.str("n");
    w.str("metadata");
    array(&mut w, 8, |_| {});
    add_server_raw(&mut c, "sssa{sv}", &w.buf).expect_error(INVALID_ARGS);
    let mut w = Writer::default();
    w.str("com.example.T");
    w.str("n");
    array(&mut w, 8, |_| {});
    add_server_raw(&mut c, "ssa{sv}", &w.buf).expect_error(INVALID_ARGS);
    add_server_raw(&mut c, "", &[]).expect_error(INVALID_ARGS);
    let mut w = Writer { buf: plain_body() };
    w.u32(1);
    add_server_raw(&mut c, "ssa{sv}a{sv}u", &w.buf).expect_error(INVALID_ARGS);

    // Invalid container types.
    let long = format!("a.{}", "b".repeat(300));
    for ty in [
        "",
        "1bad",
        "a..b",
        "nodot",
        ".a.b",
        "a.b.",
        "a.1b",
        "a.b-c",
        long.as_str(),
    ] {
        let (body, _) = add_server_body(ty, "n", |_| {});
        let r = add_server_raw(&mut c, SIG_2021, &body);
        assert_eq!(
            r.error_name.as_deref(),
            Some(INVALID_ARGS),
            "container type {ty:?}: {r:#?}"
        );
    }
    // Named arguments of the wrong type / unknown.
    let mut w = Writer::default();
    w.str("com.example.T");
    w.str("n");
    array(&mut w, 8, |_| {});
    array(&mut w, 8, |w| {
        entry_sv(w, "StopOnDisconnect", "s", |w| w.str("yes"))
    });
    add_server_raw(&mut c, SIG_2021, &w.buf).expect_error(INVALID_ARGS);

    assert_eq!(container_listeners(pid), 0);
    // The connection that sent all this is still served.
    let (_, sock, _) = add_server_ok(&mut c);
    drop(c);
    assert!(eventually(Duration::from_secs(5), || !sock.exists()));
    assert_clean(&mut bus, &stale);
}

// ---------------------------------------------------------------------------------------------
// 2. Thousands of AddServer calls

/// Send `n` AddServer calls pipelined in batches; returns every reply in order.
fn add_many(c: &mut RawConn, n: usize) -> Vec<RawMsg> {
    let body = plain_body();
    let mut out = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let batch = left.min(200);
        let mut bytes = Vec::new();
        let mut serials = Vec::with_capacity(batch);
        for _ in 0..batch {
            let s = c.next_serial();
            serials.push(s);
            bytes.extend_from_slice(&c1_call(s, "AddServer", SIG_2021, &body, 0));
        }
        c.send_bytes(&bytes).expect("send batch");
        for s in serials {
            out.push(c.wait_reply(s));
        }
        left -= batch;
    }
    out
}

#[test]
fn two_thousand_instances_from_one_creator() {
    let mut bus = bus_with(
        r#"<limit name="max_containers">5000</limit><limit name="max_containers_per_user">5000</limit>"#,
    );
    let stale = stale_socket_files();
    let pid = bus.pid();
    let mut creator = bus.client();
    let fds_before = fd_count(pid);

    let replies = add_many(&mut creator, 2000);
    let socks: Vec<PathBuf> = replies
        .into_iter()
        .map(|r| instance_of(&r.expect_return()).1)
        .collect();
    assert_eq!(socks.iter().collect::<HashSet<_>>().len(), 2000);
    assert!(socks.iter().all(|s| s.exists()));
    assert!(fd_count(pid) >= fds_before + 2000);
    // Each instance listens on its own path (checked per path, not by a machine-wide count
    // that other tests' sockets disturb).
    let deaf: Vec<&PathBuf> = socks.iter().filter(|s| !listening(s)).collect();
    assert!(
        deaf.is_empty(),
        "{} of 2000 not listening: {deaf:?}",
        deaf.len()
    );

    drop(creator);
    assert!(
        eventually(Duration::from_secs(20), || socks
            .iter()
            .all(|s| !s.exists())),
        "{} of 2000 sockets left after the creator left",
        socks.iter().filter(|s| s.exists()).count()
    );
    assert!(eventually(Duration::from_secs(5), || container_listeners(
        pid
    ) == 0));
    // The creator's own fd is gone too; allow a little slack for unrelated bus state.
    assert!(
        eventually(Duration::from_secs(5), || fd_count(pid) <= fds_before + 2),
        "bus fds {} (were {fds_before} with the creator connected)",
        fd_count(pid)
    );
    let mut c = bus.client();
    for n in [0u32, 999, 1999] {
        instance_info(&mut c, &format!("/org/freedesktop/DBus/Containers1/c{n}"))
            .expect_error(NOT_CONTAINER);
    }
    drop(c);
    assert_clean(&mut bus, &stale);
}

#[test]
fn default_limits_global_and_per_user() {
    // Defaults: 16 per uid.
    let mut bus = bus_with("");
    let stale = stale_socket_files();
    let mut c = bus.client();
    let replies = add_many(&mut c, 17);
    for r in &replies[..16] {
        assert_eq!(r.msg_type, msg_type::METHOD_RETURN, "{r:#?}");
    }
    assert_eq!(replies[16].error_name.as_deref(), Some(LIMITS_EXCEEDED));
    drop(c);
    assert_clean(&mut bus, &stale);
    drop(bus);

    // Default max_containers (512) when the per-user limit is lifted.
    let mut bus = bus_with(r#"<limit name="max_containers_per_user">5000</limit>"#);
    let mut c = bus.client();
    let replies = add_many(&mut c, 513);
    for r in &replies[..512] {
        assert_eq!(r.msg_type, msg_type::METHOD_RETURN, "{r:#?}");
    }
    assert_eq!(replies[512].error_name.as_deref(), Some(LIMITS_EXCEEDED));
    drop(c);
    assert_clean(&mut bus, &stale);
}

// ---------------------------------------------------------------------------------------------
// 3. Creator dying mid-call

/// Observer of InstanceRemoved.
fn observer(bus: &TestBus) -> RawConn {
    let mut o = bus.client();
    o.add_match(
        "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus.Containers1',member='InstanceRemoved'",
    );
    o
}

/// Wait until none of `paths` is an instance any more; then check InstanceRemoved came
/// exactly once for each.
#[track_caller]
fn assert_removed_once(bus: &TestBus, obs: &mut RawConn, paths: &[String]) {
    let mut c = bus.client();
    for path in paths {
        assert!(
            eventually(Duration::from_secs(5), || {
                instance_info(&mut c, path).error_name.as_deref() == Some(NOT_CONTAINER)
            }),
            "{path} still exists after its creator died"
        );
    }
    // c saw every instance gone, so the bus has emitted their InstanceRemoved: a round trip
    // on the observer orders everything the bus emitted before it.
    let seen = obs.sync();
    for path in paths {
        let removed = seen
            .iter()
            .filter(|m| {
                m.is_driver_signal("InstanceRemoved")
                    && m.args.first() == Some(&Arg::Path(path.clone()))
            })
            .count();
        assert_eq!(
            removed, 1,
            "InstanceRemoved for {path} seen {removed} times"
        );
    }
}

fn instance_path(n: u32) -> String {
    format!("/org/freedesktop/DBus/Containers1/c{n}")
}

#[test]
fn creator_closes_without_reading_reply() {
    let mut bus = bus_with("");
    let stale = stale_socket_files();
    let mut obs = observer(&bus);
    let mut c = bus.client();
    let serial = c.next_serial();
    c.send_bytes(&c1_call(serial, "AddServer", SIG_2021, &plain_body(), 0))
        .expect("send");
    drop(c);
    assert_removed_once(&bus, &mut obs, &[instance_path(0)]);

    // A pipeline of 16 then an immediate close: all of them go.
    let mut c = bus.client();
    let mut bytes = Vec::new();
    for _ in 0..16 {
        let s = c.next_serial();
        bytes.extend_from_slice(&c1_call(s, "AddServer", SIG_2021, &plain_body(), 0));
    }
    c.send_bytes(&bytes).expect("send");
    drop(c);
    let paths: Vec<String> = (1..17).map(instance_path).collect();
    assert_removed_once(&bus, &mut obs, &paths);
    assert_clean(&mut bus, &stale);
}

#[test]
fn creator_sigkilled_mid_call() {
    let mut bus = bus_with("");
    let stale = stale_socket_files();
    let mut obs = observer(&bus);
    let (_, sock) = common::unix_socket_of(&bus.address);
    // The python child authenticates, sends Hello + AddServer in one write, and is killed
    // before it reads anything.
    let mut msgs = driver_call_bytes(1, "Hello");
    msgs.extend_from_slice(&c1_call(2, "AddServer", SIG_2021, &plain_body(), 0));
    let hex: String = msgs.iter().map(|b| format!("{b:02x}")).collect();
    let script = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b'\0AUTH EXTERNAL ' + str(os.getuid()).encode().hex().encode() + b'\r\n')
buf = b''
while b'\r\n' not in buf:
    buf += s.recv(100)
assert buf.startswith(b'OK'), buf
s.sendall(b'BEGIN\r\n' + bytes.fromhex(sys.argv[2]))
print('sent', flush=True)
time.sleep(60)
"#;
    let mut child = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .arg(&sock)
        .arg(&hex)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn python");
    let mut out = child.stdout.take().expect("stdout");
    let mut line = [0u8; 5];
    std::io::Read::read_exact(&mut out, &mut line).expect("child output");
    assert_eq!(&line, b"sent\n");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_removed_once(&bus, &mut obs, &[instance_path(0)]);
    assert_clean(&mut bus, &stale);
}

// ---------------------------------------------------------------------------------------------
// 4. Contained client floods

#[test]
fn contained_client_floods_a_service() {
    let mut bus = bus_with("");
    let stale = stale_socket_files();
    let mut sink = bus.client();
    assert_eq!(sink.request_name("com.example.Sink", 0), 1);
    let counter = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut n = 0usize;
        while n < 10_000 && Instant::now() < deadline {
            match sink.recv(Duration::from_secs(5)) {
                Some(m) if m.member.as_deref() == Some("Flood") => n += 1,
                Some(_) => {}
                None => break,
            }
        }
        (n, sink)
    });
    let mut mgr = bus.client();
    let (path, sock, addr) = add_server_ok(&mut mgr);
    let mut cc = RawConn::connect(&addr);
    cc.auth_external();
    cc.hello();
    let mut bytes = Vec::new();
    for i in 0..10_000u32 {
        let serial = cc.next_serial();
        bytes.extend_from_slice(&build_message(&MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            flags: FLAG_NO_REPLY_EXPECTED,
            serial,
            path: Some("/"),
            interface: Some("com.example.Sink"),
            member: Some("Flood"),
            destination: Some("com.example.Sink"),
            args: &[Arg::U32(i)],
            ..Default::default()
        }));
    }
    cc.send_bytes(&bytes).expect("flood");
    let (got, _sink) = counter.join().expect("counter thread");
    assert_eq!(got, 10_000, "sink received {got} of 10000");

    // Second wave: 10k calls expecting replies the sink never sends, and the contained
    // client never reads what the bus answers. The bus must cope (pending-reply limit).
    let mut bytes = Vec::new();
    for _ in 0..10_000u32 {
        let serial = cc.next_serial();
        bytes.extend_from_slice(&build_message(&MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            serial,
            path: Some("/"),
            interface: Some("com.example.Sink"),
            member: Some("Flood"),
            destination: Some("com.example.Sink"),
            ..Default::default()
        }));
    }
    cc.send_bytes(&bytes).expect("flood 2");
    bus.assert_alive();
    // The flooder itself is still served, after its backlog.
    let id = cc.driver("GetId", &[]);
    assert_eq!(id.msg_type, msg_type::METHOD_RETURN, "{id:#?}");
    let mut m = bus.client();
    let r = m.driver("GetConnectionCredentials", &[common::s(cc.unique())]);
    assert_eq!(r.msg_type, msg_type::METHOD_RETURN);
    drop(cc);
    drop(mgr);
    assert!(eventually(Duration::from_secs(5), || !sock.exists()));
    let mut c = bus.client();
    assert!(eventually(Duration::from_secs(5), || {
        instance_info(&mut c, &path).error_name.as_deref() == Some(NOT_CONTAINER)
    }));
    assert_clean(&mut bus, &stale);
}
