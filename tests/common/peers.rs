//! Three clients for scenario tests played on two buses side by side (the differential
//! tests): `a` sends, `b` owns `com.example.B`, `c` watches. Each action ends with its
//! sender's round trip to the driver, so the order a watcher sees is fixed, and
//! [`Peers::transcript`] describes what each one received in bus-independent words.

use super::*;

/// The three clients of one scenario on one bus.
pub struct Peers {
    /// The sender.
    pub a: RawConn,
    /// The owner of com.example.B.
    pub b: RawConn,
    /// The watcher.
    pub c: RawConn,
    /// `c` became a monitor ([`Peers::monitor`]): it may not send, so its transcript ends
    /// at a broadcast `End` from `a` instead of at its own round trip.
    c_monitors: bool,
}

impl Peers {
    pub fn new(bus: &TestBus) -> Peers {
        Peers::try_new(bus).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Peers::new`], or what `b` got instead of com.example.B (a policy may refuse
    /// it).
    pub fn try_new(bus: &TestBus) -> Result<Peers, String> {
        let a = bus.client();
        let mut b = bus.client();
        let r = b.driver("RequestName", &[s("com.example.B"), Arg::U32(0)]);
        if r.msg_type != msg_type::METHOD_RETURN || r.args.first() != Some(&Arg::U32(1)) {
            return Err(format!(
                "b did not get com.example.B: {:?} {:?}",
                r.error_name, r.args
            ));
        }
        let c = bus.client();
        Ok(Peers {
            a,
            b,
            c,
            c_monitors: false,
        })
    }

    /// Make `c` a monitor of everything (BecomeMonitor with no rules).
    pub fn monitor(&mut self) {
        self.monitor_with(&[]);
    }

    /// Make `c` a monitor of what `rules` match (none: everything). A rule for the `End`
    /// signal that closes its transcript is added to a non-empty list.
    pub fn monitor_with(&mut self, rules: &[&str]) {
        let mut list: Vec<Arg> = rules.iter().map(|r| s(r)).collect();
        if !list.is_empty() {
            list.push(s("member='End'"));
        }
        let serial = self.c.send(MsgSpec {
            msg_type: msg_type::METHOD_CALL,
            path: Some(DBUS_PATH),
            interface: Some("org.freedesktop.DBus.Monitoring"),
            member: Some("BecomeMonitor"),
            destination: Some(DBUS),
            signature: Some("asu"),
            args: &[Arg::Array(list), Arg::U32(0)],
            ..Default::default()
        });
        self.c.wait_reply(serial).expect_return();
        self.c_monitors = true;
    }

    /// A method call from `from` to `dest` (member `M`, path /p, interface com.example.I).
    /// Like every action here, it ends with the sender's round trip to the driver, so the
    /// bus has routed it before anyone else acts: the order others see is then fixed.
    pub fn call(from: &mut RawConn, dest: &str, flags: u8) -> u32 {
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
    pub fn reply(from: &mut RawConn, dest: &str, serial: u32, error: bool) {
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
    pub fn signal(from: &mut RawConn, dest: Option<&str>, member: &str) {
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
    pub fn transcript(&mut self) -> String {
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
                    "{who} <- {kind} {} {} from {} to {}{}{}\n",
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
                    if m.flags != 0 {
                        format!(" flags={:#x}", m.flags)
                    } else {
                        String::new()
                    },
                );
            }
        }
        out
    }
}
