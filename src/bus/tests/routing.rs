//! Routing: unicast calls and replies, SENDER stamping, broadcasts to matching subscribers,
//! eavesdropping, expected-reply tracking (unexpected and duplicate replies, NoReply on
//! disconnect and on timeout), unowned destinations, messages before Hello.

use super::harness::*;
use std::rc::Rc;
use std::time::Duration;

/// A system.conf-like policy (default deny, explicit allows): any uid may connect, send and
/// receive, but allow rules cover only requested replies (no `eavesdrop="true"`), so
/// unrequested replies are refused.
const STRICT: &str = r#"<busconfig>
  <type>system</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#;

const NO_REPLY_DISCONNECT: &str =
    "Message recipient disconnected from message bus without replying";
const NO_REPLY_TIMEOUT: &str = "Message did not receive a reply (timeout by message bus)";

fn add_match(h: &mut Harness, c: Client, rule: &str) {
    h.driver(c, "AddMatch", &s(rule)).expect_return();
}

#[test]
fn unicast_call_and_reply_by_unique_name() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let (an, bn) = (h.unique(a), h.unique(b));
    let mut body = BodyWriter::new();
    body.str("payload").u32(7);
    let serial = h.call(a, &bn, "/obj", "com.example.I", "Method", &body);
    let call = h.recv(b).expect("call delivered");
    assert_eq!(call.msg_type, mtype::METHOD_CALL);
    assert_eq!(call.serial, serial, "the serial is not rewritten");
    assert_eq!(call.sender.as_deref(), Some(an.as_str()));
    assert_eq!(call.destination.as_deref(), Some(bn.as_str()));
    assert_eq!(call.path.as_deref(), Some("/obj"));
    assert_eq!(call.interface.as_deref(), Some("com.example.I"));
    assert_eq!(call.member.as_deref(), Some("Method"));
    assert_eq!(call.signature, "su");
    assert_eq!(
        call.args(),
        vec![Value::Str("payload".into()), Value::U32(7)]
    );
    assert!(h.recv(b).is_none());
    assert!(h.recv(a).is_none(), "nothing goes back before the reply");

    let rs = h.send(b, reply_to(&call), &s("answer"));
    let r = h.recv(a).expect("reply delivered").expect_return();
    assert_eq!(r.reply_serial, Some(serial));
    assert_eq!(r.serial, rs);
    assert_eq!(r.sender.as_deref(), Some(bn.as_str()));
    assert_eq!(r.destination.as_deref(), Some(an.as_str()));
    assert_eq!(r.arg_str(0), "answer");
    assert!(h.recv(a).is_none() && h.recv(b).is_none());
}

#[test]
fn call_by_well_known_name_keeps_destination_and_error_replies_relay() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    assert_eq!(
        h.driver(b, "RequestName", &su("com.example.Callee", 0))
            .arg_u32(0),
        1
    );
    h.recv_all(b);
    let serial = h.call(
        a,
        "com.example.Callee",
        "/",
        "com.example.I",
        "Fail",
        &empty(),
    );
    let call = h.recv(b).unwrap();
    assert_eq!(call.destination.as_deref(), Some("com.example.Callee"));
    h.send(b, error_to(&call, "com.example.Error.Deliberate"), &s("no"));
    let e = h
        .recv(a)
        .unwrap()
        .expect_error("com.example.Error.Deliberate");
    assert_eq!(e.reply_serial, Some(serial));
    assert_eq!(e.sender, Some(h.unique(b)));
    assert_eq!(e.arg_str(0), "no");
}

#[test]
fn forged_sender_is_replaced() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let bn = h.unique(b);
    for forged in [DBUS, ":1.999", "com.example.Forged"] {
        let serial = h.send(
            a,
            method_call(Some(&bn), "/", Some("com.example.I"), "M").sender(forged),
            &empty(),
        );
        let m = h.recv(b).expect("delivered");
        assert_eq!(m.serial, serial);
        assert_eq!(m.sender, Some(h.unique(a)), "forged {forged} kept");
        assert_eq!(
            m.field_codes.iter().filter(|&&c| c == 7).count(),
            1,
            "exactly one SENDER field"
        );
    }
    // Broadcasts too.
    add_match(&mut h, b, "member='Sig'");
    h.send(
        a,
        signal(None, "/", "com.example.I", "Sig").sender(DBUS),
        &empty(),
    );
    let m = h.recv(b).unwrap();
    assert_eq!(m.member.as_deref(), Some("Sig"));
    assert_eq!(m.sender, Some(h.unique(a)));
}

#[test]
fn broadcast_reaches_matching_subscribers_only_once() {
    let mut h = Harness::new();
    let em = h.client();
    let foo = h.client();
    let bar = h.client();
    let both = h.client();
    let none = h.client();
    add_match(&mut h, foo, "type='signal',member='Foo'");
    add_match(&mut h, bar, "type='signal',member='Bar'");
    add_match(&mut h, both, "member='Foo'");
    add_match(&mut h, both, "interface='com.example.A'");
    let serial = h.send(em, signal(None, "/p", "com.example.A", "Foo"), &s("x"));
    let got = h.recv(foo).expect("Foo subscriber");
    assert_eq!(got.serial, serial);
    assert_eq!(got.sender, Some(h.unique(em)));
    assert_eq!(got.destination, None);
    assert_eq!(got.arg_str(0), "x");
    let got: Vec<u32> = h.recv_all(both).iter().map(|m| m.serial).collect();
    assert_eq!(got, vec![serial], "two matching rules deliver once");
    assert!(h.recv(foo).is_none());
    assert!(h.recv(bar).is_none());
    assert!(h.recv(none).is_none());
    assert!(h.recv(em).is_none(), "the sender has no rule");
}

