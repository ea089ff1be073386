//! Resource limits: match rules, names and pending replies per connection, completed
//! connections in total and per user, and the outgoing queue of a receiver that does not
//! read (the harness never reads for a client unless the test asks).

use super::harness::*;

#[test]
fn max_match_rules_per_connection() {
    let mut h = Harness::with_limits(&[("max_match_rules_per_connection", 3)]);
    let c = h.client();
    for r in ["member='A'", "member='B'", "member='B'"] {
        // Duplicates count as separate entries.
        h.driver(c, "AddMatch", &s(r)).expect_return();
    }
    let e = h
        .driver(c, "AddMatch", &s("member='D'"))
        .expect_error(err::LIMITS_EXCEEDED);
    assert_eq!(
        e.arg_str(0),
        format!(
            "Connection \"{}\" is not allowed to add more match rules (increase limits in configuration file if required; max_match_rules_per_connection=3)",
            h.unique(c)
        )
    );
    // Removing one frees a slot.
    h.driver(c, "RemoveMatch", &s("member='B'")).expect_return();
    h.driver(c, "AddMatch", &s("member='D'")).expect_return();
    h.driver(c, "AddMatch", &s("member='E'"))
        .expect_error(err::LIMITS_EXCEEDED);
    // The limit is per connection.
    let d = h.client();
    for r in ["member='A'", "member='B'", "member='C'"] {
        h.driver(d, "AddMatch", &s(r)).expect_return();
    }
    // The refused rule was not added: E is not delivered, D is.
    let em = h.client();
    h.send(em, signal(None, "/", "com.example.I", "E"), &empty());
    h.send(em, signal(None, "/", "com.example.I", "D"), &empty());
    let got: Vec<String> = h.recv_all(c).iter().map(Msg::kind).collect();
    assert_eq!(got, ["signal:D"]);
}

#[test]
fn max_names_per_connection() {
    // 4 = the unique name plus 3 well-known names.
    let mut h = Harness::with_limits(&[("max_names_per_connection", 4)]);
    let other = h.client();
    assert_eq!(
        h.driver(other, "RequestName", &su("com.example.Taken", 0))
            .arg_u32(0),
        1
    );
    let c = h.client();
    assert_eq!(
        h.driver(c, "RequestName", &su("com.example.N1", 0))
            .arg_u32(0),
        1
    );
    assert_eq!(
        h.driver(c, "RequestName", &su("com.example.N2", 0))
            .arg_u32(0),
        1
    );
    // A queued name counts as well.
    assert_eq!(
        h.driver(c, "RequestName", &su("com.example.Taken", 0))
            .arg_u32(0),
        2
    );
    let e = h
        .driver(c, "RequestName", &su("com.example.N4", 0))
        .expect_error(err::LIMITS_EXCEEDED);
    assert!(
        e.arg_str(0).contains("max_names_per_connection=4"),
        "{e:#?}"
    );
    // The limit is checked before ownership: re-requesting an owned name is refused too.
    h.driver(c, "RequestName", &su("com.example.N1", 0))
        .expect_error(err::LIMITS_EXCEEDED);
    // Releasing frees a slot.
    assert_eq!(
        h.driver(c, "ReleaseName", &s("com.example.Taken"))
            .arg_u32(0),
        1
    );
    assert_eq!(
        h.driver(c, "RequestName", &su("com.example.N4", 0))
            .arg_u32(0),
        1
    );
    assert!(!h
        .driver(c, "NameHasOwner", &s("com.example.N5"))
        .arg_bool(0));
}

#[test]
fn max_replies_per_connection() {
    let mut h = Harness::with_limits(&[("max_replies_per_connection", 3)]);
    let (callee, caller) = (h.client(), h.client());
    let dest = h.unique(callee);
    let serials: Vec<u32> = (0..4)
        .map(|_| h.call(caller, &dest, "/", "com.example.I", "Wait", &empty()))
        .collect();
    // The fourth outstanding call is refused by the bus and not delivered.
    let e = h
        .recv(caller)
        .expect("refusal")
        .expect_error(err::LIMITS_EXCEEDED);
    assert_eq!(e.reply_serial, Some(serials[3]));
    assert_eq!(
        e.arg_str(0),
        "The maximum number of pending replies per connection has been reached"
    );
    let calls = h.recv_all(callee);
    let delivered: Vec<u32> = calls.iter().map(|m| m.serial).collect();
    assert_eq!(delivered, serials[..3].to_vec());
    // Answering one frees a slot.
    h.send(callee, reply_to(&calls[0]), &empty());
    assert_eq!(
        h.recv(caller).unwrap().expect_return().reply_serial,
        Some(serials[0])
    );
    let again = h.call(caller, &dest, "/", "com.example.I", "Wait", &empty());
    assert_eq!(h.recv(callee).unwrap().serial, again);
    // Calls with NO_REPLY_EXPECTED are not counted.
    let nr = h.send(
        caller,
        method_call(Some(&dest), "/", Some("com.example.I"), "Fire").flags(flag::NO_REPLY_EXPECTED),
        &empty(),
    );
    assert_eq!(h.recv(callee).unwrap().serial, nr);
    assert!(h.recv(caller).is_none());
    // And calls to the driver are not counted either.
    h.driver(caller, "GetId", &empty()).expect_return();
    // But the table is still full for real calls.
    h.call(caller, &dest, "/", "com.example.I", "Wait", &empty());
    h.recv(caller).unwrap().expect_error(err::LIMITS_EXCEEDED);
}

