//! Name ownership: RequestName/ReleaseName reply codes, queueing and
//! replacement, ListQueuedOwners, and the NameOwnerChanged / NameAcquired /
//! NameLost signals (seen by a raw subscriber and by dbus-monitor).

mod common;

use common::*;

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

fn queued(c: &mut RawConn, name: &str) -> Vec<String> {
    c.driver("ListQueuedOwners", &[s(name)])
        .expect_return()
        .arg_strs(0)
}

fn owner(c: &mut RawConn, name: &str) -> String {
    c.driver("GetNameOwner", &[s(name)])
        .expect_return()
        .arg_str(0)
        .to_string()
}

#[test]
fn request_name_codes() {
    let bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let n = "com.example.Codes";
    assert_eq!(a.request_name(n, 0), PRIMARY_OWNER);
    assert_eq!(a.request_name(n, 0), ALREADY_OWNER);
    assert_eq!(b.request_name(n, DO_NOT_QUEUE), EXISTS);
    assert_eq!(b.request_name(n, 0), IN_QUEUE);
    assert_eq!(
        queued(&mut a, n),
        vec![a.unique().to_string(), b.unique().to_string()]
    );
    // Asking again while queued keeps IN_QUEUE.
    assert_eq!(b.request_name(n, 0), IN_QUEUE);
    // DO_NOT_QUEUE while queued removes b from the queue.
    assert_eq!(b.request_name(n, DO_NOT_QUEUE), EXISTS);
    assert_eq!(queued(&mut a, n), vec![a.unique().to_string()]);
}

#[test]
fn request_name_invalid_names() {
    let bus = TestBus::start();
    let mut a = bus.client();
    for bad in [
        ":1.42",
        "org.freedesktop.DBus",
        "no_dots",
        "a..b",
        "1abc.def",
        "",
    ] {
        a.driver("RequestName", &[s(bad), Arg::U32(0)])
            .expect_error("org.freedesktop.DBus.Error.InvalidArgs");
    }
    for bad in [":1.42", "org.freedesktop.DBus", "not valid"] {
        a.driver("ReleaseName", &[s(bad)])
            .expect_error("org.freedesktop.DBus.Error.InvalidArgs");
    }
}

#[test]
fn release_name_codes_and_queue_promotion() {
    let bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let mut c = bus.client();
    let n = "com.example.Release";
    assert_eq!(a.release_name(n), NON_EXISTENT);
    assert_eq!(a.request_name(n, 0), PRIMARY_OWNER);
    assert_eq!(b.request_name(n, 0), IN_QUEUE);
    assert_eq!(c.release_name(n), NOT_OWNER);
    // b leaves the queue silently.
    assert_eq!(b.release_name(n), RELEASED);
    assert_eq!(queued(&mut c, n), vec![a.unique().to_string()]);
    assert_eq!(b.request_name(n, 0), IN_QUEUE);
    assert_eq!(c.request_name(n, 0), IN_QUEUE);
    // Primary releases → next in queue (b) becomes owner and gets NameAcquired.
    assert_eq!(a.release_name(n), RELEASED);
    assert_eq!(owner(&mut c, n), b.unique());
    let (_, got) = b.recv_until(TIMEOUT, |m| {
        m.is_driver_signal("NameAcquired") && m.arg_str(0) == n
    });
    assert!(got.is_some(), "b did not get NameAcquired");
    assert_eq!(
        queued(&mut c, n),
        vec![b.unique().to_string(), c.unique().to_string()]
    );
}

