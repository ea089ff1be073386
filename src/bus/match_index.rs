//! The match-rule index: every connection's rules, arranged so that finding the receivers of
//! a message costs about what matches, not how many rules exist.
//!
//! Each rule has a *shape*: which of sender, interface, member, path (exact or namespace) and
//! arg0 (exact string) it pins to a value. Rules are chained under a 64-bit hash of
//! (shape, pinned values). Routing a message probes, for each shape present, the hash built
//! from the message's own values (each sender name, each path prefix for namespaces), then
//! runs the full predicate on the few rules found. With at most 48 shapes this is O(shapes ×
//! sender names) probes whatever the number of rules. Hash collisions are harmless: every
//! candidate is checked with [`MatchRule::matches`].
//!
//! Eavesdropping rules live in a second table consulted for every message; ordinary rules are
//! consulted only for messages without DESTINATION. Non-eavesdropping rules with a
//! `destination` can never match and are stored but not indexed.
//!
//! Memory: a rule costs its entry (the typed rule plus links) and one hash slot; strings are
//! interned, so the same interface, member or sender used by many rules is stored once.

use super::match_rule::{ArgKind, MatchRule, MatchSubject, PathMatch};
use super::ConnId;
use crate::wire::message::Arg;
use ahash::{AHashMap, RandomState};
use slab::Slab;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// "No link" marker in the intrusive lists.
const NIL: usize = usize::MAX;

const K_SENDER: u8 = 1;
const K_IFACE: u8 = 2;
const K_MEMBER: u8 = 4;
const K_PATH: u8 = 8;
const K_PATHNS: u8 = 16;
const K_ARG0: u8 = 32;

/// Identifies one stored rule until it is removed (ids are reused afterwards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(usize);

/// Hasher for keys that already are random 64-bit hashes.
#[derive(Default)]
struct PassHasher(u64);

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for u64 keys; kept correct anyway.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Mix a field hash into a running key hash (order-sensitive).
#[inline]
fn fold(h: u64, x: u64) -> u64 {
    let m = u128::from(h ^ x)
        .wrapping_add(0x2d35_8dcc_aa6c_78a5)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (m as u64) ^ ((m >> 64) as u64)
}

/// One hash table of rule chains, plus which shapes it holds.
struct Table {
    /// Key hash → first rule of the chain.
    heads: HashMap<u64, usize, BuildHasherDefault<PassHasher>>,
    /// Rules per shape.
    shapes: [u32; 64],
    /// Bit `s` set when `shapes[s] > 0`.
    active: u64,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            heads: HashMap::default(),
            shapes: [0; 64],
            active: 0,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Stored only (can never match).
    None,
    /// Ordinary rule: broadcasts only.
    Broadcast,
    /// `eavesdrop='true'`: every message.
    Eavesdrop,
}

struct Entry {
    rule: MatchRule,
    /// Slot in `owners`.
    owner: usize,
    place: Place,
    shape: u8,
    key: u64,
    chain_prev: usize,
    chain_next: usize,
    own_prev: usize,
    own_next: usize,
}

struct Owner {
    conn: ConnId,
    head: usize,
    tail: usize,
    count: usize,
    /// Generation of the last `collect` that already listed this owner.
    stamp: Cell<u32>,
}

/// Caches what a message yields so each header field is decoded once per `collect`, however
/// many candidate rules look at it.
struct Cached<'a, M: ?Sized> {
    msg: &'a M,
    msg_type: u8,
    path: Option<&'a str>,
    interface: Option<&'a str>,
    member: Option<&'a str>,
    destination: Option<&'a str>,
    args: [Cell<Option<Option<Arg<'a>>>>; 8],
}

impl<'a, M: MatchSubject + ?Sized> Cached<'a, M> {
    fn new(msg: &'a M) -> Self {
        Cached {
            msg,
            msg_type: msg.msg_type(),
            path: msg.path(),
            interface: msg.interface(),
            member: msg.member(),
            destination: msg.destination(),
            args: std::array::from_fn(|_| Cell::new(None)),
        }
    }
}

impl<M: MatchSubject + ?Sized> MatchSubject for Cached<'_, M> {
    fn msg_type(&self) -> u8 {
        self.msg_type
    }
    fn path(&self) -> Option<&str> {
        self.path
    }
    fn interface(&self) -> Option<&str> {
        self.interface
    }
    fn member(&self) -> Option<&str> {
        self.member
    }
    fn destination(&self) -> Option<&str> {
        self.destination
    }
    fn arg(&self, n: usize) -> Option<Arg<'_>> {
        let Some(slot) = self.args.get(n) else {
            return self.msg.arg(n);
        };
        if let Some(v) = slot.get() {
            return v;
        }
        let v = self.msg.arg(n);
        slot.set(Some(v));
        v
    }
}

/// Iterate the namespaces a path lies in: `/`, then each proper prefix ending before a `/`,
/// then the path itself.
fn path_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let cuts = path
        .bytes()
        .enumerate()
        .skip(1)
        .filter(|&(_, c)| c == b'/')
        .map(|(i, _)| i)
        .chain((path != "/").then_some(path.len()));
    std::iter::once("/").chain(cuts.filter_map(move |i| path.get(..i)))
}

