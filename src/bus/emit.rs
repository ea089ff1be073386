//! Messages the bus itself originates: replies and errors to driver calls, the driver's
//! signals (unicast and broadcast), and their capture by monitors. Every bus message is
//! marshalled and queued here, and honours its receiver's receive policy.

use super::connection::{Fds, Outgoing, Phase};
use super::error::{BusError, ErrorKind};
use super::match_rule::MatchSubject;
use super::names::NameEvent;
use super::routing::facts;
use super::{Bus, ConnId, DRIVER_IFACE, DRIVER_NAME, DRIVER_PATH};
use crate::wire::body;
use crate::wire::marshal::{BodyWriter, MessageBuilder};
use crate::wire::message::{self, flags, Arg, Message};
use crate::wire::Endian;
use std::rc::Rc;

impl Bus {
    /// Queue a message built by the bus to `to`, and show it to monitors.
    /// Messages from the bus skip send rules but honour the receiver's receive rules:
    /// a denied one is dropped (logged; monitors still see it). A receiver whose queue is
    /// over its limit cannot be sent the reply or error it is owed, nor told it missed it:
    /// it is disconnected ([`Bus::drop_slow_receiver`]), as dbus-broker does.
    pub fn emit_to(&mut self, to: ConnId, bytes: Vec<u8>) {
        if !self.emit_to_inner(to, bytes, true, None) {
            self.drop_slow_receiver(to, super::Owed::Reply);
        }
    }

    /// Like [`Bus::emit_to`] for a message monitors are not shown: one they already saw when
    /// it was generated (a request that waited for systemd to connect), or an answer to a
    /// call without destination, which dbus-daemon gives outside its dispatcher.
    pub(super) fn emit_to_uncaptured(&mut self, to: ConnId, bytes: Vec<u8>) {
        if !self.emit_to_inner(to, bytes, false, None) {
            self.drop_slow_receiver(to, super::Owed::Reply);
        }
    }

    /// Queue a bus message for `to` (see [`Bus::emit_to`]); `capture`: show it to monitors.
    /// Returns false only if `to`'s queue was over its limit (a message `to`'s policy refuses
    /// is dropped and counts as handled).
    pub(super) fn emit_to_inner(
        &mut self,
        to: ConnId,
        bytes: Vec<u8>,
        capture: bool,
        fds: Option<Fds>,
    ) -> bool {
        let capture = capture && !self.monitors.is_empty();
        let check = self
            .peers
            .get(to)
            .is_some_and(|p| !p.policy.allows_all_messages());
        let mut out = Outgoing::owned(bytes);
        out.fds = fds;
        if capture || check {
            let Ok(m) = Message::parse(out.data.clone(), out.n_fds()) else {
                log::error!("internal error: a bus message does not parse");
                return true;
            };
            if capture {
                self.capture_out(&m, out.clone(), &[DRIVER_NAME]);
            }
            if check && !self.bus_message_allowed(to, &m) {
                self.log_self_denial(to, &m);
                self.capture_self_denial(&m);
                return true;
            }
        }
        self.enqueue(to, out) || self.peers.get(to).is_none()
    }

    /// A bus message refused by its receiver's policy: like dbus-daemon, show monitors the
    /// AccessDenied error the bus addresses to itself.
    pub(super) fn capture_self_denial(&mut self, denied: &Message) {
        if self.monitors.is_empty() {
            return;
        }
        let mut body = BodyWriter::new();
        body.str("Rejected message from the bus by the recipient's receive policy");
        let bytes = MessageBuilder::error(ErrorKind::AccessDenied.name(), denied.serial)
            .destination(DRIVER_NAME)
            .sender(DRIVER_NAME)
            .flags(flags::NO_REPLY_EXPECTED)
            .build(denied.serial, &body);
        self.capture_bus_message(bytes);
    }

    /// Log a bus message refused by `to`'s receive policy, as dbus-daemon logs it.
    fn log_self_denial(&self, to: ConnId, m: &Message) {
        let Some(p) = self.peers.get(to) else {
            return;
        };
        let requested = m.msg_type == message::METHOD_RETURN || m.msg_type == message::ERROR;
        let f = facts(m, 0, requested, false);
        let matched = p.policy.receive_rules_matched(&f, &[DRIVER_NAME]);
        let e = self.policy_denial("receive", matched, None, Some(to), m, requested);
        log::warn!("{}", e.text);
    }

