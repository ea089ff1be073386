//! Routing: the dispatch pipeline for each incoming message (unicast, broadcast, replies,
//! monitors, eavesdroppers), expected-reply tracking, bus-originated messages, disconnects.

use super::connection::{Fds, OutHeader, Outgoing, Phase};
use super::effect::CloseReason;
use super::error::{BusError, ErrorKind};
use super::names::NameEvent;
use super::policy::MsgFacts;
use super::world::World;
use super::{Bus, ConnId, DRIVER_IFACE, DRIVER_NAME, DRIVER_PATH};
use crate::wire::marshal::{BodyWriter, MessageBuilder};
use crate::wire::message::{self, flags, Message};
use ahash::AHashMap;
use arrayvec::ArrayVec;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Text of the NoReply error when the callee goes away.
pub const NO_REPLY_DISCONNECT: &str =
    "Message recipient disconnected from message bus without replying";
/// Text of the NoReply error on timeout.
pub const NO_REPLY_TIMEOUT: &str = "Message did not receive a reply (timeout by message bus)";

/// Identifies one expected reply: (callee's unique number, caller's unique number, serial).
/// Unique numbers, unlike slab indexes, are never reused, so a stale record can never
/// authorise a reply to a later connection.
type ReplyKey = (u64, u64, u32);

/// One method call awaiting its reply.
#[derive(Debug, Clone, Copy)]
struct ReplyRecord {
    caller: ConnId,
    callee: ConnId,
    deadline: Option<Instant>,
}

/// Expected replies, with a timeout heap when `reply_timeout` is set.
#[derive(Debug, Default)]
pub struct ReplyTable {
    records: AHashMap<ReplyKey, ReplyRecord>,
    deadlines: BinaryHeap<Reverse<(Instant, ReplyKey)>>,
}

impl ReplyTable {
    /// Number of outstanding records.
    pub fn len(&self) -> usize {
        self.records.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    /// Earliest reply deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _))| *t)
    }
}

/// Names kept inline by [`NameList`].
const INLINE_NAMES: usize = 15;

/// A connection's names ([`Bus::names_of`]): inline for the common case, on the heap for a
/// connection that owns many names.
// Lives on the stack for one routing step; inline is the point.
#[allow(clippy::large_enum_variant)]
pub enum NameList<'a> {
    /// Up to 16 names, unique name first.
    Inline(ArrayVec<&'a str, 16>),
    /// More than that.
    Heap(Vec<&'a str>),
}

impl<'a> std::ops::Deref for NameList<'a> {
    type Target = [&'a str];
    fn deref(&self) -> &[&'a str] {
        match self {
            NameList::Inline(v) => v,
            NameList::Heap(v) => v,
        }
    }
}

/// Message facts for policy checks.
fn facts<'a>(
    msg: &'a Message,
    n_fds: usize,
    requested_reply: bool,
    eavesdrop: bool,
) -> MsgFacts<'a> {
    MsgFacts {
        msg_type: msg.msg_type,
        interface: msg.interface(),
        member: msg.member(),
        error_name: msg.error_name(),
        path: msg.path(),
        has_destination: msg.destination().is_some(),
        n_fds: n_fds as u32,
        requested_reply,
        eavesdrop,
    }
}