/// All match rules of all connections.
pub struct MatchIndex {
    entries: Slab<Entry>,
    owners: Slab<Owner>,
    owner_slot: AHashMap<ConnId, usize>,
    broadcast: Table,
    eavesdrop: Table,
    strings: HashSet<Rc<str>, RandomState>,
    hasher: RandomState,
    generation: Cell<u32>,
}

impl Default for MatchIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl MatchIndex {
    /// An empty index.
    pub fn new() -> Self {
        MatchIndex {
            entries: Slab::new(),
            owners: Slab::new(),
            owner_slot: AHashMap::new(),
            broadcast: Table::default(),
            eavesdrop: Table::default(),
            strings: HashSet::with_hasher(RandomState::new()),
            hasher: RandomState::new(),
            generation: Cell::new(0),
        }
    }

    #[inline]
    fn h(&self, s: &str) -> u64 {
        self.hasher.hash_one(s)
    }

    /// Hash of everything but path and sender, in the order probing uses.
    #[inline]
    fn base_key(&self, shape: u8, iface: u64, member: u64, arg0: u64) -> u64 {
        let mut k = fold(0x5851_f42d_4c95_7f2d, u64::from(shape));
        if shape & K_IFACE != 0 {
            k = fold(k, iface);
        }
        if shape & K_MEMBER != 0 {
            k = fold(k, member);
        }
        if shape & K_ARG0 != 0 {
            k = fold(k, arg0);
        }
        k
    }

    fn shape_and_key(&self, rule: &MatchRule) -> (u8, u64) {
        let mut shape = 0;
        let hopt = |s: &Option<Rc<str>>| s.as_deref().map_or(0, |s| self.h(s));
        if rule.sender.is_some() {
            shape |= K_SENDER;
        }
        if rule.interface.is_some() {
            shape |= K_IFACE;
        }
        if rule.member.is_some() {
            shape |= K_MEMBER;
        }
        let path_h = match &rule.path {
            Some(PathMatch::Exact(p)) => {
                shape |= K_PATH;
                self.h(p)
            }
            Some(PathMatch::Namespace(p)) => {
                shape |= K_PATHNS;
                self.h(p)
            }
            None => 0,
        };
        let arg0 = rule
            .args
            .first()
            .filter(|a| a.index == 0 && a.kind == ArgKind::Str);
        if arg0.is_some() {
            shape |= K_ARG0;
        }
        let arg0_h = arg0.map_or(0, |a| self.h(&a.value));
        let mut k = self.base_key(shape, hopt(&rule.interface), hopt(&rule.member), arg0_h);
        if shape & (K_PATH | K_PATHNS) != 0 {
            k = fold(k, path_h);
        }
        if shape & K_SENDER != 0 {
            k = fold(k, hopt(&rule.sender));
        }
        (shape, k)
    }

    fn intern(&mut self, s: &mut Rc<str>) {
        match self.strings.get(&**s) {
            Some(known) => *s = known.clone(),
            None => {
                // A fresh allocation, so clones the caller kept of its own rule cannot
                // keep the reference count up and defeat `release`.
                let fresh: Rc<str> = Rc::from(&**s);
                self.strings.insert(fresh.clone());
                *s = fresh;
            }
        }
    }

    fn intern_opt(&mut self, s: &mut Option<Rc<str>>) {
        if let Some(s) = s {
            self.intern(s);
        }
    }

    /// Drop one reference held by a rule, forgetting the string when nobody else uses it.
    fn release(&mut self, s: Rc<str>) {
        // 2 = this reference + the interner's.
        if Rc::strong_count(&s) == 2 {
            self.strings.remove(&*s);
        }
    }

    fn release_rule(&mut self, rule: MatchRule) {
        let MatchRule {
            sender,
            interface,
            member,
            path,
            destination,
            args,
            ..
        } = rule;
        for s in [sender, interface, member, destination]
            .into_iter()
            .flatten()
        {
            self.release(s);
        }
        if let Some(p) = path {
            self.release(match p {
                PathMatch::Exact(v) | PathMatch::Namespace(v) => v,
            });
        }
        for a in args {
            self.release(a.value);
        }
    }

    fn table_mut(&mut self, place: Place) -> Option<&mut Table> {
        match place {
            Place::None => None,
            Place::Broadcast => Some(&mut self.broadcast),
            Place::Eavesdrop => Some(&mut self.eavesdrop),
        }
    }