    /// Whether `to`'s receive rules accept a message from the driver.
    pub(super) fn bus_message_allowed(&self, to: ConnId, m: &Message) -> bool {
        let Some(p) = self.peers.get(to) else {
            return false;
        };
        if p.policy.allows_all_messages() {
            return true;
        }
        let requested = m.msg_type == message::METHOD_RETURN || m.msg_type == message::ERROR;
        p.policy
            .can_receive(&facts(m, 0, requested, false), &[DRIVER_NAME])
    }

    /// Send an error reply for `msg` from the bus to `to`.
    pub fn reply_error(&mut self, to: ConnId, msg: &Message, err: BusError) {
        if let Some(bytes) = self.build_error(to, msg.serial, err.name(), &err.text) {
            self.emit_to(to, bytes);
        }
    }

    /// The error `err` from the bus to `to`, answering its call `reply_serial` (for answers
    /// sent after the call itself is gone, such as a failed activation).
    pub(super) fn reply_error_serial(&mut self, to: ConnId, reply_serial: u32, err: &BusError) {
        if let Some(bytes) = self.build_error(to, reply_serial, err.name(), &err.text) {
            self.emit_to(to, bytes);
        }
    }

    /// A method return from the bus to `to` for its call `reply_serial`.
    pub(super) fn reply_serial_body(&mut self, to: ConnId, reply_serial: u32, body: &BodyWriter) {
        if let Some(bytes) = self.build_return(to, reply_serial, body, 0) {
            self.emit_to(to, bytes);
        }
    }

    /// A method return from the bus to `to`, answering its message `reply_serial`, declaring
    /// `n_fds` fds (None if `to` is gone). The one place bus replies are marshalled.
    pub(super) fn build_return(
        &mut self,
        to: ConnId,
        reply_serial: u32,
        body: &BodyWriter,
        n_fds: u32,
    ) -> Option<Vec<u8>> {
        let peer = self.peers.get_mut(to)?;
        let dest = peer.sender_name().to_owned();
        let serial = peer.next_serial();
        Some(
            MessageBuilder::method_return(reply_serial)
                .destination(&dest)
                .sender(DRIVER_NAME)
                .flags(flags::NO_REPLY_EXPECTED)
                .unix_fds(n_fds)
                .build(serial, body),
        )
    }

    /// An error from the bus to `to`, answering its message `reply_serial` (None if `to` is
    /// gone). The one place bus errors are marshalled.
    pub(super) fn build_error(
        &mut self,
        to: ConnId,
        reply_serial: u32,
        name: &str,
        text: &str,
    ) -> Option<Vec<u8>> {
        let peer = self.peers.get_mut(to)?;
        let dest = peer.sender_name().to_owned();
        let serial = peer.next_serial();
        let mut body = BodyWriter::new();
        body.str(text);
        Some(
            MessageBuilder::error(name, reply_serial)
                .destination(&dest)
                .sender(DRIVER_NAME)
                .flags(flags::NO_REPLY_EXPECTED)
                .build(serial, &body),
        )
    }

    /// Send a method return for `msg` from the bus to `to`.
    pub fn reply(&mut self, to: ConnId, msg: &Message, body: &BodyWriter) {
        self.reply_serial_body(to, msg.serial, body);
    }

    /// A method return from the bus carrying `fds` (GetConnectionCredentials' ProcessFD).
    pub fn reply_with_fds(
        &mut self,
        to: ConnId,
        msg: &Message,
        body: &BodyWriter,
        fds: Vec<std::os::fd::OwnedFd>,
    ) {
        if let Some(bytes) = self.build_return(to, msg.serial, body, fds.len() as u32) {
            if !self.emit_to_inner(to, bytes, true, Some(Rc::from(fds))) {
                self.drop_slow_receiver(to, super::Owed::Reply);
            }
        }
    }

