//! Unicast routing between clients: method calls and replies through a
//! python3-dbus echo service from every client tool, SENDER stamping, errors
//! for unowned destinations, NoReply on callee disconnect, and unix fd passing.

mod common;

use common::*;

const ECHO_PATH: &str = "/org/example/Echo";
const ECHO_IFACE: &str = "org.example.Echo";

#[test]
fn echo_service_reached_from_every_tool() {
    let bus = TestBus::start();
    let svc = bus.echo_service("org.example.EchoAll");

    let out = bus.py_client(&["echo", "org.example.EchoAll", "hello python"]);
    assert_eq!(out.ok().trim(), "hello python");
    let out = bus.py_client(&["add", "org.example.EchoAll", "40", "2"]);
    assert_eq!(out.ok().trim(), "42");

    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.example.EchoAll",
        ECHO_PATH,
        "org.example.Echo.Echo",
        "string:hello dbus-send",
    ]);
    assert!(out.ok().contains("string \"hello dbus-send\""), "{out:#?}");

    let out = bus.gdbus(
        "call",
        &[
            "--dest",
            "org.example.EchoAll",
            "--object-path",
            ECHO_PATH,
            "--method",
            "org.example.Echo.Echo",
            "hello gdbus",
        ],
    );
    assert_eq!(out.ok().trim(), "('hello gdbus',)");

    let out = bus.busctl(&[
        "call",
        "org.example.EchoAll",
        ECHO_PATH,
        ECHO_IFACE,
        "Echo",
        "s",
        "hello busctl",
    ]);
    assert_eq!(out.ok().trim(), "s \"hello busctl\"");

    // Also by unique name, from the raw client; the reply carries the
    // service's unique name as SENDER and our serial as REPLY_SERIAL.
    let mut c = bus.client();
    let serial = c.call(
        Some(&svc.unique),
        ECHO_PATH,
        Some(ECHO_IFACE),
        "Echo",
        &[s("raw")],
    );
    let r = c.wait_reply(serial).expect_return();
    assert_eq!(r.arg_str(0), "raw");
    assert_eq!(r.sender.as_deref(), Some(svc.unique.as_str()));
    assert_eq!(r.destination.as_deref(), Some(c.unique()));
}

#[test]
fn error_replies_are_relayed() {
    let bus = TestBus::start();
    let _svc = bus.echo_service("org.example.EchoErr");
    let out = bus.py_client(&["fail", "org.example.EchoErr"]);
    assert_eq!(out.ok().trim(), "org.example.Echo.Error.Deliberate");
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.example.EchoErr",
        ECHO_PATH,
        "org.example.Echo.Fail",
    ]);
    assert!(!out.success());
    assert!(
        out.stderr.contains("org.example.Echo.Error.Deliberate"),
        "{out:#?}"
    );
}

#[test]
fn raw_clients_call_each_other_and_sender_is_stamped() {
    let bus = TestBus::start();
    let mut callee = bus.client();
    let mut caller = bus.client();
    assert_eq!(callee.request_name("com.example.Callee", 0), 1);
    // A forged SENDER would be replaced: our builder sends none, the bus adds it.
    let serial = caller.call(
        Some("com.example.Callee"),
        "/obj",
        Some("com.example.Iface"),
        "Method",
        &[s("payload"), Arg::U32(7)],
    );
    let (_, call) = callee.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Method"));
    let call = call.expect("call delivered");
    assert_eq!(call.msg_type, msg_type::METHOD_CALL);
    assert_eq!(call.serial, serial, "serial must not be rewritten");
    assert_eq!(call.sender.as_deref(), Some(caller.unique()));
    assert_eq!(call.destination.as_deref(), Some("com.example.Callee"));
    assert_eq!(call.args, vec![s("payload"), Arg::U32(7)]);
    let caller_name = caller.unique().to_string();
    callee.send(MsgSpec {
        msg_type: msg_type::METHOD_RETURN,
        reply_serial: Some(serial),
        destination: Some(&caller_name),
        args: &[s("answer")],
        ..Default::default()
    });
    let r = caller.wait_reply(serial).expect_return();
    assert_eq!(r.arg_str(0), "answer");
    assert_eq!(r.sender.as_deref(), Some(callee.unique()));
}

#[test]
fn unowned_destinations() {
    let bus = TestBus::start();
    let mut c = bus.client();
    // Without NO_AUTO_START: ServiceUnknown (no .service file), unique names too.
    let serial = c.call(
        Some("com.example.Nobody"),
        "/",
        Some("com.example.I"),
        "M",
        &[],
    );
    c.wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.ServiceUnknown");
    let serial = c.call(Some(":1.9999"), "/", Some("com.example.I"), "M", &[]);
    c.wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.ServiceUnknown");
    // With NO_AUTO_START: NameHasNoOwner.
    let serial = c.send(MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        flags: FLAG_NO_AUTO_START,
        path: Some("/"),
        interface: Some("com.example.I"),
        member: Some("M"),
        destination: Some("com.example.Nobody"),
        ..Default::default()
    });
    c.wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.NameHasNoOwner");
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=com.example.Nobody",
        "/",
        "com.example.I.M",
    ]);
    assert!(
        out.stderr
            .contains("org.freedesktop.DBus.Error.ServiceUnknown"),
        "{out:#?}"
    );
}