/// One subscriber per rule; each emission lists which rules must see it.
fn check_rules(rules: &[&str], emits: &[(MessageBuilder, BodyWriter, &[usize])]) {
    let mut h = Harness::new();
    let em = h.client();
    let other = h.client();
    assert_eq!(
        h.driver(em, "RequestName", &su("com.example.Emitter", 0))
            .arg_u32(0),
        1
    );
    let subs: Vec<Client> = rules
        .iter()
        .map(|r| {
            let c = h.client();
            add_match(&mut h, c, r);
            c
        })
        .collect();
    for (i, (b, body, expect)) in emits.iter().enumerate() {
        // Odd emissions come from the connection without the well-known name.
        let from = if i % 2 == 1 && rules[0].starts_with("sender=") {
            other
        } else {
            em
        };
        let serial = h.send(from, b.clone(), body);
        for (k, &sub) in subs.iter().enumerate() {
            let got: Vec<u32> = h
                .recv_all(sub)
                .iter()
                .filter(|m| m.msg_type == mtype::SIGNAL && m.sender.as_deref() != Some(DBUS))
                .map(|m| m.serial)
                .collect();
            let want = if expect.contains(&k) {
                vec![serial]
            } else {
                vec![]
            };
            assert_eq!(got, want, "emission {i}, rule {:?}", rules[k]);
        }
    }
}

#[test]
fn match_by_sender() {
    let sig = || signal(None, "/p", "com.example.A", "S");
    check_rules(
        &["sender='com.example.Emitter'"],
        &[
            (sig(), empty(), &[0]),
            (sig(), empty(), &[]),
            (sig(), empty(), &[0]),
        ],
    );
}

#[test]
fn match_by_interface_member_and_path() {
    check_rules(
        &[
            "interface='com.example.A'",
            "member='Foo'",
            "path='/a/b'",
            "path_namespace='/a'",
        ],
        &[
            (
                signal(None, "/a/b", "com.example.A", "Foo"),
                empty(),
                &[0, 1, 2, 3],
            ),
            (signal(None, "/a", "com.example.B", "Foo"), empty(), &[1, 3]),
            (signal(None, "/x", "com.example.A", "Bar"), empty(), &[0]),
            (signal(None, "/ab", "com.example.B", "Bar"), empty(), &[]),
        ],
    );
}

#[test]
fn match_by_arg0_and_arg0namespace() {
    let sig = || signal(None, "/p", "com.example.A", "S");
    check_rules(
        &["arg0='x'", "arg0namespace='com.example'", "arg1='y'"],
        &[
            (sig(), s("x"), &[0]),
            (sig(), s("com.example.Thing"), &[1]),
            (sig(), s("com.examplex"), &[]),
            (
                sig(),
                {
                    let mut b = BodyWriter::new();
                    b.str("x").str("y");
                    b
                },
                &[0, 2],
            ),
            (
                sig(),
                {
                    let mut b = BodyWriter::new();
                    b.u32(1);
                    b
                },
                &[],
            ),
        ],
    );
}

#[test]
fn sender_receives_its_own_broadcast_when_matching() {
    let mut h = Harness::new();
    let c = h.client();
    add_match(&mut h, c, "member='Self'");
    let serial = h.send(c, signal(None, "/p", "com.example.A", "Self"), &empty());
    let m = h.recv(c).expect("own broadcast");
    assert_eq!(m.serial, serial);
    assert_eq!(m.sender, Some(h.unique(c)));
}

#[test]
fn unicast_signals_are_not_seen_without_eavesdrop_which_is_refused() {
    let mut h = Harness::new();
    let em = h.client();
    let target = h.client();
    let sub = h.client();
    add_match(&mut h, sub, "type='signal',member='Uni'");
    let t = h.unique(target);
    h.send(em, signal(Some(&t), "/p", "com.example.A", "Uni"), &empty());
    assert!(
        h.recv(sub).is_none(),
        "unicast signal leaked to a subscriber"
    );
    let got = h.recv(target).expect("addressed recipient gets it");
    assert_eq!(got.destination.as_deref(), Some(t.as_str()));
    // Asking to eavesdrop is refused to an unprivileged connection.
    let e = h
        .driver(sub, "AddMatch", &s("eavesdrop='true',member='Uni'"))
        .expect_error(err::ACCESS_DENIED);
    assert_eq!(e.arg_str(0), "Connection is not allowed to eavesdrop");
    h.send(em, signal(Some(&t), "/p", "com.example.A", "Uni"), &empty());
    assert!(h.recv(sub).is_none());
    assert_eq!(h.recv_all(target).len(), 1);
    // A privileged connection may, and then sees copies of unicasts (but not of messages
    // to itself twice).
    let spy = h.client_as(DAEMON_UID);
    add_match(&mut h, spy, "eavesdrop='true',member='Uni'");
    let serial = h.send(em, signal(Some(&t), "/p", "com.example.A", "Uni"), &empty());
    let copy = h.recv(spy).expect("eavesdropped copy");
    assert_eq!(copy.serial, serial);
    assert_eq!(copy.destination.as_deref(), Some(t.as_str()));
    assert_eq!(h.recv(target).unwrap().serial, serial);
}