impl Bus {
    /// The names a connection answers to for `sender=`/`destination=` rules and policy:
    /// its unique name and the well-known names it is primary owner of. Kept on the stack
    /// for the usual handful of names, so routing a broadcast allocates nothing here.
    pub fn names_of(&self, id: ConnId) -> NameList<'_> {
        let unique = self.peers.get(id).and_then(|p| p.unique_name.as_deref());
        let primary = self.names.primary_names(id);
        let mut inline = ArrayVec::new();
        if primary.len() < INLINE_NAMES {
            inline.extend(unique);
            inline.extend(primary.iter().map(|n| &**n));
            NameList::Inline(inline)
        } else {
            NameList::Heap(
                unique
                    .into_iter()
                    .chain(primary.iter().map(|n| &**n))
                    .collect(),
            )
        }
    }

    /// Names owned primary or queued (policy `send_destination` semantics).
    fn owned_names_of(&self, id: ConnId) -> Vec<&str> {
        let mut v = Vec::new();
        if let Some(u) = self.peers.get(id).and_then(|p| p.unique_name.as_deref()) {
            v.push(u);
        }
        v.extend(self.names.owned_or_queued(id).map(|n| &**n));
        v
    }

    /// Entry point: a validated message arrived from `id`.
    pub fn dispatch(
        &mut self,
        id: ConnId,
        msg: Message,
        fds: Option<Fds>,
        now: Instant,
        world: &mut dyn World,
    ) {
        self.now = now;
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let len = u32::try_from(msg.data().len()).unwrap_or(u32::MAX);
        peer.peak_in_bytes = peer.peak_in_bytes.max(len);
        let n_fds = fds.as_ref().map_or(0, |f| f.len() as u32);
        peer.peak_in_fds = peer.peak_in_fds.max(n_fds);
        match peer.phase {
            Phase::Monitor => {
                self.close(id, CloseReason::MonitorSent);
                return;
            }
            Phase::Authenticating => {
                self.close(id, CloseReason::MessageBeforeAuth);
                return;
            }
            Phase::Authenticated | Phase::Active => {}
        }
        let active = peer.phase == Phase::Active;
        let dest = msg.destination();

        // Messages without a destination that are not signals are for the bus as a peer.
        if dest.is_none() && msg.msg_type != message::SIGNAL {
            self.capture(id, &msg, fds.as_ref());
            if msg.msg_type == message::METHOD_CALL {
                self.peer_method(id, &msg);
            }
            return;
        }
        if dest == Some(DRIVER_NAME) {
            if msg.msg_type == message::SIGNAL {
                // Monitors see the outcome (e.g. the errors of a failed activation) first.
                self.activation_failure(id, &msg);
                self.capture(id, &msg, fds.as_ref());
                return;
            }
            self.capture(id, &msg, fds.as_ref());
            if msg.msg_type == message::METHOD_CALL {
                super::driver::handle(self, id, &msg, fds, now, world);
                self.run_deferred();
            } else if msg.msg_type == message::SIGNAL {
                self.activation_failure(id, &msg);
            }
            return;
        }
        if !active {
            self.close(id, CloseReason::MessageBeforeHello);
            return;
        }
        match dest {
            Some(d) => {
                // A message that triggers an activation is shown to monitors after the
                // ActivationRequest it causes, as dbus-daemon does.
                let starting = !msg.no_auto_start()
                    && self.resolve(d).is_none()
                    && (self.starts_pending(d) || self.services.lookup(d).is_some());
                if starting {
                    let fds2 = fds.clone();
                    self.unicast(id, &msg, d, fds, now);
                    self.capture(id, &msg, fds2.as_ref());
                } else {
                    self.capture(id, &msg, fds.as_ref());
                    self.unicast(id, &msg, d, fds, now);
                }
            }
            None => {
                self.capture(id, &msg, fds.as_ref());
                self.broadcast(id, &msg, fds);
            }
        }
    }

    /// Method calls with no destination: Peer.Ping and Peer.GetMachineId are answered,
    /// everything else gets UnknownMethod. Replies carry neither SENDER nor DESTINATION.
    fn peer_method(&mut self, id: ConnId, msg: &Message) {
        let iface = msg.interface();
        let member = msg.member().unwrap_or("");
        let mut body = BodyWriter::new();
        let builder = match (iface, member) {
            (None | Some("org.freedesktop.DBus.Peer"), "Ping") => {
                MessageBuilder::method_return(msg.serial)
            }
            (None | Some("org.freedesktop.DBus.Peer"), "GetMachineId") => {
                body.str(&self.machine_id);
                MessageBuilder::method_return(msg.serial)
            }
            _ => {
                body.str(&format!(
                    "Method \"{member}\" with signature \"{}\" on interface \"{}\" doesn't exist",
                    msg.signature(),
                    iface.unwrap_or("(null)")
                ));
                MessageBuilder::error(ErrorKind::UnknownMethod.name(), msg.serial)
            }
        };
        if msg.no_reply_expected() {
            return;
        }
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let serial = peer.next_serial();
        let bytes = builder.flags(flags::NO_REPLY_EXPECTED).build(serial, &body);
        self.emit_to(id, bytes);
    }

    /// Deliver a message with a DESTINATION other than the driver.
    fn unicast(&mut self, id: ConnId, msg: &Message, dest: &str, fds: Option<Fds>, now: Instant) {
        let Some(to) = self.resolve(dest) else {
            if msg.msg_type == message::METHOD_RETURN || msg.msg_type == message::ERROR {
                // A reply to someone who left: nothing to do.
                return;
            }
            if !msg.no_auto_start() && msg.msg_type <= message::SIGNAL {
                match self.queue_for_start(id, msg, dest, fds) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        self.reply_error(id, msg, e);
                        return;
                    }
                }
            }
            let err = if msg.no_auto_start() {
                BusError::new(
                    ErrorKind::NameHasNoOwner,
                    format!("Could not get owner of name '{dest}': no such name"),
                )
            } else {
                BusError::new(
                    ErrorKind::ServiceUnknown,
                    format!("The name {dest} was not provided by any .service files"),
                )
            };
            self.reply_error(id, msg, err);
            return;
        };
        if msg.msg_type > message::SIGNAL {
            let err = BusError::new(ErrorKind::AccessDenied, "Unknown message type");
            self.reply_error(id, msg, err);
            return;
        }
        if self.peers.get(to).map(|p| p.phase) == Some(Phase::Monitor) {
            return;
        }
        let n_fds = fds.as_ref().map_or(0, |f| f.len());
        let is_reply = msg.msg_type == message::METHOD_RETURN || msg.msg_type == message::ERROR;

        // Requested reply?
        let mut requested = false;
        let mut reply_key = None;
        if is_reply {
            if let (Some(rs), Some(callee), Some(caller)) = (
                msg.reply_serial,
                self.peers.get(id).map(|p| p.serial_no),
                self.peers.get(to).map(|p| p.serial_no),
            ) {
                let key = (callee, caller, rs);
                if self.replies.records.contains_key(&key) {
                    requested = true;
                    reply_key = Some(key);
                }
            }
        }

        // Policy: sender's send rules, then receiver's receive rules.
        if let Err(e) = self.check_policy(id, to, msg, n_fds, requested, false) {
            if !is_reply || !msg.no_reply_expected() {
                self.reply_error(id, msg, e);
            }
            return;
        }
        if n_fds > 0 && !self.peers.get(to).is_some_and(|p| p.unix_fd) {
            let err = BusError::new(
                ErrorKind::NotSupported,
                "Tried to send message with Unix file descriptors to a client that doesn't support that.",
            );
            self.reply_error(id, msg, err);
            return;
        }

        // Expected-reply bookkeeping for method calls.
        let mut new_record = None;
        if msg.msg_type == message::METHOD_CALL && !msg.no_reply_expected() {
            let max = self.config.limits.max_replies_per_connection as usize;
            let caller_no = self.peers.get(id).map_or(0, |p| p.serial_no);
            let callee_no = self.peers.get(to).map_or(0, |p| p.serial_no);
            let key = (callee_no, caller_no, msg.serial);
            if self.replies.records.contains_key(&key) {
                let err = BusError::new(
                    ErrorKind::AccessDenied,
                    "Message has the same reply serial as a currently-outstanding existing method call",
                );
                self.reply_error(id, msg, err);
                return;
            }
            if self.peers.get(id).map_or(0, |p| p.pending_replies) >= max {
                let err = BusError::new(
                    ErrorKind::LimitsExceeded,
                    "The maximum number of pending replies per connection has been reached",
                );
                self.reply_error(id, msg, err);
                return;
            }
            new_record = Some(key);
        }

        // An Rc clone, not a copy of the name: no allocation per message.
        let sender_rc = self.peers.get(id).and_then(|p| p.unique_name.clone());
        let sender: &str = sender_rc.as_deref().unwrap_or(":not.active.yet");
        let out = self.relay_to(to, id, msg, sender, fds.clone());
        if !self.enqueue(to, out) {
            // The sender hears of it unless it asked for no reply (dbus-daemon does the same
            // for unicast signals).
            if !msg.no_reply_expected() && !is_reply {
                let err = BusError::new(
                    ErrorKind::LimitsExceeded,
                    format!(
                        "The destination service's message queue is full; connection \"{}\" is not reading its messages",
                        self.peers.get(to).map(|p| p.sender_name()).unwrap_or("")
                    ),
                );
                self.reply_error(id, msg, err);
            }
            log::info!("dropping message for connection {to}: outgoing queue full");
            return;
        }
        if let Some(key) = reply_key {
            if let Some(rec) = self.replies.records.remove(&key) {
                self.reply_record_gone(rec);
            }
        }
        if let Some(key) = new_record {
            let deadline = self.reply_deadline(now);
            self.replies.records.insert(
                key,
                ReplyRecord {
                    caller: id,
                    callee: to,
                    deadline,
                },
            );
            if let Some(t) = deadline {
                self.replies.deadlines.push(Reverse((t, key)));
            }
            if let Some(p) = self.peers.get_mut(id) {
                p.pending_replies += 1;
            }
            if let Some(p) = self.peers.get_mut(to) {
                p.owed_replies += 1;
            }
        }
        self.eavesdrop(id, msg, fds, Some(to), sender);
    }

    /// Re-route a message that waited for its destination to be activated.
    pub(super) fn unicast_resolved(
        &mut self,
        id: ConnId,
        msg: &Message,
        dest: &str,
        fds: Option<Fds>,
        now: Instant,
    ) {
        self.unicast(id, msg, dest, fds, now);
    }

    /// Whether a start of `name` is in progress.
    pub(super) fn starts_pending(&self, name: &str) -> bool {
        self.starts.contains(name)
    }

    /// The sender's send rules for a message to a name nobody owns yet (activation).
    pub(super) fn check_send_to_name(
        &self,
        from: ConnId,
        msg: &Message,
        dest: &str,
    ) -> Result<(), BusError> {
        let Some(sp) = self.peers.get(from) else {
            return Ok(());
        };
        if sp.policy.allows_all_messages() {
            return Ok(());
        }
        let n_fds = msg.unix_fds as usize;
        if sp
            .policy
            .can_send(&facts(msg, n_fds, false, false), &[], Some(dest))
        {
            Ok(())
        } else {
            // `dest` is the message's own DESTINATION (a name being activated, or the driver).
            Err(policy_denial("send", sp.sender_name(), msg, false))
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
    fn build_return(
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

    /// Show a bus-built message to monitors without sending it anywhere.
    pub(super) fn capture_bus_message(&mut self, bytes: Vec<u8>) {
        if self.monitors.is_empty() {
            return;
        }
        if let Ok(m) = Message::parse(Rc::from(bytes.clone()), 0) {
            self.capture_out(&m, Outgoing::owned(bytes), &[DRIVER_NAME]);
        }
    }

    fn reply_deadline(&self, now: Instant) -> Option<Instant> {
        match self.config.limits.reply_timeout {
            Some(t) if t > 0 => Some(now + Duration::from_millis(u64::from(t))),
            _ => None,
        }
    }

    /// Sender send policy then receiver receive policy.
    fn check_policy(
        &self,
        from: ConnId,
        to: ConnId,
        msg: &Message,
        n_fds: usize,
        requested: bool,
        eavesdrop: bool,
    ) -> Result<(), BusError> {
        let (Some(sp), Some(rp)) = (self.peers.get(from), self.peers.get(to)) else {
            return Ok(());
        };
        if sp.policy.allows_all_messages() && rp.policy.allows_all_messages() {
            return Ok(());
        }
        let f = facts(msg, n_fds, requested, eavesdrop);
        if !eavesdrop
            && !sp
                .policy
                .can_send(&f, &self.owned_names_of(to), msg.destination())
        {
            return Err(policy_denial("send", sp.sender_name(), msg, requested));
        }
        if !rp.policy.can_receive(&f, &self.owned_names_of(from)) {
            return Err(policy_denial("receive", sp.sender_name(), msg, requested));
        }
        Ok(())
    }

    /// A signal without DESTINATION: every connection with a matching rule gets it once.
    fn broadcast(&mut self, id: ConnId, msg: &Message, fds: Option<Fds>) {
        let mut receivers = std::mem::take(&mut self.scratch_receivers);
        receivers.clear();
        {
            let sender_names = self.names_of(id);
            self.matches
                .collect(msg, &sender_names, &[], &mut receivers);
        }
        // An Rc clone, not a copy of the name: no allocation per message.
        let sender_rc = self.peers.get(id).and_then(|p| p.unique_name.clone());
        let sender: &str = sender_rc.as_deref().unwrap_or(":not.active.yet");
        let n_fds = fds.as_ref().map_or(0, |f| f.len());
        let mut header = None;
        let mut header10 = None;
        for &to in &receivers {
            let Some(rp) = self.peers.get(to) else {
                continue;
            };
            if rp.phase != Phase::Active || (n_fds > 0 && !rp.unix_fd) {
                continue;
            }
            if let Err(e) = self.check_policy(id, to, msg, n_fds, false, false) {
                // The sender is not told, but monitors see the error it would have got.
                self.capture_error(id, msg, &e);
                continue;
            }
            let h = if rp.container_header {
                header10
                    .get_or_insert_with(|| self.container_header_for(id, msg, sender))
                    .clone()
            } else {
                header
                    .get_or_insert_with(|| msg.relay_header(sender, None))
                    .clone()
            };
            let out = Outgoing {
                header: OutHeader::Relay(h),
                data: msg.data().clone(),
                body: msg.body_range().start as u32..msg.data().len() as u32,
                fds: fds.clone(),
                written: 0,
            };
            if !self.enqueue(to, out) {
                log::info!("dropping broadcast for connection {to}: outgoing queue full");
            }
        }
        self.scratch_receivers = receivers;
    }

    /// Copies of a unicast for eavesdropping rules (`eavesdrop='true'`).
    fn eavesdrop(
        &mut self,
        id: ConnId,
        msg: &Message,
        fds: Option<Fds>,
        to: Option<ConnId>,
        sender: &str,
    ) {
        if !self.matches.has_eavesdroppers() {
            return;
        }
        let mut receivers = Vec::new();
        {
            let sender_names = self.names_of(id);
            let dest_names: NameList<'_> = match to {
                Some(t) => self.names_of(t),
                None => NameList::Inline(msg.destination().into_iter().collect()),
            };
            self.matches
                .collect(msg, &sender_names, &dest_names, &mut receivers);
        }
        let n_fds = fds.as_ref().map_or(0, |f| f.len());
        for r in receivers {
            if Some(r) == to || r == id && msg.destination().is_none() {
                continue;
            }
            let Some(rp) = self.peers.get(r) else {
                continue;
            };
            if rp.phase != Phase::Active || (n_fds > 0 && !rp.unix_fd) {
                continue;
            }
            if !rp.policy.allows_all_messages() {
                let f = facts(msg, n_fds, false, true);
                if !rp.policy.can_receive(&f, &self.owned_names_of(id)) {
                    continue;
                }
            }
            let out = self.relay_to(r, id, msg, sender, fds.clone());
            self.enqueue(r, out);
        }
    }

    /// Send copies of a message to every monitor whose rules match (a capture point).
    /// `id` is the sender (None for bus-originated messages).
    pub fn capture(&mut self, id: ConnId, msg: &Message, fds: Option<&Fds>) {
        if self.monitors.is_empty() {
            return;
        }
        // An Rc clone, not a copy of the name: no allocation per message.
        let sender_rc = self.peers.get(id).and_then(|p| p.unique_name.clone());
        let sender: &str = sender_rc.as_deref().unwrap_or(":not.active.yet");
        let out = relay(msg, sender, fds.cloned());
        self.capture_out(msg, out, &[sender]);
    }

    fn capture_out(&mut self, msg: &Message, out: Outgoing, sender_names: &[&str]) {
        let monitors = self.monitors.clone();
        for m in monitors {
            let matches = {
                let Some(p) = self.peers.get(m) else { continue };
                p.monitor_rules.is_empty()
                    || p.monitor_rules.iter().any(|r| {
                        r.matches(
                            msg,
                            |n| sender_names.contains(&n),
                            |n| {
                                msg.destination() == Some(n)
                                    || msg
                                        .destination()
                                        .and_then(|d| self.resolve(d))
                                        .is_some_and(|c| self.names_of(c).contains(&n))
                            },
                        )
                    })
            };
            if matches {
                let o = out.clone();
                if o.n_fds() > 0 && !self.peers.get(m).is_some_and(|p| p.unix_fd) {
                    continue;
                }
                self.enqueue(m, o);
            }
        }
    }

    /// Show monitors the error the bus would send `to` for `msg`, without sending it.
    fn capture_error(&mut self, to: ConnId, msg: &Message, err: &BusError) {
        if self.monitors.is_empty() {
            return;
        }
        if let Some(bytes) = self.build_error(to, msg.serial, err.name(), &err.text) {
            self.capture_bus_message(bytes);
        }
    }

    /// Queue a message built by the bus to `to`, and show it to monitors.
    /// Messages from the bus skip send rules but honour the receiver's receive rules:
    /// a denied one is dropped silently (monitors still see it).
    pub fn emit_to(&mut self, to: ConnId, bytes: Vec<u8>) {
        self.emit_to_inner(to, bytes, true, None);
    }

    /// Like [`Bus::emit_to`] for a message monitors already saw when it was generated (a
    /// request that waited for systemd to connect).
    pub(super) fn emit_to_uncaptured(&mut self, to: ConnId, bytes: Vec<u8>) {
        self.emit_to_inner(to, bytes, false, None);
    }

    fn emit_to_inner(&mut self, to: ConnId, bytes: Vec<u8>, capture: bool, fds: Option<Fds>) {
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
                return;
            };
            if capture {
                self.capture_out(&m, out.clone(), &[DRIVER_NAME]);
            }
            if check && !self.bus_message_allowed(to, &m) {
                self.capture_self_denial(&m);
                return;
            }
        }
        self.enqueue(to, out);
    }

    /// A bus message refused by its receiver's policy: like dbus-daemon, show monitors the
    /// AccessDenied error the bus addresses to itself.
    fn capture_self_denial(&mut self, denied: &Message) {
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

    /// Whether `to`'s receive rules accept a message from the driver.
    fn bus_message_allowed(&self, to: ConnId, m: &Message) -> bool {
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

    /// An error from the bus to `to`, answering its message `reply_serial` (None if `to` is
    /// gone). The one place bus errors are marshalled.
    fn build_error(
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
            self.emit_to_inner(to, bytes, true, Some(Rc::from(fds)));
        }
    }

    /// A unicast signal from the driver to `to` (NameAcquired, NameLost).
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
        self.emit_to(to, bytes);
    }

    /// A broadcast signal from the driver, to every connection with a matching rule.
    pub fn driver_broadcast(&mut self, member: &str, body: &BodyWriter) {
        self.driver_broadcast_iface(DRIVER_IFACE, member, body);
    }

    /// A broadcast signal from the driver on interface `iface`.
    pub fn driver_broadcast_iface(&mut self, iface: &str, member: &str, body: &BodyWriter) {
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
        let mut receivers = Vec::new();
        self.matches
            .collect(&msg, &[DRIVER_NAME], &[], &mut receivers);
        for to in receivers {
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
            self.enqueue(to, Outgoing::owned(bytes));
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

    /// Work deferred to the end of handling one event: deliveries to freshly owned names.
    pub fn run_deferred(&mut self) {
        while let Some(name) = self.starts.acquired.pop() {
            self.name_acquired_hook(&name);
        }
        self.emit_instance_removed();
    }

    /// Hello succeeded: give `id` its unique name.
    pub fn activate(&mut self, id: ConnId) -> Option<Rc<str>> {
        let (n, name) = self.allocate_unique();
        let peer = self.peers.get_mut(id)?;
        if matches!(peer.phase, Phase::Authenticating | Phase::Authenticated) {
            self.counts.incomplete = self.counts.incomplete.saturating_sub(1);
            self.counts.completed += 1;
            *self.counts.by_uid.entry(peer.creds.uid).or_insert(0) += 1;
        }
        peer.phase = Phase::Active;
        peer.serial_no = n;
        peer.unique_name = Some(name.clone());
        self.unique.insert(name.clone(), id);
        Some(name)
    }

    /// Turn `id` into a monitor: drop its names, rules and pending replies (BecomeMonitor).
    pub fn make_monitor(&mut self, id: ConnId, rules: Vec<super::match_rule::MatchRule>) {
        self.drop_identity(id);
        if let Some(p) = self.peers.get_mut(id) {
            p.phase = Phase::Monitor;
            p.monitor_rules = rules;
        }
        self.monitors.push(id);
    }

    /// Release everything a connection holds in the bus (names, unique name, rules,
    /// expected replies), emitting the signals in dbus-daemon's order.
    fn drop_identity(&mut self, id: ConnId) {
        let mut events = Vec::new();
        self.names.release_all(id, &mut events);
        self.emit_name_events(events);
        // The unique name goes last; its NameLost reaches a connection that becomes a
        // monitor (and is discarded with a disconnecting one).
        if let Some(u) = self.peers.get(id).and_then(|p| p.unique_name.clone()) {
            let mut b = BodyWriter::new();
            b.str(&u);
            self.driver_signal_to(id, "NameLost", &b);
        }
        let unique = self.peers.get_mut(id).and_then(|p| p.unique_name.take());
        if let Some(u) = &unique {
            self.unique.remove(u);
            let mut b = BodyWriter::new();
            b.str(u).str(u).str("");
            self.driver_broadcast("NameOwnerChanged", &b);
        }
        self.matches.remove_owner(id);
        // Calls this peer owed an answer to fail with NoReply; calls it made are forgotten.
        // The table is only scanned when the counters say this peer is in it.
        let me = self.peers.get(id).map_or(0, |p| p.serial_no);
        let involved = self
            .peers
            .get(id)
            .is_some_and(|p| p.pending_replies > 0 || p.owed_replies > 0);
        if me != 0 && involved {
            let owed: Vec<(ReplyKey, ReplyRecord)> = self
                .replies
                .records
                .iter()
                .filter(|(k, _)| k.0 == me || k.1 == me)
                .map(|(k, r)| (*k, *r))
                .collect();
            for (key, rec) in owed {
                self.replies.records.remove(&key);
                self.reply_record_gone(rec);
                if key.0 == me && rec.caller != id {
                    self.no_reply(rec.caller, key.2, NO_REPLY_DISCONNECT);
                }
            }
        }
        if let Some(p) = self.peers.get_mut(id) {
            p.pending_replies = 0;
            p.owed_replies = 0;
        }
    }

    /// A reply record was removed: neither side waits on it any more.
    fn reply_record_gone(&mut self, rec: ReplyRecord) {
        if let Some(p) = self.peers.get_mut(rec.caller) {
            p.pending_replies = p.pending_replies.saturating_sub(1);
        }
        if let Some(p) = self.peers.get_mut(rec.callee) {
            p.owed_replies = p.owed_replies.saturating_sub(1);
        }
    }

    /// Send NoReply to `caller` for its call `serial`, as if from the callee's side.
    fn no_reply(&mut self, caller: ConnId, serial: u32, text: &str) {
        if let Some(bytes) = self.build_error(caller, serial, ErrorKind::NoReply.name(), text) {
            self.emit_to(caller, bytes);
        }
    }

    /// The connection is gone (EOF, error, or closed by the bus).
    pub fn disconnect(&mut self, id: ConnId) {
        if !self.peers.contains(id) {
            return;
        }
        self.drop_identity(id);
        self.containers_disconnected(id);
        self.monitors.retain(|&m| m != id);
        let mut peer = self.peers.remove(id);
        self.delivery.clear(&mut peer.outbox);
        self.effects.forget(id);
        if matches!(peer.phase, Phase::Authenticating | Phase::Authenticated) {
            self.counts.incomplete = self.counts.incomplete.saturating_sub(1);
        } else {
            self.counts.completed = self.counts.completed.saturating_sub(1);
            if let Some(n) = self.counts.by_uid.get_mut(&peer.creds.uid) {
                *n -= 1;
                if *n == 0 {
                    self.counts.by_uid.remove(&peer.creds.uid);
                }
            }
        }
        self.run_deferred();
    }

    /// Expire reply records whose deadline passed.
    pub fn on_timer(&mut self, now: Instant) {
        self.now = now;
        self.expire_starts(now);
        while let Some(Reverse((t, key))) = self.replies.deadlines.peek().copied() {
            if t > now {
                break;
            }
            self.replies.deadlines.pop();
            let Some(rec) = self.replies.records.get(&key).copied() else {
                continue;
            };
            if rec.deadline != Some(t) {
                continue;
            }
            self.replies.records.remove(&key);
            self.reply_record_gone(rec);
            self.no_reply(rec.caller, key.2, NO_REPLY_TIMEOUT);
        }
    }

    /// Earliest time [`Bus::on_timer`] has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        match (self.replies.next_deadline(), self.starts.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A relayed copy of `msg` with SENDER stamped.
fn relay(msg: &Message, sender: &str, fds: Option<Fds>) -> Outgoing {
    Outgoing {
        header: OutHeader::Relay(msg.relay_header(sender, None)),
        data: msg.data().clone(),
        body: msg.body_range().start as u32..msg.data().len() as u32,
        fds,
        written: 0,
    }
}

/// The AccessDenied error for a message the XML policy refused, in dbus-daemon's shape
/// (`direction` is "send" or "receive").
fn policy_denial(direction: &str, sender: &str, msg: &Message, requested: bool) -> BusError {
    BusError::new(
        ErrorKind::AccessDenied,
        format!(
            "Rejected {direction} message; type=\"{}\", sender=\"{sender}\", interface=\"{}\", member=\"{}\", error name=\"{}\", requested_reply=\"{}\", destination=\"{}\"",
            type_name(msg.msg_type),
            msg.interface().unwrap_or("(unset)"),
            msg.member().unwrap_or("(unset)"),
            msg.error_name().unwrap_or("(unset)"),
            requested as u8,
            msg.destination().unwrap_or("(unset)"),
        ),
    )
}

/// Policy log name of a message type.
fn type_name(t: u8) -> &'static str {
    match t {
        message::METHOD_CALL => "method_call",
        message::METHOD_RETURN => "method_return",
        message::ERROR => "error",
        message::SIGNAL => "signal",
        _ => "unknown",
    }
}
