//! Resource limits from a small config: per-connection match rules, names,
//! pending replies, completed connections, message size, and reply timeout.

mod common;

use common::*;
use std::time::{Duration, Instant};

const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";

#[test]
fn max_match_rules_per_connection() {
    let mut bus = TestBus::with_limits(&[("max_match_rules_per_connection", 3)]);
    let mut c = bus.client();
    c.add_match("member='A'");
    c.add_match("member='B'");
    // Duplicates count as separate entries.
    c.add_match("member='B'");
    c.driver("AddMatch", &[s("member='D'")])
        .expect_error(LIMITS_EXCEEDED);
    // Removing one frees a slot.
    c.driver("RemoveMatch", &[s("member='B'")]).expect_return();
    c.add_match("member='D'");
    c.driver("AddMatch", &[s("member='E'")])
        .expect_error(LIMITS_EXCEEDED);
    // The limit is per connection.
    let mut d = bus.client();
    d.add_match("member='A'");
    d.add_match("member='B'");
    d.add_match("member='C'");
    // Via the CLI too (dbus-send's connection is fresh: its own 3 rules).
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.AddMatch",
        "string:member='Z'",
    ]);
    out.ok();
    bus.assert_alive();
}

#[test]
fn max_names_per_connection() {
    // 4 = the unique name plus 3 well-known names.
    let mut bus = TestBus::with_limits(&[("max_names_per_connection", 4)]);
    let mut other = bus.client();
    assert_eq!(other.request_name("com.example.Taken", 0), 1);
    let mut c = bus.client();
    assert_eq!(c.request_name("com.example.N1", 0), 1);
    assert_eq!(c.request_name("com.example.N2", 0), 1);
    // A queued name counts as well.
    assert_eq!(c.request_name("com.example.Taken", 0), 2);
    c.driver("RequestName", &[s("com.example.N4"), Arg::U32(0)])
        .expect_error(LIMITS_EXCEEDED);
    // The limit is checked before ownership, as in dbus-daemon: even
    // re-requesting an already owned name is refused while at the limit.
    c.driver("RequestName", &[s("com.example.N1"), Arg::U32(0)])
        .expect_error(LIMITS_EXCEEDED);
    // Releasing frees a slot.
    assert_eq!(c.release_name("com.example.Taken"), 1);
    assert_eq!(c.request_name("com.example.N4", 0), 1);
    let out = bus.gdbus_driver("RequestName", &["com.example.Cli", "0"]);
    assert_eq!(out.ok().trim(), "(uint32 1,)");
    bus.assert_alive();
}

#[test]
fn max_replies_per_connection() {
    let mut bus = TestBus::with_limits(&[("max_replies_per_connection", 3)]);
    let mut callee = bus.client();
    let mut caller = bus.client();
    let dest = callee.unique().to_string();
    let serials: Vec<u32> = (0..4)
        .map(|_| caller.call(Some(&dest), "/", Some("com.example.I"), "Wait", &[]))
        .collect();
    // The fourth outstanding call is refused by the bus. That error means the bus has
    // handled all four calls, so whatever it forwarded precedes the callee's sync reply.
    caller.wait_reply(serials[3]).expect_error(LIMITS_EXCEEDED);
    let got = callee.sync();
    let delivered: Vec<u32> = got
        .iter()
        .filter(|m| m.member.as_deref() == Some("Wait"))
        .map(|m| m.serial)
        .collect();
    assert_eq!(delivered, serials[..3].to_vec());
    // Answering one frees a slot.
    let caller_name = caller.unique().to_string();
    callee.send(MsgSpec {
        msg_type: msg_type::METHOD_RETURN,
        reply_serial: Some(serials[0]),
        destination: Some(&caller_name),
        ..Default::default()
    });
    caller.wait_reply(serials[0]).expect_return();
    let again = caller.call(Some(&dest), "/", Some("com.example.I"), "Wait", &[]);
    let (_, got) = callee.recv_until(TIMEOUT, |m| {
        m.serial == again && m.member.as_deref() == Some("Wait")
    });
    assert!(got.is_some());
    // Calls with NO_REPLY_EXPECTED are not counted.
    let nr = caller.send(MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        flags: FLAG_NO_REPLY_EXPECTED,
        path: Some("/"),
        interface: Some("com.example.I"),
        member: Some("Fire"),
        destination: Some(&dest),
        ..Default::default()
    });
    let (_, got) = callee.recv_until(TIMEOUT, |m| {
        m.serial == nr && m.member.as_deref() == Some("Fire")
    });
    assert!(got.is_some());
    bus.assert_alive();
}

