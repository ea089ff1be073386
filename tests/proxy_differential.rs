//! Differential test of Containers1 filtering against xdg-dbus-proxy: the same client
//! operations (tests/py/differential_client.py) run once through the real
//! `xdg-dbus-proxy --filter` in front of a sluicebus bus, and once on a filtered
//! Containers1 instance of that bus whose `Allow` list is [`translate`]d from the same
//! proxy options. Every operation must have the same outcome on both paths, or be one of
//! the [`DELIBERATE`] differences, each with its exact pair of outcomes and the reason.
//!
//! The proxy's behaviour that the comparison relies on is the documented one
//! (xdg-dbus-proxy(1)): SEE lists a name and answers NameHasOwner/GetNameOwner/GetXXX for
//! it, a name below SEE is invisible, TALK allows any call and the name's broadcasts,
//! OWN allows RequestName/ReleaseName/ListQueuedOwners, `--call`/`--broadcast` rules
//! restrict calls and broadcasts to `[METHOD][@PATH]`, `NAME.*` covers NAME and its
//! dot-separated descendants, a peer that sent the client a message becomes visible, and
//! a unique name's policy is the union of the names it owned (sticky). Where that
//! documentation is silent (which error a refusal carries, the driver's interfaces other
//! than org.freedesktop.DBus), the table records what Debian's xdg-dbus-proxy 0.1.4 does.
//!
//! `cargo test --test proxy_differential -- --nocapture` prints the side-by-side table.

mod common;

use common::{py_dir, run_with_timeout, write_service_file, TempDir, TestBus, PYTHON, TIMEOUT};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const BUS_NAME_IS_SUBTREE: u32 = 0x01;
const OBJECT_PATH_IS_SUBTREE: u32 = 0x02;
const SEE: u32 = 0x04;
const CALL_METHODS: u32 = 0x08;
const RECEIVE_BROADCASTS: u32 = 0x10;
const OWN: u32 = 0x20;
const SEND_UNIX_FDS: u32 = 0x40;

/// One `Allow` rule: (flags, bus name, object path, interface-and-maybe-member).
type Rule = (u32, String, String, String);

/// The xdg-dbus-proxy translation of one filtering option into an `Allow` rule.
///
/// `--see=N` is SEE; `--talk=N` adds calling any method on any path, hearing every
/// broadcast and passing fds (the proxy forwards fds on whatever it forwards); `--own=N`
/// adds OWN. `--call=N=RULE` / `--broadcast=N=RULE` grant calls / broadcasts matching
/// RULE = `[METHOD][@PATH]`: METHOD `*` or empty is any interface, `iface.*` one
/// interface, anything else `iface.Member`; PATH `/p/*` is `/p` and below, `/p` exactly
/// `/p`, no `@PATH` every path. A name `N.*` is N and its descendants.
fn translate(option: &str) -> Result<Rule, String> {
    let (opt, arg) = option
        .split_once('=')
        .ok_or_else(|| format!("{option}: expected --OPTION=VALUE"))?;
    let talk = SEE | CALL_METHODS | RECEIVE_BROADCASTS | OBJECT_PATH_IS_SUBTREE | SEND_UNIX_FDS;
    let (flags, name, rule) = match opt {
        "--see" => (SEE | OBJECT_PATH_IS_SUBTREE, arg, None),
        "--talk" => (talk, arg, None),
        "--own" => (talk | OWN, arg, None),
        "--call" | "--broadcast" => {
            let (name, rule) = arg
                .split_once('=')
                .ok_or_else(|| format!("{option}: expected NAME=RULE"))?;
            let grant = if opt == "--call" {
                CALL_METHODS | SEND_UNIX_FDS
            } else {
                RECEIVE_BROADCASTS
            };
            (SEE | grant, name, Some(rule))
        }
        _ => return Err(format!("{option}: not a filtering option")),
    };
    let (mut flags, name) = match name.strip_suffix(".*") {
        Some(root) => (flags | BUS_NAME_IS_SUBTREE, root),
        None => (flags, name),
    };
    if name.is_empty() {
        return Err(format!("{option}: no bus name"));
    }
    let (path, iface) = match rule {
        None => ("/".to_owned(), String::new()),
        Some(rule) => {
            let (method, path) = match rule.split_once('@') {
                Some((m, p)) => (m, Some(p)),
                None => (rule, None),
            };
            let iface = if method.is_empty() || method == "*" {
                String::new()
            } else {
                method.to_owned()
            };
            let path = match path {
                None | Some("") | Some("/*") => {
                    flags |= OBJECT_PATH_IS_SUBTREE;
                    "/".to_owned()
                }
                Some(p) => match p.strip_suffix("/*") {
                    Some(root) => {
                        flags |= OBJECT_PATH_IS_SUBTREE;
                        root.to_owned()
                    }
                    None => p.to_owned(),
                },
            };
            (path, iface)
        }
    };
    Ok((flags, name.to_owned(), path, iface))
}

