//! Expected replies: every method call that wants an answer is recorded until its reply
//! passes, its callee leaves or `reply_timeout` expires (both answered with NoReply), so a
//! reply nobody asked for is never delivered and each asked-for reply passes once.

use super::error::{BusError, ErrorKind};
use super::{Bus, ConnId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// Text of the NoReply error when the callee goes away.
pub const NO_REPLY_DISCONNECT: &str =
    "Message recipient disconnected from message bus without replying";
/// Text of the NoReply error on timeout.
pub const NO_REPLY_TIMEOUT: &str = "Message did not receive a reply (timeout by message bus)";

/// Identifies one expected reply: (callee's unique number, caller's unique number, serial).
/// Unique numbers, unlike slab indexes, are never reused, so a stale record can never
/// authorise a reply to a later connection.
pub type ReplyKey = (u64, u64, u32);

/// One method call awaiting its reply.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReplyRecord {
    caller: ConnId,
    callee: ConnId,
    deadline: Option<Instant>,
}

/// Hashes a [`ReplyKey`]: one folded multiplication per word (the mixing step of
/// ahash's fallback hasher, without its finishing rounds), from a random per-table seed.
/// The serial is the caller's choice, so the hash stays keyed: a caller that cannot see
/// the seed cannot aim its serials at one bucket. Four of these per round trip (a call is
/// checked and recorded, its reply checked and removed), so the rounds saved count.
#[derive(Debug, Clone, Copy)]
pub struct KeyHash(u64);

impl Default for KeyHash {
    fn default() -> Self {
        // ahash's per-process random state, drawn once per table.
        KeyHash(ahash::RandomState::new().hash_one(0x5eed_u64) | 1)
    }
}

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

/// The hasher of [`KeyHash`].
#[derive(Debug)]
pub struct KeyHasher(u64);

impl KeyHasher {
    #[inline]
    fn mix(&mut self, x: u64) {
        let m = u128::from(self.0 ^ x).wrapping_mul(0x5851_f42d_4c95_7f2d);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not used for a ReplyKey (whose parts are written as integers); correct anyway.
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }
    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }
}

/// Expected replies, with a timeout heap when `reply_timeout` is set.
///
/// A caller usually waits on one call at a time (a round trip): its first record without a
/// deadline is kept in a slot of its own, indexed by its connection id, where recording
/// and answering it cost a compare instead of two hash-table operations. Any further
/// record, and every record with a deadline, goes to the keyed map.
#[derive(Debug, Default)]
pub struct ReplyTable {
    records: HashMap<ReplyKey, ReplyRecord, KeyHash>,
    deadlines: BinaryHeap<Reverse<(Instant, ReplyKey)>>,
    /// One record per caller, at its connection id (`ReplyRecord::caller`); emptied when
    /// the caller leaves (`Bus::forget_replies_of`), so a reused id finds nothing.
    /// Only the key and the callee are kept: the caller is the index, and there is no
    /// deadline.
    slots: Vec<Option<(ReplyKey, ConnId)>>,
    /// Records in `slots`.
    in_slots: usize,
}

