//! Routing: what happens to each message a connection sends. Messages for the bus go to
//! the driver; the rest are unicast (policy, expected replies, activation) or broadcast
//! (the match-rule index picks the receivers), relayed with SENDER stamped and the body
//! untouched. Monitors, expected replies and bus-originated messages have their own modules.

use super::connection::{Fds, Outgoing, Phase};
use super::effect::CloseReason;
use super::error::{BusError, ErrorKind};
use super::filter::Verdict;
use super::policy::MsgFacts;
use super::world::World;
use super::{Bus, ConnId, DRIVER_NAME};
use crate::wire::marshal::{BodyWriter, MessageBuilder};
use crate::wire::message::{self, flags, Message};
use arrayvec::ArrayVec;

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
pub(super) fn facts<'a>(
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
    pub(super) fn owned_names_of(&self, id: ConnId) -> Vec<&str> {
        let mut v = Vec::new();
        if let Some(u) = self.peers.get(id).and_then(|p| p.unique_name.as_deref()) {
            v.push(u);
        }
        v.extend(self.names.owned_or_queued(id).map(|n| &**n));
        v
    }

    /// Entry point: a validated message arrived from `id`. Borrowed: the caller's parsed
    /// message (120 bytes) is routed where it lies, never copied.
    pub fn dispatch(&mut self, id: ConnId, msg: &Message, fds: Option<Fds>, world: &mut dyn World) {
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
        // The destination's bytes: their text is needed only when nobody owns the name or
        // something goes wrong (`DestName`), which spares a UTF-8 pass per message.
        let dest = msg.destination_bytes();

        // Messages without a destination that are not signals are for the bus as a peer.
        // dbus-daemon answers them on the connection itself, before its dispatcher, so
        // monitors see neither them nor the answers.
        if dest.is_none() && msg.msg_type != message::SIGNAL {
            if msg.msg_type == message::METHOD_CALL {
                self.peer_method(id, msg);
            }
            return;
        }
        if dest == Some(DRIVER_NAME.as_bytes()) {
            if msg.msg_type == message::SIGNAL {
                // Monitors see the outcome (e.g. the errors of a failed activation) first.
                self.activation_failure(id, msg);
                self.capture(id, msg, fds.as_ref());
                return;
            }
            // Before Hello, the driver captures its calls (`Bus::capture_unregistered`).
            if active || msg.msg_type != message::METHOD_CALL {
                self.capture(id, msg, fds.as_ref());
            }
            if msg.msg_type == message::METHOD_CALL {
                // Kept for eavesdroppers, whose rule may be the one this call adds.
                let kept = fds.clone();
                super::driver::handle(self, id, msg, fds, world);
                self.run_deferred();
                self.eavesdrop_driver_call(id, msg, kept);
            } else if msg.msg_type == message::SIGNAL {
                self.activation_failure(id, msg);
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
                // The name is resolved once, here, for both decisions, and the service
                // directories are consulted at most once (a miss may rescan them), only for
                // a name nobody owns or is starting; `unicast` is handed the answer.
                let to = self.resolve_bytes_from(id, d);
                let may_start = !msg.no_auto_start() && to.is_none();
                let (pending, activatable) = if may_start {
                    let d = DestName::Of(msg).text();
                    let pending = self.starts_pending(d);
                    (
                        pending,
                        (!pending).then(|| self.services.lookup(d).is_some()),
                    )
                } else {
                    (false, None)
                };
                let starting = pending || activatable == Some(true);
                let d = DestName::Of(msg);
                if starting {
                    let fds2 = fds.clone();
                    self.unicast(id, msg, d, to, activatable, fds);
                    self.capture(id, msg, fds2.as_ref());
                } else {
                    // Checked here, not only inside: without monitors (the usual bus) the
                    // call itself was most of its cost.
                    if !self.monitors.is_empty() {
                        self.capture(id, msg, fds.as_ref());
                    }
                    self.unicast(id, msg, d, to, activatable, fds);
                }
            }
            None => {
                self.capture(id, msg, fds.as_ref());
                self.broadcast(id, msg, fds);
            }
        }
    }

    /// Method calls with no destination: Peer.Ping and Peer.GetMachineId (interface given)
    /// are answered, everything else gets UnknownMethod, in dbus-daemon's words (libdbus's,
    /// trailing newline included). Replies carry neither SENDER nor DESTINATION.
    fn peer_method(&mut self, id: ConnId, msg: &Message) {
        const PEER: &str = "org.freedesktop.DBus.Peer";
        let iface = msg.interface();
        let member = msg.member().unwrap_or("");
        let mut body = BodyWriter::new();
        let builder = match (iface, member) {
            (Some(PEER), "Ping") => MessageBuilder::method_return(msg.serial),
            (Some(PEER), "GetMachineId") => {
                body.str(&self.machine_id);
                MessageBuilder::method_return(msg.serial)
            }
            (Some(PEER), _) => {
                body.str("Unknown method invoked on org.freedesktop.DBus.Peer interface");
                MessageBuilder::error(ErrorKind::UnknownMethod.name(), msg.serial)
            }
            _ => {
                body.str(&format!(
                    "Method \"{member}\" with signature \"{}\" on interface \"{}\" doesn't exist\n",
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
        self.emit_to_uncaptured(id, bytes);
    }

    /// Deliver a message with a DESTINATION other than the driver.
    /// `to` is what `dest` resolves to now; `activatable` whether `dest` has a service file,
    /// if the caller already looked it up (None: look it up here if needed).
    // Each argument is a fact the dispatcher already has; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn unicast(
        &mut self,
        id: ConnId,
        msg: &Message,
        dest: DestName<'_>,
        to: Option<ConnId>,
        activatable: Option<bool>,
        fds: Option<Fds>,
    ) {
        let is_reply = msg.msg_type == message::METHOD_RETURN || msg.msg_type == message::ERROR;
        let n_fds = fds.as_ref().map_or(0, |f| f.len());
        let mut to = to;
        // A connection of an instance created with `Allow` reaches only what its rules grant;
        // a name it may not see is answered exactly as a name nobody owns.
        let filtered = self.is_filtered(id);
        let mut may_start = true;
        if filtered {
            match to {
                Some(t) if !is_reply => match self.call_verdict(id, t, msg, n_fds) {
                    Verdict::Allow => {}
                    Verdict::Hidden => {
                        to = None;
                        may_start = false;
                    }
                    Verdict::Deny => {
                        self.reply_error(id, msg, self.filter_denial(id, msg, dest.text()));
                        return;
                    }
                },
                Some(_) => {}
                None => may_start = self.may_call_name(id, dest.text(), msg),
            }
        }
        let Some(to) = to else {
            if is_reply {
                // A reply to someone who left: nothing to do.
                return;
            }
            if may_start && !msg.no_auto_start() && msg.msg_type <= message::SIGNAL {
                match self.queue_for_start(id, msg, dest.text(), activatable, fds) {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => {
                        self.reply_error(id, msg, e);
                        return;
                    }
                }
            }
            let dest = dest.text();
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
        let (to_phase, to_filtered) = self
            .peers
            .get(to)
            .map_or((None, false), |p| (Some(p.phase), p.filtered));
        if to_phase == Some(Phase::Monitor) {
            return;
        }

        // Requested reply? Its record is taken out of the table here and, on every path
        // below that does not deliver the reply, put back before anything else runs.
        if filtered && is_reply {
            let reply_key = self.expected_reply(id, to, msg.reply_serial);
            if !self.filtered_reply_passes(id, to, msg, reply_key, n_fds) {
                return;
            }
        }
        let taken = if is_reply {
            self.take_expected_reply(id, to, msg.reply_serial)
        } else {
            None
        };
        let requested = taken.is_some();

        // Policy: sender's send rules, then receiver's receive rules.
        if let Err(e) = self.check_policy(id, to, msg, n_fds, requested, false) {
            self.restore_reply(taken);
            log::warn!("{}", e.text);
            if !is_reply || !msg.no_reply_expected() {
                self.reply_error(id, msg, e);
            }
            return;
        }
        if n_fds > 0 && !self.peers.get(to).is_some_and(|p| p.unix_fd) {
            self.restore_reply(taken);
            let err = BusError::new(
                ErrorKind::NotSupported,
                "Tried to send message with Unix file descriptors to a client that doesn't support that.",
            );
            self.reply_error(id, msg, err);
            return;
        }

        // The sender's uid over its quota (quota.rs): calls and unicast signals are refused;
        // a reply is owed to its caller and still goes (it counts, and back-pressure holds
        // the sender).
        let over = if is_reply || !self.quotas.anyone_over() {
            None
        } else {
            self.peers
                .get(id)
                .and_then(|p| self.quotas.sender_over(p.account))
        };

        // Expected-reply bookkeeping for method calls: recorded now, withdrawn below if
        // the call is not delivered after all.
        let mut new_record = None;
        if msg.msg_type == message::METHOD_CALL && !msg.no_reply_expected() {
            match self.record_call(id, to, msg.serial) {
                Ok(key) => new_record = Some(key),
                Err(err) => {
                    self.reply_error(id, msg, err);
                    return;
                }
            }
        }
        if let Some(over) = over {
            if let Some(key) = new_record {
                self.reply_delivered(id, key);
            }
            self.refuse_over_quota(id, msg, &over);
            return;
        }
        if !self.relay_enqueue(to, id, msg, fds.clone()) {
            self.restore_reply(taken);
            if let Some(key) = new_record {
                self.reply_delivered(id, key);
            }
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
            self.log_drop(to, "a message");
            return;
        }
        self.reply_passed(taken);
        if to_filtered {
            self.note_contact(id, to);
        }
        if self.matches.has_eavesdroppers() {
            // An Rc clone, not a copy of the name: no allocation per message.
            let sender_rc = self.peers.get(id).and_then(|p| p.unique_name.clone());
            let sender: &str = sender_rc.as_deref().unwrap_or(":not.active.yet");
            self.eavesdrop(id, msg, fds, Some(to), sender);
        }
    }

    /// A message for `to` was dropped because its queue is full (its sender was told, or
    /// asked to hear nothing): say so once per episode, naming the receiver and the limit,
    /// so that a flood of refused messages does not become a flood of log lines.
    #[cold]
    fn log_drop(&mut self, to: ConnId, what: &str) {
        let Some(p) = self.peers.get_mut(to) else {
            return;
        };
        if std::mem::replace(&mut p.drop_logged, true) {
            return;
        }
        let l = &self.config.limits;
        log::warn!(
            "Dropping {what} for connection \"{}\" ({}): its outgoing queue is over \
             max_outgoing_bytes={} or max_outgoing_unix_fds={} ({} bytes, {} fds queued); \
             further drops are not logged until it has read its queue",
            self.log_name(to),
            self.loginfo(to),
            l.max_outgoing_bytes,
            l.max_outgoing_unix_fds,
            self.peers.get(to).map_or(0, |p| p.outbox.bytes()),
            self.peers.get(to).map_or(0, |p| p.outbox.fds()),
        );
    }

    /// `id`'s uid is over its quota: its message is refused with `LimitsExceeded` (unless it
    /// asked for no reply), logged once per episode with the uid and the limit. Cold path.
    #[cold]
    fn refuse_over_quota(&mut self, id: ConnId, msg: &Message, over: &super::quota::OverQuota) {
        let uid = over
            .uid
            .map_or_else(|| "(unknown)".to_owned(), |u| u.to_string());
        if over.first {
            log::warn!(
                "Refusing messages from connection \"{}\" ({}): UID {uid} is over its quota ({})",
                self.log_name(id),
                self.loginfo(id),
                over.limit
            );
        }
        if !msg.no_reply_expected() {
            let err = BusError::new(
                ErrorKind::LimitsExceeded,
                format!(
                    "The bus holds too much of what UID {uid} sent ({}); try again once it has been delivered",
                    over.limit
                ),
            );
            self.reply_error(id, msg, err);
        }
    }

    /// Re-route a message that waited for its destination to be activated.
    pub(super) fn unicast_resolved(
        &mut self,
        id: ConnId,
        msg: &Message,
        dest: &str,
        fds: Option<Fds>,
    ) {
        self.unicast(id, msg, DestName::Text(dest), self.resolve(dest), None, fds);
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
        let f = facts(msg, n_fds, false, false);
        if sp.policy.can_send(&f, &[], Some(dest)) {
            Ok(())
        } else {
            // `dest` is the message's own DESTINATION (a name being activated, or the driver).
            let matched = sp.policy.send_rules_matched(&f, &[], Some(dest));
            let e = self.policy_denial("send", matched, Some(from), None, msg, false);
            log::warn!("{}", e.text);
            Err(e)
        }
    }

    /// Sender send policy then receiver receive policy. Inlined: with no rules that could
    /// refuse a message (the usual session bus) it is two flag reads; the rules are
    /// evaluated out of line.
    #[inline]
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
        self.check_policy_rules(from, to, msg, n_fds, requested, eavesdrop)
    }

    /// [`Bus::check_policy`] for a sender or receiver with rules that may refuse.
    #[inline(never)]
    fn check_policy_rules(
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
        let f = facts(msg, n_fds, requested, eavesdrop);
        if !eavesdrop
            && !sp
                .policy
                .can_send(&f, &self.owned_names_of(to), msg.destination())
        {
            let matched =
                sp.policy
                    .send_rules_matched(&f, &self.owned_names_of(to), msg.destination());
            let e = self.policy_denial("send", matched, Some(from), Some(to), msg, requested);
            return Err(e);
        }
        if !rp.policy.can_receive(&f, &self.owned_names_of(from)) {
            let matched = rp
                .policy
                .receive_rules_matched(&f, &self.owned_names_of(from));
            let e = self.policy_denial("receive", matched, Some(from), Some(to), msg, requested);
            return Err(e);
        }
        Ok(())
    }

    /// A signal without DESTINATION: every connection with a matching rule gets it once.
    /// A receiver whose queue is over its limit is disconnected
    /// ([`Bus::drop_slow_receiver`]); the sender and the other receivers are unaffected.
    // Not inlined into `dispatch` (and so into the reactor's `deliver`): inlined there, its
    // loop over the receivers cost about 20 instructions more per copy (fanout10).
    #[inline(never)]
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
        let origin = self
            .peers
            .get(id)
            .map_or(super::quota::NOBODY, |p| p.account);
        let mut header = None;
        let mut header10 = None;
        // The copies' charges to the sender are applied once, after the loop.
        self.quotas.begin_batch(origin);
        // Receivers with messages already queued would each copy the signal out of the
        // sender's receive buffer (`Bus::enqueue`): they share one copy instead.
        let mut detached = None;
        for &to in &receivers {
            let Some(rp) = self.peers.get(to) else {
                continue;
            };
            if rp.phase != Phase::Active || (n_fds > 0 && !rp.unix_fd) {
                continue;
            }
            if rp.filtered && !self.broadcast_allowed(id, to, msg) {
                continue;
            }
            if let Err(e) = self.check_policy(id, to, msg, n_fds, false, false) {
                // The sender is not told, but monitors see the error it would have got.
                self.capture_error(id, msg, &e);
                continue;
            }
            let out = if !rp.outbox.is_empty() && msg.is_slice() {
                let d = detached.get_or_insert_with(|| Detached::new(msg));
                self.relay_detached(d, id, rp.container_header, sender, fds.clone(), origin)
            } else {
                let h = if rp.container_header {
                    header10
                        .get_or_insert_with(|| self.container_header_for(id, msg, sender))
                        .clone()
                } else {
                    header
                        .get_or_insert_with(|| msg.relay_header(sender, None))
                        .clone()
                };
                Outgoing::relayed(h, msg, fds.clone(), origin)
            };
            if !self.enqueue_inline(to, out) {
                if to == id {
                    // Never the sender for its own signal: its copy alone is dropped.
                    self.log_drop(to, "its own broadcast");
                } else {
                    self.drop_slow_receiver(to, super::Owed::Signal);
                }
            }
        }
        self.quotas.end_batch();
        self.scratch_receivers = receivers;
    }

    /// A broadcast's copy for a receiver with messages already queued: from the message's
    /// one detached copy, shared by all such receivers (cold: a slow receiver).
    #[cold]
    fn relay_detached(
        &self,
        d: &mut Detached,
        from: ConnId,
        container_header: bool,
        sender: &str,
        fds: Option<Fds>,
        origin: u32,
    ) -> Outgoing {
        let m = &d.msg;
        let h = if container_header {
            d.header10
                .get_or_insert_with(|| self.container_header_for(from, m, sender))
        } else {
            d.header.get_or_insert_with(|| m.relay_header(sender, None))
        };
        Outgoing::relayed(h.clone(), m, fds, origin)
    }

    /// A relayed copy of `msg` from `from` for `to`, with header field 10 when `to` called
    /// RequestHeader.
    #[inline(always)]
    pub(super) fn relay_to(
        &self,
        to: ConnId,
        from: ConnId,
        msg: &Message,
        sender: &str,
        fds: Option<Fds>,
    ) -> Outgoing {
        let from_peer = self.peers.get(from);
        let header = if self.peers.get(to).is_some_and(|p| p.container_header) {
            let path = self.container_path_of(from).map_or("/", |p| &**p);
            msg.relay_header(sender, Some(path))
        } else {
            // `sender` is `from`'s unique name, whose SENDER field was made at Hello.
            match from_peer.and_then(|p| p.sender_tail.as_ref()) {
                Some(tail) => msg.relay_header_with(tail, sender),
                None => msg.relay_header(sender, None),
            }
        };
        let origin = from_peer.map_or(super::quota::NOBODY, |p| p.account);
        Outgoing::relayed(header, msg, fds, origin)
    }
    /// The field-10 header for a broadcast from `from` (for receivers that asked for it).
    pub(super) fn container_header_for(
        &self,
        from: ConnId,
        msg: &Message,
        sender: &str,
    ) -> message::RelayHeader {
        let path = self.container_path_of(from).map_or("/", |p| &**p);
        msg.relay_header(sender, Some(path))
    }
}

/// The name a unicast message is addressed to, as `unicast` is handed it: the message's own
/// DESTINATION, whose text is converted (a UTF-8 pass) only if an error or a filter needs
/// it, or a name already in text.
#[derive(Clone, Copy)]
enum DestName<'a> {
    /// The DESTINATION field of this message.
    Of(&'a Message),
    /// This name.
    Text(&'a str),
}

impl<'a> DestName<'a> {
    /// The name as text.
    fn text(self) -> &'a str {
        match self {
            DestName::Of(m) => m.destination().unwrap_or_default(),
            DestName::Text(s) => s,
        }
    }
}

/// A broadcast message copied out of its receive buffer once, with the relay headers made
/// for it (see `Bus::broadcast`).
struct Detached {
    msg: Message,
    header: Option<message::RelayHeader>,
    header10: Option<message::RelayHeader>,
}

impl Detached {
    #[cold]
    fn new(msg: &Message) -> Self {
        Detached {
            msg: msg.detached(),
            header: None,
            header10: None,
        }
    }
}

/// A relayed copy of `msg` with SENDER stamped.
pub(super) fn relay(msg: &Message, sender: &str, fds: Option<Fds>) -> Outgoing {
    // Monitor copies charge nobody (quota.rs).
    Outgoing::relayed(
        msg.relay_header(sender, None),
        msg,
        fds,
        super::quota::NOBODY,
    )
}

impl Bus {
    /// The AccessDenied error for a message the XML policy refused, worded as dbus-daemon
    /// words it (and logs it): `Rejected send message, 2 matched rules; type="method_call",
    /// sender=":1.0" (uid=0 pid=3104 comm="…") interface="…" member="…" error name="(unset)"
    /// requested_reply="0" destination="…" (uid=… pid=… comm="…")`. `direction` is "send" or
    /// "receive"; `from` None is the bus itself; `to` None is the bus, or a name not owned yet.
    pub(super) fn policy_denial(
        &self,
        direction: &str,
        matched: usize,
        from: Option<ConnId>,
        to: Option<ConnId>,
        msg: &Message,
        requested: bool,
    ) -> BusError {
        let (sender, sender_info) = match from {
            Some(f) => (self.log_name(f), self.loginfo(f)),
            None => ("(unset)", "(bus)"),
        };
        let dest_info = match to {
            Some(t) => self.loginfo(t),
            None => "bus",
        };
        BusError::new(
            ErrorKind::AccessDenied,
            format!(
                "Rejected {direction} message, {matched} matched rules; type=\"{}\", sender=\"{sender}\" ({sender_info}) interface=\"{}\" member=\"{}\" error name=\"{}\" requested_reply=\"{}\" destination=\"{}\" ({dest_info})",
                type_name(msg.msg_type),
                msg.interface().unwrap_or("(unset)"),
                msg.member().unwrap_or("(unset)"),
                msg.error_name().unwrap_or("(unset)"),
                requested as u8,
                msg.destination().unwrap_or(DRIVER_NAME),
            ),
        )
    }
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