#[test]
fn translation_of_proxy_options() {
    let r = |f: u32, n: &str, p: &str, i: &str| Ok((f, n.to_owned(), p.to_owned(), i.to_owned()));
    let talk = SEE | CALL_METHODS | RECEIVE_BROADCASTS | OBJECT_PATH_IS_SUBTREE | SEND_UNIX_FDS;
    assert_eq!(
        translate("--see=org.a"),
        r(SEE | OBJECT_PATH_IS_SUBTREE, "org.a", "/", "")
    );
    assert_eq!(translate("--talk=org.a"), r(talk, "org.a", "/", ""));
    assert_eq!(translate("--own=org.a"), r(talk | OWN, "org.a", "/", ""));
    assert_eq!(
        translate("--own=org.a.*"),
        r(talk | OWN | BUS_NAME_IS_SUBTREE, "org.a", "/", "")
    );
    let call = SEE | CALL_METHODS | SEND_UNIX_FDS;
    assert_eq!(
        translate("--call=org.a=org.a.I.M@/p/*"),
        r(call | OBJECT_PATH_IS_SUBTREE, "org.a", "/p", "org.a.I.M")
    );
    assert_eq!(
        translate("--call=org.a=org.a.I.*@/p"),
        r(call, "org.a", "/p", "org.a.I.*")
    );
    assert_eq!(
        translate("--call=org.a=org.a.I.M"),
        r(call | OBJECT_PATH_IS_SUBTREE, "org.a", "/", "org.a.I.M")
    );
    for any in ["*", "", "*@/*", "@/*"] {
        assert_eq!(
            translate(&format!("--call=org.a={any}")),
            r(call | OBJECT_PATH_IS_SUBTREE, "org.a", "/", ""),
            "{any:?}"
        );
    }
    assert_eq!(
        translate("--call=org.a.*=*@/"),
        r(call | BUS_NAME_IS_SUBTREE, "org.a", "/", "")
    );
    assert_eq!(
        translate("--broadcast=org.a=org.a.I.S@/p/*"),
        r(
            SEE | RECEIVE_BROADCASTS | OBJECT_PATH_IS_SUBTREE,
            "org.a",
            "/p",
            "org.a.I.S"
        )
    );
    for bad in [
        "--see",
        "--log",
        "--call=org.a",
        "--sloppy-names=x",
        "--talk=.*",
    ] {
        assert!(translate(bad).is_err(), "{bad}");
    }
}

/// The options both paths are configured with (see tests/py/differential_client.py for
/// which service owns which name).
const OPTIONS: &[&str] = &[
    "--talk=org.example.Talk",
    "--see=org.example.Seen",
    "--call=org.example.Calls=org.example.Echo.Echo@/org/example/*",
    "--talk=org.example.Tree.*",
    "--broadcast=org.example.Bcast=org.example.Echo.Ping@/org/example/*",
    "--own=org.example.Mine",
    "--own=org.example.App.*",
    "--see=org.example.Late",
    "--talk=org.example.Sticky",
];

