//! Per-connection bus state: identity, credentials, lifecycle, outgoing queue and quotas.

use super::match_rule::MatchRule;
use super::policy::ConnPolicy;
use crate::wire::message::{Message, RelayHeader};
use std::ops::Range;
use std::rc::Rc;

/// Socket credentials of a peer, read once at accept time.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// SO_PEERCRED uid (after authentication: the authenticated uid).
    pub uid: Option<u32>,
    /// SO_PEERCRED pid.
    pub pid: Option<u32>,
    /// Primary and supplementary groups, sorted, deduplicated (None if unknown).
    pub gids: Option<Vec<u32>>,
    /// SO_PEERSEC label, without trailing NUL.
    pub security_label: Option<Vec<u8>>,
}

impl Credentials {
    /// Write these credentials as `GetConnectionCredentials` returns them (`a{sv}`), with
    /// the Containers1 instance key first when the connection is contained.
    /// `process_fd`: the reply carries the peer's pidfd as fd 0 (see [`super::World::peer_pidfd`]).
    pub fn write_dict(
        &self,
        out: &mut crate::wire::marshal::BodyWriter,
        instance: Option<&str>,
        process_fd: bool,
    ) {
        out.array("{sv}", |a| {
            if let Some(path) = instance {
                a.dict_entry(|e| {
                    e.str(super::containers::CREDENTIALS_INSTANCE_KEY)
                        .variant("o", |v| {
                            v.object_path(path);
                        });
                });
            }
            if let Some(pid) = self.pid {
                a.dict_entry(|e| {
                    e.str("ProcessID").variant("u", |v| {
                        v.u32(pid);
                    });
                });
            }
            if process_fd {
                a.dict_entry(|e| {
                    e.str("ProcessFD").variant("h", |v| {
                        v.fd(0);
                    });
                });
            }
            if let Some(uid) = self.uid {
                a.dict_entry(|e| {
                    e.str("UnixUserID").variant("u", |v| {
                        v.u32(uid);
                    });
                });
            }
            if let Some(gids) = &self.gids {
                a.dict_entry(|e| {
                    e.str("UnixGroupIDs").variant("au", |v| {
                        v.array("u", |arr| {
                            for g in gids {
                                arr.u32(*g);
                            }
                        });
                    });
                });
            }
            if let Some(label) = &self.security_label {
                // Unlike GetConnectionSELinuxSecurityContext, this key carries the NUL.
                a.dict_entry(|e| {
                    e.str("LinuxSecurityLabel").variant("ay", |v| {
                        v.array("y", |arr| {
                            for &b in label.iter().chain(std::iter::once(&0)) {
                                arr.u8(b);
                            }
                        });
                    });
                });
            }
        });
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// SASL in progress (handled by the reactor).
    Authenticating,
    /// Authenticated, Hello not yet called.
    Authenticated,
    /// Hello done: has a unique name.
    Active,
    /// Became a monitor: receives copies, may not send.
    Monitor,
}

/// The fds attached to one message, shared by all its deliveries and closed when the last
/// delivery is written or dropped.
pub type Fds = Rc<[std::os::fd::OwnedFd]>;

/// What the header of a queued message is.
// The relay header is kept inline on purpose: boxing it would cost an allocation per delivery.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum OutHeader {
    /// The bytes in `data` are the whole message (bus-originated).
    None,
    /// A relayed message: this header, then the body range of `data`.
    Relay(RelayHeader),
}

/// One message queued for a connection. Relays share the sender's buffer (`data`) so the
/// body is never copied in user space.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Header to write before `data[body]` (or nothing).
    pub header: OutHeader,
    /// The shared message buffer.
    pub data: Rc<[u8]>,
    /// Range of `data` written after the header (the whole buffer for bus messages).
    pub body: Range<u32>,
    /// Fds to attach to the first byte written.
    pub fds: Option<Fds>,
    /// Bytes of this message already written (partial writes).
    pub written: usize,
    /// The sender's quota account, charged while this is queued
    /// (`quota::NOBODY` for the bus's own messages and monitor copies).
    pub origin: u32,
    /// What `Delivery::push` charged for it (`delivery::cost`), released as is: kept
    /// rather than worked out again when it is written (it fits the struct's padding).
    pub charged: u32,
}

impl Outgoing {
    /// The pieces that go on the wire, in order: the (patched) header's parts, then the
    /// body, all borrowed (the body is never copied). The reactor's `push_slices` repeats
    /// this layout for a fresh message (building this list there cost 63 instructions per
    /// relayed message): change both together.
    pub fn parts(&self) -> arrayvec::ArrayVec<&[u8], 4> {
        let mut parts = arrayvec::ArrayVec::new();
        match &self.header {
            OutHeader::None => {}
            OutHeader::Relay(RelayHeader::Splice {
                fixed,
                middle,
                tail,
            }) => {
                parts.push(&fixed[..]);
                parts.push(
                    self.data
                        .get(middle.start as usize..middle.end as usize)
                        .unwrap_or(&[]),
                );
                parts.push(&tail[..]);
            }
            OutHeader::Relay(RelayHeader::Rebuilt(h)) => parts.push(&h[..]),
        }
        parts.push(
            self.data
                .get(self.body.start as usize..self.body.end as usize)
                .unwrap_or(&[]),
        );
        parts
    }

