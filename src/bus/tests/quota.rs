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

/// A unicast signal of about `n` bytes from `from` to `to`.
fn sig_to(h: &mut Harness, from: Client, to: Client, n: usize) {
    let dest = h.unique(to);
    h.send(
        from,
        signal(Some(&dest), "/", "com.example.I", "S"),
        &s(&"q".repeat(n)),
    );
}

#[test]
fn what_a_sender_makes_the_bus_hold_balances_to_zero() {
    let mut h = Harness::new();
    let (a, b, c) = (h.client(), h.client(), h.client());
    let accounts = h.quota_accounts();
    // Replies and signals from the bus charge nobody.
    assert_eq!(h.held(a).bytes, 0);
    sig_to(&mut h, a, b, 100);
    let one = h.held(a).bytes;
    assert!(one > 100, "charged what the queued copy costs: {one}");
    sig_to(&mut h, a, b, 100);
    sig_to(&mut h, a, c, 100);
    // The copy queued behind another is copied out of the receive buffer and costs less
    // (`Bus::enqueue`); the other two are slices charged their whole buffer.
    let three = h.held(a).bytes;
    assert!(three > 2 * one && three < 3 * one, "{three} vs {one}");
    assert_eq!(h.user_held(USER_UID).bytes, three);
    // Written: released.
    assert_eq!(h.recv_all(b).len(), 2);
    assert_eq!(h.held(a).bytes, one);
    // Its receiver gone: released.
    h.disconnect(c);
    assert_eq!(h.held(a).bytes, 0);
    // The sender gone while its message is queued: the charge stays with its uid until
    // the message is written, then the account is forgotten.
    sig_to(&mut h, a, b, 100);
    h.disconnect(a);
    assert_eq!(h.user_held(USER_UID).bytes, one);
    assert_eq!(h.quota_accounts(), accounts - 1);
    assert_eq!(h.recv_all(b).len(), 1);
    assert_eq!(h.user_held(USER_UID).bytes, 0);
    assert_eq!(h.quota_accounts(), accounts - 2);
    // A broadcast charges the sender once per receiver, as each receiver is charged.
    let d = h.client();
    for r in [b, d] {
        h.driver(r, "AddMatch", &s("member='B'")).expect_return();
    }
    h.send(d, signal(None, "/", "com.example.I", "B"), &s("x"));
    let charged = h.held(d).bytes;
    assert!(charged > 0);
    h.recv_all(b);
    assert_eq!(h.held(d).bytes * 2, charged);
    h.recv_all(d);
    assert_eq!(h.held(d).bytes, 0);
}

#[test]
fn over_max_incoming_bytes_a_sender_is_paused_until_its_receiver_reads() {
    let mut h = Harness::with_limits(&[("max_incoming_bytes", 1000)]);
    let (a, b, bystander) = (h.client(), h.client(), h.client());
    let mut sent = 0;
    while h.held(a).bytes <= 1000 {
        assert!(h.may_read(a));
        sig_to(&mut h, a, b, 200);
        sent += 1;
    }
    // Over the limit: not read, and nobody refused or dropped anything.
    assert!(!h.may_read(a));
    assert!(!h.may_read(a), "asking again changes nothing");
    assert!(h.recv(a).is_none() && h.take_warnings().is_empty());
    assert!(h.may_read(bystander) && h.may_read(b));
    assert!(h.take_resumed().is_empty());
    // One message read: under the limit again, resumed once.
    h.recv(b).unwrap();
    assert_eq!(h.take_resumed(), [a]);
    assert!(h.may_read(a));
    assert_eq!(h.recv_all(b).len(), sent - 1);
    assert!(h.take_resumed().is_empty(), "resumed once, not per release");
    assert_eq!(h.held(a).bytes, 0);
}

#[test]
fn a_paused_sender_is_resumed_when_its_receiver_disconnects() {
    let mut h = Harness::with_limits(&[("max_incoming_bytes", 1000)]);
    let (a, b) = (h.client(), h.client());
    while h.held(a).bytes <= 1000 {
        sig_to(&mut h, a, b, 200);
    }
    assert!(!h.may_read(a));
    h.disconnect(b);
    assert_eq!(h.take_resumed(), [a]);
    assert!(h.may_read(a));
    assert_eq!(h.held(a).bytes, 0);
}

