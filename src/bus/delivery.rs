//! Delivery: every connection's outgoing queue and what it is charged for it.
//!
//! A message queued for a connection is charged to it here when queued and released here
//! when the reactor reports it written (or the connection goes), so the byte and fd counts
//! that `max_outgoing_bytes` / `max_outgoing_unix_fds` limit can never drift.
//!
//! # What a queued message is charged
//!
//! Its [`cost`]: what holding it costs the bus's heap, not its length on the wire, so that
//! `max_outgoing_bytes` bounds memory (issue 11: 2M small signals charged 127 MiB of payload
//! held 328 MiB). That is the queue slot ([`SLOT_BYTES`]), a relay header built in its own
//! allocation, and the whole shared buffer the body lives in (the sender's complete message,
//! its original header included), each allocation with its reference counts and the
//! allocator's chunk overhead. A broadcast shares one buffer among its receivers; each
//! receiver is charged the whole buffer, as dbus-daemon charges each receiver the full
//! message size: a receiver's charge then does not depend on who else subscribed, and
//! what it holds is never under-counted (when it is the last holder, it holds all of it).
//!
//! `GetConnectionStats`' `OutgoingBytes` / `PeakOutgoingBytes` report this charge: the
//! bytes of memory the connection's queue holds (at least its wire length).
//!
//! The same charge is made to the sender's quota account (`Outgoing::origin`, `quota.rs`)
//! on push and released with the receiver's, so what a connection and its uid make the
//! bus hold balances to zero exactly when the receivers' queues do.
//!
//! # A gone connection's queue
//!
//! Dropping a queue costs tens of nanoseconds per message (the slot, the shared buffer's
//! count, sometimes the buffer and its fds): a subscriber closing with 2M signals queued
//! took 70-117 ms in one turn, during which no other client was served (issue 11). So a connection that goes
//! has its queue moved whole to a graveyard ([`Delivery::bury`], a few words copied) and
//! the reactor releases it in pieces of at most [`REAP_BUDGET`] messages per turn
//! ([`Delivery::reap`]). Until a message is released it stays charged, to its sender's
//! account and to the bus-wide total: the memory is still held.

use super::connection::{OutHeader, Outgoing};
use super::queue::{Build, Iter, OutPool, Queue, SLOT_BYTES};
use super::quota::Quotas;
use crate::wire::message::RelayHeader;
use std::collections::VecDeque;

/// What one heap allocation of `n` bytes costs, as glibc's malloc lays it out: an 8-byte
/// chunk header, rounded up to 16 bytes, at least 32.
fn heap(n: usize) -> usize {
    ((n + 8).next_multiple_of(16)).max(32)
}

/// Bytes an `Rc` allocation adds to its contents (strong and weak counts).
const RC_COUNTS: usize = 2 * std::mem::size_of::<usize>();

/// The memory a queued `out` holds: see the module documentation. Always at least
/// `out.len()`, and the same on push and on pop (nothing it depends on changes while queued).
// Inlined: once per queued message, and a call cost more than its work.
#[inline(always)]
pub fn cost(out: &Outgoing) -> usize {
    let header = match &out.header {
        OutHeader::Relay(RelayHeader::Rebuilt(h)) => heap(h.capacity()),
        // A spliced header lives inline in the slot; a bus message has none.
        OutHeader::Relay(RelayHeader::Splice { .. }) | OutHeader::None => 0,
    };
    let fds = out
        .fds
        .as_ref()
        .map_or(0, |f| heap(RC_COUNTS + std::mem::size_of_val(&f[..])));
    let total = SLOT_BYTES + header + heap(RC_COUNTS + out.data.len()) + fds;
    total.max(out.len())
}

/// Most messages of gone connections' queues released per reactor turn ([`Delivery::reap`]).
///
/// Measured with the release build (2 vCPUs, `strace -T` on `epoll_wait`, 3 runs each):
/// dropping one queued small signal costs 28-85 ns (the close of a subscriber with 2M
/// queued took 68-72 ms in one turn, 200k took 7.6-17 ms), so a piece of 4,096 costs
/// 0.1-0.35 ms: the order of a bystander's idle round trip (0.1 ms) and less than its
/// round trip during a flood (0.56 ms p50: the reactor's read budgets). A smaller piece
/// only adds turns (an `epoll_wait` each; 2M messages take 489 turns, 56-70 ms in all, at
/// this one); a much larger one brings back the stall.
pub const REAP_BUDGET: usize = 4096;

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
    /// Memory the queue holds, as charged by [`cost`] (`OutgoingBytes`).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// Fds queued (`OutgoingFDs`).
    pub fn fds(&self) -> usize {
        self.fds
    }
    /// Most memory the queue ever held at once, as charged by [`cost`]
    /// (`PeakOutgoingBytes`).
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
    /// Bytes charged on all queues together.
    total_bytes: usize,
    /// Most of `total_bytes` since the last [`Delivery::shrink_if_idle`] or
    /// [`Delivery::mark_returned`].
    peak_since_sweep: usize,
    /// Queues of connections that are gone, oldest first, still holding messages and
    /// charged for them until [`Delivery::reap`] releases them. Owned here, not by a
    /// connection slot: a new connection may take the slot meanwhile.
    graveyard: VecDeque<Outbox>,
}