    /// A relayed copy of `msg` under `header` (SENDER stamped, field 10 when asked for):
    /// the body stays in the message's receive buffer, shared, never copied. `origin` is
    /// the sender's quota account (`quota::NOBODY` for monitor copies).
    #[inline(always)]
    pub fn relayed(header: RelayHeader, msg: &Message, fds: Option<Fds>, origin: u32) -> Self {
        Outgoing {
            header: OutHeader::Relay(header),
            data: msg.buffer().clone(),
            body: msg.body_in_buffer(),
            fds,
            written: 0,
            origin,
            charged: 0,
        }
    }

    /// A bus-originated message.
    pub fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len() as u32;
        Outgoing {
            header: OutHeader::None,
            data: Rc::from(bytes),
            body: 0..len,
            fds: None,
            written: 0,
            origin: super::quota::NOBODY,
            charged: 0,
        }
    }

    /// A shared bus-originated message (one buffer for every receiver of a broadcast).
    pub fn shared(data: Rc<[u8]>) -> Self {
        let len = data.len() as u32;
        Outgoing {
            header: OutHeader::None,
            data,
            body: 0..len,
            fds: None,
            written: 0,
            origin: super::quota::NOBODY,
            charged: 0,
        }
    }

    /// The range of `data` this message uses.
    fn used(&self) -> Range<u32> {
        let lo = match &self.header {
            OutHeader::Relay(RelayHeader::Splice { middle, .. }) => {
                middle.start.min(self.body.start)
            }
            _ => self.body.start,
        };
        lo..self.body.end
    }

    /// Whether `data` holds more than this message (it is a slice of a shared receive
    /// buffer). A spliced relay leaves out only the sender's fixed header; a rebuilt one
    /// leaves out the sender's whole header, so it counts as pinning only when the buffer
    /// is more than twice what it uses (a large message in its own buffer is never copied).
    pub fn pins_buffer(&self) -> bool {
        let (used, len) = (self.used().len(), self.data.len());
        let slack = crate::wire::message::FIXED_HEADER_LEN;
        match &self.header {
            OutHeader::Relay(RelayHeader::Rebuilt(_)) => len > 2 * used + slack,
            _ => len > used + slack,
        }
    }

    /// Make `data` hold only the bytes this message uses, copying them out when it is a
    /// slice of a larger shared receive buffer: a message that waits in a queue must not
    /// keep a whole receive buffer alive for a few bytes of it (see `Bus::enqueue`).
    #[cold]
    pub fn detach(&mut self) {
        if !self.pins_buffer() {
            return;
        }
        let Range { start: lo, end: hi } = self.used();
        let Some(bytes) = self.data.get(lo as usize..hi as usize) else {
            return;
        };
        self.data = Rc::from(bytes);
        self.body = self.body.start - lo..hi - lo;
        if let OutHeader::Relay(RelayHeader::Splice { middle, .. }) = &mut self.header {
            *middle = middle.start - lo..middle.end - lo;
        }
    }

    /// Total bytes this message occupies on the wire.
    pub fn len(&self) -> usize {
        let body = (self.body.end - self.body.start) as usize;
        body + match &self.header {
            OutHeader::None => 0,
            OutHeader::Relay(RelayHeader::Splice { middle, tail, .. }) => {
                16 + (middle.end - middle.start) as usize + tail.len()
            }
            OutHeader::Relay(RelayHeader::Rebuilt(h)) => h.len(),
        }
    }

    /// Whether the message is empty (never true for a real message).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of fds attached.
    pub fn n_fds(&self) -> usize {
        self.fds.as_ref().map_or(0, |f| f.len())
    }
}

