//! Delivery: every connection's outgoing queue and what it is charged for it.
//!
//! A message queued for a connection is charged to it here when queued and released here
//! when the reactor reports it written (or the connection goes), so the byte and fd counts
//! that `max_outgoing_bytes` / `max_outgoing_unix_fds` limit can never drift.

use super::connection::Outgoing;
use super::queue::{Iter, OutPool, Queue};

/// One connection's outgoing queue with its charges and high-water marks.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: Queue,
    bytes: usize,
    fds: usize,
    peak_bytes: usize,
    peak_fds: usize,
    /// A [`super::Effect::Flush`] for this connection is pending.
    flush_pending: bool,
}

impl Outbox {
    /// Messages queued.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// Bytes queued (`OutgoingBytes`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Fds queued (`OutgoingFDs`).
    pub fn fds(&self) -> usize {
        self.fds
    }
    /// Most bytes ever queued at once (`PeakOutgoingBytes`).
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes
    }
    /// Most fds ever queued at once (`PeakOutgoingFDs`).
    pub fn peak_fds(&self) -> usize {
        self.peak_fds
    }
}

/// The outcome of [`Delivery::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; the connection already had a flush pending.
    Queued,
    /// Queued; the connection needs a flush (first message since the last one).
    NeedsFlush,
    /// Refused: the queue is over its byte or fd limit.
    Full,
}

/// All outgoing queues, sharing one pool of slots.
#[derive(Debug, Default)]
pub struct Delivery {
    pool: OutPool,
}

impl Delivery {
    /// Queue `out` on `ob`, charging it, unless the queue is already over `max_bytes`
    /// bytes or (for a message with fds) `max_fds` fds. One message may go past the limit,
    /// as in dbus-daemon.
    pub fn push(
        &mut self,
        ob: &mut Outbox,
        out: Outgoing,
        max_bytes: usize,
        max_fds: usize,
    ) -> Pushed {
        if ob.bytes > max_bytes || (out.n_fds() > 0 && ob.fds > max_fds) {
            return Pushed::Full;
        }
        let (len, n_fds) = (out.len(), out.n_fds());
        if !self.pool.push_back(&mut ob.queue, out) {
            return Pushed::Full;
        }
        ob.bytes += len;
        ob.fds += n_fds;
        ob.peak_bytes = ob.peak_bytes.max(ob.bytes);
        ob.peak_fds = ob.peak_fds.max(ob.fds);
        if std::mem::replace(&mut ob.flush_pending, true) {
            Pushed::Queued
        } else {
            Pushed::NeedsFlush
        }
    }

    /// The queued messages of `ob`, oldest first (the first may be partly written).
    pub fn pending<'a>(&'a self, ob: &Outbox) -> Iter<'a> {
        self.pool.iter(&ob.queue)
    }

    /// The reactor is about to write `ob`: later pushes need a new flush.
    pub fn flushing(&mut self, ob: &mut Outbox) {
        ob.flush_pending = false;
    }

    /// `n` bytes of `ob`'s queue were written: pop what is complete and release its charge.
    pub fn written(&mut self, ob: &mut Outbox, mut n: usize) {
        while n > 0 {
            let Some(front) = self.pool.front_mut(&ob.queue) else {
                break;
            };
            let remaining = front.len() - front.written;
            if n < remaining {
                front.written += n;
                return;
            }
            n -= remaining;
            ob.bytes = ob.bytes.saturating_sub(front.len());
            ob.fds = ob.fds.saturating_sub(front.n_fds());
            self.pool.pop_front(&mut ob.queue);
        }
    }

    /// Drop everything queued on `ob` (its connection is gone).
    pub fn clear(&mut self, ob: &mut Outbox) {
        self.pool.clear(&mut ob.queue);
        ob.bytes = 0;
        ob.fds = 0;
    }

    /// Give back the pool's memory if nothing is queued anywhere.
    pub fn shrink_if_idle(&mut self) {
        self.pool.shrink_if_idle();
    }
}
