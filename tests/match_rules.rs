//! Signal delivery by match rule, one key at a time (type, sender, interface,
//! member, path, path_namespace, argN, argNpath, arg0namespace), plus
//! combinations, quoting, RemoveMatch, and "no eavesdropping by default".
//!
//! Method: a subscriber adds the rule under test; emitters broadcast tagged
//! signals and finally a Sentinel each; everything the subscriber received
//! before all sentinels is compared with the expectation per signal.

mod common;

use common::*;
use std::collections::HashSet;

struct Emit {
    from: usize,
    path: &'static str,
    iface: &'static str,
    member: &'static str,
    args: Vec<Arg>,
    expect: bool,
}

fn e(
    path: &'static str,
    iface: &'static str,
    member: &'static str,
    args: Vec<Arg>,
    expect: bool,
) -> Emit {
    Emit {
        from: 0,
        path,
        iface,
        member,
        args,
        expect,
    }
}

/// Signal from the default emitter with path /p, interface com.example.A,
/// member M and the given args.
fn args(a: Vec<Arg>, expect: bool) -> Emit {
    e("/p", "com.example.A", "M", a, expect)
}

fn sp(v: &str) -> Arg {
    Arg::Path(v.to_string())
}

/// Add `rules` on a fresh subscriber, emit, and compare deliveries.
fn check_with(bus: &TestBus, rules: &[&str], emitters: &mut [RawConn], emits: &[Emit]) -> RawConn {
    let mut sub = bus.client();
    for r in rules {
        sub.add_match(r);
    }
    sub.add_match("type='signal',interface='com.example.Sentinel',member='Sentinel'");
    let mut sent = Vec::new();
    for (i, em) in emits.iter().enumerate() {
        let c = &mut emitters[em.from];
        let serial = c.signal(None, em.path, em.iface, em.member, &em.args);
        sent.push((c.unique().to_string(), serial, i));
    }
    for c in emitters.iter_mut() {
        c.signal(None, "/sentinel", "com.example.Sentinel", "Sentinel", &[]);
    }
    let mut got = HashSet::new();
    let mut sentinels = 0;
    while sentinels < emitters.len() {
        let m = sub
            .recv(TIMEOUT)
            .unwrap_or_else(|| panic!("rules {rules:?}: sentinel not received"));
        if m.msg_type != msg_type::SIGNAL {
            continue;
        }
        if m.member.as_deref() == Some("Sentinel") {
            sentinels += 1;
        } else if let Some(sender) = m.sender.clone() {
            got.insert((sender, m.serial));
        }
    }
    for (sender, serial, i) in sent {
        let em = &emits[i];
        let delivered = got.contains(&(sender, serial));
        assert_eq!(
            delivered, em.expect,
            "rules {rules:?}: signal path={} iface={} member={} args={:?} from emitter {}: delivered={delivered}",
            em.path, em.iface, em.member, em.args, em.from
        );
    }
    sub
}

fn check(rule: &str, emits: &[Emit]) {
    let bus = TestBus::start();
    let mut emitters = vec![bus.client()];
    check_with(&bus, &[rule], &mut emitters, emits);
}

#[test]
fn key_type() {
    check(
        "type='signal'",
        &[
            args(vec![], true),
            e("/x", "com.example.B", "N", vec![s("a")], true),
        ],
    );
    check("type='method_call'", &[args(vec![], false)]);
    check("type='error'", &[args(vec![], false)]);
    // Unquoted values are accepted too.
    check("type=signal", &[args(vec![], true)]);
}

#[test]
fn key_interface() {
    check(
        "interface='com.example.A'",
        &[
            e("/p", "com.example.A", "M", vec![], true),
            e("/p", "com.example.B", "M", vec![], false),
            e("/p", "com.example.A.Sub", "M", vec![], false),
        ],
    );
}