    /// A unicast signal from the driver to `to` (NameAcquired, NameLost). If `to`'s queue is
    /// over its limit it is disconnected ([`Bus::drop_slow_receiver`]).
    pub fn driver_signal_to(&mut self, to: ConnId, member: &str, body: &BodyWriter) {
        let Some(peer) = self.peers.get_mut(to) else {
            return;
        };
        let Some(dest) = peer.unique_name.clone() else {
            return;
        };
        let serial = peer.next_serial();
        let bytes = MessageBuilder::signal(DRIVER_PATH, DRIVER_IFACE, member)
            .destination(&dest)
            .sender(DRIVER_NAME)
            .flags(flags::NO_REPLY_EXPECTED)
            .build(serial, body);
        if !self.emit_to_inner(to, bytes, true, None) {
            // A signal the bus owes `to` about its own names: it cannot be told it missed it.
            self.drop_slow_receiver(to, super::Owed::Reply);
        }
    }

    /// A broadcast signal from the driver, to every connection with a matching rule. A
    /// receiver whose queue is over its limit is disconnected ([`Bus::drop_slow_receiver`]).
    pub fn driver_broadcast(&mut self, member: &str, body: &BodyWriter) {
        self.driver_broadcast_iface(DRIVER_IFACE, member, body);
    }

    /// A broadcast signal from the driver on interface `iface`.
    ///
    /// The receivers are found from the signal's parts before anything is marshalled: on a
    /// bus where nobody listens (no monitor, no matching rule), a connect or disconnect's
    /// NameOwnerChanged costs a lookup in the match index and no message at all.
    pub fn driver_broadcast_iface(&mut self, iface: &str, member: &str, body: &BodyWriter) {
        let mut receivers = Vec::new();
        let subject = DriverSignal {
            interface: iface,
            member,
            body,
        };
        self.matches
            .collect(&subject, &[DRIVER_NAME], &[], &mut receivers);
        self.driver_broadcast_to(iface, member, body, receivers);
    }

    /// A driver broadcast whose arguments are all strings (NameOwnerChanged): like
    /// [`Bus::driver_broadcast`], but not even its body is marshalled when nobody can see it
    /// (every connect and disconnect announces a unique name, usually to nobody).
    pub fn driver_broadcast_strs(&mut self, member: &str, args: &[&str]) {
        let mut receivers = Vec::new();
        let subject = StrSignal { member, args };
        self.matches
            .collect(&subject, &[DRIVER_NAME], &[], &mut receivers);
        if receivers.is_empty() && self.monitors.is_empty() {
            return;
        }
        let mut body = BodyWriter::new();
        for a in args {
            body.str(a);
        }
        self.driver_broadcast_to(DRIVER_IFACE, member, &body, receivers);
    }

    /// Send a driver broadcast to `receivers` (the match index's answer for it) and
    /// monitors.
    fn driver_broadcast_to(
        &mut self,
        iface: &str,
        member: &str,
        body: &BodyWriter,
        receivers: Vec<ConnId>,
    ) {
        if receivers.is_empty() && self.monitors.is_empty() {
            return;
        }
        let template = MessageBuilder::signal(DRIVER_PATH, iface, member)
            .sender(DRIVER_NAME)
            .flags(flags::NO_REPLY_EXPECTED)
            .build(1, body);
        let Ok(msg) = Message::parse(Rc::from(template.clone()), 0) else {
            log::error!("internal error: driver signal {member} does not parse");
            return;
        };
        if !self.monitors.is_empty() {
            self.capture_out(&msg, Outgoing::owned(template), &[DRIVER_NAME]);
        }
        for to in receivers {
            if !self.driver_broadcast_allowed(to, &msg) {
                continue;
            }
            if !self.bus_message_allowed(to, &msg) {
                self.capture_self_denial(&msg);
                continue;
            }
            let Some(peer) = self.peers.get_mut(to) else {
                continue;
            };
            if peer.phase != Phase::Active {
                continue;
            }
            let serial = peer.next_serial();
            let bytes = MessageBuilder::signal(DRIVER_PATH, iface, member)
                .sender(DRIVER_NAME)
                .flags(flags::NO_REPLY_EXPECTED)
                .build(serial, body);
            if !self.enqueue(to, Outgoing::owned(bytes)) {
                self.drop_slow_receiver(to, super::Owed::Signal);
            }
        }
    }