#[test]
fn max_completed_connections() {
    let mut bus = TestBus::with_limits(&[("max_completed_connections", 3)]);
    let a = bus.client();
    // b sees the others leave: the bus has freed a slot once it announces the departure.
    let mut b = bus.client();
    b.watch_departures();
    let c = bus.client();
    let mut d = bus.raw();
    d.auth_external();
    d.driver("Hello", &[]).expect_error(LIMITS_EXCEEDED);
    // The refused connection stays open and can retry once a slot is free.
    let a_name = a.unique().to_string();
    drop(a);
    assert_eq!(b.next_departure().1, a_name);
    let name = d.hello();
    assert!(name.starts_with(':'));
    // Two slots for assert_alive's raw client and dbus-send; b stays.
    drop((c, d));
    b.next_departure();
    b.next_departure();
    bus.assert_alive();
}

#[test]
fn max_message_size() {
    let mut bus = TestBus::with_limits(&[("max_message_size", 4096)]);
    let mut c = bus.client();
    // A message just under the limit works.
    let small = "a".repeat(1000);
    c.driver("NameHasOwner", &[s(&small)]).expect_return();
    // A bigger one gets the sender disconnected.
    let big = "a".repeat(10_000);
    c.call(
        Some(DBUS),
        DBUS_PATH,
        Some(DBUS),
        "NameHasOwner",
        &[s(&big)],
    );
    assert!(c.closed_within(Duration::from_secs(5)));
    bus.assert_alive();
}

#[test]
fn reply_timeout_produces_no_reply() {
    let mut bus = TestBus::with_limits(&[("reply_timeout", 100)]);
    let mut callee = bus.client();
    let mut caller = bus.client();
    let dest = callee.unique().to_string();
    let serial = caller.call(Some(&dest), "/", Some("com.example.I"), "Ignored", &[]);
    let r = caller
        .wait_reply(serial)
        .expect_error("org.freedesktop.DBus.Error.NoReply");
    assert_eq!(
        r.arg_str(0),
        "Message did not receive a reply (timeout by message bus)"
    );
    let (_, got) = callee.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Ignored"));
    assert!(got.is_some());
    bus.assert_alive();
}

#[test]
fn config_with_limits_file_accepted_by_daemon() {
    // The exact limit elements the installed tests use must be accepted.
    let mut bus = TestBus::with_limits(&[
        ("max_incoming_bytes", 1),
        ("max_incoming_unix_fds", 64),
        ("max_outgoing_bytes", 1_000_000),
        ("max_outgoing_unix_fds", 64),
        ("max_message_unix_fds", 16),
        ("service_start_timeout", 25_000),
        ("auth_timeout", 30_000),
        ("pending_fd_timeout", 150_000),
        ("max_incomplete_connections", 64),
        ("max_connections_per_user", 256),
        ("max_pending_service_starts", 512),
    ]);
    // With max_incoming_bytes = 1 everything still works (in dbus-daemon it only pauses
    // reading; sluicebus parses it but does not enforce it yet).
    let mut c = bus.client();
    for i in 0..20 {
        let name = format!("com.example.In{i}");
        assert!(!c
            .driver("NameHasOwner", &[s(&name)])
            .expect_return()
            .arg_bool(0));
    }
    bus.assert_alive();
}

/// A raw client that negotiated fd passing and said Hello.
fn fd_client(bus: &TestBus) -> RawConn {
    let mut c = bus.raw();
    c.send_bytes(b"\0AUTH EXTERNAL\r\nDATA\r\n").expect("write");
    assert!(c.read_line(TIMEOUT).expect("DATA").starts_with("DATA"));
    assert!(c.read_line(TIMEOUT).expect("OK").starts_with("OK "));
    c.send_bytes(b"NEGOTIATE_UNIX_FD\r\n").expect("write");
    assert_eq!(c.read_line(TIMEOUT).as_deref(), Some("AGREE_UNIX_FD"));
    c.send_bytes(b"BEGIN\r\n").expect("write");
    c.hello();
    c
}