/// The outside services.
const SERVICES: &[&str] = &[
    "org.example.Talk",
    "org.example.Seen",
    "org.example.Calls",
    "org.example.Tree.Leaf",
    "org.example.Bcast",
    "org.example.Hidden",
];

/// Names with a `.service` file (`Exec=/bin/false`): the services, which are running, and
/// two that nobody owns, one without an option and one under `--talk=org.example.Tree.*`.
const ACTIVATABLE: &[&str] = &["org.example.Sleeper", "org.example.Tree.Sprout"];

/// A difference between the paths that is by design: the operation, the proxy's outcome,
/// the bus's outcome, and why.
struct Deliberate {
    op: &'static str,
    proxy: &'static str,
    bus: &'static str,
    why: &'static str,
}

const E: &str = "error:org.freedesktop.DBus.Error.";

/// Every expected difference, each with both outcomes exactly (without the
/// `error:org.freedesktop.DBus.Error.` prefix): an operation whose outcomes differ in any
/// other way, or no longer differ, fails the test.
const DELIBERATE: &[Deliberate] = &[
    Deliberate {
        op: "GetConnectionUnixUser org.example.Hidden",
        proxy: "ServiceUnknown",
        bus: "NameHasNoOwner",
        why: "hidden = unowned: the bus answers as for a name nobody owns (dbus-daemon's \
              NameHasNoOwner); the proxy refuses driver calls about a name below SEE with \
              the error it uses for hidden destinations",
    },
    Deliberate {
        op: "GetConnectionUnixUser org.example.Missing",
        proxy: "ServiceUnknown",
        bus: "NameHasNoOwner",
        why: "the same pair as for the hidden name: each path answers missing and hidden alike",
    },
    Deliberate {
        op: "GetConnectionCredentials org.example.Hidden",
        proxy: "ServiceUnknown",
        bus: "NameHasNoOwner",
        why: "as for GetConnectionUnixUser org.example.Hidden",
    },
    Deliberate {
        op: "Peer.Ping the bus",
        proxy: "AccessDenied",
        bus: "ok",
        why: "the bus answers org.freedesktop.DBus.Peer for everyone (the D-Bus spec: every \
              peer implements it); xdg-dbus-proxy 0.1.4 refuses the driver's interfaces \
              other than org.freedesktop.DBus and Introspectable",
    },
    Deliberate {
        op: "Containers1.GetConnectionInstance of itself",
        proxy: "AccessDenied",
        bus: "ok",
        why: "the in-bus client is a connection of a Containers1 instance and may ask which; \
              xdg-dbus-proxy 0.1.4 refuses the driver's interfaces other than \
              org.freedesktop.DBus and Introspectable",
    },
    Deliberate {
        op: "NameHasOwner a second connection to the same address",
        proxy: "false",
        bus: "true",
        why: "the connections of one instance are one sandbox and see each other (README: \
              an empty Allow leaves the instance itself); the proxy's policy is per client, \
              TALK to its own unique name only, all other clients invisible (documented), \
              a second client of the same proxy included",
    },
    Deliberate {
        op: "call a second connection to the same address",
        proxy: "NameHasNoOwner",
        bus: "x",
        why: "as for NameHasOwner a second connection to the same address",
    },
    Deliberate {
        op: "call Hidden's owner by unique name",
        proxy: "NameHasNoOwner",
        bus: "ServiceUnknown",
        why: "hidden = unowned: the bus answers a call (auto-start allowed) to a unique name \
              nobody has with ServiceUnknown, as dbus-daemon does; the proxy answers a hidden \
              unique-name destination with NameHasNoOwner",
    },
    Deliberate {
        op: "call a unique name nobody has",
        proxy: "NameHasNoOwner",
        bus: "ServiceUnknown",
        why: "the same pair as for the hidden unique name: each path answers missing and \
              hidden alike",
    },
    Deliberate {
        op: "RequestName NotMine (no option)",
        proxy: "ServiceUnknown",
        bus: "AccessDenied",
        why: "no oracle: the bus refuses every name without an OWN rule with AccessDenied, \
              visible or not, owned or not; the proxy answers a name below SEE with its \
              hidden-destination error (and one it shows with AccessDenied: RequestName Talk)",
    },
    Deliberate {
        op: "ReleaseName NotMine (no option)",
        proxy: "ServiceUnknown",
        bus: "AccessDenied",
        why: "as for RequestName NotMine",
    },
    Deliberate {
        op: "StartServiceByName org.example.Bcast",
        proxy: "2",
        bus: "AccessDenied",
        why: "starting a service is a call: the bus needs CALL_METHODS, which a --broadcast \
              rule does not translate to; the proxy allows StartServiceByName at TALK level \
              (documented) and 0.1.4 counts a --broadcast-only name as TALK",
    },
    Deliberate {
        op: "NameOwnerChanged for org.example.Late's owner's unique name when it leaves",
        proxy: "received",
        bus: "absent",
        why: "the proxy's unique-name policy is sticky (documented); the bus judges the \
              unique name by the names it owns when the signal is sent, and a leaving \
              connection has released them all by then (its well-known name's \
              NameOwnerChanged does arrive)",
    },
    Deliberate {
        op: "the caller's GiveFd returns (the reply carries an fd)",
        proxy: "an fd from the client",
        bus: "AccessDenied",
        why: "fds leave a filtered instance only towards names whose rule grants \
              SEND_UNIX_FDS, replies included, and the caller owns no name; the proxy \
              passes a reply to a call the client received with whatever it carries",
    },
    Deliberate {
        op: "call it again after it released Sticky",
        proxy: "x",
        bus: "AccessDenied",
        why: "the proxy's unique-name policy is sticky (documented); the bus recomputes a \
              unique name's rights from the names it owns now: none, so it is only a peer \
              that sent the client a message (its reply), visible but not callable",
    },
];

