//! Monitors (`BecomeMonitor`) and eavesdroppers (`eavesdrop='true'` rules): the copies of
//! traffic they are owed, taken at dbus-daemon's capture points.

use super::connection::{Fds, Outgoing, Phase};
use super::error::BusError;
use super::routing::{facts, relay, NameList};
use super::{Bus, ConnId};
use crate::wire::message::Message;

impl Bus {
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

    /// Capture a method call to the driver from a connection that has not completed Hello.
    /// The dispatcher leaves those to the driver so that a successful Hello is shown with
    /// the unique name it assigns as SENDER, as dbus-daemon shows it; this covers the
    /// refused ones (`:not.active.yet`), before their error. A no-op once registered.
    pub(super) fn capture_unregistered(&mut self, id: ConnId, msg: &Message, fds: Option<&Fds>) {
        if self
            .peers
            .get(id)
            .is_some_and(|p| p.phase == Phase::Authenticated)
        {
            self.capture(id, msg, fds);
        }
    }

    pub(super) fn capture_out(&mut self, msg: &Message, out: Outgoing, sender_names: &[&str]) {
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
                if !self.enqueue(m, o) {
                    // A monitor that cannot keep up is disconnected, never silently
                    // short of copies (dbus-broker: "Monitor :1.N is being disconnected
                    // as it does not have the resources to receive a message it
                    // subscribed to.").
                    self.drop_slow_receiver(m, super::Owed::MonitorCopy);
                }
            }
        }
    }

    /// Show monitors the error the bus would send `to` for `msg`, without sending it.
    pub(super) fn capture_error(&mut self, to: ConnId, msg: &Message, err: &BusError) {
        if self.monitors.is_empty() {
            return;
        }
        if let Some(bytes) = self.build_error(to, msg.serial, err.name(), &err.text) {
            self.capture_bus_message(bytes);
        }
    }

    /// Copies of a unicast for eavesdropping rules (`eavesdrop='true'`).
    pub(super) fn eavesdrop(
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
            if !self.enqueue(r, out) {
                // An eavesdropper is a subscriber like a broadcast receiver: the same policy.
                self.drop_slow_receiver(r, super::Owed::Signal);
            }
        }
    }

    /// Copies of a method call to the driver for eavesdropping rules, sent once the driver
    /// has handled it, as dbus-daemon matches driver calls after running them (so the rule an
    /// AddMatch adds already sees that call, and a Hello is shown with the name it gave).
    /// The driver's own replies are not eavesdropped, there as here.
    pub(super) fn eavesdrop_driver_call(&mut self, id: ConnId, msg: &Message, fds: Option<Fds>) {
        if !self.matches.has_eavesdroppers() {
            return;
        }
        let sender_rc = match self.peers.get(id) {
            Some(p) if p.phase == Phase::Active => p.unique_name.clone(),
            _ => return,
        };
        let sender: &str = sender_rc.as_deref().unwrap_or(":not.active.yet");
        self.eavesdrop(id, msg, fds, None, sender);
    }

    /// Turn `id` into a monitor: drop its names, rules and pending replies (BecomeMonitor).
    pub fn make_monitor(&mut self, id: ConnId, rules: Vec<super::match_rule::MatchRule>) {
        self.drop_identity(id, false);
        if let Some(p) = self.peers.get_mut(id) {
            p.phase = Phase::Monitor;
            p.monitor_rules = rules;
        }
        self.monitors.push(id);
    }
}
