//! Bus driver basics (Hello, GetId, ListNames, NameHasOwner, GetNameOwner,
//! Peer) through the raw client and the CLI tools dbus-send, gdbus and busctl.

mod common;

use common::*;

fn is_hex32(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[test]
fn hello_returns_distinct_unique_names_then_name_acquired() {
    let bus = TestBus::start();
    let mut a = RawConn::connect(&bus.address);
    a.auth_external();
    let serial = a.call(Some(DBUS), DBUS_PATH, Some(DBUS), "Hello", &[]);
    // Reply first, then NameAcquired(unique) addressed to us, as dbus-daemon does.
    let reply = a.recv(TIMEOUT).expect("Hello reply").expect_return();
    assert_eq!(reply.reply_serial, Some(serial));
    assert_eq!(reply.sender.as_deref(), Some(DBUS));
    let name = reply.arg_str(0).to_string();
    assert!(name.starts_with(":1."), "unique name {name:?}");
    assert_eq!(reply.destination.as_deref(), Some(name.as_str()));
    let acquired = a.recv(TIMEOUT).expect("NameAcquired");
    assert!(acquired.is_driver_signal("NameAcquired"), "{acquired:#?}");
    assert_eq!(acquired.arg_str(0), name);
    assert_eq!(acquired.destination.as_deref(), Some(name.as_str()));
    assert_eq!(acquired.path.as_deref(), Some(DBUS_PATH));
    assert_eq!(acquired.interface.as_deref(), Some(DBUS));

    let b = bus.client();
    let c = bus.client();
    assert_ne!(b.unique(), name);
    assert_ne!(b.unique(), c.unique());
}

#[test]
fn second_hello_fails_and_connection_survives() {
    let mut bus = TestBus::start();
    let mut a = bus.client();
    a.driver("Hello", &[])
        .expect_error("org.freedesktop.DBus.Error.Failed");
    // The connection is still usable.
    let id = a.driver("GetId", &[]).expect_return();
    assert!(is_hex32(id.arg_str(0)));
    bus.assert_alive();
}

#[test]
fn driver_call_before_hello_is_access_denied() {
    let mut bus = TestBus::start();
    let mut a = bus.raw();
    a.auth_external();
    a.driver("GetId", &[])
        .expect_error("org.freedesktop.DBus.Error.AccessDenied");
    // Hello still works afterwards.
    let name = a.hello();
    assert!(name.starts_with(':'));
    bus.assert_alive();
}

#[test]
fn non_driver_message_before_hello_closes_connection() {
    let mut bus = TestBus::start();
    let mut a = bus.raw();
    a.auth_external();
    a.call(
        Some("org.example.Nobody"),
        "/",
        Some("org.example.X"),
        "Y",
        &[],
    );
    assert!(a.closed_within(TIMEOUT), "connection should be closed");
    bus.assert_alive();
}

#[test]
fn get_id_agrees_across_tools() {
    let bus = TestBus::start();
    let mut a = bus.client();
    let id = a
        .driver("GetId", &[])
        .expect_return()
        .arg_str(0)
        .to_string();
    assert!(is_hex32(&id), "GetId {id:?}");
    // The id is not the guid in the address.
    assert!(!bus.address.contains(&format!("guid={id}")));

    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.GetId",
    ]);
    assert!(out.ok().contains(&format!("string \"{id}\"")), "{out:#?}");

    let out = bus.gdbus_driver("GetId", &[]);
    assert_eq!(out.ok().trim(), format!("('{id}',)"));

    let out = bus.busctl(&["call", DBUS, DBUS_PATH, DBUS, "GetId"]);
    assert_eq!(out.ok().trim(), format!("s \"{id}\""));
}

#[test]
fn list_names_via_raw_dbus_send_gdbus_busctl() {
    let bus = TestBus::start();
    let mut a = bus.client();
    assert_eq!(a.request_name("com.example.Listed", 0), 1);
    let names = a.driver("ListNames", &[]).expect_return().arg_strs(0);
    assert_eq!(names.first().map(String::as_str), Some(DBUS), "{names:?}");
    assert!(names.iter().any(|n| n == a.unique()));
    assert!(names.iter().any(|n| n == "com.example.Listed"));

    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.ListNames",
    ]);
    let text = out.ok();
    assert!(text.contains("string \"com.example.Listed\""), "{text}");
    assert!(
        text.contains(&format!("string \"{}\"", a.unique())),
        "{text}"
    );

    let out = bus.gdbus_driver("ListNames", &[]);
    let text = out.ok();
    assert!(text.contains("'com.example.Listed'"), "{text}");
    assert!(text.starts_with("(['org.freedesktop.DBus'"), "{text}");

    let out = bus.busctl(&["call", DBUS, DBUS_PATH, DBUS, "ListNames"]);
    let text = out.ok();
    assert!(text.starts_with("as "), "{text}");
    assert!(text.contains("\"com.example.Listed\""), "{text}");
}