/// Method calls to the driver reach eavesdroppers once the driver has run them, as
/// dbus-daemon matches them: the AddMatch that adds the rule is copied itself (after its
/// reply), other connections' calls follow, the driver's replies are not copied, and a rule
/// without `eavesdrop` sees none of them.
#[test]
fn eavesdroppers_see_calls_to_the_driver_after_they_ran() {
    let mut h = Harness::new();
    let other = h.client();
    let spy = h.client_as(DAEMON_UID);
    add_match(&mut h, spy, "eavesdrop='true',type='method_call'");
    let own = h.recv(spy).expect("the AddMatch that added the rule");
    assert_eq!(own.kind(), "call:AddMatch");
    assert_eq!(own.sender, Some(h.unique(spy)));
    assert_eq!(own.destination.as_deref(), Some("org.freedesktop.DBus"));
    let plain = h.client();
    add_match(&mut h, plain, "type='method_call'");
    assert_eq!(h.recv(spy).map(|m| m.kind()).as_deref(), Some("call:Hello"));
    assert_eq!(
        h.recv(spy).map(|m| m.kind()).as_deref(),
        Some("call:AddMatch")
    );
    let r = h.driver(other, "GetId", &empty()).expect_return();
    let copy = h.recv(spy).expect("the other connection's GetId");
    assert_eq!(copy.kind(), "call:GetId");
    assert_eq!(copy.sender, Some(h.unique(other)));
    assert_eq!(Some(copy.serial), r.reply_serial);
    assert!(h.recv(spy).is_none(), "a driver reply was copied");
    assert!(
        h.recv(plain).is_none(),
        "a rule without eavesdrop saw a driver call"
    );
}

#[test]
fn unexpected_and_duplicate_replies_are_refused_by_a_strict_policy() {
    let mut h = Harness::with_config_xml(STRICT);
    let (a, b) = (h.client(), h.client());
    let an = h.unique(a);
    // A reply to a call that never happened.
    let rs = h.send(
        b,
        MessageBuilder::method_return(77).flags(0).destination(&an),
        &empty(),
    );
    assert!(h.recv(a).is_none(), "unexpected reply delivered");
    let e = h
        .recv(b)
        .expect("replier told")
        .expect_error(err::ACCESS_DENIED);
    assert_eq!(e.reply_serial, Some(rs));
    // The same with NO_REPLY_EXPECTED: dropped silently.
    h.send(
        b,
        MessageBuilder::method_return(78).destination(&an),
        &empty(),
    );
    assert!(h.recv(a).is_none() && h.recv(b).is_none());
    // A real call: the first reply passes, the second is refused.
    let bn = h.unique(b);
    let serial = h.call(a, &bn, "/", "com.example.I", "M", &empty());
    let call = h.recv(b).unwrap();
    h.send(b, reply_to(&call), &s("first"));
    let r = h.recv(a).unwrap().expect_return();
    assert_eq!(
        (r.reply_serial, r.arg_str(0)),
        (Some(serial), "first".to_string())
    );
    h.send(b, reply_to(&call), &s("second"));
    assert!(h.recv(a).is_none(), "duplicate reply delivered");
    h.recv(b).unwrap().expect_error(err::ACCESS_DENIED);
    // An error reply after the return is refused the same way.
    h.send(b, error_to(&call, "com.example.E"), &empty());
    assert!(h.recv(a).is_none());
}

#[test]
fn unrequested_replies_pass_the_session_policy() {
    // session.conf's `eavesdrop="true"` allow rule also covers unrequested replies in
    // dbus-daemon; the bus must not invent an error either.
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let an = h.unique(a);
    h.send(
        b,
        MessageBuilder::method_return(77).flags(0).destination(&an),
        &empty(),
    );
    let r = h.recv(a).expect("delivered").expect_return();
    assert_eq!(r.reply_serial, Some(77));
    assert!(h.recv(b).is_none());
}

#[test]
fn no_reply_when_callee_disconnects() {
    let mut h = Harness::new();
    let (caller, callee, bystander) = (h.client(), h.client(), h.client());
    let to = h.unique(callee);
    let s1 = h.call(caller, &to, "/", "com.example.I", "Slow", &empty());
    let s2 = h.call(caller, &to, "/", "com.example.I", "Slower", &empty());
    // A call without a reply expected is not owed.
    h.send(
        caller,
        method_call(Some(&to), "/", Some("com.example.I"), "Fire").flags(flag::NO_REPLY_EXPECTED),
        &empty(),
    );
    assert_eq!(h.recv_all(callee).len(), 3);
    h.disconnect(callee);
    let got = h.recv_all(caller);
    let mut serials: Vec<u32> = got
        .iter()
        .map(|m| {
            assert_eq!(m.error_name.as_deref(), Some(err::NO_REPLY), "{m:#?}");
            assert_eq!(m.arg_str(0), NO_REPLY_DISCONNECT);
            assert_eq!(m.sender.as_deref(), Some(DBUS));
            assert_eq!(m.destination, Some(h.unique(caller)));
            m.reply_serial.unwrap()
        })
        .collect();
    serials.sort();
    assert_eq!(serials, vec![s1, s2]);
    assert!(h.recv(bystander).is_none());
}

