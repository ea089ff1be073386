//! The connections with input left to read, in round-robin order, each at most once.
//!
//! A connection joins when it becomes readable and again whenever a read stops at the
//! per-turn budget with data possibly left; a per-connection flag keeps a second entry
//! out, however many readiness events or budget cut-offs it has. [`ReadyList::round`]
//! fixes the set one turn serves: connections that join during the round (a cut-off
//! re-queues at the back) wait for the next turn.

use crate::bus::ConnId;
use std::collections::VecDeque;

#[derive(Default)]
pub struct ReadyList {
    queue: VecDeque<ConnId>,
    /// `queued[id]`: `id` is in `queue`.
    queued: Vec<bool>,
}

impl ReadyList {
    /// Queue `id` at the back unless it is already queued; returns whether it was added.
    #[inline]
    pub fn push(&mut self, id: ConnId) -> bool {
        if self.queued.len() <= id {
            self.queued.resize(id + 1, false);
        }
        if std::mem::replace(&mut self.queued[id], true) {
            return false;
        }
        self.queue.push_back(id);
        true
    }

    /// How many connections the current round serves: those queued now. Take exactly that
    /// many with [`ReadyList::pop`]; what is pushed meanwhile goes after them.
    pub fn round(&self) -> usize {
        self.queue.len()
    }

    /// The connection at the front, no longer queued.
    #[inline]
    pub fn pop(&mut self) -> Option<ConnId> {
        let id = self.queue.pop_front()?;
        if let Some(q) = self.queued.get_mut(id) {
            *q = false;
        }
        Some(id)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
}