#[test]
fn replacement_rules() {
    let bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let mut c = bus.client();
    let n = "com.example.Replace";
    // a does not allow replacement: b's REPLACE_EXISTING only queues it.
    assert_eq!(a.request_name(n, 0), PRIMARY_OWNER);
    assert_eq!(b.request_name(n, REPLACE_EXISTING), IN_QUEUE);
    assert_eq!(b.request_name(n, REPLACE_EXISTING | DO_NOT_QUEUE), EXISTS);
    assert_eq!(owner(&mut c, n), a.unique());
    // a now allows replacement (ALREADY_OWNER updates the stored flags).
    assert_eq!(a.request_name(n, ALLOW_REPLACEMENT), ALREADY_OWNER);
    assert_eq!(c.request_name(n, REPLACE_EXISTING), PRIMARY_OWNER);
    assert_eq!(owner(&mut b, n), c.unique());
    // a lost the name (NameLost) and moved to position 2.
    let (_, lost) = a.recv_until(TIMEOUT, |m| {
        m.is_driver_signal("NameLost") && m.arg_str(0) == n
    });
    assert!(lost.is_some(), "a did not get NameLost");
    let q = queued(&mut b, n);
    assert_eq!(q.first().map(String::as_str), Some(c.unique()), "{q:?}");
    assert_eq!(q.get(1).map(String::as_str), Some(a.unique()), "{q:?}");
    // An owner replaced with DO_NOT_QUEUE leaves the queue entirely.
    let m = "com.example.Replace2";
    assert_eq!(
        a.request_name(m, ALLOW_REPLACEMENT | DO_NOT_QUEUE),
        PRIMARY_OWNER
    );
    assert_eq!(b.request_name(m, REPLACE_EXISTING), PRIMARY_OWNER);
    assert_eq!(queued(&mut c, m), vec![b.unique().to_string()]);
}

#[test]
fn disconnect_releases_names_to_queue() {
    let bus = TestBus::start();
    let mut a = bus.client();
    let mut b = bus.client();
    let n = "com.example.Disconnect";
    assert_eq!(a.request_name(n, 0), PRIMARY_OWNER);
    assert_eq!(b.request_name(n, 0), IN_QUEUE);
    drop(a);
    let (_, got) = b.recv_until(TIMEOUT, |m| {
        m.is_driver_signal("NameAcquired") && m.arg_str(0) == n
    });
    assert!(got.is_some(), "queued owner did not inherit the name");
    assert_eq!(owner(&mut b, n), b.unique());
}

#[test]
fn name_owner_changed_seen_by_subscriber_in_order() {
    let bus = TestBus::start();
    let mut sub = bus.client();
    sub.add_match("type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'");
    let mut a = bus.client();
    let a_name = a.unique().to_string();
    let n = "com.example.Noc";
    // Ordering for a new name: NameOwnerChanged, NameAcquired, then the reply.
    let serial = a.call(
        Some(DBUS),
        DBUS_PATH,
        Some(DBUS),
        "RequestName",
        &[s(n), Arg::U32(0)],
    );
    let mut order = Vec::new();
    loop {
        let m = a.recv(TIMEOUT).expect("message for a");
        if m.reply_serial == Some(serial) {
            assert_eq!(m.arg_u32(0), PRIMARY_OWNER);
            order.push("reply".to_string());
            break;
        }
        if m.is_driver_signal("NameAcquired") && m.arg_str(0) == n {
            order.push("acquired".into());
        }
    }
    assert_eq!(order, vec!["acquired", "reply"]);

    let is_noc = |m: &RawMsg, old: &str, new: &str| {
        m.is_driver_signal("NameOwnerChanged")
            && m.arg_str(0) == n
            && m.arg_str(1) == old
            && m.arg_str(2) == new
    };
    let (_, got) = sub.recv_until(TIMEOUT, |m| is_noc(m, "", &a_name));
    let got = got.expect("NameOwnerChanged(n, '', a)");
    assert_eq!(got.destination, None, "NameOwnerChanged is a broadcast");
    assert_eq!(got.path.as_deref(), Some(DBUS_PATH));

    assert_eq!(a.release_name(n), RELEASED);
    let (_, got) = sub.recv_until(TIMEOUT, |m| is_noc(m, &a_name, ""));
    assert!(got.is_some(), "NameOwnerChanged(n, a, '') missing");

    // The unique name's own NameOwnerChanged when a disconnects.
    drop(a);
    let (_, got) = sub.recv_until(TIMEOUT, |m| {
        m.is_driver_signal("NameOwnerChanged")
            && m.arg_str(0) == a_name
            && m.arg_str(1) == a_name
            && m.arg_str(2).is_empty()
    });
    assert!(got.is_some(), "unique-name NameOwnerChanged missing");
}