#[test]
fn caller_leaving_is_not_answered_and_frees_its_records() {
    let mut h = Harness::with_limits(&[("max_replies_per_connection", 1)]);
    let callee = h.client();
    let to = h.unique(callee);
    let gone = h.client();
    h.call(gone, &to, "/", "com.example.I", "A", &empty());
    let old = h.recv(callee).unwrap();
    h.disconnect(gone);
    assert!(h.recv(callee).is_none(), "the callee is not told");
    // The late reply goes nowhere; a new caller (likely in the same slot) gets only its own.
    h.send(callee, reply_to(&old), &empty());
    let caller = h.client();
    let serial = h.call(caller, &to, "/", "com.example.I", "B", &empty());
    let call = h.recv(callee).unwrap();
    assert_eq!(call.serial, serial);
    h.send(callee, reply_to(&call), &empty());
    let r = h.recv(caller).unwrap().expect_return();
    assert_eq!(r.reply_serial, Some(serial));
    assert!(h.recv(caller).is_none());
}

#[test]
fn no_reply_on_reply_timeout_in_virtual_time() {
    let mut h = Harness::with_limits(&[("reply_timeout", 100)]);
    let (caller, callee) = (h.client(), h.client());
    let to = h.unique(callee);
    let serial = h.call(caller, &to, "/", "com.example.I", "Ignored", &empty());
    assert_eq!(h.recv(callee).unwrap().member.as_deref(), Some("Ignored"));
    h.advance(Duration::from_millis(99));
    assert!(h.recv(caller).is_none(), "timed out early");
    h.advance(Duration::from_millis(1));
    let e = h.recv(caller).expect("NoReply").expect_error(err::NO_REPLY);
    assert_eq!(e.reply_serial, Some(serial));
    assert_eq!(e.arg_str(0), NO_REPLY_TIMEOUT);
    assert_eq!(e.sender.as_deref(), Some(DBUS));
    h.advance(Duration::from_secs(10));
    assert!(h.recv(caller).is_none(), "NoReply sent twice");
    // A call answered in time never times out.
    let serial = h.call(caller, &to, "/", "com.example.I", "Quick", &empty());
    let call = h.recv(callee).unwrap();
    h.advance(Duration::from_millis(50));
    h.send(callee, reply_to(&call), &empty());
    assert_eq!(
        h.recv(caller).unwrap().expect_return().reply_serial,
        Some(serial)
    );
    h.advance(Duration::from_secs(1));
    assert!(h.recv(caller).is_none());
}

#[test]
fn answered_calls_do_not_pile_up_in_the_reply_deadline_heap() {
    // With reply_timeout set, every call gets a deadline; an answered call's entry goes
    // stale. 5,000 answered calls well within an hour's timeout must not keep 5,000.
    let mut h = Harness::with_limits(&[("reply_timeout", 3_600_000)]);
    let (caller, callee) = (h.client(), h.client());
    let to = h.unique(callee);
    for _ in 0..5_000 {
        h.call(caller, &to, "/", "com.example.I", "Quick", &empty());
        let call = h.recv(callee).unwrap();
        h.send(callee, reply_to(&call), &empty());
        h.recv(caller).unwrap().expect_return();
    }
    assert!(
        h.reply_deadline_entries() <= 2 * 64 + 2,
        "{} deadline entries for no call outstanding",
        h.reply_deadline_entries()
    );
    // Outstanding calls keep their deadlines through the compaction, and still time out.
    let serial = h.call(caller, &to, "/", "com.example.I", "Ignored", &empty());
    h.recv(callee).unwrap();
    for _ in 0..200 {
        h.call(caller, &to, "/", "com.example.I", "Quick", &empty());
        let call = h.recv(callee).unwrap();
        h.send(callee, reply_to(&call), &empty());
        h.recv(caller).unwrap().expect_return();
    }
    h.advance(Duration::from_secs(3_600));
    let e = h.recv(caller).expect("NoReply").expect_error(err::NO_REPLY);
    assert_eq!(e.reply_serial, Some(serial));
}

#[test]
fn unowned_destinations() {
    let mut h = Harness::new();
    let c = h.client();
    let me = h.unique(c);
    for dest in ["com.example.Nobody", ":1.9999"] {
        let serial = h.call(c, dest, "/", "com.example.I", "M", &empty());
        let e = h.recv(c).unwrap().expect_error(err::SERVICE_UNKNOWN);
        assert_eq!(e.reply_serial, Some(serial));
        assert_eq!(e.sender.as_deref(), Some(DBUS));
        assert_eq!(e.destination.as_deref(), Some(me.as_str()));
        assert_eq!(
            e.arg_str(0),
            format!("The name {dest} was not provided by any .service files")
        );
    }
    let serial = h.send(
        c,
        method_call(Some("com.example.Nobody"), "/", Some("com.example.I"), "M")
            .flags(flag::NO_AUTO_START),
        &empty(),
    );
    let e = h.recv(c).unwrap().expect_error(err::NAME_HAS_NO_OWNER);
    assert_eq!(e.reply_serial, Some(serial));
    // dbus-daemon words it "Name \"com.example.Nobody\" does not exist".
    assert!(e.arg_str(0).contains("com.example.Nobody"), "{e:#?}");
    assert!(h.recv(c).is_none());
    assert!(h.spawned().is_empty());
}

