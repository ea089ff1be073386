//! Name ownership: RequestName/ReleaseName reply codes, the ALLOW_REPLACEMENT,
//! REPLACE_EXISTING and DO_NOT_QUEUE flags, queue promotion on release and on disconnect,
//! ListQueuedOwners, and the exact order of NameOwnerChanged / NameAcquired / NameLost.

use super::harness::*;

const ALLOW_REPLACEMENT: u32 = 0x1;
const REPLACE_EXISTING: u32 = 0x2;
const DO_NOT_QUEUE: u32 = 0x4;

const PRIMARY_OWNER: u32 = 1;
const IN_QUEUE: u32 = 2;
const EXISTS: u32 = 3;
const ALREADY_OWNER: u32 = 4;

const RELEASED: u32 = 1;
const NON_EXISTENT: u32 = 2;
const NOT_OWNER: u32 = 3;

fn request(h: &mut Harness, c: Client, name: &str, flags: u32) -> u32 {
    h.driver(c, "RequestName", &su(name, flags))
        .expect_return()
        .arg_u32(0)
}

fn release(h: &mut Harness, c: Client, name: &str) -> u32 {
    h.driver(c, "ReleaseName", &s(name))
        .expect_return()
        .arg_u32(0)
}

fn queued(h: &mut Harness, c: Client, name: &str) -> Vec<String> {
    h.driver(c, "ListQueuedOwners", &s(name))
        .expect_return()
        .arg_strs(0)
}

fn owner(h: &mut Harness, c: Client, name: &str) -> String {
    h.driver(c, "GetNameOwner", &s(name))
        .expect_return()
        .arg_str(0)
}

/// A privileged monitor that sees everything; returns it with its queue emptied.
fn monitor(h: &mut Harness) -> Client {
    let m = h.client_as(DAEMON_UID);
    let mut b = BodyWriter::new();
    b.str_array(Vec::<&str>::new()).u32(0);
    h.driver_iface(m, "org.freedesktop.DBus.Monitoring", "BecomeMonitor", &b)
        .expect_return();
    assert!(h.is_monitor(m));
    h.recv_all(m);
    m
}

/// The name signals about `name` a monitor saw, as "Member(dest|args)".
fn name_signals(h: &mut Harness, mon: Client, name: &str) -> Vec<String> {
    h.recv_all(mon)
        .into_iter()
        .filter(|m| m.msg_type == mtype::SIGNAL && m.sender.as_deref() == Some(DBUS))
        .filter(|m| m.arg_str(0) == name)
        .map(|m| {
            let args: Vec<String> = m
                .args()
                .into_iter()
                .skip(1)
                .map(|v| match v {
                    Value::Str(s) => s,
                    other => format!("{other:?}"),
                })
                .collect();
            format!(
                "{}({}|{})",
                m.member.as_deref().unwrap_or(""),
                m.destination.as_deref().unwrap_or("*"),
                args.join(",")
            )
        })
        .collect()
}

#[test]
fn request_name_reply_codes() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    let n = "com.example.Codes";
    assert_eq!(request(&mut h, a, n, 0), PRIMARY_OWNER);
    assert_eq!(request(&mut h, a, n, 0), ALREADY_OWNER);
    assert_eq!(request(&mut h, b, n, DO_NOT_QUEUE), EXISTS);
    assert_eq!(queued(&mut h, a, n), vec![h.unique(a)]);
    assert_eq!(request(&mut h, b, n, 0), IN_QUEUE);
    assert_eq!(queued(&mut h, a, n), vec![h.unique(a), h.unique(b)]);
    // Asking again while queued keeps IN_QUEUE, without a second queue entry.
    assert_eq!(request(&mut h, b, n, 0), IN_QUEUE);
    assert_eq!(queued(&mut h, a, n), vec![h.unique(a), h.unique(b)]);
    // DO_NOT_QUEUE while queued takes b out of the queue.
    assert_eq!(request(&mut h, b, n, DO_NOT_QUEUE), EXISTS);
    assert_eq!(queued(&mut h, a, n), vec![h.unique(a)]);
    assert_eq!(owner(&mut h, b, n), h.unique(a));
}

