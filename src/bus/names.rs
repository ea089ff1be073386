//! Well-known name ownership: primary owners, queues, and the events they produce.
//!
//! [`NameRegistry`] is a pure data structure implementing the `RequestName` /
//! `ReleaseName` state machine of the bus driver (the D-Bus specification, "Message Bus
//! Messages"), the names a connection loses when it disconnects or becomes a monitor, and
//! the queries behind `GetNameOwner`, `NameHasOwner`, `ListQueuedOwners` and `ListNames`.
//!
//! What it does **not** do (the caller's job, before calling [`NameRegistry::request`]
//! or [`NameRegistry::release`]):
//! - validate the bus name (syntax, length);
//! - reject names starting with `:` (unique names live in the connection table) and
//!   `org.freedesktop.DBus` (owned by the bus itself), both `InvalidArgs`;
//! - LSM and `<policy>` `own`/`own_prefix` checks (`AccessDenied`);
//! - the `max_names_per_connection` limit (`LimitsExceeded`), using [`NameRegistry::count`]
//!   plus one for the unique name, and [`NameRegistry::would_be_new`];
//! - turning [`NameEvent`]s into `NameLost` / `NameOwnerChanged` / `NameAcquired`
//!   messages (queued *before* the method reply) and delivering pending activation
//!   messages after a name gains an owner.
//!
//! Names are interned as `Rc<str>`: the registry key, the per-connection lists and
//! the emitted events all share one allocation per owned name.
//!
//! Cost model: every operation is O(1) hash work plus O(q) on the length q of the one
//! name's queue (the queue is a vector, like dbus-daemon's list). Per-connection
//! bookkeeping is maintained incrementally, so nothing ever scans all names;
//! [`NameRegistry::release_all`] is O(k log k + Σq) for a connection holding k names.

use std::collections::HashMap;
use std::mem;
use std::rc::Rc;

use crate::bus::ConnId;

/// Hash map with a randomly keyed hasher: names are chosen by peers.
type Map<K, V> = HashMap<K, V, ahash::RandomState>;

/// Reply codes of `RequestName` (the `u` it returns).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestReply {
    /// The caller is now the primary owner (new name or replacement).
    PrimaryOwner = 1,
    /// The caller is (still) waiting in the name's queue.
    InQueue = 2,
    /// The name is owned by someone else and the caller asked not to be queued.
    Exists = 3,
    /// The caller already was the primary owner; its stored flags were updated.
    AlreadyOwner = 4,
}

/// Reply codes of `ReleaseName` (the `u` it returns).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReply {
    /// The caller was primary owner or queued and no longer is.
    Released = 1,
    /// Nobody owns the name.
    NonExistent = 2,
    /// The name has an owner, but the caller is neither primary nor queued.
    NotOwner = 3,
}

/// `RequestName` flag bits. Other bits are ignored.
pub mod request_flags {
    /// The owner lets a later `REPLACE_EXISTING` request take the name over.
    pub const ALLOW_REPLACEMENT: u32 = 1;
    /// Take the name over if the current owner allows replacement (never stored).
    pub const REPLACE_EXISTING: u32 = 2;
    /// Never wait in the queue: fail with EXISTS instead, and leave the name
    /// entirely (rather than being queued) when replaced.
    pub const DO_NOT_QUEUE: u32 = 4;
}

use request_flags::{ALLOW_REPLACEMENT, DO_NOT_QUEUE, REPLACE_EXISTING};

/// One ownership change to announce, in emission order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameEvent {
    /// `NameLost(name)` unicast to `conn` (which may be departing: monitors can still see it).
    Lost {
        /// The name.
        name: Rc<str>,
        /// The connection that lost primary ownership.
        conn: ConnId,
    },
    /// `NameOwnerChanged(name, old, new)` broadcast; `None` is the empty string.
    OwnerChanged {
        /// The name.
        name: Rc<str>,
        /// Previous primary owner, `None` if the name was unowned.
        old: Option<ConnId>,
        /// New primary owner, `None` if the name is now unowned.
        new: Option<ConnId>,
    },
    /// `NameAcquired(name)` unicast to `conn`.
    Acquired {
        /// The name.
        name: Rc<str>,
        /// The connection that became primary owner.
        conn: ConnId,
    },
}

/// One entry of a name's owner list: the primary owner or a queued requester.
#[derive(Debug, Clone, Copy)]
struct Owner {
    conn: ConnId,
    /// Stored from the latest request by this connection.
    allow_replacement: bool,
    /// Stored from the latest request by this connection.
    do_not_queue: bool,
}

impl Owner {
    fn new(conn: ConnId, flags: u32) -> Self {
        Owner {
            conn,
            allow_replacement: flags & ALLOW_REPLACEMENT != 0,
            do_not_queue: flags & DO_NOT_QUEUE != 0,
        }
    }

    fn set_flags(&mut self, flags: u32) {
        *self = Owner::new(self.conn, flags);
    }
}

/// State of one owned name. Exists only while the name has a primary owner.
#[derive(Debug)]
struct NameEntry {
    /// The interned name (same allocation as the map key).
    name: Rc<str>,
    /// `owners[0]` is the primary owner, the rest is the queue in order. Never empty.
    owners: Vec<Owner>,
    /// Index of `name` in the primary owner's [`ConnNames::primary`], so that losing
    /// the name is an O(1) `swap_remove` there.
    primary_idx: usize,
}

/// Per-connection view, maintained incrementally.
#[derive(Debug, Default)]
struct ConnNames {
    /// Names this connection is primary owner of (unordered).
    primary: Vec<Rc<str>>,
    /// Names it is primary owner of or queued for, each with the sequence number of
    /// the moment it joined the name's owner list (orders disconnect release).
    joined: Map<Rc<str>, u64>,
}