#[test]
fn key_member() {
    check(
        "member='Foo'",
        &[
            e("/p", "com.example.A", "Foo", vec![], true),
            e("/p", "com.example.A", "Bar", vec![], false),
            e("/p", "com.example.B", "Foo", vec![], true),
            e("/p", "com.example.A", "FooBar", vec![], false),
        ],
    );
}

#[test]
fn key_path() {
    check(
        "path='/a/b'",
        &[
            e("/a/b", "com.example.A", "M", vec![], true),
            e("/a/b/c", "com.example.A", "M", vec![], false),
            e("/a", "com.example.A", "M", vec![], false),
            e("/a/bc", "com.example.A", "M", vec![], false),
        ],
    );
}

#[test]
fn key_path_namespace() {
    check(
        "path_namespace='/a/b'",
        &[
            e("/a/b", "com.example.A", "M", vec![], true),
            e("/a/b/c", "com.example.A", "M", vec![], true),
            e("/a/b/c/d", "com.example.A", "M", vec![], true),
            e("/a/bc", "com.example.A", "M", vec![], false),
            e("/a", "com.example.A", "M", vec![], false),
            e("/", "com.example.A", "M", vec![], false),
        ],
    );
    check(
        "path_namespace='/'",
        &[
            e("/", "com.example.A", "M", vec![], true),
            e("/z/y", "com.example.A", "M", vec![], true),
        ],
    );
}

#[test]
fn key_sender() {
    let bus = TestBus::start();
    let mut emitters = vec![bus.client(), bus.client()];
    assert_eq!(emitters[0].request_name("com.example.Emitter", 0), 1);
    let first = emitters[0].unique().to_string();
    let mk = |from, expect| Emit {
        from,
        path: "/p",
        iface: "com.example.A",
        member: "M",
        args: vec![],
        expect,
    };
    check_with(
        &bus,
        &[&format!("sender='{first}'")],
        &mut emitters,
        &[mk(0, true), mk(1, false)],
    );
    check_with(
        &bus,
        &["sender='com.example.Emitter'"],
        &mut emitters,
        &[mk(0, true), mk(1, false)],
    );
    // After the name moves to emitter 1, the rule follows the current owner.
    assert_eq!(emitters[0].release_name("com.example.Emitter"), 1);
    assert_eq!(emitters[1].request_name("com.example.Emitter", 0), 1);
    check_with(
        &bus,
        &["sender='com.example.Emitter'"],
        &mut emitters,
        &[mk(0, false), mk(1, true)],
    );
    // Driver signals match sender='org.freedesktop.DBus'.
    let mut sub = bus.client();
    sub.add_match("sender='org.freedesktop.DBus',member='NameOwnerChanged'");
    assert_eq!(emitters[0].request_name("com.example.Other", 0), 1);
    let (_, got) = sub.recv_until(TIMEOUT, |m| {
        m.is_driver_signal("NameOwnerChanged") && m.arg_str(0) == "com.example.Other"
    });
    assert!(got.is_some());
}

#[test]
fn key_arg_n() {
    check(
        "arg0='x'",
        &[
            args(vec![s("x")], true),
            args(vec![s("y")], false),
            args(vec![s("x"), s("z")], true),
            args(vec![s("xx")], false),
            args(vec![Arg::U32(0)], false),
            args(vec![], false),
            // argN matches strings only, not object paths.
            args(vec![sp("/x")], false),
        ],
    );
    check(
        "arg1='v'",
        &[
            args(vec![s("a"), s("v")], true),
            args(vec![s("v"), s("a")], false),
            args(vec![Arg::U32(3), s("v")], true),
            args(vec![s("v")], false),
        ],
    );
    check(
        "arg3='deep'",
        &[
            args(vec![s("a"), s("b"), s("c"), s("deep")], true),
            args(vec![s("deep"), s("b"), s("c"), s("a")], false),
        ],
    );
}