#[test]
fn messages_before_hello() {
    let mut h = Harness::new();
    let a = h.connect();
    // A driver call other than Hello: AccessDenied, the connection stays.
    let e = h
        .driver(a, "GetId", &empty())
        .expect_error(err::ACCESS_DENIED);
    assert_eq!(
        e.arg_str(0),
        "Client tried to send a message other than Hello without being registered"
    );
    assert_eq!(e.destination.as_deref(), Some(":not.active.yet"));
    assert!(!h.is_closed(a));
    let name = h.hello(a);
    assert!(name.starts_with(":1."), "{name}");
    // A message to a peer before Hello closes the connection, delivering nothing.
    let b = h.connect();
    let target = h.client();
    let tn = h.unique(target);
    h.call(b, &tn, "/", "com.example.I", "M", &empty());
    assert!(h.is_closed(b));
    assert_eq!(h.close_reason(b), Some("message to a peer before Hello"));
    assert!(h.recv(target).is_none());
    // A broadcast before Hello too.
    let c = h.connect();
    h.send(c, signal(None, "/", "com.example.I", "S"), &empty());
    assert!(h.is_closed(c));
}

#[test]
fn invalid_message_closes_the_connection() {
    let mut h = Harness::new();
    let a = h.client();
    let mut bytes =
        method_call(Some(DBUS), DBUS_PATH, Some(DBUS_IFACE), "GetId").build(5, &empty());
    bytes[8..12].copy_from_slice(&0u32.to_le_bytes()); // serial 0 is invalid
    h.send_raw(a, bytes);
    assert!(h.is_closed(a));
    assert_eq!(h.close_reason(a), Some("invalid message"));
}

#[test]
fn unix_fds_pass_only_to_peers_that_negotiated_them() {
    let mut h = Harness::new();
    let a = h.client();
    let with = h.client();
    let without = h.connect_with(USER_UID, false);
    h.hello(without);
    let (wn, won) = (h.unique(with), h.unique(without));
    let mut body = BodyWriter::new();
    body.fd(0);
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let serial = h.send_fds(
        a,
        method_call(Some(&wn), "/", Some("com.example.I"), "TakeFd"),
        &body,
        vec![w],
    );
    let m = h.recv(with).expect("delivered with its fd");
    assert_eq!((m.serial, m.n_fds, m.signature.as_str()), (serial, 1, "h"));
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let serial = h.send_fds(
        a,
        method_call(Some(&won), "/", Some("com.example.I"), "TakeFd"),
        &body,
        vec![w],
    );
    let e = h
        .recv(a)
        .unwrap()
        .expect_error("org.freedesktop.DBus.Error.NotSupported");
    assert_eq!(e.reply_serial, Some(serial));
    assert!(
        h.recv(without).is_none(),
        "fd message reached a peer without fd support"
    );
    // Broadcasts with fds skip such peers silently.
    for c in [with, without] {
        h.driver(c, "AddMatch", &s("member='Fd'")).expect_return();
    }
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    h.send_fds(a, signal(None, "/", "com.example.I", "Fd"), &body, vec![w]);
    assert_eq!(h.recv(with).unwrap().n_fds, 1);
    assert!(h.recv(without).is_none());
    assert!(h.recv(a).is_none());
}

#[test]
fn late_reply_after_timeout_is_refused_by_a_strict_policy() {
    let strict = STRICT.replace(
        "</busconfig>",
        "<limit name=\"reply_timeout\">50</limit></busconfig>",
    );
    let mut h = Harness::with_config_xml(&strict);
    let (caller, callee) = (h.client(), h.client());
    let to = h.unique(callee);
    let serial = h.call(caller, &to, "/", "com.example.I", "Slow", &empty());
    let call = h.recv(callee).unwrap();
    h.advance(Duration::from_millis(50));
    let e = h.recv(caller).unwrap().expect_error(err::NO_REPLY);
    assert_eq!(e.reply_serial, Some(serial));
    h.send(callee, reply_to(&call), &empty());
    assert!(
        h.recv(caller).is_none(),
        "a reply after NoReply was delivered"
    );
    h.recv(callee).unwrap().expect_error(err::ACCESS_DENIED);
}