#[test]
fn same_serial_twice_while_outstanding_is_refused() {
    let mut h = Harness::new();
    let (callee, caller) = (h.client(), h.client());
    let dest = h.unique(callee);
    let call = || method_call(Some(&dest), "/", Some("com.example.I"), "M");
    h.send_with_serial(caller, 500, call(), &empty());
    h.send_with_serial(caller, 500, call(), &empty());
    let e = h.recv(caller).unwrap().expect_error(err::ACCESS_DENIED);
    assert_eq!(e.reply_serial, Some(500));
    assert_eq!(h.recv_all(callee).len(), 1);
}

#[test]
fn max_completed_connections() {
    let mut h = Harness::with_limits(&[("max_completed_connections", 3)]);
    let a = h.client();
    let _b = h.client();
    let _c = h.client();
    let d = h.connect();
    let e = h
        .driver(d, "Hello", &empty())
        .expect_error(err::LIMITS_EXCEEDED);
    assert_eq!(
        e.arg_str(0),
        "The maximum number of active connections has been reached"
    );
    assert_eq!(e.destination.as_deref(), Some(":not.active.yet"));
    // The refused connection stays open and can retry once a slot is free.
    assert!(!h.is_closed(d));
    h.disconnect(a);
    let name = h.hello(d);
    assert!(name.starts_with(":1."));
    // Full again.
    let f = h.connect();
    h.driver(f, "Hello", &empty())
        .expect_error(err::LIMITS_EXCEEDED);
}

#[test]
fn max_connections_per_user() {
    let mut h = Harness::with_limits(&[("max_connections_per_user", 2)]);
    let a = h.client();
    let _b = h.client();
    let c = h.connect();
    let e = h
        .driver(c, "Hello", &empty())
        .expect_error(err::LIMITS_EXCEEDED);
    // dbus-daemon's words.
    assert_eq!(
        e.arg_str(0),
        format!("The maximum number of active connections for UID {USER_UID} has been reached")
    );
    // Another uid has its own allowance.
    let o1 = h.client_as(OTHER_UID);
    let _o2 = h.client_as(OTHER_UID);
    let o3 = h.connect_as(OTHER_UID);
    h.driver(o3, "Hello", &empty())
        .expect_error(err::LIMITS_EXCEEDED);
    // Leaving frees a slot for that uid only.
    h.disconnect(o1);
    h.driver(c, "Hello", &empty())
        .expect_error(err::LIMITS_EXCEEDED);
    h.hello(o3);
    h.disconnect(a);
    h.hello(c);
}

#[test]
fn full_outgoing_queue_refuses_calls_with_limits_exceeded() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (sink, caller) = (h.client(), h.client());
    let to = h.unique(sink);
    let big = "x".repeat(600);
    // Two messages fit: the first is under the limit, the second may go past it.
    let s1 = h.call(caller, &to, "/", "com.example.I", "Big", &s(&big));
    let s2 = h.call(caller, &to, "/", "com.example.I", "Big", &s(&big));
    assert!(h.recv(caller).is_none());
    let s3 = h.call(caller, &to, "/", "com.example.I", "Big", &s(&big));
    let e = h
        .recv(caller)
        .expect("refusal")
        .expect_error(err::LIMITS_EXCEEDED);
    assert_eq!(e.reply_serial, Some(s3));
    // dbus-daemon: "Rejected: destination has a full message queue, ... destination=\":1.0\" ...".
    assert!(e.arg_str(0).contains(&to), "{e:#?}");
    // NO_REPLY_EXPECTED calls are dropped silently (the sender asked to hear nothing);
    // broadcasts disconnect the receiver instead (`broadcast_to_a_full_subscriber_...`).
    h.send(
        caller,
        method_call(Some(&to), "/", Some("com.example.I"), "Quiet").flags(flag::NO_REPLY_EXPECTED),
        &empty(),
    );
    assert!(h.recv(caller).is_none());
    assert_eq!(h.pending(sink), 2);
    assert!(
        !h.is_closed(sink),
        "a full unicast receiver stays connected"
    );
    // Once the receiver reads, calls go through again.
    let got: Vec<u32> = h.recv_all(sink).iter().map(|m| m.serial).collect();
    assert_eq!(got, vec![s1, s2]);
    let s4 = h.call(caller, &to, "/", "com.example.I", "Small", &empty());
    assert_eq!(h.recv(sink).unwrap().serial, s4);
    assert!(h.recv(caller).is_none());
    // The refused call left no expected reply behind: when the sink goes, NoReply comes
    // for the three calls it received, not for s3.
    h.disconnect(sink);
    let mut no_reply: Vec<u32> = h
        .recv_all(caller)
        .iter()
        .filter(|m| m.error_name.as_deref() == Some(err::NO_REPLY))
        .filter_map(|m| m.reply_serial)
        .collect();
    no_reply.sort_unstable();
    assert_eq!(no_reply, vec![s1, s2, s4]);
}

