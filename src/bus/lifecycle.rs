//! A connection's life in the bus: accepted, authenticated, registered with Hello (its
//! unique name), possibly turned into a monitor, and gone, with everything it held released
//! in dbus-daemon's order.

use super::connection::{Credentials, Outgoing, Peer, Phase};
use super::{Bus, ConnId, DRIVER_IFACE, DRIVER_NAME, DRIVER_PATH};
use crate::wire::marshal::{encode_rc, BodyRef, BodyWriter, Header};
use crate::wire::message::{self, flags, SenderTail};
use std::rc::Rc;

impl Bus {
    /// Register a newly accepted connection; returns its id (the reactor token).
    pub fn accept(&mut self, creds: Credentials) -> ConnId {
        let policy = self
            .config
            .policy
            .for_connection(creds.uid, creds.gids.as_deref().unwrap_or(&[]));
        self.counts.incomplete += 1;
        let uid = creds.uid;
        let id = self.peers.insert(Peer::new(creds, policy));
        self.peers[id].account = self.quotas.open(id, uid);
        id
    }

    /// SASL finished for `id`. Returns false if policy refuses the identity (the reactor
    /// then closes the connection).
    pub fn authenticated(&mut self, id: ConnId, uid: Option<u32>, unix_fd: bool) -> bool {
        let daemon_uid = self.daemon_uid;
        let Some(peer) = self.peers.get_mut(id) else {
            return false;
        };
        if uid.is_some() {
            peer.creds.uid = uid;
            self.quotas.rehome(peer.account, uid);
        }
        // A container socket accepts only its creator's uid.
        if let Some(n) = peer.container {
            if !self.containers.uid_allowed(n, peer.creds.uid) {
                log::info!(
                    "refusing uid {:?} on a container socket: not the container's owner",
                    peer.creds.uid
                );
                return false;
            }
        }
        let gids = peer.creds.gids.as_deref().unwrap_or(&[]);
        if !self
            .config
            .policy
            .allows_connect(peer.creds.uid, gids, daemon_uid)
        {
            log::info!(
                "refusing connection from uid {:?}: not allowed by policy",
                peer.creds.uid
            );
            return false;
        }
        peer.policy = self.config.policy.for_connection(peer.creds.uid, gids);
        peer.unix_fd = unix_fd;
        peer.phase = Phase::Authenticated;
        true
    }

    /// Allocate the next unique name.
    fn allocate_unique(&mut self) -> (u64, Rc<str>) {
        let n = self.next_unique;
        self.next_unique += 1;
        (n + 1, unique_name(n))
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
        peer.sender_tail = SenderTail::new(crate::wire::Endian::Little, &name);
        peer.unique_name = Some(name.clone());
        self.unique.insert(name.clone(), id);
        Some(name)
    }

    /// Queue Hello's reply and NameAcquired for `id` (registered as `name`), each encoded
    /// straight into its shared buffer (one allocation per message). Returns false, having sent nothing,
    /// when the messages must take the general path ([`Bus::emit_to`]): a monitor must see
    /// them, or `id`'s receive policy must judge them.
    pub(super) fn send_hello_replies(&mut self, id: ConnId, reply_serial: u32, name: &str) -> bool {
        if !self.monitors.is_empty() {
            return false;
        }
        let Some(peer) = self.peers.get_mut(id) else {
            return true;
        };
        if !peer.policy.allows_all_messages() || peer.container_header {
            return false;
        }
        let reply = Header {
            msg_type: message::METHOD_RETURN,
            flags: flags::NO_REPLY_EXPECTED,
            serial: peer.next_serial(),
            reply_serial: Some(reply_serial),
            destination: Some(name),
            sender: Some(DRIVER_NAME),
            ..Header::default()
        };
        let acquired = Header {
            msg_type: message::SIGNAL,
            flags: flags::NO_REPLY_EXPECTED,
            serial: peer.next_serial(),
            path: Some(DRIVER_PATH),
            interface: Some(DRIVER_IFACE),
            member: Some("NameAcquired"),
            destination: Some(name),
            sender: Some(DRIVER_NAME),
            ..Header::default()
        };
        for h in [reply, acquired] {
            if !self.enqueue(id, Outgoing::shared(encode_rc(h, BodyRef::Str(name)))) {
                self.drop_slow_receiver(id, super::Owed::Reply);
                break;
            }
        }
        true
    }

    /// Release everything a connection holds in the bus (names, unique name, rules,
    /// expected replies), emitting the signals in dbus-daemon's order. `leaving`: the
    /// connection is being disconnected, so what is queued for it is discarded unread.
    pub(super) fn drop_identity(&mut self, id: ConnId, leaving: bool) {
        let mut events = Vec::new();
        self.names.release_all(id, &mut events);
        self.emit_name_events(events);
        // The unique name goes last; its NameLost reaches a connection that becomes a
        // monitor. A disconnecting one would never read it, so it is built only for
        // monitors to see (one message less per connection's lifetime otherwise).
        let seen = !leaving || !self.monitors.is_empty();
        if let Some(u) = self
            .peers
            .get(id)
            .and_then(|p| p.unique_name.clone())
            .filter(|_| seen)
        {
            let mut b = BodyWriter::new();
            b.str(&u);
            self.driver_signal_to(id, "NameLost", &b);
        }
        let unique = self.peers.get_mut(id).and_then(|p| {
            p.sender_tail = None;
            p.unique_name.take()
        });
        if let Some(u) = &unique {
            self.unique.remove(u);
            self.driver_broadcast_strs("NameOwnerChanged", &[u, u, ""]);
        }
        self.matches.remove_owner(id);
        self.forget_replies_of(id);
    }

    /// The connection is gone (EOF, error, or closed by the bus).
    pub fn disconnect(&mut self, id: ConnId) {
        if !self.peers.contains(id) {
            return;
        }
        self.drop_identity(id, true);
        self.containers_disconnected(id);
        self.monitors.retain(|&m| m != id);
        let mut peer = self.peers.remove(id);
        // Its queue is released a piece per turn (`Bus::reap`): dropping millions of
        // queued messages here would stall every other client for that long.
        self.delivery.bury(&mut peer.outbox);
        self.quotas.close(peer.account);
        self.resume_released();
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

    /// Work deferred to the end of handling one event: deliveries to freshly owned names.
    pub fn run_deferred(&mut self) {
        while let Some(name) = self.starts.acquired.pop() {
            self.name_acquired_hook(&name);
        }
        self.emit_instance_removed();
    }
}

/// `:1.N`, formatted on the stack: the name costs one allocation, its shared string.
fn unique_name(n: u64) -> Rc<str> {
    let mut buf = *b":1.00000000000000000000"; // ":1." and room for u64::MAX's 20 digits
    let mut at = buf.len();
    let mut v = n;
    while let Some(d) = at
        .checked_sub(1)
        .and_then(|i| buf.get_mut(i))
        .filter(|_| at > 3)
    {
        *d = b'0' + (v % 10) as u8;
        at -= 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let digits = buf.get(at..).unwrap_or(b"0");
    let mut name = arrayvec::ArrayString::<23>::from(":1.").unwrap_or_default();
    for &d in digits {
        name.push(char::from(d));
    }
    Rc::from(name.as_str())
}

#[cfg(test)]
mod tests {
    use super::unique_name;

    #[test]
    fn unique_names_are_decimal() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            assert_eq!(&*unique_name(n), format!(":1.{n}"));
        }
    }
}