#[test]
fn callee_becoming_a_monitor_fails_its_pending_calls() {
    let mut h = Harness::new();
    let caller = h.client();
    let m = h.client_as(DAEMON_UID);
    let other = h.client();
    let (mn, on) = (h.unique(m), h.unique(other));
    let owed = h.call(caller, &mn, "/", "com.example.I", "Owed", &empty());
    // A call the future monitor made itself is forgotten silently.
    h.call(m, &on, "/", "com.example.I", "Mine", &empty());
    let mine = h.recv(other).unwrap();
    let mut b = BodyWriter::new();
    b.str_array(["member='Nothing'"]).u32(0);
    h.driver_iface(m, "org.freedesktop.DBus.Monitoring", "BecomeMonitor", &b)
        .expect_return();
    // As in dbus-daemon (bus_connection_be_monitor drops its pending replies).
    let e = h.recv(caller).expect("NoReply").expect_error(err::NO_REPLY);
    assert_eq!(e.reply_serial, Some(owed));
    assert_eq!(e.arg_str(0), NO_REPLY_DISCONNECT);
    assert!(h.recv(caller).is_none());
    // The monitor lost its unique name: answering its old call goes nowhere.
    h.send(other, reply_to(&mine), &empty());
    assert!(h.recv(other).is_none());
    assert!(!h.is_closed(m));
}

#[test]
fn match_by_arg0path_and_root_namespace() {
    let sig = || signal(None, "/p", "com.example.A", "S");
    let mut objpath = BodyWriter::new();
    objpath.object_path("/aa/bb/cc");
    check_rules(
        &["arg0path='/aa/bb/'", "path_namespace='/'", "arg0='/aa/bb/'"],
        &[
            (sig(), s("/aa/bb/cc"), &[0, 1]),
            (sig(), s("/aa/"), &[0, 1]),
            (sig(), s("/aa/bb/"), &[0, 1, 2]),
            (sig(), s("/"), &[0, 1]),
            (sig(), s("/aa/b"), &[1]),
            (sig(), s("/aa/bb"), &[1]),
            (sig(), objpath, &[0, 1]),
        ],
    );
}

#[test]
fn sender_rule_follows_primary_ownership_not_the_queue() {
    let mut h = Harness::new();
    let (first, queued, sub) = (h.client(), h.client(), h.client());
    let name = "com.example.Emitter";
    assert_eq!(h.driver(first, "RequestName", &su(name, 0)).arg_u32(0), 1);
    assert_eq!(h.driver(queued, "RequestName", &su(name, 0)).arg_u32(0), 2);
    h.driver(
        sub,
        "AddMatch",
        &s("sender='com.example.Emitter',member='S'"),
    )
    .expect_return();
    let from_first = h.send(first, signal(None, "/", "com.example.I", "S"), &empty());
    h.send(queued, signal(None, "/", "com.example.I", "S"), &empty());
    let got: Vec<u32> = h.recv_all(sub).iter().map(|m| m.serial).collect();
    assert_eq!(
        got,
        vec![from_first],
        "a queued owner is not the sender name"
    );
    h.driver(first, "ReleaseName", &s(name)).expect_return();
    h.send(first, signal(None, "/", "com.example.I", "S"), &empty());
    let from_queued = h.send(queued, signal(None, "/", "com.example.I", "S"), &empty());
    let got: Vec<(u32, Option<String>)> = h
        .recv_all(sub)
        .iter()
        .map(|m| (m.serial, m.sender.clone()))
        .collect();
    assert_eq!(got, vec![(from_queued, Some(h.unique(queued)))]);
}

#[test]
fn policy_refusals_are_worded_as_dbus_daemon_words_them() {
    // A session-like policy plus one deny rule for sending and one for receiving.
    let xml = r#"<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <deny send_interface="com.example.Denied"/>
    <deny receive_interface="com.example.Unwanted"/>
  </policy>
</busconfig>"#;
    let mut h = Harness::with_config_xml(xml);
    let (a, b) = (h.client(), h.client());
    let (an, bn) = (h.unique(a), h.unique(b));
    let (ap, bp) = (h.pid(a), h.pid(b));
    let who = |pid: u32| format!("uid={USER_UID} pid={pid} comm=\"client --pid {pid}\"");
    h.call(a, &bn, "/p", "com.example.Denied", "Foo", &empty());
    let e = h.recv(a).unwrap().expect_error(err::ACCESS_DENIED);
    assert_eq!(
        e.arg_str(0),
        format!(
            "Rejected send message, 2 matched rules; type=\"method_call\", sender=\"{an}\" ({}) interface=\"com.example.Denied\" member=\"Foo\" error name=\"(unset)\" requested_reply=\"0\" destination=\"{bn}\" ({})",
            who(ap),
            who(bp)
        )
    );
    h.call(a, &bn, "/p", "com.example.Unwanted", "Bar", &empty());
    let e = h.recv(a).unwrap().expect_error(err::ACCESS_DENIED);
    assert_eq!(
        e.arg_str(0),
        format!(
            "Rejected receive message, 2 matched rules; type=\"method_call\", sender=\"{an}\" ({}) interface=\"com.example.Unwanted\" member=\"Bar\" error name=\"(unset)\" requested_reply=\"0\" destination=\"{bn}\" ({})",
            who(ap),
            who(bp)
        )
    );
    // To the driver: its destination is the bus.
    h.call(a, DBUS, "/", "com.example.Denied", "Foo", &empty());
    let e = h.recv(a).unwrap().expect_error(err::ACCESS_DENIED);
    assert!(
        e.arg_str(0).ends_with(&format!(
            "sender=\"{an}\" ({}) interface=\"com.example.Denied\" member=\"Foo\" error name=\"(unset)\" requested_reply=\"0\" destination=\"{DBUS}\" (bus)",
            who(ap)
        )),
        "{}",
        e.arg_str(0)
    );
    assert!(h.recv(b).is_none());
}