#[test]
fn dbus_monitor_sees_hello_from_the_assigned_name() {
    // dbus-daemon shows a captured Hello with the unique name it assigns as SENDER.
    let bus = TestBus::start();
    let mut mon = bus.monitor();
    let a = bus.client();
    let want = format!("sender={} -> destination=org.freedesktop.DBus", a.unique());
    let block = mon.wait_for(TIMEOUT, |b| {
        b.starts_with("method call") && b.contains("member=Hello") && b.contains(&want)
    });
    assert!(block.is_some(), "monitor saw {:#?}", mon.messages());
    // `wait_for` saw a probe sent after it: no Hello was shown without its name.
    let unnamed: Vec<String> = mon
        .messages()
        .into_iter()
        .filter(|b| b.contains(":not.active.yet"))
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:#?}");
}

#[test]
fn name_owner_changed_seen_by_dbus_monitor() {
    let bus = TestBus::start();
    let mut mon = bus.monitor();
    let mut a = bus.client();
    assert_eq!(a.request_name("com.example.Monitored", 0), PRIMARY_OWNER);
    let block = mon.wait_for(TIMEOUT, |b| {
        b.contains("member=NameOwnerChanged") && b.contains("string \"com.example.Monitored\"")
    });
    let block = block.unwrap_or_else(|| panic!("not seen; monitor saw {:#?}", mon.messages()));
    assert!(
        block.contains(&format!("string \"{}\"", a.unique())),
        "{block}"
    );
    assert!(block.contains("sender=org.freedesktop.DBus"), "{block}");
    // The RequestName call itself is captured too.
    assert!(mon
        .wait_for(TIMEOUT, |b| b.starts_with("method call")
            && b.contains("member=RequestName")
            && b.contains("com.example.Monitored"))
        .is_some());
}

#[test]
fn request_name_via_cli_tools() {
    let bus = TestBus::start();
    let mut b = bus.client();
    b.watch_departures();
    let out = bus.dbus_send(&[
        "--print-reply",
        "--dest=org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus.RequestName",
        "string:com.example.DbusSend",
        "uint32:0",
    ]);
    assert!(out.ok().contains("uint32 1"), "{out:#?}");
    let mut a = bus.client();
    assert_eq!(a.request_name("com.example.Held", 0), PRIMARY_OWNER);
    // gdbus: another connection asking with DO_NOT_QUEUE gets EXISTS (3).
    let out = bus.gdbus_driver("RequestName", &["com.example.Held", "4"]);
    assert_eq!(out.ok().trim(), "(uint32 3,)");
    let out = bus.gdbus_driver("ReleaseName", &["com.example.Held"]);
    assert_eq!(out.ok().trim(), "(uint32 3,)");
    let out = bus.gdbus_driver("ReleaseName", &["com.example.NobodyHasThis"]);
    assert_eq!(out.ok().trim(), "(uint32 2,)");
    let out = bus.busctl(&[
        "call",
        DBUS,
        DBUS_PATH,
        DBUS,
        "ListQueuedOwners",
        "s",
        "com.example.Held",
    ]);
    assert_eq!(out.ok().trim(), format!("as 1 \"{}\"", a.unique()));
    // After dbus-send exited, its name is gone again: the bus announces that (rather than
    // asking right away, before the bus may have seen dbus-send hang up).
    let (_, released) = b.recv_until(TIMEOUT, |m| {
        m.is_driver_signal("NameOwnerChanged")
            && m.arg_str(0) == "com.example.DbusSend"
            && m.arg_str(2).is_empty()
    });
    assert!(released.is_some(), "com.example.DbusSend never released");
    assert!(!b
        .driver("NameHasOwner", &[s("com.example.DbusSend")])
        .expect_return()
        .arg_bool(0));
}