/// Ownership of well-known names (see the module documentation for the caller's duties).
///
/// Connections are identified by [`ConnId`]; the registry keeps a small slot per
/// connection id it has seen, so [`NameRegistry::release_all`] must be called when a
/// connection goes away (before its slab index is reused).
#[derive(Debug)]
pub struct NameRegistry {
    names: Map<Rc<str>, NameEntry>,
    /// Indexed by `ConnId` (a dense slab index).
    conns: Vec<ConnNames>,
    /// Next join sequence number; u64 cannot wrap in practice.
    next_seq: u64,
}

impl Default for NameRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl NameRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        NameRegistry {
            names: Map::default(),
            conns: Vec::new(),
            next_seq: 0,
        }
    }

    /// Slot of `conn`, created on demand.
    fn conn_mut(&mut self, conn: ConnId) -> &mut ConnNames {
        if conn >= self.conns.len() {
            self.conns.resize_with(conn + 1, ConnNames::default);
        }
        // Just resized to contain `conn`.
        &mut self.conns[conn]
    }

    /// Records that `conn` entered `name`'s owner list.
    fn join(&mut self, name: &Rc<str>, conn: ConnId) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.conn_mut(conn).joined.insert(name.clone(), seq);
    }

    /// Records that `conn` left `name`'s owner list.
    fn leave(&mut self, name: &str, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn) {
            c.joined.remove(name);
        }
    }

    /// Appends `name` to `conn`'s primary list; returns its index there.
    fn push_primary(&mut self, name: &Rc<str>, conn: ConnId) -> usize {
        let list = &mut self.conn_mut(conn).primary;
        list.push(name.clone());
        list.len() - 1
    }

    /// Removes the name at `idx` of `conn`'s primary list, fixing the index stored in
    /// the entry of whichever name `swap_remove` moved into its place.
    fn remove_primary(&mut self, conn: ConnId, idx: usize) {
        let Some(c) = self.conns.get_mut(conn) else {
            debug_assert!(false, "primary owner without a slot");
            return;
        };
        if idx >= c.primary.len() {
            debug_assert!(false, "stale primary index");
            return;
        }
        c.primary.swap_remove(idx);
        if let Some(moved) = c.primary.get(idx) {
            if let Some(e) = self.names.get_mut(&**moved) {
                e.primary_idx = idx;
            }
        }
    }

    /// `RequestName(name, flags)` by `conn`, after the caller's validity, policy and
    /// limit checks. Appends the resulting ownership changes to `events` in emission
    /// order and returns the reply code.
    pub fn request(
        &mut self,
        name: &str,
        conn: ConnId,
        flags: u32,
        events: &mut Vec<NameEvent>,
    ) -> RequestReply {
        let replace = flags & REPLACE_EXISTING != 0;
        let dnq = flags & DO_NOT_QUEUE != 0;

        let Some(entry) = self.names.get_mut(name) else {
            // Unowned: the caller becomes primary.
            let rc: Rc<str> = Rc::from(name);
            let idx = self.push_primary(&rc, conn);
            self.join(&rc, conn);
            self.names.insert(
                rc.clone(),
                NameEntry {
                    name: rc.clone(),
                    owners: vec![Owner::new(conn, flags)],
                    primary_idx: idx,
                },
            );
            events.push(NameEvent::OwnerChanged {
                name: rc.clone(),
                old: None,
                new: Some(conn),
            });
            events.push(NameEvent::Acquired { name: rc, conn });
            return RequestReply::PrimaryOwner;
        };

        let Some(primary) = entry.owners.first_mut() else {
            debug_assert!(false, "name entry without owner");
            return RequestReply::Exists;
        };
        if primary.conn == conn {
            primary.set_flags(flags);
            return RequestReply::AlreadyOwner;
        }
        let old = *primary;
        let pos = entry.owners.iter().position(|o| o.conn == conn);
        let can_replace = replace && old.allow_replacement;

        if !can_replace && dnq {
            // Not queueing: a previous queue position is dropped too.
            if let Some(p) = pos {
                entry.owners.remove(p);
                self.leave(name, conn);
            }
            return RequestReply::Exists;
        }

        if !can_replace {
            // Queue (or stay queued) with the new flags. [quirk] With REPLACE_EXISTING
            // the entry, new or already queued, goes right behind the primary owner.
            let owner = Owner::new(conn, flags);
            match pos {
                Some(p) if replace => {
                    entry.owners.remove(p);
                    entry.owners.insert(1, owner);
                }
                Some(p) => {
                    if let Some(o) = entry.owners.get_mut(p) {
                        *o = owner;
                    }
                }
                None => {
                    if replace {
                        entry.owners.insert(1, owner);
                    } else {
                        entry.owners.push(owner);
                    }
                    let rc = entry.name.clone();
                    self.join(&rc, conn);
                }
            }
            return RequestReply::InQueue;
        }

        // Replacement: the caller takes over; the old primary goes to position 2,
        // or leaves entirely if it asked not to be queued.
        let rc = entry.name.clone();
        let old_idx = entry.primary_idx;
        if let Some(p) = pos {
            entry.owners.remove(p);
        }
        if old.do_not_queue {
            entry.owners.remove(0);
        }
        // The replaced owner (if kept) is at index 0 now; the caller goes before it.
        entry.owners.insert(0, Owner::new(conn, flags));
        if pos.is_none() {
            self.join(&rc, conn);
        }
        if old.do_not_queue {
            self.leave(&rc, old.conn);
        }
        self.remove_primary(old.conn, old_idx);
        let new_idx = self.push_primary(&rc, conn);
        if let Some(e) = self.names.get_mut(&*rc) {
            e.primary_idx = new_idx;
        }
        events.push(NameEvent::Lost {
            name: rc.clone(),
            conn: old.conn,
        });
        events.push(NameEvent::OwnerChanged {
            name: rc.clone(),
            old: Some(old.conn),
            new: Some(conn),
        });
        events.push(NameEvent::Acquired { name: rc, conn });
        RequestReply::PrimaryOwner
    }

    /// `ReleaseName(name)` by `conn`, after the caller's validity checks. A primary
    /// owner releasing produces `Lost`, `OwnerChanged`, then `Acquired` for the next
    /// queued connection if any; leaving only the queue produces nothing.
    pub fn release(
        &mut self,
        name: &str,
        conn: ConnId,
        events: &mut Vec<NameEvent>,
    ) -> ReleaseReply {
        let Some(entry) = self.names.get_mut(name) else {
            return ReleaseReply::NonExistent;
        };
        let Some(pos) = entry.owners.iter().position(|o| o.conn == conn) else {
            return ReleaseReply::NotOwner;
        };
        entry.owners.remove(pos);
        let rc = entry.name.clone();
        let old_idx = entry.primary_idx;
        let next = entry.owners.first().map(|o| o.conn);
        self.leave(name, conn);
        if pos != 0 {
            return ReleaseReply::Released;
        }

        events.push(NameEvent::Lost {
            name: rc.clone(),
            conn,
        });
        events.push(NameEvent::OwnerChanged {
            name: rc.clone(),
            old: Some(conn),
            new: next,
        });
        self.remove_primary(conn, old_idx);
        match next {
            Some(n) => {
                let idx = self.push_primary(&rc, n);
                if let Some(e) = self.names.get_mut(&*rc) {
                    e.primary_idx = idx;
                }
                events.push(NameEvent::Acquired { name: rc, conn: n });
            }
            None => {
                self.names.remove(&*rc);
            }
        }
        ReleaseReply::Released
    }

    /// Drops every well-known name `conn` owns or is queued for (disconnect, or
    /// `BecomeMonitor`), most recently joined first — the order in which it entered
    /// each name's owner list, as dbus-daemon does. Events are as for
    /// [`NameRegistry::release`] for each name it was primary owner of; queue
    /// positions vanish silently. The caller announces the unique name afterwards.
    pub fn release_all(&mut self, conn: ConnId, events: &mut Vec<NameEvent>) {
        let Some(slot) = self.conns.get_mut(conn) else {
            return;
        };
        let mut order: Vec<(u64, Rc<str>)> = slot
            .joined
            .iter()
            .map(|(n, &seq)| (seq, n.clone()))
            .collect();
        order.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        for (_, name) in order {
            self.release(&name, conn, events);
        }
        // Free the slot's allocations; the slab index may be reused by a new peer.
        if let Some(slot) = self.conns.get_mut(conn) {
            debug_assert!(slot.primary.is_empty() && slot.joined.is_empty());
            drop(mem::take(slot));
        }
    }

    /// Primary owner of `name` (`GetNameOwner`, `NameHasOwner`, routing).
    pub fn owner(&self, name: &str) -> Option<ConnId> {
        self.names
            .get(name)
            .and_then(|e| e.owners.first())
            .map(|o| o.conn)
    }

    /// `ListQueuedOwners`: the primary owner first, then the queue in order; `None`
    /// if the name has no owner.
    pub fn queue(&self, name: &str) -> Option<impl Iterator<Item = ConnId> + '_> {
        self.names
            .get(name)
            .map(|e| e.owners.iter().map(|o| o.conn))
    }

    /// Every owned well-known name, in unspecified order (`ListNames`).
    pub fn names(&self) -> impl Iterator<Item = &Rc<str>> {
        self.names.keys()
    }

    /// Number of owned well-known names.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True if no well-known name is owned.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Names `conn` is primary owner of, in unspecified order. O(1); used on the
    /// broadcast hot path to match `sender=` rules.
    pub fn primary_names(&self, conn: ConnId) -> &[Rc<str>] {
        self.conns
            .get(conn)
            .map_or(&[][..], |c| c.primary.as_slice())
    }

    /// True if `conn` is the primary owner of `name`.
    pub fn is_primary(&self, name: &str, conn: ConnId) -> bool {
        self.owner(name) == Some(conn)
    }

    /// Names `conn` is primary owner of or queued for, in unspecified order (policy
    /// `send_destination` checks, the names limit).
    pub fn owned_or_queued(&self, conn: ConnId) -> impl Iterator<Item = &Rc<str>> {
        self.conns
            .get(conn)
            .into_iter()
            .flat_map(|c| c.joined.keys())
    }

    /// Number of names `conn` is primary owner of or queued for. The caller adds one
    /// for the unique name when checking `max_names_per_connection`.
    pub fn count(&self, conn: ConnId) -> usize {
        self.conns.get(conn).map_or(0, |c| c.joined.len())
    }

    /// True if `conn` is neither primary owner of nor queued for `name`, i.e. a request
    /// could add one to [`NameRegistry::count`].
    pub fn would_be_new(&self, name: &str, conn: ConnId) -> bool {
        self.conns
            .get(conn)
            .is_none_or(|c| !c.joined.contains_key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::request_flags::*;
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    const A: ConnId = 1;
    const B: ConnId = 2;
    const C: ConnId = 3;
    const D: ConnId = 4;
    const N: &str = "org.example.Name";
    const M: &str = "org.example.Other";

    /// Events with plain strings, for readable comparisons.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Ev {
        Lost(String, ConnId),
        Changed(String, Option<ConnId>, Option<ConnId>),
        Acq(String, ConnId),
    }

    fn plain(events: &[NameEvent]) -> Vec<Ev> {
        events
            .iter()
            .map(|e| match e {
                NameEvent::Lost { name, conn } => Ev::Lost(name.to_string(), *conn),
                NameEvent::OwnerChanged { name, old, new } => {
                    Ev::Changed(name.to_string(), *old, *new)
                }
                NameEvent::Acquired { name, conn } => Ev::Acq(name.to_string(), *conn),
            })
            .collect()
    }

    fn lost(n: &str, c: ConnId) -> Ev {
        Ev::Lost(n.into(), c)
    }
    fn changed(n: &str, o: Option<ConnId>, w: Option<ConnId>) -> Ev {
        Ev::Changed(n.into(), o, w)
    }
    fn acq(n: &str, c: ConnId) -> Ev {
        Ev::Acq(n.into(), c)
    }

    impl NameRegistry {
        /// Checks every internal invariant; panics with a description otherwise.
        fn assert_consistent(&self) {
            let mut expected_primary: BTreeMap<ConnId, BTreeSet<String>> = BTreeMap::new();
            let mut expected_joined: BTreeMap<ConnId, BTreeSet<String>> = BTreeMap::new();
            for (key, e) in &self.names {
                assert!(Rc::ptr_eq(key, &e.name), "entry name not interned: {key}");
                assert!(!e.owners.is_empty(), "owned name without owners: {key}");
                let mut seen = BTreeSet::new();
                for o in &e.owners {
                    assert!(seen.insert(o.conn), "{key}: conn {} twice", o.conn);
                    expected_joined
                        .entry(o.conn)
                        .or_default()
                        .insert(key.to_string());
                }
                let p = e.owners[0].conn;
                expected_primary
                    .entry(p)
                    .or_default()
                    .insert(key.to_string());
                let slot = &self.conns[p];
                let at = &slot.primary[e.primary_idx];
                assert!(Rc::ptr_eq(at, key), "{key}: primary_idx points elsewhere");
            }
            for (conn, slot) in self.conns.iter().enumerate() {
                let prim: BTreeSet<String> = slot.primary.iter().map(|n| n.to_string()).collect();
                assert_eq!(prim.len(), slot.primary.len(), "dup in primary of {conn}");
                assert_eq!(
                    prim,
                    expected_primary.remove(&conn).unwrap_or_default(),
                    "primary list of {conn}"
                );
                for n in &slot.primary {
                    let (k, _) = self.names.get_key_value(&**n).unwrap();
                    assert!(Rc::ptr_eq(k, n), "primary list of {conn} not interned");
                }
                let joined: BTreeSet<String> = slot.joined.keys().map(|n| n.to_string()).collect();
                assert_eq!(
                    joined,
                    expected_joined.remove(&conn).unwrap_or_default(),
                    "joined set of {conn}"
                );
                for n in slot.joined.keys() {
                    let (k, _) = self.names.get_key_value(&**n).unwrap();
                    assert!(Rc::ptr_eq(k, n), "joined set of {conn} not interned");
                }
                assert_eq!(self.count(conn), joined.len());
                let seqs: BTreeSet<u64> = slot.joined.values().copied().collect();
                assert_eq!(seqs.len(), slot.joined.len(), "seq reused for {conn}");
            }
            assert!(expected_primary.is_empty(), "primary owner without slot");
            assert!(expected_joined.is_empty(), "owner without slot");
        }

        fn q(&self, name: &str) -> Vec<ConnId> {
            self.queue(name).map(|i| i.collect()).unwrap_or_default()
        }

        fn flags_of(&self, name: &str, conn: ConnId) -> (bool, bool) {
            let o = self.names[name]
                .owners
                .iter()
                .find(|o| o.conn == conn)
                .unwrap();
            (o.allow_replacement, o.do_not_queue)
        }
    }

    /// Runs one request and returns (reply, events), checking consistency.
    fn req(r: &mut NameRegistry, name: &str, conn: ConnId, flags: u32) -> (RequestReply, Vec<Ev>) {
        let mut ev = Vec::new();
        let reply = r.request(name, conn, flags, &mut ev);
        r.assert_consistent();
        (reply, plain(&ev))
    }

    fn rel(r: &mut NameRegistry, name: &str, conn: ConnId) -> (ReleaseReply, Vec<Ev>) {
        let mut ev = Vec::new();
        let reply = r.release(name, conn, &mut ev);
        r.assert_consistent();
        (reply, plain(&ev))
    }

    fn rel_all(r: &mut NameRegistry, conn: ConnId) -> Vec<Ev> {
        let mut ev = Vec::new();
        r.release_all(conn, &mut ev);
        r.assert_consistent();
        plain(&ev)
    }

    fn prim(r: &NameRegistry, conn: ConnId) -> BTreeSet<String> {
        r.primary_names(conn)
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reply_codes_are_wire_values() {
        assert_eq!(RequestReply::PrimaryOwner as u32, 1);
        assert_eq!(RequestReply::InQueue as u32, 2);
        assert_eq!(RequestReply::Exists as u32, 3);
        assert_eq!(RequestReply::AlreadyOwner as u32, 4);
        assert_eq!(ReleaseReply::Released as u32, 1);
        assert_eq!(ReleaseReply::NonExistent as u32, 2);
        assert_eq!(ReleaseReply::NotOwner as u32, 3);
        assert_eq!(
            (ALLOW_REPLACEMENT, REPLACE_EXISTING, DO_NOT_QUEUE),
            (1, 2, 4)
        );
    }

    #[test]
    fn empty_registry_queries() {
        let r = NameRegistry::new();
        assert_eq!(r.owner(N), None);
        assert!(r.queue(N).is_none());
        assert_eq!(r.names().count(), 0);
        assert!(r.is_empty());
        assert!(r.primary_names(A).is_empty());
        assert!(r.primary_names(usize::MAX).is_empty());
        assert_eq!(r.owned_or_queued(usize::MAX).count(), 0);
        assert_eq!(r.count(usize::MAX), 0);
        assert!(r.would_be_new(N, usize::MAX));
        assert!(!r.is_primary(N, A));
        r.assert_consistent();
    }

    #[test]
    fn new_name_every_flag_combination() {
        for flags in 0..8u32 {
            let mut r = NameRegistry::new();
            let (reply, ev) = req(&mut r, N, A, flags);
            assert_eq!(reply, RequestReply::PrimaryOwner, "flags {flags}");
            assert_eq!(ev, vec![changed(N, None, Some(A)), acq(N, A)]);
            assert_eq!(r.owner(N), Some(A));
            assert_eq!(r.q(N), vec![A]);
            assert_eq!(
                r.flags_of(N, A),
                (flags & ALLOW_REPLACEMENT != 0, flags & DO_NOT_QUEUE != 0)
            );
            assert_eq!(prim(&r, A), set(&[N]));
            assert!(r.is_primary(N, A));
        }
    }

    #[test]
    fn unknown_flag_bits_ignored() {
        let mut r = NameRegistry::new();
        let (reply, _) = req(&mut r, N, A, 0xffff_fff8);
        assert_eq!(reply, RequestReply::PrimaryOwner);
        assert_eq!(r.flags_of(N, A), (false, false));
        let (reply, _) = req(&mut r, N, B, 0xffff_fff8 | DO_NOT_QUEUE);
        assert_eq!(reply, RequestReply::Exists);
    }

    #[test]
    fn already_owner_updates_stored_flags() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, 0);
        let (reply, ev) = req(&mut r, N, A, ALLOW_REPLACEMENT | DO_NOT_QUEUE);
        assert_eq!(reply, RequestReply::AlreadyOwner);
        assert!(ev.is_empty());
        assert_eq!(r.flags_of(N, A), (true, true));
        // REPLACE_EXISTING is not stored and changes nothing for the owner.
        let (reply, ev) = req(&mut r, N, A, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::AlreadyOwner);
        assert!(ev.is_empty());
        assert_eq!(r.flags_of(N, A), (false, false));
        assert_eq!(r.count(A), 1);
        // The updated ALLOW_REPLACEMENT now governs replacement.
        let (reply, _) = req(&mut r, N, B, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::InQueue);
        req(&mut r, N, A, ALLOW_REPLACEMENT);
        let (reply, _) = req(&mut r, N, C, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::PrimaryOwner);
    }

    /// The whole table for a second requester against an owner, for every
    /// combination of the owner's ALLOW_REPLACEMENT and the caller's three flags.
    #[test]
    fn request_table_second_requester() {
        for owner_allow in [false, true] {
            for flags in 0..8u32 {
                let mut r = NameRegistry::new();
                let oflags = if owner_allow { ALLOW_REPLACEMENT } else { 0 };
                req(&mut r, N, A, oflags);
                let (reply, ev) = req(&mut r, N, B, flags);
                let replace = flags & REPLACE_EXISTING != 0;
                let dnq = flags & DO_NOT_QUEUE != 0;
                let ctx = format!("owner_allow={owner_allow} flags={flags}");
                if replace && owner_allow {
                    assert_eq!(reply, RequestReply::PrimaryOwner, "{ctx}");
                    assert_eq!(
                        ev,
                        vec![lost(N, A), changed(N, Some(A), Some(B)), acq(N, B)],
                        "{ctx}"
                    );
                    assert_eq!(r.q(N), vec![B, A], "{ctx}");
                    assert_eq!(prim(&r, A), set(&[]), "{ctx}");
                    assert_eq!(prim(&r, B), set(&[N]), "{ctx}");
                } else if dnq {
                    assert_eq!(reply, RequestReply::Exists, "{ctx}");
                    assert!(ev.is_empty(), "{ctx}");
                    assert_eq!(r.q(N), vec![A], "{ctx}");
                    assert!(r.would_be_new(N, B), "{ctx}");
                } else {
                    assert_eq!(reply, RequestReply::InQueue, "{ctx}");
                    assert!(ev.is_empty(), "{ctx}");
                    assert_eq!(r.q(N), vec![A, B], "{ctx}");
                    assert_eq!(r.count(B), 1, "{ctx}");
                    assert!(prim(&r, B).is_empty(), "{ctx}");
                }
            }
        }
    }

    #[test]
    fn replaced_owner_with_do_not_queue_leaves() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, ALLOW_REPLACEMENT | DO_NOT_QUEUE);
        req(&mut r, N, C, 0);
        let (reply, ev) = req(&mut r, N, B, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::PrimaryOwner);
        assert_eq!(
            ev,
            vec![lost(N, A), changed(N, Some(A), Some(B)), acq(N, B)]
        );
        assert_eq!(r.q(N), vec![B, C]);
        assert_eq!(r.count(A), 0);
        assert!(r.would_be_new(N, A));
    }

    #[test]
    fn replaced_owner_goes_to_position_two() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, ALLOW_REPLACEMENT);
        req(&mut r, N, C, 0);
        req(&mut r, N, D, 0);
        let (reply, _) = req(&mut r, N, B, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::PrimaryOwner);
        assert_eq!(r.q(N), vec![B, A, C, D]);
        // The replaced owner keeps its stored flags while queued.
        assert_eq!(r.flags_of(N, A), (true, false));
    }

    #[test]
    fn replacement_by_already_queued_caller() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, ALLOW_REPLACEMENT);
        req(&mut r, N, C, 0);
        req(&mut r, N, B, 0);
        assert_eq!(r.q(N), vec![A, C, B]);
        let (reply, ev) = req(&mut r, N, B, REPLACE_EXISTING | DO_NOT_QUEUE);
        assert_eq!(reply, RequestReply::PrimaryOwner);
        assert_eq!(
            ev,
            vec![lost(N, A), changed(N, Some(A), Some(B)), acq(N, B)]
        );
        assert_eq!(r.q(N), vec![B, A, C]);
        assert_eq!(r.flags_of(N, B), (false, true));
        assert_eq!(r.count(B), 1);
    }

    #[test]
    fn do_not_queue_replacement_when_allowed() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, ALLOW_REPLACEMENT);
        let (reply, _) = req(&mut r, N, B, REPLACE_EXISTING | DO_NOT_QUEUE);
        assert_eq!(reply, RequestReply::PrimaryOwner);
        assert_eq!(r.q(N), vec![B, A]);
        // B now has DO_NOT_QUEUE stored and no ALLOW_REPLACEMENT: A cannot take it back.
        let (reply, _) = req(&mut r, N, A, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::InQueue);
        assert_eq!(r.q(N), vec![B, A]);
    }

    #[test]
    fn queued_flags_update_and_exists_removes_queue_entry() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, 0);
        req(&mut r, N, B, 0);
        req(&mut r, N, C, 0);
        assert_eq!(r.flags_of(N, B), (false, false));
        let (reply, ev) = req(&mut r, N, B, ALLOW_REPLACEMENT);
        assert_eq!(reply, RequestReply::InQueue);
        assert!(ev.is_empty());
        assert_eq!(r.flags_of(N, B), (true, false));
        // Updating flags without REPLACE_EXISTING keeps the position.
        assert_eq!(r.q(N), vec![A, B, C]);
        let (reply, _) = req(&mut r, N, C, 0);
        assert_eq!(reply, RequestReply::InQueue);
        assert_eq!(r.q(N), vec![A, B, C]);
        // DO_NOT_QUEUE while queued: EXISTS and the entry goes away.
        let (reply, ev) = req(&mut r, N, B, DO_NOT_QUEUE);
        assert_eq!(reply, RequestReply::Exists);
        assert!(ev.is_empty());
        assert_eq!(r.q(N), vec![A, C]);
        assert_eq!(r.count(B), 0);
        assert!(r.would_be_new(N, B));
        // Also with REPLACE_EXISTING against an owner that does not allow replacement.
        let (reply, _) = req(&mut r, N, C, DO_NOT_QUEUE | REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::Exists);
        assert_eq!(r.q(N), vec![A]);
        // And when not queued at all: nothing changes.
        let (reply, _) = req(&mut r, N, D, DO_NOT_QUEUE);
        assert_eq!(reply, RequestReply::Exists);
        assert_eq!(r.q(N), vec![A]);
    }

    #[test]
    fn queue_jumping_with_replace_existing() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, 0); // does not allow replacement
        req(&mut r, N, B, 0);
        req(&mut r, N, C, 0);
        // New entry with REPLACE_EXISTING: inserted right behind the primary.
        let (reply, ev) = req(&mut r, N, D, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::InQueue);
        assert!(ev.is_empty());
        assert_eq!(r.q(N), vec![A, D, B, C]);
        // Already queued entry with REPLACE_EXISTING: moved right behind the primary,
        // flags updated.
        let (reply, _) = req(&mut r, N, C, REPLACE_EXISTING | ALLOW_REPLACEMENT);
        assert_eq!(reply, RequestReply::InQueue);
        assert_eq!(r.q(N), vec![A, C, D, B]);
        assert_eq!(r.flags_of(N, C), (true, false));
        assert_eq!(r.count(C), 1);
        // Already at position 2: stays.
        let (reply, _) = req(&mut r, N, C, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::InQueue);
        assert_eq!(r.q(N), vec![A, C, D, B]);
        assert_eq!(r.flags_of(N, C), (false, false));
    }

    #[test]
    fn release_codes_and_events() {
        let mut r = NameRegistry::new();
        assert_eq!(rel(&mut r, N, A), (ReleaseReply::NonExistent, vec![]));
        req(&mut r, N, A, 0);
        assert_eq!(rel(&mut r, N, B), (ReleaseReply::NotOwner, vec![]));
        assert_eq!(rel(&mut r, M, A), (ReleaseReply::NonExistent, vec![]));
        req(&mut r, N, B, 0);
        req(&mut r, N, C, 0);
        // Leaving the queue is silent.
        assert_eq!(rel(&mut r, N, C), (ReleaseReply::Released, vec![]));
        assert_eq!(r.q(N), vec![A, B]);
        assert_eq!(rel(&mut r, N, C), (ReleaseReply::NotOwner, vec![]));
        // Primary releases: next in queue is promoted.
        let (reply, ev) = rel(&mut r, N, A);
        assert_eq!(reply, ReleaseReply::Released);
        assert_eq!(
            ev,
            vec![lost(N, A), changed(N, Some(A), Some(B)), acq(N, B)]
        );
        assert_eq!(r.q(N), vec![B]);
        assert_eq!(prim(&r, B), set(&[N]));
        assert!(prim(&r, A).is_empty());
        // Last owner releases: the name disappears.
        let (reply, ev) = rel(&mut r, N, B);
        assert_eq!(reply, ReleaseReply::Released);
        assert_eq!(ev, vec![lost(N, B), changed(N, Some(B), None)]);
        assert_eq!(r.owner(N), None);
        assert!(r.queue(N).is_none());
        assert!(r.is_empty());
        assert_eq!(rel(&mut r, N, B), (ReleaseReply::NonExistent, vec![]));
    }

    #[test]
    fn promoted_owner_keeps_stored_flags() {
        let mut r = NameRegistry::new();
        req(&mut r, N, A, 0);
        req(&mut r, N, B, ALLOW_REPLACEMENT);
        rel(&mut r, N, A);
        let (reply, _) = req(&mut r, N, C, REPLACE_EXISTING);
        assert_eq!(reply, RequestReply::PrimaryOwner);
    }

    #[test]
    fn release_all_most_recently_joined_first() {
        let mut r = NameRegistry::new();
        let names = ["a.x", "b.x", "c.x", "d.x", "e.x"];
        // A joins a.x (primary), then b.x queued, c.x primary, d.x primary, e.x queued.
        req(&mut r, "b.x", B, 0);
        req(&mut r, "e.x", C, 0);
        req(&mut r, names[0], A, 0);
        req(&mut r, names[1], A, 0);
        req(&mut r, names[2], A, 0);
        req(&mut r, names[3], A, 0);
        req(&mut r, names[4], A, 0);
        req(&mut r, "c.x", D, 0); // D queued behind A on c.x
                                  // A's queue entry on b.x is promoted later: order is still by joining.
        rel(&mut r, "b.x", B);
        assert_eq!(r.owner("b.x"), Some(A));
        // Re-requesting does not change the join order.
        req(&mut r, "a.x", A, ALLOW_REPLACEMENT);
        assert_eq!(r.count(A), 5);
        let mut seen: Vec<String> = r.owned_or_queued(A).map(|n| n.to_string()).collect();
        seen.sort();
        assert_eq!(
            seen,
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>()
        );

        let ev = rel_all(&mut r, A);
        assert_eq!(
            ev,
            vec![
                // e.x: queued, silent.
                lost("d.x", A),
                changed("d.x", Some(A), None),
                lost("c.x", A),
                changed("c.x", Some(A), Some(D)),
                acq("c.x", D),
                lost("b.x", A),
                changed("b.x", Some(A), None),
                lost("a.x", A),
                changed("a.x", Some(A), None),
            ]
        );
        assert_eq!(r.count(A), 0);
        assert!(r.primary_names(A).is_empty());
        assert_eq!(r.q("e.x"), vec![C]);
        assert_eq!(r.q("c.x"), vec![D]);
        assert_eq!(r.names().count(), 2);
        // Idempotent, and harmless for unknown connections.
        assert!(rel_all(&mut r, A).is_empty());
        assert!(rel_all(&mut r, 10_000).is_empty());
    }

    #[test]
    fn release_all_join_order_follows_replacement_join() {
        let mut r = NameRegistry::new();
        req(&mut r, N, B, ALLOW_REPLACEMENT);
        req(&mut r, N, A, 0); // A joins N's queue first
        req(&mut r, M, A, 0); // then owns M
        req(&mut r, N, A, REPLACE_EXISTING); // takes N over: join time unchanged
        let ev = rel_all(&mut r, A);
        assert_eq!(
            ev,
            vec![
                lost(M, A),
                changed(M, Some(A), None),
                lost(N, A),
                changed(N, Some(A), Some(B)),
                acq(N, B),
            ]
        );
    }

    #[test]
    fn primary_names_with_many_names_and_swap_removal() {
        let mut r = NameRegistry::new();
        let names: Vec<String> = (0..20).map(|i| format!("org.n{i}")).collect();
        for n in &names {
            req(&mut r, n, A, ALLOW_REPLACEMENT);
        }
        assert_eq!(r.primary_names(A).len(), 20);
        // Remove from the middle, front and back in a scattered order.
        for i in [5, 0, 19, 7, 6, 18, 1] {
            let (reply, _) = req(&mut r, &names[i], B, REPLACE_EXISTING | DO_NOT_QUEUE);
            assert_eq!(reply, RequestReply::PrimaryOwner);
        }
        assert_eq!(r.primary_names(A).len(), 13);
        assert_eq!(r.primary_names(B).len(), 7);
        assert_eq!(r.count(A), 20); // still queued for the 7 taken names
        for i in [2, 3, 4] {
            rel(&mut r, &names[i], A);
        }
        assert_eq!(r.primary_names(A).len(), 10);
        assert_eq!(r.count(A), 17);
        rel_all(&mut r, B);
        assert_eq!(r.primary_names(A).len(), 17);
    }

    #[test]
    fn names_are_interned_once() {
        let mut r = NameRegistry::new();
        let mut ev = Vec::new();
        r.request(N, A, 0, &mut ev);
        let listed = r.names().next().unwrap().clone();
        for e in &ev {
            let n = match e {
                NameEvent::Lost { name, .. }
                | NameEvent::OwnerChanged { name, .. }
                | NameEvent::Acquired { name, .. } => name,
            };
            assert!(Rc::ptr_eq(n, &listed));
        }
        assert!(Rc::ptr_eq(&r.primary_names(A)[0], &listed));
    }

    #[test]
    fn would_be_new_and_count() {
        let mut r = NameRegistry::new();
        assert!(r.would_be_new(N, A));
        req(&mut r, N, A, 0);
        assert!(!r.would_be_new(N, A));
        assert!(r.would_be_new(N, B));
        req(&mut r, N, B, 0);
        assert!(!r.would_be_new(N, B));
        assert_eq!((r.count(A), r.count(B)), (1, 1));
        req(&mut r, M, B, 0);
        assert_eq!(r.count(B), 2);
        assert_eq!(r.owned_or_queued(B).count(), 2);
        assert_eq!(r.primary_names(B).len(), 1);
    }

    // ---- Randomized comparison against a naive model ----

    use crate::test_rng::Rng;

    /// Straightforward restatement of the RequestName / ReleaseName rules and of name loss
    /// on disconnect, with plain collections.
    #[derive(Default)]
    struct Model {
        /// name -> owners (conn, allow_replacement, do_not_queue), primary first.
        names: BTreeMap<String, Vec<(ConnId, bool, bool)>>,
        /// conn -> names in the order it joined their owner lists.
        joined: BTreeMap<ConnId, Vec<String>>,
    }

    impl Model {
        fn drop_join(&mut self, name: &str, conn: ConnId) {
            if let Some(v) = self.joined.get_mut(&conn) {
                v.retain(|n| n != name);
            }
        }

        fn request(&mut self, name: &str, conn: ConnId, flags: u32, ev: &mut Vec<Ev>) -> u32 {
            let allow = flags & 1 != 0;
            let replace = flags & 2 != 0;
            let dnq = flags & 4 != 0;
            let me = (conn, allow, dnq);
            let Some(owners) = self.names.get_mut(name) else {
                self.names.insert(name.into(), vec![me]);
                self.joined.entry(conn).or_default().push(name.into());
                ev.push(changed(name, None, Some(conn)));
                ev.push(acq(name, conn));
                return 1;
            };
            let (p, p_allow, p_dnq) = owners[0];
            if p == conn {
                owners[0] = me;
                return 4;
            }
            let was_queued = owners.iter().any(|o| o.0 == conn);
            if dnq && (!p_allow || !replace) {
                if was_queued {
                    owners.retain(|o| o.0 != conn);
                    self.drop_join(name, conn);
                }
                return 3;
            }
            if !dnq && (!replace || !p_allow) {
                if replace {
                    owners.retain(|o| o.0 != conn);
                    owners.insert(1, me);
                } else if let Some(o) = owners.iter_mut().find(|o| o.0 == conn) {
                    *o = me;
                } else {
                    owners.push(me);
                }
                if !was_queued {
                    self.joined.entry(conn).or_default().push(name.into());
                }
                return 2;
            }
            owners.retain(|o| o.0 != conn);
            let old = owners.remove(0);
            let mut rebuilt = vec![me];
            if !p_dnq {
                rebuilt.push(old);
            }
            rebuilt.extend(owners.iter().copied());
            *owners = rebuilt;
            if !was_queued {
                self.joined.entry(conn).or_default().push(name.into());
            }
            if p_dnq {
                self.drop_join(name, p);
            }
            ev.push(lost(name, p));
            ev.push(changed(name, Some(p), Some(conn)));
            ev.push(acq(name, conn));
            1
        }

        fn release(&mut self, name: &str, conn: ConnId, ev: &mut Vec<Ev>) -> u32 {
            let Some(owners) = self.names.get_mut(name) else {
                return 2;
            };
            let Some(pos) = owners.iter().position(|o| o.0 == conn) else {
                return 3;
            };
            owners.remove(pos);
            let next = owners.first().map(|o| o.0);
            if next.is_none() {
                self.names.remove(name);
            }
            self.drop_join(name, conn);
            if pos == 0 {
                ev.push(lost(name, conn));
                ev.push(changed(name, Some(conn), next));
                if let Some(n) = next {
                    ev.push(acq(name, n));
                }
            }
            1
        }

        fn release_all(&mut self, conn: ConnId, ev: &mut Vec<Ev>) {
            let list = self.joined.remove(&conn).unwrap_or_default();
            for n in list.iter().rev() {
                self.release(n, conn, ev);
            }
        }
    }

    fn compare(r: &NameRegistry, m: &Model, names: &[String], conns: ConnId) {
        for n in names {
            let want: Vec<ConnId> = m
                .names
                .get(n)
                .map(|v| v.iter().map(|o| o.0).collect())
                .unwrap_or_default();
            assert_eq!(r.q(n), want, "queue of {n}");
            assert_eq!(r.owner(n), want.first().copied());
            if let Some(v) = m.names.get(n) {
                for &(c, allow, dnq) in v {
                    assert_eq!(r.flags_of(n, c), (allow, dnq), "flags of {c} on {n}");
                }
            }
        }
        let listed: BTreeSet<String> = r.names().map(|n| n.to_string()).collect();
        let model: BTreeSet<String> = m.names.keys().cloned().collect();
        assert_eq!(listed, model);
        for c in 0..conns {
            let want_prim: BTreeSet<String> = m
                .names
                .iter()
                .filter(|(_, v)| v[0].0 == c)
                .map(|(n, _)| n.clone())
                .collect();
            assert_eq!(prim(r, c), want_prim, "primary names of {c}");
            let want_joined: BTreeSet<String> = m
                .joined
                .get(&c)
                .map(|v| v.iter().cloned().collect())
                .unwrap_or_default();
            let got: BTreeSet<String> = r.owned_or_queued(c).map(|n| n.to_string()).collect();
            assert_eq!(got, want_joined, "owned_or_queued of {c}");
            assert_eq!(r.count(c), want_joined.len());
            for n in names {
                assert_eq!(r.would_be_new(n, c), !want_joined.contains(n));
            }
        }
    }

    #[test]
    fn randomized_against_model() {
        const CONNS: ConnId = 7;
        let names: Vec<String> = (0..6).map(|i| format!("org.r.N{i}")).collect();
        for seed in 0..40u64 {
            let mut rng = Rng(seed);
            let mut r = NameRegistry::new();
            let mut m = Model::default();
            for step in 0..400 {
                let conn = rng.below(CONNS);
                let name = &names[rng.below(names.len())];
                let mut ev = Vec::new();
                let mut mev = Vec::new();
                let ctx = format!("seed {seed} step {step}");
                match rng.below(10) {
                    0..=5 => {
                        let flags = rng.below(8) as u32;
                        let got = r.request(name, conn, flags, &mut ev) as u32;
                        let want = m.request(name, conn, flags, &mut mev);
                        assert_eq!(got, want, "{ctx}: request {name} {conn} {flags}");
                    }
                    6..=8 => {
                        let got = r.release(name, conn, &mut ev) as u32;
                        let want = m.release(name, conn, &mut mev);
                        assert_eq!(got, want, "{ctx}: release {name} {conn}");
                    }
                    _ => {
                        r.release_all(conn, &mut ev);
                        m.release_all(conn, &mut mev);
                    }
                }
                assert_eq!(plain(&ev), mev, "{ctx}: events");
                r.assert_consistent();
                compare(&r, &m, &names, CONNS);
            }
        }
    }
}