/// A relayed message is a slice of the sender's receive buffer only while it is the first in
/// its receiver's queue (written at the end of the turn); the ones queued behind it copy
/// their bytes out, so a receiver that does not read pins at most one receive buffer. The
/// copies go out exactly as the slice would have.
#[test]
fn only_the_head_of_a_queue_pins_a_receive_buffer() {
    let mut h = Harness::new();
    let (a, b, c) = (h.client(), h.client(), h.client());
    let bn = h.unique(b);
    add_match(&mut h, c, "type='signal',interface='com.example.S'");
    let mut serials = Vec::new();
    for i in 0..3u32 {
        let mut body = BodyWriter::new();
        body.str("payload").u32(i);
        serials.push(h.call(a, &bn, "/obj", "com.example.I", "Method", &body));
        h.send(c, signal(None, "/obj", "com.example.S", "Tick"), &s("x"));
    }
    assert_eq!(h.queued_pinning(b), [true, false, false]);
    for (i, serial) in serials.into_iter().enumerate() {
        let call = h.recv(b).expect("call delivered");
        assert_eq!(call.serial, serial);
        assert_eq!(
            call.args(),
            vec![Value::Str("payload".into()), Value::U32(i as u32)]
        );
    }
    // A broadcast to its own sender follows the same rule.
    assert_eq!(h.queued_pinning(c), [true, false, false]);
    assert_eq!(h.recv_all(c).len(), 3);
}

/// A broadcast to receivers that already have messages queued gives them one shared copy of
/// the signal (not a copy each, nor slices pinning the sender's receive buffer).
#[test]
fn queued_broadcast_receivers_share_one_copy() {
    let mut h = Harness::new();
    let (a, b, c) = (h.client(), h.client(), h.client());
    for r in [b, c] {
        add_match(&mut h, r, "type='signal',interface='com.example.S'");
    }
    for i in 0..2u32 {
        let mut body = BodyWriter::new();
        body.u32(i);
        h.send(a, signal(None, "/obj", "com.example.S", "Tick"), &body);
    }
    let (qb, qc) = (h.queued_buffers(b), h.queued_buffers(c));
    assert_eq!((qb.len(), qc.len()), (2, 2));
    // The first signal: a slice of the sender's buffer for both (heads of their queues).
    assert!(Rc::ptr_eq(&qb[0], &qc[0]));
    assert_eq!(h.queued_pinning(b), [true, false]);
    assert_eq!(h.queued_pinning(c), [true, false]);
    // The second: one copy of its own, shared.
    assert!(Rc::ptr_eq(&qb[1], &qc[1]));
    assert!(!Rc::ptr_eq(&qb[1], &qb[0]));
    for r in [b, c] {
        let got: Vec<_> = h.recv_all(r).iter().map(Msg::args).collect();
        assert_eq!(got, [vec![Value::U32(0)], vec![Value::U32(1)]]);
    }
}

#[test]
fn a_unique_name_is_only_its_own_spelling() {
    // Unique names are resolved by their number (`bus/unique.rs`); `:1.0N` is a valid bus
    // name with the same number, but not the name the bus gave out, so nobody owns it.
    let mut h = Harness::new();
    let (caller, callee) = (h.client(), h.client());
    let to = h.unique(callee);
    let n = &to[3..];
    for other in [format!(":1.0{n}"), format!(":1.{n}0"), format!(":2.{n}")] {
        let serial = h.call(caller, &other, "/", "com.example.I", "M", &empty());
        h.reply(caller, serial).expect_error(err::SERVICE_UNKNOWN);
    }
    assert!(h.recv(callee).is_none(), "delivered to a misspelt name");
    h.call(caller, &to, "/", "com.example.I", "M", &empty());
    assert_eq!(h.recv(callee).unwrap().member.as_deref(), Some("M"));
}

#[test]
fn a_reply_that_cannot_be_delivered_leaves_its_call_waiting() {
    // The reply's record is taken out of the table while the reply is routed (one lookup);
    // a reply that is then refused must put it back.
    let mut h = Harness::new();
    let without = h.connect_with(USER_UID, false);
    h.hello(without);
    let callee = h.client();
    let to = h.unique(callee);
    let serial = h.call(without, &to, "/", "com.example.I", "M", &empty());
    let call = h.recv(callee).unwrap();
    let mut body = BodyWriter::new();
    body.fd(0);
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    h.send_fds(callee, reply_to(&call), &body, vec![w]);
    h.recv(callee)
        .unwrap()
        .expect_error("org.freedesktop.DBus.Error.NotSupported");
    assert!(h.recv(without).is_none());
    // The call still waits for its reply (the harness's invariants check the reply table
    // against each side's counts after every event): if the callee goes now, the caller
    // is told NoReply.
    h.disconnect(callee);
    let e = h
        .recv(without)
        .expect("NoReply")
        .expect_error(err::NO_REPLY);
    assert_eq!(e.reply_serial, Some(serial));
}

