//! The whole bus core, several connections at once, driven as the reactor drives it.
//!
//! The input is a script (the framing is in `sluicebus_fuzz::script`, shared with the seed
//! generator): byte 0 picks the configuration, then each step is one op byte (kind in the
//! low 3 bits, connection slot 0-7 in bits 3-5) and its arguments: connect (uid, contained,
//! fd passing, authenticated now or later), authenticate, send bytes (framed with
//! `frame_len` and validated with `Message::parse_framed_cached` and the connection's header
//! cache exactly as `Reactor::process` does; invalid bytes close the connection), read n
//! bytes of the queue (`flushing` +
//! `written`), hang up, advance the virtual clock (`on_timer`), reload the configuration,
//! read everything. After every step the effects are carried out as `Reactor::apply_effects`
//! does, after one turn's release of closed connections' queues (`Bus::reap`, with a budget
//! of a few messages, so that slots are reused while old queues are still being released).
//!
//! Checks besides "no panic", after every step:
//! - `Bus::check_invariants` (queue charges equal the sum of the queued messages' costs,
//!   connection counts, unique names; nothing held once every connection is gone);
//! - no `Flush` or `Close` effect names a connection the reactor no longer has, and
//!   `Unlisten` names an instance that was listening;
//! - every message a client reads parses as a valid message with the fds it carries;
//! - the bus's connection counts agree with the connections the reactor has.
//!
//! At the end every connection hangs up, the closed queues are reaped to the end and the
//! invariants are checked once more (nothing held).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sim::Sim;

fuzz_target!(|data: &[u8]| {
    Sim::run(data);
});

#[path = "../src/script.rs"]
#[allow(dead_code)]
mod script;

mod sim {
    use super::script::{self, SLOTS, UIDS};
    use sluicebus::bus::connection::Credentials;
    use sluicebus::bus::world::{ListenError, SocketName, World};
    use sluicebus::bus::{Bus, BusOptions, Clock, ConnId, Effect, HostFacts};
    use sluicebus::config::{Config, ConfigError};
    use sluicebus::wire::message::{self, HeaderCache, Message, FIXED_HEADER_LEN};
    use std::collections::BTreeSet;
    use std::os::fd::OwnedFd;
    use std::path::{Path, PathBuf};
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    /// Messages of closed connections' queues released per step (the daemon's budget is in
    /// the thousands; the fuzzer's queues hold a few dozen).
    const REAP_PIECE: usize = 3;

    /// An allow-everything session bus with small limits, so that queue, name, rule, reply
    /// and container limits are reached within a few messages.
    const SESSION: &str = r#"<busconfig>
  <type>session</type>
  <listen>unix:tmpdir=/tmp</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <limit name="max_outgoing_bytes">16384</limit>
  <limit name="max_outgoing_unix_fds">6</limit>
  <limit name="max_message_unix_fds">4</limit>
  <limit name="max_names_per_connection">4</limit>
  <limit name="max_match_rules_per_connection">6</limit>
  <limit name="max_replies_per_connection">4</limit>
  <limit name="reply_timeout">5000</limit>
  <limit name="max_containers">4</limit>
  <limit name="max_containers_per_user">3</limit>
  <limit name="max_connections_per_container">3</limit>
  <limit name="max_connections_per_user">6</limit>
</busconfig>
"#;