/// Outcomes of the proxy path that its documentation promises (errors without the prefix,
/// as in [`DELIBERATE`]): they make sure the run
/// compares a working filter (a proxy without `--filter`, or a client that reaches
/// nothing, would agree with a broken bus on everything).
const ANCHORS: &[(&str, &str)] = &[
    // SEE: listed; below SEE: invisible.
    ("ListNames lists org.example.Seen", "listed"),
    ("ListNames lists org.example.Hidden", "absent"),
    // SEE: "AccessDenied rather than NameHasNoOwner when sending messages".
    ("call Seen.Echo", "AccessDenied"),
    // TALK: any call, and the name's broadcasts.
    ("call Talk.Echo", "x"),
    ("call Talk.ReadFd with an fd", "through an fd"),
    ("broadcast Ping from org.example.Talk", "received"),
    ("broadcast Ping from org.example.Hidden", "absent"),
    // --call / --broadcast rules.
    ("call Calls.Echo (the --call rule)", "x"),
    ("call Calls.Add (other method)", "AccessDenied"),
    ("broadcast Ping from org.example.Bcast", "received"),
    // OWN, and NAME.* covering NAME's descendants.
    ("RequestName Mine (--own)", "1"),
    ("RequestName App.Player (--own=App.*)", "1"),
    ("RequestName Talk (--talk)", "AccessDenied"),
    ("call Tree.Leaf.Echo (--talk=Tree.*)", "x"),
    // SEE: "You see NameOwnerChanged signals on the name".
    (
        "NameOwnerChanged for org.example.Late (appears later)",
        "received",
    ),
    (
        "NameOwnerChanged for org.example.Late when its owner leaves",
        "received",
    ),
    // TALK to its own unique name.
    ("call itself by unique name", "poked"),
    // A peer that sent the client a message becomes visible; unique names are sticky.
    ("NameHasOwner caller, before it calls", "false"),
    ("the caller reaches the client", "received"),
    ("NameHasOwner caller, after it called", "true"),
    ("call it again after it released Sticky", "x"),
    // "Filtering is applied only to outgoing signals and method calls and incoming
    // broadcast signals. All replies ... are allowed once for an outstanding method call".
    (
        "a unicast signal from an outside peer to the client",
        "received",
    ),
    ("the caller's Poke returns", "poked"),
    (
        "the caller's GiveFd returns (the reply carries an fd)",
        "an fd from the client",
    ),
];

