//! Malformed and hostile input through the raw client. After each case the
//! offending connection is either closed or answered with an error, and the
//! bus keeps serving other clients (`assert_alive`).

mod common;

use common::*;
use std::time::Duration;

/// How long to wait for the bus to drop a misbehaving connection.
const CLOSE: Duration = Duration::from_secs(5);

fn authed(bus: &TestBus) -> RawConn {
    let mut c = bus.raw();
    c.auth_external();
    c
}

fn uid() -> u32 {
    // SAFETY: getuid takes no arguments and cannot fail.
    unsafe { libc::getuid() }
}

#[test]
fn first_byte_not_nul_closes() {
    let mut bus = TestBus::start();
    let mut c = bus.raw();
    c.send_bytes(format!("AUTH EXTERNAL {}\r\n", hex(&uid().to_string())).as_bytes())
        .expect("write");
    assert!(
        c.closed_within(CLOSE),
        "connection without leading NUL kept open"
    );
    bus.assert_alive();
}

#[test]
fn garbage_bytes_during_auth() {
    let mut bus = TestBus::start();
    // Unknown commands get ERROR, the conversation continues.
    let mut c = bus.raw();
    c.send_bytes(b"\0HELLO THERE\r\n").expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("ERROR"), "{line:?}");
    c.send_bytes(b"auth external\r\n").expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("ERROR"), "lower-case command: {line:?}");
    c.auth_external_no_nul();
    c.hello();
    // Binary junk without a line end, more than the 16 KiB auth buffer.
    let mut d = bus.raw();
    let junk: Vec<u8> = (0..40_000u32)
        .map(|i| (i * 7 + 0x80) as u8 | 0x80)
        .collect();
    let _ = d.send_bytes(b"\0");
    let _ = d.send_bytes(&junk);
    assert!(
        d.closed_within(CLOSE),
        "16 KiB+ of auth garbage not rejected"
    );
    bus.assert_alive();
}

#[test]
fn bad_auth() {
    let mut bus = TestBus::start();
    let mut c = bus.raw();
    // Wrong uid for EXTERNAL.
    let wrong = uid().wrapping_add(4242);
    c.send_bytes(format!("\0AUTH EXTERNAL {}\r\n", hex(&wrong.to_string())).as_bytes())
        .expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("REJECTED"), "{line:?}");
    assert!(line.contains("EXTERNAL"), "{line:?}");
    // Unknown mechanism.
    c.send_bytes(b"AUTH NO_SUCH_MECH\r\n").expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("REJECTED"), "{line:?}");
    // Bad hex.
    c.send_bytes(b"AUTH EXTERNAL zz\r\n").expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(
        line.starts_with("ERROR") || line.starts_with("REJECTED"),
        "{line:?}"
    );
    // DATA without a conversation.
    c.send_bytes(b"DATA 30\r\n").expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("ERROR"), "{line:?}");
    // The right uid still works on the same connection.
    c.send_bytes(format!("AUTH EXTERNAL {}\r\n", hex(&uid().to_string())).as_bytes())
        .expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("OK "), "{line:?}");
    c.send_bytes(b"BEGIN\r\n").expect("write");
    c.hello();

    // BEGIN before authenticating closes the connection.
    let mut d = bus.raw();
    d.send_bytes(b"\0BEGIN\r\n").expect("write");
    assert!(d.closed_within(CLOSE));

    // Six rejections disconnect.
    let mut e = bus.raw();
    let _ = e.send_bytes(b"\0");
    let mut closed = false;
    for _ in 0..10 {
        if e.send_bytes(b"AUTH NO_SUCH_MECH\r\n").is_err() {
            closed = true;
            break;
        }
        match e.read_line(Duration::from_secs(2)) {
            Some(l) => assert!(l.starts_with("REJECTED"), "{l:?}"),
            None => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed || e.closed_within(CLOSE),
        "endless rejections tolerated"
    );
    bus.assert_alive();
}

/// Every SASL line the bus sends until it closes the connection, and whether it closed it.
fn lines_until_closed(c: &mut RawConn) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    while let Some(l) = c.read_line(CLOSE) {
        lines.push(l);
    }
    // read_line gives up on end of file and on a timeout alike: tell them apart.
    let closed = c.closed_within(Duration::from_millis(1)) || c.send_bytes(b"\r\n").is_err();
    (lines, closed)
}