#[test]
fn unicast_signal_to_a_full_queue_is_dropped_and_the_sender_told() {
    // Each queued message is charged what it holds (slot, buffers), so the limit leaves
    // room for Hello's reply and NameAcquired, but not for two big signals.
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 700)]);
    let (a, b) = (h.client(), h.client());
    let an = h.unique(a);
    let big = "y".repeat(800);
    h.send(b, signal(Some(&an), "/", "com.example.I", "Fill"), &s(&big));
    h.send(b, signal(Some(&an), "/", "com.example.I", "Over"), &s(&big));
    let got: Vec<String> = h.recv_all(a).iter().map(Msg::kind).collect();
    assert_eq!(got, ["signal:Fill"], "the second unicast signal is dropped");
    let e = h
        .recv(b)
        .expect("sender told")
        .expect_error(err::LIMITS_EXCEEDED);
    assert!(e.arg_str(0).contains(&an));
    h.driver(a, "GetId", &empty()).expect_return();
}

#[test]
fn outgoing_limit_boundary_one_message_may_go_past() {
    // Measure the queued size of the relayed call on an identical bus first.
    let setup = |h: &mut Harness| {
        let (sink, caller) = (h.client(), h.client());
        (sink, caller, h.unique(sink))
    };
    let mut probe = Harness::new();
    let (sink, caller, to) = setup(&mut probe);
    probe.call(caller, &to, "/", "com.example.I", "M", &s("0123456789"));
    // What the queued call is charged (`OutgoingBytes`): its memory, more than its length.
    let stats = probe
        .driver_iface(
            caller,
            "org.freedesktop.DBus.Debug.Stats",
            "GetConnectionStats",
            &s(&to),
        )
        .arg_dict(0);
    let charged = stats
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("OutgoingBytes", Value::U32(n)) => Some(*n),
            _ => None,
        })
        .expect("OutgoingBytes");
    let size = probe.recv(sink).unwrap().len;
    assert!(charged as usize > size, "charged {charged}, length {size}");
    // Limit = exactly one message's charge: the queue holding exactly the limit still
    // takes one more (it is not over the limit yet), then it is full.
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", i64::from(charged))]);
    let (sink, caller, to) = setup(&mut h);
    for _ in 0..2 {
        h.call(caller, &to, "/", "com.example.I", "M", &s("0123456789"));
        assert!(h.recv(caller).is_none());
    }
    h.call(caller, &to, "/", "com.example.I", "M", &s("0123456789"));
    h.recv(caller).unwrap().expect_error(err::LIMITS_EXCEEDED);
    let sizes: Vec<usize> = h.recv_all(sink).iter().map(|m| m.len).collect();
    assert_eq!(sizes, vec![size, size]);
}