    /// A system-bus-like policy: deny by default, per-user and per-group exceptions, a
    /// mandatory rule, receive rules, uid 1001 not allowed to connect.
    const SYSTEM: &str = r#"<busconfig>
  <type>system</type>
  <listen>unix:path=/run/sluicebus-fuzz/socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny user="1001"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow own_prefix="org.example"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Containers1"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <allow send_destination="org.example.Service"/>
    <deny receive_interface="org.example.Secret"/>
  </policy>
  <policy group="1000">
    <allow send_interface="org.example.Open"/>
  </policy>
  <policy user="0">
    <allow send_destination="*" eavesdrop="true"/>
    <allow own="*"/>
  </policy>
  <policy context="mandatory">
    <deny send_interface="org.example.Open" send_member="Forbidden"/>
  </policy>
  <limit name="max_outgoing_bytes">32768</limit>
  <limit name="max_message_unix_fds">4</limit>
  <limit name="max_names_per_connection">3</limit>
  <limit name="max_match_rules_per_connection">4</limit>
  <limit name="max_replies_per_connection">3</limit>
  <limit name="reply_timeout">20000</limit>
  <limit name="max_connections_per_container">2</limit>
</busconfig>
"#;

    thread_local! {
        static CONFIGS: [Config; script::CONFIGS] = [SESSION, SYSTEM].map(|x| {
            sluicebus::config::load_from_str(x, Path::new("/fuzz/bus.conf"))
                .unwrap_or_else(|e| panic!("fuzz config does not parse: {e}"))
        });
        static START: Instant = Instant::now();
        static DEV_NULL: std::fs::File = std::fs::File::open("/dev/null").expect("/dev/null");
        /// `SLUICEBUS_FUZZ_TRACE=1`: print every message a client reads and every close, to
        /// see what an input (a seed, a crash) does.
        static TRACE: bool = std::env::var_os("SLUICEBUS_FUZZ_TRACE").is_some();
    }

    /// The world the bus sees: container sockets are names in a table; ReloadConfig gets
    /// the configuration in `next`.
    struct FuzzWorld {
        listening: BTreeSet<u64>,
        next: Option<Config>,
    }

    impl World for FuzzWorld {
        fn peer_pidfd(&self, _id: ConnId) -> Option<OwnedFd> {
            None
        }
        fn listen_container(
            &mut self,
            instance: u64,
            _provided: Option<OwnedFd>,
        ) -> Result<(SocketName, String), ListenError> {
            self.listening.insert(instance);
            let path = PathBuf::from(format!("/fuzz/containers/dbus-{instance}"));
            Ok((SocketName::Path(path), format!("{instance:032x}")))
        }
        fn load_config(&mut self) -> Result<Config, ConfigError> {
            Ok(self
                .next
                .take()
                .unwrap_or_else(|| CONFIGS.with(|c| c[0].clone())))
        }
    }

    /// One client connection, as the reactor keeps it.
    struct Conn {
        id: ConnId,
        uid: u32,
        unix_fd: bool,
        authenticated: bool,
        /// Bytes received and not yet framed into a message.
        inbuf: Vec<u8>,
        /// The bus said not to read it (`Bus::may_read`) and has not resumed it yet.
        paused: bool,
        /// What was last reported to `Bus::receiving` (`Reactor::report_partial`).
        partial: usize,
        /// The connection's last valid header, as the reactor keeps it.
        header_cache: HeaderCache,
    }

    /// The bus, its world, the reactor's connection table and the virtual clock.
    pub struct Sim {
        bus: Bus,
        world: FuzzWorld,
        now: Instant,
        config: usize,
        slots: [Option<Conn>; SLOTS],
    }

