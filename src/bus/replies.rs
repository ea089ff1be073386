//! Expected replies: every method call that wants an answer is recorded until its reply
//! passes, its callee leaves or `reply_timeout` expires (both answered with NoReply), so a
//! reply nobody asked for is never delivered and each asked-for reply passes once.

use super::error::{BusError, ErrorKind};
use super::{Bus, ConnId};
use ahash::AHashMap;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
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
        self.replies.records.contains_key(&key).then_some(key)
    }

    /// Whether `caller` may make one more call to `callee` that expects a reply: the serial
    /// must not already be outstanding, and `max_replies_per_connection` not reached.
    /// Returns the key to record once the call is delivered.
    pub(super) fn check_new_call(
        &self,
        caller: ConnId,
        callee: ConnId,
        serial: u32,
    ) -> Result<ReplyKey, BusError> {
        let caller_no = self.peers.get(caller).map_or(0, |p| p.serial_no);
        let callee_no = self.peers.get(callee).map_or(0, |p| p.serial_no);
        let key = (callee_no, caller_no, serial);
        if self.replies.records.contains_key(&key) {
            return Err(BusError::new(
                ErrorKind::AccessDenied,
                "Message has the same reply serial as a currently-outstanding existing method call",
            ));
        }
        let max = self.config.limits.max_replies_per_connection as usize;
        if self.peers.get(caller).map_or(0, |p| p.pending_replies) >= max {
            return Err(BusError::new(
                ErrorKind::LimitsExceeded,
                "The maximum number of pending replies per connection has been reached",
            ));
        }
        Ok(key)
    }

    /// A call from `caller` to `callee` was delivered: its reply is now expected.
    pub(super) fn expect_reply(
        &mut self,
        key: ReplyKey,
        caller: ConnId,
        callee: ConnId,
        now: Instant,
    ) {
        let deadline = match self.config.limits.reply_timeout {
            Some(t) if t > 0 => Some(now + Duration::from_millis(u64::from(t))),
            _ => None,
        };
        self.replies.records.insert(
            key,
            ReplyRecord {
                caller,
                callee,
                deadline,
            },
        );
        if let Some(t) = deadline {
            self.replies.deadlines.push(Reverse((t, key)));
        }
        if let Some(p) = self.peers.get_mut(caller) {
            p.pending_replies += 1;
        }
        if let Some(p) = self.peers.get_mut(callee) {
            p.owed_replies += 1;
        }
    }

    /// The reply for `key` was delivered: a second one will not be.
    pub(super) fn reply_delivered(&mut self, key: ReplyKey) {
        if let Some(rec) = self.replies.records.remove(&key) {
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
        let err = BusError::new(ErrorKind::NoReply, text);
        self.reply_error_serial(caller, serial, &err);
    }
}