#[test]
fn broadcast_to_a_full_subscriber_disconnects_it() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (sink, reader, emitter, idle, watcher) =
        (h.client(), h.client(), h.client(), h.client(), h.client());
    let sink_name = h.unique(sink);
    for c in [sink, reader] {
        h.driver(c, "AddMatch", &s("member='Bcast'"))
            .expect_return();
    }
    // Subscribed to something else: never due a copy, never touched.
    h.driver(idle, "AddMatch", &s("member='Other'"))
        .expect_return();
    h.driver(
        watcher,
        "AddMatch",
        &s("sender='org.freedesktop.DBus',member='NameOwnerChanged'"),
    )
    .expect_return();
    h.take_warnings();
    let big = "x".repeat(600);
    // The first copy leaves the sink under the limit, the second may take it past (as for
    // unicast): it is still connected and holds both.
    for _ in 0..2 {
        h.send(
            emitter,
            signal(None, "/", "com.example.I", "Bcast"),
            &s(&big),
        );
        assert_eq!(h.recv_all(reader).len(), 1);
    }
    assert!(!h.is_closed(sink));
    assert!(h.take_warnings().is_empty());
    // The next broadcast finds its queue over the limit: the sink is disconnected, with
    // what was already queued for it still flushed.
    h.send(
        emitter,
        signal(None, "/", "com.example.I", "Bcast"),
        &empty(),
    );
    assert!(h.is_closed(sink));
    assert_eq!(h.close_reason(sink), Some("outgoing queue over its limit"));
    let flushed: Vec<usize> = h
        .recv_all(sink)
        .iter()
        .map(|m| m.arg_str(0).len())
        .collect();
    assert_eq!(flushed, [600, 600]);
    // One warning naming it, its credentials and the limit.
    let warnings = h.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let pid = 10_000 + USER_UID;
    let prefix = format!(
        "WARN Connection \"{sink_name}\" (uid={USER_UID} pid={pid} comm=\"client --pid {pid}\") is being disconnected: it does not read the signals due to it and its outgoing queue is over max_outgoing_bytes=1000 ("
    );
    assert!(warnings[0].starts_with(&prefix), "{warnings:#?}");
    assert!(warnings[0].ends_with(" bytes queued)"), "{warnings:#?}");
    // Everyone else is unaffected: the other subscriber got this signal too, the sender
    // was told nothing and is served, the idle client is open.
    let got: Vec<String> = h.recv_all(reader).iter().map(Msg::kind).collect();
    assert_eq!(got, ["signal:Bcast"]);
    assert!(h.recv(emitter).is_none());
    h.driver(emitter, "GetId", &empty()).expect_return();
    assert!(!h.is_closed(emitter) && !h.is_closed(reader) && !h.is_closed(idle));
    // Its departure is announced like any other.
    let noc = h.recv(watcher).expect("NameOwnerChanged for the sink");
    assert!(noc.is_driver_signal("NameOwnerChanged"));
    assert_eq!(
        [noc.arg_str(0), noc.arg_str(1), noc.arg_str(2)],
        [sink_name.clone(), sink_name.clone(), String::new()]
    );
    h.send(
        emitter,
        signal(None, "/", "com.example.I", "Bcast"),
        &empty(),
    );
    assert_eq!(h.recv_all(reader).len(), 1);
    assert!(h.take_warnings().is_empty());
}

#[test]
fn a_full_sender_is_not_disconnected_by_its_own_broadcast() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (emitter, reader) = (h.client(), h.client());
    for c in [emitter, reader] {
        h.driver(c, "AddMatch", &s("member='Bcast'"))
            .expect_return();
    }
    let big = "x".repeat(600);
    // The emitter never reads its own copies: its queue goes over the limit.
    for _ in 0..4 {
        h.send(
            emitter,
            signal(None, "/", "com.example.I", "Bcast"),
            &s(&big),
        );
        assert_eq!(
            h.recv_all(reader).len(),
            1,
            "the other subscriber gets each one"
        );
    }
    assert!(!h.is_closed(emitter));
    // Its own copies beyond the limit were dropped, said once; nothing else.
    assert_eq!(h.pending(emitter), 2);
    let w = h.take_warnings();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains("Dropping its own broadcast"), "{w:#?}");
}

#[test]
fn bus_signal_to_a_full_subscriber_disconnects_it() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (sink, filler, owner, reader) = (h.client(), h.client(), h.client(), h.client());
    let sink_name = h.unique(sink);
    for c in [sink, reader] {
        h.driver(
            c,
            "AddMatch",
            &s("sender='org.freedesktop.DBus',member='NameOwnerChanged'"),
        )
        .expect_return();
    }
    h.take_warnings();
    // Fill the sink's queue with unicasts: the second goes past the limit.
    let big = "y".repeat(600);
    for _ in 0..2 {
        h.send(
            filler,
            signal(Some(&sink_name), "/", "com.example.I", "Fill"),
            &s(&big),
        );
    }
    assert!(h.recv(filler).is_none() && !h.is_closed(sink));
    // A name changes owner: the sink cannot take the NameOwnerChanged it subscribed to.
    assert_eq!(
        h.driver(owner, "RequestName", &su("com.example.Owned", 0))
            .arg_u32(0),
        1
    );
    assert!(h.is_closed(sink));
    let warnings = h.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains(&format!("\"{sink_name}\"")),
        "{warnings:#?}"
    );
    assert!(
        warnings[0].contains("max_outgoing_bytes=1000"),
        "{warnings:#?}"
    );
    // The owner has its name, the other subscriber heard of it, the filler is untouched.
    let got: Vec<Vec<String>> = h
        .recv_all(reader)
        .iter()
        .filter(|m| m.is_driver_signal("NameOwnerChanged"))
        .map(|m| vec![m.arg_str(0), m.arg_str(1), m.arg_str(2)])
        .collect();
    let owned = vec![
        "com.example.Owned".to_string(),
        String::new(),
        h.unique(owner),
    ];
    assert_eq!(got.first(), Some(&owned), "{got:#?}");
    assert!(!h.is_closed(owner) && !h.is_closed(filler) && !h.is_closed(reader));
}