#[test]
fn key_arg_n_path() {
    // The argNpath example from the D-Bus specification, "Match Rules".
    let rule = "arg0path='/aa/bb/'";
    check(
        rule,
        &[
            args(vec![s("/")], true),
            args(vec![s("/aa/")], true),
            args(vec![s("/aa/bb/")], true),
            args(vec![s("/aa/bb/cc/")], true),
            args(vec![s("/aa/bb/cc")], true),
            args(vec![sp("/aa/bb/cc")], true),
            args(vec![s("/aa/b")], false),
            args(vec![s("/aa")], false),
            args(vec![s("/aa/bb")], false),
            args(vec![Arg::U32(1)], false),
        ],
    );
    check(
        "arg1path='/x'",
        &[
            args(vec![s("-"), s("/x")], true),
            args(vec![s("-"), sp("/x")], true),
            args(vec![s("-"), s("/x/y")], false),
            args(vec![s("/x")], false),
        ],
    );
}

#[test]
fn key_arg0_namespace() {
    check(
        "arg0namespace='com.example'",
        &[
            args(vec![s("com.example")], true),
            args(vec![s("com.example.Foo")], true),
            args(vec![s("com.example.Foo.Bar")], true),
            args(vec![s("com.examplefoo")], false),
            args(vec![s("com")], false),
            args(vec![s("org.example")], false),
            args(vec![Arg::U32(1)], false),
        ],
    );
}

#[test]
fn combined_keys_must_all_match() {
    check(
        "type='signal',interface='com.example.A',member='Foo',path='/p',arg0='x'",
        &[
            e("/p", "com.example.A", "Foo", vec![s("x")], true),
            e("/p", "com.example.A", "Foo", vec![s("y")], false),
            e("/q", "com.example.A", "Foo", vec![s("x")], false),
            e("/p", "com.example.B", "Foo", vec![s("x")], false),
            e("/p", "com.example.A", "Bar", vec![s("x")], false),
        ],
    );
}

#[test]
fn empty_rule_matches_every_broadcast() {
    check(
        "",
        &[
            args(vec![], true),
            e("/z", "com.example.Z", "Zz", vec![s("q")], true),
        ],
    );
}

#[test]
fn quoting_and_escapes() {
    // 'it'\''s' → it's
    check(
        r"arg0='it'\''s'",
        &[args(vec![s("it's")], true), args(vec![s("its")], false)],
    );
    // Commas inside quotes are part of the value.
    check(
        "arg0='a,b'",
        &[args(vec![s("a,b")], true), args(vec![s("a")], false)],
    );
    // Whitespace before keys is skipped.
    check(
        "  type='signal',\t member='M'",
        &[
            args(vec![], true),
            e("/p", "com.example.A", "N", vec![], false),
        ],
    );
}

#[test]
fn multiple_rules_deliver_once() {
    let bus = TestBus::start();
    let mut emitters = vec![bus.client()];
    let mut sub = check_with(
        &bus,
        &["member='M'", "interface='com.example.A'", "type='signal'"],
        &mut emitters,
        &[args(vec![], true)],
    );
    // Exactly one copy: emit once more and count.
    let serial = emitters[0].signal(None, "/p", "com.example.A", "M", &[]);
    emitters[0].signal(None, "/sentinel", "com.example.Sentinel", "Sentinel", &[]);
    let (before, sentinel) = sub.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Sentinel"));
    assert!(sentinel.is_some());
    let me = emitters[0].unique().to_string();
    let copies = before
        .iter()
        .filter(|m| m.serial == serial && m.sender.as_deref() == Some(me.as_str()))
        .count();
    assert_eq!(copies, 1, "{before:#?}");
}