#[test]
fn busctl_list_shows_acquired_name() {
    let bus = TestBus::start();
    let mut a = bus.client();
    assert_eq!(a.request_name("com.example.BusctlList", 0), 1);
    let out = bus.busctl(&["list", "--no-legend"]);
    let text = out.ok();
    assert!(text.contains("com.example.BusctlList"), "{text}");
    assert!(text.contains(a.unique()), "{text}");
}

#[test]
fn name_has_owner_and_get_name_owner() {
    let bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    assert!(b
        .driver("NameHasOwner", &[s(DBUS)])
        .expect_return()
        .arg_bool(0));
    assert!(!b
        .driver("NameHasOwner", &[s("com.example.Nope")])
        .expect_return()
        .arg_bool(0));
    let me = a.unique().to_string();
    assert!(b
        .driver("NameHasOwner", &[s(&me)])
        .expect_return()
        .arg_bool(0));
    assert_eq!(a.request_name("com.example.Owned", 0), 1);
    let owner = b
        .driver("GetNameOwner", &[s("com.example.Owned")])
        .expect_return();
    assert_eq!(owner.arg_str(0), me);
    let owner = b.driver("GetNameOwner", &[s(DBUS)]).expect_return();
    assert_eq!(owner.arg_str(0), DBUS);
    b.driver("GetNameOwner", &[s("com.example.Nope")])
        .expect_error("org.freedesktop.DBus.Error.NameHasNoOwner");

    let out = bus.gdbus_driver("NameHasOwner", &["com.example.Owned"]);
    assert_eq!(out.ok().trim(), "(true,)");
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.GetNameOwner",
        "string:com.example.Owned",
    ]);
    assert!(out.ok().contains(&format!("string \"{me}\"")), "{out:#?}");
}

#[test]
fn unknown_driver_method_and_bad_args() {
    let bus = TestBus::start();
    let mut a = bus.client();
    a.driver("NoSuchMethod", &[])
        .expect_error("org.freedesktop.DBus.Error.UnknownMethod");
    let serial = a.call(
        Some(DBUS),
        DBUS_PATH,
        Some("org.example.NoIface"),
        "Foo",
        &[],
    );
    a.wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.UnknownInterface");
    // Wrong signature for RequestName.
    a.driver("RequestName", &[s("com.example.X")])
        .expect_error("org.freedesktop.DBus.Error.InvalidArgs");
    a.driver("GetNameOwner", &[Arg::U32(1)])
        .expect_error("org.freedesktop.DBus.Error.InvalidArgs");
}

#[test]
fn peer_ping_and_machine_id() {
    let bus = TestBus::start();
    let mut a = bus.client();
    let serial = a.call(
        Some(DBUS),
        DBUS_PATH,
        Some("org.freedesktop.DBus.Peer"),
        "Ping",
        &[],
    );
    a.wait_reply(serial).expect_return();
    let serial = a.call(
        Some(DBUS),
        DBUS_PATH,
        Some("org.freedesktop.DBus.Peer"),
        "GetMachineId",
        &[],
    );
    let id = a.wait_reply(serial).expect_return();
    assert!(is_hex32(id.arg_str(0)), "{id:#?}");
    // Destination-less Peer call: answered by the bus itself, without SENDER.
    let serial = a.call(None, "/", Some("org.freedesktop.DBus.Peer"), "Ping", &[]);
    let r = a.wait_reply(serial).expect_return();
    assert_eq!(r.sender, None, "{r:#?}");

    let out = bus.busctl(&["call", DBUS, DBUS_PATH, "org.freedesktop.DBus.Peer", "Ping"]);
    out.ok();
}

#[test]
fn introspect_and_features_property() {
    let bus = TestBus::start();
    let out = bus.gdbus("introspect", &["--dest", DBUS, "--object-path", DBUS_PATH]);
    let text = out.ok();
    assert!(text.contains("interface org.freedesktop.DBus {"), "{text}");
    assert!(text.contains("RequestName("), "{text}");
    assert!(text.contains("NameOwnerChanged("), "{text}");
    let out = bus.busctl(&["get-property", DBUS, DBUS_PATH, DBUS, "Interfaces"]);
    assert!(
        out.ok().contains("org.freedesktop.DBus.Monitoring"),
        "{out:#?}"
    );
    // dbus-daemon 1.14 with a session configuration: the bus emits ActivatableServicesChanged
    // and strips the header fields the specification does not define.
    let out = bus.gdbus_driver("Properties.Get", &[DBUS, "Features"]);
    assert_eq!(
        out.ok().trim(),
        "(<['ActivatableServicesChanged', 'HeaderFiltering']>,)"
    );
}

#[test]
fn credentials_of_a_connection() {
    let bus = TestBus::start();
    let a = bus.client();
    let mut b = bus.client();
    // SAFETY: getuid takes no arguments and cannot fail.
    let uid = unsafe { libc::getuid() };
    let r = b
        .driver("GetConnectionUnixUser", &[s(a.unique())])
        .expect_return();
    assert_eq!(r.arg_u32(0), uid);
    let r = b
        .driver("GetConnectionUnixProcessID", &[s(a.unique())])
        .expect_return();
    assert_eq!(r.arg_u32(0), std::process::id());
    b.driver("GetConnectionUnixUser", &[s(":1.999999")])
        .expect_error("org.freedesktop.DBus.Error.NameHasNoOwner");
    let out = bus.busctl(&["status", a.unique()]);
    assert!(
        out.ok().contains(&format!("PID={}", std::process::id())),
        "{out:#?}"
    );
}