impl Delivery {
    /// Queue `out` on `ob`, charging it (and its sender's account in `quotas`) its
    /// [`cost`], unless the queue is already over `max_bytes` bytes or (for a message with
    /// fds) `max_fds` fds. One message may go past the limit, as in dbus-daemon.
    #[inline(always)]
    pub fn push(
        &mut self,
        ob: &mut Outbox,
        out: Outgoing,
        max_bytes: usize,
        max_fds: usize,
        quotas: &mut Quotas,
    ) -> Pushed {
        self.push_with(ob, out, false, max_bytes, max_fds, quotas)
    }

    /// [`Delivery::push`] of the message `make` builds, built in its queue slot (see
    /// [`OutPool::insert_with`]). `stamp`: the receiver asked for header field 10, which
    /// a bus-originated message then gets too (`containers::stamp_bus_message`).
    #[inline(always)]
    pub fn push_with(
        &mut self,
        ob: &mut Outbox,
        make: impl Build,
        stamp: bool,
        max_bytes: usize,
        max_fds: usize,
        quotas: &mut Quotas,
    ) -> Pushed {
        let behind = !ob.queue.is_empty();
        let Some((key, out)) = self.pool.insert_with(make) else {
            return Pushed::Full;
        };
        // Only a message queued behind nothing is written at once (at the end of this turn)
        // and may stay a slice of the sender's receive buffer; one that waits copies its
        // bytes out, so each queue pins at most one receive buffer (charged in full by
        // `cost`).
        if behind && out.pins_buffer() {
            out.detach();
        }
        if stamp {
            super::containers::stamp_bus_message(out);
        }
        let n_fds = out.n_fds();
        if ob.bytes > max_bytes || (n_fds > 0 && ob.fds > max_fds) {
            self.pool.discard(key);
            return Pushed::Full;
        }
        // Kept in the message, so that its release is exactly this charge.
        let charged = u32::try_from(cost(out)).unwrap_or(u32::MAX);
        out.charged = charged;
        let charge = charged as usize;
        if ob.bytes + charge > max_bytes || ob.fds + n_fds > max_fds {
            // The one message that takes the queue past its limit is not charged to its
            // sender: a single receiver then never holds more than its limit of a sender's
            // charge, so with max_incoming_bytes >= max_outgoing_bytes (the defaults are
            // equal) one receiver that does not read can never pause its sender; it is
            // refused the next message instead (quota.rs, the order of the limits).
            out.origin = super::quota::NOBODY;
        }
        let origin = out.origin;
        self.pool.link_back(&mut ob.queue, key);
        quotas.charge(origin, charge, n_fds);
        ob.bytes += charge;
        self.total_bytes += charge;
        self.peak_since_sweep = self.peak_since_sweep.max(self.total_bytes);
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

    /// `n` bytes of `ob`'s queue were written: pop what is complete and release its charge
    /// (and its sender's).
    pub fn written(&mut self, ob: &mut Outbox, mut n: usize, quotas: &mut Quotas) {
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
            let (charge, n_fds) = (front.charged as usize, front.n_fds());
            ob.bytes = ob.bytes.saturating_sub(charge);
            self.total_bytes = self.total_bytes.saturating_sub(charge);
            ob.fds = ob.fds.saturating_sub(n_fds);
            quotas.release(front.origin, charge, n_fds);
            self.pool.pop_front(&mut ob.queue);
        }
    }

    /// `ob`'s connection is gone: move what is queued on it to the graveyard, still
    /// charged, for [`Delivery::reap`] to release. Costs the same however much is queued.
    pub fn bury(&mut self, ob: &mut Outbox) {
        let ob = std::mem::take(ob);
        if !ob.is_empty() {
            self.graveyard.push_back(ob);
        }
    }

    /// Release at most `budget` messages of buried queues, oldest queue first, releasing
    /// their charges (and their senders') and dropping them (closing their fds once no
    /// other delivery holds them). Returns whether any remain.
    pub fn reap(&mut self, budget: usize, quotas: &mut Quotas) -> bool {
        let mut left = budget;
        while left > 0 {
            let Some(ob) = self.graveyard.front_mut() else {
                break;
            };
            while left > 0 {
                let Some(out) = self.pool.pop_front(&mut ob.queue) else {
                    break;
                };
                let (charge, n_fds) = (out.charged as usize, out.n_fds());
                ob.bytes = ob.bytes.saturating_sub(charge);
                ob.fds = ob.fds.saturating_sub(n_fds);
                self.total_bytes = self.total_bytes.saturating_sub(charge);
                quotas.release(out.origin, charge, n_fds);
                left -= 1;
            }
            if ob.queue.is_empty() {
                self.graveyard.pop_front();
            }
        }
        !self.graveyard.is_empty()
    }