#[test]
fn a_partial_message_alone_never_pauses_its_connection() {
    let mut h = Harness::with_limits(&[("max_incoming_bytes", 1000)]);
    let a = h.client();
    h.receiving(a, 5000, 0);
    assert_eq!(h.held(a).bytes, 5000);
    assert!(h.may_read(a), "only finishing it releases it");
    h.receiving(a, 0, 0);
    assert_eq!(h.held(a).bytes, 0);
}

#[test]
fn a_uid_over_its_quota_is_refused_unicasts_and_paused_others_are_not() {
    let mut h = Harness::with_limits(&[("max_bytes_per_user", 3000)]);
    let (a1, a2) = (h.client(), h.client());
    let sink = h.client_as(2000);
    let other = h.client_as(3000);
    h.take_warnings();
    while h.user_held(USER_UID).bytes <= 3000 {
        sig_to(&mut h, a1, sink, 500);
    }
    let queued = h.pending(sink);
    // Every connection of the uid is paused, the one that sent nothing too.
    assert!(!h.may_read(a1) && !h.may_read(a2));
    assert!(h.may_read(other) && h.may_read(sink));
    let w = h.take_warnings();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("UID 1000 is over its quota (max_bytes_per_user=3000 ("),
        "{w:#?}"
    );
    // A call already read is refused with LimitsExceeded, logged once per episode.
    let sink_name = h.unique(sink);
    let serial = h.call(a2, &sink_name, "/", "com.example.I", "M", &empty());
    let e = h.reply(a2, serial).expect_error(err::LIMITS_EXCEEDED);
    assert!(e.arg_str(0).contains("UID 1000"), "{}", e.arg_str(0));
    h.call(a2, &sink_name, "/", "com.example.I", "M", &empty());
    // One line for the refusals of this episode (beside the one for the pause).
    let w = h.take_warnings();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains("UID 1000 is over its quota (max_bytes_per_user=3000 (")
            && w[0].starts_with(&format!(
                "WARN Refusing messages from connection \"{}\"",
                h.unique(a2)
            )),
        "{w:#?}"
    );
    assert_eq!(h.pending(sink), queued, "nothing more queued for the sink");
    // Another uid is served.
    let serial = h.call(other, &sink_name, "/", "com.example.I", "M", &empty());
    assert!(h.try_reply(other, serial).is_none());
    // A broadcast is never refused for its sender's quota.
    h.driver(other, "AddMatch", &s("member='B'"))
        .expect_return();
    h.send(a2, signal(None, "/", "com.example.I", "B"), &empty());
    assert_eq!(h.recv_all(other).len(), 1);
    // The sink reads: the uid is back under its quota, both resume.
    h.recv_all(sink);
    let mut resumed = h.take_resumed();
    resumed.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    assert!(h.may_read(a1) && h.may_read(a2));
    let serial = h.call(a2, &sink_name, "/", "com.example.I", "M", &empty());
    assert!(h.try_reply(a2, serial).is_none());
    assert_eq!(h.recv_all(sink).len(), 1);
    // The refused calls left no expected reply behind (their records are withdrawn):
    // when the sink goes, a2 hears NoReply for the one call delivered, not the refused.
    h.disconnect(sink);
    let no_reply: Vec<Option<u32>> = h
        .recv_all(a2)
        .iter()
        .filter(|m| m.error_name.as_deref() == Some(err::NO_REPLY))
        .map(|m| m.reply_serial)
        .collect();
    assert_eq!(no_reply, vec![Some(serial)]);
}

#[test]
fn partial_messages_past_a_uids_quota_disconnect_the_connection_that_grows_them() {
    let mut h = Harness::with_limits(&[("max_bytes_per_user", 10_000)]);
    let (a1, a2, b) = (h.client(), h.client(), h.client_as(2000));
    let a2_name = h.unique(a2);
    h.take_warnings();
    h.receiving(a1, 8000, 0);
    h.receiving(b, 8000, 0);
    assert!(!h.is_closed(a1) && !h.is_closed(b));
    h.receiving(a2, 3000, 0);
    assert!(h.is_closed(a2));
    assert_eq!(h.close_reason(a2), Some("over its uid's quota"));
    one_warning(
        &mut h,
        &a2_name,
        "takes UID 1000 over its quota (max_bytes_per_user=10000 (11000 bytes held))",
    );
    // Its partial went with it: a1 may go on.
    assert_eq!(h.user_held(USER_UID).bytes, 8000);
    h.receiving(a1, 9000, 0);
    assert!(!h.is_closed(a1) && !h.is_closed(b));
}