    /// Store `rule` for connection `owner`. Duplicates are kept as separate entries.
    pub fn insert(&mut self, owner: ConnId, mut rule: MatchRule) -> RuleId {
        self.intern_opt(&mut rule.sender);
        self.intern_opt(&mut rule.interface);
        self.intern_opt(&mut rule.member);
        self.intern_opt(&mut rule.destination);
        if let Some(PathMatch::Exact(v) | PathMatch::Namespace(v)) = &mut rule.path {
            self.intern(v);
        }
        let mut args = std::mem::take(&mut rule.args);
        for a in &mut args {
            self.intern(&mut a.value);
        }
        args.shrink_to_fit();
        rule.args = args;

        let place = if rule.eavesdrop {
            Place::Eavesdrop
        } else if rule.destination.is_some() {
            Place::None
        } else {
            Place::Broadcast
        };
        let (shape, key) = self.shape_and_key(&rule);

        let oslot = match self.owner_slot.get(&owner) {
            Some(&s) => s,
            None => {
                let s = self.owners.insert(Owner {
                    conn: owner,
                    head: NIL,
                    tail: NIL,
                    count: 0,
                    stamp: Cell::new(0),
                });
                self.owner_slot.insert(owner, s);
                s
            }
        };
        let own_prev = self.owners.get(oslot).map_or(NIL, |o| o.tail);
        let id = self.entries.insert(Entry {
            rule,
            owner: oslot,
            place,
            shape,
            key,
            chain_prev: NIL,
            chain_next: NIL,
            own_prev,
            own_next: NIL,
        });
        // Append to the owner's list (insertion order, for RemoveMatch and GetAllMatchRules).
        if let Some(prev) = self.entries.get_mut(own_prev) {
            prev.own_next = id;
        }
        if let Some(o) = self.owners.get_mut(oslot) {
            if o.head == NIL {
                o.head = id;
            }
            o.tail = id;
            o.count += 1;
        }
        // Push onto the front of its chain.
        let old = match self.table_mut(place) {
            Some(t) => {
                if let Some(c) = t.shapes.get_mut(usize::from(shape)) {
                    *c += 1;
                }
                t.active |= 1u64 << shape;
                t.heads.insert(key, id).unwrap_or(NIL)
            }
            None => NIL,
        };
        if let Some(e) = self.entries.get_mut(old) {
            e.chain_prev = id;
        }
        if let Some(e) = self.entries.get_mut(id) {
            e.chain_next = old;
        }
        RuleId(id)
    }

    /// The rule stored under `id`, with its owner.
    pub fn get(&self, id: RuleId) -> Option<(ConnId, &MatchRule)> {
        let e = self.entries.get(id.0)?;
        let o = self.owners.get(e.owner)?;
        Some((o.conn, &e.rule))
    }