#[test]
fn broadcast_to_a_subscriber_over_its_fd_limit_disconnects_it() {
    let mut h = Harness::with_limits(&[("max_outgoing_unix_fds", 1)]);
    let (sink, reader, emitter) = (h.client(), h.client(), h.client());
    let sink_name = h.unique(sink);
    for c in [sink, reader] {
        h.driver(c, "AddMatch", &s("member='Fds'")).expect_return();
    }
    h.take_warnings();
    let send = |h: &mut Harness| {
        let (a, b) = nix::unistd::pipe().unwrap();
        let mut body = BodyWriter::new();
        body.fd(0).fd(1);
        h.send_fds(
            emitter,
            signal(None, "/", "com.example.I", "Fds"),
            &body,
            vec![a, b],
        );
    };
    // Two fds queued: over the limit of one, but taken (the queue was not over it yet).
    send(&mut h);
    assert!(!h.is_closed(sink));
    assert_eq!(h.recv_all(reader).len(), 1);
    // The next copy with fds finds it over the limit.
    send(&mut h);
    assert!(h.is_closed(sink));
    let warnings = h.take_warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains(&format!("\"{sink_name}\""))
            && warnings[0].ends_with("max_outgoing_unix_fds=1 (2 fds queued)"),
        "{warnings:#?}"
    );
    assert_eq!(h.recv_all(reader).len(), 1);
    assert!(!h.is_closed(emitter) && h.recv(emitter).is_none());
}

#[test]
fn a_reply_to_a_full_queue_leaves_its_call_waiting() {
    // A reply's record is taken out of the table while it is routed: refused for the
    // caller's full queue, the record is put back (the harness checks the table against
    // each side's counts after every event), and the caller still hears of its call.
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (caller, callee) = (h.client(), h.client());
    let (to, back) = (h.unique(callee), h.unique(caller));
    let serial = h.call(caller, &to, "/", "com.example.I", "M", &empty());
    let call = h.recv(callee).unwrap();
    let big = "x".repeat(600);
    for _ in 0..2 {
        h.send(
            callee,
            signal(Some(&back), "/", "com.example.I", "Big"),
            &s(&big),
        );
    }
    h.send(callee, reply_to(&call), &empty());
    assert_eq!(
        h.recv_all(caller).len(),
        2,
        "the reply went to a full queue"
    );
    h.disconnect(callee);
    let e = h.recv(caller).expect("NoReply").expect_error(err::NO_REPLY);
    assert_eq!(e.reply_serial, Some(serial));
}

#[test]
fn drops_for_a_full_queue_are_logged_once_per_episode() {
    let mut h = Harness::with_limits(&[("max_outgoing_bytes", 1000)]);
    let (sink, caller) = (h.client(), h.client());
    let to = h.unique(sink);
    h.take_warnings();
    let big = "x".repeat(600);
    // The caller reads each answer, so only the sink's queue fills. Returns the refusals.
    let flood = |h: &mut Harness| {
        let mut refused = 0;
        for _ in 0..5 {
            h.call(caller, &to, "/", "com.example.I", "Big", &s(&big));
            refused += h.recv_all(caller).len();
        }
        refused
    };
    // Two fit, three are refused: one line, naming the receiver and the limit.
    assert_eq!(flood(&mut h), 3);
    let w = h.take_warnings();
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(
        w[0].contains(&format!("\"{to}\"")) && w[0].contains("max_outgoing_bytes=1000"),
        "{w:#?}"
    );
    // Still full: no new line.
    assert_eq!(flood(&mut h), 5);
    assert!(h.take_warnings().is_empty());
    // It reads its queue; the next episode is logged again.
    assert_eq!(h.recv_all(sink).len(), 2);
    assert_eq!(flood(&mut h), 3);
    assert_eq!(h.take_warnings().len(), 1);
}
