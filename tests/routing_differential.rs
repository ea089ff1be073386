//! Routing side by side with dbus-daemon: small scenarios between three clients (`a` sends,
//! `b` owns `com.example.B`, `c` watches with its own match rules) played on sluicebus and on
//! the reference dbus-daemon, and what each client received compared: message types,
//! members and error names, paths, senders and destinations by role, whether a reply
//! carries a reply serial. Nothing is waited for: each action ends with its sender's round trip
//! to the driver before the next one starts (so the order a watcher sees is fixed), and the
//! transcript is each client's messages before its own round-trip sentinel. Any difference
//! but the one listed ([`NO_REPLY_TO_DRIVER`]) fails and prints both transcripts.

mod common;

use common::peers::Peers;
use common::*;

/// The one scenario answered differently on purpose (see the test).
const NO_REPLY_TO_DRIVER: &str = "a driver call with NO_REPLY_EXPECTED";

type Scenario = (&'static str, fn(&mut Peers, &TestBus));

fn scenarios() -> Vec<Scenario> {
    vec![
        ("call by name, return", |p, _| {
            let s = Peers::call(&mut p.a, "com.example.B", 0);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.b, &a, s, false);
        }),
        ("call by unique name, error reply", |p, _| {
            let b = p.b.unique().to_string();
            let s = Peers::call(&mut p.a, &b, 0);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.b, &a, s, true);
        }),
        ("reply sent twice", |p, _| {
            let s = Peers::call(&mut p.a, "com.example.B", 0);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.b, &a, s, false);
            Peers::reply(&mut p.b, &a, s, false);
        }),
        ("reply by someone else", |p, _| {
            let s = Peers::call(&mut p.a, "com.example.B", 0);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.c, &a, s, false);
        }),
        ("unrequested return", |p, _| {
            let b = p.b.unique().to_string();
            Peers::reply(&mut p.a, &b, 4242, false);
        }),
        ("unrequested error", |p, _| {
            let b = p.b.unique().to_string();
            Peers::reply(&mut p.a, &b, 4242, true);
        }),
        ("reply to a NO_REPLY_EXPECTED call", |p, _| {
            let s = Peers::call(&mut p.a, "com.example.B", 1);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.b, &a, s, false);
        }),
        ("call to an unowned name", |p, _| {
            Peers::call(&mut p.a, "com.example.Nobody", 0);
        }),
        ("call to an unowned name, NO_REPLY_EXPECTED", |p, _| {
            Peers::call(&mut p.a, "com.example.Nobody", 1);
        }),
        ("call to an unowned name, NO_AUTO_START", |p, _| {
            Peers::call(&mut p.a, "com.example.Nobody", 2);
        }),
        ("call to a unique name nobody has", |p, _| {
            Peers::call(&mut p.a, ":1.9999", 0);
        }),
        ("call to itself", |p, _| {
            let a = p.a.unique().to_string();
            Peers::call(&mut p.a, &a, 0);
        }),
        ("call without destination", |p, _| {
            p.a.send(MsgSpec {
                msg_type: msg_type::METHOD_CALL,
                path: Some("/p"),
                interface: Some("com.example.I"),
                member: Some("M"),
                ..Default::default()
            });
            p.a.barrier();
        }),
        ("broadcast signal, no rules", |p, _| {
            Peers::signal(&mut p.a, None, "S");
        }),
        ("broadcast signal, b and c match it", |p, _| {
            p.b.add_match("type='signal',member='S'");
            p.c.add_match("interface='com.example.I'");
            Peers::signal(&mut p.a, None, "S");
        }),
        ("unicast signal to b, no rules", |p, _| {
            let b = p.b.unique().to_string();
            Peers::signal(&mut p.a, Some(&b), "S");
        }),
        ("unicast signal to b by name, b and c match it", |p, _| {
            p.b.add_match("member='S'");
            p.c.add_match("member='S'");
            Peers::signal(&mut p.a, Some("com.example.B"), "S");
        }),
        ("unicast signal, c eavesdrops", |p, _| {
            p.c.add_match("member='S',eavesdrop='true'");
            Peers::signal(&mut p.a, Some("com.example.B"), "S");
        }),
        ("call, c matches calls without eavesdropping", |p, _| {
            p.c.add_match("type='method_call'");
            Peers::call(&mut p.a, "com.example.B", 0);
        }),
        ("call and return, c eavesdrops on both", |p, _| {
            p.c.add_match("type='method_call',eavesdrop='true'");
            p.c.add_match("type='method_return',eavesdrop='true'");
            let s = Peers::call(&mut p.a, "com.example.B", 0);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.b, &a, s, false);
        }),
        ("signal to the driver", |p, _| {
            Peers::signal(&mut p.a, Some("org.freedesktop.DBus"), "S");
        }),
        ("signal with destination, sender and path rules", |p, _| {
            let a = p.a.unique().to_string();
            p.b.add_match(&format!(
                "sender='{a}',path='/p',destination='com.example.B'"
            ));
            p.c.add_match(&format!("sender='{a}',path_namespace='/'"));
            Peers::signal(&mut p.a, None, "S");
            let b = p.b.unique().to_string();
            Peers::signal(&mut p.a, Some(&b), "S");
        }),
        (
            "c eavesdrops on Hello and RequestName of a new client",
            |p, bus| {
                p.c.add_match("member='Hello',eavesdrop='true'");
                p.c.add_match("member='RequestName',eavesdrop='true'");
                let mut d = bus.client();
                d.request_name("com.example.D", 0);
            },
        ),
        ("replies and errors addressed to the driver", |p, _| {
            Peers::reply(&mut p.a, DBUS, 1, false);
            Peers::reply(&mut p.a, DBUS, 1, true);
        }),
        (NO_REPLY_TO_DRIVER, |p, _| {
            p.a.send(MsgSpec {
                msg_type: msg_type::METHOD_CALL,
                flags: 1,
                path: Some(DBUS_PATH),
                interface: Some(DBUS),
                member: Some("GetId"),
                destination: Some(DBUS),
                ..Default::default()
            });
            p.a.barrier();
        }),
        (
            "flags are relayed: NO_AUTO_START, interactive authorization, unknown bits",
            |p, _| {
                for flags in [2, 4, 0x80, 0x2 | 0x4 | 0x40] {
                    Peers::call(&mut p.a, "com.example.B", flags);
                }
                let b = p.b.unique().to_string();
                p.a.send(MsgSpec {
                    msg_type: msg_type::SIGNAL,
                    flags: 0x80,
                    path: Some("/p"),
                    interface: Some("com.example.I"),
                    member: Some("S"),
                    destination: Some(&b),
                    ..Default::default()
                });
                p.a.barrier();
            },
        ),
        ("monitor: call and return", |p, _| {
            p.monitor();
            let s = Peers::call(&mut p.a, "com.example.B", 0);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.b, &a, s, false);
        }),
        (
            "monitor: call to an unowned name, and with NO_REPLY_EXPECTED",
            |p, _| {
                p.monitor();
                Peers::call(&mut p.a, "com.example.Nobody", 0);
                Peers::call(&mut p.a, "com.example.Nobody", 1);
            },
        ),
        ("monitor: unrequested and duplicate replies", |p, _| {
            p.monitor();
            let b = p.b.unique().to_string();
            Peers::reply(&mut p.a, &b, 4242, false);
            let s = Peers::call(&mut p.a, "com.example.B", 0);
            let a = p.a.unique().to_string();
            Peers::reply(&mut p.b, &a, s, true);
            Peers::reply(&mut p.b, &a, s, true);
        }),
        (
            "monitor: driver calls, good and bad, and a name change",
            |p, _| {
                p.monitor();
                p.a.send(MsgSpec {
                    msg_type: msg_type::METHOD_CALL,
                    path: Some(DBUS_PATH),
                    interface: Some(DBUS),
                    member: Some("AddMatch"),
                    destination: Some(DBUS),
                    args: &[s("type='nonsense'")],
                    ..Default::default()
                });
                p.a.barrier();
                p.a.request_name("com.example.A", 0);
                p.a.release_name("com.example.A");
            },
        ),
        ("monitor: broadcast and unicast signals", |p, _| {
            p.monitor();
            p.b.add_match("member='S'");
            Peers::signal(&mut p.a, None, "S");
            let b = p.b.unique().to_string();
            Peers::signal(&mut p.a, Some(&b), "S");
        }),
        (
            "monitor with rules: signals, one interface, replies, one destination",
            |p, _| {
                p.monitor_with(&[
                    "type='signal',member='S'",
                    "type='method_call',interface='com.example.I',member='M'",
                    "type='method_return'",
                    "type='error',destination='com.example.B'",
                ]);
                let s = Peers::call(&mut p.a, "com.example.B", 0);
                let a = p.a.unique().to_string();
                Peers::reply(&mut p.b, &a, s, false);
                Peers::call(&mut p.a, "com.example.Nobody", 0);
                Peers::signal(&mut p.a, None, "S");
                Peers::signal(&mut p.a, None, "T");
                let b = p.b.unique().to_string();
                Peers::reply(&mut p.a, &b, 4242, true);
            },
        ),
        (
            "monitor with rules naming senders and destinations",
            |p, _| {
                let a = p.a.unique().to_string();
                p.monitor_with(&[
                    &format!("sender='{a}',type='method_call'"),
                    "destination='com.example.B'",
                    "sender='org.freedesktop.DBus',member='NameOwnerChanged'",
                ]);
                Peers::call(&mut p.a, "com.example.B", 0);
                let s = Peers::call(&mut p.b, &a, 0);
                Peers::reply(&mut p.a, p.b.unique(), s, false);
                p.a.request_name("com.example.A", 0);
            },
        ),
        ("monitor: calls without destination", |p, _| {
            p.monitor();
            for (iface, member) in [
                (Some("org.freedesktop.DBus.Peer"), "Ping"),
                (Some("org.freedesktop.DBus.Peer"), "GetMachineId"),
                (Some("org.freedesktop.DBus.Peer"), "Bogus"),
                (None, "Ping"),
                (Some("com.example.I"), "M"),
            ] {
                p.a.send(MsgSpec {
                    msg_type: msg_type::METHOD_CALL,
                    path: Some("/"),
                    interface: iface,
                    member: Some(member),
                    ..Default::default()
                });
                p.a.barrier();
            }
        }),
        ("b leaves after a call, then the caller hears", |p, bus| {
            Peers::call(&mut p.a, "com.example.B", 0);
            let b = std::mem::replace(&mut p.b, bus.client());
            p.c.watch_departures();
            drop(b);
            // The bus has handled the hang-up once it announces it.
            p.c.next_departure();
        }),
    ]
}

#[test]
fn routing_matches_dbus_daemon() {
    let ours = TestBus::with_daemon(&daemon_path(), &session_config(""));
    let theirs = TestBus::with_daemon(&reference_daemon(), &session_config(""));
    let mut table = SideBySide::new("scenarios", "ROUTING_DIFFERENTIAL_TABLE");
    for (name, play) in scenarios() {
        let run = |bus: &TestBus| {
            let mut p = Peers::new(bus);
            play(&mut p, bus);
            p.transcript()
        };
        if name == NO_REPLY_TO_DRIVER {
            // dbus-daemon answers a driver call even when the caller asked for no reply;
            // the specification says the reply should be omitted, and sluicebus omits it
            // (the caller's library would drop it anyway).
            assert_eq!(run(&ours), "", "{name}");
            continue;
        }
        table.check(name, &run(&ours), &run(&theirs));
    }
    table.finish();
}
