//! A min-heap of per-connection deadlines whose entries can go stale.
//!
//! A `BinaryHeap` cannot remove an arbitrary entry, so an entry whose connection closed (or
//! whose deadline was cleared) stays until it would expire. Under connection churn that is
//! one entry per connection accepted within the timeout (35k per second for 30 s), and the
//! heap's buffer never shrinks afterwards. Here the owner counts the live entries: each
//! time one goes stale it says so ([`DeadlineHeap::retire`]), and once stale entries
//! outnumber live ones (plus [`SLACK`]) the heap is compacted and its buffer shrunk, so its
//! memory stays within twice the live entries plus a constant, amortized O(1) per entry.

use crate::bus::ConnId;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Stale entries tolerated beyond the live ones before a compaction.
pub const SLACK: usize = 64;

/// Deadlines of connections, earliest first.
#[derive(Default)]
pub struct DeadlineHeap {
    heap: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Entries the owner considers live (pushed, neither retired nor popped).
    live: usize,
}

impl DeadlineHeap {
    /// A live deadline `t` for connection `id`.
    pub fn push(&mut self, t: Instant, id: ConnId) {
        self.heap.push(Reverse((t, id)));
        self.live += 1;
    }

    /// The earliest deadline (live or stale: waking up early for a stale one is harmless).
    pub fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Whether there is no deadline at all (live or stale).
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// The earliest entry due by `now` that `is_live` accepts, removed; stale ones on the way
    /// are dropped. The caller must make the returned entry stale on its side (clear the
    /// connection's deadline or close it) without calling [`DeadlineHeap::retire`].
    pub fn pop_due(
        &mut self,
        now: Instant,
        is_live: impl Fn(Instant, ConnId) -> bool,
    ) -> Option<(Instant, ConnId)> {
        while let Some(&Reverse((t, id))) = self.heap.peek() {
            if t > now {
                return None;
            }
            self.heap.pop();
            if is_live(t, id) {
                self.live = self.live.saturating_sub(1);
                return Some((t, id));
            }
        }
        None
    }

    /// One live entry went stale (its connection closed or its deadline was cleared; the
    /// caller has already made `is_live` false for it). Compacts when stale entries
    /// outnumber live ones by more than [`SLACK`].
    /// Stale entries at the top are dropped at once: [`DeadlineHeap::peek`] then names a
    /// live deadline (or none), and a loop that authenticated its connections long ago
    /// has no deadline to wait for (and no clock to read for one).
    pub fn retire(&mut self, is_live: impl Fn(Instant, ConnId) -> bool) {
        self.live = self.live.saturating_sub(1);
        while let Some(&Reverse((t, id))) = self.heap.peek() {
            if is_live(t, id) {
                break;
            }
            self.heap.pop();
        }
        if self.heap.len() > 2 * self.live + SLACK {
            self.heap.retain(|&Reverse((t, id))| is_live(t, id));
            self.live = self.heap.len();
            self.heap.shrink_to(2 * self.live + SLACK);
        }
    }

    /// Entries held, live or stale.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.heap.len()
    }

    /// Entries the buffer has room for.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.heap.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::time::Duration;

    /// Connection churn: every connection closes long before its deadline. The heap never
    /// holds more than twice the open connections plus SLACK, and gives its memory back.
    #[test]
    fn churn_does_not_grow_the_heap() {
        let t0 = Instant::now();
        let mut h = DeadlineHeap::default();
        let mut open: VecDeque<ConnId> = VecDeque::new();
        let mut peak = 0;
        for i in 0..100_000usize {
            let id = i % 1000; // slots are reused
                               // Keep up to 10 connections open at once; close the oldest.
            if open.len() == 10 {
                open.pop_front();
                h.retire(|_, c| open.contains(&c));
            }
            // Distinct instants, all far in the future.
            h.push(
                t0 + Duration::from_secs(30) + Duration::from_nanos(i as u64),
                id,
            );
            open.push_back(id);
            peak = peak.max(h.held());
        }
        assert!(peak <= 2 * 10 + SLACK + 1, "heap grew to {peak} entries");
        while open.pop_front().is_some() {
            h.retire(|_, c| open.contains(&c));
        }
        assert!(h.held() <= SLACK + 1, "{} entries left", h.held());
        assert!(h.capacity() <= 4 * SLACK, "capacity {} kept", h.capacity());
        // Nothing stale is ever returned.
        assert_eq!(h.pop_due(t0 + Duration::from_secs(60), |_, _| false), None);
        assert_eq!(h.held(), 0);
    }

    #[test]
    fn pop_due_returns_live_entries_in_order_and_skips_stale_ones() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = DeadlineHeap::default();
        h.push(t0 + s(3), 3);
        h.push(t0 + s(1), 1);
        h.push(t0 + s(2), 2);
        h.push(t0 + s(9), 9);
        let live = |_, c| c != 2;
        h.retire(live);
        assert_eq!(h.peek(), Some(t0 + s(1)));
        assert_eq!(h.pop_due(t0 + s(5), live), Some((t0 + s(1), 1)));
        assert_eq!(h.pop_due(t0 + s(5), live), Some((t0 + s(3), 3)));
        assert_eq!(h.pop_due(t0 + s(5), live), None);
        assert_eq!(h.peek(), Some(t0 + s(9)));
        assert_eq!(h.live, 1);
    }

    #[test]
    fn retiring_the_earliest_leaves_no_stale_deadline_to_wait_for() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut h = DeadlineHeap::default();
        h.push(t0 + s(1), 1);
        h.push(t0 + s(2), 2);
        // Connection 1 authenticated: its deadline is not waited for.
        h.retire(|_, c| c == 2);
        assert_eq!(h.peek(), Some(t0 + s(2)));
        // A stale entry below a live top stays until it surfaces.
        h.push(t0 + s(3), 3);
        h.retire(|_, c| c == 2);
        assert_eq!(h.peek(), Some(t0 + s(2)));
        h.retire(|_, _| false);
        assert_eq!(h.peek(), None, "stale deadlines left on top");
        assert_eq!(h.held(), 0);
    }
}
