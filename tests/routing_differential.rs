//! Routing side by side with dbus-daemon: small scenarios between three clients (`a` sends,
//! `b` owns `com.example.B`, `c` watches with its own match rules) played on sluicebus and on
//! the reference dbus-daemon, and what each client received compared: message types,
//! members and error names, paths, senders and destinations by role, whether a reply
//! carries a reply serial. Nothing is waited for: each action ends with its sender's round trip
//! to the driver before the next one starts (so the order a watcher sees is fixed), and the
//! transcript is each client's messages before its own round-trip sentinel. Any difference fails and prints both transcripts.

mod common;

use common::*;
use std::path::Path;

const REFERENCE: &str = "/usr/bin/dbus-daemon";

/// The three clients of one scenario on one bus.
struct Peers {
    a: RawConn,
    b: RawConn,
    c: RawConn,
    /// `c` became a monitor ([`Peers::monitor`]): it may not send, so its transcript ends
    /// at a broadcast `End` from `a` instead of at its own round trip.
    c_monitors: bool,
}

impl Peers {
    fn new(bus: &TestBus) -> Peers {
        let a = bus.client();
        let mut b = bus.client();
        assert_eq!(b.request_name("com.example.B", 0), 1);
        let c = bus.client();
        Peers {
            a,
            b,
            c,
            c_monitors: false,
        }
    }

    /// Make `c` a monitor of everything (BecomeMonitor with no rules).
    fn monitor(&mut self) {
        let serial = self.c.send(MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            path: Some(DBUS_PATH),
            interface: Some("org.freedesktop.DBus.Monitoring"),
            member: Some("BecomeMonitor"),
            destination: Some(DBUS),
            signature: Some("asu"),
            args: &[Arg::Array(vec![]), Arg::U32(0)],
            ..Default::default()
        });
        self.c.wait_reply(serial).expect_return();
        self.c_monitors = true;
    }

    /// A method call from `from` to `dest` (member `M`, path /p, interface com.example.I).
    /// Like every action here, it ends with the sender's round trip to the driver, so the
    /// bus has routed it before anyone else acts: the order others see is then fixed.
    fn call(from: &mut RawConn, dest: &str, flags: u8) -> u32 {
        let serial = from.send(MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            flags,
            path: Some("/p"),
            interface: Some("com.example.I"),
            member: Some("M"),
            destination: Some(dest),
            ..Default::default()
        });
        from.barrier();
        serial
    }

    /// A reply (or error) from `from` to `dest` for `serial`.
    fn reply(from: &mut RawConn, dest: &str, serial: u32, error: bool) {
        from.send(MsgSpec {
            msg_type: if error {
                msg_type::ERROR
            } else {
                msg_type::METHOD_RETURN
            },
            error_name: error.then_some("com.example.Error.Nope"),
            reply_serial: Some(serial),
            destination: Some(dest),
            ..Default::default()
        });
        from.barrier();
    }

    /// A signal from `from` (member `member`), to `dest` or broadcast.
    fn signal(from: &mut RawConn, dest: Option<&str>, member: &str) {
        from.send(MsgSpec {
            msg_type: msg_type::SIGNAL,
            path: Some("/p"),
            interface: Some("com.example.I"),
            member: Some(member),
            destination: dest,
            ..Default::default()
        });
        from.barrier();
    }

    /// Everything each client received, after `a`'s sentinel and then each one's own.
    fn transcript(&mut self) -> String {
        self.a.barrier();
        self.b.barrier();
        if !self.c_monitors {
            self.c.barrier();
        }
        let names = [
            (self.a.unique().to_string(), "a"),
            (self.b.unique().to_string(), "b"),
            (self.c.unique().to_string(), "c"),
        ];
        let role = |v: &Option<String>| -> String {
            match v {
                None => "-".into(),
                Some(v) => names
                    .iter()
                    .find(|(u, _)| u == v)
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_else(|| {
                        if v.starts_with(':') {
                            ":?".into()
                        } else {
                            v.clone()
                        }
                    }),
            }
        };
        let mut out = String::new();
        let mut received = Vec::new();
        received.push(("a", self.a.sync()));
        received.push(("b", self.b.sync()));
        if self.c_monitors {
            Peers::signal(&mut self.a, None, "End");
            let (seen, end) = self
                .c
                .recv_until(TIMEOUT, |m| m.member.as_deref() == Some("End"));
            assert!(end.is_some(), "the monitor never saw the End signal");
            received.push(("c", seen));
        } else {
            received.push(("c", self.c.sync()));
        }
        for (who, messages) in received {
            for m in messages {
                // The driver's name announcements depend on set-up order only.
                if m.is_driver_signal("NameAcquired") || m.is_driver_signal("NameOwnerChanged") {
                    continue;
                }
                let kind = match m.msg_type {
                    msg_type::METHOD_CALL => "call",
                    msg_type::METHOD_RETURN => "return",
                    msg_type::ERROR => "error",
                    msg_type::SIGNAL => "signal",
                    _ => "?",
                };
                out += &format!(
                    "{who} <- {kind} {} {} from {} to {}{}\n",
                    m.member
                        .as_deref()
                        .or(m.error_name.as_deref())
                        .unwrap_or("-"),
                    m.path.as_deref().unwrap_or("-"),
                    role(&m.sender),
                    role(&m.destination),
                    if m.reply_serial.is_some() {
                        " (reply)"
                    } else {
                        ""
                    },
                );
            }
        }
        out
    }
}

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
    if !Path::new(REFERENCE).exists() {
        panic!("{REFERENCE} is missing (tools/test installs dbus-daemon)");
    }
    let ours = TestBus::with_daemon(&daemon_path(), &session_config(""));
    let theirs = TestBus::with_daemon(Path::new(REFERENCE), &session_config(""));
    let mut diffs = Vec::new();
    let show = std::env::var_os("ROUTING_DIFFERENTIAL_TABLE").is_some();
    for (name, play) in scenarios() {
        let run = |bus: &TestBus| {
            let mut p = Peers::new(bus);
            play(&mut p, bus);
            p.transcript()
        };
        let x = run(&ours);
        let y = run(&theirs);
        if show {
            eprintln!("== {name}\n-- sluicebus\n{x}-- dbus-daemon\n{y}");
        }
        if x != y {
            diffs.push(format!("== {name}\n-- sluicebus\n{x}-- dbus-daemon\n{y}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} scenarios differ:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
