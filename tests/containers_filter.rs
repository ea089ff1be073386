//! Containers1 filtering end to end: an instance created with `Allow` rules (by a
//! python3-dbus manager), real python3-dbus services outside, and gdbus / dbus-send run
//! inside the container. The sans-IO cases in src/bus/tests/filter.rs cover each rule;
//! these show that unmodified clients see exactly the view the rules give.

mod common;

use common::{py_dir, run_with_timeout, CmdOutput, TestBus, PYTHON};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);

/// AddServer with `rules` (python literal list of (flags, name, path, iface)) and
/// StopOnDisconnect=False, so the instance outlives the manager; returns its address.
fn filtered_instance(bus: &TestBus, rules: &str) -> String {
    let script = format!(
        r#"from containers_prelude import *
rules = dbus.Array([dbus.Struct((dbus.UInt32(f), n, dbus.ObjectPath(p), i), signature='usos')
                    for (f, n, p, i) in {rules}], signature='(usos)')
b = conn()
path, sock, addr = add_server(b, 'org.example.Sandbox', 'filtered-app',
                              na={{'Allow': rules, 'StopOnDisconnect': False}})
print(addr)
"#
    );
    let mut cmd = Command::new(PYTHON);
    cmd.arg("-c")
        .arg(&script)
        .arg(&bus.address)
        .env("PYTHONPATH", py_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_with_timeout(cmd, TIMEOUT);
    assert!(
        out.status.is_some_and(|s| s.success()),
        "AddServer failed:\n{}\n{}\n{}",
        out.stdout,
        out.stderr,
        bus.stderr()
    );
    out.stdout.trim().to_owned()
}

/// `gdbus call` on the container address.
fn gdbus_in(addr: &str, dest: &str, path: &str, method: &str, args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new("gdbus");
    cmd.args(["call", "--address", addr, "--dest", dest])
        .args(["--object-path", path, "--method", method])
        .args(args);
    run_with_timeout(cmd, TIMEOUT)
}

const CALL: u32 = 0x08;
const PATH_TREE: u32 = 0x02;

#[test]
fn unmodified_clients_get_the_view_the_rules_give() {
    let bus = TestBus::for_containers("");
    let _allowed = bus.echo_service("org.example.Allowed");
    let _hidden = bus.echo_service("org.example.Hidden");
    let addr = filtered_instance(
        &bus,
        &format!(
            "[({}, 'org.example.Allowed', '/', 'org.example.Echo.Echo')]",
            CALL | PATH_TREE
        ),
    );

    // The allowed method works.
    let ok = gdbus_in(
        &addr,
        "org.example.Allowed",
        "/org/example/Echo",
        "org.example.Echo.Echo",
        &["hi"],
    );
    assert_eq!(ok.stdout.trim(), "('hi',)", "{}{}", ok.stderr, bus.stderr());
    // Another method of the same service: AccessDenied.
    let other = gdbus_in(
        &addr,
        "org.example.Allowed",
        "/org/example/Echo",
        "org.example.Echo.Add",
        &["1", "2"],
    );
    assert!(
        other
            .stderr
            .contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{}",
        other.stderr
    );
    // A service without a rule is as absent as one that does not exist, in the same words.
    let hidden = gdbus_in(
        &addr,
        "org.example.Hidden",
        "/org/example/Echo",
        "org.example.Echo.Echo",
        &["hi"],
    );
    let missing = gdbus_in(
        &addr,
        "org.example.Missing",
        "/org/example/Echo",
        "org.example.Echo.Echo",
        &["hi"],
    );
    assert!(
        hidden.stderr.contains("ServiceUnknown"),
        "{}",
        hidden.stderr
    );
    assert_eq!(
        hidden.stderr.replace("Hidden", "X"),
        missing.stderr.replace("Missing", "X")
    );
    // The bus's own view, through dbus-send: ListNames and GetNameOwner.
    let list = Command::new("dbus-send")
        .args([
            &format!("--bus={addr}"),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
        ])
        .args(["/org/freedesktop/DBus", "org.freedesktop.DBus.ListNames"])
        .output()
        .expect("dbus-send");
    let names = String::from_utf8_lossy(&list.stdout);
    assert!(names.contains("\"org.example.Allowed\""), "{names}");
    assert!(!names.contains("org.example.Hidden"), "{names}");
    let owner = Command::new("dbus-send")
        .args([
            &format!("--bus={addr}"),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
        ])
        .args(["/org/freedesktop/DBus", "org.freedesktop.DBus.GetNameOwner"])
        .arg("string:org.example.Hidden")
        .output()
        .expect("dbus-send");
    let err = String::from_utf8_lossy(&owner.stderr);
    assert!(
        err.contains("org.freedesktop.DBus.Error.NameHasNoOwner")
            && err.contains("Could not get owner of name 'org.example.Hidden': no such name"),
        "{err}"
    );
    // Outside, nothing changed: the host still reaches both services.
    let host = bus.gdbus(
        "call",
        &[
            "--dest",
            "org.example.Hidden",
            "--object-path",
            "/org/example/Echo",
            "--method",
            "org.example.Echo.Add",
            "1",
            "2",
        ],
    );
    assert_eq!(host.stdout.trim(), "(3,)", "{}", host.stderr);
}

#[test]
fn an_empty_allow_list_leaves_only_the_driver_and_itself() {
    let bus = TestBus::for_containers("");
    let _svc = bus.echo_service("org.example.Svc");
    let addr = filtered_instance(&bus, "[]");
    let list = Command::new("dbus-send")
        .args([
            &format!("--bus={addr}"),
            "--print-reply",
            "--dest=org.freedesktop.DBus",
        ])
        .args(["/org/freedesktop/DBus", "org.freedesktop.DBus.ListNames"])
        .output()
        .expect("dbus-send");
    let out = String::from_utf8_lossy(&list.stdout);
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("string \""))
        .map(|l| l.trim_end_matches('"'))
        .collect();
    assert_eq!(names.len(), 2, "{out}");
    assert_eq!(names[0], "org.freedesktop.DBus");
    assert!(names[1].starts_with(':'), "its own unique name: {out}");
    let denied = gdbus_in(
        &addr,
        "org.example.Svc",
        "/org/example/Echo",
        "org.example.Echo.Echo",
        &["x"],
    );
    assert!(
        denied.stderr.contains("ServiceUnknown"),
        "{}",
        denied.stderr
    );
}