    /// Whether buried queues still hold messages ([`Delivery::reap`] has work).
    #[inline]
    pub fn reaping(&self) -> bool {
        !self.graveyard.is_empty()
    }

    /// The buried queues not yet released, oldest first.
    pub fn buried(&self) -> impl Iterator<Item = &Outbox> {
        self.graveyard.iter()
    }

    /// Messages queued, on live connections' queues and buried ones.
    pub fn queued(&self) -> usize {
        self.pool.total()
    }

    /// Bytes charged on all queues together.
    pub fn total_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Give back the pool's memory if nothing is queued anywhere. Returns the most bytes
    /// that were queued at once since the previous call (how much a burst may have left
    /// behind in the allocator), and starts counting again from what is queued now.
    pub fn shrink_if_idle(&mut self) -> usize {
        self.pool.shrink_if_idle();
        std::mem::replace(&mut self.peak_since_sweep, self.total_bytes)
    }

    /// Free at most `max` of the pool chunks [`Delivery::shrink_if_idle`] set aside: the
    /// bytes freed, and whether any are left.
    pub fn release_retired(&mut self, max: usize) -> (usize, bool) {
        self.pool.release_retired(max)
    }

    /// Bytes released from the queues since the most that was queued after the last
    /// [`Delivery::mark_returned`] (or sweep): what the allocator may hold free for it.
    pub fn released_since_mark(&self) -> usize {
        self.peak_since_sweep.saturating_sub(self.total_bytes)
    }