#[test]
fn too_many_rejections_are_all_answered_before_the_close() {
    let mut bus = TestBus::start();
    let rejected = "REJECTED EXTERNAL".to_string();
    // dbus-daemon answers six AUTH lines with REJECTED, then closes the connection and
    // ignores the rest; it writes the sixth REJECTED before closing.
    for pipelined in [7, 9, 12] {
        let mut c = bus.raw();
        let mut bytes = b"\0".to_vec();
        for _ in 0..pipelined {
            bytes.extend_from_slice(b"AUTH NO_SUCH_MECH\r\n");
        }
        c.send_bytes(&bytes).expect("write");
        let (lines, closed) = lines_until_closed(&mut c);
        assert_eq!(lines, vec![rejected.clone(); 6], "{pipelined} pipelined");
        assert!(closed, "{pipelined} pipelined: not closed");
    }
    // One line at a time: each answered, the sixth too, then the close.
    let mut c = bus.raw();
    c.send_bytes(b"\0").expect("write");
    for i in 0..5 {
        c.send_bytes(b"AUTH NO_SUCH_MECH\r\n").expect("write");
        assert_eq!(
            c.read_line(TIMEOUT).as_ref(),
            Some(&rejected),
            "attempt {i}"
        );
    }
    c.send_bytes(b"AUTH NO_SUCH_MECH\r\n").expect("write");
    let (lines, closed) = lines_until_closed(&mut c);
    assert_eq!(lines, [rejected], "the sixth attempt");
    assert!(closed, "not closed after six rejections");
    bus.assert_alive();
}

#[test]
fn external_without_initial_response() {
    let bus = TestBus::start();
    let mut c = bus.raw();
    c.send_bytes(b"\0AUTH EXTERNAL\r\n").expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("DATA"), "{line:?}");
    c.send_bytes(b"DATA\r\n").expect("write");
    let line = c.read_line(TIMEOUT).expect("answer");
    assert!(line.starts_with("OK "), "{line:?}");
    c.send_bytes(b"NEGOTIATE_UNIX_FD\r\n").expect("write");
    assert_eq!(c.read_line(TIMEOUT).as_deref(), Some("AGREE_UNIX_FD"));
    c.send_bytes(b"BEGIN\r\n").expect("write");
    c.hello();
}

#[test]
fn pipelined_auth_and_hello_in_one_write() {
    // Like sd-bus: the whole handshake and Hello in a single write.
    let bus = TestBus::start();
    let mut c = bus.raw();
    let mut bytes = b"\0AUTH EXTERNAL\r\nDATA\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n".to_vec();
    bytes.extend(driver_call_bytes(1, "Hello"));
    c.send_bytes(&bytes).expect("write");
    assert!(c.read_line(TIMEOUT).expect("DATA").starts_with("DATA"));
    assert!(c.read_line(TIMEOUT).expect("OK").starts_with("OK "));
    assert_eq!(c.read_line(TIMEOUT).as_deref(), Some("AGREE_UNIX_FD"));
    let r = c.wait_reply(1).expect_return();
    assert!(r.arg_str(0).starts_with(":1."));
}

#[test]
fn garbage_after_begin_closes() {
    let mut bus = TestBus::start();
    let mut c = authed(&bus);
    c.hello();
    let _ = c.send_bytes(b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX this is not a message");
    assert!(c.closed_within(CLOSE));
    bus.assert_alive();
}

fn hello_then(bus: &TestBus, bytes: &[u8]) -> RawConn {
    let mut c = authed(bus);
    c.hello();
    let _ = c.send_bytes(bytes);
    c
}

fn ping_bytes(serial: u32) -> Vec<u8> {
    driver_call_bytes(serial, "GetId")
}

#[test]
fn truncated_message_then_eof() {
    let mut bus = TestBus::start();
    let full = build_message(&MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        serial: 100,
        path: Some(DBUS_PATH),
        interface: Some(DBUS),
        member: Some("NameHasOwner"),
        destination: Some(DBUS),
        args: &[s("com.example.SomeLongishNameToMakeABody")],
        ..Default::default()
    });
    let mut c = hello_then(&bus, &full[..full.len() - 10]);
    // The partial message must not block anybody else.
    bus.assert_alive();
    // No reply to the incomplete message: the hang-up is the sentinel, everything the bus
    // sends before closing is read.
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let (got, closed) = c.until_closed(CLOSE);
    assert!(closed, "connection kept open after EOF: {got:#?}");
    assert!(got.iter().all(|m| m.reply_serial != Some(100)), "{got:#?}");
    bus.assert_alive();
}