#[test]
fn process_fd_is_a_pidfd_of_the_caller() {
    // spec 0.42: GetConnectionCredentials carries ProcessFD (a pidfd) for callers that
    // negotiated fd passing. dbus-daemon 1.14 predates it, so only sluicebus is checked.
    if is_reference_daemon() {
        skip(
            "process_fd_is_a_pidfd_of_the_caller",
            "sluicebus only (dbus-daemon 1.14 has no ProcessFD)",
        );
        return;
    }
    let bus = TestBus::start();
    let script = r#"
import dbus, os
b = dbus.bus.BusConnection(os.environ["ADDR"])
c = b.call_blocking("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                    "GetConnectionCredentials", "s", [b.get_unique_name()])
fd = c["ProcessFD"].take()
pid = [l.split()[1] for l in open("/proc/self/fdinfo/%d" % fd) if l.startswith("Pid:")][0]
print(int(c["ProcessID"]) == os.getpid() == int(pid))
"#;
    let mut cmd = std::process::Command::new(PYTHON);
    cmd.arg("-c").arg(script).env("ADDR", &bus.address);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert_eq!(out.stdout.trim(), "True", "stderr: {}", out.stderr);
}

#[test]
fn connection_stats_report_peaks_and_count_calls() {
    // dbus-daemon's meaning: Incoming*/Outgoing* are the queues now, Peak* their high-water
    // marks, Serial counts the calls. The receiver never reads, and 1 MB is more than its
    // socket buffer takes, so the message stays in the bus's queue for it.
    if is_reference_daemon() {
        skip(
            "connection_stats_report_peaks_and_count_calls",
            "checked against sluicebus only",
        );
        return;
    }
    let bus = TestBus::start();
    let script = r#"
import dbus, os
addr = os.environ["ADDR"]
sender = dbus.bus.BusConnection(addr)
sink = dbus.bus.BusConnection(addr)
sink_name = sink.get_unique_name()
msg = dbus.lowlevel.MethodCallMessage(sink_name, "/", "org.example.I", "Big")
msg.append("x" * 1000000, signature="s")
msg.set_no_reply(True)
sender.send_message(msg)
sender.flush()
stats = lambda n: sender.call_blocking("org.freedesktop.DBus", "/org/freedesktop/DBus",
    "org.freedesktop.DBus.Debug.Stats", "GetConnectionStats", "s", [n])
a, b = stats(sink_name), stats(sender.get_unique_name())
print(int(a["OutgoingMessages"]) == 1, int(a["OutgoingBytes"]) > 1000000,
      int(a["PeakOutgoingBytes"]) >= int(a["OutgoingBytes"]),
      int(b["PeakIncomingBytes"]) > 1000000, int(b["IncomingMessages"]) == 0,
      int(b["Serial"]) == int(a["Serial"]) + 1)
"#;
    let mut cmd = std::process::Command::new(PYTHON);
    cmd.arg("-c").arg(script).env("ADDR", &bus.address);
    let out = run_with_timeout(cmd, TIMEOUT);
    assert_eq!(
        out.stdout.trim(),
        "True True True True True True",
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn activation_is_logged_with_its_requester() {
    // A service that owns its name until the bus goes away.
    let services = TempDir::new("services");
    let script = services.path().join("service.py");
    std::fs::write(
        &script,
        r#"import os, dbus, dbus.bus
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib
DBusGMainLoop(set_as_default=True)
loop = GLib.MainLoop()
bus = dbus.bus.BusConnection(os.environ["DBUS_STARTER_ADDRESS"])
bus.call_on_disconnection(lambda _: loop.quit())
bus.request_name("com.example.Logged")
loop.run()
"#,
    )
    .expect("write the service");
    write_service_file(
        services.path(),
        "com.example.Logged",
        &format!("{PYTHON} {}", script.display()),
    );
    let bus = TestBus::with_config_logging(&session_config(&format!(
        "<servicedir>{}</servicedir>",
        services.path().display()
    )));
    let mut c = bus.client();
    let r = c
        .driver(
            "StartServiceByName",
            &[s("com.example.Logged"), Arg::U32(0)],
        )
        .expect_return();
    assert_eq!(r.arg_u32(0), 1, "not started: {r:#?}");
    // The reply comes once the service owns its name; both lines are written by then.
    let log = bus.stderr();
    let requested = format!(
        "Activating service name='com.example.Logged' requested by '{}' ({})",
        c.unique(),
        loginfo_of_this_process()
    );
    assert!(log.contains(&requested), "{requested:?} not in:\n{log}");
    assert!(
        log.contains("Successfully activated service 'com.example.Logged'"),
        "{log}"
    );
}
