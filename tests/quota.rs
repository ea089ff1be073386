//! Quotas end to end (`src/bus/quota.rs`): back-pressure on a connection over
//! `max_incoming_bytes` instead of refusing or dropping its messages, a partial message that
//! takes its uid past `max_bytes_per_user`, and the per-uid name and match-rule quotas as
//! dbus-send sees them. Every client here has the test's uid.

mod common;

use common::*;

const LIMITS_EXCEEDED: &str = "org.freedesktop.DBus.Error.LimitsExceeded";

/// Shrink the receive buffer of a client that will not read for a while, so that what
/// the bus sends it stays in the bus's queue rather than the kernel's.
fn small_rcvbuf(c: &RawConn) {
    use std::os::fd::AsRawFd;
    let v: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket we own, with a correctly sized int.
    unsafe {
        libc::setsockopt(
            c.stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// `OutgoingBytes` of `name` (GetConnectionStats through busctl): what the bus holds in
/// its queue for it.
fn outgoing_bytes(bus: &TestBus, name: &str) -> u64 {
    let out = bus.busctl(&[
        "call",
        DBUS,
        DBUS_PATH,
        "org.freedesktop.DBus.Debug.Stats",
        "GetConnectionStats",
        "s",
        name,
    ]);
    let text = out.ok();
    let rest = text
        .split("\"OutgoingBytes\" u ")
        .nth(1)
        .unwrap_or_else(|| panic!("no OutgoingBytes in {text}"));
    rest.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("bad OutgoingBytes in {text}"))
}

#[test]
fn a_sender_over_max_incoming_bytes_is_paused_not_refused() {
    // The sink's own queue limit would refuse the flood (LimitsExceeded, messages lost) if
    // the bus kept reading the sender; back-pressure stops reading it at
    // max_incoming_bytes instead, far below, so nothing is refused or lost.
    const INCOMING: u64 = 100_000;
    let bus = TestBus::with_limits(&[
        ("max_incoming_bytes", INCOMING),
        ("max_outgoing_bytes", 400_000),
    ]);
    let mut sink = bus.client();
    small_rcvbuf(&sink);
    let sink_name = sink.unique().to_string();
    let mut sender = bus.client();
    const N: usize = 400;
    let body = "f".repeat(10_000);
    // 4 MB: far more than the sockets' buffers and the limits hold together, so the writer
    // blocks once the bus stops reading it.
    let writer = std::thread::spawn(move || {
        for i in 0..N {
            sender.signal(
                Some(&sink_name),
                "/",
                "org.example.Flood",
                "F",
                &[s(&format!("{i:04}{body}"))],
            );
        }
        sender.barrier();
        sender
    });
    // Wait until the bus holds some of the flood for the sink, then let it run several
    // more turns (each busctl call is a connection, a Hello and a call): a bus that kept
    // reading the sender would queue 32 KiB more of it per turn.
    let sink_name = sink.unique().to_string();
    assert!(
        eventually(TIMEOUT, || outgoing_bytes(&bus, &sink_name) >= INCOMING / 2),
        "the flood never reached the sink's queue"
    );
    let mut peak = 0;
    for _ in 0..5 {
        peak = peak.max(outgoing_bytes(&bus, &sink_name));
    }
    // Paused past max_incoming_bytes: at most one read budget (32 KiB) and one message
    // beyond it, each message charged a little more than its length.
    assert!(
        peak <= INCOMING + 32 * 1024 + 2 * 11_000,
        "the bus kept reading the sender: {peak} bytes queued for the sink"
    );
    // The sink reads: the sender resumes, and every signal arrives, in order.
    let mut i = 0;
    while i < N {
        let m = sink
            .recv(TIMEOUT)
            .unwrap_or_else(|| panic!("signal {i} of {N} never arrived"));
        if m.is_driver_signal("NameAcquired") {
            continue;
        }
        assert_eq!(&m.arg_str(0)[..4], format!("{i:04}"), "{m:#?}");
        i += 1;
    }
    let mut sender = writer.join().expect("writer");
    // Nothing refused: no LimitsExceeded (or anything else) for the sender.
    let got = sender.sync();
    assert!(
        got.iter().all(|m| m.is_driver_signal("NameAcquired")),
        "{got:#?}"
    );
}

#[test]
fn a_partial_message_past_the_uid_quota_disconnects_its_sender_only() {
    let bus = TestBus::with_config_logging(&session_config(
        "<limit name=\"max_bytes_per_user\">1000000</limit>",
    ));
    let mut bystander = bus.client();
    let mut big = bus.client();
    let big_name = big.unique().to_string();
    // A 2 MB message, all of it but its last 8 bytes.
    let bytes = build_message(&MsgSpec {
        msg_type: msg_type::SIGNAL,
        path: Some("/"),
        interface: Some("org.example.Big"),
        member: Some("B"),
        args: &[s(&"b".repeat(2_000_000))],
        serial: 1,
        ..Default::default()
    });
    let _ = big.send_bytes(&bytes[..bytes.len() - 8]);
    assert!(
        big.closed_within(TIMEOUT),
        "the bus kept a partial message past the uid's quota"
    );
    let log = bus.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("is being disconnected: the message it is sending takes UID"))
        .unwrap_or_else(|| panic!("no log line: {log}"));
    assert!(
        line.contains(&format!("\"{big_name}\"")) && line.contains("max_bytes_per_user=1000000"),
        "{line}"
    );
    // Once: a single line for it.
    assert_eq!(
        log.matches("the message it is sending takes UID").count(),
        1
    );
    // Its partial message went with it: the uid is served again.
    bystander.barrier();
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.GetId",
    ]);
    out.ok();
}

#[test]
fn per_uid_name_and_match_rule_quotas_refuse_dbus_send() {
    let bus = TestBus::with_limits(&[("max_names_per_user", 2), ("max_match_rules_per_user", 1)]);
    // Two connections of this uid own one name each, one has a match rule.
    let mut a = bus.client();
    let mut b = bus.client();
    assert_eq!(a.request_name("org.example.QuotaA", 0), 1);
    assert_eq!(b.request_name("org.example.QuotaB", 0), 1);
    b.add_match("member='Q'");
    // A third connection of the same uid (dbus-send) is refused a name and a rule.
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        "string:org.example.QuotaC",
        "uint32:0",
    ]);
    assert!(!out.success(), "{out:#?}");
    assert!(
        out.stderr.contains(LIMITS_EXCEEDED) && out.stderr.contains("max_names_per_user=2"),
        "{out:#?}"
    );
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.AddMatch",
        "string:member='R'",
    ]);
    assert!(!out.success(), "{out:#?}");
    assert!(
        out.stderr.contains(LIMITS_EXCEEDED) && out.stderr.contains("max_match_rules_per_user=1"),
        "{out:#?}"
    );
    // Releasing a name makes room.
    assert_eq!(a.release_name("org.example.QuotaA"), 1);
    bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        "string:org.example.QuotaC",
        "uint32:0",
    ])
    .ok();
    b.barrier();
}