    /// Remove one rule by id; returns its owner.
    pub fn remove(&mut self, id: RuleId) -> Option<ConnId> {
        let e = self.entries.try_remove(id.0)?;
        // Unlink from its chain.
        if let Some(t) = self.table_mut(e.place) {
            if e.chain_prev == NIL {
                if e.chain_next == NIL {
                    t.heads.remove(&e.key);
                } else {
                    t.heads.insert(e.key, e.chain_next);
                }
            }
            if let Some(c) = t.shapes.get_mut(usize::from(e.shape)) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    t.active &= !(1u64 << e.shape);
                }
            }
        }
        if let Some(p) = self.entries.get_mut(e.chain_prev) {
            p.chain_next = e.chain_next;
        }
        if let Some(n) = self.entries.get_mut(e.chain_next) {
            n.chain_prev = e.chain_prev;
        }
        // Unlink from the owner's list.
        if let Some(p) = self.entries.get_mut(e.own_prev) {
            p.own_next = e.own_next;
        }
        if let Some(n) = self.entries.get_mut(e.own_next) {
            n.own_prev = e.own_prev;
        }
        let mut conn = None;
        let mut now_empty = false;
        if let Some(o) = self.owners.get_mut(e.owner) {
            if o.head == id.0 {
                o.head = e.own_next;
            }
            if o.tail == id.0 {
                o.tail = e.own_prev;
            }
            o.count = o.count.saturating_sub(1);
            now_empty = o.count == 0;
            conn = Some(o.conn);
        }
        if now_empty {
            if let Some(o) = self.owners.try_remove(e.owner) {
                self.owner_slot.remove(&o.conn);
            }
        }
        self.release_rule(e.rule);
        // Safety net: strings whose last rule was dropped while a caller still held a clone
        // of it were not forgotten by `release`; sweep them once they dominate.
        if self.strings.len() > 64 && self.strings.len() > 4 * self.entries.len() {
            self.strings.retain(|s| Rc::strong_count(s) > 1);
        }
        conn
    }

    /// RemoveMatch: remove the most recently added rule of `owner` equal to `rule`.
    /// False when there is none (`MatchRuleNotFound`).
    pub fn remove_equal(&mut self, owner: ConnId, rule: &MatchRule) -> bool {
        let Some(o) = self
            .owner_slot
            .get(&owner)
            .and_then(|&s| self.owners.get(s))
        else {
            return false;
        };
        let mut cur = o.tail;
        while let Some(e) = self.entries.get(cur) {
            if e.rule == *rule {
                return self.remove(RuleId(cur)).is_some();
            }
            cur = e.own_prev;
        }
        false
    }

    /// Remove every rule of `owner` (disconnect, BecomeMonitor).
    pub fn remove_owner(&mut self, owner: ConnId) {
        let mut cur = self
            .owner_slot
            .get(&owner)
            .and_then(|&s| self.owners.get(s))
            .map_or(NIL, |o| o.head);
        while let Some(e) = self.entries.get(cur) {
            let next = e.own_next;
            self.remove(RuleId(cur));
            cur = next;
        }
    }

    /// Number of rules `owner` has (for `max_match_rules_per_connection`).
    pub fn count(&self, owner: ConnId) -> usize {
        self.owner_slot
            .get(&owner)
            .and_then(|&s| self.owners.get(s))
            .map_or(0, |o| o.count)
    }

    /// Whether any `eavesdrop='true'` rule exists (lets unicast routing skip the lookup).
    pub fn has_eavesdroppers(&self) -> bool {
        self.eavesdrop.active > 0
    }

    /// Total number of rules stored.
    pub fn total(&self) -> usize {
        self.entries.len()
    }

    /// `owner`'s rules in the order they were added (GetAllMatchRules).
    pub fn rules_of(&self, owner: ConnId) -> impl Iterator<Item = &MatchRule> + '_ {
        let mut cur = self
            .owner_slot
            .get(&owner)
            .and_then(|&s| self.owners.get(s))
            .map_or(NIL, |o| o.head);
        std::iter::from_fn(move || {
            let e = self.entries.get(cur)?;
            cur = e.own_next;
            Some(&e.rule)
        })
    }

    /// Every connection with at least one rule.
    pub fn all_owners(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.owner_slot.keys().copied()
    }

    /// Approximate heap bytes allocated by the index (for stats and the memory test).
    pub fn memory_estimate(&self) -> usize {
        self.memory(true)
    }

    /// Heap bytes counted by capacity (`allocated`) or by live items only.
    fn memory(&self, allocated: bool) -> usize {
        use std::mem::size_of;
        let pick = |cap: usize, len: usize| if allocated { cap } else { len };
        // A hashbrown slot is the (key, value) pair plus one control byte.
        let slots = |cap: usize, len: usize, item: usize| pick(cap, len) * (item + 1);
        let strings: usize = self
            .strings
            .iter()
            .map(|s| (2 * size_of::<usize>() + s.len()).next_multiple_of(16) + 16)
            .sum();
        let args: usize = self
            .entries
            .iter()
            .map(|(_, e)| e.rule.args.capacity() * size_of::<super::match_rule::ArgMatch>())
            .sum();
        let (ob, eh) = (&self.broadcast.heads, &self.eavesdrop.heads);
        // A slab slot is the value plus an enum tag (rounded to a word).
        pick(self.entries.capacity(), self.entries.len()) * (size_of::<Entry>() + 8)
            + pick(self.owners.capacity(), self.owners.len()) * (size_of::<Owner>() + 8)
            + slots(
                self.owner_slot.capacity(),
                self.owner_slot.len(),
                size_of::<(ConnId, usize)>(),
            )
            + slots(ob.capacity(), ob.len(), size_of::<(u64, usize)>())
            + slots(eh.capacity(), eh.len(), size_of::<(u64, usize)>())
            + slots(
                self.strings.capacity(),
                self.strings.len(),
                size_of::<Rc<str>>(),
            )
            + strings
            + args
    }

    fn next_generation(&self) -> u32 {
        let mut g = self.generation.get().wrapping_add(1);
        if g == 0 {
            // Wrapped: old stamps could collide with new generations.
            for (_, o) in self.owners.iter() {
                o.stamp.set(0);
            }
            g = 1;
        }
        self.generation.set(g);
        g
    }

    /// Append to `out` every owner with at least one rule matching `msg`.
    ///
    /// Each owner appears at most once in `out` afterwards: owners already in `out` (say, the
    /// addressed recipient) are not appended again. Allocation-free apart from `out` growing.
    ///
    /// - `sender_names`: every name the sender answers to (its unique name and the well-known
    ///   names it is primary owner of), or `["org.freedesktop.DBus"]` for messages the bus emits.
    /// - `dest_names`: the names the addressed recipient answers to, for messages with a
    ///   DESTINATION; when empty, the DESTINATION string itself is used (recipient unknown).
    ///
    /// A message with DESTINATION only considers `eavesdrop='true'` rules; rules with a
    /// `destination` key never match broadcasts.
    pub fn collect<M: MatchSubject + ?Sized>(
        &self,
        msg: &M,
        sender_names: &[&str],
        dest_names: &[&str],
        out: &mut Vec<ConnId>,
    ) {
        self.collect_counting(msg, sender_names, dest_names, out);
    }

    /// [`Self::collect`], returning how many candidate rules were evaluated.
    fn collect_counting<M: MatchSubject + ?Sized>(
        &self,
        msg: &M,
        sender_names: &[&str],
        dest_names: &[&str],
        out: &mut Vec<ConnId>,
    ) -> usize {
        let msg = Cached::new(msg);
        let unicast = msg.destination.is_some();
        if self.eavesdrop.active == 0 && (unicast || self.broadcast.active == 0) {
            return 0;
        }
        let gen = self.next_generation();
        for c in out.iter() {
            if let Some(o) = self.owner_slot.get(c).and_then(|&s| self.owners.get(s)) {
                o.stamp.set(gen);
            }
        }
        let mut examined = 0;
        if !unicast {
            examined += self.probe(&self.broadcast, &msg, sender_names, dest_names, gen, out);
        }
        examined += self.probe(&self.eavesdrop, &msg, sender_names, dest_names, gen, out);
        examined
    }

    fn probe<M: MatchSubject + ?Sized>(
        &self,
        table: &Table,
        msg: &Cached<'_, M>,
        sender_names: &[&str],
        dest_names: &[&str],
        gen: u32,
        out: &mut Vec<ConnId>,
    ) -> usize {
        if table.active == 0 {
            return 0;
        }
        let iface_h = msg.interface.map(|s| self.h(s));
        let member_h = msg.member.map(|s| self.h(s));
        let any_path = table.active & shapes_with(K_PATH | K_PATHNS) != 0;
        let path_h = if any_path {
            msg.path.map(|s| self.h(s))
        } else {
            None
        };
        let arg0_h = if table.active & shapes_with(K_ARG0) != 0 {
            match msg.arg(0) {
                Some(Arg::Str(s)) => Some(self.h(s)),
                _ => None,
            }
        } else {
            None
        };
        let sender_is = |s: &str| sender_names.contains(&s);
        let dest_is = |d: &str| {
            if dest_names.is_empty() {
                msg.destination == Some(d)
            } else {
                dest_names.contains(&d)
            }
        };
        let mut examined = 0;
        let mut visit = |key: u64| {
            let mut cur = table.heads.get(&key).copied().unwrap_or(NIL);
            while let Some(e) = self.entries.get(cur) {
                cur = e.chain_next;
                examined += 1;
                let Some(o) = self.owners.get(e.owner) else {
                    continue;
                };
                if o.stamp.get() != gen && e.rule.matches(msg, sender_is, dest_is) {
                    o.stamp.set(gen);
                    out.push(o.conn);
                }
            }
        };
        let mut active = table.active;
        while active != 0 {
            let shape = active.trailing_zeros() as u8;
            active &= active - 1;
            // A rule pinning a field the message lacks cannot match.
            let need = |bit: u8, have: bool| shape & bit == 0 || have;
            if !(need(K_IFACE, iface_h.is_some())
                && need(K_MEMBER, member_h.is_some())
                && need(K_ARG0, arg0_h.is_some())
                && need(K_PATH | K_PATHNS, msg.path.is_some()))
            {
                continue;
            }
            let base = self.base_key(
                shape,
                iface_h.unwrap_or(0),
                member_h.unwrap_or(0),
                arg0_h.unwrap_or(0),
            );
            let mut with_sender = |k: u64| {
                if shape & K_SENDER != 0 {
                    for name in sender_names {
                        visit(fold(k, self.h(name)));
                    }
                } else {
                    visit(k);
                }
            };
            if shape & K_PATH != 0 {
                with_sender(fold(base, path_h.unwrap_or(0)));
            } else if shape & K_PATHNS != 0 {
                for prefix in path_prefixes(msg.path.unwrap_or("")) {
                    with_sender(fold(base, self.h(prefix)));
                }
            } else {
                with_sender(base);
            }
        }
        examined
    }
}