#[test]
fn release_name_codes_and_promotion_on_release() {
    let mut h = Harness::new();
    let (a, b, c) = (h.client(), h.client(), h.client());
    let n = "com.example.Release";
    assert_eq!(release(&mut h, a, n), NON_EXISTENT);
    assert_eq!(request(&mut h, a, n, 0), PRIMARY_OWNER);
    assert_eq!(request(&mut h, b, n, 0), IN_QUEUE);
    assert_eq!(release(&mut h, c, n), NOT_OWNER);
    // A queued connection leaves the queue silently.
    h.recv_all(b);
    assert_eq!(release(&mut h, b, n), RELEASED);
    assert!(h.recv(b).is_none(), "no signal for leaving a queue");
    assert_eq!(queued(&mut h, c, n), vec![h.unique(a)]);
    assert_eq!(request(&mut h, b, n, 0), IN_QUEUE);
    assert_eq!(request(&mut h, c, n, 0), IN_QUEUE);
    h.recv_all(a);
    // The primary owner releases: the next in line (b) gets it.
    assert_eq!(release(&mut h, a, n), RELEASED);
    let lost = h.recv(a).expect("NameLost for a");
    assert!(
        lost.is_driver_signal("NameLost") && lost.arg_str(0) == n,
        "{lost:#?}"
    );
    assert_eq!(lost.destination, Some(h.unique(a)));
    let got = h.recv(b).expect("NameAcquired for b");
    assert!(
        got.is_driver_signal("NameAcquired") && got.arg_str(0) == n,
        "{got:#?}"
    );
    assert_eq!(got.destination, Some(h.unique(b)));
    assert_eq!(owner(&mut h, c, n), h.unique(b));
    assert_eq!(queued(&mut h, c, n), vec![h.unique(b), h.unique(c)]);
}

#[test]
fn allow_replacement_and_replace_existing() {
    let mut h = Harness::new();
    let (a, b, c) = (h.client(), h.client(), h.client());
    let n = "com.example.Replace";
    // a does not allow replacement: REPLACE_EXISTING only queues b.
    assert_eq!(request(&mut h, a, n, 0), PRIMARY_OWNER);
    assert_eq!(request(&mut h, b, n, REPLACE_EXISTING), IN_QUEUE);
    assert_eq!(
        request(&mut h, b, n, REPLACE_EXISTING | DO_NOT_QUEUE),
        EXISTS
    );
    assert_eq!(owner(&mut h, c, n), h.unique(a));
    // ALREADY_OWNER updates the stored flags: now a allows replacement.
    assert_eq!(request(&mut h, a, n, ALLOW_REPLACEMENT), ALREADY_OWNER);
    h.recv_all(a);
    assert_eq!(request(&mut h, c, n, REPLACE_EXISTING), PRIMARY_OWNER);
    assert_eq!(owner(&mut h, b, n), h.unique(c));
    let lost = h.recv(a).expect("NameLost");
    assert!(lost.is_driver_signal("NameLost") && lost.arg_str(0) == n);
    // The replaced owner, which did not ask DO_NOT_QUEUE, waits right behind the new one.
    assert_eq!(queued(&mut h, b, n), vec![h.unique(c), h.unique(a)]);
    // Without REPLACE_EXISTING, an owner that allows replacement is not replaced.
    let m = "com.example.Replace2";
    assert_eq!(request(&mut h, a, m, ALLOW_REPLACEMENT), PRIMARY_OWNER);
    assert_eq!(request(&mut h, b, m, DO_NOT_QUEUE), EXISTS);
    assert_eq!(owner(&mut h, c, m), h.unique(a));
}

#[test]
fn replaced_owner_with_do_not_queue_leaves_the_queue() {
    let mut h = Harness::new();
    let (a, b, c) = (h.client(), h.client(), h.client());
    let m = "com.example.Replace3";
    assert_eq!(
        request(&mut h, a, m, ALLOW_REPLACEMENT | DO_NOT_QUEUE),
        PRIMARY_OWNER
    );
    assert_eq!(request(&mut h, b, m, REPLACE_EXISTING), PRIMARY_OWNER);
    assert_eq!(queued(&mut h, c, m), vec![h.unique(b)]);
    // b got it at once; a cannot get back by releasing nothing.
    assert_eq!(release(&mut h, a, m), NOT_OWNER);
}