impl ReplyTable {
    /// Number of outstanding records.
    pub fn len(&self) -> usize {
        self.records.len() + self.in_slots
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key`, a call of `caller`, is recorded.
    #[inline(always)]
    fn contains(&self, caller: ConnId, key: &ReplyKey) -> bool {
        self.slots
            .get(caller)
            .is_some_and(|s| s.is_some_and(|(k, _)| k == *key))
            || (!self.records.is_empty() && self.records.contains_key(key))
    }

    /// The record of `key`, a call of `caller`, removed.
    #[inline(always)]
    fn remove(&mut self, caller: ConnId, key: &ReplyKey) -> Option<ReplyRecord> {
        if let Some(slot) = self.slots.get_mut(caller) {
            if let Some((k, callee)) = *slot {
                if k == *key {
                    *slot = None;
                    self.in_slots -= 1;
                    return Some(ReplyRecord {
                        caller,
                        callee,
                        deadline: None,
                    });
                }
            }
        }
        if self.records.is_empty() {
            return None;
        }
        self.records.remove(key)
    }

    /// Add `rec` (not yet recorded): in its caller's slot if that is free and `rec` has no
    /// deadline, else in the map (its deadline, if any, is the caller's to push).
    #[inline(always)]
    fn insert(&mut self, key: ReplyKey, rec: ReplyRecord) {
        if rec.deadline.is_none() {
            if self.slots.len() <= rec.caller {
                self.slots.resize(rec.caller + 1, None);
            }
            if let Some(slot @ None) = self.slots.get_mut(rec.caller) {
                *slot = Some((key, rec.callee));
                self.in_slots += 1;
                return;
            }
        }
        self.records.insert(key, rec);
    }

    /// Every record, slots and map alike.
    fn iter(&self) -> impl Iterator<Item = (ReplyKey, ReplyRecord)> + '_ {
        let slotted = self.slots.iter().enumerate().filter_map(|(caller, s)| {
            s.map(|(k, callee)| {
                let rec = ReplyRecord {
                    caller,
                    callee,
                    deadline: None,
                };
                (k, rec)
            })
        });
        slotted.chain(self.records.iter().map(|(k, r)| (*k, *r)))
    }

    /// How many records each connection waits on (as caller) and owes (as callee), with
    /// any record whose key does not name its caller's and callee's numbers listed apart
    /// (for `Bus::check_invariants`).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(super) fn tally(
        &self,
        serial_no: impl Fn(ConnId) -> Option<u64>,
    ) -> (ahash::AHashMap<ConnId, (usize, usize)>, Vec<ReplyKey>) {
        let mut by_conn: ahash::AHashMap<ConnId, (usize, usize)> = ahash::AHashMap::new();
        let mut bad = Vec::new();
        for (key, rec) in self.iter() {
            by_conn.entry(rec.caller).or_default().0 += 1;
            by_conn.entry(rec.callee).or_default().1 += 1;
            if serial_no(rec.callee) != Some(key.0) || serial_no(rec.caller) != Some(key.1) {
                bad.push(key);
            }
        }
        (by_conn, bad)
    }

    /// Add `key`'s deadline. An answered call leaves its entry in the heap until that
    /// deadline passes, so at a high call rate stale entries would pile up (calls/s ×
    /// `reply_timeout` of them): once they outnumber the live records, drop them all.
    /// Amortized, a few instructions per call.
    fn push_deadline(&mut self, t: Instant, key: ReplyKey) {
        self.deadlines.push(Reverse((t, key)));
        if self.deadlines.len() > 2 * self.records.len() + 64 {
            let records = &self.records;
            self.deadlines
                .retain(|Reverse((t, k))| records.get(k).is_some_and(|r| r.deadline == Some(*t)));
        }
    }

    /// Entries in the deadline heap, live or stale (for tests).
    #[cfg(test)]
    pub(super) fn deadline_entries(&self) -> usize {
        self.deadlines.len()
    }

    /// Earliest reply deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((t, _))| *t)
    }

    /// The earliest record whose deadline is due by `now`, removed.
    fn pop_expired(&mut self, now: Instant) -> Option<(ReplyKey, ReplyRecord)> {
        while let Some(Reverse((t, key))) = self.deadlines.peek().copied() {
            if t > now {
                return None;
            }
            self.deadlines.pop();
            // A record answered (or re-made) since keeps no stale deadline.
            if let Some(rec) = self.records.get(&key).copied() {
                if rec.deadline == Some(t) {
                    self.records.remove(&key);
                    return Some((key, rec));
                }
            }
        }
        None
    }
}

impl Bus {
    /// The key of the expected reply that `msg` (a METHOD_RETURN or ERROR from `from` to `to`)
    /// answers, if it was asked for.
    pub(super) fn expected_reply(
        &self,
        from: ConnId,
        to: ConnId,
        reply_serial: Option<u32>,
    ) -> Option<ReplyKey> {
        let key = (
            self.peers.get(from)?.serial_no,
            self.peers.get(to)?.serial_no,
            reply_serial?,
        );
        self.replies.contains(to, &key).then_some(key)
    }

    /// A reply from `from` to `to` answering `reply_serial`: its record, taken out of the
    /// table if it was asked for (one lookup where checking, then removing once delivered,
    /// took two). The caller must hand it to [`Bus::reply_passed`] once the reply is queued,
    /// or back to [`Bus::restore_reply`] before anything else can look at the table.
    pub(super) fn take_expected_reply(
        &mut self,
        from: ConnId,
        to: ConnId,
        reply_serial: Option<u32>,
    ) -> Option<(ReplyKey, ReplyRecord)> {
        let key = (
            self.peers.get(from)?.serial_no,
            self.peers.get(to)?.serial_no,
            reply_serial?,
        );
        self.replies.remove(to, &key).map(|rec| (key, rec))
    }

    /// Put back a record [`Bus::take_expected_reply`] took: its reply was not delivered.
    pub(super) fn restore_reply(&mut self, taken: Option<(ReplyKey, ReplyRecord)>) {
        if let Some((key, rec)) = taken {
            self.replies.insert(key, rec);
        }
    }

    /// The reply whose record [`Bus::take_expected_reply`] took was queued.
    pub(super) fn reply_passed(&mut self, taken: Option<(ReplyKey, ReplyRecord)>) {
        if let Some((_, rec)) = taken {
            self.reply_record_gone(rec);
        }
    }

    /// A call from `caller` to `callee` that expects a reply: recorded now, in one lookup,
    /// if the serial is not already outstanding (AccessDenied) and
    /// `max_replies_per_connection` is not reached (LimitsExceeded), in that order. If the
    /// call is then not delivered, [`Bus::reply_delivered`] withdraws the record again.
    pub(super) fn record_call(
        &mut self,
        caller: ConnId,
        callee: ConnId,
        serial: u32,
    ) -> Result<ReplyKey, BusError> {
        // One lookup per side: this runs for every method call.
        let (caller_no, pending) = self
            .peers
            .get(caller)
            .map_or((0, 0), |p| (p.serial_no, p.pending_replies));
        let callee_no = self.peers.get(callee).map_or(0, |p| p.serial_no);
        let key = (callee_no, caller_no, serial);
        if self.replies.contains(caller, &key) {
            return Err(BusError::new(
                ErrorKind::AccessDenied,
                "Message has the same reply serial as a currently-outstanding existing method call",
            ));
        };
        let max = self.config.limits.max_replies_per_connection as usize;
        if pending >= max {
            return Err(BusError::new(
                ErrorKind::LimitsExceeded,
                "The maximum number of pending replies per connection has been reached",
            ));
        }
        let deadline = match self.config.limits.reply_timeout {
            Some(t) if t > 0 => Some(self.clock.now() + Duration::from_millis(u64::from(t))),
            _ => None,
        };
        self.replies.insert(
            key,
            ReplyRecord {
                caller,
                callee,
                deadline,
            },
        );
        if let Some(t) = deadline {
            self.replies.push_deadline(t, key);
        }
        if let Some(p) = self.peers.get_mut(caller) {
            p.pending_replies += 1;
        }
        if let Some(p) = self.peers.get_mut(callee) {
            p.owed_replies += 1;
        }
        Ok(key)
    }

    /// The reply for `key`, a call of `caller`, was delivered: a second one will not be.
    pub(super) fn reply_delivered(&mut self, caller: ConnId, key: ReplyKey) {
        if let Some(rec) = self.replies.remove(caller, &key) {
            self.reply_record_gone(rec);
        }
    }

    /// Calls whose `reply_timeout` passed get NoReply.
    pub(super) fn expire_replies(&mut self, now: Instant) {
        while let Some((key, rec)) = self.replies.pop_expired(now) {
            self.reply_record_gone(rec);
            self.no_reply(rec.caller, key.2, NO_REPLY_TIMEOUT);
        }
    }

    /// `id` is leaving: calls it owed an answer to fail with NoReply; calls it made are
    /// forgotten. The table is only scanned when the counters say `id` is in it.
    pub(super) fn forget_replies_of(&mut self, id: ConnId) {
        let me = self.peers.get(id).map_or(0, |p| p.serial_no);
        let involved = self
            .peers
            .get(id)
            .is_some_and(|p| p.pending_replies > 0 || p.owed_replies > 0);
        if me != 0 && involved {
            let owed: Vec<(ReplyKey, ReplyRecord)> = self
                .replies
                .iter()
                .filter(|(k, _)| k.0 == me || k.1 == me)
                .collect();
            for (key, rec) in owed {
                self.replies.remove(rec.caller, &key);
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
        let err = BusError::new(ErrorKind::NoReply, text);
        self.reply_error_serial(caller, serial, &err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hash_depends_on_every_part_and_on_the_seed() {
        let (a, b) = (KeyHash::default(), KeyHash::default());
        assert_ne!(a.0, b.0, "two tables drew the same seed");
        let key: ReplyKey = (3, 5, 7);
        for other in [(4, 5, 7), (3, 6, 7), (3, 5, 8), (5, 3, 7)] {
            assert_ne!(a.hash_one(key), a.hash_one(other), "{other:?}");
        }
        assert_ne!(a.hash_one(key), b.hash_one(key));
        // Serials differing only in their high bits spread over the bucket (low) and tag
        // (high 7) bits the table uses: 64 of them take far more than 16 values of each
        // (about 57 and 51 expected; fewer than 16 would be a broken mix, not chance).
        let hashes: Vec<u64> = (0..64u32)
            .map(|i| a.hash_one((3u64, 5u64, i << 26)))
            .collect();
        let distinct = |f: fn(u64) -> u64| {
            let mut v: Vec<u64> = hashes.iter().map(|&h| f(h)).collect();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        assert!(distinct(|h| h & 0xff) >= 16, "low bits");
        assert!(distinct(|h| h >> 57) >= 16, "tag bits");
    }
}