    /// The allocator was just asked to give free memory back: count releases from here.
    pub fn mark_returned(&mut self) {
        self.peak_since_sweep = self.total_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn relayed(body_len: usize, rebuilt: usize) -> Outgoing {
        let mut out = Outgoing::shared(Rc::from(vec![0u8; body_len]));
        out.header = OutHeader::Relay(RelayHeader::Rebuilt(vec![1u8; rebuilt]));
        out
    }

    #[test]
    fn charge_includes_slot_header_buffer_and_allocator_overhead() {
        let out = Outgoing::owned(vec![0u8; 24]);
        // Slot + one Rc allocation of 16 + 24 bytes (48 with malloc's header, rounded).
        assert_eq!(cost(&out), SLOT_BYTES + 48);
        assert!(cost(&out) > out.len());
        let out = relayed(100, 64);
        assert_eq!(out.len(), 164);
        assert_eq!(cost(&out), SLOT_BYTES + heap(64) + heap(RC_COUNTS + 100));
        assert!(SLOT_BYTES >= std::mem::size_of::<Outgoing>());
        // A big message costs about its size: the overhead is per entry, not per byte.
        let big = Outgoing::owned(vec![0u8; 1 << 20]);
        assert!(cost(&big) - big.len() <= SLOT_BYTES + 64);
    }

    fn quotas() -> Quotas {
        Quotas::new(crate::bus::quota::QuotaLimits::of(
            &crate::bus::limits::Limits::default(),
        ))
    }

    #[test]
    fn the_senders_account_is_charged_what_the_receiver_is_and_released_with_it() {
        let mut d = Delivery::default();
        let mut q = quotas();
        let sender = q.open(1, Some(1000));
        let (mut a, mut b) = (Outbox::default(), Outbox::default());
        let mut m = Outgoing::owned(vec![7u8; 40]);
        m.origin = sender;
        let (c, len) = (cost(&m), m.len());
        d.push(&mut a, m.clone(), usize::MAX, 0, &mut q);
        d.push(&mut b, m.clone(), usize::MAX, 0, &mut q);
        d.push(&mut a, m.clone(), usize::MAX, 0, &mut q);
        // A bus message charges nobody.
        d.push(&mut a, Outgoing::owned(vec![0u8; 8]), usize::MAX, 0, &mut q);
        assert_eq!(q.held(sender).bytes, 3 * c);
        d.written(&mut a, len, &mut q);
        assert_eq!(q.held(sender).bytes, 2 * c);
        d.bury(&mut b);
        d.reap(usize::MAX, &mut q);
        assert_eq!(q.held(sender).bytes, c);
        q.close(sender);
        assert_eq!(q.accounts(), 1, "the account outlives its connection");
        d.bury(&mut a);
        d.reap(usize::MAX, &mut q);
        assert_eq!(q.accounts(), 0);
        assert_eq!(q.user_held(Some(1000)).bytes, 0);
    }

    #[test]
    fn one_write_of_several_senders_messages_releases_each_sender() {
        let mut d = Delivery::default();
        let mut q = quotas();
        let (s1, s2) = (q.open(1, Some(1000)), q.open(2, Some(2000)));
        let mut ob = Outbox::default();
        let mut total = 0;
        for origin in [s1, s1, s2, s1, s2, s2] {
            let mut m = Outgoing::owned(vec![1u8; 30]);
            m.origin = origin;
            total += m.len();
            d.push(&mut ob, m, usize::MAX, usize::MAX, &mut q);
        }
        assert!(q.held(s1).bytes > 0 && q.held(s2).bytes > 0);
        d.written(&mut ob, total, &mut q);
        assert_eq!((q.held(s1), q.held(s2)), Default::default());
        assert_eq!(
            q.user_held(Some(1000)).bytes + q.user_held(Some(2000)).bytes,
            0
        );
    }

    #[test]
    fn charges_released_exactly_once_and_bus_wide_peak_reported_by_the_sweep() {
        let mut d = Delivery::default();
        let mut q = quotas();
        let (mut a, mut b) = (Outbox::default(), Outbox::default());
        let m = Outgoing::owned(vec![7u8; 40]);
        let (c, len) = (cost(&m), m.len());
        for _ in 0..3 {
            assert_ne!(
                d.push(&mut a, m.clone(), usize::MAX, 0, &mut q),
                Pushed::Full
            );
            assert_ne!(
                d.push(&mut b, m.clone(), usize::MAX, 0, &mut q),
                Pushed::Full
            );
        }
        assert_eq!(
            (a.bytes(), b.bytes(), d.total_bytes()),
            (3 * c, 3 * c, 6 * c)
        );
        // A partial write releases nothing; the rest of the first message releases one.
        d.written(&mut a, len - 1, &mut q);
        assert_eq!(a.bytes(), 3 * c);
        d.written(&mut a, 1 + len, &mut q);
        assert_eq!((a.bytes(), a.len(), a.peak_bytes()), (c, 1, 3 * c));
        d.bury(&mut b);
        d.reap(usize::MAX, &mut q);
        assert_eq!((b.bytes(), d.total_bytes()), (0, c));
        assert_eq!(d.shrink_if_idle(), 6 * c, "the burst's peak");
        assert_eq!(
            d.shrink_if_idle(),
            c,
            "counting restarts from what is queued"
        );
        d.written(&mut a, len, &mut q);
        assert_eq!((a.bytes(), d.total_bytes()), (0, 0));
        assert_eq!(d.shrink_if_idle(), c);
        assert_eq!(d.shrink_if_idle(), 0);
    }

    #[test]
    fn the_limit_counts_the_charge_not_the_wire_length() {
        let mut d = Delivery::default();
        let mut q = quotas();
        let mut ob = Outbox::default();
        let m = Outgoing::owned(vec![0u8; 8]);
        // Ten wire lengths would fit, but each message costs far more than 8 bytes.
        let limit = 10 * m.len();
        let mut queued = 0;
        while d.push(&mut ob, m.clone(), limit, 0, &mut q) != Pushed::Full {
            queued += 1;
        }
        assert!(queued < 10, "{queued}");
        assert_eq!(
            queued,
            limit / cost(&m) + 1,
            "one message may go past the limit"
        );
    }

    #[test]
    fn a_buried_queue_stays_charged_until_reaped_in_pieces() {
        let mut d = Delivery::default();
        let mut q = quotas();
        let sender = q.open(1, Some(1000));
        let (mut dead, mut live) = (Outbox::default(), Outbox::default());
        let mut m = Outgoing::owned(vec![7u8; 40]);
        m.origin = sender;
        let c = cost(&m);
        for _ in 0..10 {
            d.push(&mut dead, m.clone(), usize::MAX, 0, &mut q);
        }
        d.push(&mut live, m.clone(), usize::MAX, 0, &mut q);
        d.bury(&mut dead);
        assert_eq!(
            (dead.len(), dead.bytes()),
            (0, 0),
            "the slot's outbox is fresh"
        );
        // Nothing is released by burying: the memory is still held.
        assert_eq!(
            (d.queued(), d.total_bytes(), q.held(sender).bytes),
            (11, 11 * c, 11 * c)
        );
        let mut pieces = Vec::new();
        while d.reaping() {
            let before = d.queued();
            d.reap(4, &mut q);
            pieces.push(before - d.queued());
        }
        assert_eq!(pieces, [4, 4, 2]);
        assert_eq!((d.total_bytes(), q.held(sender).bytes), (c, c));
        assert!(!d.reap(4, &mut q), "nothing left to reap");
        assert_eq!(live.len(), 1, "a live queue is not reaped");
    }
}