#[test]
fn truncated_message_completed_later_is_processed() {
    let bus = TestBus::start();
    let full = ping_bytes(100);
    // A complete GetId and the first 7 bytes of another in one write: once the first is
    // answered the bus has read the fragment on its own.
    let mut first = ping_bytes(99);
    first.extend_from_slice(&full[..7]);
    let mut c = hello_then(&bus, &first);
    c.wait_reply(99).expect_return();
    c.send_bytes(&full[7..]).expect("write rest");
    c.wait_reply(100).expect_return();
}

#[test]
fn oversized_message_length_closes() {
    let mut bus = TestBus::start();
    let mut m = ping_bytes(100);
    // Body length far beyond the 128 MiB protocol maximum.
    m[4..8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let mut c = hello_then(&bus, &m);
    assert!(c.closed_within(CLOSE));
    bus.assert_alive();

    // Header-field array length beyond the maximum too.
    let mut m = ping_bytes(101);
    m[12..16].copy_from_slice(&0x0900_0000u32.to_le_bytes());
    let mut c = hello_then(&bus, &m);
    assert!(c.closed_within(CLOSE));
    bus.assert_alive();
}

#[test]
fn invalid_signature_in_header_closes() {
    let mut bus = TestBus::start();
    for bad_sig in ["(", "!", "a", "s)", "((s)"] {
        let m = build_message(&MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            serial: 100,
            path: Some(DBUS_PATH),
            interface: Some(DBUS),
            member: Some("GetId"),
            destination: Some(DBUS),
            signature: Some(bad_sig),
            args: &[],
            ..Default::default()
        });
        let mut c = hello_then(&bus, &m);
        assert!(c.closed_within(CLOSE), "signature {bad_sig:?} accepted");
        bus.assert_alive();
    }
}

#[test]
fn body_not_matching_signature_closes() {
    let mut bus = TestBus::start();
    // Signature says "s" but the body is empty.
    let m = build_message(&MsgSpec {
        msg_type: msg_type::METHOD_CALL,
        serial: 100,
        path: Some(DBUS_PATH),
        interface: Some(DBUS),
        member: Some("NameHasOwner"),
        destination: Some(DBUS),
        signature: Some("s"),
        args: &[],
        ..Default::default()
    });
    let mut c = hello_then(&bus, &m);
    assert!(c.closed_within(CLOSE));
    bus.assert_alive();
}

#[test]
fn invalid_header_values_close() {
    let mut bus = TestBus::start();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad endianness", {
            let mut m = ping_bytes(100);
            m[0] = b'x';
            m
        }),
        ("protocol version 2", {
            let mut m = ping_bytes(100);
            m[3] = 2;
            m
        }),
        ("serial 0", {
            let mut m = ping_bytes(100);
            m[8..12].copy_from_slice(&0u32.to_le_bytes());
            m
        }),
        (
            "method call without member",
            build_message(&MsgSpec {
                msg_type: msg_type::METHOD_CALL,
                serial: 100,
                path: Some(DBUS_PATH),
                destination: Some(DBUS),
                ..Default::default()
            }),
        ),
        (
            "signal without interface",
            build_message(&MsgSpec {
                msg_type: msg_type::SIGNAL,
                serial: 100,
                path: Some("/x"),
                member: Some("Sig"),
                ..Default::default()
            }),
        ),
        (
            "invalid member name",
            build_message(&MsgSpec {
                msg_type: msg_type::METHOD_CALL,
                serial: 100,
                path: Some(DBUS_PATH),
                interface: Some(DBUS),
                member: Some("Not.A.Member"),
                destination: Some(DBUS),
                ..Default::default()
            }),
        ),
        (
            "invalid object path",
            build_message(&MsgSpec {
                msg_type: msg_type::METHOD_CALL,
                serial: 100,
                path: Some("no/leading/slash"),
                interface: Some(DBUS),
                member: Some("GetId"),
                destination: Some(DBUS),
                ..Default::default()
            }),
        ),
        ("invalid UTF-8 in a string argument", {
            let mut m = build_message(&MsgSpec {
                msg_type: msg_type::METHOD_CALL,
                serial: 100,
                path: Some(DBUS_PATH),
                interface: Some(DBUS),
                member: Some("NameHasOwner"),
                destination: Some(DBUS),
                args: &[s("com.example.Xyz")],
                ..Default::default()
            });
            let at = m.len() - 4; // inside the string, before its NUL
            m[at] = 0xff;
            m
        }),
        (
            "reply without reply serial",
            build_message(&MsgSpec {
                msg_type: msg_type::METHOD_RETURN,
                serial: 100,
                destination: Some(DBUS),
                ..Default::default()
            }),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = hello_then(&bus, &bytes);
        assert!(c.closed_within(CLOSE), "{what}: connection kept open");
        bus.assert_alive();
    }
}