#[test]
fn disconnect_promotes_the_queue_and_announces_in_order() {
    let mut h = Harness::new();
    let sub = h.client();
    h.driver(
        sub,
        "AddMatch",
        &s("type='signal',member='NameOwnerChanged'"),
    )
    .expect_return();
    let (a, b) = (h.client(), h.client());
    let (an, bn) = (h.unique(a), h.unique(b));
    let n = "com.example.Disconnect";
    assert_eq!(request(&mut h, a, n, 0), PRIMARY_OWNER);
    assert_eq!(request(&mut h, b, n, 0), IN_QUEUE);
    h.recv_all(sub);
    h.recv_all(b);
    h.disconnect(a);
    let got = h.recv_all(b);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(got[0].is_driver_signal("NameAcquired") && got[0].arg_str(0) == n);
    assert_eq!(owner(&mut h, b, n), bn);
    // The well-known name moves first, then the unique name goes.
    let seen: Vec<(String, String, String)> = h
        .recv_all(sub)
        .iter()
        .map(|m| {
            assert!(m.is_driver_signal("NameOwnerChanged"), "{m:#?}");
            assert_eq!(m.destination, None);
            (m.arg_str(0), m.arg_str(1), m.arg_str(2))
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (n.to_string(), an.clone(), bn.clone()),
            (an.clone(), an.clone(), String::new()),
        ]
    );
    // A disconnect with nobody queued frees the name.
    h.disconnect(b);
    let seen: Vec<(String, String, String)> = h
        .recv_all(sub)
        .iter()
        .map(|m| (m.arg_str(0), m.arg_str(1), m.arg_str(2)))
        .collect();
    assert_eq!(
        seen,
        vec![
            (n.to_string(), bn.clone(), String::new()),
            (bn.clone(), bn, String::new()),
        ]
    );
    let c = h.client();
    h.driver(c, "GetNameOwner", &s(n))
        .expect_error(err::NAME_HAS_NO_OWNER);
}

#[test]
fn new_name_signal_order_for_the_owner() {
    let mut h = Harness::new();
    let a = h.client();
    let an = h.unique(a);
    h.driver(a, "AddMatch", &s("member='NameOwnerChanged'"))
        .expect_return();
    let n = "com.example.Order";
    let serial = h.call(a, DBUS, DBUS_PATH, DBUS_IFACE, "RequestName", &su(n, 0));
    let got = h.recv_all(a);
    let kinds: Vec<String> = got.iter().map(Msg::kind).collect();
    assert_eq!(
        kinds,
        ["signal:NameOwnerChanged", "signal:NameAcquired", "return"],
        "{got:#?}"
    );
    assert_eq!(
        (got[0].arg_str(0), got[0].arg_str(1), got[0].arg_str(2)),
        (n.into(), String::new(), an.clone())
    );
    assert_eq!(got[0].destination, None);
    assert_eq!(got[1].destination.as_deref(), Some(an.as_str()));
    assert_eq!(got[1].arg_str(0), n);
    assert_eq!(got[2].reply_serial, Some(serial));
    assert_eq!(got[2].arg_u32(0), PRIMARY_OWNER);
    // Release: NameOwnerChanged then NameLost, then the reply.
    let serial = h.call(a, DBUS, DBUS_PATH, DBUS_IFACE, "ReleaseName", &s(n));
    let got = h.recv_all(a);
    let kinds: Vec<String> = got.iter().map(Msg::kind).collect();
    assert_eq!(
        kinds,
        ["signal:NameLost", "signal:NameOwnerChanged", "return"],
        "{got:#?}"
    );
    assert_eq!((got[1].arg_str(1), got[1].arg_str(2)), (an, String::new()));
    assert_eq!(got[2].reply_serial, Some(serial));
    assert_eq!(got[2].arg_u32(0), RELEASED);
}

#[test]
fn replacement_signal_order_seen_by_a_monitor() {
    let mut h = Harness::new();
    let mon = monitor(&mut h);
    let (a, c) = (h.client(), h.client());
    let (an, cn) = (h.unique(a), h.unique(c));
    let n = "com.example.Swap";
    assert_eq!(request(&mut h, a, n, ALLOW_REPLACEMENT), PRIMARY_OWNER);
    assert_eq!(
        name_signals(&mut h, mon, n),
        vec![
            format!("NameOwnerChanged(*|,{an})"),
            format!("NameAcquired({an}|)"),
        ]
    );
    assert_eq!(request(&mut h, c, n, REPLACE_EXISTING), PRIMARY_OWNER);
    assert_eq!(
        name_signals(&mut h, mon, n),
        vec![
            format!("NameLost({an}|)"),
            format!("NameOwnerChanged(*|{an},{cn})"),
            format!("NameAcquired({cn}|)"),
        ]
    );
    // Release by the new owner hands the name back to a (queued behind it).
    assert_eq!(release(&mut h, c, n), RELEASED);
    assert_eq!(
        name_signals(&mut h, mon, n),
        vec![
            format!("NameLost({cn}|)"),
            format!("NameOwnerChanged(*|{cn},{an})"),
            format!("NameAcquired({an}|)"),
        ]
    );
}