/// Bitmask over shapes (bit `s` = shape `s`) of every shape that includes any of `bits`.
const fn shapes_with(bits: u8) -> u64 {
    let mut m = 0u64;
    let mut s: u8 = 0;
    while s < 64 {
        if s & bits != 0 {
            m |= 1u64 << s;
        }
        s += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::match_rule::tests::TestMsg;
    use crate::wire::message::{METHOD_CALL, SIGNAL};

    fn p(s: &str) -> MatchRule {
        match MatchRule::parse(s) {
            Ok(r) => r,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    fn sig(path: &str, iface: &str, member: &str) -> TestMsg {
        TestMsg {
            msg_type: SIGNAL,
            path: Some(path.into()),
            interface: Some(iface.into()),
            member: Some(member.into()),
            ..Default::default()
        }
    }

    fn collect(ix: &MatchIndex, m: &TestMsg, senders: &[&str], dests: &[&str]) -> Vec<ConnId> {
        let mut out = Vec::new();
        ix.collect(m, senders, dests, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn prefixes() {
        let v: Vec<_> = path_prefixes("/a/bc/d").collect();
        assert_eq!(v, ["/", "/a", "/a/bc", "/a/bc/d"]);
        assert_eq!(path_prefixes("/").collect::<Vec<_>>(), ["/"]);
        assert_eq!(path_prefixes("/x").collect::<Vec<_>>(), ["/", "/x"]);
        assert_eq!(path_prefixes("").collect::<Vec<_>>(), ["/", ""]);
    }

    #[test]
    fn basic_routing() {
        let mut ix = MatchIndex::new();
        ix.insert(1, p("type=signal,interface=org.ex.I"));
        ix.insert(2, p("member=Changed,path=/a/b"));
        ix.insert(3, p("sender=org.ex.Svc,member=Changed"));
        ix.insert(4, p("path_namespace=/a"));
        ix.insert(5, p("arg0=hello,member=Changed"));
        ix.insert(6, p("member=Other"));
        ix.insert(7, p(""));
        let mut m = sig("/a/b", "org.ex.I", "Changed");
        assert_eq!(collect(&ix, &m, &[":1.9"], &[]), [1, 2, 4, 7]);
        assert_eq!(
            collect(&ix, &m, &[":1.9", "org.ex.Svc"], &[]),
            [1, 2, 3, 4, 7]
        );
        m.args = vec![Some((false, "hello".into()))];
        assert_eq!(collect(&ix, &m, &[":1.9"], &[]), [1, 2, 4, 5, 7]);
        m.path = Some("/ab".into());
        assert_eq!(collect(&ix, &m, &[":1.9"], &[]), [1, 5, 7]);
        // Unicast: ordinary rules never see it.
        m.destination = Some(":1.3".into());
        assert!(collect(&ix, &m, &[":1.9"], &[":1.3"]).is_empty());
    }

    #[test]
    fn eavesdrop_and_destination() {
        let mut ix = MatchIndex::new();
        ix.insert(1, p("eavesdrop=true"));
        ix.insert(2, p("eavesdrop=true,destination=org.ex.Dst"));
        ix.insert(3, p("destination=org.ex.Dst")); // never matches
        ix.insert(4, p("eavesdrop=true,member=Ping,sender=:1.1"));
        ix.insert(5, p("member=Ping"));
        let mut m = TestMsg {
            msg_type: METHOD_CALL,
            path: Some("/".into()),
            member: Some("Ping".into()),
            destination: Some("org.ex.Dst".into()),
            ..Default::default()
        };
        assert_eq!(
            collect(&ix, &m, &[":1.1"], &[":1.2", "org.ex.Dst"]),
            [1, 2, 4]
        );
        assert_eq!(collect(&ix, &m, &[":1.0"], &[":1.2"]), [1]);
        // Recipient not known yet: the DESTINATION string is compared.
        assert_eq!(collect(&ix, &m, &[":1.0"], &[]), [1, 2]);
        m.destination = None;
        assert_eq!(collect(&ix, &m, &[":1.1"], &[]), [1, 4, 5]);
    }

    #[test]
    fn dedupe_including_prefilled() {
        let mut ix = MatchIndex::new();
        for _ in 0..3 {
            ix.insert(1, p("member=M"));
        }
        ix.insert(1, p(""));
        ix.insert(2, p("member=M"));
        ix.insert(3, p("path_namespace=/"));
        let m = sig("/x", "a.b", "M");
        assert_eq!(collect(&ix, &m, &[":1.0", ":1.0"], &[]), [1, 2, 3]);
        let mut out = vec![2, 99];
        ix.collect(&m, &[":1.0"], &[], &mut out);
        out[2..].sort_unstable();
        assert_eq!(out, [2, 99, 1, 3]);
        // Repeated calls keep working (stamps are per call).
        let mut out = Vec::new();
        ix.collect(&m, &[":1.0"], &[], &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn generation_wrap() {
        let mut ix = MatchIndex::new();
        ix.insert(1, p(""));
        ix.generation.set(u32::MAX - 1);
        let m = sig("/x", "a.b", "M");
        for _ in 0..4 {
            assert_eq!(collect(&ix, &m, &[], &[]), [1]);
        }
    }

    #[test]
    fn bookkeeping() {
        let mut ix = MatchIndex::new();
        let r = p("type=signal,member=Q");
        let a = ix.insert(7, r.clone());
        let b = ix.insert(7, p("member=Q,type='signal'"));
        ix.insert(7, p("interface=a.b"));
        ix.insert(8, r.clone());
        assert_eq!(ix.count(7), 3);
        assert_eq!(ix.count(8), 1);
        assert_eq!(ix.count(9), 0);
        assert_eq!(ix.total(), 4);
        let mut owners: Vec<_> = ix.all_owners().collect();
        owners.sort_unstable();
        assert_eq!(owners, [7, 8]);
        let texts: Vec<_> = ix.rules_of(7).map(|r| r.canonical()).collect();
        assert_eq!(
            texts,
            [
                "type='signal',member='Q'",
                "type='signal',member='Q'",
                "interface='a.b'"
            ]
        );
        // Newest equal rule goes first.
        assert!(ix.remove_equal(7, &r));
        assert!(ix.get(a).is_some());
        assert!(ix.get(b).is_none());
        assert!(ix.remove_equal(7, &r));
        assert!(!ix.remove_equal(7, &r));
        assert!(!ix.remove_equal(9, &r));
        assert!(!ix.remove_equal(7, &p("path_namespace=/a")));
        assert_eq!(ix.count(7), 1);
        assert_eq!(ix.get(RuleId(usize::MAX)), None);
        let m = sig("/", "a.b", "Q");
        assert_eq!(collect(&ix, &m, &[], &[]), [7, 8]);
        ix.remove_owner(7);
        assert_eq!(ix.count(7), 0);
        assert_eq!(ix.rules_of(7).count(), 0);
        assert_eq!(collect(&ix, &m, &[], &[]), [8]);
        ix.remove_owner(7); // no-op
        assert_eq!(ix.remove(RuleId(12345)), None);
        ix.remove_owner(8);
        assert_eq!(ix.total(), 0);
        assert_eq!(ix.all_owners().count(), 0);
        assert!(ix.strings.is_empty(), "interned strings released");
        assert!(ix.broadcast.heads.is_empty());
        assert_eq!(ix.broadcast.active, 0);
        assert!(collect(&ix, &m, &[], &[]).is_empty());
    }

    #[test]
    fn interning_shares_strings() {
        let mut ix = MatchIndex::new();
        let a = ix.insert(1, p("interface=org.ex.I,sender=org.ex.I"));
        let b = ix.insert(2, p("interface=org.ex.I"));
        let (Some((_, ra)), Some((_, rb))) = (ix.get(a), ix.get(b)) else {
            panic!("missing rules");
        };
        let (Some(x), Some(y), Some(z)) = (&ra.interface, &rb.interface, &ra.sender) else {
            panic!("missing interface");
        };
        assert!(Rc::ptr_eq(x, y));
        assert!(Rc::ptr_eq(x, z));
        assert_eq!(ix.strings.len(), 1);
        ix.remove(a);
        assert_eq!(ix.strings.len(), 1);
        ix.remove(b);
        assert!(ix.strings.is_empty());
    }

    use crate::test_rng::Rng;

    const NAMES: &[&str] = &[
        ":1.1",
        ":1.2",
        "org.ex.A",
        "org.ex.B",
        "org.freedesktop.DBus",
    ];
    const IFACES: &[&str] = &["org.ex.I", "org.ex.J", "org.freedesktop.DBus"];
    const MEMBERS: &[&str] = &["M", "N", "NameOwnerChanged"];
    const PATHS: &[&str] = &["/", "/a", "/a/b", "/a/b/c", "/ab", "/b"];
    const ARGS: &[&str] = &["x", "y", "/a/", "/a/b", "a.b", "a", ""];
    const TYPES: &[&str] = &["signal", "method_call", "error"];

    fn random_rule(rng: &mut Rng) -> MatchRule {
        let mut parts = Vec::new();
        if rng.chance(30) {
            parts.push(format!("type={}", rng.pick(TYPES)));
        }
        if rng.chance(40) {
            parts.push(format!("sender={}", rng.pick(NAMES)));
        }
        if rng.chance(50) {
            parts.push(format!("interface={}", rng.pick(IFACES)));
        }
        if rng.chance(50) {
            parts.push(format!("member={}", rng.pick(MEMBERS)));
        }
        match rng.below(4) {
            0 => parts.push(format!("path={}", rng.pick(PATHS))),
            1 => parts.push(format!("path_namespace={}", rng.pick(PATHS))),
            _ => {}
        }
        if rng.chance(10) {
            parts.push(format!("destination={}", rng.pick(NAMES)));
        }
        if rng.chance(15) {
            parts.push("eavesdrop=true".into());
        }
        match rng.below(6) {
            0 => parts.push(format!("arg0='{}'", rng.pick(ARGS))),
            1 => parts.push(format!("arg0path='{}'", rng.pick(ARGS))),
            2 => parts.push("arg0namespace=a".into()),
            3 => parts.push(format!("arg1='{}'", rng.pick(ARGS))),
            _ => {}
        }
        // Shuffle key order: the rule must not care.
        for i in (1..parts.len()).rev() {
            parts.swap(i, rng.below(i + 1));
        }
        p(&parts.join(","))
    }

    fn random_msg(rng: &mut Rng) -> TestMsg {
        let opt = |rng: &mut Rng, xs: &[&str]| rng.chance(85).then(|| rng.pick(xs).to_string());
        TestMsg {
            msg_type: [1u8, 2, 3, 4, 4, 4][rng.below(6)],
            path: opt(rng, PATHS),
            interface: opt(rng, IFACES),
            member: opt(rng, MEMBERS),
            destination: rng.chance(30).then(|| rng.pick(NAMES).to_string()),
            args: (0..rng.below(3))
                .map(|_| match rng.below(3) {
                    0 => None,
                    1 => Some((true, rng.pick(ARGS).to_string())),
                    _ => Some((false, rng.pick(ARGS).to_string())),
                })
                .collect(),
        }
    }

    fn brute(
        rules: &[(ConnId, RuleId, MatchRule)],
        m: &TestMsg,
        senders: &[&str],
        dests: &[&str],
    ) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = rules
            .iter()
            .filter(|(_, _, r)| {
                (m.destination.is_none() || r.eavesdrop)
                    && r.matches(
                        m,
                        |s| senders.contains(&s),
                        |d| {
                            if dests.is_empty() {
                                m.destination.as_deref() == Some(d)
                            } else {
                                dests.contains(&d)
                            }
                        },
                    )
            })
            .map(|(c, _, _)| *c)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    #[test]
    fn index_agrees_with_brute_force() {
        let mut rng = Rng(0x5eed);
        let mut ix = MatchIndex::new();
        let mut live: Vec<(ConnId, RuleId, MatchRule)> = Vec::new();
        let mut nonempty = 0;
        for round in 0..3000 {
            match rng.below(10) {
                0..=5 => {
                    let owner = rng.below(40);
                    let r = random_rule(&mut rng);
                    let id = ix.insert(owner, r.clone());
                    live.push((owner, id, r));
                }
                6 if !live.is_empty() => {
                    let i = rng.below(live.len());
                    let (owner, _, r) = live[i].clone();
                    assert!(ix.remove_equal(owner, &r));
                    // The newest equal rule of that owner is the one gone.
                    let j = live
                        .iter()
                        .rposition(|(o, _, x)| *o == owner && *x == r)
                        .expect("present");
                    live.remove(j);
                }
                7 if round % 50 == 0 => {
                    let owner = rng.below(40);
                    ix.remove_owner(owner);
                    live.retain(|(o, _, _)| *o != owner);
                }
                _ => {}
            }
            assert_eq!(ix.total(), live.len());
            for _ in 0..3 {
                let m = random_msg(&mut rng);
                let senders: Vec<&str> = NAMES.iter().copied().filter(|_| rng.chance(35)).collect();
                let dests: Vec<&str> = if m.destination.is_some() && rng.chance(70) {
                    NAMES.iter().copied().filter(|_| rng.chance(40)).collect()
                } else {
                    Vec::new()
                };
                let want = brute(&live, &m, &senders, &dests);
                let got = collect(&ix, &m, &senders, &dests);
                assert_eq!(
                    got, want,
                    "round {round}: {m:?} senders {senders:?} dests {dests:?}"
                );
                nonempty += usize::from(!want.is_empty());
            }
        }
        assert!(
            nonempty > 1000,
            "the test must exercise matches ({nonempty})"
        );
        for owner in 0..40 {
            let mine: Vec<_> = live
                .iter()
                .filter(|(o, _, _)| *o == owner)
                .map(|x| &x.2)
                .collect();
            assert_eq!(ix.rules_of(owner).collect::<Vec<_>>(), mine);
            assert_eq!(ix.count(owner), mine.len());
        }
        for owner in 0..40 {
            ix.remove_owner(owner);
        }
        assert_eq!(ix.total(), 0);
        assert!(ix.strings.is_empty());
        assert!(ix.broadcast.heads.is_empty() && ix.eavesdrop.heads.is_empty());
    }

    /// Routing cost must follow what matches, not how many rules exist.
    #[test]
    fn cost_independent_of_non_matching_rules() {
        let build = |n: usize| {
            let mut ix = MatchIndex::new();
            for i in 0..n {
                let text = match i % 5 {
                    0 => format!("type=signal,path=/org/ex/Obj{i}"),
                    1 => format!("type=signal,sender=:1.{i},member=M"),
                    2 => format!("interface=org.ex.I{i}"),
                    3 => format!(
                        "type=signal,sender=org.freedesktop.DBus,interface=org.freedesktop.DBus,\
                         member=NameOwnerChanged,arg0=org.ex.N{i}"
                    ),
                    _ => format!("path_namespace=/org/ex/Ns{i},member=M"),
                };
                ix.insert(i, p(&text));
            }
            ix.insert(usize::MAX, p("member=M,interface=org.ex.Hit"));
            ix
        };
        let m = sig("/org/ex/Other/deep/path", "org.ex.Hit", "M");
        let mut noc = sig(
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "NameOwnerChanged",
        );
        noc.args = vec![Some((false, "org.ex.Nobody".into()))];
        let mut out = Vec::new();
        for n in [10, 10_000] {
            let ix = build(n);
            out.clear();
            let examined = ix.collect_counting(&m, &[":1.99999", "org.ex.Svc"], &[], &mut out);
            assert_eq!(out, [usize::MAX]);
            assert_eq!(examined, 1, "n = {n}");
            out.clear();
            let examined = ix.collect_counting(&noc, &["org.freedesktop.DBus"], &[], &mut out);
            assert!(out.is_empty());
            assert_eq!(examined, 0, "n = {n}");
        }
        for n in [10, 10_000] {
            let ix = build(n);
            let start = std::time::Instant::now();
            for _ in 0..2_000 {
                out.clear();
                ix.collect(&m, &[":1.99999", "org.ex.Svc"], &[], &mut out);
            }
            println!(
                "collect with {} rules: {:?} per message",
                n + 1,
                start.elapsed() / 2_000
            );
        }
    }

    #[test]
    fn memory_per_rule_estimate() {
        let mut ix = MatchIndex::new();
        let n = 10_000;
        for i in 0..n {
            ix.insert(
                i % 100,
                p(&format!("type='signal',path='/org/example/Object{i}'")),
            );
        }
        let bytes = ix.memory_estimate();
        println!(
            "match index, {n} distinct path rules: ~{} bytes/rule allocated, ~{} bytes/rule \
             in live items (entry {} B, rule {} B)",
            bytes / n,
            ix.memory(false) / n,
            std::mem::size_of::<Entry>(),
            std::mem::size_of::<MatchRule>()
        );
        assert!(ix.memory(false) <= bytes);
        assert!(bytes > n * 100, "estimate must count the entries ({bytes})");
    }
}