/// A signal marshalled by hand with exactly these header fields (code, signature, value),
/// which [`build_message`] would not write (SENDER, unknown codes).
fn signal_with_fields(serial: u32, fields: &[(u8, &str, Arg)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(b'l');
    w.u8(msg_type::SIGNAL);
    w.u8(0);
    w.u8(1);
    w.u32(0);
    w.u32(serial);
    w.u32(0);
    let start = w.buf.len();
    for (code, ty, val) in fields {
        w.pad(8);
        w.u8(*code);
        w.sig(ty);
        w.arg(val);
    }
    let len = (w.buf.len() - start) as u32;
    w.buf[12..16].copy_from_slice(&len.to_le_bytes());
    w.pad(8);
    w.buf
}

/// Relay a hand-built broadcast signal /x com.example.A.`member` carrying one more header
/// field from one client to another; returns what the receiver got and the sender's name.
fn relay_with_field(serial: u32, member: &str, field: (u8, &str, Arg)) -> (RawMsg, String) {
    let bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    b.add_match(&format!("member='{member}'"));
    let bytes = signal_with_fields(
        serial,
        &[
            (1, "o", Arg::Path("/x".into())),
            (2, "s", s("com.example.A")),
            (3, "s", s(member)),
            field,
        ],
    );
    a.send_bytes(&bytes).expect("write");
    let (_, got) = b.recv_until(TIMEOUT, |m| m.member.as_deref() == Some(member));
    let got = got.unwrap_or_else(|| panic!("signal {member} not relayed"));
    (got, a.unique().to_string())
}

#[test]
fn forged_sender_is_replaced() {
    // A signal carrying SENDER=org.freedesktop.DBus.
    let (got, sender) = relay_with_field(77, "Forged", (7, "s", s(DBUS)));
    assert_eq!(got.sender.as_deref(), Some(sender.as_str()));
}

#[test]
fn unknown_header_fields_are_stripped() {
    let (got, sender) = relay_with_field(78, "Weird", (42, "s", s("unknown field")));
    assert!(got.unknown_fields.is_empty(), "{got:#?}");
    assert_eq!(got.sender.as_deref(), Some(sender.as_str()));
}

#[test]
fn bad_match_rules() {
    let mut bus = TestBus::start();
    let mut c = bus.client();
    let invalid = [
        "foo='bar'",
        "type='bogus'",
        "type='signal",
        "type",
        "member='Not.A.Member'",
        "interface='nodots'",
        "path='no/slash'",
        "path='/a',path_namespace='/b'",
        "sender='not a name'",
        "arg64='x'",
        "arg0='a',arg0path='/b'",
        "arg1namespace='a.b'",
        "arg0namespace='1a'",
        "type='signal',type='signal'",
        "eavesdrop='maybe'",
        "Type='signal'",
        "type='signal' ,member='X'",
    ];
    for rule in invalid {
        c.driver("AddMatch", &[s(rule)])
            .expect_error("org.freedesktop.DBus.Error.MatchRuleInvalid");
    }
    // Too long: LimitsExceeded, not MatchRuleInvalid.
    let long = format!("arg0='{}'", "x".repeat(1100));
    c.driver("AddMatch", &[s(&long)])
        .expect_error("org.freedesktop.DBus.Error.LimitsExceeded");
    // RemoveMatch of a malformed rule.
    c.driver("RemoveMatch", &[s("foo='bar'")])
        .expect_error("org.freedesktop.DBus.Error.MatchRuleInvalid");
    // Wrong argument type.
    c.driver("AddMatch", &[Arg::U32(1)])
        .expect_error("org.freedesktop.DBus.Error.InvalidArgs");
    // The connection still works and valid rules are accepted.
    c.add_match("type='signal',arg0namespace='a'");
    c.add_match("arg63='x'");
    bus.assert_alive();
}

#[test]
fn second_hello_is_failed_and_bus_alive() {
    let mut bus = TestBus::start();
    let mut c = bus.client();
    for _ in 0..3 {
        c.driver("Hello", &[])
            .expect_error("org.freedesktop.DBus.Error.Failed");
    }
    c.driver("GetId", &[]).expect_return();
    bus.assert_alive();
}

#[test]
fn many_connections_dropped_abruptly() {
    let mut bus = TestBus::start();
    for i in 0..50 {
        let mut c = bus.raw();
        match i % 3 {
            0 => {}
            1 => {
                let _ = c.send_bytes(b"\0AUTH EXTERNAL");
            }
            _ => {
                c.auth_external();
                let _ = c.send_bytes(&ping_bytes(5)[..20]);
            }
        }
        drop(c);
    }
    bus.assert_alive();
}

/// A UNIX_FD value is an index into the fds that came with the message; an index with no fd
/// behind it is the receiver's to refuse. dbus-daemon relays such a message untouched (a
/// client library's test suite relies on it, expecting the receiver's error reply), so the
/// sender keeps its connection and the receiver gets the very values sent.
#[test]
fn unix_fd_index_beyond_the_fds_is_delivered() {
    let mut bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let dest = b.unique().to_string();
    for (serial, sig, args) in [
        (40, "h", vec![Arg::U32(0)]),
        (41, "uh", vec![Arg::U32(7), Arg::U32(u32::MAX)]),
    ] {
        a.send(MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            serial,
            path: Some("/fd"),
            interface: Some("com.example.Fd"),
            member: Some("Take"),
            destination: Some(&dest),
            signature: Some(sig),
            args: &args,
            ..Default::default()
        });
        let (_, got) = b.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Take"));
        let got = got.unwrap_or_else(|| panic!("call with signature {sig} not delivered"));
        assert_eq!(got.signature, sig);
        assert_eq!(got.args, args, "{got:#?}");
        assert_eq!(got.unix_fds, None);
        // The receiver answers as a client library does; the sender gets that error.
        b.send(MsgSpec {
            msg_type: msg_type::ERROR,
            error_name: Some("org.freedesktop.DBus.Error.InvalidArgs"),
            reply_serial: Some(got.serial),
            destination: got.sender.as_deref(),
            ..Default::default()
        });
        let (_, reply) = a.recv_until(TIMEOUT, |m| m.reply_serial == Some(serial));
        let reply = reply.unwrap_or_else(|| panic!("no reply to {serial}"));
        assert_eq!(
            reply.error_name.as_deref(),
            Some("org.freedesktop.DBus.Error.InvalidArgs")
        );
    }
    bus.assert_alive();
}