#[test]
fn list_queued_owners_errors_and_special_names() {
    let mut h = Harness::new();
    let a = h.client();
    let e = h
        .driver(a, "ListQueuedOwners", &s("com.example.Nobody"))
        .expect_error(err::NAME_HAS_NO_OWNER);
    assert_eq!(
        e.arg_str(0),
        "Could not get owner of name 'com.example.Nobody': no such name"
    );
    assert_eq!(queued(&mut h, a, DBUS), vec![DBUS.to_string()]);
    let me = h.unique(a);
    assert_eq!(queued(&mut h, a, &me), vec![me.clone()]);
    h.driver(a, "ListQueuedOwners", &s(":1.9999"))
        .expect_error(err::NAME_HAS_NO_OWNER);
}

#[test]
fn names_of_a_departed_owner_are_all_released() {
    let mut h = Harness::new();
    let (a, b) = (h.client(), h.client());
    for n in ["com.example.One", "com.example.Two"] {
        assert_eq!(request(&mut h, a, n, 0), PRIMARY_OWNER);
    }
    assert_eq!(request(&mut h, a, "com.example.Three", 0), PRIMARY_OWNER);
    assert_eq!(request(&mut h, b, "com.example.Three", 0), IN_QUEUE);
    h.disconnect(a);
    let names = h
        .driver(b, "ListNames", &empty())
        .expect_return()
        .arg_strs(0);
    assert!(
        !names
            .iter()
            .any(|n| n == "com.example.One" || n == "com.example.Two"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "com.example.Three"));
    assert_eq!(owner(&mut h, b, "com.example.Three"), h.unique(b));
    assert_eq!(queued(&mut h, b, "com.example.Three"), vec![h.unique(b)]);
}

/// NameOwnerChanged is matched before it is marshalled (nobody listening: nothing built),
/// so every key a rule can put on it must still select it: type, sender, path, interface,
/// member, argN, argNpath, arg0namespace, path_namespace; and a rule on another value must not.
#[test]
fn name_owner_changed_matches_rules_on_every_key_before_it_is_built() {
    let mut h = Harness::new();
    let subs: Vec<Client> = (0..7).map(|_| h.client()).collect();
    let last: u64 = h.unique(subs[6])[3..].parse().unwrap();
    let next = format!(":1.{}", last + 1);
    let matching = [
        "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'".to_owned(),
        format!("member='NameOwnerChanged',arg0='{next}'"),
        format!("member='NameOwnerChanged',arg2='{next}'"),
        format!("member='NameOwnerChanged',arg1='',arg2='{next}'"),
        format!("member='NameOwnerChanged',arg0path='{next}'"),
        "member='NameOwnerChanged',path_namespace='/org/freedesktop'".to_owned(),
    ];
    let other = [
        "member='NameOwnerChanged',arg0='com.example.Nobody'".to_owned(),
        format!("member='NameOwnerChanged',arg1='{next}',arg2='{next}'"),
        "member='NameOwnerChanged',arg3=''".to_owned(),
        "member='NameOwnerChanged',arg0namespace='com.example'".to_owned(),
        "member='NameOwnerChanged',sender='com.example.Nobody'".to_owned(),
        "member='NameOwnerChanged',path='/'".to_owned(),
    ];
    for (c, r) in subs.iter().zip(&matching) {
        h.driver(*c, "AddMatch", &s(r)).expect_return();
    }
    let no = subs[6];
    for r in &other {
        h.driver(no, "AddMatch", &s(r)).expect_return();
    }
    for c in &subs {
        h.recv_all(*c);
    }
    let newcomer = h.client();
    assert_eq!(h.unique(newcomer), next);
    for c in &subs[..6] {
        let got = h.recv_all(*c);
        assert!(
            got.iter().any(|m| m.is_driver_signal("NameOwnerChanged")
                && m.arg_str(0) == next
                && m.arg_str(1).is_empty()
                && m.arg_str(2) == next),
            "{got:#?}"
        );
    }
    h.disconnect(newcomer);
    let got = h.recv_all(subs[0]);
    assert!(
        got.iter().any(|m| m.is_driver_signal("NameOwnerChanged")
            && m.arg_str(1) == next
            && m.arg_str(2).is_empty()),
        "{got:#?}"
    );
    let got = h.recv_all(no);
    assert!(got.is_empty(), "{got:#?}");
}