/// Send `bytes` with `n` copies of a pipe's write end attached (SCM_RIGHTS).
fn send_with_fds(c: &RawConn, bytes: &[u8], n: usize) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let (_r, w) = nix::unistd::pipe().expect("pipe");
    let fds = vec![w.as_raw_fd(); n];
    let iov = [std::io::IoSlice::new(bytes)];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(c.stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).expect("sendmsg");
}

/// The first `len` bytes of a call to the driver that declares one fd (signature `h`).
fn call_with_fd_prefix(len: usize) -> Vec<u8> {
    let msg = build_message(&MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        serial: 7,
        path: Some(DBUS_PATH),
        interface: Some(DBUS),
        member: Some("GetId"),
        destination: Some(DBUS),
        signature: Some("h"),
        args: &[Arg::U32(0)],
        unix_fds: Some(1),
        ..Default::default()
    });
    msg[..len.min(msg.len())].to_vec()
}

#[test]
fn fds_pending_too_long_disconnect() {
    let mut bus = TestBus::with_limits(&[("pending_fd_timeout", 300)]);
    let mut c = fd_client(&bus);
    let mut other = bus.client();
    // Part of a message and its fd, then nothing: the fd stays pending on the bus.
    let sent = Instant::now();
    send_with_fds(&c, &call_with_fd_prefix(20), 1);
    // Closed once the timeout has passed...
    assert!(c.closed_within(Duration::from_secs(5)));
    // ...and not before: the bus got the fd after `sent`, so its deadline is later still.
    let lived = sent.elapsed();
    assert!(
        lived >= Duration::from_millis(250),
        "closed after {lived:?}, before the 300 ms pending_fd_timeout"
    );
    assert!(bus
        .stderr()
        .contains("has had unix fds pending for too long"));
    other.driver("GetId", &[]).expect_return();
    bus.assert_alive();
}

#[test]
fn completed_message_claims_its_pending_fds() {
    let mut bus = TestBus::with_limits(&[("pending_fd_timeout", 300)]);
    let mut c = fd_client(&bus);
    let whole = call_with_fd_prefix(usize::MAX);
    // The kernel ends a read at the end of the bytes an fd came with, so the bus reads the
    // first 20 bytes and the fd on their own: the fd is pending until the rest arrives.
    send_with_fds(&c, &whole[..20], 1);
    c.send_bytes(&whole[20..]).expect("rest of the message");
    c.wait_reply(7);
    // A control connection leaves an fd pending after c's fd reached the bus: its deadline is
    // later than any c's could be. Once the bus has dropped it for that, c's deadline has
    // passed too, and c must still be served: the completed message claimed its fd.
    let control = fd_client(&bus);
    send_with_fds(&control, &call_with_fd_prefix(20), 1);
    let mut control = control;
    assert!(control.closed_within(TIMEOUT), "control never dropped");
    c.driver("GetId", &[]).expect_return();
    bus.assert_alive();
}

#[test]
fn more_pending_fds_than_a_message_may_carry_disconnect() {
    let mut bus = TestBus::with_limits(&[("max_message_unix_fds", 4)]);
    let mut c = fd_client(&bus);
    send_with_fds(&c, &call_with_fd_prefix(20), 5);
    assert!(c.closed_within(Duration::from_secs(5)));
    bus.assert_alive();
}

/// The kernel ends a read after a message that carries fds, so a bus that stops there (to
/// write what the read produced first) must come back for what follows: two calls with an fd
/// each, in the socket before the bus reads either, are both answered.
#[test]
fn back_to_back_messages_with_fds_are_all_read() {
    let mut bus = TestBus::start();
    let mut c = fd_client(&bus);
    let call = |serial| {
        build_message(&MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            serial,
            path: Some(DBUS_PATH),
            interface: Some(DBUS),
            member: Some("GetId"),
            destination: Some(DBUS),
            signature: Some("h"),
            args: &[Arg::U32(0)],
            unix_fds: Some(1),
            ..Default::default()
        })
    };
    for serial in [7, 8, 9] {
        send_with_fds(&c, &call(serial), 1);
    }
    for serial in [7, 8, 9] {
        c.wait_reply(serial);
    }
    bus.assert_alive();
}