    /// Announce name ownership changes in order.
    pub fn emit_name_events(&mut self, events: Vec<NameEvent>) {
        let mut acquired = Vec::new();
        for ev in events {
            match ev {
                NameEvent::Lost { name, conn } => {
                    let mut b = BodyWriter::new();
                    b.str(&name);
                    self.driver_signal_to(conn, "NameLost", &b);
                }
                NameEvent::Acquired { name, conn } => {
                    let mut b = BodyWriter::new();
                    b.str(&name);
                    self.driver_signal_to(conn, "NameAcquired", &b);
                }
                NameEvent::OwnerChanged { name, old, new } => {
                    if new.is_some() {
                        acquired.push(name.clone());
                    }
                    let old = old
                        .and_then(|c| self.peers.get(c))
                        .and_then(|p| p.unique_name.clone());
                    let new = new
                        .and_then(|c| self.peers.get(c))
                        .and_then(|p| p.unique_name.clone());
                    let mut b = BodyWriter::new();
                    b.str(&name)
                        .str(old.as_deref().unwrap_or(""))
                        .str(new.as_deref().unwrap_or(""));
                    self.driver_broadcast("NameOwnerChanged", &b);
                }
            }
        }
        // Messages waiting for these names are delivered once the current message is fully
        // handled (after the RequestName reply), see `run_deferred`.
        self.starts.acquired.extend(acquired);
    }

    /// Show a bus-built message to monitors without sending it anywhere.
    pub(super) fn capture_bus_message(&mut self, bytes: Vec<u8>) {
        if self.monitors.is_empty() {
            return;
        }
        if let Ok(m) = Message::parse(Rc::from(bytes.clone()), 0) {
            self.capture_out(&m, Outgoing::owned(bytes), &[DRIVER_NAME]);
        }
    }
}

/// A driver signal on the driver's interface with string arguments, as match rules see it
/// before anything is marshalled ([`Bus::driver_broadcast_strs`]).
struct StrSignal<'a> {
    member: &'a str,
    args: &'a [&'a str],
}

impl MatchSubject for StrSignal<'_> {
    fn msg_type(&self) -> u8 {
        message::SIGNAL
    }
    fn path(&self) -> Option<&str> {
        Some(DRIVER_PATH)
    }
    fn interface(&self) -> Option<&str> {
        Some(DRIVER_IFACE)
    }
    fn member(&self) -> Option<&str> {
        Some(self.member)
    }
    fn destination(&self) -> Option<&str> {
        None
    }
    fn arg(&self, n: usize) -> Option<Arg<'_>> {
        self.args.get(n).map(|a| Arg::Str(a))
    }
}

/// A broadcast signal of the driver as match rules see it, before it is marshalled: what
/// [`Message`]'s [`MatchSubject`] answers for the same signal once built.
struct DriverSignal<'a> {
    interface: &'a str,
    member: &'a str,
    body: &'a BodyWriter,
}

impl MatchSubject for DriverSignal<'_> {
    fn msg_type(&self) -> u8 {
        message::SIGNAL
    }
    fn path(&self) -> Option<&str> {
        Some(DRIVER_PATH)
    }
    fn interface(&self) -> Option<&str> {
        Some(self.interface)
    }
    fn member(&self) -> Option<&str> {
        Some(self.member)
    }
    fn destination(&self) -> Option<&str> {
        None
    }
    fn arg(&self, n: usize) -> Option<Arg<'_>> {
        // BodyWriter marshals little-endian from an 8-aligned start, as the body of the
        // message it will become.
        let (sig, buf) = (self.body.signature().as_bytes(), self.body.bytes());
        let (mut sp, mut pos) = (0, 0);
        for _ in 0..n {
            (sp, pos) = body::skip_value(Endian::Little, sig, sp, buf, pos, 0)?;
        }
        match *sig.get(sp)? {
            b's' => body::read_str(Endian::Little, buf, pos).map(Arg::Str),
            b'o' => body::read_str(Endian::Little, buf, pos).map(Arg::Path),
            _ => Some(Arg::Other),
        }
    }
}