/// A running `xdg-dbus-proxy`, killed on Drop.
struct Proxy {
    child: Child,
    /// The write end of this pipe is the proxy's `--fd`: it wrote its ready byte there, and
    /// it stops when the pipe closes.
    _ready: ChildStdout,
    address: String,
    _dir: TempDir,
}

impl Proxy {
    fn start(bus_address: &str, options: &[&str]) -> Proxy {
        let dir = TempDir::new("proxy");
        let socket: PathBuf = dir.path().join("proxy.sock");
        // `--fd=1`: the proxy writes to fd 1 (our pipe) once it listens.
        let mut child = Command::new("xdg-dbus-proxy")
            .arg("--fd=1")
            .arg(bus_address)
            .arg(&socket)
            .arg("--filter")
            .args(options)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run xdg-dbus-proxy (tools/test installs package xdg-dbus-proxy): {e}"
                )
            });
        let mut ready = child.stdout.take().expect("proxy stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut b = [0u8; 1];
            let n = common::read_retrying(&mut ready, &mut b);
            let _ = tx.send((n.unwrap_or(0), ready));
        });
        let (n, ready) = match rx.recv_timeout(TIMEOUT) {
            Ok(got) => got,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("xdg-dbus-proxy did not signal readiness within {TIMEOUT:?}");
            }
        };
        assert_eq!(
            n, 1,
            "xdg-dbus-proxy closed its --fd without the ready byte"
        );
        Proxy {
            child,
            _ready: ready,
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// AddServer with `rules` and StopOnDisconnect=False (the instance outlives the manager);
/// returns the instance's address.
fn filtered_instance(bus: &TestBus, rules: &[Rule]) -> String {
    let literal: Vec<String> = rules
        .iter()
        .map(|(f, n, p, i)| format!("({f}, {n:?}, {p:?}, {i:?})"))
        .collect();
    let script = format!(
        r#"from containers_prelude import *
rules = dbus.Array([dbus.Struct((dbus.UInt32(f), n, dbus.ObjectPath(p), i), signature='usos')
                    for (f, n, p, i) in [{}]], signature='(usos)')
b = conn()
path, sock, addr = add_server(b, 'org.example.Sandbox', 'differential',
                              na={{'Allow': rules, 'StopOnDisconnect': False}})
print(addr)
"#,
        literal.join(", ")
    );
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(&script)
        .arg(&bus.address)
        .env("PYTHONPATH", py_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(
        out.success(),
        "AddServer failed:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        bus.stderr()
    );
    out.stdout.trim().to_owned()
}

/// Run the client's operations on `address`; returns (operation, outcome) in order.
fn run_client(bus: &TestBus, address: &str) -> Vec<(String, String)> {
    let mut cmd = Command::new(PYTHON);
    cmd.arg(py_dir().join("differential_client.py"))
        .args(["client", address, &bus.address])
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_with_timeout(cmd, Duration::from_secs(30));
    assert!(
        out.success(),
        "the client failed on {address}:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        bus.stderr()
    );
    out.stdout
        .lines()
        .map(|l| {
            let (op, outcome) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("bad client line {l:?}"));
            (op.to_owned(), outcome.to_owned())
        })
        .collect()
}

#[test]
fn xdg_dbus_proxy_and_the_in_bus_filter_agree() {
    let rules: Vec<Rule> = OPTIONS
        .iter()
        .map(|o| translate(o).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    let services = TempDir::new("services");
    for name in SERVICES.iter().chain(ACTIVATABLE) {
        write_service_file(services.path(), name, "/bin/false");
    }
    let bus = TestBus::for_containers(&format!(
        "<servicedir>{}</servicedir>",
        services.path().display()
    ));
    let _services: Vec<_> = SERVICES.iter().map(|n| bus.echo_service(n)).collect();

    // The proxy path's client holds org.example.App.Player until it leaves; the bus path's
    // client requests it again, so the bus must have handled that departure first: its
    // NameOwnerChanged is the sentinel.
    let mut watcher = bus.client();
    watcher.add_match(
        "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='org.example.App.Player'",
    );
    let proxy = Proxy::start(&bus.address, OPTIONS);
    let through_proxy = run_client(&bus, &proxy.address);
    drop(proxy);
    let (_, released) = watcher.recv_until(TIMEOUT, |m| {
        m.is_driver_signal("NameOwnerChanged")
            && !m.arg_str(1).is_empty()
            && m.arg_str(2).is_empty()
    });
    assert!(
        released.is_some(),
        "the proxy path's client never released org.example.App.Player"
    );
    let instance = filtered_instance(&bus, &rules);
    let in_bus = run_client(&bus, &instance);

    let ops_a: Vec<&str> = through_proxy.iter().map(|(o, _)| o.as_str()).collect();
    let ops_b: Vec<&str> = in_bus.iter().map(|(o, _)| o.as_str()).collect();
    assert_eq!(ops_a, ops_b, "both runs perform the same operations");
    let mut unique = ops_a.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ops_a.len(), "operation names are unique");

    let short = |o: &str| {
        o.strip_prefix(E)
            .map_or_else(|| o.to_owned(), |e| e.to_owned())
    };
    let mut rows = vec![(
        "operation".to_owned(),
        "xdg-dbus-proxy".to_owned(),
        "sluicebus".to_owned(),
        "verdict".to_owned(),
    )];
    let mut failures = Vec::new();
    for ((op, a), (_, b)) in through_proxy.iter().zip(&in_bus) {
        let (a, b) = (short(a), short(b));
        let verdict = match DELIBERATE.iter().find(|d| d.op == op) {
            None if a == b => "same".to_owned(),
            None => {
                failures.push(format!("{op}: the outcomes differ"));
                "DIFFERENT".to_owned()
            }
            Some(d) if d.proxy == a && d.bus == b => format!("deliberate: {}", d.why),
            Some(d) => {
                failures.push(format!(
                    "{op}: listed as deliberate with proxy {}, bus {}",
                    d.proxy, d.bus
                ));
                "NOT THE LISTED DIFFERENCE".to_owned()
            }
        };
        rows.push((op.clone(), a, b, verdict));
    }
    for d in DELIBERATE {
        if !ops_a.contains(&d.op) {
            failures.push(format!(
                "deliberate difference for unknown operation {:?}",
                d.op
            ));
        }
    }
    for (op, want) in ANCHORS {
        match through_proxy.iter().find(|(o, _)| o == op) {
            Some((_, got)) if short(got) == *want => {}
            got => failures.push(format!(
                "anchor {op:?}: xdg-dbus-proxy should give {want:?}, gave {:?}",
                got.map(|(_, g)| short(g))
            )),
        }
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    let table: String = rows
        .iter()
        .map(|(op, a, b, v)| format!("{op:w0$} | {a:w1$} | {b:w2$} | {v}\n"))
        .collect();
    eprintln!("errors without the prefix {E:?}\n{table}");
    assert!(
        failures.is_empty(),
        "the paths disagree (table on stderr above):\n{}",
        failures.join("\n")
    );
}