#[test]
fn no_reply_when_callee_disconnects() {
    let bus = TestBus::start();
    let callee = bus.client();
    let mut caller = bus.client();
    let serial = caller.call(
        Some(callee.unique()),
        "/",
        Some("com.example.I"),
        "Slow",
        &[],
    );
    // Make sure the call reached the callee before it goes away.
    let mut callee = callee;
    let (_, got) = callee.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Slow"));
    assert!(got.is_some());
    drop(callee);
    let r = caller
        .wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.NoReply");
    assert_eq!(
        r.arg_str(0),
        "Message recipient disconnected from message bus without replying"
    );
    assert_eq!(r.sender.as_deref(), Some(DBUS));
}

#[test]
fn unix_fd_passing_through_the_bus() {
    let bus = TestBus::start();
    let _svc = bus.echo_service("org.example.EchoFd");
    let out = bus.py_client(&["fd", "org.example.EchoFd", "contents via fd"]);
    assert_eq!(out.ok().trim(), "contents via fd");
    // Twice, to catch fd bookkeeping problems.
    let out = bus.py_client(&["fd", "org.example.EchoFd", "second"]);
    assert_eq!(out.ok().trim(), "second");
}

#[test]
fn fd_to_peer_without_fd_support_is_not_supported() {
    let bus = TestBus::start();
    // The raw client never negotiates unix fds.
    let mut raw = bus.client();
    assert_eq!(raw.request_name("com.example.NoFds", 0), 1);
    let out = bus.py_client(&["fd", "com.example.NoFds", "x"]);
    assert_eq!(
        out.ok().trim(),
        "ERROR org.freedesktop.DBus.Error.NotSupported"
    );
    // The raw client must not have received the call: the bus refused it before the
    // python client got its error, so it would have been queued before the sync reply.
    raw.assert_none_before_sentinel("the call reached a peer without fd support", |m| {
        m.member.as_deref() == Some("ReadFd")
    });
}

#[test]
fn signal_from_service_reaches_subscriber() {
    let bus = TestBus::start();
    let svc = bus.echo_service("org.example.EchoSig");
    let mut sub = bus.client();
    sub.add_match("type='signal',interface='org.example.Echo',member='Ping'");
    let out = bus.py_client(&["echo", "org.example.EchoSig", "x"]);
    out.ok();
    let out = bus.busctl(&[
        "call",
        "org.example.EchoSig",
        ECHO_PATH,
        ECHO_IFACE,
        "EmitPing",
        "s",
        "pong",
    ]);
    out.ok();
    let (_, got) = sub.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Ping"));
    let got = got.expect("Ping signal");
    assert_eq!(got.arg_str(0), "pong");
    assert_eq!(got.sender.as_deref(), Some(svc.unique.as_str()));
    assert_eq!(got.path.as_deref(), Some(ECHO_PATH));
}

#[test]
fn reply_bookkeeping_survives_caller_disconnects_and_slot_reuse() {
    let mut bus = TestBus::with_limits(&[("max_replies_per_connection", 2)]);
    let mut callee = bus.client();
    let to = callee.unique().to_string();
    // A caller with two calls outstanding (its limit) goes away.
    let mut gone = bus.client();
    for member in ["A", "B"] {
        gone.call(Some(&to), "/", Some("com.example.I"), member, &[]);
    }
    let (_, got) = callee.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("B"));
    assert!(got.is_some());
    drop(gone);
    // A new caller (very likely in the same connection slot) has its full allowance and gets
    // exactly its own answers: the old records neither count against it nor answer it.
    let mut caller = bus.client();
    let s1 = caller.call(Some(&to), "/", Some("com.example.I"), "C", &[]);
    let s2 = caller.call(Some(&to), "/", Some("com.example.I"), "D", &[]);
    let (_, got) = callee.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("D"));
    let d = got.expect("second call of the new caller reached the callee");
    // The callee answers the new caller's D only, then leaves: C fails with NoReply.
    callee.send(MsgSpec {
        msg_type: msg_type::METHOD_RETURN,
        reply_serial: Some(d.serial),
        destination: Some(caller.unique()),
        ..Default::default()
    });
    caller.wait_reply(s2).expect_return();
    drop(callee);
    caller
        .wait_reply(s1)
        .expect_error("org.freedesktop.DBus.Error.NoReply");
    // Nothing else arrives for the new caller (no NoReply for the departed caller's calls):
    // the bus answers every call of a departing callee at once, so any such error would be
    // queued before the sync reply.
    caller.assert_none_before_sentinel("an error for the departed caller's calls", |m| {
        m.error_name.is_some()
    });
    bus.assert_alive();
}