#[test]
fn remove_match_stops_delivery() {
    let bus = TestBus::start();
    let mut em = bus.client();
    let mut sub = bus.client();
    sub.add_match("type='signal',member='Q'");
    sub.add_match("type='signal',member='Q'");
    sub.add_match("member='Sentinel'");
    // RemoveMatch compares parsed rules: different order and quoting still match.
    sub.driver("RemoveMatch", &[s("member=Q,type=signal")])
        .expect_return();
    let s1 = em.signal(None, "/p", "com.example.A", "Q", &[]);
    em.signal(None, "/p", "com.example.A", "Sentinel", &[]);
    let (before, sentinel) = sub.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Sentinel"));
    assert!(sentinel.is_some());
    let em_name = em.unique().to_string();
    let from_em = |m: &RawMsg, serial: u32| {
        m.serial == serial && m.sender.as_deref() == Some(em_name.as_str())
    };
    assert!(
        before.iter().any(|m| from_em(m, s1)),
        "duplicate rule should still deliver"
    );
    sub.driver("RemoveMatch", &[s("type='signal',member='Q'")])
        .expect_return();
    let s2 = em.signal(None, "/p", "com.example.A", "Q", &[]);
    em.signal(None, "/p", "com.example.A", "Sentinel", &[]);
    let (before, sentinel) = sub.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Sentinel"));
    assert!(sentinel.is_some());
    assert!(!before.iter().any(|m| from_em(m, s2)), "{before:#?}");
    sub.driver("RemoveMatch", &[s("type='signal',member='Q'")])
        .expect_error("org.freedesktop.DBus.Error.MatchRuleNotFound");
}

#[test]
fn unicast_signals_are_not_seen_without_eavesdrop() {
    let bus = TestBus::start();
    let mut em = bus.client();
    let mut target = bus.client();
    let mut sub = bus.client();
    sub.add_match("type='signal',member='Uni'");
    sub.add_match("member='Sentinel'");
    let t = target.unique().to_string();
    em.signal(Some(&t), "/p", "com.example.A", "Uni", &[]);
    em.signal(None, "/p", "com.example.A", "Sentinel", &[]);
    let (before, sentinel) = sub.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Sentinel"));
    assert!(sentinel.is_some());
    assert!(
        !before.iter().any(|m| m.member.as_deref() == Some("Uni")),
        "{before:#?}"
    );
    // The addressed recipient gets it without any rule.
    let (_, got) = target.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Uni"));
    let got = got.expect("unicast signal delivered");
    assert_eq!(got.destination.as_deref(), Some(t.as_str()));
}

#[test]
fn sender_receives_own_broadcast_when_matching() {
    let bus = TestBus::start();
    let mut c = bus.client();
    c.add_match("member='Self'");
    let serial = c.signal(None, "/p", "com.example.A", "Self", &[]);
    let (_, got) = c.recv_until(TIMEOUT, |m| m.member.as_deref() == Some("Self"));
    assert_eq!(got.expect("own broadcast").serial, serial);
}

#[test]
fn dbus_monitor_style_subscriber_via_dbus_send() {
    // A broadcast emitted by dbus-send reaches a subscriber.
    let bus = TestBus::start();
    let mut sub = bus.client();
    sub.add_match("type='signal',interface='com.example.Cli',arg0='hello'");
    // Each dbus-send's departure is the sentinel for its signal.
    sub.watch_departures();
    let out = bus.dbus_send(&[
        "--type=signal",
        "/cli",
        "com.example.Cli.Said",
        "string:hello",
    ]);
    out.ok();
    let out = bus.dbus_send(&[
        "--type=signal",
        "/cli",
        "com.example.Cli.Said",
        "string:other",
    ]);
    out.ok();
    // The bus handles a connection's messages before its hang-up: once both dbus-send
    // connections are announced gone, both signals have been routed.
    let (mut seen, _) = sub.next_departure();
    let (more, _) = sub.next_departure();
    seen.extend(more);
    seen.extend(sub.sync());
    let said: Vec<&RawMsg> = seen
        .iter()
        .filter(|m| m.member.as_deref() == Some("Said"))
        .collect();
    assert_eq!(said.len(), 1, "{seen:#?}");
    assert_eq!(said[0].arg_str(0), "hello");
}