/// Bus-side state of one connection.
#[derive(Debug)]
pub struct Peer {
    /// Lifecycle phase.
    pub phase: Phase,
    /// The unique name's number (`:1.N`), assigned at Hello; 0 before.
    pub serial_no: u64,
    /// `:1.N` once Hello succeeded.
    pub unique_name: Option<Rc<str>>,
    /// The SENDER field relayed messages from it get (little-endian, as nearly all clients
    /// send), made with `unique_name` and dropped with it.
    pub sender_tail: Option<crate::wire::message::SenderTail>,
    /// Socket credentials.
    pub creds: Credentials,
    /// Whether fds may be sent to this peer.
    pub unix_fd: bool,
    /// A message for it was dropped because its queue was full, and that was logged: the
    /// next such drop is logged only after its queue has emptied (one line per episode).
    pub drop_logged: bool,
    /// Policy rules that apply to this connection.
    pub policy: ConnPolicy,
    /// Last serial used for a bus-originated message to this peer.
    pub bus_serial: u32,
    /// Queued outgoing messages and their charges.
    pub outbox: super::delivery::Outbox,
    /// The bus asked for this connection to be closed: read nothing more from it.
    pub closing: bool,
    /// The unique-name destination this peer last sent to, resolved: (its number, the
    /// unique-name table's generation then, the connection). A sender usually talks to
    /// one peer in a row; valid while the generation is unchanged (`UniqueNames`).
    pub last_unique_dest: (u64, u64, super::ConnId),
    /// Method calls this peer made that still await a reply.
    pub pending_replies: usize,
    /// Method calls to this peer that it has not answered yet.
    pub owed_replies: usize,
    /// Rules of a monitor connection (forced to eavesdrop).
    pub monitor_rules: Vec<MatchRule>,
    /// Largest message received from this peer (the bus holds one whole message at a time
    /// while routing it): `PeakIncomingBytes`.
    pub peak_in_bytes: u32,
    /// Most fds one message from this peer carried: `PeakIncomingFDs`.
    pub peak_in_fds: u32,
    /// Peak match rules.
    pub peak_match_rules: usize,
    /// Peak names.
    pub peak_names: usize,
    /// Containers1 instance whose socket accepted this connection (permanent).
    pub container: Option<u64>,
    /// Its instance was created with `Allow` rules: what it may reach is filtered.
    pub filtered: bool,
    /// Called Containers1.RequestHeader: messages to it carry header field 10.
    pub container_header: bool,
    /// How log lines describe this peer (`Bus::loginfo`), once worked out.
    pub loginfo: std::cell::OnceCell<Box<str>>,
    /// Its quota account (`quota.rs`): what the bus holds of what it sent.
    pub account: u32,
}

impl Peer {
    /// A freshly accepted connection.
    pub fn new(creds: Credentials, policy: ConnPolicy) -> Self {
        Peer {
            phase: Phase::Authenticating,
            serial_no: 0,
            unique_name: None,
            sender_tail: None,
            creds,
            unix_fd: false,
            drop_logged: false,
            policy,
            bus_serial: 0,
            outbox: super::delivery::Outbox::default(),
            closing: false,
            // Generation 0 is never current: nothing resolved yet.
            last_unique_dest: (0, 0, 0),
            pending_replies: 0,
            owed_replies: 0,
            monitor_rules: Vec::new(),
            peak_in_bytes: 0,
            peak_in_fds: 0,
            peak_match_rules: 0,
            peak_names: 0,
            container: None,
            filtered: false,
            container_header: false,
            loginfo: std::cell::OnceCell::new(),
            account: super::quota::NOBODY,
        }
    }

    /// Next serial for a message the bus originates towards this peer.
    pub fn next_serial(&mut self) -> u32 {
        self.bus_serial = self.bus_serial.wrapping_add(1).max(1);
        self.bus_serial
    }

    /// The name to stamp as SENDER before Hello completes.
    pub fn sender_name(&self) -> &str {
        self.unique_name.as_deref().unwrap_or(":not.active.yet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(out: &Outgoing) -> Vec<u8> {
        out.parts().concat()
    }

    #[test]
    fn detach_copies_a_slice_out_of_a_shared_buffer() {
        // A receive buffer holding three "messages"; the relay uses the middle one's header
        // fields (10..18) and body (18..30).
        let buf: Rc<[u8]> = (0..64u8).collect();
        let mut out = Outgoing {
            header: OutHeader::Relay(RelayHeader::Splice {
                fixed: [7; 16],
                middle: 10..18,
                tail: arrayvec::ArrayVec::from_iter([1, 2, 3]),
            }),
            data: buf.clone(),
            body: 18..30,
            fds: None,
            written: 0,
            origin: crate::bus::quota::NOBODY,
            charged: 0,
        };
        let before = wire(&out);
        assert!(out.pins_buffer());
        out.detach();
        assert!(!out.pins_buffer());
        assert_eq!(out.data.len(), 20, "only the bytes it uses");
        assert_eq!(wire(&out), before);
        assert!(!Rc::ptr_eq(&out.data, &buf));
        // A message alone in its buffer is left as it is.
        let own = out.data.clone();
        out.detach();
        assert!(Rc::ptr_eq(&out.data, &own));
        // A rebuilt relay of a large body in its own buffer (header left out) is no slice.
        let mut large = Outgoing {
            header: OutHeader::Relay(RelayHeader::Rebuilt(vec![0; 40])),
            data: buf.clone(),
            body: 24..64,
            fds: None,
            written: 0,
            origin: crate::bus::quota::NOBODY,
            charged: 0,
        };
        assert!(!large.pins_buffer());
        large.detach();
        assert!(Rc::ptr_eq(&large.data, &buf));
        large.body = 60..64;
        assert!(large.pins_buffer());
        let mut bus_msg = Outgoing::shared(buf.clone());
        assert!(!bus_msg.pins_buffer());
        bus_msg.detach();
        assert!(Rc::ptr_eq(&bus_msg.data, &buf));
    }
}
