//! What the bus holds on a connection's behalf and what happens at each limit: receivers
//! that cannot keep up (monitors, eavesdroppers, callers that do not read the driver's
//! replies) are disconnected with one log line, never silently short of a message.

use super::harness::*;

const MONITORING: &str = "org.freedesktop.DBus.Monitoring";

/// The single warning logged since the last call, which must name `who` and `limit`.
#[track_caller]
fn one_warning(h: &mut Harness, who: &str, says: &str) -> String {
    let w = h.take_warnings();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains(&format!("\"{who}\"")), "{w:#?}");
    assert!(w[0].contains(says), "{w:#?}");
    w[0].clone()
}

#[test]
fn a_monitor_that_cannot_keep_up_is_disconnected_with_one_warning() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (a, b) = (h.client(), h.client());
    let m = h.client_as(DAEMON_UID);
    let mn = h.unique(m);
    let mut rules = BodyWriter::new();
    rules.str_array(["type='signal'"]).u32(0);
    h.driver_iface(m, MONITORING, "BecomeMonitor", &rules)
        .expect_return();
    h.recv_all(m);
    h.take_warnings();
    let big = "z".repeat(600);
    // Two copies fit (the second may go past the limit); the third finds it over.
    // The addressed receiver reads: only the monitor falls behind.
    for _ in 0..2 {
        h.send(
            a,
            signal(Some(&h.unique(b)), "/", "com.example.I", "S"),
            &s(&big),
        );
        assert_eq!(h.recv_all(b).len(), 1);
    }
    assert!(!h.is_closed(m));
    assert!(h.take_warnings().is_empty());
    h.send(
        a,
        signal(Some(&h.unique(b)), "/", "com.example.I", "S"),
        &s(&big),
    );
    assert!(
        h.is_closed(m),
        "a monitor over its queue limit is disconnected"
    );
    one_warning(&mut h, &mn, "it does not read the messages it monitors");
    // The traffic itself is unaffected.
    assert_eq!(h.recv_all(b).len(), 1);
    assert!(h.recv(a).is_none() && !h.is_closed(a) && !h.is_closed(b));
    // Once: no further line for later traffic.
    h.send(
        a,
        signal(Some(&h.unique(b)), "/", "com.example.I", "S"),
        &s(&big),
    );
    assert!(h.take_warnings().is_empty());
}

#[test]
fn an_eavesdropper_that_cannot_keep_up_is_disconnected() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (a, b) = (h.client(), h.client());
    let e = h.client_as(DAEMON_UID);
    let en = h.unique(e);
    h.driver(e, "AddMatch", &s("eavesdrop='true',member='S'"))
        .expect_return();
    h.take_warnings();
    let big = "z".repeat(600);
    // The addressed receiver reads: only the eavesdropper falls behind.
    for _ in 0..2 {
        h.send(
            a,
            signal(Some(&h.unique(b)), "/", "com.example.I", "S"),
            &s(&big),
        );
        assert_eq!(h.recv_all(b).len(), 1);
    }
    assert!(!h.is_closed(e));
    h.send(
        a,
        signal(Some(&h.unique(b)), "/", "com.example.I", "S"),
        &s(&big),
    );
    assert!(h.is_closed(e));
    one_warning(&mut h, &en, "it does not read the signals due to it");
    assert_eq!(h.recv_all(b).len(), 1);
    assert!(!h.is_closed(a) && !h.is_closed(b));
}

#[test]
fn a_caller_that_does_not_read_the_drivers_replies_is_disconnected() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (c, other) = (h.client(), h.client());
    let cn = h.unique(c);
    h.take_warnings();
    // GetId's reply is about 100 bytes on the wire and costs more in the queue: a handful
    // fit, then the queue is over the limit and the next reply cannot be queued.
    let mut calls = 0;
    while !h.is_closed(c) {
        h.send(
            c,
            method_call(Some(DBUS), DBUS_PATH, Some(DBUS_IFACE), "GetId"),
            &empty(),
        );
        calls += 1;
        assert!(calls < 100, "never refused");
    }
    assert!(calls > 2, "{calls}");
    one_warning(
        &mut h,
        &cn,
        "it does not read the replies and signals the bus owes it",
    );
    // Every reply that was queued is still delivered (flushed before the close).
    assert_eq!(h.recv_all(c).len(), calls - 1);
    h.driver(other, "GetId", &empty()).expect_return();
}