#[test]
fn a_requested_reply_refused_by_policy_leaves_its_call_waiting() {
    // As above, for a reply the policy refuses: the callee's error reply is denied, and its
    // method return, still requested, passes (STRICT refuses unrequested replies).
    let xml = STRICT.replace(
        "</policy>",
        r#"<deny send_type="error" send_requested_reply="true"/></policy>"#,
    );
    let mut h = Harness::with_config_xml(&xml);
    let (caller, callee) = (h.client(), h.client());
    let to = h.unique(callee);
    let serial = h.call(caller, &to, "/", "com.example.I", "M", &empty());
    let call = h.recv(callee).unwrap();
    h.send(callee, error_to(&call, "com.example.Failed"), &empty());
    h.recv(callee)
        .expect("refusal")
        .expect_error(err::ACCESS_DENIED);
    assert!(h.recv(caller).is_none(), "the denied error passed");
    h.send(callee, reply_to(&call), &empty());
    let r = h.recv(caller).expect("the reply").expect_return();
    assert_eq!(r.reply_serial, Some(serial));
}

#[test]
fn a_callers_first_record_and_its_others_behave_alike() {
    // The first outstanding call of a caller is kept apart from the others (replies.rs):
    // duplicates, replies in any order and the records of a leaving caller must not tell
    // the two places apart. A strict policy refuses unrequested replies (by default they
    // pass), so a record wrongly kept or found shows.
    let mut h = Harness::with_config_xml(STRICT);
    let (a, b) = (h.client(), h.client());
    let bn = h.unique(b);
    let call = |_serial: u32| method_call(Some(&bn), "/", Some("com.example.I"), "M").flags(0);
    h.send_with_serial(a, 10, call(10), &empty());
    h.send_with_serial(a, 11, call(11), &empty());
    let (c10, c11) = (h.recv(b).unwrap(), h.recv(b).unwrap());
    assert_eq!((c10.serial, c11.serial), (10, 11));
    // The same serial again while outstanding, whichever place it is in: AccessDenied.
    for dup in [10, 11] {
        h.send_with_serial(a, dup, call(dup), &empty());
        let e = h.recv(a).unwrap().expect_error(err::ACCESS_DENIED);
        assert_eq!(e.reply_serial, Some(dup));
        assert!(h.recv(b).is_none(), "duplicate call {dup} delivered");
    }
    // Replies in reverse order each pass once.
    for c in [&c11, &c10] {
        h.send(b, reply_to(c), &empty());
        let r = h.recv(a).unwrap().expect_return();
        assert_eq!(r.reply_serial, Some(c.serial));
        h.send(b, reply_to(c), &empty());
        let got = h.recv(a);
        assert!(
            got.is_none(),
            "second reply to {} delivered: {got:#?}",
            c.serial
        );
        h.recv(b).unwrap().expect_error(err::ACCESS_DENIED);
    }
    // Both freed: the serials may be used again.
    h.send_with_serial(a, 10, call(10), &empty());
    let c = h.recv(b).unwrap();
    h.send(b, reply_to(&c), &empty());
    assert_eq!(h.recv(a).unwrap().expect_return().reply_serial, Some(10));

    // A caller leaves with a call outstanding; a new caller in its connection slot gets no
    // reply to that call's serial before it makes a call of its own.
    h.send_with_serial(a, 20, call(20), &empty());
    h.recv(b).unwrap();
    let slot = h.conn(a);
    h.disconnect(a);
    let n = h.client();
    assert_eq!(h.conn(n), slot, "the new caller reuses the slot");
    let nn = h.unique(n);
    h.send(
        b,
        MessageBuilder::method_return(20).flags(0).destination(&nn),
        &empty(),
    );
    assert!(
        h.recv(n).is_none(),
        "the old caller's record let a reply through"
    );
    h.recv(b).unwrap().expect_error(err::ACCESS_DENIED);
    h.send_with_serial(n, 20, call(20), &empty());
    let new = h.recv(b).unwrap();
    assert_eq!(new.serial, 20);
    h.send(b, reply_to(&new), &empty());
    assert_eq!(h.recv(n).unwrap().expect_return().reply_serial, Some(20));
}

#[test]
fn a_remembered_destination_never_names_a_departed_peer() {
    // Each sender remembers the unique name it last sent to and its connection
    // (`Bus::resolve_bytes_from`): once that peer leaves, and even once another takes its
    // connection slot, the old name must resolve to nobody.
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let bn = h.unique(b);
    for _ in 0..2 {
        h.send(a, signal(Some(&bn), "/", "com.example.I", "S"), &empty());
        assert!(h.recv(b).is_some());
    }
    let slot = h.conn(b);
    h.disconnect(b);
    let c = h.client();
    assert_eq!(h.conn(c), slot, "the new peer reuses the slot");
    let cn = h.unique(c);
    assert_ne!(cn, bn);
    h.call(a, &bn, "/", "com.example.I", "M", &empty());
    assert!(
        h.recv(c).is_none(),
        "a message for the departed peer reached its successor"
    );
    let e = h.recv(a).expect("the caller is told");
    assert!(e.error_name.is_some(), "{e:#?}");
    // The new peer is reached by its own name, and the remembered name is updated.
    for _ in 0..2 {
        h.send(a, signal(Some(&cn), "/", "com.example.I", "S"), &empty());
        assert!(h.recv(c).is_some());
    }
}
