//! The connections with input left to read, in round-robin order, each at most once.
//!
//! A connection joins when it becomes readable and again whenever a read stops at the
//! per-turn budget with data possibly left; a per-connection flag keeps a second entry
//! out, however many readiness events or budget cut-offs it has. [`ReadyList::round`]
//! fixes the set one turn serves: connections that join during the round (a cut-off
//! re-queues at the back) wait for the next turn.

use crate::bus::ConnId;

/// A queue in a plain vector read from `head` on: pushing and popping are an append and an
/// index step (a `VecDeque`'s wrap-around arithmetic cost more, once per message when
/// every turn relays one). The read prefix is dropped when the queue empties, the usual
/// end of a turn, or once it is as long as the rest (each connection is queued at most
/// once, so the copy is paid for by as many pops).
#[derive(Default)]
pub struct ReadyList {
    queue: Vec<ConnId>,
    /// Entries of `queue` before this one were popped.
    head: usize,
    /// `queued[id]`: `id` is in `queue` at or after `head`.
    queued: Vec<bool>,
}

impl ReadyList {
    /// Queue `id` at the back unless it is already queued; returns whether it was added.
    #[inline]
    pub fn push(&mut self, id: ConnId) -> bool {
        // One bounds check for the usual connection, already known here.
        match self.queued.get_mut(id) {
            Some(q) if *q => return false,
            Some(q) => *q = true,
            None => self.grow(id),
        }
        self.queue.push(id);
        true
    }

    /// Room for `id` in `queued`, marked queued.
    #[cold]
    fn grow(&mut self, id: ConnId) {
        self.queued.resize(id + 1, false);
        if let Some(q) = self.queued.get_mut(id) {
            *q = true;
        }
    }

    /// How many connections the current round serves: those queued now. Take exactly that
    /// many with [`ReadyList::pop`]; what is pushed meanwhile goes after them.
    pub fn round(&self) -> usize {
        self.queue.len() - self.head
    }

    /// The connection at the front, no longer queued.
    #[inline]
    pub fn pop(&mut self) -> Option<ConnId> {
        let id = *self.queue.get(self.head)?;
        self.head += 1;
        if self.head == self.queue.len() {
            self.queue.clear();
            self.head = 0;
        } else if self.head >= 64 && self.head * 2 >= self.queue.len() {
            self.queue.drain(..self.head);
            self.head = 0;
        }
        if let Some(q) = self.queued.get_mut(id) {
            *q = false;
        }
        Some(id)
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// However often a connection is reported ready or cut off by the budget, one round
    /// serves it once, in the order the connections first became ready.
    #[test]
    fn each_connection_at_most_once_per_round() {
        let mut r = ReadyList::default();
        // A flooder's edge, a bystander's edge, the flooder again (a second edge in the
        // same poll batch, or a budget cut-off left over from the previous turn).
        assert!(r.push(7));
        assert!(r.push(2));
        assert!(!r.push(7));
        assert!(!r.push(2));
        assert_eq!(r.round(), 2);
        let mut served = Vec::new();
        for _ in 0..r.round() {
            let id = r.pop().unwrap();
            served.push(id);
            // Every read is cut off by the budget: back of the list, for the next round.
            assert!(r.push(id));
            // A readiness event arriving while queued adds nothing.
            assert!(!r.push(id));
        }
        assert_eq!(served, [7, 2]);
        assert_eq!(r.round(), 2);
        // A new connection goes after those carried over.
        assert!(r.push(0));
        let order: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(order, [7, 2, 0]);
        assert!(r.is_empty());
        assert!(r.push(7));
    }

    /// A list that never empties (every read cut off, new connections joining) keeps its
    /// order and does not grow past a bounded multiple of what is queued.
    #[test]
    fn a_list_that_never_empties_stays_in_order_and_bounded() {
        let mut r = ReadyList::default();
        for id in 0..100 {
            assert!(r.push(id));
        }
        let mut expect: std::collections::VecDeque<ConnId> = (0..100).collect();
        for turn in 0..10_000usize {
            let id = r.pop().unwrap();
            assert_eq!(Some(id), expect.pop_front(), "turn {turn}");
            assert!(r.push(id));
            expect.push_back(id);
            assert_eq!(r.round(), 100);
            assert!(r.queue.len() <= 2 * 100 + 64, "grew to {}", r.queue.len());
        }
        let rest: Vec<_> = std::iter::from_fn(|| r.pop()).collect();
        assert_eq!(rest, Vec::from(expect));
        assert!(r.is_empty() && r.queue.is_empty());
    }
}