#[test]
fn max_names_per_user_counts_every_connection_of_the_uid() {
    let mut h = Harness::with_limits(&[("max_names_per_user", 3)]);
    let (a1, a2, other) = (h.client(), h.client(), h.client_as(2000));
    for (c, n) in [
        (a1, "com.example.A"),
        (a2, "com.example.B"),
        (a2, "com.example.C"),
    ] {
        assert_eq!(h.driver(c, "RequestName", &su(n, 0)).arg_u32(0), 1);
    }
    h.take_warnings();
    let e = h
        .driver(a1, "RequestName", &su("com.example.D", 0))
        .expect_error(err::LIMITS_EXCEEDED);
    assert!(
        e.arg_str(0).ends_with("UID 1000 has 3 names (increase limits in configuration file if required; max_names_per_user=3)"),
        "{}",
        e.arg_str(0)
    );
    assert_eq!(h.take_warnings().len(), 1);
    assert_eq!(
        h.driver(other, "RequestName", &su("com.example.D", 0))
            .arg_u32(0),
        1
    );
    // Releasing one frees a place.
    h.driver(a2, "ReleaseName", &s("com.example.C"))
        .expect_return();
    assert_eq!(
        h.driver(a1, "RequestName", &su("com.example.E", 0))
            .arg_u32(0),
        1
    );
}

#[test]
fn max_match_rules_per_user_counts_every_connection_of_the_uid() {
    let mut h = Harness::with_limits(&[("max_match_rules_per_user", 2)]);
    let (a1, a2, other) = (h.client(), h.client(), h.client_as(2000));
    h.driver(a1, "AddMatch", &s("member='A'")).expect_return();
    h.driver(a2, "AddMatch", &s("member='B'")).expect_return();
    h.take_warnings();
    let e = h
        .driver(a1, "AddMatch", &s("member='C'"))
        .expect_error(err::LIMITS_EXCEEDED);
    assert!(
        e.arg_str(0).contains("max_match_rules_per_user=2"),
        "{}",
        e.arg_str(0)
    );
    assert_eq!(h.take_warnings().len(), 1);
    h.driver(other, "AddMatch", &s("member='C'"))
        .expect_return();
    // A connection that goes takes its rules with it.
    h.disconnect(a2);
    h.driver(a1, "AddMatch", &s("member='C'")).expect_return();
}

#[test]
fn get_connection_stats_reports_what_the_bus_holds_of_what_a_connection_sent() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let stats = |h: &mut Harness, c: Client| -> u32 {
        let name = h.unique(c);
        let r = h
            .driver_iface(
                b,
                "org.freedesktop.DBus.Debug.Stats",
                "GetConnectionStats",
                &s(&name),
            )
            .expect_return();
        r.arg_dict(0)
            .into_iter()
            .find(|(k, _)| k == "IncomingBytes")
            .and_then(|(_, v)| match v {
                Value::U32(n) => Some(n),
                _ => None,
            })
            .expect("IncomingBytes")
    };
    assert_eq!(stats(&mut h, a), 0);
    sig_to(&mut h, a, b, 100);
    let held = h.held(a).bytes;
    assert!(held > 100);
    assert_eq!(stats(&mut h, a) as usize, held);
    h.recv_all(b);
    assert_eq!(stats(&mut h, a), 0);
}

#[test]
fn one_subscriber_that_never_reads_cannot_pause_its_sender_it_is_disconnected() {
    // dbus-daemon's defaults: the same limit for a receiver's queue and a sender's holdings.
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 5000), ("max_incoming_bytes", 5000)]);
    let (sender, slow, fast) = (h.client(), h.client(), h.client());
    for c in [slow, fast] {
        h.driver(c, "AddMatch", &s("member='B'")).expect_return();
    }
    h.take_warnings();
    let mut sent = 0;
    while !h.is_closed(slow) {
        assert!(
            h.may_read(sender),
            "paused by a receiver that never reads ({sent} sent)"
        );
        h.send(
            sender,
            signal(None, "/", "com.example.I", "B"),
            &s(&"b".repeat(500)),
        );
        assert_eq!(h.recv_all(fast).len(), 1);
        sent += 1;
        assert!(sent < 100);
    }
    assert_eq!(h.take_warnings().len(), 1);
    assert!(h.may_read(sender));
    assert_eq!(
        h.held(sender).bytes,
        0,
        "released with the slow receiver's queue"
    );
}