    /// Reads the script.
    struct Input<'a>(&'a [u8]);

    impl Input<'_> {
        fn byte(&mut self) -> u8 {
            match self.0.split_first() {
                Some((&b, rest)) => {
                    self.0 = rest;
                    b
                }
                None => 0,
            }
        }
        fn u16(&mut self) -> u16 {
            u16::from_le_bytes([self.byte(), self.byte()])
        }
        fn take(&mut self, n: usize) -> &[u8] {
            let (a, b) = self.0.split_at(n.min(self.0.len()));
            self.0 = b;
            a
        }
    }

    impl Sim {
        /// Run one script.
        pub fn run(data: &[u8]) {
            let mut input = Input(data);
            let config = input.byte() as usize % script::CONFIGS;
            let now = START.with(|s| *s);
            let host = HostFacts {
                daemon_uid: UIDS[3],
                ..HostFacts::fixed(now)
            };
            let cfg = CONFIGS.with(|c| c[config].clone());
            let mut sim = Sim {
                bus: Bus::new(cfg, BusOptions::default(), host),
                world: FuzzWorld {
                    listening: BTreeSet::new(),
                    next: None,
                },
                now,
                config,
                slots: Default::default(),
            };
            while !input.0.is_empty() {
                let op = input.byte();
                let slot = usize::from(op >> 3) & 7;
                match op & 7 {
                    script::CONNECT => {
                        let a = input.byte();
                        sim.connect(slot, a);
                    }
                    script::AUTH => sim.auth(slot),
                    script::SEND => {
                        let n = input.u16() as usize;
                        let bytes = input.take(n);
                        sim.send(slot, bytes);
                    }
                    script::READ => {
                        let n = input.u16();
                        sim.read(slot, if n == 0xffff { usize::MAX } else { n.into() });
                    }
                    script::HANGUP => sim.hangup(slot),
                    script::ADVANCE => {
                        let t = u64::from(input.byte());
                        sim.now += Duration::from_millis(t * t * 4);
                        sim.bus.set_clock(Clock::fixed(sim.now));
                        sim.bus.on_timer(sim.now);
                    }
                    script::RELOAD => {
                        sim.config = (sim.config + 1) % script::CONFIGS;
                        sim.world.next = Some(CONFIGS.with(|c| c[sim.config].clone()));
                        sim.bus
                            .reload_from_disk(&mut sim.world)
                            .expect("reload from memory");
                    }
                    _ => {
                        for s in 0..SLOTS {
                            sim.read(s, usize::MAX);
                        }
                    }
                }
                sim.pump();
                sim.check();
            }
            for s in 0..SLOTS {
                sim.hangup(s);
                sim.pump();
            }
            while sim.bus.reap(REAP_PIECE) {
                sim.pump();
            }
            sim.pump();
            sim.check();
            assert_eq!(
                sim.bus.queued_bytes(),
                0,
                "held after every queue was reaped"
            );
            assert_eq!(sim.bus.incomplete_count() + sim.bus.completed_count(), 0);
        }

        fn connect(&mut self, slot: usize, a: u8) {
            self.hangup(slot);
            let uid = UIDS[usize::from(a & 3)];
            let creds = Credentials {
                uid: Some(uid),
                pid: Some(10_000 + uid),
                gids: Some(vec![uid]),
                security_label: None,
            };
            let id = if a & 4 != 0 && !self.world.listening.is_empty() {
                let k = usize::from(a >> 3 & 7) % self.world.listening.len();
                let n = *self.world.listening.iter().nth(k).expect("k < len");
                match self.bus.accept_contained(creds, n) {
                    Some(id) => id,
                    // The reactor drops the socket.
                    None => return,
                }
            } else {
                self.bus.accept(creds)
            };
            assert!(
                self.slot_of(id).is_none(),
                "accept returned {id}, which is still connected"
            );
            self.slots[slot] = Some(Conn {
                id,
                uid,
                unix_fd: a & 0x40 != 0,
                authenticated: false,
                inbuf: Vec::new(),
                paused: false,
                partial: 0,
                header_cache: HeaderCache::default(),
            });
            if a & 0x80 == 0 {
                self.auth(slot);
            }
        }

        fn auth(&mut self, slot: usize) {
            let Some(c) = self.slots[slot].as_mut() else {
                return;
            };
            if c.authenticated {
                return;
            }
            c.authenticated = true;
            let (id, uid, unix_fd) = (c.id, c.uid, c.unix_fd);
            if !self.bus.authenticated(id, Some(uid), unix_fd) {
                if TRACE.with(|t| *t) {
                    eprintln!("slot {slot}: uid {uid} refused by policy");
                }
                // Reactor::process: RefusedByPolicy closes the connection.
                self.hangup(slot);
            }
        }

        /// What `Reactor::process` and `Reactor::deliver` do with received bytes.
        fn send(&mut self, slot: usize, bytes: &[u8]) {
            let Some(c) = self.slots[slot].as_mut() else {
                return;
            };
            if !c.authenticated {
                // The bytes go to SASL, which this target does not exercise (the `auth`
                // target does): count them as a failed authentication.
                self.hangup(slot);
                return;
            }
            c.inbuf.extend_from_slice(bytes);
            self.frame(slot);
        }

        /// Frame and dispatch what `slot` has sent, as far as the bus lets the reactor read
        /// it (`Bus::may_read`: a paused connection's bytes wait, as in its socket, until
        /// `Effect::Resume`); then report the cut-off rest as `Reactor::report_partial` does.
        fn frame(&mut self, slot: usize) {
            let Some(c) = self.slots[slot].as_ref() else {
                return;
            };
            let id = c.id;
            let limits = &self.bus.config().limits;
            let (max, max_fds) = (
                limits.max_message_size as usize,
                limits.max_message_unix_fds as usize,
            );
            loop {
                let Some(c) = self.slots[slot].as_mut() else {
                    return;
                };
                if self.bus.is_closing(id) {
                    return;
                }
                if !self.bus.may_read(id) {
                    c.paused = true;
                    return;
                }
                c.paused = false;
                let Some(fixed) = c.inbuf.first_chunk::<FIXED_HEADER_LEN>() else {
                    self.report_partial(slot);
                    return;
                };
                let len = match message::frame_len(fixed, max) {
                    Ok(l) => l,
                    Err(e) => {
                        if TRACE.with(|t| *t) {
                            eprintln!("slot {slot} sent an invalid frame: {e}");
                        }
                        self.hangup(slot);
                        return;
                    }
                };
                if c.inbuf.len() < len {
                    self.report_partial(slot);
                    return;
                }
                // Inside a larger buffer, as the reactor's shared receive buffers hand it.
                let mut buf = Vec::with_capacity(len + 16);
                buf.extend_from_slice(&[0xa5; 8]);
                buf.extend_from_slice(&c.inbuf[..len]);
                buf.extend_from_slice(&[0x5a; 8]);
                let data: Rc<[u8]> = Rc::from(buf);
                c.inbuf.drain(..len);
                // The client sends the fds its message declares (up to 4) when it
                // negotiated fd passing.
                let sent = if c.unix_fd {
                    message::declared_fds(&data).map_or(0, |n| (n as usize).min(4))
                } else {
                    0
                };
                let msg = match Message::parse_framed_cached(
                    data,
                    8..8 + len,
                    sent.min(max_fds),
                    &mut c.header_cache,
                ) {
                    Ok(m) => m,
                    Err(e) => {
                        if TRACE.with(|t| *t) {
                            eprintln!("slot {slot} sent an invalid message: {e}");
                        }
                        self.hangup(slot);
                        return;
                    }
                };
                let fds = (msg.unix_fds > 0).then(|| {
                    DEV_NULL.with(|f| {
                        (0..msg.unix_fds)
                            .map(|_| OwnedFd::from(f.try_clone().expect("dup /dev/null")))
                            .collect::<Vec<_>>()
                            .into()
                    })
                });
                self.bus.set_clock(Clock::fixed(self.now));
                self.bus.dispatch(id, &msg, fds, &mut self.world);
            }
        }

        /// Tell the bus how much of a message `slot` has sent so far (it is charged to the
        /// sender's quota), when that changed.
        fn report_partial(&mut self, slot: usize) {
            let Some(c) = self.slots[slot].as_mut() else {
                return;
            };
            let bytes = c.inbuf.len();
            if bytes == c.partial {
                return;
            }
            c.partial = bytes;
            let id = c.id;
            self.bus.receiving(id, bytes, 0);
        }

        /// The socket of `slot` takes `n` bytes of its queue; every message that goes out
        /// whole must be valid.
        fn read(&mut self, slot: usize, n: usize) {
            let Some(c) = self.slots[slot].as_ref() else {
                return;
            };
            let id = c.id;
            self.bus.flushing(id);
            let mut left = n;
            let mut taken = 0;
            if let Some(pending) = self.bus.pending(id) {
                for out in pending {
                    if left == 0 {
                        break;
                    }
                    assert!(out.written < out.len(), "a written message is still queued");
                    let rest = out.len() - out.written;
                    let k = rest.min(left);
                    left -= k;
                    taken += k;
                    if k == rest {
                        let bytes: Vec<u8> = out.parts().concat();
                        assert_eq!(
                            bytes.len(),
                            out.len(),
                            "Outgoing::len disagrees with its parts"
                        );
                        match Message::parse(Rc::from(bytes), out.n_fds()) {
                            Ok(m) if TRACE.with(|t| *t) => eprintln!(
                                "slot {slot} reads: type {} {:?} {:?} {:?} reply to {:?}",
                                m.msg_type,
                                m.interface(),
                                m.member(),
                                m.error_name(),
                                m.reply_serial
                            ),
                            Ok(_) => {}
                            Err(e) => panic!("the bus queued an invalid message for {id}: {e}"),
                        }
                    }
                }
            }
            let empty = self.bus.written(id, taken);
            assert_eq!(
                empty,
                self.bus.pending(id).is_none_or(|mut p| p.next().is_none()),
                "written() says the queue is {}empty",
                if empty { "" } else { "not " }
            );
        }

        fn hangup(&mut self, slot: usize) {
            if let Some(c) = self.slots[slot].take() {
                if TRACE.with(|t| *t) {
                    eprintln!("slot {slot} hangs up");
                }
                self.bus.disconnect(c.id);
            }
        }

        fn slot_of(&self, id: ConnId) -> Option<usize> {
            self.slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|c| c.id == id))
        }

        /// One turn's reaping, then carry out the effects as `Reactor::apply_effects` does.
        fn pump(&mut self) {
            if self.bus.reaping() {
                self.bus.reap(REAP_PIECE);
            }
            while let Some(e) = self.bus.poll_effect() {
                match e {
                    Effect::Flush(id) => {
                        assert!(
                            self.slot_of(id).is_some(),
                            "Flush for closed connection {id}"
                        )
                    }
                    Effect::Close(id, why) => {
                        let slot = self.slot_of(id).unwrap_or_else(|| {
                            panic!("Close ({why:?}) for closed connection {id}")
                        });
                        // The reactor writes what it can first; a reader that does not read
                        // takes nothing.
                        if TRACE.with(|t| *t) {
                            eprintln!("slot {slot} closed by the bus: {why:?}");
                        }
                        self.hangup(slot);
                    }
                    Effect::Unlisten(n) => assert!(
                        self.world.listening.remove(&n),
                        "Unlisten for instance {n}, which was not listening"
                    ),
                    Effect::WatchNotify(..) | Effect::Reconfigured => {}
                    Effect::UnwatchNotify(_, fd) => drop(fd),
                    Effect::Spawn(r) => self.bus.spawn_failed(&r.name, "not in the fuzzer"),
                    Effect::Resume(id) => {
                        let slot = self
                            .slot_of(id)
                            .unwrap_or_else(|| panic!("Resume for closed connection {id}"));
                        let paused = self.slots[slot].as_ref().is_some_and(|c| c.paused);
                        assert!(paused, "Resume for connection {id}, which was not paused");
                        self.frame(slot);
                    }
                }
            }
        }

        fn check(&self) {
            if let Err(e) = self.bus.check_invariants() {
                panic!("bus invariant broken: {e}");
            }
            let live = self.slots.iter().flatten().count();
            assert_eq!(
                self.bus.incomplete_count() + self.bus.completed_count(),
                live,
                "the bus counts connections the reactor does not have"
            );
        }
    }
}