/// The D-Bus specification bounds a signature by 32 array type codes and 32 open
/// parentheses; a dict entry is curly brackets, not a parenthesis (libdbus counts dict entries
/// on their own). So an empty `a{s(…(y)…)}` with 32 structs inside the dict entry is relayed,
/// and with 33 its sender is disconnected, the signal is not delivered, and the receiver stays.
#[test]
fn dict_entries_do_not_count_against_the_struct_limit() {
    let mut bus = TestBus::start();
    let mut b = bus.client();
    b.add_match("member='Deep'");
    b.watch_departures();
    let deep = |n: usize| format!("a{{s{}y{}}}", "(".repeat(n), ")".repeat(n));
    // An empty array of dict entries: its length, then padding to the entries' 8-alignment.
    let empty_array = [Arg::U32(0), Arg::U32(0)];
    let signal = |serial: u32, sig: &str| {
        build_message(&MsgSpec {
            msg_type: msg_type::SIGNAL,
            serial,
            path: Some("/x"),
            interface: Some("com.example.A"),
            member: Some("Deep"),
            signature: Some(sig),
            args: &empty_array,
            ..Default::default()
        })
    };
    let mut a = bus.client();
    a.send_bytes(&signal(5, &deep(32))).expect("write");
    // The sender is still connected after the bus handled its signal.
    a.barrier();
    let (_, got) = b.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Deep"));
    let got = got.expect("32 structs inside a dict entry not relayed");
    assert_eq!(got.signature, deep(32));

    let mut c = bus.client();
    c.send_bytes(&signal(6, &deep(33))).expect("write");
    assert!(c.closed_within(CLOSE), "33 nested structs accepted");
    let (before, gone) = b.next_departure();
    assert_eq!(gone, c.unique());
    assert!(
        !before.iter().any(|m| m.member.as_deref() == Some("Deep")),
        "the invalid signal was delivered: {before:#?}"
    );
    bus.assert_alive();
}
